"""The hub's domain errors, under the project's one error tree (`psi.errors`).

Each class names the rule that was broken; `hub.service` maps them to gRPC
status codes in one table.  Messages are written for a person: they say what
was wrong and what to do.
"""

from __future__ import annotations

from psi.errors import BlindmatchError, InvalidInputError, LocalError

__all__ = [
    "AlreadyExistsError",
    "ConcurrentEnrollmentError",
    "ConfigError",
    "FailedPreconditionError",
    "LimitExceededError",
    "NotFoundError",
    "PermissionDeniedError",
    "StorageError",
]


class NotFoundError(LocalError):
    """The caller named a dataset of its own that does not exist."""


class AlreadyExistsError(LocalError):
    """A dataset of that name exists and the request did not ask to replace it."""


class PermissionDeniedError(LocalError):
    """The caller asked for something that belongs to another bureau."""


class FailedPreconditionError(LocalError):
    """The request is well formed but the dataset is not in the state it needs
    (for example, an update for another key epoch than the dataset's)."""


class ConcurrentEnrollmentError(LocalError):
    """Another enrollment of the same dataset is in progress."""


class LimitExceededError(InvalidInputError):
    """A request is larger than the hub accepts; the message names the limit."""


class ConfigError(LocalError):
    """The hub's configuration file is missing, malformed or names a bad value."""


class StorageError(BlindmatchError):
    """The hub's database failed (disk full, I/O error, locked too long)."""
