"""Modules as they were at another commit, for same-run old-vs-new micro-benchmarks.

``load_at("main", "aggregate/domain/envelopes.py")`` reads the file from git at that
revision and imports it as a module of its own (``before_<name>``), beside the current one:
its absolute imports resolve to today's package, so only that file's code is the old one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_at(ref: str, path: str) -> ModuleType:
    """The module at ``path`` (relative to the repository) as of git ``ref``.

    Raises:
        subprocess.CalledProcessError: ``ref`` or ``path`` does not exist in git.
    """
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    name = "before_" + path.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = f"{ref}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while the body runs
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
