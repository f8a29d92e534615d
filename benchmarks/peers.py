"""Peer-library baselines for the OPRF benchmark.

Measures two third-party libraries on the same inputs as our own OPRF benchmark so that the
benchmark can print ratios in one run:

* ``openmined-psi`` (import ``private_set_intersection.python``): C++ ECDH-PSI on NIST P-256
  (BoringSSL through Google's private-join-and-compute ``ECCommutativeCipher``, SHA-256 based
  hash-to-curve).  Per client element the client does one hash-to-curve plus one scalar
  multiplication in ``CreateRequest`` and one scalar multiplication plus a lookup in the server's
  set structure in ``GetIntersection``; the server does one scalar multiplication per client
  element in ``ProcessRequest`` and one per *server* element in ``CreateSetupMessage`` (a one-off
  cost, amortised over all clients).  The three setup structures (raw, Golomb-compressed set,
  Bloom filter) are all measured; the headline client figure is the cheapest of the three.
* ``voprf`` (import ``voprf.ristretto``): Rust RFC 9497 VOPRF (mode 1), ciphersuite
  ristretto255-SHA512.  Per element: ``Client.blind`` (client), ``Evaluator.evaluate_batch``
  (server, including one batched DLEQ proof per batch) and ``Client.finalize_batch`` (client,
  including proof verification).

Every time is a ``time.perf_counter`` wall-clock figure in microseconds per element, the best
(minimum) of ``repeat`` runs, taken with the garbage collector paused.  The ``*_cpu_over_wall``
figures are process CPU time divided by wall time over all runs: about 1.0 means the library
ran on one core.

Run ``python -m benchmarks.peers -n 100000`` for a stand-alone report.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "OPENMINED_PSI_CURVE",
    "OPENMINED_PSI_DS_CODES",
    "OPENMINED_PSI_FPR",
    "VOPRF_SUITE",
    "bench_openmined_psi",
    "bench_voprf",
    "default_rfc9497_vectors_path",
    "openmined_psi_available",
    "voprf_available",
    "voprf_matches_rfc9497",
]

T = TypeVar("T")

#: False-positive rate passed to ``CreateSetupMessage`` (the Python API has no default; this is
#: the value of the library's own README examples).
OPENMINED_PSI_FPR = 1e-9
#: Curve used by openmined-psi (fixed in its C++ core; points are 33-byte compressed P-256).
OPENMINED_PSI_CURVE = "P-256"
#: Codes reported as ``client_best_ds`` (results are plain floats).
OPENMINED_PSI_DS_CODES: dict[str, float] = {"raw": 0.0, "gcs": 1.0, "bloom": 2.0}
#: Ciphersuite implemented by ``voprf.ristretto``.
VOPRF_SUITE = "ristretto255-SHA512"

_US = 1e6
_VOPRF_MAX_BATCH = 2**16 - 1
_KAT_FILE = "rfc9497-ristretto255-sha512.json"


# --------------------------------------------------------------------------- availability


def openmined_psi_available() -> bool:
    """True when ``openmined-psi`` imports (its native module and protobuf runtime load)."""
    try:
        import private_set_intersection.python  # noqa: F401
    except Exception:
        return False
    return True


def voprf_available() -> bool:
    """True when ``voprf`` (with its ``ristretto`` submodule) imports."""
    try:
        from voprf import ristretto  # noqa: F401
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- timing helpers


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Clock:
    """Accumulates wall and CPU time of the calls it runs."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        w0 = time.perf_counter()
        c0 = time.process_time()
        result = fn(*args)
        c1 = time.process_time()
        w1 = time.perf_counter()
        self.wall += w1 - w0
        self.cpu += c1 - c0
        return result, w1 - w0

    def ratio(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else math.nan


def _check_items(items: Sequence[bytes], repeat: int) -> int:
    if not items:
        raise ValueError("items must not be empty")
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    return len(items)


def _map(fn: Callable[[bytes], T], batch: Sequence[bytes]) -> list[T]:
    return [fn(x) for x in batch]


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-key minimum over runs (every key is a time)."""
    return {k: min(r[k] for r in runs) for k in runs[0]}


# --------------------------------------------------------------------------- openmined-psi


def bench_openmined_psi(
    items: list[bytes],
    *,
    repeat: int = 1,
    reveal_intersection: bool = True,
    fpr: float = OPENMINED_PSI_FPR,
) -> dict[str, float]:
    """Client and server cost of openmined-psi ECDH-PSI on ``items``.

    The client queries ``items`` against a server holding the same ``items`` (so every element is
    in the intersection, which is checked).  Client side: ``CreateRequest`` +
    ``GetIntersection`` (``GetIntersectionSize`` when ``reveal_intersection`` is False).  Server
    side: ``ProcessRequest`` (online, per client element) and ``CreateSetupMessage`` (one-off,
    per server element).  The request/response do not depend on the setup structure, so one
    request/response is shared by the three structures within a run.

    Keys (us = microseconds per element):
      ``client_us_per_element``: request + response processing, cheapest structure;
      ``client_best_ds``: that structure's code in ``OPENMINED_PSI_DS_CODES``;
      ``client_request_us_per_element``; ``client_response_us_per_element_{raw,gcs,bloom}``;
      ``client_us_per_element_{raw,gcs,bloom}``;
      ``server_us_per_element``: ``ProcessRequest`` only;
      ``server_setup_us_per_element_{raw,gcs,bloom}``: ``CreateSetupMessage`` per server element;
      ``request_bytes_per_element``, ``response_bytes_per_element``,
      ``setup_bytes_per_element_{raw,gcs,bloom}`` (serialized protobuf sizes);
      ``client_cpu_over_wall``, ``server_cpu_over_wall``; ``elements``; ``repeat``; ``fpr``.
    """
    n = _check_items(items, repeat)
    import private_set_intersection.python as psi

    structures: dict[str, Any] = {
        "raw": psi.DataStructure.RAW,
        "gcs": psi.DataStructure.GCS,
        "bloom": psi.DataStructure.BLOOM_FILTER,
    }
    # pybind11 converts bytes to std::string, so bytes items are passed unchanged.
    data = list(items)
    client_clock = _Clock()
    server_clock = _Clock()
    runs: list[dict[str, float]] = []
    sizes: dict[str, float] = {}
    for _ in range(repeat):
        client = psi.client.CreateWithNewKey(reveal_intersection)
        server = psi.server.CreateWithNewKey(reveal_intersection)
        run: dict[str, float] = {}
        with _gc_paused():
            request, t_req = client_clock.run(client.CreateRequest, data)
            response, t_proc = server_clock.run(server.ProcessRequest, request)
            run["client_request_us_per_element"] = t_req / n * _US
            run["server_us_per_element"] = t_proc / n * _US
            for name, ds in structures.items():
                setup, t_setup = server_clock.run(server.CreateSetupMessage, fpr, n, data, ds)
                if reveal_intersection:
                    found, t_resp = client_clock.run(client.GetIntersection, setup, response)
                    count = len(found)
                else:
                    found, t_resp = client_clock.run(client.GetIntersectionSize, setup, response)
                    count = int(found)
                if count != n:
                    raise RuntimeError(f"openmined-psi ({name}): intersection {count} != {n}")
                run[f"server_setup_us_per_element_{name}"] = t_setup / n * _US
                run[f"client_response_us_per_element_{name}"] = t_resp / n * _US
                run[f"client_us_per_element_{name}"] = (t_req + t_resp) / n * _US
                sizes[f"setup_bytes_per_element_{name}"] = setup.ByteSize() / n
        sizes["request_bytes_per_element"] = request.ByteSize() / n
        sizes["response_bytes_per_element"] = response.ByteSize() / n
        runs.append(run)

    out = _best(runs)
    best_name = min(structures, key=lambda k: out[f"client_us_per_element_{k}"])
    out["client_us_per_element"] = out[f"client_us_per_element_{best_name}"]
    out["client_best_ds"] = OPENMINED_PSI_DS_CODES[best_name]
    out.update(sizes)
    out["client_cpu_over_wall"] = client_clock.ratio()
    out["server_cpu_over_wall"] = server_clock.ratio()
    out["elements"] = float(n)
    out["repeat"] = float(repeat)
    out["fpr"] = float(fpr)
    return out


# --------------------------------------------------------------------------- voprf


def bench_voprf(items: list[bytes], *, batch_size: int = 1000, repeat: int = 1) -> dict[str, float]:
    """Per-element cost of the ``voprf`` RFC 9497 VOPRF (ristretto255-SHA512) on ``items``.

    Per batch of ``batch_size`` inputs: ``Client.blind`` on each input (client),
    ``Evaluator.evaluate_batch`` (server, one batched DLEQ proof), ``Client.finalize_batch``
    (client, proof verification + unblinding + hashing).  The first output of every run is
    checked against ``Evaluator.evaluate_known_input`` (outside the timings).

    Keys (us = microseconds per element): ``blind_us_per_element``,
    ``evaluate_us_per_element``, ``finalize_us_per_element``, ``total_us_per_element``
    (sum of the three), ``client_us_per_element`` (blind + finalize),
    ``server_us_per_element`` (= evaluate); ``wire_us_per_element`` (serializing and parsing
    the blinded inputs and the batch output once each, not included in the totals);
    ``client_cpu_over_wall``, ``server_cpu_over_wall``; ``elements``; ``batch_size``;
    ``repeat``.
    """
    n = _check_items(items, repeat)
    if not 1 <= batch_size <= _VOPRF_MAX_BATCH:
        raise ValueError(f"batch_size must be in 1..{_VOPRF_MAX_BATCH}")
    if any(not 1 <= len(x) <= _VOPRF_MAX_BATCH for x in items):
        raise ValueError("voprf inputs must be 1..65535 bytes long")
    from voprf import ristretto

    evaluator = ristretto.Evaluator(os.urandom(32))
    public_key = evaluator.public_key
    blind = ristretto.Client.blind
    finalize_batch = ristretto.Client.finalize_batch
    decode_input = ristretto.BlindedInput.deserialize
    decode_output = ristretto.VerifiableBatchOutput.deserialize
    batches = [items[i : i + batch_size] for i in range(0, n, batch_size)]

    def _wire(blinded: list[Any], evaluated: Any) -> tuple[list[Any], Any]:
        # What crosses the network once: blinded inputs out, batch output (proof) back.
        return [decode_input(x.serialize()) for x in blinded], decode_output(evaluated.serialize())

    client_clock = _Clock()
    server_clock = _Clock()
    wire_clock = _Clock()
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        t_blind = t_eval = t_fin = t_wire = 0.0
        first_output: bytes | None = None
        with _gc_paused():
            for batch in batches:
                pairs, dt = client_clock.run(_map, blind, batch)
                t_blind += dt
                clients = [p[0] for p in pairs]
                blinded = [p[1] for p in pairs]
                evaluated, dt = server_clock.run(evaluator.evaluate_batch, blinded)
                t_eval += dt
                outputs, dt = client_clock.run(finalize_batch, clients, evaluated, public_key)
                t_fin += dt
                _, dt = wire_clock.run(_wire, blinded, evaluated)
                t_wire += dt
                if first_output is None:
                    first_output = outputs[0]
        if first_output != evaluator.evaluate_known_input(items[0]):
            raise RuntimeError("voprf: finalized output differs from evaluate_known_input")
        runs.append(
            {
                "blind_us_per_element": t_blind / n * _US,
                "evaluate_us_per_element": t_eval / n * _US,
                "finalize_us_per_element": t_fin / n * _US,
                "wire_us_per_element": t_wire / n * _US,
            }
        )

    out = _best(runs)
    out["total_us_per_element"] = (
        out["blind_us_per_element"]
        + out["evaluate_us_per_element"]
        + out["finalize_us_per_element"]
    )
    out["client_us_per_element"] = out["blind_us_per_element"] + out["finalize_us_per_element"]
    out["server_us_per_element"] = out["evaluate_us_per_element"]
    out["client_cpu_over_wall"] = client_clock.ratio()
    out["server_cpu_over_wall"] = server_clock.ratio()
    out["elements"] = float(n)
    out["batch_size"] = float(batch_size)
    out["repeat"] = float(repeat)
    return out


def default_rfc9497_vectors_path() -> Path:
    """``../shared/vectors/rfc9497-ristretto255-sha512.json`` beside the repository root, or the
    project's own copy under ``tests/`` when there is one."""
    repo = Path(__file__).resolve().parent.parent
    candidates = [
        repo.parent / "shared" / "vectors" / _KAT_FILE,
        repo / "tests" / "vectors" / _KAT_FILE,
        repo / "tests" / _KAT_FILE,
    ]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def voprf_matches_rfc9497(path: str | Path | None = None) -> bool:
    """Check ``voprf.ristretto`` against the RFC 9497 ristretto255-SHA512 mode-1 vectors.

    For each mode-1 entry: ``Evaluator.from_seed(seed, keyInfo)`` must give ``pkSm``; for each
    batch, ``evaluate_batch`` on the vector's ``BlindedElement`` values must return the vector's
    ``EvaluationElement`` values (the batch output serializes as 64-byte proof then 32-byte
    elements; the proof itself is randomized, so it cannot be compared); and for each ``Input``,
    both ``evaluate_known_input`` and a full blind / evaluate_batch / finalize_batch round must
    give ``Output``.  The vector's ``Blind`` cannot be injected through the public API.
    """
    from voprf import ristretto

    kat_path = Path(path) if path is not None else default_rfc9497_vectors_path()
    entries = json.loads(kat_path.read_text(encoding="utf-8"))
    checked = 0
    for entry in entries:
        if entry.get("mode") != 1:
            continue
        evaluator = ristretto.Evaluator.from_seed(
            bytes.fromhex(entry["seed"]), bytes.fromhex(entry["keyInfo"])
        )
        public_key = evaluator.public_key
        if public_key.serialize().hex() != entry["pkSm"]:
            return False
        for vec in entry["vectors"]:
            inputs = [bytes.fromhex(x) for x in vec["Input"].split(",")]
            outputs = vec["Output"].split(",")
            blinded_hex = vec["BlindedElement"].split(",")
            evaluated_hex = vec["EvaluationElement"].split(",")
            blinded = [ristretto.BlindedInput.deserialize(bytes.fromhex(b)) for b in blinded_hex]
            raw = evaluator.evaluate_batch(blinded).serialize()
            elements = [raw[64 + 32 * i : 96 + 32 * i].hex() for i in range(len(blinded))]
            if elements != evaluated_hex:
                return False
            if [evaluator.evaluate_known_input(x).hex() for x in inputs] != outputs:
                return False
            pairs = [ristretto.Client.blind(x) for x in inputs]
            result = ristretto.Client.finalize_batch(
                [p[0] for p in pairs],
                evaluator.evaluate_batch([p[1] for p in pairs]),
                public_key,
            )
            if [r.hex() for r in result] != outputs:
                return False
            checked += 1
    return checked > 0


# --------------------------------------------------------------------------- CLI


def _print(title: str, figures: dict[str, float]) -> None:
    print(title)
    for key in sorted(figures):
        print(f"  {key:42s} {figures[key]:12.6g}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--elements", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    items = [os.urandom(16) for _ in range(args.elements)]
    report: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if openmined_psi_available():
        report["openmined_psi"] = bench_openmined_psi(items, repeat=args.repeat)
    if voprf_available():
        report["voprf"] = bench_voprf(items, batch_size=args.batch_size, repeat=args.repeat)
        try:
            report["voprf_rfc9497_kat"] = voprf_matches_rfc9497()
        except FileNotFoundError:
            report["voprf_rfc9497_kat"] = None
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"elements={args.elements} repeat={args.repeat} cpu_count={report['cpu_count']}")
    for name in ("openmined_psi", "voprf"):
        if name in report:
            _print(name, report[name])
        else:
            print(f"{name}: not installed")
    print(f"voprf RFC 9497 mode-1 KAT: {report.get('voprf_rfc9497_kat')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
