"""Report formats: every format a verify report can be written in, registered in ``FORMATS``.

``FORMATS`` drives the CLI's ``--format`` choice, its dispatch and ``api.verify(format=…)``;
a new format is one module here and one entry below (docs/contributing.md, "Adding an
output format"). Judging stays with verify (harden.verify.report): a format only renders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from harden.outputs.jsondoc import verify_json
from harden.outputs.junit import verify_junit
from harden.outputs.metrics import verify_metrics
from harden.outputs.nmapxml import ServiceName, nmap_xml
from harden.outputs.table import verify_text
from harden.verify.report import Report


@dataclass(frozen=True)
class Format:
    """One way to write a verify report."""

    name: str
    render: Callable[[Report, ServiceName | None], str]
    # True: the format names ports' services as nmap would (the caller reads the tables).
    services: bool = False


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("text", lambda report, _: verify_text(report)),
        Format("json", lambda report, _: json.dumps(verify_json(report), indent=2) + "\n"),
        Format("junit", lambda report, _: verify_junit(report)),
        Format("prometheus", lambda report, _: verify_metrics(report)),
        Format("nmap-xml", nmap_xml, services=True),
    )
}


def write(report: Report, name: str, services: ServiceName | None = None) -> str:
    """The report in format ``name`` (a key of FORMATS)."""
    return FORMATS[name].render(report, services)
