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
from collections.abc import Iterable, Iterator, Sequence

from harden import defaults
from harden.types import Address, Family, Proto
from harden.verify.classify import Reason, Reply
from harden.verify.engine.payloads import udp_payloads
from harden.verify.engine.transport import OnSent, Round
from harden.verify.findings import Mode
from harden.verify.plan import Target

REJECTED_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


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


def tcp_sweep(
    target: Address, ports: Iterable[int], timeout: float, source: Address | None = None
) -> dict[int, Reply]:
    """Non-blocking connect() to every port; a handshake, a refusal or silence each."""
    family: Family = 4 if target.version == 4 else 6
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    found: dict[int, Reply | None] = {}
    for batch in _batches(ports):
        selector = selectors.DefaultSelector()
        for port in batch:
            sock = socket.socket(af, socket.SOCK_STREAM)
            sock.setblocking(False)
            if source is not None:
                sock.bind((str(source), 0))
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
    return {p: r for p, r in found.items() if r is not None}


def udp_sweep(
    target: Address,
    ports: Iterable[int],
    payloads: dict[int, bytes],
    wait: float,
    source: Address | None = None,
) -> dict[int, Reply]:
    """A connected UDP socket per port: a reply, ECONNREFUSED (ICMP) or nothing."""
    family: Family = 4 if target.version == 4 else 6
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    found: dict[int, Reply | None] = {}
    for batch in _batches(ports):
        socks: dict[int, socket.socket] = {}
        for port in batch:
            sock = socket.socket(af, socket.SOCK_DGRAM)
            sock.setblocking(False)
            if source is not None:
                sock.bind((str(source), 0))
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
                found[port] = Reply(family, "udp", port, 0, Reason.UDP_REPLY)
            except BlockingIOError:
                pass
            except OSError as exc:
                found.setdefault(port, _reply(family, "udp", port, exc.errno or 0))
            finally:
                sock.close()
    return {p: r for p, r in found.items() if r is not None}


def _reply(family: Family, proto: Proto, port: int, code: int) -> Reply | None:
    """The reply a socket error (or success, 0) stands for; None for silence."""
    if code == 0:
        reason = Reason.CONNECTED if proto == "tcp" else Reason.UDP_REPLY
        return Reply(family, proto, port, 0, reason)
    if code == errno.ECONNREFUSED:
        reason = Reason.REFUSED if proto == "tcp" else Reason.PORT_UNREACHABLE
        return Reply(family, proto, port, 0, reason)
    if code in REJECTED_ERRNOS:
        return Reply(family, proto, port, 0, Reason.UNREACHABLE_UNSEEN)
    return None  # a timeout, or an error that is not an answer from the target


class ConnectTransport:
    """connect() and connected UDP sockets: no privileges, no ICMP codes, no capture.

    It sees only the errors of its own sockets, so the engine's quiet rule reduces to
    "a full refill interval after our previous round" (docs/design.md, "Unprivileged
    mode").
    """

    mode: Mode = "connect"
    can_ping: bool = False
    blocking: bool = True
    parallel: bool = False
    limitations: tuple[str, ...] = (
        "unprivileged mode (no CAP_NET_RAW): connect() probes, ping not checked, ICMP "
        "unreachable codes not visible, and an ICMP error drawn by another program on this "
        "host is not seen; run as root for the fast raw sweep",
    )

    def __init__(self, wait: float = defaults.WAIT) -> None:
        self.wait = wait
        self.started = time.monotonic()
        self._errors: dict[tuple[Address, Address], float] = {}
        self._heard: dict[Address, str] = {}

    def ping(self, targets: Sequence[Target], ident: int) -> None:
        """Not possible without raw sockets."""
        raise NotImplementedError("connect mode cannot ping")

    def echoed(self, since: float, ident: int) -> dict[Address, float]:
        """Not possible without raw sockets."""
        raise NotImplementedError("connect mode cannot ping")

    def send_tcp(self, target: Target, ports: Sequence[int], progress: OnSent | None) -> Round:
        """connect() every port; returns once each answered or timed out."""
        since = time.monotonic()
        timeout = max(self.wait, defaults.CONNECT_TIMEOUT)
        found = tcp_sweep(target.address, ports, timeout, self._bind(target, target.source))
        if progress is not None:
            progress(len(ports))
        return Round(target, "tcp", target.source, ports, since, count=len(ports), found=found)

    def send_udp(
        self, target: Target, source: Address, ports: Sequence[int], progress: OnSent | None
    ) -> Round:
        """A datagram to every port from ``source``; returns after ``wait``."""
        since = time.monotonic()
        bind = self._bind(target, source)
        found = udp_sweep(target.address, ports, udp_payloads(), self.wait, bind)
        if any(r.is_icmp_error for r in found.values()):
            self._errors[(target.address, source)] = time.monotonic()
        if progress is not None:
            progress(len(ports))
        return Round(target, "udp", source, ports, since, count=len(ports), found=found)

    def replies(self, sent: Round) -> dict[int, Reply]:
        """What the sweep found (it already waited)."""
        for port, reply in sent.found.items():
            if reply.reason is not Reason.UNREACHABLE_UNSEEN:
                self._heard.setdefault(
                    sent.target.address, f"{reply.proto}/{port} answered {reply.detail}"
                )
        return sent.found

    def heard_from(self, target: Target) -> str | None:
        """A handshake or a refusal came from the target itself (an unreachable may not)."""
        return self._heard.get(target.address)

    def last_icmp_error(self, target: Target, source: Address) -> float | None:
        """When one of our sockets last reported an ICMP error from ``target``."""
        return self._errors.get((target.address, source))

    def close(self) -> None:
        """Nothing held between rounds."""

    @staticmethod
    def _bind(target: Target, source: Address) -> Address | None:
        # The route's own source needs no bind; an extra --source address does.
        return None if source == target.source else source
