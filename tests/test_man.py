"""The man pages are generated (the CLI's own help, the manifest's models), committed, current."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harden.manifest.model import Manifest

from .conftest import REPO

MAN = REPO / "docs" / "man"
PAGES = sorted(MAN.glob("*.[15]"))
MAN_ENV = {
    "MANPAGER": "cat",
    "PAGER": "cat",
    "MANWIDTH": "80",
    "PATH": "/usr/bin:/bin",
    "LC_ALL": "C.UTF-8",  # the help's own characters (ci's ⚠) exist in UTF-8 only
}


def test_the_committed_man_pages_match_the_cli(tmp_path: Path) -> None:
    """Fails when a command, option or help text changed without 'make man'."""
    header = (MAN / "harden.1").read_text().splitlines()[0]  # .TH "HARDEN" "1" DATE VERSION
    date = shlex.split(header)[3]
    subprocess.run([sys.executable, str(MAN / "generate.py"), str(tmp_path), date], check=True)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.[15]")}
    committed = {p.name: p.read_text() for p in PAGES}
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert stale == [], f"run 'make man': out of date: {stale}"
    assert {"harden.1", "harden-verify.1", "harden-sink.1", "harden-manifest.5"} <= fresh.keys()


def _man(page: Path) -> str:
    """The page as man shows it; roff's warnings (a line lost to a stray '.') fail."""
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        check=False,
        env=MAN_ENV,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def _sections(text: str) -> dict[str, str]:
    """A rendered page's sections by heading (headings are the unindented lines).

    A line broken after a name's hyphen (harden-\n       verify(1)) is joined again.
    """
    text = re.sub(r"(?<=-)\n +(?=\S)", "", text)
    parts = re.split(r"^(\S.*)$", text, flags=re.M)[1:]
    return dict(zip(parts[0::2], parts[1::2], strict=True))


def test_man_renders_the_page() -> None:
    text = _man(MAN / "harden.1")
    assert "SYNOPSIS" in text and "harden-verify(1)" in text


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_page_renders_and_names_itself_in_full(page: Path) -> None:
    see_also = _sections(_man(page))["SEE ALSO"]
    lines = page.read_text().splitlines()
    name = lines[lines.index(".SH NAME") + 1]
    assert " \\- " in name and "..." not in name and "…" not in name, name
    if page.name not in ("harden.1", "harden-manifest.5"):
        assert "harden(1)" in see_also and "harden-manifest(5)" in see_also
    assert page.name == "harden.1" or "harden(1)" in see_also


def test_harden_1_has_the_sections_a_sysadmin_expects() -> None:
    sections = _sections(_man(MAN / "harden.1"))
    for heading in ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"):
        assert sections.get(heading, "").strip(), f"harden.1 has no {heading}"
    assert "HARDEN_STATE_DIR" in sections["ENVIRONMENT"]
    assert "/var/lib/harden/" in sections["FILES"]
    assert "harden apply web.yaml --confirm 120" in sections["EXAMPLES"]
    for page in PAGES:
        ref = f"{page.stem}({page.suffix[1:]})"
        assert page.name == "harden.1" or ref in sections["SEE ALSO"], ref


def test_the_manifest_page_documents_every_top_level_field() -> None:
    sections = _sections(_man(MAN / "harden-manifest.5"))
    assert {"NAME", "DESCRIPTION", "FIELDS", "EXAMPLE", "SEE ALSO"} <= sections.keys()
    fields = re.split(r"^ {3}\S", sections["FIELDS"], flags=re.M)[0]  # before any subsection
    for name in Manifest.model_fields:
        assert re.search(rf"^ {{7}}{name}\b", fields, re.M), f"harden-manifest.5 misses {name}"
    assert "name: web, ports: [http, https]" in sections["EXAMPLE"]


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
