"""The auth file: identities, roles, allowed funcs, and the decisions on them.

File format (``--auth-file``; cli-and-http.md 4.10, protocol.md 5.2), one
identity per line, exactly four whitespace-separated fields::

    # role   name      token     funcs
    client   web       s3cret    email,thumbnail
    worker   mailer    t0ken     email
    admin    ops       r00t      *
    worker   resizer   t1ken     thumb,lock:gpu,lock:disk-*

* ``role`` is ``client``, ``worker`` or ``admin``;
* the func list is comma-separated; empty entries are skipped, every other
  entry must be 1-255 bytes, and at least one must remain (admins need a
  placeholder: they may use every func anyway);
* an entry ``lock:NAME`` is no func: it lets the identity ACQUIRE the lock
  ``NAME`` (``lock:PREFIX*``: every lock starting with ``PREFIX``;
  ``lock:*``: every lock).  Without such entries an identity may use the
  locks named after one of its funcs: ``FUNC`` or ``FUNC-anything``
  (:meth:`Identity.lock_allowed`; docs/security.md, "Locks");
* ``#`` starts a comment anywhere on a line; blank lines are ignored; space,
  tab and CR separate fields; a later line with the same name replaces an
  earlier one;
* one malformed line makes the whole file invalid (:class:`AuthFileError`).

:class:`AuthRules` is one parsed, immutable version of the file;
:class:`AuthFile` holds the current version of a file on disk and reloads it
when its modification time or size changes (the server calls
:meth:`AuthFile.poll` about once a second).  A file that became malformed or
unreadable keeps the previous rules (logged); a deleted file keeps them too.

Tokens are compared in constant time (:func:`hmac.compare_digest`).  Nothing
here does I/O except :class:`AuthFile` reading its file; no asyncio.
"""

from __future__ import annotations

import enum
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AuthFile",
    "AuthFileError",
    "AuthRules",
    "Identity",
    "Role",
    "load_auth_file",
    "parse_auth_file",
]

log = logging.getLogger("periodic_fast.auth")

_FIELD_SEPARATORS: Final = b" \t\r\v\f"
_MAX_FUNC: Final = 255
_LOCK: Final = b"lock:"  # a func-list entry naming a lock (or lock prefix)


class AuthFileError(ValueError):
    """The auth file is malformed (the message names the line) or unreadable."""


class Role(enum.Enum):
    """The role an identity has in the auth file."""

    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """One line of the auth file."""

    role: Role
    name: bytes
    token: bytes
    funcs: frozenset[bytes]
    #: ``lock:NAME`` entries: lock names, and prefixes (``lock:PREFIX*``)
    locks: frozenset[bytes] = frozenset()
    lock_prefixes: tuple[bytes, ...] = ()

    def func_allowed(self, func: bytes) -> bool:
        """May this identity name ``func`` (submit, run, can-do, ...)?"""
        return self.role is Role.ADMIN or func in self.funcs

    def lock_allowed(self, lock: bytes) -> bool:
        """May this identity ACQUIRE the lock ``lock``?

        Admins: any.  Others: a lock named by a ``lock:`` entry (or starting
        with a ``lock:PREFIX*`` prefix), or named after one of its funcs:
        the func itself or ``FUNC-...``.
        """
        if self.role is Role.ADMIN or lock in self.locks:
            return True
        funcs = self.funcs
        if lock in funcs:
            return True
        i = lock.find(b"-")
        while i > 0:  # FUNC-...: every '-' may end a func name
            if lock[:i] in funcs:
                return True
            i = lock.find(b"-", i + 1)
        return any(lock.startswith(p) for p in self.lock_prefixes)

    def may_connect_as(self, worker: bool) -> bool:
        """Does the role fit the connection's role (protocol.md 5.3)?

        An admin may connect as client or worker; the others only as their role.
        """
        role = self.role
        if role is Role.ADMIN:
            return True
        return role is (Role.WORKER if worker else Role.CLIENT)


class AuthRules:
    """One parsed version of an auth file: name -> :class:`Identity`."""

    __slots__ = ("_by_name",)

    def __init__(self, identities: Iterable[Identity] = ()) -> None:
        by_name: dict[bytes, Identity] = {}
        for ident in identities:
            by_name[ident.name] = ident  # later lines win
        self._by_name = by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthRules):
            return NotImplemented
        return self._by_name == other._by_name

    __hash__ = None  # type: ignore[assignment]  # mutable-looking: not hashable

    def __repr__(self) -> str:
        names = ", ".join(n.decode("utf-8", "replace") for n in self._by_name)
        return f"AuthRules({names})"

    @property
    def identities(self) -> Mapping[bytes, Identity]:
        """Every identity, by name (read-only view)."""
        return self._by_name

    def authenticate(self, name: bytes, token: bytes) -> Identity | None:
        """The identity ``name`` if ``token`` is its token, else None.

        The token comparison takes the same time whatever the token (and an
        unknown name still costs one comparison).
        """
        ident = self._by_name.get(name)
        if ident is None:
            hmac.compare_digest(token, token)  # same work as a real comparison
            return None
        if hmac.compare_digest(ident.token, token):
            return ident
        return None

    def authenticate_token(self, token: bytes) -> Identity | None:
        """The identity whose token is ``token`` (HTTP ``Bearer``), or None.

        Every token is compared (constant time each, no early exit).  A token
        shared by several identities names none of them: None.
        """
        found: list[Identity] = []
        for ident in self._by_name.values():
            if hmac.compare_digest(ident.token, token):
                found.append(ident)
        return found[0] if len(found) == 1 else None


def parse_auth_file(data: bytes) -> AuthRules:
    """Parse the text of an auth file; :class:`AuthFileError` names the
    first malformed line."""
    idents: list[Identity] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        line = raw.split(b"#", 1)[0]
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise AuthFileError(
                f"line {lineno}: want 4 fields '<role> <name> <token> "
                f"<func1,func2,...>', got {len(fields)}"
            )
        role_s, name, token, funcs_s = fields
        try:
            role = Role(role_s.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise AuthFileError(
                f"line {lineno}: unknown role {role_s!r} (client, worker or admin)"
            ) from None
        funcs: set[bytes] = set()
        locks: set[bytes] = set()
        prefixes: set[bytes] = set()
        for entry in funcs_s.split(b","):
            if not entry:
                continue
            lock = entry[len(_LOCK) :] if entry.startswith(_LOCK) else None
            if len(lock if lock is not None else entry) > _MAX_FUNC:
                raise AuthFileError(
                    f"line {lineno}: func or lock name longer than {_MAX_FUNC} bytes"
                )
            if lock is None:
                funcs.add(entry)
            elif lock.endswith(b"*"):
                prefixes.add(lock[:-1])  # b"" (lock:*): every lock
            elif lock:
                locks.add(lock)
            else:
                raise AuthFileError(f"line {lineno}: 'lock:' without a name")
        if not funcs and not locks and not prefixes:
            raise AuthFileError(f"line {lineno}: empty func list")
        idents.append(
            Identity(
                role,
                name,
                token,
                frozenset(funcs),
                frozenset(locks),
                tuple(sorted(prefixes)),
            )
        )
    return AuthRules(idents)


def load_auth_file(path: str | os.PathLike[str]) -> AuthRules:
    """Read and parse ``path``; :class:`AuthFileError` if unreadable or malformed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AuthFileError(f"cannot read {os.fspath(path)}: {exc}") from None
    return parse_auth_file(data)


def warn_if_readable(path: str) -> bool:
    """Log a warning when users other than the owner may read the file at
    ``path`` (its tokens would let them act as any identity in it); True if
    it warned."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warning(
        "auth file %s can be read by other users (mode %o): run chmod 600 on it",
        path,
        mode & 0o777,
    )
    return True


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class AuthFile:
    """An auth file on disk and its current rules.

    Reads the file once here (:class:`AuthFileError` if it is missing or
    malformed: the server must not start).  :meth:`poll` re-reads it when
    its mtime, size or inode changed (an editor replacing it by rename
    counts) and returns the new rules, or None when nothing changed.
    """

    __slots__ = ("_path", "_rules", "_seen", "_failed")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        try:
            seen = _signature(os.stat(self._path))
        except OSError as exc:
            raise AuthFileError(f"cannot read {self._path}: {exc}") from None
        try:
            self._rules = load_auth_file(self._path)
        except AuthFileError as exc:
            raise AuthFileError(f"{self._path}: {exc}") from None
        self._seen = seen
        self._failed: tuple[int, int, int, int] | None = None
        warn_if_readable(self._path)

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def rules(self) -> AuthRules:
        """The rules in force."""
        return self._rules

    def poll(self) -> AuthRules | None:
        """Reload if the file changed; the new rules, or None if unchanged.

        A malformed or unreadable new version is logged once and ignored (the
        old rules stay); a missing file keeps the old rules silently.
        """
        try:
            sig = _signature(os.stat(self._path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("auth file %s: cannot stat: %s", self._path, exc)
            return None
        if sig == self._seen or sig == self._failed:
            return None
        try:
            rules = load_auth_file(self._path)
        except AuthFileError as exc:
            self._failed = sig
            log.error(
                "auth file %s: not reloaded, keeping the previous rules: %s",
                self._path,
                exc,
            )
            return None
        self._seen = sig
        self._failed = None
        self._rules = rules
        warn_if_readable(self._path)
        log.info("auth file %s reloaded (%d identities)", self._path, len(rules))
        return rules
