"""Match ids: AES-128 encryptions of the matches' sequence numbers.

A match id goes to bureaus (the requester, and the owner when disclosure is
asked), so it must say nothing about other matches: not how many the hub has
made, not in which order.  Random ids do that, but a table keyed by random
ids takes each new row on a random page: a bulk match's 500 hits per batch
dirtied ~500 pages per commit, and the cost grew with the table (SQLite, one
500-row commit: 8 ms at 100,000 stored matches, 14 ms at 500,000; keyed by
a sequence number: 2.4 ms, flat).

So rows are keyed by a sequence number and the id is a keyed pseudorandom
permutation of it: AES-128 of the number as one 16-byte block, under a key
the hub keeps in its database (`hub_secrets`).  Distinct numbers give
distinct ids; without the key, ids are indistinguishable from random ones;
the hub decrypts an id to find its row.  Ids made before this scheme stay
valid through a table of their own (`legacy_match_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["KEY_LENGTH", "MATCH_ID_LENGTH", "MatchIds"]

KEY_LENGTH = 16
MATCH_ID_LENGTH = 16
_MAX_SEQ = 2**63 - 1  # a database's signed 64-bit integer


class MatchIds:
    """The permutation between sequence numbers and match ids under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LENGTH:
            raise ValueError(f"a match-id key is {KEY_LENGTH} bytes, got {len(key)}")
        # ECB on single blocks is exactly the block cipher as a permutation:
        # each number is its own block, never a message of several.
        self._cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305

    def __repr__(self) -> str:  # never print the key
        return "MatchIds(key=<redacted>)"

    def ids(self, seqs: Sequence[int]) -> list[bytes]:
        """The match id of each sequence number (1 <= seq < 2^63), in one cipher call."""
        for seq in seqs:
            if not 1 <= seq <= _MAX_SEQ:
                raise ValueError(f"match sequence number {seq} outside 1..2^63-1")
        blocks = b"".join(seq.to_bytes(MATCH_ID_LENGTH, "big") for seq in seqs)
        encryptor = self._cipher.encryptor()
        out = encryptor.update(blocks) + encryptor.finalize()
        return [out[i : i + MATCH_ID_LENGTH] for i in range(0, len(out), MATCH_ID_LENGTH)]

    def seq_of(self, match_id: bytes) -> int | None:
        """The sequence number `match_id` encrypts, or None when it is no id of
        this key's (wrong length, or a number no row can have)."""
        if len(match_id) != MATCH_ID_LENGTH:
            return None
        decryptor = self._cipher.decryptor()
        seq = int.from_bytes(decryptor.update(match_id) + decryptor.finalize(), "big")
        return seq if 1 <= seq <= _MAX_SEQ else None
