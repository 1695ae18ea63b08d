"""The unprivileged transport: plain connect() and connected UDP sockets, no CAP_NET_RAW.

Slower than the raw sweep (a silent TCP port costs a whole timeout, sockets come in
batches under the open-file limit) but reads the same facts from the kernel's errors:
ECONNREFUSED = RST or ICMP port-unreachable, EHOSTUNREACH and friends = another ICMP
unreachable (the code itself is not visible), a timeout = silence.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import time
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address

from harden.core.classify import Family, Proto, Reply, State

Address = IPv4Address | IPv6Address
REJECTED_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}
REJECTED_DETAIL = "icmp unreachable (its code is not visible without raw sockets)"


def batch_size() -> int:
    """Sockets per batch: well under this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(4096, soft - 64))


def _batches(ports: Iterable[int]) -> Iterator[list[int]]:
    size, batch = batch_size(), []
    for port in ports:
        batch.append(port)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tcp_sweep(target: Address, ports: Iterable[int], timeout: float) -> dict[int, Reply]:
    """Non-blocking connect() to every port; a handshake, a refusal or silence each."""
    family: Family = 4 if target.version == 4 else 6
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    found: dict[int, Reply] = {}
    for batch in _batches(ports):
        selector = selectors.DefaultSelector()
        for port in batch:
            sock = socket.socket(af, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((str(target), port))
            if code not in (0, errno.EINPROGRESS):
                found[port] = _reply(family, "tcp", port, code)
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_WRITE, port)
        deadline = time.monotonic() + timeout
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                code = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                found[key.data] = _reply(family, "tcp", key.data, code)
                selector.unregister(ready)
                ready.close()
        for key in list(selector.get_map().values()):  # silent: no answer in time
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return {p: r for p, r in found.items() if r.state is not State.SILENT}


def udp_sweep(
    target: Address, ports: Iterable[int], payloads: dict[int, bytes], wait: float
) -> dict[int, Reply]:
    """A connected UDP socket per port: a reply, ECONNREFUSED (ICMP) or nothing."""
    family: Family = 4 if target.version == 4 else 6
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    found: dict[int, Reply] = {}
    for batch in _batches(ports):
        socks: dict[int, socket.socket] = {}
        for port in batch:
            sock = socket.socket(af, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((str(target), port))
            try:
                sock.send(payloads.get(port, b""))
            except OSError as exc:
                found[port] = _reply(family, "udp", port, exc.errno or 0)
            socks[port] = sock
        time.sleep(wait)
        for port, sock in socks.items():
            try:
                sock.recv(2048)
                found[port] = Reply(family, "udp", port, 0, State.OPEN, "udp reply")
            except BlockingIOError:
                pass
            except OSError as exc:
                found.setdefault(port, _reply(family, "udp", port, exc.errno or 0))
            finally:
                sock.close()
    return {p: r for p, r in found.items() if r.state is not State.SILENT}


def _reply(family: Family, proto: Proto, port: int, code: int) -> Reply:
    if code == 0:
        return Reply(
            family, proto, port, 0, State.OPEN, "connected" if proto == "tcp" else "udp reply"
        )
    if code == errno.ECONNREFUSED:
        detail = (
            "refused (rst or icmp port-unreachable)" if proto == "tcp" else "icmp port-unreachable"
        )
        return Reply(family, proto, port, 0, State.CLOSED, detail)
    if code in REJECTED_ERRNOS:
        return Reply(family, proto, port, 0, State.REJECTED, REJECTED_DETAIL)
    return Reply(family, proto, port, 0, State.SILENT, errno.errorcode.get(code, str(code)))
