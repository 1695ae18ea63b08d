"""Outputs other tools read, checked with those tools on the lab: ndiff against a real nmap
scan of the same host, prometheus_client's parser on the textfile-collector metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harden.lab.netns import Namespace

from .conftest import REPO
from .labutil import HARDEN, lab_for

pytestmark = pytest.mark.netns
WEB = REPO / "rulesets" / "web-server.yaml"


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text file: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_ndiff_sees_no_port_state_difference_from_nmap(tmp_path: Path) -> None:
    if shutil.which("ndiff") is None:
        pytest.skip("ndiff is not installed (Debian package ndiff; make install adds it)")
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        lab.server.ns.run([*HARDEN, "apply", WEB, "--state-dir", tmp_path / "st"])
        target = str(lab.server.v4)
        ours, theirs = tmp_path / "harden.xml", tmp_path / "nmap.xml"
        lab.outside.ns.run(
            [*HARDEN, "verify", WEB, "--target", target, "--ports", "1-1000",
             "--format", "nmap-xml", "-o", ours],
            timeout=120,
        )  # fmt: skip
        lab.outside.ns.run(
            ["nmap", "-n", "-Pn", "-sS", "-sU", "-p", "1-1000", "--max-retries", "1",
             "--min-rate", "5000", "-oX", theirs, target],
            timeout=300,
        )  # fmt: skip
    diff = subprocess.run(["ndiff", theirs, ours], capture_output=True, text=True, check=False)
    assert diff.returncode in (0, 1), diff.stderr
    # ndiff lists a port whose state or service name differs as a -/+ pair: none may.
    changed = re.findall(r"^[-+](\d+/(?:tcp|udp))\s+(\S+)\s+(\S+)", diff.stdout, re.M)
    assert changed == [], diff.stdout
    assert not re.search(r"^[-+]Not shown", diff.stdout, re.M), diff.stdout  # same extraports
    xml = ours.read_text()
    assert '<service name="http" method="table" conf="3"' in xml  # nmap-services' names
    assert '<service name="https" method="table" conf="3"' in xml


def test_prometheus_metrics_parse_and_flip_on_drift(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        srv = lab.server.ns
        srv.run([*HARDEN, "apply", WEB, "--state-dir", tmp_path / "st"])
        target = str(lab.server.v4)
        prom, drift = tmp_path / "verify.prom", tmp_path / "drift.prom"

        def verify() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            lab.outside.ns.run(
                [*HARDEN, "verify", WEB, "--target", target, "--ports", "30000-32000",
                 "--format", "prometheus", "-o", prom],
                check=False,
                timeout=120,
            )  # fmt: skip
            return samples(prom)

        def drifted() -> float:
            srv.run([*HARDEN, "diff", WEB, "--format", "prometheus", "-o", drift], check=False)
            return samples(drift)[("harden_drift", (("backend", "nftables"),))]

        before = verify()
        assert before[("harden_verify_success", ())] == 1
        assert before[("harden_verify_target_verdict", (("target", target), ("verdict", "pass")))]
        assert before[("harden_verify_deviations_total", (("target", target),))] == 0
        assert before[("harden_verify_ports_probed", (("target", target),))] >= 2 * 2001
        assert before[("harden_verify_last_run_timestamp_seconds", ())] > 1.7e9
        assert drifted() == 0
        assert before[("harden_verify_up", ())] == 1
        assert samples(drift)[("harden_diff_up", (("backend", "nftables"),))] == 1

        # Someone opens a port by hand: nothing listens, so it leaks an RST.
        srv.run(["nft", "insert rule inet harden input tcp dport 31337 accept"])
        after = verify()
        assert after[("harden_verify_success", ())] == 0
        assert after[("harden_verify_target_verdict", (("target", target), ("verdict", "fail")))]
        key = (("observed", "closed"), ("proto", "tcp"), ("target", target))
        assert after[("harden_verify_deviations", key)] == 1
        assert drifted() == 1


def test_a_run_that_cannot_judge_rewrites_its_metrics_as_down(tmp_path: Path) -> None:
    """The last good run's file must not outlive a verify that stopped on an error (exit 4:
    its witness could not be read) or a diff that could not compare (exit 2: a manifest
    that does not validate): harden_verify_success 0, harden_verify_up 0, harden_diff_up 0."""
    with lab_for(WEB) as lab:
        lab.wait_reachable()
        prom, drift = tmp_path / "verify.prom", tmp_path / "drift.prom"
        prom.write_text("harden_verify_success 1\n")  # what the last good run left
        drift.write_text('harden_drift{backend="nftables"} 0\n')
        target = str(lab.server.v4)
        proc = lab.outside.ns.run(
            [*HARDEN, "verify", WEB, "--target", target, "--witness", "exit 3",
             "--format", "prometheus", "-o", prom],
            check=False,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 4, proc.stderr
        down = samples(prom)
        assert down[("harden_verify_success", ())] == 0
        assert down[("harden_verify_up", (("exit", "4"),))] == 0
        assert down[("harden_verify_last_run_timestamp_seconds", ())] > 1.7e9
        broken = tmp_path / "broken.yaml"
        broken.write_text("version: 1\nservices: [{name: x, port: 99999, proto: tcp}]\n")
        proc = lab.server.ns.run(
            [*HARDEN, "diff", broken, "--format", "prometheus", "-o", drift], check=False
        )
        assert proc.returncode == 2, proc.stderr
        gone = samples(drift)
        assert gone[("harden_diff_up", (("backend", "nftables"), ("exit", "2")))] == 0
        assert not [key for key in gone if key[0] == "harden_drift"]  # not "no drift"


def test_every_json_output_names_its_schema(
    netns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    """A consumer (CI, Ansible, a dashboard) can tell what it reads: every command's JSON
    carries a ``schema`` field, ``harden.<what>/<version>``."""
    ns = netns("schema")
    web, dns = REPO / "rulesets" / "web-server.yaml", REPO / "rulesets" / "dns-server.yaml"
    state = ["--state-dir", str(tmp_path / "state")]
    runs = {
        "harden.validate/1": ["validate", str(web), str(dns)],
        "harden.apply/1": ["apply", str(web), *state, "--no-persist", "--root", str(tmp_path)],
        "harden.status/1": ["status", *state, "--root", str(tmp_path)],
        "harden.drift/1": ["diff", str(web)],
        "harden.exposure/1": ["diff", str(web), str(dns)],
        "harden.analysis/1": ["analyze"],
        "harden.explain/1": ["explain", "tcp/22", "--from", "198.18.1.9"],
        "harden.counters/4": ["counters"],
        "harden.remove/1": ["remove", *state, "--root", str(tmp_path)],
    }
    for schema, args in runs.items():
        proc = ns.run([*HARDEN, *args, "--format", "json"], check=False)
        assert proc.returncode in (0, 1), (args, proc.stderr)
        assert json.loads(proc.stdout)["schema"] == schema, (args, proc.stdout[:300])


def test_diff_labels_name_old_and_new_instead_of_their_paths() -> None:
    """CI checks manifests out into temp directories: --label shows the repository paths."""
    web, dns = REPO / "rulesets" / "web-server.yaml", REPO / "rulesets" / "dns-server.yaml"
    labels = ["--label", "main:rulesets/web.yaml", "--label", "pr-7:rulesets/web.yaml"]
    proc = subprocess.run(
        [*HARDEN, "diff", str(web), str(dns), *labels, "--format", "json"],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    data = json.loads(proc.stdout)
    assert (data["old"], data["new"]) == ("main:rulesets/web.yaml", "pr-7:rulesets/web.yaml")
    once = subprocess.run(
        [*HARDEN, "diff", str(web), str(dns), "--label", "x"], capture_output=True, text=True
    )
    assert once.returncode == 2 and "give it twice" in once.stderr
