"""The public Python API, for tools that import harden instead of running the CLI.

Every function returns plain data (the same shapes as ``--format json``) and raises
``HardenError`` (with ``exit_status``) on failure; nothing prints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harden import apply as _apply
from harden.apply.state import DEFAULT_STATE_DIR
from harden.core.manifest import Manifest, load_manifest
from harden.core.policy import build_policy
from harden.core.render import Backend
from harden.core.render import render as _render
from harden.errors import ExitStatus, HardenError

__all__ = ["ExitStatus", "HardenError", "apply", "diff", "load", "render", "verify"]


def load(path: str | Path) -> Manifest:
    """Read and validate a manifest."""
    return load_manifest(Path(path))


def render(path: str | Path, backend: Backend = "nftables") -> dict[str, str]:
    """The ruleset files a manifest renders to: file name -> text."""
    return _render(build_policy(load(path)), backend)


def apply(
    path: str | Path,
    backend: Backend = "nftables",
    *,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    confirm: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Apply a manifest (see ``harden apply``); ``result["changed"]`` says if anything did."""
    result = _apply.apply(
        Path(path), backend, state_dir=Path(state_dir), confirm=confirm, force=force
    )
    return asdict(result)


def diff(path: str | Path, backend: Backend = "nftables") -> dict[str, Any]:
    """``{"drift": bool, "diff": str}``: the live rules against what the manifest renders."""
    drift, text = _apply.diff(Path(path), backend)
    return {"drift": drift, "diff": text}


def verify(path: str | Path, targets: list[str], **options: Any) -> dict[str, Any]:
    """Probe ``targets`` against the manifest (as ``harden verify --format json``)."""
    from harden.core.report import to_json
    from harden.verify.run import run_verify

    addresses = [ipaddress.ip_address(t) for t in targets]
    report = run_verify([(build_policy(load(path)), addresses)], **options)
    return to_json(report)
