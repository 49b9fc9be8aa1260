"""Who may own a unix socket path we listen on or connect to.

The default address, ``unix:///tmp/periodic.sock``, lives in a directory
every local user can write to.  Whoever creates the socket first receives
the registrations of connecting clients -- their names and tokens -- so the
server refuses to take over, and our clients refuse to talk to, a socket
file owned by another user than ourselves or root (issue 16 item 13,
docs/security.md).  The server also refuses a directory that others may
write to without the sticky bit: they could swap the socket after the bind.

Stdlib only (layer 0): the callers turn the message into their own error.
"""

from __future__ import annotations

import os
import stat

__all__ = ["socket_path_problem"]


def _owner(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415  (absent on some platforms)

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def socket_path_problem(path: str, *, binding: bool = False) -> str | None:
    """Why ``path`` is not safe to use, or None.

    Refused: the path (or, through a symlink, its target) is owned by a user
    other than the effective user and root; when ``binding``, also a parent
    directory writable by others without the sticky bit.  A path that does
    not exist is fine (the server creates it; a client's connect fails).
    """
    if not hasattr(os, "geteuid"):  # no unix users (Windows)
        return None
    me = os.geteuid()
    for follow in (False, True):
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError:
            break
        if st.st_uid not in (me, 0):
            what = "socket" if stat.S_ISSOCK(st.st_mode) else "file"
            return (
                f"the {what} {path} is owned by {_owner(st.st_uid)}, not by "
                f"this user ({_owner(me)}) or root: another local user could be "
                "listening there to collect the names and tokens of connecting "
                "clients; remove it, or use a path in a directory only you can "
                "write to"
            )
    if binding:
        parent = os.path.dirname(os.path.abspath(path))
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return None  # the bind reports it
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return (
                f"the directory {parent} of the unix socket is writable by "
                "every user and has no sticky bit: another user could replace "
                "the socket; use a private directory or set the sticky bit "
                "(chmod +t)"
            )
    return None
