"""The throwaway PostgreSQL server of the tests; it lives in benchmarks/pgserver.py,
router-independent code that the benchmarks (``router-pg``) start too."""

from benchmarks.pgserver import PgServer, find_bindir, unprivileged_user

__all__ = ["PgServer", "find_bindir", "unprivileged_user"]
