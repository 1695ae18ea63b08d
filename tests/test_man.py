"""The man pages are generated from the CLI's own help (click-man), committed, and current."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

MAN = REPO / "docs" / "man"


def test_the_committed_man_pages_match_the_cli(tmp_path: Path) -> None:
    """Fails when a command, option or help text changed without 'make man'."""
    header = (MAN / "harden.1").read_text().splitlines()[0]  # .TH "HARDEN" "1" DATE VERSION
    date = shlex.split(header)[3]
    subprocess.run([sys.executable, str(MAN / "generate.py"), str(tmp_path), date], check=True)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.1")}
    committed = {p.name: p.read_text() for p in MAN.glob("*.1")}
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert stale == [], f"run 'make man': out of date: {stale}"
    assert {"harden.1", "harden-verify.1", "harden-sink.1"} <= fresh.keys()


def test_man_renders_the_page() -> None:
    proc = subprocess.run(
        ["man", "-l", str(MAN / "harden.1")],
        capture_output=True,
        text=True,
        check=False,
        env={"MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "SYNOPSIS" in proc.stdout and "harden-verify(1)" in proc.stdout


def test_shell_completion_as_the_readme_shows_it() -> None:
    env = {"PATH": "/usr/bin:/bin", "_HARDEN_COMPLETE": "bash_source"}
    harden = [sys.executable, "-m", "harden.cli"]
    source = subprocess.run(harden, env=env, capture_output=True, text=True, check=True)
    assert "_harden_completion()" in source.stdout
    env = {
        **env,
        "_HARDEN_COMPLETE": "bash_complete",
        "COMP_WORDS": "harden ver",
        "COMP_CWORD": "1",
    }
    done = subprocess.run(harden, env=env, capture_output=True, text=True, check=True)
    assert "plain,verify" in done.stdout.splitlines()
