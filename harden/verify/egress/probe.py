"""``harden verify --egress``: probe a cooperating sink from the hardened host itself.

Every probe goes out through this host's own output path, so the kernel's answer to
each send is evidence: EPERM means a drop or reject in the output hook refused it. A raw
socket sends the SYNs (no connection is left behind and a refused SYN is refused at
once, where connect() would retry), a plain UDP socket the datagrams. The sink command
(``harden sink`` on the sink host, usually over SSH) reports what arrived. The pure
judgement is harden/verify/egress/verdict.py (docs/design.md, "Egress").
"""

from __future__ import annotations

import errno
import json
import random
import select
import shlex
import socket
import struct
import subprocess
import time
from typing import NoReturn

from harden.errors import EnvironmentProblem
from harden.manifest.ports import PortRange, expand, parse_port
from harden.policy.model import Policy
from harden.text import one_line
from harden.types import PROTOS, Address, Proto, Sent
from harden.verify.egress.sink import CONTROL6_TYPE, CONTROL_TYPE, READY, SCHEMA
from harden.verify.egress.verdict import EgressRun
from harden.verify.engine.route import route_to
from harden.verify.engine.transport import OnSent

REFUSED = {errno.EPERM, errno.EACCES}  # the output hook dropped or rejected the send
BUSY = {errno.ENOBUFS, errno.EAGAIN}  # a full queue: wait and send again
ALLOWED_TRIES = 3  # declared pairs must arrive: a lost one is sent again, blindly
READY_TIMEOUT = 60.0  # an SSH login to the sink can take a while


def sink_command(template: str, sources: list[Address]) -> list[str]:
    """The sink command's argv, ``{sources}`` replaced by this host's source addresses."""
    joined = ",".join(str(s) for s in sources)
    return [part.replace("{sources}", joined) for part in shlex.split(template)]


class Sink:
    """The running sink command: ready once it prints READY; its report once stdin closes."""

    def __init__(self, argv: list[str]) -> None:
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            raise EnvironmentProblem(f"cannot run the sink command {argv[0]!r}: {exc}") from None
        assert self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        # select() first: a sink command that hangs silently (a password prompt, a dead
        # host) must not block readline() forever.
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self._proc.stdout], [], [], left)[0]:
                break
            line = self._proc.stdout.readline()
            if not line:
                self._fail("ended before it was ready")
            if line.strip() == READY:
                return
        self._fail(f"did not print {READY!r} within {READY_TIMEOUT:.0f} s")

    def _fail(self, what: str) -> NoReturn:
        self._proc.kill()
        _, err = self._proc.communicate(timeout=10)
        raise EnvironmentProblem(f"the sink command {what}: {one_line(err or '', 300)}")

    def stop(self) -> None:
        """End the sink command now (the run failed: its report is not needed)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.communicate(timeout=10)

    def report(self, timeout: float = 60.0) -> dict[str, object]:
        """Close its stdin (the probes are done) and read its ``harden.sink/1`` JSON."""
        try:
            out, err = self._proc.communicate(input="", timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            raise EnvironmentProblem("the sink command did not report in time") from None
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            data = json.loads(lines[-1]) if lines else None
        except ValueError:
            data = None
        if self._proc.returncode != 0 or not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise EnvironmentProblem(
                f"the sink command exited {self._proc.returncode} without a {SCHEMA} report: "
                f"{one_line(err or out, 300)}"
            )
        return data


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


class EgressSender:
    """Sends SYNs and datagrams to one sink address, noting which sends were refused here."""

    def __init__(self, sink: Address, source: Address) -> None:
        self.sink, self.source = sink, source
        af = socket.AF_INET if sink.version == 4 else socket.AF_INET6
        icmp = socket.IPPROTO_ICMP if sink.version == 4 else socket.IPPROTO_ICMPV6
        try:
            self._tcp = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
            self._icmp = socket.socket(af, socket.SOCK_RAW, icmp)
        except PermissionError:
            raise EnvironmentProblem(
                "verify --egress sends from raw sockets: run it as root (CAP_NET_RAW)"
            ) from None
        self._udp = socket.socket(af, socket.SOCK_DGRAM)
        if sink.version == 6:
            self._tcp.setsockopt(socket.IPPROTO_IPV6, 7, 16)  # IPV6_CHECKSUM at offset 16
        try:
            self._udp.bind((str(source), 0))
        except OSError as exc:
            self.close()
            raise EnvironmentProblem(f"cannot send from {source}: {exc.strerror}") from None
        self.sport = random.randint(33000, 60000)
        self.seq = random.getrandbits(32)

    def close(self) -> None:
        """Close the sockets."""
        for sock in (self._tcp, self._udp, self._icmp):
            sock.close()

    def _syn(self, port: int) -> bytes:
        header = struct.pack("!HHIIBBHHH", self.sport, port, self.seq, 0, 5 << 4, 0x02, 1024, 0, 0)
        if self.sink.version == 6:
            return header  # the kernel fills the checksum in
        pseudo = self.source.packed + self.sink.packed + struct.pack("!BBH", 0, 6, len(header))
        return header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]

    def send(self, proto: Proto, port: int) -> bool:
        """Send one probe; False if this host's output path refused it."""
        if proto == "tcp":
            return _send(self._tcp, self._syn(port), (str(self.sink), 0))
        return _send(self._udp, b"", (str(self.sink), port))

    def control(self) -> bool:
        """Send an ICMP error to the sink (harden always lets those out), to show it listens."""
        kind = CONTROL_TYPE if self.sink.version == 4 else CONTROL6_TYPE
        body = struct.pack("!BBHI", kind, 3 if kind == CONTROL_TYPE else 4, 0, 0) + bytes(28)
        if self.sink.version == 4:
            body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
        return _send(self._icmp, body, (str(self.sink), 0))


def _send(sock: socket.socket, data: bytes, dest: tuple[str, int]) -> bool:
    delay = 0.0005
    for _ in range(200):
        try:
            sock.sendto(data, dest)
            return True
        except OSError as exc:
            if exc.errno in REFUSED:
                return False
            if exc.errno not in BUSY:
                raise EnvironmentProblem(f"cannot send to {dest[0]}: {exc.strerror}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise EnvironmentProblem(f"cannot send to {dest[0]}: the send queue stayed full")


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """``all`` or a list like ``1-1024,8080`` (numbers only)."""
    if text == "all":
        return (PortRange(1, 65535),)
    return tuple(parse_port(part.strip()) for part in text.split(",") if part.strip())


def run_egress(
    policy: Policy,
    sinks: list[Address],
    command: str,
    ports: tuple[PortRange, ...],
    progress: OnSent | None = None,
) -> EgressRun:
    """Probe every port of every sink through this host's output path; ask the sink."""
    routes = [route_to(s, "sink") for s in sinks]
    sources = sorted({r.source for r in routes}, key=str)
    run = EgressRun(sinks=list(sinks), ports=ports, started=time.time())
    began = time.monotonic()
    senders = [EgressSender(r.target, r.source) for r in routes]
    sink: Sink | None = None
    try:
        sink = Sink(sink_command(command, sources))
        for sender in senders:
            _sweep(policy, sender, run, progress)
        time.sleep(0.5)  # the last probes' way to the sink
        data = sink.report()
    except BaseException:
        if sink is not None:
            sink.stop()  # not left capturing until its --duration runs out
        raise
    finally:
        for sender in senders:
            sender.close()
    _read_sink(run, data)
    run.seconds = time.monotonic() - began
    run.notes.append(
        f"probed from {', '.join(str(s) for s in sources)} through this host's own output path"
    )
    return run


def _sweep(policy: Policy, sender: EgressSender, run: EgressRun, progress: OnSent | None) -> None:
    sink = sender.sink
    for proto in PROTOS:
        refused: set[int] = set()
        sent = 0
        for port in expand(run.ports):
            tries = ALLOWED_TRIES if policy.sends(sink, proto, port) else 1
            for _ in range(tries):
                if not sender.send(proto, port):
                    refused.add(port)
                    break
                sent += 1
            if progress is not None and port % 4096 == 0:
                progress(4096)
        run.refused[(sink, proto)] = refused
        key = Sent(4 if sink.version == 4 else 6, proto, "egress")
        run.sent[key] = run.sent.get(key, 0) + sent
    # Three control packets, each sent: one lost on the way must not read as a deaf sink.
    if any([sender.control() for _ in range(3)]):
        return
    run.notes.append(f"this host refused its control packet (an ICMP error) to {sink}")


def _read_sink(run: EgressRun, data: dict[str, object]) -> None:
    arrived = data.get("arrived")
    control = data.get("control")
    if not isinstance(arrived, dict) or not isinstance(control, list):
        raise EnvironmentProblem("the sink's report has no 'arrived' and 'control' lists")
    by_text = {str(s): s for s in run.sinks}
    run.control = {by_text[c] for c in control if c in by_text}
    for dst, per_proto in arrived.items():
        sink = by_text.get(dst)
        if sink is None or not isinstance(per_proto, dict):
            continue  # another address of the sink host: not probed
        for proto in PROTOS:
            ranges = per_proto.get(proto, [])
            ports = {p for text in ranges for p in parse_port(str(text))}
            run.arrived[(sink, proto)] = ports
