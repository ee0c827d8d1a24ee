"""Credential files read safely: only a regular file, opened so that open() cannot block (a FIFO),
and only up to the size a credential can have (a huge file is refused, not read or hashed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

# An APNs .p8 is about 250 bytes (a PEM-wrapped P-256 key); an encrypted PEM key or an RSA key
# of 8192 bits still fits 8 KiB.
KEY_FILE_MAX_BYTES: Final = 8 * 1024
# A push certificate (.p12, or PEM with its key and intermediates) is 3 to 10 KiB; 256 KiB holds
# a chain of dozens of certificates, far past any real one.
CERTIFICATE_FILE_MAX_BYTES: Final = 256 * 1024
# The config file is watched for changes too; hashing it is bounded as generously.
CONFIG_FILE_MAX_BYTES: Final = 4 * 1024 * 1024


class CredentialFileRefused(OSError):
    """The file is no regular file, or larger than a credential can be: it is not read."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes (CredentialFileRefused or
    another OSError otherwise). O_NONBLOCK makes opening a FIFO return at once instead of
    waiting for a writer; fstat on the opened descriptor then refuses it, with no race between
    the check and the read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise CredentialFileRefused(f"{path}: not a regular file ({_kind(status.st_mode)})")
        if status.st_size > limit:
            raise CredentialFileRefused(
                f"{path}: {status.st_size} bytes, larger than a credential file can be"
                f" (at most {limit})"
            )
        # A file growing between fstat and read is cut at the limit and refused below.
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise CredentialFileRefused(
            f"{path}: larger than a credential file can be (at most {limit} bytes)"
        )
    return data


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
