"""The fast transport: raw-socket SYNs, plain UDP datagrams, replies from the capture.

Packets are built once from scapy templates; the send loop only patches ports and
the checksum. Replies come from ``capture.Capture`` (every interface, before the
prober's own INPUT hook) and are matched to rounds by what they answer
(docs/design.md, "Capturing replies").
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence

from harden.errors import EnvironmentProblem
from harden.types import Address
from harden.verify.classify import EchoReply, Reply, classify
from harden.verify.engine import batch
from harden.verify.engine.capture import ETH_P_ALL, Capture, is_icmp_error, quotes
from harden.verify.engine.payloads import udp_payloads
from harden.verify.engine.route import Route
from harden.verify.engine.transport import OnSent, Round
from harden.verify.findings import Mode
from harden.verify.plan import Target

IPV6_CHECKSUM = 7  # linux/in6.h: the kernel fills the checksum at this offset
IP_RECVERR = 11  # linux/in.h (not in Python 3.11's socket module)
IPV6_RECVERR = 25  # linux/in6.h

SendTo = Callable[[bytes, tuple[str, int]], int]

# A send that fails with one of these did not put the probe on the wire, and may
# succeed a moment later: a full transmit queue (ENOBUFS, EAGAIN), or an ICMP error
# the kernel reports on the socket's next send (IP_RECVERR) instead of sending it
# (a reject-mode target's admin-prohibited is EHOSTUNREACH, or EACCES over IPv6).
# EPERM, the prober's own output firewall, seldom clears: it ends in the stall error.
TRANSIENT = {
    errno.ENOBUFS,
    errno.EAGAIN,
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EACCES,
    errno.EPERM,
}
SEND_STALL_SECONDS = 5.0


def send_until_sent(
    sendto: SendTo, data: bytes, dest: tuple[str, int], stall: float = SEND_STALL_SECONDS
) -> None:
    """Send one probe, waiting out transient refusals; a probe is never skipped.

    Silence is the verdict for closed ports, so a probe that silently did not leave
    would read as "dropped by the firewall". Gives up with EnvironmentProblem only
    when the socket refuses for ``stall`` seconds on end.
    """
    delay = 0.0005
    deadline: float | None = None
    while True:
        try:
            sendto(data, dest)
            return
        except OSError as exc:
            if exc.errno not in TRANSIENT:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + stall
            elif now > deadline:
                raise EnvironmentProblem(
                    f"cannot send probes to {dest[0]}: {exc.strerror} for {stall:.0f} s"
                ) from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _report_send_errors(sock: socket.socket, family: int) -> None:
    """Make a full queue fail the send (ENOBUFS) instead of dropping the probe silently.

    Without IP_RECVERR, Linux raw and UDP sends swallow the qdisc's drop.
    """
    if family == 4:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


def _fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class Sender:
    """Sends probes to one target from this host's raw and datagram sockets."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.family = route.target.version
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        self._af = af
        self._tcp = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        if self.family == 6:
            self._tcp.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 16)
        _report_send_errors(self._tcp, self.family)
        icmp = socket.IPPROTO_ICMP if self.family == 4 else socket.IPPROTO_ICMPV6
        self._icmp = socket.socket(af, socket.SOCK_RAW, icmp)
        self.seq = random.getrandbits(32)

    def close(self) -> None:
        """Close the sockets."""
        self._tcp.close()
        self._icmp.close()

    def _dest(self, port: int = 0) -> tuple[str, int]:
        return (str(self.route.target), port)

    def syn_sweep(self, ports: Iterable[int], sport: int, progress: OnSent | None = None) -> int:
        """Send one SYN per port from ``sport``; return how many were sent."""
        from scapy.layers.inet import TCP  # template only; the loop patches bytes

        header = bytearray(bytes(TCP(sport=0, dport=0, flags="S", seq=self.seq, window=1024)))
        header[16:18] = b"\0\0"
        base = _sum16(bytes(header))
        if self.family == 4:
            src = self.route.source.packed
            dst = self.route.target.packed
            base += _sum16(src + dst + struct.pack("!BBH", 0, 6, len(header)))
        struct.pack_into("!H", header, 0, sport)
        base += sport
        if batch.available():
            with batch.borrowed(len(header), batch.sockaddr(self.route.target)) as slots:
                return self._syn_batches(slots, bytes(header), base, ports, progress)
        sent = 0
        target = str(self.route.target)
        sendto = self._tcp.sendto
        v4 = self.family == 4
        for port in ports:
            struct.pack_into("!H", header, 2, port)
            if v4:
                struct.pack_into("!H", header, 16, _fold(base + port))
            try:
                sendto(header, (target, 0))
            except OSError:
                send_until_sent(sendto, bytes(header), (target, 0))
            sent += 1
            if progress is not None and sent % 4096 == 0:
                progress(4096)
        if progress is not None:
            progress(sent % 4096)
        return sent

    def _syn_batches(
        self,
        slots: batch.Batch,
        header: bytes,
        base: int,
        ports: Iterable[int],
        progress: OnSent | None,
    ) -> int:
        """The SYN sweep through sendmmsg: ``batch.BATCH`` SYNs a system call."""
        for i in range(batch.BATCH):
            slots.write(i, header)
        buffer, v4, size = slots.payloads, self.family == 4, len(header)
        target = (str(self.route.target), 0)

        def resend(i: int) -> None:
            send_until_sent(self._tcp.sendto, slots.payload(i), target)

        sent = n = 0
        for port in ports:
            struct.pack_into("!H", buffer, n * size + 2, port)
            if v4:  # IPv6: the kernel fills the checksum in (IPV6_CHECKSUM)
                struct.pack_into("!H", buffer, n * size + 16, _fold(base + port))
            n += 1
            if n == batch.BATCH:
                slots.flush(self._tcp, n, resend, TRANSIENT)
                sent += n
                n = 0
                if progress is not None:
                    progress(batch.BATCH)
        if n:
            slots.flush(self._tcp, n, resend, TRANSIENT)
            sent += n
            if progress is not None:
                progress(n)
        return sent

    def udp_sweep(
        self,
        ports: Iterable[int],
        payloads: dict[int, bytes],
        progress: OnSent | None = None,
        source: Address | None = None,
    ) -> tuple[int, int]:
        """Send one datagram per port from a fresh source port.

        Returns how many were sent and the source port they came from.
        """
        sock = socket.socket(self._af, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        _report_send_errors(sock, self.family)
        address = str(source or self.route.source)
        try:
            sock.bind((address, 0))
        except OSError as exc:
            sock.close()
            raise EnvironmentProblem(f"cannot send from {address}: {exc.strerror}") from None
        sport = sock.getsockname()[1]
        target = str(self.route.target)
        sent = 0
        empty = b""
        if batch.available():
            slot = max((len(p) for p in payloads.values()), default=1) or 1
            try:
                with batch.borrowed(slot, batch.sockaddr(self.route.target)) as slots:
                    return self._udp_batches(slots, sock, ports, payloads, progress), sport
            finally:
                sock.close()
        try:
            sendto = sock.sendto
            for port in ports:
                data = payloads.get(port, empty)
                try:
                    sendto(data, (target, port))
                except OSError:
                    send_until_sent(sendto, data, (target, port))
                sent += 1
                if progress is not None and sent % 4096 == 0:
                    progress(4096)
        finally:
            sock.close()
        if progress is not None:
            progress(sent % 4096)
        return sent, sport

    def _udp_batches(
        self,
        slots: batch.Batch,
        sock: socket.socket,
        ports: Iterable[int],
        payloads: dict[int, bytes],
        progress: OnSent | None,
    ) -> int:
        """The UDP sweep through sendmmsg: one datagram per port, each to its own port."""
        names, name_size, iov = slots.names, slots.name_size, slots.iov
        target = str(self.route.target)

        def resend(i: int) -> None:
            port = struct.unpack_from("!H", names, i * name_size + 2)[0]
            send_until_sent(sock.sendto, slots.payload(i), (target, port))

        sent = n = 0
        for port in ports:
            struct.pack_into("!H", names, n * name_size + 2, port)
            data = payloads.get(port)
            if data:
                slots.write(n, data)
            else:
                iov[n].iov_len = 0
            n += 1
            if n == batch.BATCH:
                slots.flush(sock, n, resend, TRANSIENT)
                sent += n
                n = 0
                if progress is not None:
                    progress(batch.BATCH)
        if n:
            slots.flush(sock, n, resend, TRANSIENT)
            sent += n
            if progress is not None:
                progress(n)
        return sent

    def ping(self, ident: int) -> None:
        """Send one echo request."""
        kind = 8 if self.family == 4 else 128
        header = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"harden"
        if self.family == 4:
            header = header[:2] + struct.pack("!H", _fold(_sum16(header))) + header[4:]
        send_until_sent(self._icmp.sendto, header, self._dest())


def raw_available() -> bool:
    """Whether this process may open raw and packet sockets (CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    except PermissionError:
        return False
    return True


def fresh_sport() -> int:
    """A random source port from the ephemeral range (a new flow for conntrack)."""
    return random.randint(32768, 60999)


class RawTransport:
    """Raw SYNs and datagrams out, every reply captured: sees ICMP codes and the budget."""

    mode: Mode = "raw"
    can_ping: bool = True
    blocking: bool = False
    parallel: bool = True
    limitations: tuple[str, ...] = ()

    def __init__(self, routes: Sequence[Route], extra_sources: Sequence[Address] = ()) -> None:
        self._capture = Capture([*(r.source for r in routes), *extra_sources])
        self.started = self._capture.started
        self._senders: dict[Address, Sender] = {}
        try:
            for route in routes:
                self._senders[route.target] = Sender(route)
        except BaseException:
            self.close()
            raise
        # A reply from one of these belongs to that target, whatever its ports say.
        self._others = {a: frozenset(self._senders) - {a} for a in self._senders}

    def close(self) -> None:
        """Close every socket and stop the capture."""
        for sender in self._senders.values():
            sender.close()
        self._capture.close()

    def ping(self, targets: Sequence[Target], ident: int) -> None:
        """One echo request to each target."""
        for target in targets:
            self._senders[target.address].ping(ident)

    def echoed(self, since: float, ident: int) -> dict[Address, float]:
        """Address -> when its first echo reply with ``ident`` was captured since ``since``."""
        out: dict[Address, float] = {}
        for at, packet in self._capture.timed_since(since):
            for address in self._senders:
                reply = classify(packet, address)
                if isinstance(reply, EchoReply) and reply.ident == ident:
                    out.setdefault(address, at)
        return out

    def send_tcp(self, target: Target, ports: Sequence[int], progress: OnSent | None) -> Round:
        """SYNs from a fresh source port (a new conntrack flow every round)."""
        sender = self._senders[target.address]
        since, sport = time.monotonic(), fresh_sport()
        count = sender.syn_sweep(ports, sport, progress)
        return Round(target, "tcp", target.source, ports, since, sport, sender.seq, count)

    def send_udp(
        self, target: Target, source: Address, ports: Sequence[int], progress: OnSent | None
    ) -> Round:
        """Datagrams from ``source`` and a fresh source port."""
        sender = self._senders[target.address]
        since = time.monotonic()
        count, sport = sender.udp_sweep(ports, udp_payloads(), progress, source)
        return Round(target, "udp", source, ports, since, sport, None, count)

    def replies(self, sent: Round) -> dict[int, Reply]:
        """The first reply per port that answers this round's probes."""
        found: dict[int, Reply] = {}
        ack = None if sent.seq is None else (sent.seq + 1) & 0xFFFFFFFF
        address = sent.target.address
        others = self._others[address]
        for packet in self._capture.since(sent.since):
            reply = classify(packet, address, others)
            if not isinstance(reply, Reply) or reply.proto != sent.proto:
                continue
            if reply.sport != sent.sport:
                continue  # another round's reply, or stray traffic
            if ack is not None and reply.ack is not None and reply.ack != ack:
                continue  # not an answer to our SYN (a stray or stale segment)
            found.setdefault(reply.port, reply)  # first wins: SYN-ACK retransmits repeat
        return found

    def heard_from(self, target: Target) -> str | None:
        """The first packet the capture saw from ``target`` (any reply proves a host)."""
        packed = target.address.packed
        for packet in self._capture.since(0.0):
            v4 = packet[0] >> 4 == 4
            if (packet[12:16] if v4 else packet[8:24]) != packed:
                continue  # queued before the capture filter was attached, or another target
            if not v4 and len(packet) > 40 and packet[6] == 58 and 133 <= packet[40] <= 137:
                # Neighbour discovery is the link layer's business (a proxy can answer
                # it for an empty address): that evidence is link_probe's, and weaker.
                continue
            reply = classify(packet, target.address)
            if isinstance(reply, Reply):
                return f"{reply.proto}/{reply.port} answered {reply.detail}"
            if isinstance(reply, EchoReply):
                return "echo reply"
            return f"a packet from it (IP protocol {packet[9] if v4 else packet[6]})"
        return None

    def last_icmp_error(self, target: Target, source: Address) -> float | None:
        """When the capture last saw an ICMP error to ``source`` from ``target``'s host.

        That is an error sent from the target's address, or one that quotes a probe
        to it from any address: the host's bucket for our source is spent either way.
        """
        address, packed, to = target.address, target.address.packed, source.packed

        def from_target(packet: bytes) -> bool:
            v4 = packet[0] >> 4 == 4
            src, dst = (packet[12:16], packet[16:20]) if v4 else (packet[8:24], packet[24:40])
            if dst != to or not is_icmp_error(packet):
                return False
            return src == packed or quotes(packet, address)

        return self._capture.last(from_target)
