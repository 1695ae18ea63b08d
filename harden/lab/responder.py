"""Stand-in services for the lab: accept TCP and answer UDP on the declared ports.

Run inside the server namespace: ``python -m harden.lab.responder --tcp 22,80 --udp 53``.
One dual-stack socket per port serves IPv4 and IPv6. It prints ``ready`` once every
socket is bound and stops after ``--lifetime`` seconds at the latest, so an aborted
lab never leaves it behind for long.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time

from harden.manifest.ports import PortRange, parse_port

MAX_SOCKETS = 4096  # stay well under the default open-file limit


def expand(spec: str) -> list[int]:
    """Ports from ``"22,80,10000-10100"`` (empty string: none)."""
    ports: list[int] = []
    for part in filter(None, spec.split(",")):
        rng: PortRange = parse_port(part)
        ports.extend(rng)
    return ports


def _socket(kind: socket.SocketKind, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.setblocking(False)
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    return sock


def serve(tcp: list[int], udp: list[int], lifetime: float) -> None:
    """Accept-and-close on TCP ports, echo datagrams on UDP ports, until the lifetime ends."""
    if len(tcp) + len(udp) > MAX_SOCKETS:
        raise SystemExit(f"responder: more than {MAX_SOCKETS} ports; declare fewer in the lab")
    selector = selectors.DefaultSelector()
    for port in tcp:
        selector.register(_socket(socket.SOCK_STREAM, port), selectors.EVENT_READ, "tcp")
    for port in udp:
        selector.register(_socket(socket.SOCK_DGRAM, port), selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=min(left, 1.0)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.close()
                else:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(data or b"harden-lab", peer)
            except OSError:
                continue


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tcp", default="", help="ports, e.g. 22,80,8000-8010")
    parser.add_argument("--udp", default="", help="ports, e.g. 53,123")
    parser.add_argument("--lifetime", type=float, default=600.0, help="seconds before exiting")
    args = parser.parse_args(argv)
    serve(expand(args.tcp), expand(args.udp), args.lifetime)


if __name__ == "__main__":
    main(sys.argv[1:])
