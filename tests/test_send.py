"""A probe the kernel refused for a moment is sent again, never skipped (silence is a verdict)."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from harden.errors import EnvironmentProblem
from harden.verify.raw import IP_RECVERR, send_until_sent


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
