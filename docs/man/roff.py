"""roff for the man page generators: text made inert, help text as paragraphs, SEE ALSO."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable

# click keeps a paragraph that starts with a line holding only "\b" as written.
NO_REWRAP = "\b"


def escape(line: str) -> str:
    r"""One line of text that roff prints as written: ``\`` shown, never a control line."""
    line = line.replace("\\", "\\e")
    return "\\&" + line if line.startswith((".", "'")) else line


def code(line: str) -> str:
    r"""A command or a file's line: escaped, and ``-`` as ``\-`` so that it copies as typed."""
    return escape(line).replace("-", "\\-")


def bold(text: str) -> str:
    """``text`` in bold, within a line."""
    return f"\\fB{escape(text)}\\fR"


def inline(text: str) -> str:
    """Docstring text: escaped, its ``literals`` in bold."""
    return re.sub(r"``([^`]+)``", lambda m: bold(m.group(1)), escape(text))


def help_text(text: str) -> str:
    r"""Click help (or a docstring) as roff: paragraphs, click's "\b" ones unfilled."""
    out: list[str] = []
    for number, paragraph in enumerate(inspect.cleandoc(text).split("\n\n")):
        lines = paragraph.split("\n")
        if number:
            out.append(".PP")
        if lines[0] == NO_REWRAP:
            out += [".nf", *map(escape, lines[1:]), ".fi"]
        else:
            out += map(inline, lines)
    return "\n".join(out)


def example(lines: Iterable[str]) -> list[str]:
    """Lines shown as written (a file, commands), indented."""
    return [".PP", ".RS 4", ".nf", *map(code, lines), ".fi", ".RE"]


def see_also(pages: Iterable[tuple[str, int]]) -> list[str]:
    """A SEE ALSO section: each (name, section) in bold, comma-separated, never hyphenated."""
    refs = [f"\\fB\\%{code(name)}\\fR({section})" for name, section in pages]
    return [".SH SEE ALSO", ".ad l", *(ref + "," for ref in refs[:-1]), *refs[-1:]]
