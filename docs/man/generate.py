"""Write harden's man pages: harden.1, one per command, and harden-manifest.5.

The command pages are click-man's, from the CLI's own help; their NAME line is the
command's short help or its help's first sentence (never click's truncation), and
harden.1 gets the sections a sysadmin looks for (harden_page.py). harden-manifest.5
walks the manifest's models (manifest_page.py). Nothing here is written by hand. Run by
``make man``; tests/test_man.py fails when the committed pages are out of date.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import harden_page
import manifest_page
import roff
from click_man.man import ManPage  # type: ignore[import-untyped]

from harden import __version__
from harden.cli import cli

REPO = Path(__file__).resolve().parents[2]
MANIFEST_EXAMPLE = REPO / "rulesets" / "web-server.yaml"
BACKEND_PAGES = [("nft", 8), ("iptables", 8)]


def summary(command: click.Command) -> str:
    """The NAME line's words: the short help, else the help's first sentence, in full."""
    text = command.short_help or (command.help or "").strip()
    first = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join(first.split()), maxsplit=1)[0]
    sentence = sentence.rstrip(".")
    # "list directory contents": lower case, unless the first word is a name (MANIFEST).
    return sentence if sentence[:2].isupper() else sentence[:1].lower() + sentence[1:]


def contexts(ctx: click.Context) -> Iterator[click.Context]:
    """``ctx`` and the context of every command under it that is not hidden."""
    yield ctx
    for name, command in getattr(ctx.command, "commands", {}).items():
        if not command.hidden:
            yield from contexts(click.Context(command, info_name=name, parent=ctx))


def page_name(ctx: click.Context) -> str:
    """``harden-schedule-verify``: the page's name (and its file's, with the section)."""
    return ctx.command_path.replace(" ", "-")


def command_page(ctx: click.Context, date: str) -> str:
    """click-man's page of ``ctx``'s command, its text escaped for roff, without SEE ALSO."""
    command = ctx.command
    page = ManPage(ctx.command_path)
    page.version = __version__
    page.date = date
    page.short_help = roff.escape(summary(command))
    page.description = roff.help_text(command.help or "")
    page.synopsis = " ".join(command.collect_usage_pieces(ctx))
    records = (p.get_help_record(ctx) for p in command.params if isinstance(p, click.Option))
    page.options = [(opts, roff.escape(text)) for opts, text in filter(None, records)]
    subcommands = getattr(command, "commands", {}).items()
    page.commands = [(n, roff.escape(summary(c))) for n, c in subcommands if not c.hidden]
    # click-man refers to "harden schedule-verify(1)": the page is harden-schedule-verify.
    return str(page).replace(f"\\fB{ctx.command_path}-", f"\\fB{page_name(ctx)}-")


def see_also(ctx: click.Context, every: list[str]) -> list[str]:
    """harden(1), the parent and child pages, harden-manifest(5); all pages for harden(1)."""
    if ctx.parent is None:
        return roff.see_also([(manifest_page.NAME, 5), *((n, 1) for n in every), *BACKEND_PAGES])
    family = [page_name(c) for c in contexts(ctx)][1:]
    if ctx.parent.parent is not None:
        family.insert(0, page_name(ctx.parent))
    return roff.see_also([("harden", 1), *((n, 1) for n in family), (manifest_page.NAME, 5)])


def harden_sections() -> list[str]:
    """harden(1)'s sections after COMMANDS, before SEE ALSO."""
    return [
        *harden_page.exit_status(),
        *harden_page.environment(cli),
        *harden_page.files(cli),
        *harden_page.examples(cli),
    ]


def generate(target: Path, date: str) -> None:
    """Write every page into ``target`` (created if missing)."""
    target.mkdir(parents=True, exist_ok=True)
    pages = list(contexts(click.Context(cli, info_name="harden")))
    every = sorted(page_name(ctx) for ctx in pages[1:])
    for ctx in pages:
        lines = harden_sections() if ctx.parent is None else []
        text = command_page(ctx, date) + "\n".join([*lines, *see_also(ctx, every)]) + "\n"
        (target / f"{page_name(ctx)}.1").write_text(text)
    manifest = manifest_page.page(date, __version__, MANIFEST_EXAMPLE)
    (target / f"{manifest_page.NAME}.5").write_text(manifest)


if __name__ == "__main__":
    generate(Path(sys.argv[1]), sys.argv[2])
