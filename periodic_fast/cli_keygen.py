"""``periodic keygen NAME``: an RSA key pair for the RSA/AES transport.

Writes ``NAME_private_key.pem`` and ``NAME_public_key.pem`` in the format the
reference tools and aio-periodic load: PEM, PKCS#1 (``RSA PRIVATE KEY``,
unencrypted, and ``RSA PUBLIC KEY``).  ``-s/--size`` is in *bytes*, as in
the reference (its default 256 gives a 2048-bit key).  The private key file
gets mode 0600 from its creation on; existing files are kept unless
``--force`` is given.  docs/transport.md shows how the files are used.
:mod:`periodic_fast.cli` puts :func:`keygen` on the ``periodic`` app.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["MAX_SIZE", "MIN_SIZE", "keygen", "write_key_pair"]

#: Key sizes accepted by ``--size``, in bytes (1024 to 8192 bits).
MIN_SIZE, MAX_SIZE = 128, 1024


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with permission ``mode`` from the start.

    Without ``force`` the file is created exclusively (an existing one is
    never touched); with it, a temporary file in the same directory replaces
    the old one atomically.
    """
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have cleared bits we want
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_key_pair(
    name: str, size: int = 256, *, force: bool = False
) -> tuple[Path, Path]:
    """Generate an RSA key of ``size`` bytes (exponent 65537) and write
    ``NAME_private_key.pem`` (0600) and ``NAME_public_key.pem`` (0644).

    Raises :class:`FileExistsError` (nothing written) when either file exists
    and ``force`` is false, :class:`ValueError` for a size out of range.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"key size {size} bytes out of range {MIN_SIZE}-{MAX_SIZE}")
    private = Path(f"{name}_private_key.pem")
    public = Path(f"{name}_public_key.pem")
    if not force:
        for p in (private, public):
            if p.exists() or p.is_symlink():
                raise FileExistsError(f"{p} exists (use --force to replace it)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=size * 8)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    _write(private, private_pem, 0o600, force)
    try:
        _write(public, public_pem, 0o644, force)
    except BaseException:
        if not force:  # do not leave half a pair behind
            with contextlib.suppress(OSError):
                private.unlink()
        raise
    return private, public


def keygen(
    name: Annotated[
        str,
        typer.Argument(help="File prefix: NAME_private_key.pem, NAME_public_key.pem."),
    ],
    size: Annotated[
        int,
        typer.Option(
            "-s",
            "--size",
            help=f"Key size in bytes, as the reference ({MIN_SIZE}-{MAX_SIZE}; "
            "256 = 2048-bit key).",
            min=MIN_SIZE,
            max=MAX_SIZE,
        ),
    ] = 256,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing key files.")
    ] = False,
) -> None:
    """Write an RSA key pair for the RSA/AES transport (offline)."""
    try:
        private, public = write_key_pair(name, size, force=force)
    except (FileExistsError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"Error: cannot write the keys: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Keys written to {private} and {public}")
