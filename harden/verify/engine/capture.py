"""The reply capture: one packet socket on every interface, filtered to our addresses."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable

from harden.errors import EnvironmentProblem
from harden.types import Address
from harden.verify.engine import bpf

ETH_P_ALL = 0x0003
RCVBUF = 256 * 1024 * 1024  # a no-firewall host answers 65,535 RSTs at once


class Capture:
    """Everything sent to our addresses, on every interface, timestamped by a background thread.

    One packet socket for all interfaces, not the route's device: replies can come
    back another way (a second NIC answering ARP for our address, an asymmetric
    route), and a capture bound to one device would miss them. The filter keeps what
    is addressed to any of our source addresses; which probe a packet answers is
    decided by its ports and quoted headers, not by the interface or the address it
    came from (docs/design.md, "Capturing replies").
    """

    def __init__(self, sources: Iterable[Address]) -> None:
        self.packets: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # SOCK_DGRAM: every packet begins at its IP header whatever the link (Ethernet, a
        # WireGuard or other tun device), for the filter too.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            expr = " or ".join(f"dst host {a}" for a in sorted(set(sources), key=str))
            attach_filter(self._sock, expr, "every interface")
            _drain(self._sock)  # what queued before the filter was attached is anyone's
            self._sock.settimeout(0.05)
        except BaseException:  # no permission, no libpcap: nothing may stay open
            self._sock.close()
            raise
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._sock,), daemon=True)
        self._thread.start()

    def _run(self, sock: socket.socket) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        while not self._stop.is_set():
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:
                return
            if n >= 20 and buf[0] >> 4 in (4, 6):
                packet = bytes(view[:n])
                with self._lock:
                    self.packets.append((time.monotonic(), packet))

    def since(self, start: float) -> list[bytes]:
        """Packets captured at or after ``start`` (a time.monotonic() value)."""
        with self._lock:
            return [p for t, p in self.packets if t >= start]

    def timed_since(self, start: float) -> list[tuple[float, bytes]]:
        """(capture time, packet) for packets captured at or after ``start``."""
        with self._lock:
            return [(t, p) for t, p in self.packets if t >= start]

    def last(self, predicate: Callable[[bytes], bool]) -> float | None:
        """Time of the newest captured packet matching ``predicate``."""
        with self._lock:
            for t, packet in reversed(self.packets):
                if predicate(packet):
                    return t
        return None

    def close(self) -> None:
        """Stop the capture thread and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        self._sock.close()


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(65536)
    except BlockingIOError:
        pass


def attach_filter(sock: socket.socket, expr: str, where: str) -> None:
    try:
        bpf.attach(sock, bpf.compile_raw(expr))
    except bpf.FilterError as exc:
        hint = " (install Debian's libpcap0.8)" if "not installed" in str(exc) else ""
        raise EnvironmentProblem(
            f"cannot attach capture filter {expr!r} on {where}: {exc}{hint}"
        ) from exc


def is_icmp_error(packet: bytes) -> bool:
    """Whether a captured IP packet is an ICMP/ICMPv6 error (what rate limiting throttles)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        return packet[9] == 1 and len(packet) > ihl and packet[ihl] in (3, 11, 12)
    return len(packet) > 40 and packet[6] == 58 and packet[40] < 128


def quotes(packet: bytes, target: Address) -> bool:
    """Whether an ICMP/ICMPv6 error quotes a packet that was sent to ``target``."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        return packet[ihl + 8 + 16 : ihl + 8 + 20] == target.packed
    return packet[40 + 8 + 24 : 40 + 8 + 40] == target.packed
