"""An nmap-compatible XML report, so ndiff and tools that ingest nmap XML read harden's results.

Each probed port gets the state nmap would give it for the same reply: a SYN-ACK or a UDP
reply is ``open``, an RST or an ICMP port-unreachable ``closed``, an admin-prohibited
``filtered``, and silence ``filtered`` for TCP and ``open|filtered`` for UDP (from one
reply nmap cannot tell a dropped UDP port from a listener that ignores junk; harden's
proof that the silence is a drop is in its own reports). As nmap does without ``-v``, a
state other than open that more than 25 ports share is summarised in ``extraports``,
the state with most ports first, as nmap 7.93 writes them.

Listed ports carry a service name as nmap's ``table`` method gives it (no version
detection): the caller passes the lookup (harden/files.py reads nmap's own
nmap-services where nmap is installed, so ndiff against a real nmap scan shows no
difference; else /etc/services), and a port neither knows is named after the manifest's
service, else ``unknown``, as nmap does.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable

from harden import __version__
from harden.manifest.ports import expand, parse_port
from harden.verify.classify import NMAP, PortState
from harden.verify.report import Report

# nmap's order of port states (portlist.h): extraports come most ports first, then in it.
_STATE_ORDER = ("closed", "open", "filtered", "unfiltered", "open|filtered", "closed|filtered")
MAX_LISTED = 25  # nmap's max_per_state without -v: more ports in one state are summarised


def nmap_state(proto: str, observed: str) -> tuple[str, str]:
    """The state and reason nmap gives the reply harden observed on one port.

    An observation that is no reply state (silent, or silent with a reason) is silence.
    """
    state = PortState(observed) if observed in _REPLIES else PortState.SILENT
    return NMAP[("tcp" if proto == "tcp" else "udp", state)]


_REPLIES = {PortState.OPEN.value, PortState.CLOSED.value, PortState.REJECTED.value}


ServiceName = Callable[[str, int], str | None]  # (proto, port) -> a table's name, or None


def nmap_xml(report: Report, service_name: ServiceName | None = None) -> str:
    """The report as an ``nmaprun`` document: one host per target.

    With ``service_name``, listed ports name their service as nmap's table method does.
    """
    start = int(report.started)
    end = int(report.started + report.seconds)
    run = ET.Element(
        "nmaprun",
        scanner="harden",
        args="harden verify",
        start=str(start),
        startstr=time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(start)),
        version=__version__,
        xmloutputversion="1.05",
    )
    up = 0
    for target in report.targets:
        # (proto, port) -> (state, reason)
        ports: dict[tuple[str, int], tuple[str, str]] = {}
        for span in [*report.spans, *report.unproven]:
            if span.target == target:
                state = nmap_state(span.proto, str(span.observed))
                for port in expand(parse_port(text) for text in span.ranges):
                    ports[(span.proto, port)] = state
        declared: dict[tuple[str, int], str] = {}
        for entry in report.entries:
            if entry.target == target and entry.port:
                ports[(entry.proto, entry.port)] = nmap_state(entry.proto, entry.observed)
                if entry.service:
                    declared[(entry.proto, entry.port)] = entry.service
        alive = target in report.alive
        up += alive
        host = ET.SubElement(run, "host", starttime=str(start), endtime=str(end))
        ET.SubElement(
            host,
            "status",
            state="up" if alive else "down",
            reason="harden" if alive else "no-response",
            reason_ttl="0",
        )
        family = "ipv6" if ":" in target else "ipv4"
        ET.SubElement(host, "address", addr=target, addrtype=family)
        _ports(ET.SubElement(host, "ports"), ports, service_name, declared)
    stats = ET.SubElement(run, "runstats")
    ET.SubElement(
        stats,
        "finished",
        time=str(end),
        timestr=time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(end)),
        elapsed=f"{report.seconds:.2f}",
        summary=f"harden verify: {report.verdict_line}",
        exit="success",
    )
    total = len(report.targets)
    ET.SubElement(stats, "hosts", up=str(up), down=str(total - up), total=str(total))
    ET.indent(run)
    body = ET.tostring(run, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE nmaprun>\n' + body + "\n"


def _ports(
    parent: ET.Element,
    ports: dict[tuple[str, int], tuple[str, str]],
    service_name: ServiceName | None,
    declared: dict[tuple[str, int], str],
) -> None:
    by_state: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    for (proto, port), (state, reason) in ports.items():
        by_state[state].append((proto, port, reason))
    summarised = {s for s, items in by_state.items() if s != "open" and len(items) > MAX_LISTED}
    for state in sorted(summarised, key=lambda s: (-len(by_state[s]), _STATE_ORDER.index(s))):
        items = by_state[state]
        extra = ET.SubElement(parent, "extraports", state=state, count=str(len(items)))
        reasons: dict[tuple[str, str], int] = defaultdict(int)
        for proto, _, reason in items:
            reasons[(reason, proto)] += 1
        for (reason, proto), count in sorted(reasons.items()):
            ET.SubElement(extra, "extrareasons", reason=reason, count=str(count), proto=proto)
    listed = sorted(
        (proto, port, state, reason)
        for state, items in by_state.items()
        if state not in summarised
        for proto, port, reason in items
    )
    for proto, port, state, reason in listed:
        element = ET.SubElement(parent, "port", protocol=proto, portid=str(port))
        ET.SubElement(element, "state", state=state, reason=reason, reason_ttl="0")
        if service_name is not None:
            name = service_name(proto, port) or declared.get((proto, port)) or "unknown"
            ET.SubElement(element, "service", name=name, method="table", conf="3")
