"""Sequence ids: a keyed pseudorandom permutation of sequence numbers.

A store that hands out 16-byte ids (the hub's match ids, an agent's
handles) wants them unique and meaningless to whoever receives them, which
random ids are; but a table keyed by random ids takes each new row on a
random page, and inserts slow down as it grows.  Keyed by a sequence number
instead, rows append; the id given out is AES-128 of the number as one
16-byte block, under a key the store keeps to itself.  Distinct numbers
give distinct ids, ids are indistinguishable from random without the key,
and the store decrypts an id to find its row.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["ID_LENGTH", "KEY_LENGTH", "SequenceIds"]

KEY_LENGTH = 16
ID_LENGTH = 16
_MAX_SEQ = 2**63 - 1  # a database's signed 64-bit integer


class SequenceIds:
    """The permutation between sequence numbers and ids under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LENGTH:
            raise ValueError(f"a sequence-id key is {KEY_LENGTH} bytes, got {len(key)}")
        # ECB on single blocks is exactly the block cipher as a permutation:
        # each number is its own block, never a message of several.
        self._cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305

    def __repr__(self) -> str:  # never print the key
        return f"{type(self).__name__}(key=<redacted>)"

    def ids(self, seqs: Sequence[int]) -> list[bytes]:
        """The id of each sequence number (1 <= seq < 2^63), in one cipher call."""
        for seq in seqs:
            if not 1 <= seq <= _MAX_SEQ:
                raise ValueError(f"sequence number {seq} outside 1..2^63-1")
        if not seqs:
            return []
        blocks = b"".join(seq.to_bytes(ID_LENGTH, "big") for seq in seqs)
        encryptor = self._cipher.encryptor()
        out = encryptor.update(blocks) + encryptor.finalize()
        return [out[i : i + ID_LENGTH] for i in range(0, len(out), ID_LENGTH)]

    def seq_of(self, id_: bytes) -> int | None:
        """The sequence number `id_` encrypts, or None when it is no id of this
        key's (wrong length, or a number no row can have)."""
        if len(id_) != ID_LENGTH:
            return None
        decryptor = self._cipher.decryptor()
        seq = int.from_bytes(decryptor.update(id_) + decryptor.finalize(), "big")
        return seq if 1 <= seq <= _MAX_SEQ else None
