"""The key ceremony: deal an epoch's OPRF key t-of-n to custodian bureaus.

A trusted dealer (the ceremony host) draws the epoch key, splits it with
Shamir's scheme, publishes the Feldman commitments and the custodians' share
indices in the signed federation directory, writes one share file per
custodian (mode 0600), checks that the first t shares give the published
group public key, and forgets the key.  Each custodian agent re-checks its
share against the directory's commitments when it loads it and refuses a
share that does not match.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bureau_agent import pki
from psi import group, oprf, threshold
from psi.errors import VerifyError

__all__ = ["CustodianShare", "load_share", "load_shares", "run_ceremony", "share_path"]


@dataclass(frozen=True)
class CustodianShare:
    """A custodian's loaded and verified share, with its epoch's public facts."""

    custodian: str
    epoch: pki.EpochEntry
    share: threshold.KeyShare
    commitments: threshold.FeldmanCommitments


def share_path(root: Path, epoch: int, code: str) -> Path:
    return root / "keys" / f"epoch-{epoch}" / f"{code}.share.json"


def run_ceremony(
    root: Path, *, epoch: int, threshold_t: int, custodians: Sequence[str]
) -> pki.EpochEntry:
    """Deal epoch `epoch` to `custodians` (bureau codes, in index order)."""
    directory = pki.load_directory(root / "directory.json", root / "ca" / "ca.crt")
    if epoch in directory.epochs:
        raise pki.PkiError(f"epoch {epoch} already exists; choose a new epoch number")
    if epoch < 1:
        raise pki.PkiError("epochs are numbered from 1")
    if len(set(custodians)) != len(custodians):
        raise pki.PkiError(f"custodian list {list(custodians)} repeats a bureau")
    for code in custodians:
        directory.bureau(code)  # every custodian must be a federation member
    shares, commitments = threshold.generate_threshold_key(threshold_t, len(custodians))
    # Self-check before anything is published: t shares give the group key.
    recovered = threshold.recover_key(shares[:threshold_t])
    if oprf.public_key(recovered) != commitments.group_public_key:
        raise VerifyError("ceremony self-check failed: shares do not reconstruct the key")
    del recovered
    entry = pki.EpochEntry(
        epoch=epoch,
        threshold=threshold_t,
        commitments=commitments.points,
        custodians={code: share.index for code, share in zip(custodians, shares, strict=True)},
    )
    for code, share in zip(custodians, shares, strict=True):
        document = {
            "epoch": epoch,
            "custodian": code,
            "index": share.index,
            "threshold": threshold_t,
            "share": share.value.hex(),
            "commitments": [c.hex() for c in commitments.points],
        }
        pki.write_private_file(
            share_path(root, epoch, code), json.dumps(document, indent=2).encode()
        )
    pki.update_directory(root, lambda d: d.replace(epochs={**d.epochs, epoch: entry}))
    return entry


def load_share(path: Path, directory: pki.Directory, custodian: str) -> CustodianShare:
    """Read a share file and verify it against the signed directory's commitments."""
    try:
        document = json.loads(path.read_text())
        epoch = int(document["epoch"])
        index = int(document["index"])
        value = bytes.fromhex(document["share"])
        own_commitments = tuple(bytes.fromhex(c) for c in document["commitments"])
        holder = str(document["custodian"])
    except FileNotFoundError:
        raise pki.PkiError(f"share file not found at {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise pki.PkiError(f"{path} is not a share file: {exc!r}") from None
    if holder != custodian:
        raise pki.PkiError(f"{path} is {holder}'s share, not {custodian}'s")
    entry = directory.epochs.get(epoch)
    if entry is None:
        raise pki.PkiError(f"epoch {epoch} of {path} is not in the federation directory")
    if entry.custodians.get(custodian) != index:
        raise VerifyError(
            f"the directory does not list {custodian} as custodian {index} of epoch {epoch}"
        )
    if own_commitments != entry.commitments:
        raise VerifyError(f"{path}: commitments differ from the federation directory's")
    commitments = threshold.FeldmanCommitments.decode(entry.commitments)
    share = threshold.KeyShare(index, group.decode_scalar(value, name="share"))
    threshold.verify_share(share, commitments)
    return CustodianShare(custodian, entry, share, commitments)


def load_shares(
    paths: Iterable[Path], directory: pki.Directory, custodian: str
) -> dict[int, CustodianShare]:
    """Load and verify one share file per key epoch, by epoch (oldest first).

    Two files of the same epoch are refused, naming both: a custodian holds
    exactly one share of an epoch, so a second one is a configuration mistake.
    """
    loaded: dict[int, tuple[Path, CustodianShare]] = {}
    for path in paths:
        share = load_share(path, directory, custodian)
        epoch = share.epoch.epoch
        if epoch in loaded:
            raise pki.PkiError(
                f"{path} is a second share of epoch {epoch} (the first is {loaded[epoch][0]}); "
                "list one share file per epoch"
            )
        loaded[epoch] = (path, share)
    return {epoch: loaded[epoch][1] for epoch in sorted(loaded)}
