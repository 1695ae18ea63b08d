"""The public Python API, for tools that import harden instead of running the CLI.

Every function returns plain data (the same shapes as ``--format json``) and raises
``HardenError`` (with ``exit_status``) on failure; nothing prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload

from harden import apply as _apply
from harden import defaults
from harden.apply.results import Validation
from harden.backends import render as _render
from harden.errors import ExitStatus, HardenError, OptionError
from harden.files import load_manifest, port_service_names
from harden.manifest.model import Manifest
from harden.outputs import FORMATS
from harden.outputs import write as write_report
from harden.outputs.jsondoc import verify_json
from harden.policy.model import build_policy
from harden.request import ApplyRequest, DiffRequest, EgressRequest, VerifyRequest, apply_request
from harden.request import backend as request_backend
from harden.types import Backend
from harden.verify.options import PortSelection, Probing
from harden.verify.report import Report

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
    request = DiffRequest.parse(path, backend_name=backend)
    return _render(build_policy(load(request.manifest)), request.backend)


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
    request = ApplyRequest.parse(
        path,
        backend,
        state_dir=state_dir,
        confirm=confirm,
        force=force,
        persist=persist,
        root=root,
    )
    result = apply_request(request)
    return result.to_json()


def diff(path: str | Path, backend: Backend = defaults.BACKEND) -> dict[str, Any]:
    """``{"drift": bool, "diff": str}``: the live rules against what the manifest renders."""
    request = DiffRequest.parse(path, backend_name=backend)
    return _apply.diff(request.manifest, request.backend).to_json()


def status(state_dir: str | Path = defaults.STATE_DIR, *, root: str | Path = "/") -> dict[str, Any]:
    """What harden has applied (as ``harden status --format json``); boot files under ``root``."""
    return _apply.status(Path(state_dir), Path(root)).to_json()


def remove(state_dir: str | Path = defaults.STATE_DIR, *, root: str | Path = "/") -> dict[str, Any]:
    """Take harden's rules and boot files away (as ``harden remove --format json``)."""
    return _apply.remove(Path(state_dir), Path(root)).to_json()


@overload
def verify(
    path: str | Path,
    targets: list[str],
    *,
    ports: str = ...,
    wait: float = ...,
    retries: int = ...,
    icmp_ratelimit_ms: int = ...,
    icmp6_ratelimit_ms: int = ...,
    sources: tuple[str, ...] = ...,
    seen_as: tuple[str, ...] = ...,
    witness: str | None = ...,
    format: Literal["json"] = ...,
) -> dict[str, Any]: ...


@overload
def verify(
    path: str | Path,
    targets: list[str],
    *,
    ports: str = ...,
    wait: float = ...,
    retries: int = ...,
    icmp_ratelimit_ms: int = ...,
    icmp6_ratelimit_ms: int = ...,
    sources: tuple[str, ...] = ...,
    seen_as: tuple[str, ...] = ...,
    witness: str | None = ...,
    format: str,
) -> dict[str, Any] | str: ...


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
    format: str = "json",
) -> dict[str, Any] | str:
    """Probe ``targets`` against the manifest (as ``harden verify --format FORMAT``).

    ``format="json"`` (the default) returns the report as data; any other name of
    ``harden.outputs.FORMATS`` returns the text the CLI would write.
    """
    from harden.verify.sweep import run_verify

    _format(format)
    probing = Probing.parse(
        wait=wait,
        retries=retries,
        icmp_ratelimit_ms=icmp_ratelimit_ms,
        icmp6_ratelimit_ms=icmp6_ratelimit_ms,
        sources=sources,
        seen_as=seen_as,
        witness=witness,
    )
    request = VerifyRequest.parse(path, targets, ports=ports, probing=probing)
    assert request.manifest is not None
    hosts = [(build_policy(load(request.manifest)), list(request.targets))]
    return _written(run_verify(hosts, request.ports, request.probing), format)


def verify_egress(
    path: str | Path,
    sinks: list[str],
    sink_command: str,
    *,
    ports: str = "all",
    format: str = "json",
) -> dict[str, Any] | str:
    """Check this host's egress against the manifest with a sink (``harden verify --egress``)."""
    from harden.verify.egress.probe import run_egress
    from harden.verify.egress.verdict import egress_report

    _format(format)
    request = EgressRequest.parse(path, sinks, sink_command, ports=ports)
    policy = build_policy(load(request.manifest))
    run = run_egress(policy, list(request.sinks), request.sink_command, request.ports)
    return _written(egress_report(policy, run), format)


def _format(name: str) -> None:
    if name not in FORMATS:
        raise OptionError("format", f"{name!r} is not one of {', '.join(FORMATS)}")


def _written(report: Report, name: str) -> dict[str, Any] | str:
    """The report as data (json) or as the text of another format."""
    if name == "json":
        return dict(verify_json(report))
    services = port_service_names() if FORMATS[name].services else None
    return write_report(report, name, services)


def lab(
    path: str | Path,
    backend: Backend = defaults.BACKEND,
    *,
    confirm_window: int = defaults.LAB_CONFIRM_WINDOW,
    ports: str = "all",
    apply_manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Run the namespace lab (as ``harden lab --format json``); needs root.

    ``apply_manifest`` tests a change to ``path`` (``harden lab PATH --apply NEW``).
    """
    from harden.lab.scenario import run_lab

    return run_lab(
        Path(path),
        request_backend(backend),
        confirm_window=confirm_window,
        ports=PortSelection.parse(ports),
        apply_manifest=Path(apply_manifest) if apply_manifest is not None else None,
    ).to_json()
