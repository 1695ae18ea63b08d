"""Text helpers shared by every message harden prints."""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """Collapse all whitespace (newlines from tools' stderr included) into single spaces."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


# C0 and C1 controls (tab and newline kept), DEL, and the bidirectional overrides and
# isolates that can make a terminal show text in another order than it is.
_HOSTILE = {
    *range(0x00, 0x09),
    *range(0x0B, 0x20),
    0x7F,
    *range(0x80, 0xA0),
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
}
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _HOSTILE}


def printable(text: str) -> str:
    """``text`` with control characters and escape sequences shown as hex escapes (ESC: x1b).

    What harden prints or writes can carry strings from elsewhere (a target's witness
    output, a sink, a manifest, a process name): none may drive the terminal or make a
    JUnit or nmap XML file invalid (docs/design.md, "Input that is not what it looks like").
    """
    return text.translate(_ESCAPES)
