"""Errors that carry a message fit to print, and the exit codes of the CLI."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes; automation (Ansible, CI) acts on these."""

    OK = 0
    FAILED = 1  # verification failed or drift found
    USAGE = 2  # bad command line or bad manifest
    APPLY_FAILED = 3  # apply failed and the previous state was restored
    ENVIRONMENT = 4  # probe or environment error (no privileges, missing tool, ...)


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


class ApplyError(HardenError):
    """Loading a ruleset failed; the previous state was kept or restored."""

    exit_status = ExitStatus.APPLY_FAILED


class EnvironmentProblem(HardenError):
    """Missing privileges, tools or kernel features."""

    exit_status = ExitStatus.ENVIRONMENT
