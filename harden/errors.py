"""Errors that carry a message fit to print, and the exit codes of the CLI.

docs/design.md, "Exit codes", says what automation may do with each code.
"""

from __future__ import annotations

import subprocess
from enum import IntEnum

from harden.text import one_line


class ExitStatus(IntEnum):
    """Process exit codes; automation (Ansible, CI) acts on these."""

    OK = 0
    FAILED = 1  # verification failed or drift found
    USAGE = 2  # bad command line or manifest, or a refused apply: nothing changed
    APPLY_FAILED = 3  # apply failed and the previous state was kept or restored
    ENVIRONMENT = 4  # probe or environment error (no privileges, missing tool, ...): retryable
    INCONCLUSIVE = 5  # verify: a target never showed it exists, so silence proves nothing
    INTERNAL = 70  # a bug in harden (sysexits' EX_SOFTWARE): not retryable, report it


class HardenError(Exception):
    """Base of every error harden reports to a user; ``str()`` is the one-line message."""

    exit_status: ExitStatus = ExitStatus.USAGE


class ManifestError(HardenError):
    """A manifest that cannot be read or does not validate."""

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


class RenderError(HardenError):
    """A manifest feature the chosen backend cannot express (never silently dropped)."""


class OptionError(HardenError):
    """A bad value for one option of a command (exit 2); ``option`` names it (``ports``).

    The library says ``ports: ...``, as the Python API's keyword is called; the CLI says
    ``--ports: ...`` (cli.main). Messages never name a flag themselves.
    """

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}")


class OptionConflict(OptionError):
    """Options that need or exclude each other (exit 2; the CLI adds its usage hint)."""


class Refused(HardenError):
    """A command that does not fit harden's current state; nothing was changed (exit 2).

    A confirmation is pending, or there is nothing to confirm or to roll back.
    """


class InternalError(HardenError):
    """A broken invariant: a bug in harden, not anything the user did (exit 70)."""

    exit_status = ExitStatus.INTERNAL


class LockoutRefused(HardenError):
    """Applying would cut the operator's SSH access; nothing was changed (``--force``)."""


class ApplyError(HardenError):
    """Loading a ruleset failed; the previous state was kept or restored."""

    exit_status = ExitStatus.APPLY_FAILED


class EnvironmentProblem(HardenError):
    """Missing privileges, tools or kernel features."""

    exit_status = ExitStatus.ENVIRONMENT


class StateError(HardenError):
    """The state directory holds something harden did not write or cannot read.

    Exit 2: nothing is changed; the message says what is wrong and that ``harden reset``
    moves the state files aside (docs/design.md, "Check, snapshot, load").
    """

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message} ('harden reset' moves the state files aside; the live rules stay)"
        )


class UnsafeStateDir(HardenError):
    """A state directory another user could write, or not a directory at all (exit 2)."""


class UnsafeOutput(HardenError):
    """An output directory another user could write: harden (often root) refuses (exit 2)."""


class CommandFailed(EnvironmentProblem):
    """A command harden ran (in a lab namespace) failed; ``str()`` includes its stderr."""

    def __init__(self, returncode: int, cmd: list[str], stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr
        err = one_line(stderr or "", 400)
        shown = subprocess.list2cmdline(cmd)
        super().__init__(f"{shown} exited {returncode}" + (f": {err}" if err else ""))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that it unwinds as on Ctrl-C.

    A CI job that is cancelled or times out sends SIGTERM; whatever the program built
    (the lab's namespaces, their processes, its temp directory) is removed on the way out,
    and the exit status is 128 + the signal's number (143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
