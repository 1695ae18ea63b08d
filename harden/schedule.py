"""systemd units that re-run harden on a schedule (``harden schedule``): pure text.

A firewall drifts (a container publishes a port, someone runs ``nft add rule``), so a
verification proves the state of one moment. The prober re-verifies on a timer and
writes Prometheus metrics; the target re-runs ``harden diff`` and writes its drift
metric. FAIL, INCONCLUSIVE and drift are results the metrics carry, not unit failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harden.errors import OptionError, RenderError

# systemd time spans harden accepts: "90s", "15min", "1h", "1d" (systemd.time(7)).
_SPAN = re.compile(r"[1-9][0-9]{0,5}(s|min|h|d)")
_NAME = re.compile(r"[A-Za-z0-9:_.@-]{1,200}")
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def exec_quote(arg: str) -> str:
    """One ExecStart argument: quoted when needed, ``%`` and ``$`` escaped (systemd.service)."""
    if "\n" in arg:
        raise RenderError("an ExecStart argument cannot hold a newline")
    text = (
        arg if _PLAIN.fullmatch(arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )
    return text.replace("%", "%%").replace("$", "$$")


@dataclass(frozen=True)
class Schedule:
    """One scheduled harden command and how often it runs."""

    name: str  # unit name without .service / .timer
    description: str
    command: tuple[str, ...]  # argv; the first item an absolute path
    every: str  # a systemd time span
    writes: str  # the directory the command writes its metrics into
    ok_exits: tuple[int, ...]  # exit codes that are results, not failures

    def __post_init__(self) -> None:
        """Refuse what systemd would misread."""
        if not _NAME.fullmatch(self.name):
            raise RenderError(f"unit name {self.name!r}: use letters, digits and :_.@-")
        if not _SPAN.fullmatch(self.every):
            raise OptionError("every", f"{self.every!r}: expected e.g. 90s, 15min, 1h or 1d")
        if not self.command or not self.command[0].startswith("/"):
            raise RenderError("the command must start with an absolute path")

    def service(self) -> str:
        """``NAME.service``: one run, sandboxed to writing its metrics directory."""
        argv = " ".join(exec_quote(a) for a in self.command)
        return (
            f"# Written by harden schedule; re-run it to change this unit.\n"
            f"[Unit]\n"
            f"Description={_one_line(self.description)}\n"
            f"Wants=network-online.target\n"
            f"After=network-online.target\n"
            f"\n"
            f"[Service]\n"
            f"Type=oneshot\n"
            f"ExecStart={argv}\n"
            f"SuccessExitStatus={' '.join(map(str, self.ok_exits))}\n"
            f"NoNewPrivileges=yes\n"
            f"ProtectSystem=strict\n"
            f"ProtectHome=read-only\n"
            f"PrivateTmp=yes\n"
            f"ReadWritePaths={exec_quote(self.writes)}\n"
        )

    def timer(self) -> str:
        """``NAME.timer``: first run a minute after boot, then every ``every``."""
        return (
            f"# Written by harden schedule; re-run it to change this unit.\n"
            f"[Unit]\n"
            f"Description={_one_line(self.description)} (every {self.every})\n"
            f"\n"
            f"[Timer]\n"
            f"OnBootSec=1min\n"
            f"OnUnitActiveSec={self.every}\n"
            f"RandomizedDelaySec=30s\n"
            f"Unit={self.name}.service\n"
            f"\n"
            f"[Install]\n"
            f"WantedBy=timers.target\n"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("%", "%%")


@dataclass(frozen=True)
class Scheduled:
    """What ``harden schedule`` wrote: the unit files, and how to start the timer."""

    unit: str
    written: tuple[str, ...]

    def to_text(self) -> str:
        """One line per file written, then the command that enables the timer."""
        lines = [f"wrote {path}" for path in self.written]
        lines.append(f"then: systemctl daemon-reload && systemctl enable --now {self.unit}.timer")
        return "\n".join(lines)
