"""The command line: the only module that prints, reads the environment and exits."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click

from harden import __version__, defaults
from harden.apply.results import Validation, validation_document
from harden.backends import REGISTRY, render
from harden.backends import names as backend_names
from harden.errors import (
    EnvironmentProblem,
    ExitStatus,
    HardenError,
    Interrupted,
    ManifestError,
    OptionConflict,
    OptionError,
)
from harden.files import (
    check_private_dir,
    check_private_file,
    load_manifest,
    port_service_names,
    write_atomic,
)
from harden.manifest.model import json_schema
from harden.outputs import FORMATS
from harden.outputs import write as write_report
from harden.outputs.metrics import verify_down_metrics
from harden.policy.model import Policy, build_policy, family_of
from harden.request import (
    CONFIRM_RANGE,
    ApplyRequest,
    EgressRequest,
    VerifyRequest,
    apply_request,
)
from harden.text import one_line, printable
from harden.types import Address, Backend
from harden.verify.options import (
    RATELIMIT_RANGE,
    RETRIES_RANGE,
    WAIT_RANGE,
    PortSelection,
    Probing,
)
from harden.verify.report import Report

EPILOG = """\b
Exit codes:
  0  ok
  1  verification failed / drift found
  2  usage or manifest error
  3  apply failed (previous state restored)
  4  probe or environment error (retryable)
  5  verify inconclusive: a target never showed it exists
  70 internal error: a bug in harden (not retryable)

\b
Shell completion: eval "$(_HARDEN_COMPLETE=bash_source harden)" in ~/.bashrc
(zsh_source for zsh, fish_source for fish). Man pages: docs/man (harden.1).
"""

MANIFEST = click.Path(path_type=Path, dir_okay=False)


class BackendChoice(click.Choice[str]):
    """The registered backends, read each time (a plug-in registered later is a choice too)."""

    def __init__(self) -> None:
        super().__init__(backend_names())

    @property
    def choices(self) -> tuple[str, ...]:
        """The backends registered now."""
        return backend_names()

    @choices.setter
    def choices(self, _value: object) -> None:
        """Click sets the choices once; the registry stays the source."""


def _version(ctx: click.Context) -> None:
    """Print the versions of harden, nft, iptables (nf_tables or legacy) and libnftables."""
    from harden.apply.hostinfo import tool_versions

    echo(f"harden {__version__}")
    for line in tool_versions():
        echo(f"  {line}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _version(ctx) if value else None,
    help="Show harden's version and those of the backends it would use here, and exit.",
)
def cli(debug: bool) -> None:
    """Generate a default-DROP firewall from a service manifest, apply it, verify it.

    A manifest (YAML) declares the ports the host serves and from where;
    everything else is closed. See `harden schema` for every key.
    """


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=MANIFEST)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def validate(manifests: Sequence[Path], fmt: str) -> None:
    """Check MANIFESTS and summarise what each one allows.

    Every manifest is checked and reported, the bad ones with their file and field; exit
    2 if any is bad. JSON: {"schema": "harden.validate/1", "valid", "manifests": [...]},
    one entry per manifest in order, a bad one {"manifest", "valid": false, "field",
    "error"}.
    """
    from harden.apply.hostinfo import container_bridges
    from harden.policy.containers import bridge_warnings

    entries: list[dict[str, Any]] = []
    bad = 0
    bridges = container_bridges()  # this host's: a manifest is usually checked where it runs
    for path in manifests:
        try:
            manifest = load_manifest(path)
            policy = build_policy(manifest)
            warnings = bridge_warnings(policy, bridges)
            result = Validation.of(str(path), manifest, policy, warnings)
        except ManifestError as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            bad += 1
            entries.append(
                {"manifest": str(path), "valid": False, "field": exc.field, "error": exc.message}
            )
            if fmt != "json":
                echo(f"harden: error: {exc}", err=True)
            continue
        entries.append(result.to_json())
        if fmt != "json":
            echo(result.to_text())
    if fmt == "json":
        echo(json.dumps(validation_document(entries), indent=2))
    if bad:
        if len(manifests) > 1 and fmt != "json":
            echo(f"harden: {bad} of {len(manifests)} manifests are not valid", err=True)
        raise click.exceptions.Exit(ExitStatus.USAGE)


@cli.command(name="render")
@click.argument("manifest", type=MANIFEST)
@click.option(
    "--backend",
    type=BackendChoice(),
    default=defaults.BACKEND,
    show_default=True,
    help="; ".join(f"{s.name}: {s.summary}" for s in REGISTRY.values()) + ".",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the files into this directory instead of printing them.",
)
def render_cmd(manifest: Path, backend: Backend, output: Path | None) -> None:
    """Print (or write) the ruleset MANIFEST renders to. Touches no firewall."""
    files = render(build_policy(load_manifest(manifest)), backend)
    if output is None:
        for name, text in files.items():
            if len(files) > 1:
                echo(f"# ==> {name} <==")
            echo(text, nl=False)
        return
    output.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(output / name, text, mode=0o644)
        echo(f"wrote {output / name}", err=True)


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema."""
    echo(json.dumps(json_schema(), indent=2))


STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=defaults.STATE_DIR,
    show_default=True,
    envvar="HARDEN_STATE_DIR",
    help="Where the snapshot and the pending confirmation live.",
)
FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
# verify's options that say how to probe, by name (as Probing.parse takes them).
PROBING_OPTIONS = (
    "wait",
    "retries",
    "icmp_ratelimit_ms",
    "icmp6_ratelimit_ms",
    "sources",
    "seen_as",
    "witness",
)


def root_option(text: str) -> Callable[[F], F]:
    """``--root``: the prefix of boot files (apply --persist, status, remove)."""
    return click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("/"),
        show_default=True,
        help=text,
    )


BACKEND = click.option(
    "--backend", type=BackendChoice(), default=defaults.BACKEND, show_default=True
)


def echo(message: str = "", *, nl: bool = True, err: bool = False) -> None:
    """click.echo, with control characters and escape sequences escaped (text.printable)."""
    click.echo(printable(message), nl=nl, err=err)


def _render(fmt: str, data: dict[str, Any], text: str) -> str:
    return (json.dumps(data, indent=2) if fmt == "json" else text).rstrip("\n") + "\n"


def _emit(fmt: str, data: dict[str, Any], text: str) -> None:
    echo(_render(fmt, data, text), nl=False)


@contextmanager
def _metrics_when_down(fmt: str, output: Path | None, down: Callable[[int], str]) -> Iterator[None]:
    """With --format prometheus -o FILE, a run that stops on an error rewrites FILE too.

    ``down(exit status)`` gives its metrics (``*_up 0``, no success): the last good run's
    figures must never outlive a run that could not judge (docs/design.md, "Metrics that
    fail loudly").
    """
    try:
        yield
    except click.exceptions.Exit:
        raise
    except BaseException as exc:
        if fmt == "prometheus" and output is not None:
            status: int = ExitStatus.INTERNAL
            if isinstance(exc, HardenError):
                status = exc.exit_status
            elif isinstance(exc, click.ClickException):
                status = ExitStatus.USAGE
            elif isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
                status = 130
            with suppress(Exception):  # the error itself is what the operator must see
                write_atomic(output, down(status), mode=0o644)
        raise


@contextmanager
def _interruptible() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP unwind the program as Ctrl-C does (errors.Interrupted).

    A cancelled or timed-out CI job sends SIGTERM, a closed terminal SIGHUP: the lab then
    removes its namespaces, their processes and its temp directory on the way out.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _write(output: Path | None, text: str) -> None:
    """To ``output`` atomically (a collector never reads half a file), else to stdout."""
    if output is None:
        echo(text, nl=False)
    else:
        write_atomic(output, printable(text), mode=0o644)


@cli.command(name="apply")
@click.argument("manifest", type=MANIFEST)
@BACKEND
@click.option(
    "--confirm",
    "confirm_window",
    type=click.IntRange(*CONFIRM_RANGE),
    default=None,
    help="Roll back after this many seconds unless 'harden confirm' runs.",
)
@click.option(
    "--force", is_flag=True, help="Apply even if it would lock out the current SSH session or sshd."
)
@click.option(
    "--persist/--no-persist",
    default=None,
    help="Install the ruleset for boot (on confirm, if --confirm is given); --no-persist "
    "removes harden's boot files. Neither: boot files harden installed before are kept in "
    "step with what is applied, so a reboot loads what is live.",
)
@root_option("Prefix of the boot files (for tests and images).")
@STATE_DIR
@FORMAT
def apply_cmd(
    manifest: Path,
    backend: Backend,
    confirm_window: int | None,
    force: bool,
    persist: bool | None,
    root: Path,
    state_dir: Path,
    fmt: str,
) -> None:
    """Load MANIFEST's ruleset atomically, touching only harden's own table or chains.

    Checks first, snapshots harden's current rules, then loads in one transaction;
    a failed load changes nothing (exit 3). With --confirm N a detached watchdog
    restores the snapshot after N seconds unless 'harden confirm' runs. Applying an
    unchanged manifest changes nothing and says so (JSON: "changed": false).
    """
    request = _request(
        lambda: ApplyRequest.parse(
            manifest,
            backend,
            state_dir=state_dir,
            confirm=confirm_window,
            force=force,
            persist=persist,
            root=root,
        )
    )
    result = apply_request(request)
    _emit(fmt, result.to_json(), result.to_text())


@cli.command()
@STATE_DIR
def confirm(state_dir: Path) -> None:
    """Keep the ruleset of the last 'apply --confirm': cancel its rollback."""
    from harden.apply import confirm as do_confirm

    echo(do_confirm(state_dir))


@cli.command()
@click.option(
    "--manifest",
    type=MANIFEST,
    help="Compare with this manifest: exit 1 on a static leak or a declared service "
    "blocked, 5 if a rule cannot be read (it may change any row) or only cells the model "
    "cannot decide stand in the way.",
)
@click.option(
    "--hook",
    "hooks",
    type=click.Choice(["input", "output"]),
    multiple=True,
    help="The hooks to analyse (repeatable; default: both).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
def analyze(manifest: Path | None, hooks: tuple[str, ...], fmt: str) -> None:
    """Read this host's whole live ruleset and show what a new packet meets.

    Every table nftables holds (ufw's, firewalld's, Docker's, kube-proxy's and
    harden's alike), every base chain in hook and priority order: one row per set of
    packets (protocol, destination port, source port, peer address, interface) that
    every rule treats alike and that is not a plain drop, with the rules that decide.
    A rule keyed on what a probe never sends (a source port, a uid) shows here. An
    expression the model cannot read leaves its rows unknown, with the reason; never a
    guess. Run on the host, as root. See docs/design.md, "Reading the live ruleset".
    """
    from harden.analysis.collect import analyze as run

    policy = build_policy(load_manifest(manifest)) if manifest is not None else None
    # A line per family and protocol on a terminal: a large allowlist takes a while.
    say = (
        (lambda what, cells: echo(f"» {what}: {cells} cells", err=True))
        if sys.stderr.isatty()
        else (lambda what, cells: None)
    )
    result = run(hooks or ("input", "output"), policy, str(manifest) if manifest else None, say)
    if fmt == "markdown":
        echo(result.to_markdown(), nl=False)
    elif fmt == "json":
        _emit(fmt, result.to_json(), "")  # never the text: a large matrix takes a while
    else:
        _emit(fmt, {}, result.to_text())
    raise click.exceptions.Exit(result.exit_status)


@cli.command()
@click.argument("what", metavar="PROTO/PORT")
@click.option("--from", "source", metavar="ADDR", help="input: the packet's source address.")
@click.option("--to", "destination", metavar="ADDR", help="output: its destination address.")
@click.option("--sport", type=int, default=40000, show_default=True, help="Its source port.")
@click.option(
    "--iface",
    default="eth0",
    show_default=True,
    help="The interface it arrives on (input) or leaves by (output).",
)
@click.option("--hook", type=click.Choice(["input", "output"]), default="input", show_default=True)
@FORMAT
def explain(
    what: str,
    source: str | None,
    destination: str | None,
    sport: int,
    iface: str,
    hook: str,
    fmt: str,
) -> None:
    """Show one new packet's way through the live ruleset: why is this port open or closed.

    Every base chain on its hooks in priority order, the rules that decided (table,
    chain, handle, text) and the verdict: accept, drop, reject, or unknown with the
    reason. Run on the host, as root. See docs/design.md, "Reading the live ruleset".
    """
    from harden.analysis.collect import explain as run
    from harden.analysis.engine import Packet
    from harden.request import ExplainRequest

    request = _request(
        lambda: ExplainRequest.parse(
            what, source=source, destination=destination, sport=sport, iface=iface, hook=hook
        )
    )
    packet = Packet(
        hook, family_of(request.peer), request.proto, request.port, sport, request.peer, iface
    )
    result = run(packet)
    _emit(fmt, result.to_json(), result.to_text())


@cli.command()
@STATE_DIR
def rollback(state_dir: Path) -> None:
    """Restore harden's rules as they were before the last apply, now."""
    from harden.apply import rollback as do_rollback

    echo(do_rollback(state_dir))


@cli.command()
@FORMAT
def counters(fmt: str) -> None:
    """Print harden's named counters on this host (for 'harden verify --witness').

    closed_* count what reached the closed path; witness_in_* / witness_closed_* /
    witness_passed_* (with verify.probers in the manifest) count the probers' new
    connections as they arrive, those harden's closed path dropped, and those every
    firewall let through. Both backends are read. Also printed: an identity of
    harden's table (a re-apply changes it), this host's ICMP error limits, which
    verify then uses instead of assumed ones, this host's addresses: verify
    credits the counts only to targets among them, and (JSON) the live ruleset, which
    verify judges against its manifest as 'harden analyze --manifest' would.
    """
    from harden.apply.counters import read_counters

    result = read_counters()
    _emit(fmt, result.to_json(), result.to_text())


@cli.command()
@STATE_DIR
def reset(state_dir: Path) -> None:
    """Move harden's state files aside (for a corrupt record); the live rules stay as they are.

    After a reset, 'harden status' shows nothing applied and 'harden rollback' has
    nothing to restore; 'harden diff MANIFEST' still compares the live rules, and the
    next 'harden apply' records them again.
    """
    from harden.apply import reset as do_reset

    echo(do_reset(state_dir))


@cli.command()
@root_option("Where the boot files are (as given to apply --persist --root).")
@STATE_DIR
@FORMAT
def remove(root: Path, state_dir: Path, fmt: str) -> None:
    """Take harden away: its rules (both backends) and its boot files.

    Other firewalls (ufw, Docker's, a hand-written table) stay exactly as they are.
    Removing cannot lock you out: harden only ever closes what others leave open, so
    what it takes away only opens. 'harden status' then shows nothing applied.
    """
    from harden.apply import remove as do_remove

    result = do_remove(state_dir, root)
    _emit(fmt, result.to_json(), result.to_text())


@cli.command(name="diff")
@click.argument("manifest", type=MANIFEST)
@click.argument("new", type=MANIFEST, required=False)
@BACKEND
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown", "prometheus"]),
    default="text",
    show_default=True,
    help="markdown (a pull-request comment) with OLD NEW only; prometheus (the harden_drift "
    "metric, for node_exporter's textfile collector) with one MANIFEST.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the result here (atomically) instead of standard output.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME",
    help="With OLD NEW: the names to show for them (give it twice, OLD's first), e.g. "
    "the repository paths of manifests a CI job checked out into temp directories.",
)
@click.pass_context
def diff_cmd(
    ctx: click.Context,
    manifest: Path,
    new: Path | None,
    backend: Backend,
    fmt: str,
    output: Path | None,
    labels: tuple[str, ...],
) -> None:
    """Compare the live rules with what MANIFEST renders: exit 0 same, 1 drift.

    The whole live ruleset (every table) is judged too, as 'harden analyze --manifest'
    judges it: an accept the manifest does not declare is drift (LEAK), whatever it is
    keyed on; a declared port some rule drops is said (BLOCKED).

    With two manifests, 'harden diff OLD NEW' touches no firewall: it prints what
    NEW opens, widens, narrows and closes compared with OLD (per protocol, port,
    address family and source) and the policy changes that alter exposure; exit 0
    no exposure change, 1 change. Reordering or renaming services changes nothing.
    """
    if new is None:
        if labels:
            raise click.UsageError("--label names OLD and NEW: give two manifests", ctx=ctx)
        _drift(ctx, manifest, backend, fmt, output)
    if len(labels) not in (0, 2):
        raise click.UsageError("--label: give it twice, OLD's name then NEW's", ctx=ctx)
    _exposure(ctx, manifest, new, fmt, output, labels or (str(manifest), str(new)))


def _drift(
    ctx: click.Context, manifest: Path, backend: Backend, fmt: str, out: Path | None
) -> NoReturn:
    """The live rules against what MANIFEST renders (diff MANIFEST)."""
    from harden.apply import diff

    if fmt == "markdown":
        raise click.UsageError("--format markdown needs two manifests: OLD NEW", ctx=ctx)
    from harden.outputs.metrics import diff_down_metrics, drift_metrics

    with _metrics_when_down(fmt, out, lambda code: diff_down_metrics(code, backend, time.time())):
        result = diff(manifest, backend)
    if fmt == "prometheus":
        _write(out, drift_metrics(result.drift, backend, time.time()))
    elif out is not None:
        _write(out, _render(fmt, result.to_json(), result.to_text()))
    else:
        _emit(fmt, result.to_json(), result.to_text())
    raise click.exceptions.Exit(result.exit_status)


def _exposure(
    ctx: click.Context,
    old: Path,
    new: Path,
    fmt: str,
    out: Path | None,
    names: tuple[str, ...],
) -> NoReturn:
    """What NEW opens and closes compared with OLD (diff OLD NEW); no firewall touched."""
    from click.core import ParameterSource

    from harden.policy.exposure import exposure_diff

    if ctx.get_parameter_source("backend") is not ParameterSource.DEFAULT:
        raise click.UsageError("--backend reads live rules: give it one MANIFEST", ctx=ctx)
    if fmt == "prometheus":
        raise click.UsageError("--format prometheus reads live rules: give one MANIFEST", ctx=ctx)
    old_policy, new_policy = (build_policy(load_manifest(path)) for path in (old, new))
    exposure = exposure_diff(old_policy, new_policy, names[0], names[1])
    if fmt == "markdown":
        _write(out, exposure.to_markdown())
    elif out is not None:
        _write(out, _render(fmt, exposure.to_json(), exposure.to_text()))
    else:
        _emit(fmt, exposure.to_json(), exposure.to_text())
    raise click.exceptions.Exit(exposure.exit_status)


@cli.command()
@STATE_DIR
@root_option("Where to look for the boot files (as given to apply --persist --root).")
@FORMAT
def status(state_dir: Path, root: Path, fmt: str) -> None:
    """Show what is applied, from which manifest, what is pending, and what loads at boot.

    Boot: whose files are under --root and whether harden.service is enabled.
    """
    from harden.apply import status as get_status

    report = get_status(state_dir, root)
    _emit(fmt, report.to_json(), report.to_text())


@cli.command(name="verify")
@click.argument("manifest", type=MANIFEST, required=False)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Address of the server to probe (repeat for its IPv6 address).",
)
@click.option(
    "--ports",
    default="all",
    show_default=True,
    help="'all' (65535 TCP + 65535 UDP), 'declared', or a list like 1-1024,8080.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(tuple(FORMATS)),
    default="text",
    show_default=True,
    help="prometheus: node_exporter textfile-collector metrics (use -o FILE: written "
    "atomically); nmap-xml: nmap's XML, for ndiff and tools that read nmap reports.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report here instead of standard output.",
)
@click.option(
    "--wait",
    type=click.FloatRange(*WAIT_RANGE),
    default=defaults.WAIT,
    show_default=True,
    help="Seconds to wait for replies after each round.",
)
@click.option(
    "--retries",
    type=click.IntRange(*RETRIES_RANGE),
    default=defaults.RETRIES,
    show_default=True,
    help="Extra rounds for silent probes (packet loss).",
)
@click.option(
    "--icmp-ratelimit-ms",
    type=click.IntRange(*RATELIMIT_RANGE),
    default=defaults.ICMP_RATELIMIT_MS,
    show_default=True,
    help="The target's net.ipv4.icmp_ratelimit; UDP sweeps wait this long without "
    "ICMP from the target before they count silence as proof.",
)
@click.option(
    "--icmp6-ratelimit-ms",
    type=click.IntRange(*RATELIMIT_RANGE),
    default=defaults.ICMP_RATELIMIT_MS,
    show_default=True,
    help="The target's net.ipv6.icmp.ratelimit.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Another address of this host to probe from (repeatable): each has its own ICMP "
    "budget at the target, so UDP retries need not wait for a refill.",
)
@click.option(
    "--seen-as",
    "seen_as",
    multiple=True,
    help="The address the target sees this prober as, when a NAT rewrites ours (one per "
    "family): source-restricted services are judged for it.",
)
@click.option(
    "--witness",
    metavar="CMD",
    help="A shell command that prints the target's 'harden counters --format json' (e.g. "
    '"ssh root@HOST harden counters --format json"): run before and after the sweep, it '
    "shows whether the probes arrived and were dropped by harden (needs verify.probers); "
    "the live ruleset it reports is judged against MANIFEST, and the probes a sweep cannot "
    "send (source-port keyed accepts) are sent.",
)
@click.option(
    "--inventory",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Verify a fleet: a YAML file of hosts, each with its manifest and targets.",
)
@click.option(
    "--egress",
    is_flag=True,
    help="Verify this host's egress instead: run here, on the hardened host, with --sink "
    'and --sink-command (docs/design.md, "Egress").',
)
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    help="With --egress: an address of the sink host to send to (repeat for its IPv6 address).",
)
@click.option(
    "--sink-command",
    metavar="CMD",
    help="With --egress: runs 'harden sink' on the sink host, e.g. \"ssh root@SINK harden "
    "sink --from {sources}\" ({sources}: this host's source addresses).",
)
def verify_cmd(manifest: Path | None, fmt: str, output: Path | None, **option: Any) -> None:
    """Probe a server from outside and compare every port with MANIFEST.

    Declared ports must answer; every other port must be silent (closed: drop)
    or answer admin-prohibited (closed: reject): no TCP RST, no ICMP
    port-unreachable. Run it on another host, as root (raw sockets); exit 0
    pass, 1 fail, 4 probe error, 5 inconclusive. With --inventory, every host of
    a fleet is probed in the same sweeps and lands in one report.

    \b
    What a PASS proves, and assumes (PASS only when every port is proven;
    every premise not checked is listed under "assumptions" and on the
    verdict line; anything unproven is INCONCLUSIVE):
    - The target showed during this run that it exists: a reply from it, or on
      our link an answer to an ARP request or neighbour solicitation sent now
      (a cached neighbour entry is not proof).
    - UDP silence counts only for sweeps begun while the target's per-peer ICMP
      budget held a token (no ICMP error to us for one --icmp-ratelimit-ms
      interval). It assumes the target's interval is at most that (--witness
      reads the real one), and that other hosts did not spend its machine-wide
      icmp_msgs_per_sec meanwhile.
    - A UDP listener that ignores unknown datagrams looks dropped from outside;
      --witness counts what arrived, what harden dropped and what every
      firewall let through.
    See docs/design.md, "The verdict rule".
    """  # noqa: D301 (click's \\b keeps the list's line breaks)
    from harden.verify.sweep import run_verify

    if option["egress"] or option["sinks"] or option["sink_command"]:
        _verify_egress(manifest, fmt, output, option)
    request = _request(
        lambda: VerifyRequest.parse(
            manifest,
            option["targets"],
            inventory=option["inventory"],
            ports=option["ports"],
            probing=Probing.parse(**{name: option[name] for name in PROBING_OPTIONS}),
        )
    )
    with _metrics_when_down(fmt, output, lambda code: verify_down_metrics(code, time.time())):
        report = run_verify(
            _verify_hosts(request),
            request.ports,
            request.probing,
            progress=fmt == "text" and output is None and sys.stderr.isatty(),
        )
    _verify_output(report, fmt, output)


def _request(parse: Callable[[], R]) -> R:
    """A request from the options, its OptionError shown as click shows a bad option."""
    try:
        return parse()
    except OptionConflict as exc:
        raise click.UsageError(exc.message) from None
    except OptionError as exc:
        option = f"--{exc.option.replace('_', '-')}"
        raise click.BadParameter(exc.message, param_hint=option) from None


def _verify_hosts(request: VerifyRequest) -> list[tuple[Policy, list[Address]]]:
    """Each host's policy and addresses: one MANIFEST with --target, or an --inventory."""
    from harden.verify.inventory import load_inventory

    if request.manifest is not None:
        return [(build_policy(load_manifest(request.manifest)), list(request.targets))]
    assert request.inventory is not None
    return [(h.policy, list(h.targets)) for h in load_inventory(request.inventory)]


def _verify_egress(
    manifest: Path | None, fmt: str, output: Path | None, option: dict[str, Any]
) -> NoReturn:
    """Check this host's output path against MANIFEST's egress, with a sink (--egress)."""
    from harden.verify.egress.probe import run_egress
    from harden.verify.egress.verdict import egress_report

    request = _request(
        lambda: EgressRequest.parse(
            manifest,
            option["sinks"],
            option["sink_command"],
            ports=option["ports"],
            targets=option["targets"],
            inventory=option["inventory"],
        )
    )
    policy = build_policy(load_manifest(request.manifest))
    run = run_egress(policy, list(request.sinks), request.sink_command, request.ports)
    _verify_output(egress_report(policy, run), fmt, output)


def _verify_output(report: Report, fmt: str, output: Path | None) -> NoReturn:
    text = write_report(report, fmt, port_service_names() if FORMATS[fmt].services else None)
    if output is not None:
        write_atomic(output, printable(text), mode=0o644)
        echo(f"{report.verdict.upper()}: report written to {output}", err=True)
    else:
        echo(text, nl=False)
    raise click.exceptions.Exit(report.exit_status)


@cli.command()
@click.option(
    "--from",
    "senders",
    default="",
    metavar="ADDRS",
    help="Record only what these addresses send (comma-separated: the hardened host's).",
)
@click.option(
    "--duration",
    type=click.FloatRange(1, 3600),
    default=300,
    show_default=True,
    help="Stop capturing after this many seconds even if standard input stays open.",
)
def sink(senders: str, duration: float) -> None:
    """Capture what a hardened host's egress probes deliver here (verify --egress).

    Run on the sink host, as root, usually by the verifier over SSH. Records every TCP
    SYN and UDP datagram that arrives (no listener needed: the capture sees packets
    before this host's firewall), prints a ready line, captures until standard input
    closes or --duration passes, then prints a harden.sink/1 JSON report.
    """
    from harden.verify.egress.sink import capture

    try:
        addresses = [ipaddress.ip_address(a.strip()) for a in senders.split(",") if a.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    started = time.monotonic()
    arrivals = capture(addresses, duration, sys.stdin, sys.stdout)
    echo(json.dumps(arrivals.to_json(time.monotonic() - started, addresses)))


@cli.command()
@click.argument("manifest", type=MANIFEST, required=False)
@BACKEND
@click.option(
    "--confirm",
    "confirm_window",
    type=click.IntRange(5, 3600),
    default=defaults.LAB_CONFIRM_WINDOW,
    show_default=True,
    help="Confirm window of the lab's apply.",
)
@click.option(
    "--ports",
    default="all",
    show_default=True,
    help="Ports to probe: 'all', 'declared' or a list like 1-1024.",
)
@click.option(
    "--apply",
    "apply_manifest",
    type=MANIFEST,
    default=None,
    help="Test a change: the server runs MANIFEST's services, this manifest is applied "
    "and verified, and closing or narrowing anything MANIFEST exposes fails (rolled "
    "back); what it adds must answer.",
)
@click.option(
    "--reap",
    is_flag=True,
    help="Remove the lab namespaces (hl-*) of runs that are gone, and their processes; "
    "run nothing else.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "junit", "markdown"]),
    default="text",
    show_default=True,
    help="junit: a timed testcase per step (the CI test tab); markdown: a pull request.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report here (atomically); the text summary still goes to standard output.",
)
def lab(
    manifest: Path | None,
    backend: Backend,
    confirm_window: int,
    ports: str,
    apply_manifest: Path | None,
    fmt: str,
    reap: bool,
    output: Path | None,
) -> None:
    """Show the whole loop in throwaway network namespaces.

    A server with MANIFEST's services listening, an outside host and (for
    source-restricted services) a host inside the sources. Before: verify the
    unfirewalled server (RST and ICMP leaks). Then the real apply path with a
    confirm window, verification from every vantage point, and confirm on PASS or
    rollback on FAIL. A manifest that restricts egress also gets the egress proof
    before and after, with the outside host as the sink. Nothing outside the lab's
    namespaces is touched. SIGTERM, SIGHUP and Ctrl-C remove the namespaces, their
    processes and the temp directory (exit 143, 129, 130); --reap removes what a run
    killed outright (SIGKILL) left.
    """
    from harden.lab.scenario import run_lab

    if reap:
        from harden.lab.netns import reap as reap_namespaces

        gone = reap_namespaces("hl")
        echo("\n".join(f"removed {name}" for name in gone) or "no stale lab namespaces")
        return
    path = manifest or Path(__file__).resolve().parent.parent / "rulesets" / "web-server.yaml"
    progress = (lambda m: None) if fmt == "json" else (lambda m: echo(f"» {m}", err=True))
    with _interruptible():
        result = run_lab(
            path,
            backend,
            confirm_window=confirm_window,
            progress=progress,
            ports=_request(lambda: PortSelection.parse(ports)),
            apply_manifest=apply_manifest,
        )
    if fmt == "json":
        rendered = json.dumps(result.to_json(), indent=2) + "\n"
    elif fmt == "junit":
        rendered = result.to_junit()
    elif fmt == "markdown":
        rendered = result.to_markdown()
    else:
        rendered = result.to_text() + "\n"
    if output is not None:
        write_atomic(output, rendered, mode=0o644)
        echo(result.to_text())
    else:
        echo(rendered, nl=False)
    raise click.exceptions.Exit(ExitStatus.OK if result.ok else ExitStatus.FAILED)


@cli.command(name="ci")
@click.argument("base")
@click.argument("head")
@click.option(
    "--repo",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="The git repository BASE and HEAD are revisions of (when they are not directories).",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="PROTO/PORT",
    help="A port every changed manifest must keep open, e.g. tcp/22 or "
    "'tcp/443 from 198.18.0.0/24' (repeatable; beside each manifest's ci.keep_open).",
)
@click.option(
    "--allow-ssh-change",
    is_flag=True,
    help="Do not fail a change that closes or narrows the SSH port BASE serves.",
)
@click.option("--no-lab", is_flag=True, help="Validate, diff and assert only (no root needed).")
@BACKEND
@click.option(
    "--lab-ports",
    default="all",
    show_default=True,
    help="Ports the lab probes: 'all', 'declared' or a list like 1-1024.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "github", "junit", "json"]),
    default="text",
    show_default=True,
    help="markdown: a pull-request comment; github: workflow annotations; junit: the CI test tab.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the --format report here; the text summary still goes to standard output.",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the JUnit report here (the CI test tab).",
)
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also append the Markdown summary here (a pull-request comment, or $GITHUB_STEP_SUMMARY).",
)
def ci_cmd(
    base: str,
    head: str,
    repo: Path,
    keep: tuple[str, ...],
    allow_ssh_change: bool,
    no_lab: bool,
    backend: Backend,
    lab_ports: str,
    fmt: str,
    output: Path | None,
    junit: Path | None,
    summary: Path | None,
) -> None:
    """Judge a pull request to a repository of manifests: exit 0 good, 1 failed, 2 invalid.

    BASE and HEAD are directories or git revisions (origin/main, HEAD). Every manifest
    of HEAD is validated, each error with its file, line and field. Each manifest the
    change adds or alters is diffed (what opens is marked ⚠, and so is a close of SSH),
    held to its assertions (the manifest's ci: keep_open and never_open, --keep, and
    the SSH port BASE serves, unless --allow-ssh-change), and labbed: its rules loaded
    in network namespaces and probed before and after (root; --no-lab skips it, and
    says so). The report lists what was not tested. See docs/ci.md.
    """
    from pydantic import ValidationError

    from harden.lab.ci import CiOptions, run_ci
    from harden.manifest.model import Ci

    try:
        checks = Ci.model_validate({"keep_open": list(keep)}).keep_open
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = str(first["msg"]).removeprefix("Value error, ")
        raise OptionError("keep", reason) from None
    options = CiOptions(
        keep=checks,
        allow_ssh_change=allow_ssh_change,
        lab=not no_lab,
        backend=backend,
        lab_ports=_request(lambda: PortSelection.parse(lab_ports)),
    )
    with _interruptible():
        report = run_ci(base, head, repo, options, lambda m: echo(f"» {m}", err=True))
    if junit is not None:
        write_atomic(junit, report.to_junit(), mode=0o644)
    if summary is not None:
        write_atomic(summary, report.to_markdown(), mode=0o644)
    if output is not None:
        write_atomic(output, report.render(fmt), mode=0o644)
        echo(report.to_text(), nl=False)
    else:
        echo(report.render(fmt), nl=False)
    raise click.exceptions.Exit(report.exit_status)


@cli.command(name="init")
@FORMAT
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the proposed manifest (YAML) here instead of printing it.",
)
def init_cmd(fmt: str, output: Path | None) -> None:
    """Propose a manifest from the sockets this host listens on. Applies nothing.

    One service per (process, port) that other hosts can reach, named from
    /etc/services or the process; loopback and IPv6 link-local listeners are left
    out (listed in a comment); the live SSH port is always kept. Egress is proposed
    from the resolvers, time servers and established outbound connections, in a
    commented-out block (not enforced until uncommented). Review it, then
    'harden validate' and 'harden apply --confirm'.
    """
    import os

    from harden.init.host import init

    proposal = init(os.environ)
    if output is not None:
        write_atomic(output, proposal.manifest, mode=0o644)
        echo(
            f"wrote {output}: {len(proposal.services)} service(s), "
            f"{len(proposal.left_out)} listener(s) left out, "
            f"{len(proposal.egress)} egress allow(s) proposed (commented out)",
            err=True,
        )
    if fmt == "json":
        echo(json.dumps(proposal.to_json(), indent=2))
    elif output is None:
        echo(proposal.to_text(), nl=False)


@cli.group()
def schedule() -> None:
    """Write a systemd service and timer that re-run harden and write metrics.

    A firewall drifts: a container publishes a port, someone runs 'nft add rule'. On
    the prober, 'schedule verify' re-verifies its targets every --every and writes
    'verify --format prometheus' metrics; on the target, 'schedule diff' re-runs
    'harden diff' and writes the harden_drift metric. Point node_exporter's textfile
    collector at the metrics directory, then: systemctl daemon-reload && systemctl
    enable --now NAME.timer
    """


SCHEDULE_OPTIONS = [
    click.option(
        "--every",
        default="15min",
        show_default=True,
        help="How often: a systemd time span such as 90s, 15min, 1h or 1d.",
    ),
    click.option(
        "--metrics",
        type=click.Path(path_type=Path, dir_okay=False),
        help="The metrics file the unit writes (atomically).  [default: "
        "/var/lib/prometheus/node-exporter/harden_NAME.prom, Debian's textfile directory]",
    ),
    click.option(
        "--name", help="Unit name without suffix.  [default: harden-verify / harden-diff]"
    ),
    click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("/etc/systemd/system"),
        show_default=True,
        help="Directory to write NAME.service and NAME.timer into.",
    ),
]


def _schedule_options(func: Any) -> Any:
    for option in reversed(SCHEDULE_OPTIONS):
        func = option(func)
    return func


def _write_units(
    kind: str,
    description: str,
    args: list[str],
    ok_exits: tuple[int, ...],
    every: str,
    metrics: Path | None,
    name: str | None,
    output: Path,
) -> None:
    from harden.schedule import Schedule, Scheduled

    unit = name or f"harden-{kind}"
    metrics = (metrics or Path(f"/var/lib/prometheus/node-exporter/{unit}.prom")).absolute()
    # This harden, however it was installed (a venv, pipx, a Debian package).
    command = (sys.executable, "-I", "-m", "harden.cli", *args, "--format", "prometheus", "-o")
    job = Schedule(
        unit, description, (*command, str(metrics)), every, str(metrics.parent), ok_exits
    )
    try:
        # ReadWritePaths= must exist when the unit starts, or systemd refuses to run it.
        metrics.parent.mkdir(parents=True, exist_ok=True)
        # The unit rewrites the metrics as root every run: nobody else may write there.
        check_private_dir(metrics.parent, "metrics directory")
        written = []
        for suffix, text in (("service", job.service()), ("timer", job.timer())):
            path = output / f"{unit}.{suffix}"
            write_atomic(path, text, mode=0o644)
            written.append(str(path))
    except OSError as exc:
        where = exc.filename or output
        raise EnvironmentProblem(f"cannot write {where}: {exc.strerror} (run as root?)") from None
    echo(Scheduled(unit, tuple(written)).to_text(), err=True)


@schedule.command(name="verify")
@click.argument("manifest", type=MANIFEST)
@click.option("--target", "targets", multiple=True, required=True, help="As for 'harden verify'.")
@click.option("--ports", default="all", show_default=True, help="As for 'harden verify'.")
@_schedule_options
def schedule_verify(
    manifest: Path,
    targets: Sequence[str],
    ports: str,
    every: str,
    metrics: Path | None,
    name: str | None,
    output: Path,
) -> None:
    """On the prober: re-verify MANIFEST's targets on a timer (FAIL is a metric)."""
    load_manifest(manifest)  # a bad manifest fails now, not at 3 a.m.
    check_private_file(manifest, "manifest")  # the timer reads it as root, again and again
    _request(lambda: VerifyRequest.parse(manifest, targets, ports=ports))
    args = ["verify", str(manifest.absolute()), *(a for t in targets for a in ("--target", t))]
    args += ["--ports", ports]
    description = f"harden verify {manifest.name} against {', '.join(targets)}"
    _write_units("verify", description, args, (1, 5), every, metrics, name, output)


@schedule.command(name="diff")
@click.argument("manifest", type=MANIFEST)
@BACKEND
@_schedule_options
def schedule_diff(
    manifest: Path,
    backend: Backend,
    every: str,
    metrics: Path | None,
    name: str | None,
    output: Path,
) -> None:
    """On the target: compare the live rules with MANIFEST on a timer (drift is a metric)."""
    load_manifest(manifest)
    check_private_file(manifest, "manifest")
    args = ["diff", str(manifest.absolute()), "--backend", backend]
    description = f"harden diff {manifest.name} ({backend})"
    _write_units("diff", description, args, (1,), every, metrics, name, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; map errors to one-line messages and exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # Without standalone mode click returns (not raises) the code of an Exit.
        code = cli.main(args=args, prog_name="harden", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        # A bare 'harden' (or 'harden schedule'): the whole help, as written, exit 2.
        echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
        return ExitStatus.USAGE
    except click.ClickException as exc:
        # One line, like every other error; the usage is one --help away.
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        echo(f"harden: error: {one_line(exc.format_message())}{hint}", err=True)
        return ExitStatus.USAGE
    except click.exceptions.Abort as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Interrupted):
            name = signal.Signals(cause.signum).name
            echo(f"harden: interrupted by {name}; what this run made is removed", err=True)
            return 128 + cause.signum
        echo("harden: interrupted", err=True)
        return 130
    except Interrupted as exc:  # outside click's own handling
        echo(f"harden: interrupted by {signal.Signals(exc.signum).name}", err=True)
        return 128 + exc.signum
    except HardenError as exc:
        if debug:
            raise
        # The library names an option as the API does (ports); the CLI as its flag (--ports).
        text = (
            f"--{exc.option.replace('_', '-')}: {exc.message}"
            if isinstance(exc, OptionError)
            else str(exc)
        )
        echo(f"harden: error: {text}", err=True)
        return exc.exit_status
    except Exception as exc:
        if debug:
            raise
        echo(
            f"harden: internal error (a bug in harden, please report it): "
            f"{type(exc).__name__}: {one_line(exc)} (rerun with --debug for the traceback)",
            err=True,
        )
        return ExitStatus.INTERNAL
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
