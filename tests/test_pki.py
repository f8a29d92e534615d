"""Federation PKI: CA, certificates with identities, the signed directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from bureau_agent import pki
from psi.errors import VerifyError


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    pki.init_federation(tmp_path, "test")
    pki.issue_hub(tmp_path, address="127.0.0.1:7000")
    for code in ("FRA", "DEU"):
        pki.issue_bureau(tmp_path, code, address=f"{code.lower()}.example:7001")
    return tmp_path


def test_certificates_name_their_holder(federation: Path) -> None:
    fra = (federation / "bureaus" / "FRA" / "tls.crt").read_bytes()
    hub = (federation / "hub" / "tls.crt").read_bytes()
    assert pki.identity_from_pem(fra) == pki.Identity("bureau", "FRA")
    assert pki.identity_from_pem(hub) == pki.Identity("hub", "hub")
    cert = x509.load_pem_x509_certificate(fra)
    ca = x509.load_pem_x509_certificate((federation / "ca" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_private_keys_are_owner_only(federation: Path) -> None:
    for path in [federation / "ca" / "ca.key", *(federation / "bureaus" / "FRA").glob("*.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_directory_lists_bureaus_and_verifies(federation: Path) -> None:
    d = pki.load_directory(federation / "directory.json", federation / "ca" / "ca.crt")
    assert sorted(d.bureaus) == ["DEU", "FRA"]
    assert d.hub_address == "127.0.0.1:7000"
    assert len(d.bureau("FRA").hpke_mlkem768) == 1184
    assert len(d.bureau("FRA").signing_key) == 32 and len(d.hub_audit_key) == 32
    assert d.version == 3  # made at 0, then hub, FRA, DEU


def test_tampered_directory_is_rejected(federation: Path) -> None:
    path = federation / "directory.json"
    document = json.loads(path.read_text())
    document["directory"]["bureaus"][0]["address"] = "evil.example:1"
    path.write_text(json.dumps(document))
    with pytest.raises(VerifyError, match="signature does not verify"):
        pki.load_directory(path, federation / "ca" / "ca.crt")


def test_directory_from_another_ca_is_rejected(
    federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    pki.init_federation(other, "other")
    with pytest.raises(VerifyError):
        pki.load_directory(federation / "directory.json", other / "ca" / "ca.crt")


def test_reissue_keeps_long_term_keys(federation: Path) -> None:
    before = pki.load_directory(federation / "directory.json", federation / "ca" / "ca.crt")
    pki.issue_bureau(federation, "FRA")
    after = pki.load_directory(federation / "directory.json", federation / "ca" / "ca.crt")
    assert after.bureau("FRA") == before.bureau("FRA")  # address kept, keys kept
    assert after.version == before.version + 1


@pytest.mark.parametrize("code", ["fr", "FRANCE", "F1A", ""])
def test_bad_bureau_code(federation: Path, code: str) -> None:
    with pytest.raises(pki.PkiError, match="three capital letters"):
        pki.issue_bureau(federation, code)


def test_init_refuses_to_overwrite(federation: Path) -> None:
    with pytest.raises(pki.PkiError, match="refusing to overwrite"):
        pki.init_federation(federation, "again")


def test_identity_requires_exactly_one_certificate() -> None:
    with pytest.raises(pki.IdentityError, match="no client certificate"):
        pki.identity_from_auth_context({})


def test_the_cache_sees_an_update_of_equal_size_within_one_clock_tick(federation: Path) -> None:
    """Two addresses published in a row: same size, and the file system's
    clock may give both files the same time; the cache must still see the
    second."""
    path = federation / "directory.json"
    pki.set_address(federation, "FRA", "127.0.0.1:40001")
    cache = pki.DirectoryCache(path, federation / "ca" / "ca.crt")
    assert cache.get().bureau("FRA").address == "127.0.0.1:40001"
    before = path.stat()
    pki.set_address(federation, "FRA", "127.0.0.1:40002")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick
    assert path.stat().st_size == before.st_size
    assert cache.get().bureau("FRA").address == "127.0.0.1:40002"


def test_an_update_while_the_cache_first_reads_is_seen(
    federation: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process publishes an address while the cache is reading the
    directory for the first time: the next `get` returns the new one."""
    path = federation / "directory.json"
    real = pki.load_directory

    def load_then_update(p: Path, ca: Path) -> pki.Directory:
        loaded = real(p, ca)
        monkeypatch.setattr(pki, "load_directory", real)
        pki.set_address(federation, "DEU", "127.0.0.1:40003")
        return loaded

    monkeypatch.setattr(pki, "load_directory", load_then_update)
    cache = pki.DirectoryCache(path, federation / "ca" / "ca.crt")
    assert cache.get().bureau("DEU").address == "127.0.0.1:40003"
