"""One server per PostgreSQL database, schema and table prefix.

A single-node server keeps its jobs in memory and dispatches them from there,
so two of them on the same tables would hand out the same jobs twice (the
reference server has that flaw).  :class:`PrefixOwner` makes the second one
refuse to start, and fences off a server that lost its claim:

* the claim is a session-level advisory lock,
  ``pg_try_advisory_lock(NAMESPACE, hashtext(current_schema() || '.' ||
  prefix))``, held by the store's connection for the server's life.  It goes
  with the session, so a killed server's lock is free as soon as PostgreSQL
  notices the closed socket, and a crashed one never needs a manual unlock.
  (Advisory locks are per database; the schema and prefix pick the tables.
  Two prefixes whose 32-bit hashes collide refuse each other: rename one.)
* an epoch in ``{prefix}store_owner`` is bumped by each new claim.  When the
  connection drops and the store reconnects, it takes the lock again and
  checks that the epoch is still its own.  If another server held the lock in
  between (even one that has left again), that server may have changed the
  jobs, and this server's memory is stale: the store is fenced for good,
  every commit fails with :class:`OwnershipLostError` (acknowledgements are
  refused, never given for writes that would overwrite the other server's),
  and it never takes the lock again so the other server can restart.  The
  operator restarts the fenced server.
* our own previous session may still hold the lock after a network cut (the
  backend has not noticed yet): the store terminates that backend, which is
  its own, and takes the lock.

Cluster mode (docs/cluster.md) takes the same lock in shared mode on each
node (:meth:`PrefixOwner.claim_shared`), so a single server and a cluster
refuse each other too; the nodes fence each other by partition epochs
instead (:mod:`periodic_fast.store.cluster`).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

__all__ = [
    "CLUSTER_HINT",
    "NAMESPACE",
    "OwnershipLostError",
    "PostgresStoreError",
    "PrefixInUseError",
    "PrefixOwner",
]

#: the first key of our advisory locks ("PfSt"), apart from other users'
NAMESPACE = 0x50665374
#: what a refused second server is told
CLUSTER_HINT = (
    "one server per database and prefix: give each server its own prefix "
    "(prefix=...); running several servers on one prefix needs cluster mode "
    "(--cluster, see docs/cluster.md)"
)

_KEY = "hashtext(current_schema() || '.' || $2::text)"
_SQL_TRY = f"SELECT pg_try_advisory_lock($1::int4, {_KEY})"
_SQL_TRY_SHARED = f"SELECT pg_try_advisory_lock_shared($1::int4, {_KEY})"
_SQL_HOLDER = (
    "SELECT l.pid, coalesce(a.application_name, ''),"
    " coalesce(host(a.client_addr), 'local')"
    " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid = $1::int4::int8::oid"
    f" AND l.objid = ({_KEY}::int8 & 4294967295)::oid"
    " LIMIT 1"
)


class PostgresStoreError(ConnectionError):
    """The PostgreSQL store could not be opened (an ``OSError``, so the
    server reports it like any other start-up I/O error)."""


class PrefixInUseError(PostgresStoreError):
    """Another server holds this database and prefix (raised at open)."""


class OwnershipLostError(PostgresStoreError):
    """Another server took this prefix while our connection was gone: the
    store refuses every further commit."""


class PrefixOwner:
    """The claim of one store on its prefix (used on the writer loop).

    :param prefix: the table prefix (the lock key with the schema).
    :param table: the epoch table, ``{prefix}store_owner``.
    :param where: the store's description, for messages.
    :param lock_wait: how long (s) :meth:`claim` retries a held lock at open:
        a server restarted right after a crash may find its predecessor's
        backend still exiting.
    """

    def __init__(self, prefix: str, table: str, where: str, lock_wait: float) -> None:
        self.prefix = prefix
        self.table = table
        self.where = where
        self.lock_wait = lock_wait
        self.epoch: int | None = None  # ours, once claimed
        self.pid: int | None = None  # the backend holding our lock
        self.fenced: OwnershipLostError | None = None

    def schema_sql(self) -> str:
        """The ``CREATE TABLE`` of the epoch table (one row)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),"
            " epoch BIGINT NOT NULL, holder TEXT NOT NULL DEFAULT '',"
            " since TIMESTAMPTZ NOT NULL DEFAULT now())"
        )

    async def claim(self, conn: asyncpg.Connection) -> None:
        """Take the lock on ``conn`` and bump the epoch (first open), or take
        it again and check the epoch (after a reconnect).  Raises
        :class:`PrefixInUseError` at open, :class:`OwnershipLostError` (and
        stays fenced) when another server had the prefix meanwhile, and a
        plain ``ConnectionError`` (retried) while our old session lingers."""
        if self.fenced is not None:
            raise self.fenced
        deadline = time.monotonic() + self.lock_wait
        while not await conn.fetchval(_SQL_TRY, NAMESPACE, self.prefix):
            holder = await conn.fetchrow(_SQL_HOLDER, NAMESPACE, self.prefix)
            if holder is not None and holder[0] == self.pid:
                # our previous session, not yet gone (a network cut)
                await conn.fetchval("SELECT pg_terminate_backend($1)", self.pid)
            elif self.epoch is not None:
                self._fence(conn, holder)
            if time.monotonic() >= deadline:
                if self.epoch is not None:  # only our old session: try later
                    raise ConnectionError(f"{self.where}: old session still holds it")
                raise PrefixInUseError(
                    f"{self.where}: prefix {self.prefix!r} is in use by another "
                    f"server{_who(holder)}; {CLUSTER_HINT}"
                )
            await asyncio.sleep(0.05)
        if self.epoch is None:
            await conn.execute(
                f"INSERT INTO {self.table} (epoch) VALUES (0) ON CONFLICT DO NOTHING"
            )
            self.epoch = await conn.fetchval(
                f"UPDATE {self.table} SET epoch = epoch + 1,"
                " holder = current_setting('application_name'), since = now()"
                " RETURNING epoch"
            )
        elif await conn.fetchval(f"SELECT epoch FROM {self.table}") != self.epoch:
            self._fence(conn, None)
        self.pid = conn.get_server_pid()

    async def claim_shared(self, conn: asyncpg.Connection) -> None:
        """Cluster mode: take the lock in shared mode on ``conn`` (every node
        does, at open and after each reconnect), so no single-node server can
        start on the cluster's prefix while a node lives, and no node while a
        single-node server holds it.  Raises :class:`PrefixInUseError` after
        ``lock_wait`` seconds."""
        deadline = time.monotonic() + self.lock_wait
        while not await conn.fetchval(_SQL_TRY_SHARED, NAMESPACE, self.prefix):
            if time.monotonic() >= deadline:
                holder = await conn.fetchrow(_SQL_HOLDER, NAMESPACE, self.prefix)
                raise PrefixInUseError(
                    f"{self.where}: prefix {self.prefix!r} is held by a single-node "
                    f"server{_who(holder)}; stop it before starting cluster nodes "
                    "on this prefix (--cluster, docs/cluster.md)"
                )
            await asyncio.sleep(0.05)
        self.pid = conn.get_server_pid()

    def _fence(self, conn: asyncpg.Connection, holder: asyncpg.Record | None) -> None:
        """Refuse every later commit (the caller drops ``conn``, and the
        lock with it)."""
        self.fenced = OwnershipLostError(
            f"{self.where}: another server{_who(holder)} took prefix "
            f"{self.prefix!r} while our connection was lost; this server's jobs "
            "are stale and it refuses every write: restart it. "
            f"{CLUSTER_HINT[0].upper()}{CLUSTER_HINT[1:]}"
        )
        raise self.fenced


def _who(holder: asyncpg.Record | None) -> str:
    if holder is None:
        return ""
    pid, app, addr = holder
    return f" (PostgreSQL backend {pid}, {app or 'no application_name'} from {addr})"
