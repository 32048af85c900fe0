"""Configuration: ``Settings`` from defaults ← config file ← ``AGGREGATE_*`` environment,
and the aggregate-type manifest (DESIGN §9.2, §7). See docs/configuration.md.

- ``values``: parsers for single values (pure);
- ``settings``: the frozen ``Settings`` dataclass and its field table;
- ``sections``: the field sections ``Settings`` is built of, core to lifecycle;
- ``fieldmeta``: a field's metadata (parser, meaning, where it may be set);
- ``files``: reading YAML/TOML/JSON files;
- ``loader``: ``load_settings`` (the only reader of ``os.environ``);
- ``manifest``: ``load_manifest``, ``manifest_from_settings``, the bundled examples.
"""

from __future__ import annotations

from aggregate.config.loader import load_settings as load_settings
from aggregate.config.manifest import example_manifest_path as example_manifest_path
from aggregate.config.manifest import load_manifest as load_manifest
from aggregate.config.manifest import manifest_from_settings as manifest_from_settings
from aggregate.config.settings import ENV_PREFIX as ENV_PREFIX
from aggregate.config.settings import Settings as Settings
from aggregate.config.settings import env_name as env_name
from aggregate.config.values import EMBEDDED as EMBEDDED
from aggregate.config.values import split_host_port as split_host_port

__all__ = [
    "EMBEDDED",
    "ENV_PREFIX",
    "Settings",
    "env_name",
    "example_manifest_path",
    "load_manifest",
    "load_settings",
    "manifest_from_settings",
    "split_host_port",
]
