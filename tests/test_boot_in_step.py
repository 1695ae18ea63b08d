"""What harden says about boot is true: the boot files follow what is live, status compares
them with the kernel, and confirm checks the kernel, not its record (real kernel, namespaces).

The lockout these guard against: apply M1 --persist, then apply M2 (which lets in the
operator's new SSH network) without --persist; the boot file still held M1, status said
"rules load at boot", and the next reboot locked the operator out.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harden.lab.netns import Namespace

from .labutil import write
from .test_apply import A, B
from .test_apply_trust import harden, kill_namespace_processes

pytestmark = pytest.mark.netns
BACKENDS = ["nftables", "iptables"]
NsFactory = Callable[[str], Namespace]


@pytest.fixture
def ns(netns: NsFactory) -> Iterator[Namespace]:
    space = netns("bs")
    yield space
    kill_namespace_processes(space)  # watchdogs of pending applies


def boot_rules(root: Path) -> dict[str, str]:
    folder = root / "etc" / "harden"
    return {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.exists() else {}


def rendered(ns: Namespace, manifest: Path, backend: str, tmp: Path) -> dict[str, str]:
    """The rule files ``manifest`` renders to (what a persist of it writes for boot)."""
    out = tmp / f"rendered-{manifest.stem}-{backend}"
    proc = harden(ns, "render", manifest, "--backend", backend, "--output", out)
    assert proc.returncode == 0, proc.stderr
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


def boot_status(ns: Namespace, state: Path, root: Path) -> dict[str, Any]:
    proc = harden(ns, "status", "--state-dir", state, "--root", root, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    shown: dict[str, Any] = json.loads(proc.stdout)["boot"]
    return shown


def restart_unit(ns: Namespace, root: Path) -> None:
    """What `systemctl restart harden.service` does: its ExecStart lines, files under root."""
    unit = (root / "etc/systemd/system/harden.service").read_text()
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=").replace("/etc/harden/", f"{root}/etc/harden/")
            ns.run(["sh", "-c", command if "sh -c" not in command else shlex.split(command)[2]])


@dataclass(frozen=True)
class Persisted:
    """Manifests A and B, and A applied with --persist under a scratch root."""

    a: Path
    b: Path
    state: Path
    root: Path
    common: list[str | Path]  # --backend, --state-dir and --root for further applies
    first: dict[str, str]  # A's boot rule files

    @classmethod
    def of(cls, ns: Namespace, tmp: Path, backend: str) -> Persisted:
        """Write A and B, apply A --persist; its boot files are ``first``."""
        a, b = write(tmp, "a.yaml", A), write(tmp, "b.yaml", B)
        state, root = tmp / "state", tmp / "root"
        common: list[str | Path] = ["--backend", backend, "--state-dir", state, "--root", root]
        assert harden(ns, "apply", a, *common, "--persist").returncode == 0
        return cls(a, b, state, root, common, boot_rules(root))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_apply_without_persist_keeps_hardens_boot_files_in_step(
    ns: Namespace, tmp_path: Path, backend: str
) -> None:
    m = Persisted.of(ns, tmp_path, backend)
    b, state, root, common, first = m.b, m.state, m.root, m.common, m.first
    assert boot_status(ns, state, root)["state"] == "matches"

    proc = harden(ns, "apply", b, *common)  # no --persist
    assert proc.returncode == 0, proc.stderr
    assert "kept in step" in proc.stdout, proc.stdout
    assert boot_rules(root) == rendered(ns, b, backend, tmp_path) != first
    shown = boot_status(ns, state, root)
    assert shown["state"] == "matches" and shown["differs"] == [], shown

    # A rollback takes the boot files back with the rules.
    assert harden(ns, "rollback", "--state-dir", state).returncode == 0
    assert boot_rules(root) == first
    assert boot_status(ns, state, root)["state"] == "matches"


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_persist_removes_the_boot_files_and_says_so(
    ns: Namespace, tmp_path: Path, backend: str
) -> None:
    m = Persisted.of(ns, tmp_path, backend)
    b, state, root, common, first = m.b, m.state, m.root, m.common, m.first
    proc = harden(ns, "apply", b, *common, "--no-persist", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "boot files removed" in result["message"], result
    assert any(p.endswith("harden.service") for p in result["unpersisted"]), result
    assert boot_rules(root) == {} and not (root / "etc/systemd/system/harden.service").exists()
    assert boot_status(ns, state, root)["state"] == "absent"
    assert harden(ns, "rollback", "--state-dir", state).returncode == 0
    assert boot_rules(root) == first  # the rollback brings them back


def test_status_says_stale_and_why(ns: Namespace, tmp_path: Path) -> None:
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state, root = tmp_path / "state", tmp_path / "root"
    assert harden(ns, "apply", a, "--state-dir", state, "--root", root, "--persist").returncode == 0
    # Someone loads other rules by hand: the boot files no longer bring back what runs.
    rendered(ns, b, "nftables", tmp_path)
    ns.run(["nft", "-f", str(tmp_path / "rendered-b-nftables" / "harden.nft")])
    shown = boot_status(ns, state, root)
    assert shown["state"] == "stale" and "they do not load the live rules" in shown["differs"]
    text = harden(ns, "status", "--state-dir", state, "--root", root).stdout
    assert "boot:     STALE" in text and "do not load the live rules" in text, text
    # And an empty root: absent, and status says where it looked and where the last
    # persist went.
    shown = boot_status(ns, state, tmp_path / "elsewhere")
    assert shown["state"] == "absent" and shown["persisted_under"] == str(root), shown
    text = harden(ns, "status", "--state-dir", state).stdout
    assert "absent" in text and f"the last persist wrote under {root}" in text, text


@pytest.mark.parametrize("backend", BACKENDS)
def test_confirm_refuses_when_the_live_rules_are_not_the_applied_ones(
    ns: Namespace, tmp_path: Path, backend: str
) -> None:
    """harden.service restarts inside the confirm window and loads the old boot file:
    confirm must not say "confirmed", nor persist rules that are not running."""
    m = Persisted.of(ns, tmp_path, backend)
    a, b, state, root, common, first = m.a, m.b, m.state, m.root, m.common, m.first
    assert harden(ns, "apply", b, *common, "--persist", "--confirm", "120").returncode == 0
    restart_unit(ns, root)  # the old rules are live again
    assert harden(ns, "diff", a, "--backend", backend).returncode == 0
    proc = harden(ns, "confirm", "--state-dir", state)
    assert proc.returncode != 0 and "refusing to confirm" in proc.stderr, proc.stdout + proc.stderr
    assert boot_rules(root) == first  # nothing persisted
    shown = json.loads(
        harden(ns, "status", "--state-dir", state, "--root", root, "--format", "json").stdout
    )
    assert shown["live_matches_last_apply"] is False
    assert shown["pending_confirmation"] is not None


def test_an_unchanged_apply_is_recorded_too(ns: Namespace, tmp_path: Path) -> None:
    """After a reset, an apply whose rules are live already changes nothing, but from then
    on they are the applied ones: status names the manifest, and rollback has nothing of
    its own to undo (it does not claim to restore "no harden rules" while they stay)."""
    a = write(tmp_path, "a.yaml", A)
    state = tmp_path / "state"
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 0
    assert harden(ns, "reset", "--state-dir", state).returncode == 0
    proc = harden(ns, "apply", a, "--state-dir", state, "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["changed"] is False, proc.stderr
    shown = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert shown["manifest"] == str(a) and shown["live_matches_last_apply"] is True, shown
    assert shown["history"][-1]["event"] == "recorded"
    rolled = harden(ns, "rollback", "--state-dir", state)
    assert rolled.returncode == 2 and "nothing to roll back" in rolled.stderr, rolled.stdout
    assert harden(ns, "diff", a).returncode == 0  # the rules stay
    # Config management re-applying every 15 minutes adds nothing to the history.
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 0
    again = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert again["history"] == shown["history"]
