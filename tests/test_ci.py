"""``harden ci`` end to end on a scratch git repository of manifests, one branch per kind of
pull request: open a port, narrow one, close one, a typo, an SSH lockout, an egress
change (and a port the manifest says must never open). Most run without the lab
(--no-lab, what they judge is the manifests); one runs it, and the GitHub Actions example
of docs/ci.md runs as the script it is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml

from .conftest import REPO

HARDEN = [sys.executable, "-m", "harden.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
WEB = """version: 1
host: web-1
policy: {closed: drop, ipv6: true}
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: http3, port: 443, proto: udp}
ci:
  never_open: [tcp/23]
"""
DNS = (REPO / "rulesets" / "dns-server.yaml").read_text()
API = "  - {name: api, port: 8080, proto: tcp}\n"
PULLS: dict[str, Callable[[str], str]] = {
    "open": lambda t: t.replace("ci:\n", API + "ci:\n"),
    "narrow": lambda t: t.replace("ports: [80, 443], proto: tcp}", "ports: [80, 443], "
                                  "proto: tcp, sources: [198.18.0.0/24]}"),
    "close": lambda t: t.replace("  - {name: http3, port: 443, proto: udp}\n", ""),
    "typo": lambda t: t.replace("port: 443, proto: udp", "port: 443, proto: udpp"),
    "lockout": lambda t: t.replace("port: 22,", "port: 2222,"),
    "egress": lambda t: t.replace("ci:\n", "egress:\n  policy: reject\n  allow:\n"
                                  "    - {name: ntp, port: 123, proto: udp}\nci:\n"),
    "telnet": lambda t: t.replace("ci:\n", "  - {name: telnet, port: 23, proto: tcp}\nci:\n"),
}  # fmt: skip


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: web.yaml and dns.yaml; a branch per pull request, each changing web.yaml."""
    root = tmp_path_factory.mktemp("manifests")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "ci@example.org")
    git(root, "config", "user.name", "ci")
    (root / "hosts").mkdir()
    (root / "hosts" / "web.yaml").write_text(WEB)
    (root / "dns.yaml").write_text(DNS)
    (root / ".gitlab-ci.yml").write_text("stages: [test]\n")  # not a manifest: hidden
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "base")
    for name, change in PULLS.items():
        git(root, "checkout", "-q", "-b", name, "main")
        (root / "hosts" / "web.yaml").write_text(change(WEB))
        git(root, "commit", "-q", "-am", name)
    git(root, "checkout", "-q", "main")
    return root


def ci(repo: Path, head: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HARDEN, "ci", "main", head, "--repo", str(repo), "--no-lab", *args],
        capture_output=True, text=True, cwd="/", env=ENV, timeout=300,
    )  # fmt: skip


def test_opening_narrowing_and_closing_a_port_pass_and_say_what_changes(repo: Path) -> None:
    opened = ci(repo, "open")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    assert "⚠ opens tcp/8080 to any IPv4 and IPv6 source" in opened.stdout
    assert "hosts/web.yaml (changed): ok" in opened.stdout and "dns.yaml" not in opened.stdout
    narrowed = ci(repo, "narrow", "--format", "json")
    assert narrowed.returncode == 0, narrowed.stdout
    [web] = [m for m in json.loads(narrowed.stdout)["manifests"] if m["path"] == "hosts/web.yaml"]
    # IPv4 narrows to the network; IPv6, which it does not name, closes: neither is ⚠.
    assert [c["change"] for c in web["changes"]] == ["narrows", "closes"]
    assert web["warnings"] == []
    closed = ci(repo, "close")
    assert closed.returncode == 0 and "closes udp/443 to any" in closed.stdout, closed.stdout
    assert "not tested: the lab (--no-lab)" in closed.stdout


def test_a_typo_is_exit_2_with_file_line_and_field_as_an_annotation(repo: Path) -> None:
    proc = ci(repo, "typo", "--format", "github")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = 1 + WEB.splitlines().index("  - {name: http3, port: 443, proto: udp}")
    assert re.search(
        rf"^::error file=hosts/web.yaml,line={line}::.*services\[2\]\.proto", proc.stdout, re.M
    ), proc.stdout
    assert proc.stdout.rstrip().endswith("INVALID: 1 changed of 2 manifests, 1 failing")


def test_an_ssh_lockout_fails_unless_it_is_said_to_be_meant(repo: Path) -> None:
    proc = ci(repo, "lockout", "--format", "markdown")
    assert proc.returncode == 1, proc.stdout
    assert (
        "❌ **ssh**: closes SSH (tcp/22, served by BASE): new logins from 198.18.1.0/24, "
        "fd00:1::/64 would be refused" in proc.stdout
    )
    assert "⚠ closes tcp/22" in proc.stdout  # an admin port closing is marked for review
    meant = ci(repo, "lockout", "--allow-ssh-change")
    assert meant.returncode == 0, meant.stdout


def test_an_egress_change_and_the_manifests_own_and_given_assertions(
    repo: Path, tmp_path: Path
) -> None:
    egress = ci(repo, "egress", "--junit", str(tmp_path / "j.xml"))
    assert egress.returncode == 0, egress.stdout
    assert "egress" in egress.stdout and "udp/123" in egress.stdout
    telnet = ci(
        repo, "telnet", "--junit", str(tmp_path / "t.xml"), "--summary", str(tmp_path / "s.md")
    )
    assert telnet.returncode == 1
    assert "FAIL never_open: tcp/23: tcp/23 is open to any source" in telnet.stdout
    suite = ET.parse(tmp_path / "t.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "hosts/web.yaml"
    [failed] = [t for t in suite.iter("testcase") if t.find("failure") is not None]
    assert failed.get("name") == "assertions" and failed.get("time") is not None
    assert "tcp/23" in (failed.find("failure").get("message") or "")  # type: ignore[union-attr]
    assert "## harden ci: FAIL" in (tmp_path / "s.md").read_text()
    kept = ci(repo, "close", "--keep", "udp/443")
    assert kept.returncode == 1 and "udp/443 is closed" in kept.stdout, kept.stdout
    bad = ci(repo, "close", "--keep", "udp443")
    assert bad.returncode == 2 and "--keep" in bad.stderr


def test_directories_work_as_well_as_revisions_and_a_bad_ref_is_exit_2(
    repo: Path, tmp_path: Path
) -> None:
    base, head = tmp_path / "base", tmp_path / "head"
    for tree, ref in ((base, "main"), (head, "lockout")):
        tree.mkdir()
        (tree / "web.yaml").write_text(git(repo, "show", f"{ref}:hosts/web.yaml"))
    proc = subprocess.run([*HARDEN, "ci", str(base), str(head), "--no-lab"],
                          capture_output=True, text=True, env=ENV)  # fmt: skip
    assert proc.returncode == 1 and "closes SSH" in proc.stdout
    nothing = ci(repo, "no-such-branch")
    assert nothing.returncode == 2 and "neither a directory nor a git revision" in nothing.stderr


@pytest.mark.netns
def test_the_github_example_runs_the_lab_and_reports(repo: Path, tmp_path: Path) -> None:
    """docs/ci.md's GitHub Actions job, its 'harden ci' step run as the script it is, on a
    pull request that opens a port: the lab loads and proves the change (root), the
    annotations mark what opens, and the JUnit and summary files are written."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    doc = (REPO / "docs" / "ci.md").read_text()
    workflow = yaml.safe_load(
        doc.split("## GitHub Actions", 1)[1].split("```yaml", 1)[1].split("```")[0]
    )
    [step] = [s for s in workflow["jobs"]["harden-ci"]["steps"] if s.get("name") == "harden ci"]
    work = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    git(work, "checkout", "-q", "open")
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    venv_bin = work / ".harden" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "harden").write_text(f'#!/bin/sh\nexec {sys.executable} -m harden.cli "$@"\n')
    for shim in (shims / "sudo", venv_bin / "harden"):
        shim.chmod(0o755)
    for name in ("harden-ci.xml", "harden-ci.md"):
        Path("/tmp", name).unlink(missing_ok=True)
    env = {**ENV, "GITHUB_BASE_REF": "main", "PATH": f"{shims}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "::warning file=hosts/web.yaml::opens tcp/8080 to any IPv4 and IPv6 source" in proc.stdout
    )
    junit = ET.parse("/tmp/harden-ci.xml").getroot()
    lab = [t for t in junit.iter("testcase") if t.get("name") == "lab"]
    assert lab and lab[0].find("failure") is None and float(lab[0].get("time") or 0) > 1
    assert "## harden ci: PASS" in Path("/tmp/harden-ci.md").read_text()


def test_other_yaml_is_not_a_manifest_and_bytes_are_compared_as_bytes(tmp_path: Path) -> None:
    """A compose file (version "3.8", services), Kubernetes multi-document YAML, a file
    that is not UTF-8 and one with CRLF line ends: none is taken for a broken manifest,
    and an unchanged file is unchanged whether BASE is a directory or a revision. A
    manifest with a YAML syntax error is invalid with the line the parser gives."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ci@example.org")
    git(repo, "config", "user.name", "ci")
    (repo / "web.yaml").write_bytes(WEB.replace("\n", "\r\n").encode())
    (repo / "compose.yml").write_text('version: "3.8"\nservices:\n  web: {image: nginx}\n')
    (repo / "k8s.yaml").write_text("apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: B\n")
    (repo / "notes.yaml").write_bytes("title: caf\xe9\n".encode("latin-1"))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    same = subprocess.run([*HARDEN, "ci", "main", str(repo), "--repo", str(repo), "--no-lab"],
                          capture_output=True, text=True, cwd="/", env=ENV)  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "PASS: 0 changed of 1 manifests" in same.stdout, same.stdout
    (repo / "broken.yaml").write_text("version: 1\nservices:\n  - {name: a, port: 1\n")
    broken = subprocess.run(
        [*HARDEN, "ci", "main", str(repo), "--repo", str(repo), "--no-lab", "--format", "github"],
        capture_output=True, text=True, cwd="/", env=ENV,
    )  # fmt: skip
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert re.search(r"^::error file=broken.yaml,line=\d+::", broken.stdout, re.M), broken.stdout


def test_ssh_kept_sees_a_hole_inside_an_ssh_port_range() -> None:
    """BASE serves ssh on 2200-2210; HEAD on 2200 and 2210 only: 2201-2209 close."""
    from harden.manifest.parse import manifest_from_text
    from harden.policy.checks import ssh_kept
    from harden.policy.model import build_policy

    def policy(ports: str) -> Any:
        text = f"version: 1\nservices:\n  - {{name: ssh, ports: [{ports}], proto: tcp}}\n"
        return build_policy(manifest_from_text(text, "m.yaml"))

    [failure] = ssh_kept(policy("2200-2210"), policy("2200, 2210"))
    assert failure.message.startswith("closes SSH (tcp/2201, served by BASE)"), failure
    assert ssh_kept(policy("2200-2210"), policy("2200-2210")) == []
