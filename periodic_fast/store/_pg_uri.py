"""Where a PostgreSQL store connects: the ``postgres://`` URI forms, the
table prefix, and a password-free description for messages."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

__all__ = ["check_prefix", "describe", "parse_postgres_uri"]

_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_CONNINFO_RE = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
# libpq conninfo keywords we understand -> asyncpg.connect keyword
_CONNINFO_KEYS = {
    "host": "host",
    "hostaddr": "host",
    "port": "port",
    "dbname": "database",
    "user": "user",
    "password": "password",
    "sslmode": "ssl",
    "connect_timeout": "timeout",
    "application_name": "application_name",
    "prefix": "prefix",
}


def check_prefix(prefix: str) -> str:
    if prefix and not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"table prefix {prefix!r}: use letters, digits and _ "
            "(not starting with a digit, at most 40 characters)"
        )
    return prefix


def _parse_conninfo(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _CONNINFO_RE.match(text, pos)
        if m is None:
            raise ValueError(f"bad conninfo near {text[pos:]!r} (expected key=value)")
        key, value = m.group(1), m.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if key not in _CONNINFO_KEYS:
            known = ", ".join(sorted(_CONNINFO_KEYS))
            raise ValueError(f"conninfo key {key!r} is not supported (known: {known})")
        out[key] = value
        pos = m.end()
    return out


def parse_postgres_uri(uri: str) -> tuple[dict[str, Any], str]:
    """Split a store URI into ``asyncpg.connect`` keyword arguments and the
    table prefix.

    Accepted forms (``postgres://`` or ``postgresql://``):

    * a URL: ``postgresql://user:pw@host:5432/db?sslmode=require&prefix=x_``;
      a unix socket directory as the host, percent-encoded
      (``postgresql://user@%2Frun%2Fpostgresql/db``) or as a ``host=``
      parameter (``postgresql:///db?host=/run/postgresql``);
    * a libpq key=value string, as the reference takes it:
      ``postgres://host=/run/postgresql dbname=periodic user=me prefix='x_'``.

    ``prefix`` (letters, digits, ``_``) is taken out before connecting.
    Raises :class:`ValueError` for anything else.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgres:// URI: {uri!r}")
    if re.match(r"\s*[A-Za-z_]+\s*=", rest):
        info = _parse_conninfo(rest)
        prefix = info.pop("prefix", "")
        kwargs: dict[str, Any] = {}
        settings: dict[str, str] = {}
        for key, value in info.items():
            target = _CONNINFO_KEYS[key]
            if target == "application_name":
                settings["application_name"] = value
            elif target == "timeout":
                try:
                    kwargs["timeout"] = float(value)
                except ValueError:
                    raise ValueError(
                        f"connect_timeout {value!r} is not a number"
                    ) from None
            elif target == "host" and "host" in kwargs and key == "hostaddr":
                continue  # host wins over hostaddr
            else:
                kwargs[target] = value
        if settings:
            kwargs["server_settings"] = settings
        return kwargs, check_prefix(prefix)
    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    rest_query = urllib.parse.urlencode(
        [(k, v) for k, v in query if k != "prefix"], safe="/"
    )
    dsn = urllib.parse.urlunsplit(
        ("postgresql", parts.netloc, parts.path, rest_query, parts.fragment)
    )
    return {"dsn": dsn}, check_prefix(prefixes[-1] if prefixes else "")


def describe(connect: dict[str, Any]) -> str:
    """Where ``connect`` points, without the password (for error messages)."""
    dsn = connect.get("dsn")
    if dsn:
        parts = urllib.parse.urlsplit(str(dsn))
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        where = f"{user}@{netloc[2]}" if netloc[1] else netloc[2]
        query = urllib.parse.unquote(parts.query)
        return urllib.parse.urlunsplit((parts.scheme, where, parts.path, query, ""))
    fields = ("host", "port", "database", "user")
    return " ".join(f"{k}={connect[k]}" for k in fields if connect.get(k))
