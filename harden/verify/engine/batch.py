"""Many probes per system call: sendmmsg(2) through ctypes (docs/design.md, "The send path").

A sweep sends up to 65,535 probes per target and round. One ``sendto`` per probe spends
most of its time in the interpreter and the system-call entry, not in the network
stack; ``sendmmsg`` hands the kernel ``BATCH`` prebuilt messages at once. Every message
either leaves or is sent again through ``send_until_sent``: a probe is never skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address

BATCH = 512

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_sendmmsg = getattr(_libc, "sendmmsg", None)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


if _sendmmsg is not None:
    _sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    _sendmmsg.restype = ctypes.c_int


def available() -> bool:
    """Whether this C library has sendmmsg (glibc and musl do)."""
    return _sendmmsg is not None


def sockaddr(address: IPv4Address | IPv6Address, port: int = 0) -> bytes:
    """``struct sockaddr_in`` or ``sockaddr_in6`` for ``address`` and ``port``."""
    if address.version == 4:
        return (
            struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + address.packed + bytes(8)
        )
    head = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + bytes(4)
    return head + address.packed + bytes(4)


class Batch:
    """``BATCH`` message slots: a payload buffer of ``slot`` bytes and an address each."""

    def __init__(self, slot: int, name: bytes) -> None:
        """Slots of ``slot`` bytes, every message addressed to ``name`` (a sockaddr)."""
        self.slot = slot
        self.name_size = len(name)
        self.payloads = ctypes.create_string_buffer(BATCH * slot)
        self.names = ctypes.create_string_buffer(name * BATCH, BATCH * len(name))
        self.iov = (_Iovec * BATCH)()
        self.msgs = (_Mmsghdr * BATCH)()
        base, names = ctypes.addressof(self.payloads), ctypes.addressof(self.names)
        iov_base, iov_size = ctypes.addressof(self.iov), ctypes.sizeof(_Iovec)
        for i in range(BATCH):
            self.iov[i].iov_base = base + i * slot
            self.iov[i].iov_len = slot
            header = self.msgs[i].msg_hdr
            header.msg_name = names + i * len(name)
            header.msg_namelen = len(name)
            header.msg_iov = ctypes.cast(iov_base + i * iov_size, ctypes.POINTER(_Iovec))
            header.msg_iovlen = 1

    def address(self, name: bytes) -> None:
        """Address every message to ``name`` (a sockaddr of this batch's size)."""
        assert len(name) == self.name_size
        ctypes.memmove(self.names, name * BATCH, BATCH * len(name))

    def write(self, i: int, data: bytes) -> None:
        """Put ``data`` (at most ``slot`` bytes) in slot ``i`` and send that much."""
        ctypes.memmove(ctypes.addressof(self.payloads) + i * self.slot, data, len(data))
        self.iov[i].iov_len = len(data)

    def payload(self, i: int) -> bytes:
        """What slot ``i`` will send."""
        start = ctypes.addressof(self.payloads) + i * self.slot
        return ctypes.string_at(start, int(self.iov[i].iov_len))

    def flush(
        self, sock: socket.socket, count: int, resend: Callable[[int], None], transient: set[int]
    ) -> None:
        """Send slots 0..count-1.

        A slot the kernel refuses for a moment goes to ``resend`` (which waits it out,
        or raises); any other refusal raises OSError.
        """
        assert _sendmmsg is not None
        fd = sock.fileno()
        size = ctypes.sizeof(_Mmsghdr)
        base = ctypes.addressof(self.msgs)
        done = 0
        while done < count:
            sent = _sendmmsg(fd, base + done * size, count - done, 0)
            if sent > 0:
                done += sent
                continue
            code = ctypes.get_errno()
            if code not in transient:
                raise OSError(code, os.strerror(code))
            resend(done)
            done += 1


_spare: list[Batch] = []
_spare_lock = threading.Lock()


@contextmanager
def borrowed(slot: int, name: bytes) -> Iterator[Batch]:
    """A batch of ``slot``-byte messages addressed to ``name``, for one sweep.

    Returned batches serve the next sweep to any target: a fleet holds as many as sweeps
    run at once (one per core and kind of probe), not two for every target.
    """
    with _spare_lock:
        fit = next((b for b in _spare if b.slot == slot and b.name_size == len(name)), None)
        if fit is not None:
            _spare.remove(fit)
    if fit is None:
        fit = Batch(slot, name)
    else:
        fit.address(name)
    try:
        yield fit
    finally:
        with _spare_lock:
            _spare.append(fit)
