"""The host's own limits are exit 4 with the system's message, never exit 70 ("a bug")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

from .conftest import REPO

pytestmark = pytest.mark.netns
HARDEN = [sys.executable, "-m", "harden.cli"]
WEB = REPO / "rulesets" / "web-server.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_rootless_user_namespace_gets_exit_4_with_ips_own_message() -> None:
    """In a user namespace "root" passes the uid check but cannot make a network
    namespace (CI runners, rootless containers): exit 4, and ip's reason, not exit 70."""
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", *HARDEN, "lab", str(WEB)],
        capture_output=True, text=True, cwd="/", env=ENV, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "cannot create network namespace" in proc.stderr, proc.stderr
    assert "Operation not permitted" in proc.stderr and "internal error" not in proc.stderr


def test_a_full_state_directory_is_exit_4_and_nothing_is_applied(
    netns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    """apply with its state directory on a full file system: exit 4 naming the file and
    the system's "No space left on device"; the write-ahead snapshot failed, so no rule
    was loaded."""
    ns = netns("full")
    mount = tmp_path / "full"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {mount} && "
        f"(dd if=/dev/zero of={mount}/fill bs=4k count=64 2>/dev/null; true) && "
        f'exec "$@"'
    )
    state = ["--state-dir", str(mount / "state"), "--no-persist", "--root", str(tmp_path)]
    proc = ns.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         *HARDEN, "apply", str(WEB), *state],
        check=False,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert "No space left on device" in proc.stderr and "cannot write" in proc.stderr
    assert "internal error" not in proc.stderr
    assert ns.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_an_unprivileged_user_is_told_what_needs_root_never_nothing_here(
    netns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    """harden's table is live and its state recorded; a monitoring user (nobody) runs the
    commands. Those that read or change the kernel say so in one line, exit 4, where they
    said "nothing applied" (status, counters: exit 0), "the kernel refused the ruleset"
    (diff: 3) or "internal error" (apply...: 70). The rest work without root."""
    ns = netns("user")
    state = tmp_path / "state"
    applied = ns.run(
        [*HARDEN, "apply", str(WEB), "--state-dir", str(state), "--no-persist",
         "--root", str(tmp_path)], check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    tmp_path.chmod(0o755)  # nobody may reach the state directory; harden keeps it 0700
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *HARDEN]
    other = REPO / "rulesets" / "egress-host.yaml"
    expected = {
        ("status", "--state-dir", str(state)): 4,
        ("counters",): 4,
        ("diff", str(WEB)): 4,
        ("apply", str(WEB), "--state-dir", str(state)): 4,
        ("confirm", "--state-dir", str(state)): 4,
        ("rollback", "--state-dir", str(state)): 4,
        ("remove", "--state-dir", str(state)): 4,
        ("analyze",): 4,
        ("explain", "tcp/22", "--from", "198.18.1.9"): 4,
        ("validate", str(WEB)): 0,
        ("render", str(WEB)): 0,
        ("schema",): 0,
        ("diff", str(WEB), str(other)): 1,
    }
    for args, code in expected.items():
        proc = ns.run([*nobody, *args], check=False)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        if code == 4:
            line = f"harden: error: {args[0]} needs root (CAP_NET_ADMIN): "
            assert proc.stderr.startswith(line) and len(proc.stderr.splitlines()) == 1, (
                args,
                proc.stderr,
            )
    assert "table inet harden" in ns.run(["nft", "list", "tables"]).stdout  # untouched
