"""The raw SYN sweep's send rate against a C baseline on the same veth, in one run.

    .venv/bin/python -m bench.sendrate [--runs 5] [--ports 65535]

A target namespace that drops everything, a prober namespace linked to it by a veth.
The baseline is a small C program (compiled here with cc) that sends the same 20-byte
SYN headers through the same kind of raw socket with sendmmsg(2), 1024 a call: about
what the kernel allows one thread. harden's sweep (harden.verify.engine.raw) is timed on the
same ports. Prints packets per second, medians, and the ratio. Needs root and a C
compiler; touches nothing outside its own namespaces.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harden.lab.netns import Namespace, connect

C_SENDER = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static uint16_t fold(uint32_t s) { while (s >> 16) s = (s & 0xffff) + (s >> 16); return ~s; }

int main(int argc, char **argv) {
    struct in_addr src, dst;
    inet_pton(AF_INET, argv[1], &src); inet_pton(AF_INET, argv[2], &dst);
    int n = atoi(argv[3]), batch = 1024;
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
    int buf = 4 << 20; setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
    static uint8_t pkts[1024][20];
    struct iovec iov[1024]; struct mmsghdr msgs[1024];
    uint32_t base = 0; const uint16_t *w;
    w = (const uint16_t *)&src; base += ntohs(w[0]) + ntohs(w[1]);
    w = (const uint16_t *)&dst; base += ntohs(w[0]) + ntohs(w[1]);
    base += 6 + 20 + 40000 /* sport */ + 0x5002 /* offset, SYN */ + 1024 /* window */;
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    int sent = 0, port = 1;
    while (sent < n) {
        int k = n - sent < batch ? n - sent : batch;
        for (int i = 0; i < k; i++, port++) {
            uint8_t *h = pkts[i]; memset(h, 0, 20);
            h[0] = 40000 >> 8; h[1] = 40000 & 0xff; h[2] = port >> 8; h[3] = port & 0xff;
            h[12] = 0x50; h[13] = 0x02; h[14] = 1024 >> 8; h[15] = 1024 & 0xff;
            uint16_t c = fold(base + port); h[16] = c >> 8; h[17] = c & 0xff;
            iov[i].iov_base = h; iov[i].iov_len = 20;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_name = &to; msgs[i].msg_hdr.msg_namelen = sizeof to;
            msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int off = 0;
        while (off < k) { int r = sendmmsg(fd, msgs + off, k - off, 0); if (r > 0) off += r; }
        sent += k;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""

PY_SENDER = """
import sys, time
from ipaddress import ip_address
from harden.verify.engine.raw import Route, Sender
route = Route(ip_address(sys.argv[2]), sys.argv[4], ip_address(sys.argv[1]), True)
sender = Sender(route)
ports = list(range(1, int(sys.argv[3]) + 1))
sender.syn_sweep([1], 40000)  # warm up: imports and the batch buffers, as in a real run
began = time.perf_counter()
sender.syn_sweep(ports, 40000)
print(time.perf_counter() - began)
sender.close()
"""


def main() -> None:
    """Build the two namespaces, time both senders, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ports", type=int, default=65535)
    args = parser.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench.sendrate needs a C compiler (cc) for its baseline")
    with (
        tempfile.TemporaryDirectory() as tmp,
        Namespace("sr-p") as prober,
        Namespace("sr-t") as target,
    ):
        source_c = Path(tmp) / "sender.c"
        source_c.write_text(C_SENDER)
        binary = Path(tmp) / "sender"
        subprocess.run([cc, "-O2", "-o", str(binary), str(source_c)], check=True)
        dev, _ = connect(prober, target, ["198.18.250.2/24"], ["198.18.250.1/24"])
        target.run(["nft", "add table inet t; add chain inet t in "
                    "{ type filter hook input priority 0; policy drop; }"])  # fmt: skip
        src, dst = "198.18.250.2", "198.18.250.1"
        c_times, py_times = [], []
        for _ in range(args.runs):
            proc = prober.run([str(binary), src, dst, str(args.ports)], timeout=120)
            c_times.append(float(proc.stdout))
            proc = prober.run(
                [sys.executable, "-c", PY_SENDER, src, dst, str(args.ports), dev], timeout=120
            )
            py_times.append(float(proc.stdout))
    c_rate = args.ports / statistics.median(c_times)
    py_rate = args.ports / statistics.median(py_times)
    print(f"{args.ports} SYNs over a veth, median of {args.runs} runs")
    print(f"{'sender':40} {'median s':>9} {'packets/s':>12}")
    print(f"{'C, sendmmsg, 1024 a call (baseline)':40} {statistics.median(c_times):9.3f} "
          f"{c_rate:12,.0f}")  # fmt: skip
    print(f"{'harden.verify.engine.raw syn_sweep':40} {statistics.median(py_times):9.3f} "
          f"{py_rate:12,.0f}")  # fmt: skip
    print(f"harden sends at {py_rate / c_rate:.2f}x the baseline's rate")


if __name__ == "__main__":
    main()
