"""Key files of the proxy: one X25519 key per file, 64 lowercase hex digits and a newline.

``proxy.key`` (the proxy's static private key) is created with mode 0600 and
never written through an existing file with looser permissions: the file is
created afresh (``O_EXCL``) unless the caller asks to replace it, and a
replaced file is chmod'ed to 0600 before the key is written into it.
``read_private_key`` refuses a private key that group or others can read, as
ssh does: a key that leaked through its mode is not a secret any more.

``proxy.pub`` is public (mode 0644); it goes into every device config.

Error messages name the file, never its contents.
"""

from __future__ import annotations

import binascii
import os
import stat
from pathlib import Path

from lowbw.wire import crypto
from lowbw.wire.errors import LowbwError

KEY_LEN = 32
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class KeyFileError(LowbwError):
    """A key file is missing, malformed, or readable by others."""


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair ``(private, public)`` from the OS's random source."""
    priv, pub = crypto.x25519_keypair(os.urandom(KEY_LEN))
    return bytes(priv), bytes(pub)


def public_from_private(private_key: bytes) -> bytes:
    if len(private_key) != KEY_LEN:
        raise KeyFileError("an X25519 private key is %d bytes" % KEY_LEN)
    return bytes(crypto.x25519_base(private_key))


def key_to_hex(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise KeyFileError("an X25519 key is %d bytes, not %d" % (KEY_LEN, len(key)))
    return key.hex()


def key_from_hex(text: str, what: str = "key") -> bytes:
    """32 bytes from 64 hex digits (surrounding whitespace ignored)."""
    text = text.strip()
    if len(text) != 2 * KEY_LEN:
        raise KeyFileError("%s must be %d hex digits" % (what, 2 * KEY_LEN))
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise KeyFileError("%s is not hex" % what)


def write_secret_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> None:
    """Write ``text`` to a file only its owner can read or write (0600).

    Without ``overwrite`` an existing file is an error (FileExistsError is
    turned into KeyFileError); with it, the file's mode is tightened before
    the new contents go in.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(target, flags, PRIVATE_MODE)
    except FileExistsError:
        raise KeyFileError("%s exists (refusing to overwrite it)" % target)
    try:
        # O_CREAT's mode applies only to new files; an old one keeps its own.
        os.fchmod(fd, PRIVATE_MODE)
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_private_key(path: str | os.PathLike[str], key: bytes, *, overwrite: bool = False) -> None:
    write_secret_text(path, key_to_hex(key) + "\n", overwrite=overwrite)


def write_public_key(path: str | os.PathLike[str], key: bytes, *, overwrite: bool = False) -> None:
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(target, flags, PUBLIC_MODE)
    except FileExistsError:
        raise KeyFileError("%s exists (refusing to overwrite it)" % target)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key_to_hex(key) + "\n")


def _read_text(path: Path, what: str) -> str:
    try:
        with open(path, encoding="ascii") as src:
            # A key file is 65 bytes; refuse to slurp whatever else sits there.
            return src.read(4096)
    except FileNotFoundError:
        raise KeyFileError("%s not found: %s" % (what, path))
    except UnicodeDecodeError:
        raise KeyFileError("%s %s is not a hex key file" % (what, path))
    except OSError as exc:
        raise KeyFileError("cannot read %s %s: %s" % (what, path, exc.strerror or type(exc).__name__))


def read_private_key(path: str | os.PathLike[str], *, check_mode: bool = True) -> bytes:
    """The 32-byte private key in ``path``; KeyFileError if group/others may read it."""
    target = Path(path)
    text = _read_text(target, "private key file")
    if check_mode:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        if mode & 0o077:
            raise KeyFileError(
                "private key file %s has mode %04o: others may read it (chmod 600 it)" % (target, mode)
            )
    return key_from_hex(text, "private key file %s" % target)


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    target = Path(path)
    return key_from_hex(_read_text(target, "public key file"), "public key file %s" % target)
