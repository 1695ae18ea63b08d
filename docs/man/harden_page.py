"""The sections of harden(1) click has no help text for: exit status, environment, files.

Each is read from the code where the code holds it (exit codes, state and boot file
names, options with an environment variable, default paths) and fails loudly when the
code has something this page does not describe, so ``make man`` cannot leave it stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
from roff import bold, code, escape, example

from harden import defaults
from harden.apply import boot, state
from harden.backends import REGISTRY
from harden.errors import ExitStatus

PACKAGE = Path(__file__).resolve().parents[2] / "harden"

# What each code means (docs/commands.md, "Exit codes"; docs/design.md, "Exit codes").
EXIT_STATUS = {
    ExitStatus.OK: "ok: verify passed, no drift, apply applied (or the live rules already "
    "matched).",
    ExitStatus.FAILED: "verification failed, or drift found (diff, analyze --manifest); "
    "diff OLD NEW: the change alters exposure; ci and lab: a check failed.",
    ExitStatus.USAGE: "usage or manifest error, a refused apply (SSH guard, pending "
    "confirmation), an untrusted or corrupt state directory: nothing was changed.",
    ExitStatus.APPLY_FAILED: "apply failed; the previous rules were kept or restored.",
    ExitStatus.ENVIRONMENT: "probe or environment error (privileges, missing tools, no "
    "quiet ICMP period): retryable once the environment is fixed.",
    ExitStatus.INCONCLUSIVE: "inconclusive: verify could not prove every port (a target "
    "that never showed it exists, or with --witness no probe reached it); analyze "
    "--manifest met rules it cannot read.",
    ExitStatus.INTERNAL: "internal error: a bug in harden, not retryable (rerun with "
    "--debug and report it).",
}
SIGNALS = (
    "interrupted by signal N: 130 Ctrl-C, 129 SIGHUP, 143 SIGTERM (lab and ci remove what "
    "they made on the way out)."
)

# Variables harden reads besides the options' own (each must still be read by the code).
VARIABLES = {
    "HARDEN_REQUIRE_NETNS": "Set to 1: apply, rollback, remove and the rollback watchdog "
    "refuse to change the firewall unless harden runs inside a named network namespace "
    "(ip netns exec). The test suite sets it.",
    "SSH_CONNECTION": "Set by sshd. apply's SSH guard refuses a manifest that would cut the "
    "session it names (the guard also reads the kernel's sockets, since sudo's env_reset "
    "drops the variable); init keeps its port.",
    "_HARDEN_COMPLETE": "Shell completion: "
    'eval "$(_HARDEN_COMPLETE=bash_source harden)" in ~/.bashrc (zsh_source, '
    "fish_source for zsh and fish).",
}

# The files of the state directory, by their name in harden.apply.state.
STATE_FILES = {
    state.RECORD: "What is applied, from which manifest, the pending confirmation, history.",
    state.SNAPSHOT: "harden's rules as they were before the last apply (for rollback).",
    state.APPLIED: "The rendered files the last apply loaded (persisted on confirm).",
    state.PERSISTED: "What each boot file held before harden persisted (rollback puts it back).",
    state.LOCK: "The lock apply, confirm, rollback and the watchdog hold while they work.",
}


def exit_status() -> list[str]:
    """EXIT STATUS: every ExitStatus, then the signals."""
    missing = set(ExitStatus) - EXIT_STATUS.keys()
    if missing:
        raise SystemExit(f"docs/man/harden_page.py: describe exit status {sorted(missing)}")
    lines = [".SH EXIT STATUS"]
    for status, meaning in sorted(EXIT_STATUS.items()):
        lines += [".TP", bold(str(int(status))), code(meaning)]
    return [*lines, ".TP", bold("128+N"), escape(SIGNALS)]


def _commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


def environment(cli: click.Group) -> list[str]:
    """ENVIRONMENT: the options that read a variable, and the variables the code reads."""
    found: dict[str, tuple[click.Option, list[str]]] = {}
    for path, command in _commands(cli, "harden"):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.envvar, str):
                found.setdefault(param.envvar, (param, []))[1].append(path.split(" ", 1)[1])
    lines = [".SH ENVIRONMENT"]
    for name, (option, users) in sorted(found.items()):
        text = f"The default of {option.opts[0]} ({option.default}) for {', '.join(users)}: "
        text += (option.help or "")[:1].lower() + (option.help or "")[1:]
        lines += [".TP", bold(name), code(text)]
    source = "".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))
    for name, text in VARIABLES.items():
        if name not in source:
            raise SystemExit(f"docs/man/harden_page.py: harden no longer reads {name}")
        lines += [".TP", bold(name), code(text)]
    return lines


def _boot_files() -> Iterator[tuple[str, str]]:
    """Each boot file apply --persist writes, with what it is."""
    for spec in REGISTRY.values():
        for name in spec.rule_files:
            yield f"/{boot.HARDEN_ETC / name}", f"The {spec.name} backend's rules, loaded at boot."
        for extra in spec.boot_extras:
            yield f"/{extra}", f"The {spec.name} backend's drop-in for another unit."
    yield f"/{boot.UNIT}", "The unit that loads harden's rules at boot, before the network."
    yield f"/{boot.WANTS}", "The link that enables it."


def files(cli: click.Group) -> list[str]:
    """FILES: the state directory, the boot files, schedule's units and /etc/services."""
    where = defaults.STATE_DIR
    lines = [".SH FILES", ".TP", bold(f"{where}/"), code("The state directory (--state-dir).")]
    for name, text in STATE_FILES.items():
        lines += [".TP", bold(f"{where}/{name}"), escape(text)]
    for path, text in _boot_files():
        lines += [".TP", bold(path), code(f"{text} Written by apply --persist, removed by remove.")]
    lines += [".TP", bold(f"/{boot.NFT_CONF}"), "The include line earlier versions of harden"]
    lines.append(code("added is taken out by apply --persist and remove; nothing else changes."))
    schedule = cli.commands["schedule"]
    assert isinstance(schedule, click.Group)
    units = next(p.default for p in schedule.commands["verify"].params if p.name == "output")
    lines += [".TP", f"{bold(f'{units}/NAME.service')}, {bold('NAME.timer')}"]
    lines.append(code("Written by schedule verify (NAME: harden-verify) and schedule diff"))
    lines.append(code("(harden-diff); --name and -o change them."))
    lines += [".TP", bold("/var/lib/prometheus/node-exporter/NAME.prom")]
    lines.append(code("The metrics a scheduled unit writes (--metrics)."))
    return [*lines, ".TP", bold("/etc/services"), "Port names a manifest may use (https, domain)."]


# The typical flow; every command line is parsed by the CLI before it is shown.
EXAMPLES = [
    "# On the server: propose a manifest from what listens here, review it, check it",
    "harden init -o web.yaml",
    "harden validate web.yaml",
    "harden render web.yaml",
    "# Load it; rolled back in 120 s unless confirmed, installed for boot on confirm",
    "harden apply web.yaml --confirm 120 --persist",
    "# From another host, as root: probe every port",
    "harden verify web.yaml --target 203.0.113.10 --target 2001:db8::10",
    "# On the server again, when verify passed",
    "harden confirm",
    "harden status",
    "# Later: has anything drifted? What would a change open?",
    "harden diff web.yaml",
    "harden diff web.yaml web-new.yaml",
    "harden analyze --manifest web.yaml",
    "# In CI, on a repository of manifests (no root: no lab)",
    "harden ci origin/main HEAD --no-lab --format github",
]


def examples(cli: click.Group) -> list[str]:
    """EXAMPLES: the typical flow, each command line checked against the CLI."""
    for line in EXAMPLES:
        if not line.startswith("#"):
            _parse(cli, line)
    return [".SH EXAMPLES", *example(EXAMPLES)]


def _parse(cli: click.Group, line: str) -> None:
    """Parse ``line`` as harden would, running nothing; exit on an unknown option."""
    command: click.Command = cli
    args = line.split()[1:]
    while isinstance(command, click.Group):
        command, args = command.commands[args[0]], args[1:]
    try:
        command.make_context(command.name or "", list(args))
    except click.ClickException as exc:
        raise SystemExit(f"docs/man/harden_page.py: {line}: {exc.format_message()}") from None
