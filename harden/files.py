"""The pipeline's file edge: read manifests, resolve service names, write files atomically.

harden.core parses text; this module is where that text (and /etc/services) comes from.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from harden.errors import ManifestError, UnsafeOutput
from harden.manifest.model import Manifest
from harden.manifest.parse import manifest_from_text


@lru_cache(maxsize=512)
def service_port(name: str) -> int | None:
    """A service name's TCP/UDP port from /etc/services (netbase), or None if unknown."""
    try:
        return socket.getservbyname(name)
    except OSError:
        return None


# nmap's own port names: what its "table" method names a port after (Debian's nmap-common).
NMAP_SERVICES = Path("/usr/share/nmap/nmap-services")


def port_service_names(nmap_services: Path = NMAP_SERVICES) -> Callable[[str, int], str | None]:
    """(proto, port) -> a service name, as nmap's table method would give it.

    From nmap-services where nmap is installed (then a port it does not list is None,
    which nmap calls "unknown"); else from /etc/services.
    """
    table: dict[tuple[str, int], str] = {}
    try:
        text = nmap_services.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and "/" in fields[1]:
            port, _, proto = fields[1].partition("/")
            if port.isdigit():
                table.setdefault((proto, int(port)), fields[0])
    if table:
        return lambda proto, port: table.get((proto, port))

    def etc_services(proto: str, port: int) -> str | None:
        try:
            return socket.getservbyport(port, proto)
        except OSError:
            return None

    return etc_services


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
    return manifest_from_text(text, source, service_port)


def read_manifest(path: Path) -> tuple[str, Manifest]:
    """A manifest file's text and its validated model (the file is read once)."""
    text = read_text(path)
    return text, parse_manifest(text, str(path))


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; ManifestError with a one-line message."""
    return read_manifest(path)[1]


def check_private_dir(directory: Path, what: str = "output directory") -> None:
    """Refuse a directory another user could write (UnsafeOutput, exit 2).

    harden often runs as root: a user who can write the directory could swap the
    temporary file for a symlink between its creation and the rename, or replace the
    result afterwards. A world-writable directory with the sticky bit (/tmp) is safe:
    nobody else can rename or remove our files there.
    """
    try:
        info = directory.stat()
    except OSError as exc:
        raise UnsafeOutput(f"{directory}: cannot use as {what}: {exc.strerror}") from None
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeOutput(
            f"{directory}: {what} owned by uid {info.st_uid}, another user: refused "
            "(harden writes only where nobody else can)"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UnsafeOutput(
            f"{directory}: {what} writable by other users (mode {stat.S_IMODE(info.st_mode):o}):"
            " refused (harden writes only where nobody else can)"
        )


def check_private_file(path: Path, what: str = "file") -> None:
    """Refuse a file another user owns or could write, or one in such a directory (exit 2).

    For what a root-run timer reads again and again: the manifest a scheduled unit
    verifies against must not be one another user can rewrite.
    """
    resolved = path.resolve()
    check_private_dir(resolved.parent, f"directory of the {what}")
    info = resolved.stat()
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeOutput(
            f"{path}: {what} owned (uid {info.st_uid}) or writable (mode "
            f"{stat.S_IMODE(info.st_mode):o}) by another user: refused"
        )


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so no reader sees a partial file.

    The mode is set on the open descriptor before anything is written, never by path:
    a path can be swapped for a symlink, a descriptor cannot. The directory must be
    one no other user can write (``check_private_dir``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    check_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
