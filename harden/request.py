"""The requests: verify's, apply's and diff's options, parsed once for the CLI and the API.

Both front ends hand over what the user typed (strings, numbers) and get a frozen,
valid request back, or an OptionError naming the option (``ports``, ``target``...); the
CLI shows that as its flag, the API raises it. Nothing below the requests parses an
option again. docs/contributing.md, "Adding an option".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harden import defaults
from harden.apply.results import ApplyResult
from harden.backends import names as backend_names
from harden.errors import OptionConflict, OptionError
from harden.manifest.ports import PortRange, check_port
from harden.types import Address, Proto
from harden.verify.options import PortSelection, Probing, address, addresses, within

CONFIRM_RANGE = (1, 3600)  # apply --confirm, seconds


@dataclass(frozen=True)
class VerifyRequest:
    """``harden verify``: one MANIFEST with its targets, or an inventory of hosts."""

    manifest: Path | None
    targets: tuple[Address, ...]
    inventory: Path | None = None
    ports: PortSelection = field(default_factory=lambda: PortSelection("all"))
    probing: Probing = field(default_factory=Probing)

    @classmethod
    def parse(
        cls,
        manifest: str | Path | None,
        targets: Sequence[str] = (),
        *,
        inventory: str | Path | None = None,
        ports: str = "all",
        probing: Probing | None = None,
    ) -> VerifyRequest:
        """The request, or OptionError (OptionConflict for options that do not go together)."""
        probing = probing or Probing()
        if (manifest is None) == (inventory is None):
            raise OptionConflict("target", "give a MANIFEST with --target, or --inventory FILE")
        if manifest is not None and not targets:
            raise OptionConflict("target", "MANIFEST needs at least one --target address")
        if inventory is not None and targets:
            raise OptionConflict("target", "--target and --inventory exclude each other")
        if inventory is not None and probing.witness:
            raise OptionConflict(
                "witness", "--witness reads one host's counters: use it with a MANIFEST"
            )
        return cls(
            manifest=Path(manifest) if manifest is not None else None,
            targets=addresses(targets, "target"),
            inventory=Path(inventory) if inventory is not None else None,
            ports=PortSelection.parse(ports),
            probing=probing,
        )


@dataclass(frozen=True)
class EgressRequest:
    """``harden verify --egress``: this host's output path against a sink."""

    manifest: Path
    sinks: tuple[Address, ...]
    sink_command: str
    ports: tuple[PortRange, ...]

    @classmethod
    def parse(
        cls,
        manifest: str | Path | None,
        sinks: Sequence[str],
        sink_command: str | None,
        *,
        ports: str = "all",
        targets: Sequence[str] = (),
        inventory: str | Path | None = None,
    ) -> EgressRequest:
        """The request, or OptionError (OptionConflict for options that do not go together)."""
        if manifest is None or not sinks or not sink_command:
            raise OptionConflict(
                "egress", "--egress needs MANIFEST (this host's), --sink and --sink-command"
            )
        if targets or inventory:
            raise OptionConflict(
                "egress", "--egress probes --sink addresses: not --target or --inventory"
            )
        return cls(
            manifest=Path(manifest),
            sinks=addresses(sinks, "sink"),
            sink_command=sink_command,
            ports=PortSelection.parse(ports).egress_ranges(),
        )


def backend(name: str) -> str:
    """A registered backend's name, or an OptionError listing them."""
    if name not in backend_names():
        raise OptionError("backend", f"{name!r} is not one of {', '.join(backend_names())}")
    return name


@dataclass(frozen=True)
class ApplyRequest:
    """``harden apply``: a manifest, a backend, a confirm window, where the boot files go."""

    manifest: Path
    backend: str = defaults.BACKEND
    state_dir: Path = defaults.STATE_DIR
    confirm: int | None = None
    force: bool = False
    persist: bool | None = None
    root: Path = Path("/")

    @classmethod
    def parse(
        cls,
        manifest: str | Path,
        backend_name: str = defaults.BACKEND,
        *,
        state_dir: str | Path = defaults.STATE_DIR,
        confirm: int | None = None,
        force: bool = False,
        persist: bool | None = None,
        root: str | Path = "/",
    ) -> ApplyRequest:
        """The request, or OptionError naming the bad option."""
        if confirm is not None:
            within(confirm, CONFIRM_RANGE, "confirm")
        return cls(
            Path(manifest),
            backend(backend_name),
            Path(state_dir),
            confirm,
            force,
            persist,
            Path(root),
        )


def apply_request(request: ApplyRequest) -> ApplyResult:
    """Carry out an apply request (harden.apply.apply with its options)."""
    from harden.apply import apply

    return apply(
        request.manifest,
        request.backend,
        state_dir=request.state_dir,
        confirm=request.confirm,
        force=request.force,
        persist=request.persist,
        root=request.root,
    )


@dataclass(frozen=True)
class DiffRequest:
    """``harden diff``: MANIFEST against the live rules, or OLD against NEW (no kernel)."""

    manifest: Path
    new: Path | None = None
    backend: str = defaults.BACKEND

    @classmethod
    def parse(
        cls,
        manifest: str | Path,
        new: str | Path | None = None,
        backend_name: str = defaults.BACKEND,
    ) -> DiffRequest:
        """The request, or OptionError naming the bad option."""
        return cls(Path(manifest), Path(new) if new is not None else None, backend(backend_name))


@dataclass(frozen=True)
class ExplainRequest:
    """``harden explain PROTO/PORT``: one new packet, arriving (input) or sent (output)."""

    hook: str
    proto: Proto
    port: int
    peer: Address
    sport: int
    iface: str

    @classmethod
    def parse(
        cls,
        what: str,
        *,
        source: str | None = None,
        destination: str | None = None,
        sport: int = 40000,
        iface: str = "eth0",
        hook: str = "input",
    ) -> ExplainRequest:
        """The packet, or OptionError naming the bad option."""
        proto, _, port_text = what.partition("/")
        if proto not in ("tcp", "udp") or not port_text:
            raise OptionError("what", f"{what!r} is not PROTO/PORT (tcp/22, udp/53)")
        try:
            port = check_port(int(port_text)) if port_text.isdigit() else -1
        except ValueError as exc:
            raise OptionError("what", str(exc)) from None
        if port < 0:
            raise OptionError("what", f"{port_text!r} is not a port number")
        within(sport, (1, 65535), "sport")
        peer_text, option = (source, "from") if hook == "input" else (destination, "to")
        if peer_text is None:
            raise OptionConflict(option, f"--hook {hook} needs --{option} ADDRESS")
        return cls(hook, proto, port, address(peer_text, option), sport, iface)  # type: ignore[arg-type]
