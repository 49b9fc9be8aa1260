"""The persistence seam: the :class:`Store` protocol and :func:`open_store`.

The contract every store keeps is in :mod:`periodic_fast.store._contract`
(load once, enqueued writes, the durability barrier, deferred or immediate).

Store URIs (cli-and-http.md, docs/storage.md): ``:memory:``; ``file://PATH``
(SQLite; ``cache+file://PATH`` and a bare path containing ``/`` mean the same);
``postgres://...`` / ``postgresql://...``.
"""

from __future__ import annotations

from ._contract import RecordStore, Store, StoreSnapshot

__all__ = ["RecordStore", "Store", "StoreSnapshot", "open_store"]


def open_store(uri: str, *, durability: str = "strict") -> Store:
    """Open the store named by ``uri``.

    ``":memory:"`` (nothing survives the process), ``file://PATH`` (SQLite:
    ``file://rel.db`` relative, ``file:///abs.db`` absolute; ``cache+file://``
    and a bare path containing ``/`` are taken as ``file://``),
    ``postgres://...`` / ``postgresql://...`` (``cache+postgres://`` is taken
    as ``postgres://``).  ``durability`` is ``"strict"``
    (the default: a commit is on disk before it is acknowledged) or
    ``"relaxed"`` (a power loss may lose the last commits; a process crash
    loses nothing); the memory store ignores it.

    Raises :class:`ValueError` for a bad ``durability`` or an unknown URI
    (the message lists the supported forms), and :class:`OSError` when the
    store cannot be opened.
    """
    if durability not in ("strict", "relaxed"):
        raise ValueError(f"durability {durability!r}: expected 'strict' or 'relaxed'")
    if uri == ":memory:":
        from .memory import MemoryStore  # noqa: PLC0415 - keep drivers lazy

        return MemoryStore()
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("postgres", "postgresql", "cache+postgres", "cache+postgresql"):
        # postgres://URL or postgres://key=value conninfo, optional prefix=;
        # cache+postgres:// is the plain (durable) store, as cache+file://
        from .postgres import PostgresStore, parse_postgres_uri  # noqa: PLC0415

        connect, prefix = parse_postgres_uri(uri.removeprefix("cache+"))
        return PostgresStore(connect, prefix=prefix, durability=durability)
    if scheme in ("file", "cache+file") or (not scheme and "/" in uri):
        from .sqlite import SqliteStore, parse_file_uri  # noqa: PLC0415

        return SqliteStore(parse_file_uri(uri), durability=durability)
    raise ValueError(
        f"unknown store URI {uri!r} (expected ':memory:', 'file://PATH' or"
        " 'postgres://...')"
    )
