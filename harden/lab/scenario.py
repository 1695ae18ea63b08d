"""The lab: the seed's story end to end in network namespaces.

before (verify a host with no firewall: RST and ICMP leaks) -> apply (the real apply
path, with a confirm window) -> after (verify from outside and from inside the declared
sources) -> confirm only if the verification passed, otherwise roll back.

The lab applies the manifest with its own probers added under ``verify.probers``, which
adds counters and changes no filtering, so every after-step is checked by the witness
too (docs/design.md, "The verdict rule": some proofs, such as silence in reject mode,
only the target's counters can give).

Every step runs the real command line inside the namespace it belongs to, exactly as
an operator would on separate machines: ``harden apply`` on the server, ``harden
verify`` on the prober.

A manifest whose egress policy is drop or reject also gets the egress proof, before and
after: ``harden verify --egress`` on the server itself, with the outside host as the
sink (``harden sink`` in its namespace). Before, everything leaves (expected FAIL);
after, only the declared egress may, and the lab confirms only if that passed too.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml
from rich.console import Console
from rich.table import Table

from harden import defaults
from harden.errors import EnvironmentProblem
from harden.files import load_manifest
from harden.lab.net import Host, LabNet
from harden.manifest.ports import PortRange, compress, merge
from harden.manifest.safeyaml import load_yaml
from harden.policy.exposure import exposure_diff
from harden.policy.model import Policy, build_policy
from harden.text import one_line
from harden.types import Address, Backend
from harden.verify.options import PortSelection

# -I: the lab runs as root, and a Python that put its working directory (or PYTHONPATH)
# on sys.path would run whatever harden/ package a user planted there.
ALL_PORTS = PortSelection("all")
HARDEN = [sys.executable, "-I", "-m", "harden.cli"]


@dataclass
class Step:
    """One verification run of the lab, as the prober's JSON report describes it."""

    name: str
    vantage: str
    expect_pass: bool
    report: dict[str, Any]
    exit_code: int
    seconds: float
    dropped: dict[str, int] | None = None  # the server's drop counters: increase per step

    @property
    def passed(self) -> bool:
        """Whether ``harden verify`` said PASS."""
        return self.exit_code == 0

    @property
    def as_expected(self) -> bool:
        """Whether the outcome is the one this step of the story expects.

        A step expected to fail must say FAIL: an INCONCLUSIVE before-step proved no leak.
        """
        return self.passed if self.expect_pass else self.exit_code == 1


@dataclass
class LabResult:
    """Everything the lab observed, in order."""

    manifest: Path
    backend: Backend
    steps: list[Step] = field(default_factory=list)
    applied: dict[str, Any] = field(default_factory=dict)
    confirmed: bool = False
    rolled_back: bool = False
    not_tested: list[str] = field(default_factory=list)  # what no probe covered, and why

    @property
    def after_ok(self) -> bool:
        """Whether every step after the apply (those expected to pass) passed: confirm then."""
        return all(step.passed for step in self.steps if step.expect_pass)

    @property
    def ok(self) -> bool:
        """Before leaked, after passed from every vantage point, and the apply was confirmed."""
        return self.confirmed and all(step.as_expected for step in self.steps)

    def to_json(self) -> dict[str, Any]:
        """``harden lab --format json`` (``harden.lab/1``).

        Every step with the prober's own report, its per-port entries summarised as port
        ranges (``port_ranges``): the before step alone lists about 131,000 leaking
        ports, 45 MB one by one.
        """
        return {
            "schema": SCHEMA,
            "manifest": str(self.manifest),
            "backend": self.backend,
            "ok": self.ok,
            "confirmed": self.confirmed,
            "rolled_back": self.rolled_back,
            "not_tested": list(self.not_tested),
            "steps": [
                {
                    "step": s.name,
                    "vantage": s.vantage,
                    "verdict": s.report.get("verdict"),
                    "expected": "pass" if s.expect_pass else "fail",
                    "seconds": round(s.seconds, 2),
                    "dropped": s.dropped,
                    "report": summarised(s.report),
                }
                for s in self.steps
            ],
        }

    def to_junit(self) -> str:
        """JUnit: a testsuite for the lab, a timed testcase per step and one for the confirm.

        A step fails when its verdict is not the one the story expects (the before step
        must FAIL: an unfirewalled host leaks); its message names what the prober saw.
        """
        suites = ET.Element("testsuites", name="harden lab")
        suite = ET.SubElement(suites, "testsuite", name=f"harden lab {self.manifest.name}")
        failures = 0
        for step in self.steps:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"harden.lab.{self.backend}",
                name=f"{step.name} from {step.vantage}",
                time=f"{step.seconds:.3f}",
            )
            if not step.as_expected:
                failures += 1
                verdict = str(step.report.get("verdict", "?")).upper()
                expected = "PASS" if step.expect_pass else "FAIL"
                failure = ET.SubElement(case, "failure", message=f"{verdict}, expected {expected}")
                failure.text = "\n".join(summarize(step) or [conforming(step)])
        confirm = ET.SubElement(
            suite, "testcase", classname=f"harden.lab.{self.backend}", name="confirm", time="0"
        )
        if not self.confirmed:
            failures += 1
            ET.SubElement(confirm, "failure", message="rolled back: the verification failed")
        if self.not_tested:
            out = ET.SubElement(suite, "system-out")
            out.text = "\n".join(f"not tested: {n}" for n in self.not_tested)
        suite.set("tests", str(len(self.steps) + 1))
        suite.set("failures", str(failures))
        suite.set("time", f"{sum(s.seconds for s in self.steps):.3f}")
        ET.indent(suites)
        return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"

    def to_markdown(self) -> str:
        """The steps as a Markdown table (a pull request, a ticket), then the outcome."""
        lines = [
            f"### harden lab: `{self.manifest.name}` ({self.backend})",
            "",
            "| step | from | verdict | expected | time | what the prober saw |",
            "|---|---|---|---|---|---|",
        ]
        for step in self.steps:
            seen = "<br>".join((summarize(step) or [conforming(step)])[:4])
            lines.append(
                f"| {step.name} | {step.vantage} | {str(step.report.get('verdict', '?')).upper()} "
                f"| {'PASS' if step.expect_pass else 'FAIL'} | {step.seconds:.1f}s | {seen} |"
            )
        outcome = "confirmed" if self.confirmed else "rolled back"
        lines += ["", f"**{'PASS' if self.ok else 'FAIL'}**: ruleset {outcome}"]
        lines += [f"- not tested: {n}" for n in self.not_tested]
        return "\n".join(lines) + "\n"

    def to_text(self, width: int = 120) -> str:
        """A table of the steps, what the prober saw, and a one-line outcome."""
        table = Table(title=f"harden lab: {self.manifest.name} ({self.backend})")
        for column in ("step", "from", "verdict", "expected", "time", "what the prober saw"):
            table.add_column(column, overflow="fold")
        for step in self.steps:
            seen = summarize(step) or [conforming(step)]
            proof = two_sided(step)
            if proof:
                seen.append(f"server drop counters: {proof}")
            table.add_row(
                step.name,
                step.vantage,
                step.report["verdict"].upper(),
                "PASS" if step.expect_pass else "FAIL",
                f"{step.seconds:.1f}s",
                "\n".join(seen[:8]),
            )
        buffer = io.StringIO()
        Console(
            file=buffer, width=width, force_terminal=False, color_system=None, markup=False
        ).print(table)
        buffer.write("".join(f"not tested: {n}\n" for n in self.not_tested))
        outcome = "confirmed" if self.confirmed else "rolled back"
        if self.ok:
            last = f"PASS: before leaked, after verified, ruleset {outcome}"
        elif [s.name for s in self.steps if s.expect_pass and not s.passed] == ["regression"]:
            last = f"FAIL: the change takes away what {self.manifest.name} serves; "
            last += f"ruleset {outcome}"
        else:
            last = f"FAIL: the verification after apply did not pass; ruleset {outcome}"
        return buffer.getvalue() + last


Say = Callable[[str], None]  # one line of the lab's progress
SCHEMA = "harden.lab/1"
# What tells a report's port entries apart, but for the port itself.
_ENTRY_KEYS = ("target", "family", "proto", "expected", "observed", "status", "detail", "service")


def summarised(report: dict[str, Any]) -> dict[str, Any]:
    """A verify report with its per-port entries as port ranges (``port_ranges``).

    Entries alike in everything but the port become one: ``{..., "ports": "1-21,23-79",
    "count": N}``, in the order they first appear.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for entry in report.get("ports", ()):
        groups.setdefault(tuple(entry.get(k) for k in _ENTRY_KEYS), []).append(entry["port"])
    ranges = [
        {
            **dict(zip(_ENTRY_KEYS, key, strict=True)),
            "ports": ",".join(str(r) for r in compress(sorted(set(ports)))),
            "count": len(ports),
        }
        for key, ports in groups.items()
    ]
    out = {k: v for k, v in report.items() if k != "ports"}
    out["port_ranges"] = ranges
    return out


def run_lab(
    manifest: Path,
    backend: Backend = defaults.BACKEND,
    *,
    confirm_window: int = defaults.LAB_CONFIRM_WINDOW,
    progress: Say = lambda message: None,
    before: bool = True,
    ports: PortSelection = ALL_PORTS,
    apply_manifest: Path | None = None,
) -> LabResult:
    """Build the lab, run before/apply/after, confirm or roll back, tear everything down.

    ``apply_manifest`` tests a change: the server runs ``manifest``'s services, the
    change is applied and verified as it declares itself (what it adds must answer),
    and what it closes or narrows of ``manifest``'s exposure is a regression step
    (docs/testing.md, "The lab"): a change that forgets SSH is rolled back, one
    that opens a port is confirmed.
    """
    # Absolute: every command of the lab runs in /, not in the caller's directory.
    manifest = manifest.resolve()
    target = apply_manifest.resolve() if apply_manifest is not None else manifest
    served, policy = (build_policy(load_manifest(path)) for path in (manifest, target))
    result = LabResult(manifest=manifest, backend=backend)
    net = LabNet(policy, served=served)  # built on enter
    with tempfile.TemporaryDirectory(prefix="harden-lab-") as tmp, net as lab:
        state = Path(tmp) / "state"
        progress(f"lab: server {lab.server.v4} / {lab.server.v6} in namespace {lab.server.ns.name}")
        result.not_tested += lab.start_services() + _unprobed(policy, lab)
        if policy.egress != "accept":
            result.not_tested += [
                f"egress to {net}: no sink inside it (the lab adds four at most)"
                for net in lab.add_destinations()
            ]
        lab.wait_reachable()
        limits = _ratelimits(lab.server)
        if before:
            progress("before: probing the unfirewalled server from outside")
            result.steps.append(
                _verify(lab, lab.outside, target, "before", False, tmp, limits=limits, ports=ports)
            )
            result.steps += _egress(lab, policy, target, "before", tmp, ports, progress)
        progress(
            f"apply: {backend} ruleset in the server namespace, confirm window {confirm_window}s"
        )
        applied = _with_lab_probers(target, lab, Path(tmp))
        result.applied = _apply(lab, applied, backend, state, confirm_window)
        result.steps += _after(lab, target, backend, tmp, limits, ports, progress)
        result.steps += _egress(lab, policy, target, "after", tmp, ports, progress)
        if apply_manifest is not None:
            result.steps.append(regression_step(served, policy, manifest, target))
        if result.after_ok:
            _harden(lab.server, ["confirm", "--state-dir", str(state)])
            result.confirmed = True
            progress("confirm: verification passed, ruleset confirmed")
        else:
            _harden(lab.server, ["rollback", "--state-dir", str(state)], check=False)
            result.rolled_back = True
            progress("rollback: verification failed, previous ruleset restored")
    return result


def regression_step(old: Policy, new: Policy, old_path: Path, new_path: Path) -> Step:
    """What a change (``lab OLD --apply NEW``) takes away from what OLD serves.

    Closing or narrowing OLD's exposure, inbound or egress, fails; opening and widening
    are the change's additions, which the after steps prove answer. Setting changes
    (ping, closed mode, limits) are listed, not judged. Static, from the exposure diff:
    the after steps have already proved that the kernel does what NEW says, so a port
    the diff closes was observed silent (or refused, for egress).
    """
    start = time.monotonic()
    diff = exposure_diff(old, new, str(old_path), str(new_path))
    regressions = [c.text for c in diff.changes if c.change in ("closes", "narrows")]
    report: dict[str, Any] = {
        "mode": "regression",
        "verdict": "fail" if regressions else "pass",
        "regressions": regressions,
        "additions": [c.text for c in diff.changes if c.change in ("opens", "widens")],
        "settings": [c.text for c in diff.changes if c.change in ("policy", "allows")],
        "exposure": diff.to_json(),
        "ports": [],
        "counts": {"conforming": 0},
    }
    return Step(
        "regression",
        f"{old_path.name} -> {new_path.name}",
        True,
        report,
        1 if regressions else 0,
        time.monotonic() - start,
    )


def _unprobed(policy: Policy, lab: LabNet) -> list[str]:
    """What the lab's hosts cannot stand in for: more source networks, egress destinations."""
    notes = []
    hosts = [h for h in (lab.allowed, *lab.more_allowed) if h is not None]
    mine = [a for h in hosts for a in (h.v4, h.v6) if a is not None]
    for family in (4, 6):
        nets = sorted(
            {n for a in policy.allows for n in a.sources[family] or ()},
            key=lambda n: (int(n.network_address), n.prefixlen),
        )
        missed = [str(n) for n in nets if not any(a in n for a in mine if a.version == n.version)]
        if missed:
            notes.append(
                f"IPv{family} sources: no lab host stands in {len(missed)} of {len(nets)} "
                f"source networks ({', '.join(missed[:4])}{', ...' if len(missed) > 4 else ''}); "
                "they are proven by the rendered rules, not by probes"
            )
    return notes


def _after(
    lab: LabNet,
    manifest: Path,
    backend: Backend,
    tmp: str,
    limits: list[str],
    ports: PortSelection,
    progress: Say,
) -> list[Step]:
    """Verify the hardened server from every vantage point, with the witness."""
    vantages = [("outside", lab.outside)]
    if lab.allowed is not None:
        vantages.append(("allowed source", lab.allowed))
    vantages += [(f"allowed source {n}", h) for n, h in enumerate(lab.more_allowed, start=2)]
    steps = []
    for label, host in vantages:
        progress(f"after: probing from {label} ({host.v4}{', ' + str(host.v6) if host.v6 else ''})")
        counters = _counters(lab.server) if backend == "nftables" else None
        step = _verify(
            lab,
            host,
            manifest,
            "after",
            True,
            tmp,
            label,
            limits=[*limits, "--witness", _witness_command(lab.server)],
            ports=ports,
        )
        if counters is not None:
            now = _counters(lab.server)
            step.dropped = {k: now.get(k, 0) - counters.get(k, 0) for k in now}
        steps.append(step)
    return steps


def _egress(
    lab: LabNet,
    policy: Policy,
    manifest: Path,
    when: str,
    tmp: str,
    ports: PortSelection,
    progress: Say,
) -> list[Step]:
    """The egress proof from the server itself, the outside host as the sink.

    Nothing for a manifest without egress filtering (policy accept). ``when`` is
    "before" (the unfirewalled server lets everything out: expected FAIL) or "after"
    (only the declared egress may leave: must PASS, else the lab rolls back).
    """
    if policy.egress == "accept":
        return []
    sinks: list[Address] = [lab.outside.v4]
    if policy.ipv6 and lab.outside.v6 is not None and lab.server.v6 is not None:
        sinks.append(lab.outside.v6)
    sinks += lab.destinations  # inside the declared destinations (LabNet.add_destinations)
    progress(
        f"egress {when}: the server sends to the outside host as sink "
        f"({', '.join(map(str, sinks))})"
    )
    # {sources} is left for harden verify to fill in with the server's source addresses.
    command = shlex.join(["ip", "netns", "exec", lab.outside.ns.name, *HARDEN, "sink", "--from"])
    args = ["--egress", "--sink-command", f"{command} {{sources}}"]
    for sink in sinks:
        args += ["--sink", str(sink)]
    args += ["--ports", egress_ports(policy, ports)]
    step = _run_verify(
        lab.server, manifest, args, f"egress {when}", when == "after", tmp, "server to sink"
    )
    return [step]


def egress_ports(policy: Policy, ports: PortSelection) -> str:
    """The lab's ``--ports`` for the egress proof.

    'all' and lists like 1-1024 as given; 'declared' (which egress does not know) becomes
    1-1024 plus every declared egress port: a bounded sweep that still covers them.
    """
    if ports.kind != "declared":
        return str(ports)
    declared = [rng for out in policy.outbound for rng in out.ports]
    return ",".join(str(rng) for rng in merge([PortRange(1, 1024), *declared]))


def _harden(
    host: Host, args: Sequence[str], *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = host.ns.run([*HARDEN, *args], check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise EnvironmentProblem(
            f"lab: 'harden {' '.join(args[:1])}' in {host.ns.name} failed "
            f"(exit {proc.returncode}): {one_line(proc.stderr, 300)}"
        )
    return proc


def _with_lab_probers(manifest: Path, lab: LabNet, tmp: Path) -> Path:
    """A copy of ``manifest`` whose ``verify.probers`` also lists the lab's probing hosts."""
    # The loader validate uses (YAML 1.2's core types): PyYAML's own would read
    # "host: no" as false and "10:30" as 630, and the copy would no longer validate.
    data = load_yaml(manifest.read_text(), str(manifest)) or {}
    verify = dict(data.get("verify") or {})
    probers = [str(n) for n in verify.get("probers") or []]
    covered = [ip_network(n, strict=False) for n in probers]
    hosts = [lab.outside, *([lab.allowed] if lab.allowed is not None else []), *lab.more_allowed]
    for host in hosts:
        for address in (host.v4, host.v6, *host.extra):
            if address is None:
                continue
            if not any(address in net for net in covered if net.version == address.version):
                probers.append(f"{address}/{address.max_prefixlen}")
    verify["probers"] = probers
    data["verify"] = verify
    path = tmp / f"lab-{manifest.name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _witness_command(server: Host) -> str:
    """Reads harden's counters in the server namespace, as an SSH command would on a real host."""
    return f"ip netns exec {server.ns.name} {' '.join(HARDEN)} counters --format json"


def _ratelimits(server: Host) -> list[str]:
    """The server's ICMP rate limits: the prober must not assume them (docs/design.md)."""
    v4 = server.ns.run(["cat", "/proc/sys/net/ipv4/icmp_ratelimit"]).stdout.strip()
    v6 = server.ns.run(["cat", "/proc/sys/net/ipv6/icmp/ratelimit"]).stdout.strip()
    return [
        "--icmp-ratelimit-ms",
        str(max(1, int(v4))),
        "--icmp6-ratelimit-ms",
        str(max(1, int(v6))),
    ]


def _counters(server: Host) -> dict[str, int]:
    """Harden's named drop counters in the server namespace (packets)."""
    proc = server.ns.run(["nft", "-j", "list", "counters", "table", "inet", "harden"], check=False)
    if proc.returncode != 0:
        return {}
    out = {}
    for item in json.loads(proc.stdout).get("nftables", []):
        counter = item.get("counter")
        if counter:
            out[counter["name"]] = int(counter["packets"])
    return out


def _apply(
    lab: LabNet, manifest: Path, backend: Backend, state: Path, window: int
) -> dict[str, Any]:
    proc = _harden(
        lab.server,
        [
            "apply",
            str(manifest),
            "--backend",
            backend,
            "--confirm",
            str(window),
            "--state-dir",
            str(state),
            # The lab's own (empty) boot root: boot files a real apply on this machine
            # installed under / are not the lab's to keep in step with its rules.
            "--root",
            str(state.parent / "boot"),
            "--format",
            "json",
        ],
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _verify(
    lab: LabNet,
    host: Host,
    manifest: Path,
    name: str,
    expect_pass: bool,
    tmp: str,
    vantage: str = "outside",
    *,
    limits: list[str],
    ports: PortSelection = ALL_PORTS,
) -> Step:
    targets = [*limits, "--ports", str(ports), "--target", str(lab.server.v4)]
    for address in host.extra:
        targets += ["--source", str(address)]
    if host.v6 is not None and lab.server.v6 is not None:
        targets += ["--target", str(lab.server.v6)]
    return _run_verify(host, manifest, targets, name, expect_pass, tmp, vantage)


def _run_verify(
    host: Host,
    manifest: Path,
    args: list[str],
    name: str,
    expect_pass: bool,
    tmp: str,
    vantage: str,
) -> Step:
    """``harden verify MANIFEST ARGS --format json`` in ``host``'s namespace, as a step.

    PASS, FAIL and (for the egress proof, whose sink may hear nothing) INCONCLUSIVE are
    outcomes; anything else, or no report, is a problem of the lab itself.
    """
    out = Path(tmp) / f"{name}-{vantage}.json".replace(" ", "-")
    start = time.monotonic()
    proc = _harden(
        host, ["verify", str(manifest), *args, "--format", "json", "-o", str(out)], check=False
    )
    seconds = time.monotonic() - start
    if proc.returncode not in (0, 1, 5) or not out.exists():
        raise EnvironmentProblem(
            f"lab: harden verify ({name}) from {vantage} failed (exit {proc.returncode}): "
            f"{one_line(proc.stderr, 300)}"
        )
    report: dict[str, Any] = json.loads(out.read_text())
    return Step(name, vantage, expect_pass, report, proc.returncode, seconds)


def summarize(step: Step) -> list[str]:
    """Deviation counts of one step, e.g. "65532 tcp closed (rst) on 198.19.254.1".

    Egress: "65535 tcp sent (expected blocked) to 198.19.254.2".
    """
    if step.report.get("mode") == "regression":
        return [f"takes away: {text}" for text in step.report["regressions"]]
    egress = step.report.get("mode") == "egress"
    counts: dict[tuple[str, str, str, str], int] = {}
    for entry in step.report.get("ports", []):
        if entry["status"] == "fail":
            if egress:
                detail = f"expected {entry['expected']}"
            elif entry["port"] is None:
                detail = entry["detail"].split(":")[-1].strip()
            else:
                detail = entry["detail"].split(" reveals")[0].removeprefix("leak: ")
            key = (entry["target"], entry["proto"], entry["observed"], detail)
            counts[key] = counts.get(key, 0) + 1
    where = "to" if egress else "on"
    return [
        f"{n} {proto} {observed} ({detail}) {where} {target}"
        for (target, proto, observed, detail), n in sorted(counts.items())
    ]


def conforming(step: Step) -> str:
    """What conformed in a step without deviations, e.g. "2 declared port(s) open, ..."."""
    if step.report.get("mode") == "regression":
        added = step.report["additions"]
        return f"nothing of the old exposure taken away; {len(added)} addition(s)" + "".join(
            f"; adds: {text}" for text in added[:3]
        )
    ok = sum(1 for p in step.report["ports"] if p["status"] == "ok")
    quiet = step.report["counts"]["conforming"]
    if step.report.get("mode") == "egress":
        return f"{ok} allowed port(s) arrived, {quiet} blocked port(s) refused"
    return f"{ok} declared port(s) open, {quiet} closed port(s) silent"


def two_sided(step: Step) -> str | None:
    """Probes sent to closed ports vs packets the server's drop counters saw."""
    if step.dropped is None:
        return None
    parts = []
    for key, sent in sorted(step.report.get("sent", {}).items()):
        family, proto, expect = key.split("/")
        if expect != "silent":
            continue
        seen = step.dropped.get(f"closed_{proto}_v{family}", 0)
        parts.append(f"IPv{family} {proto}: sent {sent}, dropped {seen}")
    return "; ".join(parts)
