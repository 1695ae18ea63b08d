"""Write harden's man pages (harden.1 and one per command) from the CLI's own help.

click-man renders the click commands; nothing here is written by hand. Run by
``make man``; tests/test_man.py fails when the committed pages are out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click_man.core import write_man_pages

from harden import __version__
from harden.cli import cli


def generate(target: Path, date: str) -> None:
    """Write every page into ``target`` (created if missing)."""
    target.mkdir(parents=True, exist_ok=True)
    write_man_pages("harden", cli, version=__version__, target_dir=str(target), date=date)


if __name__ == "__main__":
    generate(Path(sys.argv[1]), sys.argv[2])
