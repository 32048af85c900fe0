"""The committed generated code matches protos/: regenerate and compare byte for byte."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = Path("aggregate/gateway")


def files_under(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted((root / GENERATED).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = files_under(tmp_path)
    committed = files_under(ROOT)
    assert fresh, "scripts/gen-protos generated nothing"
    assert sorted(committed) == sorted(fresh), "generated files differ: run scripts/gen-protos"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"stale generated code {stale}: run scripts/gen-protos"


def test_a_changed_proto_is_detected(tmp_path: Path) -> None:
    """The comparison above can fail: a proto with one more field generates other bytes."""
    protos = tmp_path / "protos"
    source = ROOT / "protos" / "aggregate" / "gateway" / "v1" / "aggregate.proto"
    target = protos / "aggregate" / "gateway" / "v1" / "aggregate.proto"
    target.parent.mkdir(parents=True)
    target.write_text(
        source.read_text().replace(
            "string state_json = 5;", "string state_json = 5;\n  int32 x = 99;"
        )
    )
    script = tmp_path / "scripts" / "gen-protos"
    script.parent.mkdir()
    script.write_bytes((ROOT / "scripts" / "gen-protos").read_bytes())
    script.chmod(0o755)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    out = tmp_path / "out"
    subprocess.run([str(script), str(out)], check=True, capture_output=True, timeout=120)
    changed = files_under(out)
    committed = files_under(ROOT)
    pb2 = "aggregate/gateway/v1/aggregate_pb2.py"
    assert changed[pb2] != committed[pb2]
