"""What the benchmarks share: timing a command (and its peak memory) inside a namespace."""

from __future__ import annotations

import subprocess
import sys

_RSS = (
    "import resource, subprocess, sys, time\n"
    "t = time.monotonic(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.stderr.write(p.stdout)\n"
)


def measure(ns: str, cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one command run inside namespace ``ns``."""
    proc = subprocess.run(
        [sys.executable, "-c", _RSS, "ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, rss = proc.stdout.split()
    return float(seconds), int(rss) / 1024, proc.stderr
