"""Bad manifests: one line naming file and field, exit 2, no traceback. One file per case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harden.errors import ExitStatus, ManifestError
from harden.files import load_manifest
from harden.policy.model import build_policy

from .conftest import REPO

CASES = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_error(case: Path) -> str:
    first = case.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{case} must start with '# error: <message>'"
    return first.removeprefix("# error: ")


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_error_names_file_and_field(case: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(case)
    message = str(caught.value)
    assert message.startswith(f"{case}: ")
    assert expected_error(case) in message
    assert "\n" not in message


@pytest.mark.parametrize("case", CASES[:6], ids=lambda p: p.stem)
def test_cli_prints_one_line_and_exits_2(case: Path) -> None:
    for command in ("validate", "render"):
        proc = subprocess.run(
            [sys.executable, "-m", "harden.cli", command, str(case)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == ExitStatus.USAGE
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"harden: error: {case}: ")
        assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harden.cli", "--debug", "validate", str(CASES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ManifestError" in proc.stderr


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing\.yaml: cannot read: No such file"):
        load_manifest(tmp_path / "missing.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nhost: caf\xe9\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)


def test_validate_reports_every_manifest_not_only_the_first_bad_one(tmp_path: Path) -> None:
    """A repository of manifests is checked whole: each bad one with its file and field,
    the good ones summarised, exit 2 if any is bad; JSON lists all of them in order."""
    bad_port, bad_key = tmp_path / "a.yaml", tmp_path / "c.yaml"
    bad_port.write_text("version: 1\nservices:\n  - {name: x, port: 99999, proto: tcp}\n")
    bad_key.write_text("version: 1\nbogus: 1\n")
    good = REPO / "rulesets" / "web-server.yaml"
    files = [str(bad_port), str(good), str(bad_key)]
    cli = [sys.executable, "-m", "harden.cli", "validate"]
    proc = subprocess.run([*cli, *files], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{bad_port}: services[0].port: port 99999 is outside 1-65535" in proc.stderr
    assert f"{bad_key}: bogus: unknown key 'bogus'" in proc.stderr
    assert "2 of 3 manifests are not valid" in proc.stderr
    assert f"{good}: valid" in proc.stdout
    proc = subprocess.run([*cli, *files, "--format", "json"], capture_output=True, text=True)
    data = json.loads(proc.stdout)
    assert proc.returncode == 2 and data["valid"] is False
    assert [(m["manifest"], m["valid"]) for m in data["manifests"]] == [
        (files[0], False), (files[1], True), (files[2], False),
    ]  # fmt: skip
    assert data["manifests"][0]["field"] == "services[0].port"


def test_one_port_from_disjoint_sources_in_two_entries_is_valid(tmp_path: Path) -> None:
    """ssh from one network, ssh-admin (rate-limited) from another: no address meets
    both rules, so they are two rules, not an overlap. IPv6 off: only IPv4 counts."""
    manifest = tmp_path / "bastion.yaml"
    manifest.write_text(
        "version: 1\npolicy: {ipv6: false}\nservices:\n"
        "  - {name: ssh, port: 22, proto: tcp, sources: [198.18.230.0/25]}\n"
        "  - {name: ssh-admin, ports: [22, 2222], proto: tcp, "
        "sources: [198.18.230.128/26, 198.18.231.0/24], limit: 10/minute}\n"
        "  - {name: web, port: 443, proto: tcp, sources: [198.18.232.0/24]}\n"
        "  - {name: web-admin, port: 443, proto: tcp, sources: [198.18.230.192/26]}\n"
    )
    policy = build_policy(load_manifest(manifest))
    assert [(a.key, [str(r) for r in a.ports]) for a in policy.allows] == [
        ("ssh_tcp", ["22"]),
        ("ssh_admin_tcp", ["22", "2222"]),
        ("web_tcp", ["443"]),
        ("web_admin_tcp", ["443"]),
    ]
