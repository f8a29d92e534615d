"""The committed protobuf code is exactly what scripts/generate_proto.py makes."""

from __future__ import annotations

from pathlib import Path

from scripts.generate_proto import ROOT, generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc produced nothing"
    committed_dir = ROOT / "blindmatch" / "v1"
    fresh_names = {p.name for p in fresh}
    committed_names = {p.name for p in committed_dir.glob("*_pb2*")}
    assert committed_names == fresh_names, "generated file set differs: run `make proto`"
    stale = [p.name for p in fresh if (committed_dir / p.name).read_bytes() != p.read_bytes()]
    assert stale == [], f"stale generated code {stale}: run `make proto` and commit"
