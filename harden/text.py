"""Text helpers shared by every message harden prints."""

from __future__ import annotations


def one_line(text: object, limit: int | None = None) -> str:
    """Collapse all whitespace (newlines from tools' stderr included) into single spaces."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"
