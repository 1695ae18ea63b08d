"""The public Python API, for tools that import harden instead of running the CLI.

Every function returns plain data (the same shapes as ``--format json``) and raises
``HardenError`` (with ``exit_status``) on failure; nothing prints.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from harden import apply as _apply
from harden import defaults
from harden.core.manifest import Manifest
from harden.core.policy import build_policy
from harden.core.render import render as _render
from harden.core.results import Validation
from harden.core.types import Backend
from harden.errors import ExitStatus, HardenError, OptionError
from harden.files import load_manifest

__all__ = [
    "ExitStatus",
    "HardenError",
    "apply",
    "diff",
    "lab",
    "load",
    "remove",
    "render",
    "status",
    "validate",
    "verify",
    "verify_egress",
]


def load(path: str | Path) -> Manifest:
    """Read and validate a manifest."""
    return load_manifest(Path(path))


def validate(path: str | Path) -> dict[str, Any]:
    """What a manifest allows (one entry of ``harden validate --format json``)."""
    manifest = load(path)
    return Validation.of(str(path), manifest, build_policy(manifest)).to_json()


def render(path: str | Path, backend: Backend = defaults.BACKEND) -> dict[str, str]:
    """The ruleset files a manifest renders to: file name -> text."""
    return _render(build_policy(load(path)), backend)


def apply(
    path: str | Path,
    backend: Backend = defaults.BACKEND,
    *,
    state_dir: str | Path = defaults.STATE_DIR,
    confirm: int | None = None,
    force: bool = False,
    persist: bool | None = None,
    root: str | Path = "/",
) -> dict[str, Any]:
    """Apply a manifest (see ``harden apply``); ``result["changed"]`` says if anything did.

    ``persist``: True installs the ruleset for boot under ``root`` (on confirm, with
    ``confirm``), False removes harden's boot files there, None keeps them in step.
    """
    result = _apply.apply(
        Path(path),
        backend,
        state_dir=Path(state_dir),
        confirm=confirm,
        force=force,
        persist=persist,
        root=Path(root),
    )
    return result.to_json()


def diff(path: str | Path, backend: Backend = defaults.BACKEND) -> dict[str, Any]:
    """``{"drift": bool, "diff": str}``: the live rules against what the manifest renders."""
    return _apply.diff(Path(path), backend).to_json()


def status(state_dir: str | Path = defaults.STATE_DIR, *, root: str | Path = "/") -> dict[str, Any]:
    """What harden has applied (as ``harden status --format json``); boot files under ``root``."""
    return _apply.status(Path(state_dir), Path(root)).to_json()


def remove(state_dir: str | Path = defaults.STATE_DIR, *, root: str | Path = "/") -> dict[str, Any]:
    """Take harden's rules and boot files away (as ``harden remove --format json``)."""
    return _apply.remove(Path(state_dir), Path(root)).to_json()


def verify(
    path: str | Path,
    targets: list[str],
    *,
    ports: str = "all",
    wait: float = defaults.WAIT,
    retries: int = defaults.RETRIES,
    icmp_ratelimit_ms: int = defaults.ICMP_RATELIMIT_MS,
    icmp6_ratelimit_ms: int = defaults.ICMP_RATELIMIT_MS,
    sources: tuple[str, ...] = (),
    seen_as: tuple[str, ...] = (),
    witness: str | None = None,
) -> dict[str, Any]:
    """Probe ``targets`` against the manifest (as ``harden verify --format json``)."""
    from harden.verify.sweep import run_verify

    seen: dict[int, ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        a.version: a for a in map(ipaddress.ip_address, seen_as)
    }
    if len(seen) != len(seen_as):
        raise OptionError("seen_as", "one address per family at most")
    report = run_verify(
        [(build_policy(load(path)), [ipaddress.ip_address(t) for t in targets])],
        ports=ports,
        wait=wait,
        retries=retries,
        ratelimit_ms={4: icmp_ratelimit_ms, 6: icmp6_ratelimit_ms},
        extra_sources=tuple(ipaddress.ip_address(s) for s in sources),
        seen_as=seen,
        witness=witness,
    )
    return report.to_json()


def verify_egress(
    path: str | Path, sinks: list[str], sink_command: str, *, ports: str = "all"
) -> dict[str, Any]:
    """Check this host's egress against the manifest with a sink (``harden verify --egress``)."""
    from harden.core.egress import egress_report
    from harden.verify.egress import parse_ports, run_egress

    policy = build_policy(load(path))
    addresses = [ipaddress.ip_address(s) for s in sinks]
    run = run_egress(policy, addresses, sink_command, parse_ports(ports))
    return egress_report(policy, run).to_json()


def lab(
    path: str | Path,
    backend: Backend = defaults.BACKEND,
    *,
    confirm_window: int = defaults.LAB_CONFIRM_WINDOW,
    ports: str = "all",
    apply_manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Run the namespace lab (as ``harden lab --format json``); needs root."""
    from harden.lab.scenario import run_lab

    return run_lab(
        Path(path),
        backend,
        confirm_window=confirm_window,
        ports=ports,
        apply_manifest=Path(apply_manifest) if apply_manifest is not None else None,
    ).to_json()
