"""The capture filter: a pcap expression compiled by libpcap, attached to a packet socket.

libpcap is called through ctypes directly rather than through scapy: importing scapy
takes about half a second, and the capture must be watching before the rest of the
start-up, because the UDP schedule counts from the moment it began (docs/design.md,
"Sweeps counted from the start"). Scapy is still what builds the probes' templates
and payloads; it is imported after the capture has started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
from functools import cache

SO_ATTACH_FILTER = 26  # asm-generic/socket.h
DLT_RAW = 12  # pcap/dlt.h on Linux: the packet begins with its IP header
SNAPLEN = 65535
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    """struct bpf_program (libpcap) and struct sock_fprog (the kernel) have this layout."""

    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.POINTER(_Insn))]


class FilterError(Exception):
    """libpcap is missing or refused the expression."""


@cache
def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise FilterError(f"libpcap is not installed ({exc})") from None
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_Program),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_raw(expr: str) -> list[tuple[int, int, int, int]]:
    """``expr`` compiled for packets that begin at the IP header: (code, jt, jf, k) each."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(DLT_RAW, SNAPLEN)
    if not handle:
        raise FilterError("libpcap could not open a handle to compile with")
    program = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expr.encode(), 1, PCAP_NETMASK_UNKNOWN):
            raise FilterError((lib.pcap_geterr(handle) or b"").decode(errors="replace"))
        out = [(i.code, i.jt, i.jf, i.k) for i in program.insns[: program.len]]
        lib.pcap_freecode(ctypes.byref(program))
        return out
    finally:
        lib.pcap_close(handle)


def attach(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    """Attach a compiled program to ``sock`` (the kernel copies it)."""
    array = (_Insn * len(insns))(*(_Insn(*i) for i in insns))
    program = _Program(len(insns), ctypes.cast(array, ctypes.POINTER(_Insn)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(program))
