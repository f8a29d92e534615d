"""Key ceremony: shares on disk, commitments in the directory, checks on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bureau_agent import ceremony, pki
from psi import oprf, threshold
from psi.errors import VerifyError


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    pki.init_federation(tmp_path, "test")
    for code in ("FRA", "DEU", "BRA", "USA"):
        pki.issue_bureau(tmp_path, code)
    return tmp_path


def directory(root: Path) -> pki.Directory:
    return pki.load_directory(root / "directory.json", root / "ca" / "ca.crt")


def test_ceremony_shares_load_and_reconstruct(federation: Path) -> None:
    entry = ceremony.run_ceremony(
        federation, epoch=1, threshold_t=2, custodians=["FRA", "DEU", "BRA"]
    )
    d = directory(federation)
    assert d.epochs[1] == entry and entry.custodians == {"FRA": 1, "DEU": 2, "BRA": 3}
    loaded = [
        ceremony.load_share(ceremony.share_path(federation, 1, c), d, c)
        for c in ("FRA", "DEU", "BRA")
    ]
    key = threshold.recover_key([loaded[0].share, loaded[2].share])
    assert oprf.public_key(key) == entry.commitments[0]


def test_tampered_share_is_refused(federation: Path) -> None:
    ceremony.run_ceremony(federation, epoch=1, threshold_t=2, custodians=["FRA", "DEU", "BRA"])
    path = ceremony.share_path(federation, 1, "DEU")
    document = json.loads(path.read_text())
    value = bytearray.fromhex(document["share"])
    value[0] ^= 1
    document["share"] = value.hex()
    path.write_text(json.dumps(document))
    with pytest.raises(VerifyError, match="share 2 does not match"):
        ceremony.load_share(path, directory(federation), "DEU")


def test_share_of_another_custodian_or_epoch_is_refused(federation: Path) -> None:
    ceremony.run_ceremony(federation, epoch=1, threshold_t=2, custodians=["FRA", "DEU", "BRA"])
    d = directory(federation)
    with pytest.raises(pki.PkiError, match="is FRA's share, not DEU's"):
        ceremony.load_share(ceremony.share_path(federation, 1, "FRA"), d, "DEU")
    ceremony.run_ceremony(federation, epoch=2, threshold_t=2, custodians=["FRA", "DEU", "USA"])
    old = directory(federation).replace(epochs={2: directory(federation).epochs[2]})
    with pytest.raises(pki.PkiError, match="epoch 1"):
        ceremony.load_share(ceremony.share_path(federation, 1, "FRA"), old, "FRA")


def test_ceremony_refuses_bad_parameters(federation: Path) -> None:
    ceremony.run_ceremony(federation, epoch=1, threshold_t=2, custodians=["FRA", "DEU", "BRA"])
    with pytest.raises(pki.PkiError, match="already exists"):
        ceremony.run_ceremony(federation, epoch=1, threshold_t=2, custodians=["FRA", "DEU", "BRA"])
    with pytest.raises(pki.PkiError, match="not in the federation directory"):
        ceremony.run_ceremony(federation, epoch=3, threshold_t=2, custodians=["FRA", "XXX"])
    with pytest.raises(pki.PkiError, match="repeats"):
        ceremony.run_ceremony(federation, epoch=3, threshold_t=2, custodians=["FRA", "FRA"])


def test_a_custodian_loads_one_share_per_epoch(federation: Path) -> None:
    custodians = ["FRA", "DEU", "BRA"]
    ceremony.run_ceremony(federation, epoch=1, threshold_t=2, custodians=custodians)
    ceremony.run_ceremony(federation, epoch=2, threshold_t=2, custodians=custodians)
    d = directory(federation)
    first, second = (ceremony.share_path(federation, e, "FRA") for e in (1, 2))
    loaded = ceremony.load_shares([second, first], d, "FRA")
    assert list(loaded) == [1, 2]  # by epoch, oldest first
    assert loaded[1].share != loaded[2].share
    # A second file of one epoch is refused, naming both files.
    copy = federation / "copy-of-epoch-1.share.json"
    copy.write_bytes(first.read_bytes())
    with pytest.raises(pki.PkiError, match="second share of epoch 1") as info:
        ceremony.load_shares([first, second, copy], d, "FRA")
    assert str(copy) in str(info.value) and str(first) in str(info.value)
