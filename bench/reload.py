"""Packets lost on established flows while harden re-applies 100 times.

    .venv/bin/python -m bench.reload [--applies 100]

A client streams sequence-numbered UDP datagrams (echoed back) and a TCP byte stream
to a server while the server alternates between two manifests, so every apply is a
real reload of the table. Reports datagrams lost either way, TCP retransmissions and
the apply rate. Needs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harden.lab.netns import Namespace, connect

A = "version: 1\nservices:\n  - {name: echo, port: 9000, proto: [tcp, udp]}\n"
B = A + "  - {name: web, port: 80, proto: tcp}\n"
SERVER = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9000))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 9000)); t.listen(1)
def sink():
    c, _ = t.accept()
    while c.recv(65536): pass
threading.Thread(target=sink, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(64); u.sendto(data, peer)
"""
CLIENT = """
import json, socket, sys, threading, time
seconds = float(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("198.19.0.1", 9000))
u.settimeout(0.5)
got = set()
def receive():
    while True:
        try:
            got.add(int(u.recv(64)))
        except (TimeoutError, OSError):
            if done: return
done = False
r = threading.Thread(target=receive); r.start()
t = socket.create_connection(("198.19.0.1", 9000))
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    u.send(str(sent).encode()); sent += 1
    t.sendall(b"x" * 1024)
    time.sleep(0.0005)
time.sleep(0.5); done = True; r.join()
print(json.dumps({"sent": sent, "echoed": len(got)}))
"""


def retransmits(ns: Namespace) -> int:
    lines = [
        x.split()
        for x in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
        if x.startswith("Tcp:")
    ]
    return int(lines[1][lines[0].index("RetransSegs")])


def main() -> None:
    """Stream, re-apply, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--applies", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Namespace("rs") as server, Namespace("rc") as client:
        connect(server, client, ["198.19.0.1/24"], ["198.19.0.2/24"])
        a, b = Path(tmp) / "a.yaml", Path(tmp) / "b.yaml"
        a.write_text(A)
        b.write_text(B)
        state = str(Path(tmp) / "st")
        harden = [sys.executable, "-m", "harden.cli", "apply", "--state-dir", state]
        server.run([*harden, str(a)])
        srv = subprocess.Popen(
            ["ip", "netns", "exec", server.name, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert srv.stdout is not None and srv.stdout.readline() == "ready\n"
        retrans = retransmits(client)
        # Long enough for every apply (about 0.3 s each, mostly Python start-up).
        seconds = args.applies * 0.45 + 2
        cli = subprocess.Popen(
            ["ip", "netns", "exec", client.name, sys.executable, "-c", CLIENT, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1)
            start = time.monotonic()
            for i in range(args.applies):
                out = server.run([*harden, str(b if i % 2 == 0 else a), "--format", "json"])
                assert json.loads(out.stdout)["changed"] is True
            elapsed = time.monotonic() - start
            result = json.loads(cli.communicate(timeout=seconds + 30)[0])
        finally:
            for proc in (cli, srv):
                proc.kill()
                proc.wait()
        lost = result["sent"] - result["echoed"]
        print(
            f"{args.applies} re-applies in {elapsed:.1f} s ({args.applies / elapsed:.1f}/s) "
            f"during a {seconds:.0f} s stream"
        )
        print(f"UDP datagrams: {result['sent']} sent, {result['echoed']} echoed back, {lost} lost")
        print(f"TCP retransmissions on the stream: {retransmits(client) - retrans}")


if __name__ == "__main__":
    main()
