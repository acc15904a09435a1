"""Errors of the cluster queue that its callers tell apart."""

from __future__ import annotations

from router.store.records import QueueUnavailable

__all__ = ["CommitUncertain", "DatabaseUnavailable"]


class DatabaseUnavailable(QueueUnavailable):
    """The database could not be reached or the connection broke mid-operation. The
    operation did not happen (or, for :class:`CommitUncertain`, may have); nothing is
    reported as done. The pool reconnects by itself: the next call may succeed."""


class CommitUncertain(DatabaseUnavailable):
    """The connection broke during COMMIT: the rows may or may not be committed. The
    instance must not be acknowledged; the sender sends it again (at least once)."""
