"""Read a YAML, TOML or JSON file (chosen by extension) into a mapping.

Shared by the config file and manifest loaders. Errors name the file and carry the parser's
own message (which gives line and column); duplicate keys are errors in YAML and JSON too
(TOML refuses them itself), since a silently ignored first value is a classic config trap.
"""

from __future__ import annotations

import json
import tomllib
from typing import TYPE_CHECKING, Any

import yaml

from aggregate.domain.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

EXTENSIONS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate mapping keys."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_mapping_file(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path`` by its extension and return its top-level mapping (``{}`` if empty).

    ``what`` names the kind of file in errors (``config file``, ``manifest``).

    Raises:
        ConfigError: unknown extension; the file is missing, unreadable, not UTF-8, does not
            parse, or does not hold a mapping with string keys at the top level.
    """
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{what} {path}: unknown extension {path.suffix!r}; use .yaml, .yml, .toml or .json"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data: object
        if fmt == "YAML":
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
        elif fmt == "TOML":
            data = tomllib.loads(text)
        else:
            data = json.loads(text, object_pairs_hook=_unique_json_object) if text.strip() else None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is not valid {fmt}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of keys at the top level, "
            f"not a {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{what} {path}: key {key!r} must be a string")
    return data
