"""``periodicd --config FILE``: the server's settings from a TOML file.

Every ``periodicd`` option has a key: its long flag without the leading
dashes (``--assign-wait`` -> ``assign-wait``, ``--no-http`` -> ``no-http``,
``--rsa-legacy/--no-rsa-legacy`` -> ``rsa-legacy = true|false``); options
that repeat (``host``, ``http-host``) take a string or an array of strings.

Precedence is flag > environment > file > default.  The file's values are
handed to click as the command's ``default_map`` by the eager ``--config``
option, before the other options are read: click then consults, for each
option, the command line, its environment variable, the ``default_map`` and
the declared default, in that order, and records which one it used
(``ctx.get_parameter_source``): what ``--print-config`` shows.

A key the command does not know, or a value of the wrong type or out of
range: :class:`ConfigFileError`, one line naming the key and the file.
:class:`ConfigReloader` re-reads the file on SIGHUP and says which settings
taken from the file (or left at their default) changed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer._click.core import ParameterSource
from typer.exceptions import TyperException

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = [
    "CONFIG_ENV",
    "Check",
    "ConfigFileError",
    "ConfigReloader",
    "Setting",
    "file_keys",
    "load_file",
    "render",
    "settings",
]

#: Environment variable naming the config file (the ``--config`` fallback).
CONFIG_ENV = "PERIODIC_CONFIG"
#: Options that are not settings: no key in the file.
_NOT_KEYS = frozenset({"config", "print-config", "version", "help"})
_SOURCES = {
    ParameterSource.COMMANDLINE: "flag",
    ParameterSource.ENVIRONMENT: "env",
    ParameterSource.DEFAULT_MAP: "file",
    ParameterSource.DEFAULT: "default",
}

#: A value check beyond the option's type (a choice, an octal mode):
#: raises ValueError or typer.BadParameter with the reason.
Check = Callable[[Any], object]


class ConfigFileError(ValueError):
    """The config file cannot be read, or a key or value in it is wrong."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One effective setting: its key, value and where it came from
    (``flag``, ``env``, ``file`` or ``default``)."""

    key: str
    value: Any
    source: str


def file_keys(command: typer.core.TyperCommand | Any) -> dict[str, Any]:
    """Key -> option of every setting of ``command`` (a click command):
    each visible option with a long name, but ``--config`` and the like."""
    keys: dict[str, Any] = {}
    for param in command.params:
        longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        if not longs or getattr(param, "hidden", False):
            continue
        key = longs[0][2:]
        if key not in _NOT_KEYS:
            keys[key] = param
    return keys


def _read(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except OSError as exc:
        raise ConfigFileError(
            f"cannot read config file {path}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not valid TOML: {exc}") from None


def _convert(
    ctx: typer.Context, param: Any, key: str, value: Any, check: Check | None
) -> Any:
    """``value`` as the option would take it, else a ValueError's reason."""
    if getattr(param, "is_bool_flag", False):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if param.multiple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"expected a string or an array of strings, got {value!r}")
        value = items
    elif isinstance(value, (bool, dict, list)):
        raise ValueError(f"expected a single value, got {value!r}")
    try:
        out = param.process_value(ctx, value)
    except TyperException as exc:
        raise ValueError(exc.format_message()) from None
    if isinstance(out, int) and isinstance(value, float):  # 2.5 read as 2
        raise ValueError(f"expected an integer, got {value!r}")
    if check is not None:
        try:
            check(out)
        except (ValueError, typer.BadParameter) as exc:
            message = exc.format_message() if isinstance(exc, TyperException) else exc
            raise ValueError(str(message)) from None
    return out


def load_file(
    ctx: typer.Context, path: str, checks: Mapping[str, Check] | None = None
) -> dict[str, Any]:
    """The settings of the file at ``path`` for ``ctx``'s command, checked:
    option name -> value (a ``default_map``).  :class:`ConfigFileError` on
    an unreadable file, an unknown key or a bad value."""
    keys = file_keys(ctx.command)
    out: dict[str, Any] = {}
    for key, value in _read(path).items():
        param = keys.get(key)
        if param is None:
            dashed = key.replace("_", "-")
            hint = (
                f"did you mean {dashed!r}?"
                if dashed in keys
                else f"known: {', '.join(sorted(keys))}"
            )
            raise ConfigFileError(f"config file {path}: unknown key {key!r} ({hint})")
        try:
            out[param.name] = _convert(ctx, param, key, value, (checks or {}).get(key))
        except ValueError as exc:
            raise ConfigFileError(f"config file {path}: key {key!r}: {exc}") from None
    return out


def settings(ctx: typer.Context) -> list[Setting]:
    """Every setting of ``ctx``'s command, its effective value and source."""
    out: list[Setting] = []
    for key, param in file_keys(ctx.command).items():
        source = ctx.get_parameter_source(param.name)
        label = _SOURCES.get(source, "default") if source is not None else "default"
        out.append(Setting(key, ctx.params.get(param.name), label))
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def render(items: list[Setting]) -> str:
    """The settings as a TOML file, each line saying where its value came
    from; an unset one (the server picks) is a comment."""
    width = max((len(s.key) for s in items), default=0)
    lines = []
    for s in items:
        if s.value is None or (isinstance(s.value, (list, tuple)) and not s.value):
            lines.append(f"# {s.key:<{width}} (unset)  # {s.source}")
        else:
            lines.append(f"{s.key:<{width}} = {_toml(s.value)}  # {s.source}")
    return "\n".join(lines)


class ConfigReloader:
    """Re-reads the config file (SIGHUP) for the settings that did not come
    from a flag or the environment, which keep winning over the file.

    :param ctx: the running command's context (its options, their sources).
    :param path: the config file.
    :param checks: per-key value checks, as for :func:`load_file`.
    """

    def __init__(
        self, ctx: typer.Context, path: str, checks: Mapping[str, Check] | None = None
    ) -> None:
        self.path = path
        self._ctx = ctx
        self._checks = dict(checks or {})
        self._keys = file_keys(ctx.command)
        self._values = {s.key: s.value for s in settings(ctx)}
        self._fixed = {s.key for s in settings(ctx) if s.source in ("flag", "env")}

    def value(self, key: str) -> Any:
        """The value in force for ``key``."""
        return self._values[key]

    def reread(self) -> dict[str, tuple[Any, Any]]:
        """Read the file again: ``key -> (old, new)`` for each setting that
        changed (a key gone from the file returns to its default).
        :class:`ConfigFileError` when the file is now wrong (nothing changes)."""
        given = load_file(self._ctx, self.path, self._checks)
        changed: dict[str, tuple[Any, Any]] = {}
        for key, param in self._keys.items():
            if key in self._fixed:
                continue
            # not get_default(): it would answer the old file's value
            new = given[param.name] if param.name in given else param.default
            old = self._values[key]
            if new != old:
                changed[key] = (old, new)
                self._values[key] = new
        return changed
