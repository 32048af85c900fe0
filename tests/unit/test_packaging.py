"""The wheel: what a non-editable install puts into site-packages. Built from a copy of the
sources (setuptools builds in the source tree) with the tools already in the venv."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("aggregate", "specs", "protos"):  # specs/ is there, and must stay out
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-index"),
            *("--wheel-dir", str(out), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [built] = out.glob("aggregate-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_has_no_top_level_specs_package(wheel: zipfile.ZipFile) -> None:
    top_level = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert not any(name.startswith("specs") for name in top_level)
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"aggregate"}


def test_the_wheel_ships_the_proto_files_beside_their_code(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "aggregate/gateway/v1/aggregate.proto" in names
    assert "aggregate/gateway/v1/aggregate_pb2.py" in names
    shipped = wheel.read("aggregate/gateway/v1/aggregate.proto")
    assert shipped == (ROOT / "protos/aggregate/gateway/v1/aggregate.proto").read_bytes()


def test_the_wheel_runs_as_python_m_aggregate_and_has_one_version(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())
    assert {"aggregate/__main__.py", "aggregate/py.typed"} <= names
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert email.message_from_bytes(wheel.read(metadata))["Version"] == version("aggregate")
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "aggregate = aggregate.cli:main" in wheel.read(entry_points).decode()
