"""One throwaway PostgreSQL cluster per test process, for the PostgreSQL tests.

:func:`shared_cluster` starts it on first use (fsync off: these tests check
behaviour, not speed) and it is stopped and deleted at interpreter exit.
Every user takes a fresh table prefix (:func:`fresh_prefix`), so tests never
see each other's rows.  Where the binaries (or asyncpg) are missing the tests
skip with the reason, except under ``CI=true``, where they fail: CI installs
the ``postgresql`` package and must not pass by skipping.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from periodic_fast.store import Store
from periodic_fast.testing_pg import PostgresCluster, PostgresUnavailable

_cluster: PostgresCluster | None = None
_failure: str | None = None
_prefixes = itertools.count(1)


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"PostgreSQL required under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def require_postgres() -> None:
    """Skip (or fail under CI) when asyncpg or the server binaries are missing."""
    try:
        import asyncpg  # noqa: F401
    except ImportError as exc:
        unavailable(f"asyncpg is not installed ({exc})")
    try:
        from periodic_fast.testing_pg import find_pg_bindir

        find_pg_bindir()
    except PostgresUnavailable as exc:
        unavailable(str(exc))


def shared_cluster() -> PostgresCluster:
    """The process-wide test cluster (started on first call)."""
    global _cluster, _failure
    if _failure is not None:
        unavailable(_failure)
    if _cluster is None:
        require_postgres()
        try:
            _cluster = PostgresCluster(fsync=False).start()
        except PostgresUnavailable as exc:
            _failure = str(exc)
            unavailable(_failure)
    return _cluster


def fresh_prefix() -> str:
    """A table prefix no other test in this process uses."""
    return f"t{os.getpid()}_{next(_prefixes)}_"


def postgres_pair(_tmp_path: Path) -> tuple[Store, Callable[[], Store]]:
    """Factory for the store contract suite: a store on fresh tables and a
    ``reopen()`` that closes it and opens the same tables again."""
    from periodic_fast.store.postgres import PostgresStore, parse_postgres_uri

    cluster = shared_cluster()
    connect, _ = parse_postgres_uri(cluster.uri)
    prefix = fresh_prefix()
    store = PostgresStore(connect, prefix=prefix)
    current: list[Store] = [store]

    def reopen() -> Store:
        current[0].close()
        current[0] = PostgresStore(connect, prefix=prefix)
        return current[0]

    return store, reopen
