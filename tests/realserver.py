"""The README's "On a real server" section, read as steps: which host runs which command.

Each ``sh`` block of the section starts with a comment naming its host ("# On the server"
or "# On the prober"); its commands are the lines that are not comments, with backslash
continuations joined. tests/test_vms.py runs them, in order, on two fresh Debian 12 VMs,
so the section is what the test runs and the test is what the section says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SECTION = "## On a real server"
HOSTS = ("server", "prober")


@dataclass(frozen=True)
class Step:
    """One command of the section, on its host; `block` counts the section's blocks from 0."""

    host: str
    command: str
    block: int
    intro: str  # the block's first comment line


def real_server_steps(readme: str) -> list[Step]:
    """The section's commands, in order; ValueError if a block does not name its host."""
    _, found, rest = readme.partition(f"\n{SECTION}\n")
    if not found:
        raise ValueError(f"README.md has no {SECTION!r} section")
    section = rest.split("\n## ", 1)[0]
    steps = []
    for number, block in enumerate(re.findall(r"```sh\n(.*?)```", section, re.DOTALL)):
        intro = block.splitlines()[0]
        host = re.match(r"# On the (\w+)", intro)
        if host is None or host.group(1) not in HOSTS:
            raise ValueError(f"README.md, {SECTION}: a block that names no host: {intro!r}")
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                steps.append(Step(host.group(1), " ".join(line.split()), number, intro))
    return steps


def install_steps(steps: list[Step]) -> list[Step]:
    """Step 1 of the first block: what runs before its first harden command."""
    first = [s for s in steps if s.block == 0]
    until = next(i for i, s in enumerate(first) if s.command.startswith("harden "))
    return first[:until]
