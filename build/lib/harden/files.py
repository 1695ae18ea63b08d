"""The pipeline's file edge: read manifests, resolve service names, write files atomically.

harden.core parses text; this module is where that text (and /etc/services) comes from.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from functools import lru_cache
from pathlib import Path

from harden.core import manifest as _manifest
from harden.core.manifest import Manifest
from harden.errors import ManifestError


@lru_cache(maxsize=512)
def service_port(name: str) -> int | None:
    """A service name's TCP/UDP port from /etc/services (netbase), or None if unknown."""
    try:
        return socket.getservbyname(name)
    except OSError:
        return None


MAX_BYTES = 10 * 1024 * 1024


def read_text(path: Path) -> str:
    """A manifest's (or inventory's) text; one-line ManifestError if unreadable.

    Only regular files of at most MAX_BYTES are read, and never more than MAX_BYTES + 1
    bytes: /dev/zero, a FIFO or a runaway generated file fail fast instead of hanging.
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not block; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            data = os.read(fd, MAX_BYTES + 1) if regular else b""
            # os.read may return less than asked: read on until MAX_BYTES + 1 or EOF.
            while (
                regular
                and len(data) <= MAX_BYTES
                and (more := os.read(fd, MAX_BYTES + 1 - len(data)))
            ):
                data += more
        finally:
            os.close(fd)
    except OSError as exc:
        raise ManifestError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if not regular:
        raise ManifestError(str(path), "", "not a regular file")
    if len(data) > MAX_BYTES:
        raise ManifestError(str(path), "", f"larger than {MAX_BYTES // (1024 * 1024)} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(str(path), "", "not UTF-8 text") from None


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    """Validate manifest text, service names resolved from this host's /etc/services."""
    return _manifest.parse_manifest(text, source, service_port)


def read_manifest(path: Path) -> tuple[str, Manifest]:
    """A manifest file's text and its validated model (the file is read once)."""
    text = read_text(path)
    return text, parse_manifest(text, str(path))


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; ManifestError with a one-line message."""
    return read_manifest(path)[1]


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
