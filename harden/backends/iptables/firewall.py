"""iptables through iptables-restore / ip6tables-restore: only harden's own chains.

harden owns ``HARDEN-INPUT`` (jumped to from the top of INPUT), ``HARDEN-FORWARD``
(from the top of DOCKER-USER if Docker made it, else of FORWARD), ``HARDEN-OUTPUT``
when the manifest restricts egress (from the top of OUTPUT), the chains they call
(``HARDEN-DNAT-IN``, ``HARDEN-DNAT-FWD``, ``HARDEN-CLOSED``...) and two
``HARDEN-<GROUP>`` chains per source-restricted group. Every change goes through one
``*-restore --noflush`` transaction per family, so other chains stay byte-identical.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harden.apply import boot
from harden.backends.iptables.rules import IPT_FILES, render
from harden.errors import ApplyError, EnvironmentProblem, StateError
from harden.policy.model import Policy
from harden.text import one_line
from harden.types import Backend

JUMP = "-A INPUT -j HARDEN-INPUT"
OUT_JUMP = "-A OUTPUT -j HARDEN-OUTPUT"
# Forwarded traffic reaches HARDEN-FORWARD from DOCKER-USER when Docker made that chain
# (Docker keeps its jump to it first in FORWARD, across restarts), else from FORWARD.
FORWARD_HOOKS = ("DOCKER-USER", "FORWARD")
TOOLS = {4: "iptables", 6: "ip6tables"}


@dataclass(frozen=True)
class Owned:
    """harden's part of one family's filter table."""

    chains: tuple[str, ...]
    rules: tuple[str, ...]
    jump: bool
    # INPUT rules ahead of the jump: not harden's, but they decide before harden does.
    before_jump: tuple[str, ...] = ()
    # The chain jumping to HARDEN-FORWARD (FORWARD or DOCKER-USER), if any.
    fwd_jump: str | None = None
    before_fwd_jump: tuple[str, ...] = ()
    docker_user: bool = False  # whether the table has Docker's DOCKER-USER chain
    out_jump: bool = False  # OUTPUT jumps to HARDEN-OUTPUT (egress)
    before_out_jump: tuple[str, ...] = ()

    @property
    def anything(self) -> bool:
        """Whether harden owns any chain or jump in this table."""
        return bool(self.chains or self.jump or self.fwd_jump or self.out_jump)

    @property
    def forward_hook(self) -> str:
        """Where the forward jump belongs in this table."""
        return "DOCKER-USER" if self.docker_user else "FORWARD"

    def text(self, family: int) -> str:
        """Readable canonical form (what diff compares)."""
        lines = [f"# IPv{family}", *(f":{c}" for c in self.chains), *self.rules]
        lines.append(f"# INPUT jumps to HARDEN-INPUT: {'yes' if self.jump else 'no'}")
        if self.before_jump:
            lines.append("# INPUT rules before the jump to HARDEN-INPUT (they bypass harden):")
            lines += [f"#   {rule}" for rule in self.before_jump]
        if "HARDEN-FORWARD" in self.chains or self.fwd_jump:
            lines.append(
                f"# forwarded traffic jumps to HARDEN-FORWARD: {'yes' if self.fwd_jump else 'no'}"
            )
        if self.before_fwd_jump:
            lines.append(
                f"# {self.fwd_jump} rules before the jump to HARDEN-FORWARD (they bypass harden):"
            )
            lines += [f"#   {rule}" for rule in self.before_fwd_jump]
        if "HARDEN-OUTPUT" in self.chains or self.out_jump:
            lines.append(f"# OUTPUT jumps to HARDEN-OUTPUT: {'yes' if self.out_jump else 'no'}")
        if self.before_out_jump:
            lines.append("# OUTPUT rules before the jump to HARDEN-OUTPUT (they bypass harden):")
            lines += [f"#   {rule}" for rule in self.before_out_jump]
        return "\n".join(lines) + "\n"


def parse_save(saved: str) -> Owned:
    """Harden's chains, rules and jumps from ``iptables-save -t filter`` output."""
    chains, rules, jump, before = [], [], False, []
    fwd_jump: str | None = None
    ahead: dict[str, list[str]] = {hook: [] for hook in FORWARD_HOOKS}
    docker_user = False
    out_jump, before_out = False, []
    for line in saved.splitlines():
        if line.startswith(":HARDEN-"):
            chains.append(line[1:].split()[0])
        elif line.startswith(":DOCKER-USER "):
            docker_user = True
        elif line.startswith("-A HARDEN-"):
            rules.append(line)
        elif line == JUMP:
            jump = True
        elif line.startswith("-A INPUT ") and not jump:
            before.append(line)
        elif line == OUT_JUMP:
            out_jump = True
        elif line.startswith("-A OUTPUT ") and not out_jump:
            before_out.append(line)
        elif line.split(" ", 2)[1:2] and line.split(" ", 2)[1] in FORWARD_HOOKS:
            hook = line.split(" ", 2)[1]
            if line == f"-A {hook} -j HARDEN-FORWARD":
                fwd_jump = fwd_jump or hook
            elif fwd_jump is None:
                ahead[hook].append(line)
    return Owned(
        tuple(chains),
        tuple(rules),
        jump,
        tuple(before) if jump else (),
        fwd_jump,
        tuple(ahead[fwd_jump]) if fwd_jump else (),
        docker_user,
        out_jump,
        tuple(before_out) if out_jump else (),
    )


_CHAIN = re.compile(r"HARDEN-[A-Z0-9-]{1,21}")
# "[12:720] -A HARDEN-INPUT ... --comment witness_in_tcp_v4 ..." from iptables-save -c
_COUNTED = re.compile(
    r"\[(?P<packets>\d+):\d+\] -A HARDEN-[A-Z0-9-]+ .*--comment \"?(?P<name>(?:closed|witness)_\w+)"
)


def parse_snapshot(snapshot: str) -> dict[str, Any]:
    """A snapshot's data, if it holds nothing but harden's own chains (else StateError)."""
    if not snapshot:
        return {}
    try:
        data = json.loads(snapshot)
        ok = isinstance(data, dict) and set(data) <= {"4", "6"}
        for part in data.values():
            chains, rules, jump = part["chains"], part["rules"], part["jump"]
            ok = ok and isinstance(jump, bool) and part.get("fwd_jump") in (None, *FORWARD_HOOKS)
            ok = ok and isinstance(part.get("out_jump", False), bool)
            ok = ok and all(isinstance(c, str) and _CHAIN.fullmatch(c) for c in chains)
            ok = ok and all(
                isinstance(r, str) and r.startswith("-A HARDEN-") and "\n" not in r for r in rules
            )
    except (ValueError, TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise StateError("the iptables snapshot holds more than harden's own chains: refused")
    result: dict[str, Any] = data
    return result


class IptablesFirewall:
    """Loads, snapshots and restores harden's iptables and ip6tables chains."""

    name: Backend = "iptables"
    atomic: bool = False  # one transaction per family (docs/design.md)

    def __init__(self) -> None:
        self._checked: dict[str, str] | None = None  # the files check() last accepted

    def _tool(self, family: int, suffix: str, args: list[str], stdin: str | None = None) -> str:
        cmd = [f"{TOOLS[family]}{suffix}", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise EnvironmentProblem(f"{cmd[0]} is missing (Debian package iptables)") from exc
        if proc.returncode != 0:
            raise ApplyError(f"{' '.join(cmd)} failed: {one_line(proc.stderr, 400)}")
        return proc.stdout

    def _owned(self, family: int) -> Owned:
        return parse_save(self._tool(family, "-save", ["-t", "filter"]))

    def render(self, policy: Policy) -> dict[str, str]:
        """``harden.rules.v4`` and ``harden.rules.v6`` for ``*-restore --noflush``."""
        return render(policy)

    def check(self, files: dict[str, str]) -> str:
        """``*-restore --test`` for both families, then a real load in a scratch namespace.

        iptables-nft's --test does not resolve everything the kernel checks (a jump to a
        missing chain passes it), so the files are also loaded where nothing is at stake;
        what that load lists back is the canonical form.
        """
        for family, name in IPT_FILES.items():
            self._tool(family, "-restore", ["--test", "--noflush"], files[name])
        canonical = self._canonical(files)
        self._checked = dict(files)
        return canonical

    def snapshot(self) -> str:
        """Both families' harden chains as JSON ("" if harden owns nothing)."""
        owned = {family: self._owned(family) for family in IPT_FILES}
        if not any(o.anything for o in owned.values()):
            return ""
        return json.dumps(
            {
                str(f): {
                    "chains": o.chains,
                    "rules": o.rules,
                    "jump": o.jump,
                    "fwd_jump": o.fwd_jump,
                    "out_jump": o.out_jump,
                }
                for f, o in owned.items()
            }
        )

    def load(self, files: dict[str, str]) -> None:
        """One restore transaction per family; if IPv6 fails, IPv4 is put back.

        Both families are loaded in a scratch namespace first (by ``check``, which
        apply has just run on these files; here otherwise), so a ruleset either family
        refuses changes nothing at all; the put-back covers only a failure at commit time.
        """
        if self._checked != files:
            self.check(files)
        before = self.snapshot()
        done: list[int] = []
        try:
            for family, name in IPT_FILES.items():
                self._tool(family, "-restore", ["--noflush"], self._load_text(family, files[name]))
                done.append(family)
        except ApplyError:
            if done:
                self.restore(before)
            raise

    def _load_text(self, family: int, rendered: str) -> str:
        new = parse_save(rendered)
        live = self._owned(family)
        extra = [f"-X {chain}" for chain in live.chains if chain not in new.chains]
        extra = [f"-F {c}" for c in live.chains if c not in new.chains] + extra
        wants_out = "HARDEN-OUTPUT" in new.chains
        if live.out_jump and (not wants_out or live.before_out_jump):
            extra.insert(0, "-D OUTPUT -j HARDEN-OUTPUT")  # before its chain goes, or to move up
        if wants_out and (not live.out_jump or live.before_out_jump):
            extra.append("-I OUTPUT 1 -j HARDEN-OUTPUT")
        if live.jump and live.before_jump:
            extra.append("-D INPUT -j HARDEN-INPUT")  # harden decides first: move it up
        if not live.jump or live.before_jump:
            extra.append("-I INPUT 1 -j HARDEN-INPUT")
        hook = live.forward_hook
        misplaced = live.fwd_jump is not None and (
            live.fwd_jump != hook or bool(live.before_fwd_jump)
        )
        if misplaced:
            extra.append(f"-D {live.fwd_jump} -j HARDEN-FORWARD")
        if live.fwd_jump is None or misplaced:
            extra.append(f"-I {hook} 1 -j HARDEN-FORWARD")
        body = rendered.rstrip("\n")
        assert body.endswith("COMMIT")
        return body[: -len("COMMIT")] + "".join(f"{line}\n" for line in extra) + "COMMIT\n"

    def restore(self, snapshot: str) -> None:
        """Put back the snapshot's chains and jump; drop chains it did not have."""
        data = parse_snapshot(snapshot)
        for family in IPT_FILES:
            want = data.get(str(family), {"chains": [], "rules": [], "jump": False})
            live = self._owned(family)
            lines = ["*filter", *(f":{c} - [0:0]" for c in want["chains"]), *want["rules"]]
            stale = [c for c in live.chains if c not in want["chains"]]
            if live.jump and not want["jump"]:
                lines.append("-D INPUT -j HARDEN-INPUT")
            # Snapshots from before egress have no "out_jump".
            out_want: bool = want.get("out_jump", False)
            if live.out_jump and not out_want:
                lines.append("-D OUTPUT -j HARDEN-OUTPUT")
            # Snapshots from before harden filtered forwarded traffic have no "fwd_jump".
            fwd_want: str | None = want.get("fwd_jump")
            if fwd_want == "DOCKER-USER" and not live.docker_user:
                fwd_want = "FORWARD"  # Docker's chain is gone: its hook still is not
            if live.fwd_jump and live.fwd_jump != fwd_want:
                lines.append(f"-D {live.fwd_jump} -j HARDEN-FORWARD")
            lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
            if want["jump"] and not live.jump:
                lines.append("-I INPUT 1 -j HARDEN-INPUT")
            if fwd_want and live.fwd_jump != fwd_want:
                lines.append(f"-I {fwd_want} 1 -j HARDEN-FORWARD")
            if out_want and not live.out_jump:
                lines.append("-I OUTPUT 1 -j HARDEN-OUTPUT")
            lines.append("COMMIT")
            self._tool(family, "-restore", ["--noflush"], "\n".join(lines) + "\n")

    def live(self) -> str:
        """Both families' harden chains in canonical form ("" if none)."""
        owned = {family: self._owned(family) for family in IPT_FILES}
        if not any(o.anything for o in owned.values()):
            return ""
        return "".join(o.text(f) for f, o in owned.items())

    def _canonical(self, files: dict[str, str]) -> str:
        """Load the ruleset into a throwaway network namespace and save it back."""
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for family, name in IPT_FILES.items():
                paths[family] = Path(tmp) / name
                paths[family].write_text(files[name])
            script = (
                'iptables-restore --noflush "$1" && ip6tables-restore --noflush "$2" && '
                "iptables-save -t filter && echo '#harden-split' && ip6tables-save -t filter"
            )
            proc = subprocess.run(
                ["unshare", "--net", "sh", "-c", script, "sh", str(paths[4]), str(paths[6])],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise ApplyError(f"the kernel refused the ruleset: {one_line(proc.stderr, 400)}")
        v4, v6 = proc.stdout.split("#harden-split\n")
        # Loading also adds the jumps, which the rendered files leave to apply.
        return "".join(
            Owned(
                o.chains, o.rules, True, fwd_jump="FORWARD", out_jump="HARDEN-OUTPUT" in o.chains
            ).text(f)
            for f, o in ((4, parse_save(v4)), (6, parse_save(v6)))
        )

    def counters(self) -> dict[str, int]:
        """Packets per counting rule comment (closed_*, witness_*), summed over rules."""
        found: dict[str, int] = {}
        for family in IPT_FILES:
            for line in self._tool(family, "-save", ["-c", "-t", "filter"]).splitlines():
                match = _COUNTED.match(line)
                if match:
                    name = match.group("name")
                    found[name] = found.get(name, 0) + int(match.group("packets"))
        return found

    def identity(self) -> str | None:
        """None: iptables numbers nothing; a zeroing shows only as counters going back."""
        return None

    def persist_targets(self, root: Path) -> list[Path]:
        """The files persist() may write or remove under ``root`` (harden/apply/boot.py)."""
        return boot.targets(root)

    def persist(self, files: dict[str, str], root: Path) -> list[Path]:
        """The restore files under /etc/harden, loaded by harden.service (enabled)."""
        return boot.install("iptables", files, root)
