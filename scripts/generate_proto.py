"""Regenerate the protobuf and gRPC code: `python scripts/generate_proto.py [OUT_DIR]`.

Sources: proto/blindmatch/v1/*.proto.  Output (committed, never edited by
hand): blindmatch/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py, *_pb2_grpc.pyi.
tests/test_generated_code.py regenerates into a temporary folder and fails
on any difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES = sorted((PROTO_ROOT / "blindmatch" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc with the Python, gRPC and mypy plugins; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent  # the plugins live beside this interpreter
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(s.relative_to(PROTO_ROOT)) for s in SOURCES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "blindmatch" / "v1").glob("*_pb2*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path.relative_to(target))
