"""Ports and port ranges: parsing, expansion and compression, in one place."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# Resolves a service name (``https``) to its port, or None if unknown. The shell reads
# /etc/services (harden.files); the core only ever sees this function.
ServicePort = Callable[[str], int | None]


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive range of ports; a single port has ``first == last``."""

    first: int
    last: int

    def __str__(self) -> str:
        """Render as ``80`` or ``10000-10100`` (nftables and manifest syntax)."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __iter__(self) -> Iterator[int]:
        """Every port in the range, in order."""
        return iter(range(self.first, self.last + 1))

    def __len__(self) -> int:
        """How many ports the range holds."""
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        """Whether ``port`` lies in the range."""
        return isinstance(port, int) and self.first <= port <= self.last

    def overlaps(self, other: PortRange) -> bool:
        """Whether the two ranges share at least one port."""
        return self.first <= other.last and other.first <= self.last


ALL = PortRange(1, 65535)
# Plain decimal, no sign and no leading zero (0120 is octal 80 to some readers).
_DECIMAL = re.compile(r"[1-9][0-9]*")
_RANGE = re.compile(r"([1-9][0-9]*)\s*-\s*([1-9][0-9]*)")
_SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*")


def check_port(number: int) -> int:
    """``number`` if it is a port (1-65535), else ValueError."""
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is outside 1-65535")
    return number


def parse_port(value: object, service_port: ServicePort | None = None) -> PortRange:
    """Parse ``80``, ``"80"``, ``"10000-10100"`` or a service name (via ``service_port``)."""
    if isinstance(value, PortRange):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        port = check_port(value)
        return PortRange(port, port)
    if isinstance(value, str):
        text = value.strip()
        # ASCII only: str.isdigit() and int() also take "８０" (full-width) and "٨٠".
        if _DECIMAL.fullmatch(text):
            port = check_port(int(text))
            return PortRange(port, port)
        if match := _RANGE.fullmatch(text):
            first, last = (check_port(int(g)) for g in match.groups())
            if first > last:
                raise ValueError(f"reversed port range {text!r} (first port must be <= last)")
            return PortRange(first, last)
        if _SERVICE_NAME.fullmatch(text):
            port_or_none = service_port(text) if service_port is not None else None
            if port_or_none is None:
                raise ValueError(f"unknown service name {text!r} (not in /etc/services)")
            return PortRange(port_or_none, port_or_none)
    raise ValueError(f"expected a port 1-65535, a range 'N-M' or a service name, got {show(value)}")


_SHOW = reprlib.Repr()
_SHOW.maxlevel = 2
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 4
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlong = 20


def show(value: object) -> str:
    """A short repr of a bad value for an error message.

    Bounded while it is built (reprlib), not cut afterwards: a value made of nested YAML
    aliases can stand for billions of items that a plain repr() would walk.
    """
    try:
        text = _SHOW.repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def expand(ranges: Iterable[PortRange]) -> Iterator[int]:
    """Every port of every range, in the ranges' order."""
    for rng in ranges:
        yield from rng


def merge(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sort ranges and merge the overlapping or adjacent ones."""
    merged: list[PortRange] = []
    for rng in sorted(ranges):
        if merged and rng.first <= merged[-1].last + 1:
            if rng.last > merged[-1].last:
                merged[-1] = PortRange(merged[-1].first, rng.last)
        else:
            merged.append(rng)
    return tuple(merged)


def compress(ports: Iterable[int]) -> tuple[PortRange, ...]:
    """Sorted ports as the fewest ranges: 1,2,3,5 -> 1-3, 5."""
    out: list[PortRange] = []
    for port in ports:
        if out and port == out[-1].last + 1:
            out[-1] = PortRange(out[-1].first, port)
        else:
            out.append(PortRange(port, port))
    return tuple(out)
