"""The lab's copy of a manifest parses as the manifest does (no root: files only)."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harden.files import load_manifest
from harden.lab.scenario import _with_lab_probers

# Valid under validate's YAML 1.2 core types; YAML 1.1 reads "no" as false and 10:30 as 630.
TRICKY = """version: 1
host: no
services:
  - {name: ssh, port: 22, proto: tcp, comment: 10:30}
  - {name: web, port: 80, proto: tcp, comment: yes}
"""


def test_the_labs_copy_of_a_manifest_keeps_its_values_under_yaml_1_2(tmp_path: Path) -> None:
    """``lab`` rewrites the manifest to add its probing hosts: it must read and write it
    the way validate does, or ``host: no`` and ``comment: 10:30`` pass validate and then
    break the lab (the copy said ``host: false``, ``comment: 630``)."""
    original = tmp_path / "m.yaml"
    original.write_text(TRICKY)
    outside = SimpleNamespace(v4=ip_address("198.19.254.2"), v6=None, extra=())
    lab: Any = SimpleNamespace(outside=outside, allowed=None, more_allowed=[])
    copy = _with_lab_probers(original, lab, tmp_path)
    before, after = load_manifest(original), load_manifest(copy)
    assert after.host == before.host == "no"
    assert [s.comment for s in after.services] == ["10:30", "yes"]
    assert after.services == before.services
    assert after.verify is not None
    assert [str(p) for p in after.verify.probers] == ["198.19.254.2/32"]
