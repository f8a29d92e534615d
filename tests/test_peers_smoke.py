"""Smoke tests for the peer-library baselines (skipped when a peer is not installed)."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import peers

ITEMS = [os.urandom(16) for _ in range(200)]


def _all_positive_finite(figures: dict[str, float], keys: list[str]) -> None:
    for key in keys:
        value = figures[key]
        assert isinstance(value, float), key
        assert math.isfinite(value), key
        assert value > 0, key


def test_openmined_psi_figures() -> None:
    pytest.importorskip("private_set_intersection.python")
    assert peers.openmined_psi_available()
    figures = peers.bench_openmined_psi(ITEMS, repeat=2)
    assert figures["elements"] == 200.0
    _all_positive_finite(
        figures,
        [
            "client_us_per_element",
            "client_request_us_per_element",
            "server_us_per_element",
            "server_setup_us_per_element_gcs",
        ],
    )
    assert figures["client_best_ds"] in peers.OPENMINED_PSI_DS_CODES.values()


def test_voprf_figures() -> None:
    pytest.importorskip("voprf")
    assert peers.voprf_available()
    figures = peers.bench_voprf(ITEMS, batch_size=64, repeat=2)
    assert figures["elements"] == 200.0
    _all_positive_finite(
        figures,
        [
            "blind_us_per_element",
            "evaluate_us_per_element",
            "finalize_us_per_element",
            "total_us_per_element",
            "client_us_per_element",
        ],
    )
    assert figures["client_us_per_element"] == pytest.approx(
        figures["blind_us_per_element"] + figures["finalize_us_per_element"]
    )


def test_voprf_matches_rfc9497_mode1() -> None:
    pytest.importorskip("voprf")
    path = peers.default_rfc9497_vectors_path()
    if not path.is_file():
        pytest.skip(f"RFC 9497 vectors not found at {path}")
    assert peers.voprf_matches_rfc9497(path)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        peers.bench_voprf([], batch_size=10)
    with pytest.raises(ValueError):
        peers.bench_openmined_psi([])
