"""Load the RFC 9497 known-answer vectors into typed records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from psi.oprf import Mode

HERE = Path(__file__).parent
OWN_COPY = HERE / "vectors" / "rfc9497-ristretto255-sha512.json"
SHARED_COPY = HERE.parent.parent / "shared" / "vectors" / "rfc9497-ristretto255-sha512.json"


@dataclass(frozen=True)
class BatchVector:
    """One batch of one mode, all values decoded from hex."""

    id: str
    mode: Mode
    seed: bytes
    key_info: bytes
    sk: bytes
    pk: bytes | None
    inputs: tuple[bytes, ...]
    blinds: tuple[bytes, ...]
    blinded: tuple[bytes, ...]
    evaluated: tuple[bytes, ...]
    outputs: tuple[bytes, ...]
    proof: bytes | None
    proof_r: bytes | None
    info: bytes | None


def _split(value: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(part) for part in value.split(","))


def vector_path() -> Path:
    return SHARED_COPY if SHARED_COPY.exists() else OWN_COPY


def load_vectors(path: Path | None = None) -> list[BatchVector]:
    suites = json.loads((path or vector_path()).read_text())
    out: list[BatchVector] = []
    for suite in suites:
        assert suite["identifier"] == "ristretto255-SHA512"
        mode = Mode(suite["mode"])
        for n, v in enumerate(suite["vectors"]):
            proof = v.get("Proof")
            out.append(
                BatchVector(
                    id=f"ristretto255-mode{int(mode)}-batch{v['Batch']}-{n}",
                    mode=mode,
                    seed=bytes.fromhex(suite["seed"]),
                    key_info=bytes.fromhex(suite["keyInfo"]),
                    sk=bytes.fromhex(suite["skSm"]),
                    pk=bytes.fromhex(suite["pkSm"]) if "pkSm" in suite else None,
                    inputs=_split(v["Input"]),
                    blinds=_split(v["Blind"]),
                    blinded=_split(v["BlindedElement"]),
                    evaluated=_split(v["EvaluationElement"]),
                    outputs=_split(v["Output"]),
                    proof=bytes.fromhex(proof["proof"]) if proof else None,
                    proof_r=bytes.fromhex(proof["r"]) if proof else None,
                    info=bytes.fromhex(v["Info"]) if "Info" in v else None,
                )
            )
    return out
