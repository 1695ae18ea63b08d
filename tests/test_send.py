"""A probe the kernel refused for a moment is sent again, never skipped (silence is a verdict)."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from harden.errors import EnvironmentProblem
from harden.verify.engine.raw import IP_RECVERR, send_until_sent


class Refusing:
    """sendto that fails with ``code`` for the first ``times`` calls, then sends."""

    def __init__(self, code: int, times: int) -> None:
        self.code, self.times, self.calls, self.sent = code, times, 0, 0

    def __call__(self, data: bytes, dest: tuple[str, int]) -> int:
        self.calls += 1
        if self.calls <= self.times:
            raise OSError(self.code, "refused")
        self.sent += 1
        return len(data)


@pytest.mark.parametrize("code", [errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED])
def test_a_transient_refusal_is_waited_out_and_the_probe_sent_once(code: int) -> None:
    send = Refusing(code, 5)
    send_until_sent(send, b"x", ("198.18.0.1", 9))
    assert send.calls == 6 and send.sent == 1


def test_a_queue_that_stays_full_is_an_error_not_a_skipped_probe() -> None:
    send = Refusing(errno.ENOBUFS, 10**9)
    started = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=r"cannot send probes to 198\.18\.0\.1"):
        send_until_sent(send, b"x", ("198.18.0.1", 9), stall=0.2)
    assert 0.2 <= time.monotonic() - started < 2
    assert send.sent == 0


def test_other_errors_are_raised_at_once() -> None:
    send = Refusing(errno.EMSGSIZE, 1)
    with pytest.raises(OSError) as caught:
        send_until_sent(send, b"x", ("198.18.0.1", 9))
    assert caught.value.errno == errno.EMSGSIZE and send.calls == 1


def test_a_real_socket_reporting_an_icmp_error_on_send_still_sends() -> None:
    # IP_RECVERR turns a port-unreachable into ECONNREFUSED on the next send; the
    # datagram of that send did not leave, and must be sent again.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    try:
        sock.sendto(b"a", ("127.0.0.1", closed_port))
        time.sleep(0.05)  # the ICMP error arrives and is pending on the socket
        with pytest.raises(ConnectionRefusedError):
            sock.sendto(b"b", sink.getsockname())
        send_until_sent(sock.sendto, b"c", sink.getsockname())
        sink.settimeout(2)
        assert sink.recv(16) == b"c"
    finally:
        sock.close()
        sink.close()


# -- sendmmsg batches (harden/verify/engine/batch.py) ------------------------------------------


def _receiver() -> socket.socket:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(1)
    return sink


def _drain(sink: socket.socket) -> list[bytes]:
    got = []
    try:
        while True:
            got.append(sink.recv(100))
    except TimeoutError:
        return got


def test_a_batch_sends_every_slot_once() -> None:
    from ipaddress import ip_address

    from harden.verify.engine import batch

    if not batch.available():
        pytest.skip("this C library has no sendmmsg")
    sink = _receiver()
    slots = batch.Batch(8, batch.sockaddr(ip_address("127.0.0.1"), sink.getsockname()[1]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(batch.BATCH):
        slots.write(i, f"{i:08d}".encode())
    slots.flush(sock, batch.BATCH, lambda i: pytest.fail(f"slot {i} refused"), set())
    assert sorted(_drain(sink)) == [f"{i:08d}".encode() for i in range(batch.BATCH)]


def test_a_refused_slot_is_resent_and_the_rest_still_go(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    from ipaddress import ip_address

    from harden.verify.engine import batch

    if not batch.available():
        pytest.skip("this C library has no sendmmsg")
    real = batch._sendmmsg
    assert real is not None
    calls = {"n": 0}

    def flaky(fd: int, msgs: int, count: int, flags: int) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the kernel refuses once, in the middle of the batch
            ctypes.set_errno(errno.ENOBUFS)
            return -1
        return int(real(fd, msgs, min(count, 100), flags))  # and sends 100 at a time

    monkeypatch.setattr(batch, "_sendmmsg", flaky)
    sink = _receiver()
    port = sink.getsockname()[1]
    slots = batch.Batch(8, batch.sockaddr(ip_address("127.0.0.1"), port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(300):
        slots.write(i, f"{i:08d}".encode())
    resent: list[int] = []

    def resend(i: int) -> None:
        resent.append(i)
        send_until_sent(sock.sendto, slots.payload(i), ("127.0.0.1", port))

    slots.flush(sock, 300, resend, {errno.ENOBUFS})
    assert resent == [100]
    assert sorted(_drain(sink)) == [f"{i:08d}".encode() for i in range(300)]


def test_a_borrowed_batch_goes_to_the_next_sweeps_target() -> None:
    """Batches are shared between targets: a returned one is readdressed, never stale."""
    from ipaddress import ip_address

    from harden.verify.engine import batch

    if not batch.available():
        pytest.skip("this C library has no sendmmsg")
    first, second = _receiver(), _receiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sink, text in ((first, b"one"), (second, b"two")):
        name = batch.sockaddr(ip_address("127.0.0.1"), sink.getsockname()[1])
        with batch.borrowed(3, name) as slots:
            used = id(slots)
            for i in range(4):
                slots.write(i, text)
            slots.flush(sock, 4, lambda i: pytest.fail(f"slot {i} refused"), set())
    assert _drain(first) == [b"one"] * 4 and _drain(second) == [b"two"] * 4
    with batch.borrowed(3, name) as again, batch.borrowed(3, name) as other:
        assert id(again) == used and id(other) != used  # reused; never lent twice at once


def test_the_capture_filter_compiles_with_libpcap_and_bad_ones_say_why() -> None:
    from harden.verify.engine import bpf

    program = bpf.compile_raw("src host 198.51.100.7 or src host fd00::7")
    assert program[-1][0] == 0x06  # BPF_RET: a complete program
    assert any(k == 0xC6336407 for _, _, _, k in program)  # 198.51.100.7, compared
    with pytest.raises(bpf.FilterError, match="syntax error"):
        bpf.compile_raw("src host (")
