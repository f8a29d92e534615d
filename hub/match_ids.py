"""Match ids: AES-128 encryptions of the matches' sequence numbers.

A match id goes to bureaus (the requester, and the owner when disclosure is
asked), so it must say nothing about other matches: not how many the hub has
made, not in which order.  Random ids do that, but a table keyed by random
ids takes each new row on a random page: a bulk match's 500 hits per batch
dirtied ~500 pages per commit, and the cost grew with the table (SQLite, one
500-row commit: 8 ms at 100,000 stored matches, 14 ms at 500,000; keyed by
a sequence number: 2.4 ms, flat).

So rows are keyed by a sequence number and the id is a keyed pseudorandom
permutation of it (`psi.sequence_ids`: AES-128 of the number as one 16-byte
block), under a key the hub keeps in its database (`hub_secrets`).
Distinct numbers give distinct ids; without the key, ids are
indistinguishable from random ones; the hub decrypts an id to find its row.
Ids made before this scheme stay valid through a table of their own
(`legacy_match_ids`).
"""

from __future__ import annotations

from psi.sequence_ids import ID_LENGTH, KEY_LENGTH, SequenceIds

__all__ = ["KEY_LENGTH", "MATCH_ID_LENGTH", "MatchIds"]

MATCH_ID_LENGTH = ID_LENGTH


class MatchIds(SequenceIds):
    """The permutation between match sequence numbers and match ids under the hub's key."""
