"""A lab ended by a signal leaves nothing behind: CI cancels jobs with SIGTERM.

Each case starts a real ``harden lab``, waits for the step it names (its progress line),
sends the signal while that step runs, and then looks for anything of the run: its
namespaces (their names carry its pid), every process that was in them (the stand-in
services, the rollback watchdog, a verify child), its temp directory and what was in it
(the state directory and its lock). ``--reap`` removes what a SIGKILL left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.netns
HARDEN = [sys.executable, "-m", "harden.cli"]
WEB = REPO / "rulesets" / "web-server.yaml"


def lab_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if f"-{pid}-" in line]


def processes_in(namespaces: list[str]) -> set[int]:
    found: set[int] = set()
    for name in namespaces:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        found |= {int(p) for p in out.stdout.split()}
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(proc: subprocess.Popen[str], marker: str, timeout: float = 120) -> None:
    """Read the lab's progress until a line starts with ``marker``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the lab ended before '{marker}' (rc {proc.wait()})")
        if line.startswith(marker):
            return
    raise AssertionError(f"no '{marker}' within {timeout} s")


@pytest.mark.parametrize(
    ("signum", "step"),
    [
        (signal.SIGTERM, "» before:"),
        (signal.SIGTERM, "» apply:"),
        (signal.SIGTERM, "» after:"),
        (signal.SIGHUP, "» apply:"),
        (signal.SIGINT, "» after:"),
    ],
    ids=["TERM-before", "TERM-apply", "TERM-after", "HUP-apply", "INT-after"],
)
def test_a_signal_at_any_step_leaves_nothing_of_the_lab(
    signum: int, step: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [*HARDEN, "lab", str(WEB)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
    )
    try:
        wait_for(proc, step)
        time.sleep(1.0)  # inside the step: its probes, its apply, its watchdog running
        namespaces = lab_namespaces(proc.pid)
        inside = processes_in(namespaces)
        assert namespaces and inside, (namespaces, inside)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        rest = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signum, (code, rest)
    assert "interrupted" in rest, rest
    assert lab_namespaces(proc.pid) == []
    alive = {pid for pid in inside if running(pid)}
    assert alive == set(), [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    assert list(tmp_path.iterdir()) == []  # its temp directory, state and lock with it


def test_reap_removes_the_namespaces_of_runs_that_are_gone_only() -> None:
    """A run killed outright (SIGKILL) cannot clean up; ``lab --reap`` removes its
    namespaces and what runs in them, and leaves a live run's alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale, live = f"hl-srv-{dead}-a1b2c3", f"hl-srv-{os.getpid()}-d4e5f6"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
    try:
        time.sleep(0.3)
        proc = subprocess.run(
            [*HARDEN, "lab", "--reap"], capture_output=True, text=True, cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"removed {stale}" in proc.stdout and live not in proc.stdout, proc.stdout
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale not in listed and live in listed
    finally:
        sleeper.kill()
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
