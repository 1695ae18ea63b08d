"""Everything that reaches the host obeys the manifest: real dockerd, kube-proxy's NodePort
rules and per-source limits, in namespaces, with both backends (docs/design.md,
"Translated traffic: Docker, Kubernetes, port forwards")."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

from .dockerlab import Dockerd, DockerUnavailable
from .kubelab import kube_node
from .labutil import HARDEN, failing, lab_for, nmap, statuses, verify_from, write

pytestmark = pytest.mark.netns
BACKENDS = ["nftables", "iptables"]

DOCKER_HOST = """\
version: 1
policy: {trusted_interfaces: [docker0, "br-*"]}
services:
  - {name: ssh, port: 22, proto: tcp}
forward: {policy: drop}
"""
# The same host once port 8080, published by a container, is declared.
DOCKER_HOST_8080 = DOCKER_HOST.replace(
    "forward:", "  - {name: app, port: 8080, proto: tcp}\nforward:"
)

K8S_NODE = """\
version: 1
policy: {trusted_interfaces: [cni0]}
services:
  - {name: ssh, port: 22, proto: tcp}
  - {name: nodeports, ports: [30000-32767], proto: tcp}
"""


def harden(ns: Namespace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = ns.run([*HARDEN, *(str(a) for a in args)], check=False, timeout=120)
    assert proc.returncode == 0, f"harden {args[0]}: {proc.stderr}"
    return proc


def others_rules(ns: Namespace) -> str:
    """Every other tool's iptables rules, counters and timestamps removed.

    A table holding nothing but empty built-in chains is left out: iptables-nft makes
    one for harden's own chains where Docker had none (Docker writes no IPv6 rules).
    """
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        for table in ns.run([tool]).stdout.split("COMMIT\n"):
            lines = [
                re.sub(r"\[\d+:\d+\]", "[0:0]", line)
                for line in table.splitlines()
                if not line.startswith("#") and "HARDEN" not in line
            ]
            builtin = re.compile(r":(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) ACCEPT")
            if any(not line.startswith("*") and not builtin.match(line) for line in lines):
                out += lines
    return "\n".join(out)


@pytest.fixture
def dockerd_factory(tmp_path: Path) -> Iterator[Callable[[Namespace], Dockerd]]:
    started: list[Dockerd] = []

    def start(ns: Namespace) -> Dockerd:
        d = Dockerd(ns, "198.19.77.1/24", workdir=tmp_path / f"docker{len(started)}")
        try:
            d.__enter__()
        except DockerUnavailable as exc:
            pytest.skip(f"dockerd cannot run here: {exc}")
        started.append(d)
        return d

    yield start
    for d in reversed(started):
        d.__exit__(None, None, None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_docker_published_ports_obey_the_manifest(
    tmp_path: Path, backend: str, dockerd_factory: Callable[[Namespace], Dockerd]
) -> None:
    manifest = write(tmp_path, "docker-host.yaml", DOCKER_HOST)
    declared = write(tmp_path, "docker-host-8080.yaml", DOCKER_HOST_8080)
    state = tmp_path / "state"
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        srv = lab.server.ns
        docker = dockerd_factory(srv)
        docker.publish(8080, 80)

        # Docker's DNAT and FORWARD accept: the port answers though no INPUT rule allows it.
        code, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "1-10000")
        assert code == 1 and ("tcp", 8080, "open") in failing(report)

        before = others_rules(srv)
        harden(srv, "apply", manifest, "--backend", backend, "--confirm", "300",
               "--state-dir", state)  # fmt: skip
        assert others_rules(srv) == before  # Docker's rules byte-identical
        code, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "1-10000")
        assert code == 0, failing(report)
        assert nmap(lab.outside, "-sS", "-p", "22,8080", str(lab.server.v4)) == {
            ("tcp", 22): "open",
            ("tcp", 8080): "filtered",
        }
        if backend == "iptables":  # Docker made DOCKER-USER: harden's forward jump is there
            assert "-A DOCKER-USER -j HARDEN-FORWARD" in srv.run(["iptables-save"]).stdout
        harden(srv, "confirm", "--state-dir", state)
        assert others_rules(srv) == before

        # Published after harden applied, and across a dockerd restart: no re-apply needed.
        docker.publish(9090, 80)
        docker.restart()
        assert "9090" in srv.run(["iptables-save", "-t", "nat"]).stdout
        code, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "1-10000")
        assert code == 0, failing(report)
        drift = srv.run([*HARDEN, "diff", manifest, "--backend", backend], check=False)
        assert drift.returncode == 0, drift.stdout + drift.stderr  # Docker moved nothing of ours

        # Declared, the published port answers (through Docker's DNAT, to the container).
        before = others_rules(srv)
        harden(srv, "apply", declared, "--backend", backend, "--confirm", "300",
               "--state-dir", state)  # fmt: skip
        code, report = verify_from(lab.outside, lab, declared, tmp_path, "--ports", "8000-9100")
        assert code == 0, failing(report)
        assert statuses(report)[("tcp", 8080)] == "ok"
        harden(srv, "rollback", "--state-dir", state)
        assert others_rules(srv) == before
        code, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "8000-9100")
        assert code == 0, failing(report)  # 8080 silent again


@pytest.mark.parametrize("backend", BACKENDS)
def test_kubernetes_nodeports_answer_and_hostports_do_not(
    tmp_path: Path, backend: str, netns: Callable[[str], Namespace]
) -> None:
    manifest = write(tmp_path, "k8s-node.yaml", K8S_NODE)
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        pod_ns = netns("pod")
        with kube_node(lab.server.ns, pod_ns, node_port=30080, host_port=8081):
            ports = ("--ports", "22,8000-8100,30080")
            code, report = verify_from(lab.outside, lab, manifest, tmp_path, *ports)
            assert code == 1 and failing(report) >= {("tcp", 8081, "open")}
            before = others_rules(lab.server.ns)
            harden(lab.server.ns, "apply", manifest, "--backend", backend,
                   "--state-dir", tmp_path / "state")  # fmt: skip
            assert others_rules(lab.server.ns) == before  # kube-proxy's rules untouched
            code, report = verify_from(lab.outside, lab, manifest, tmp_path, *ports)
            assert code == 0, failing(report)
            # The NodePort reached the pod through kube-proxy's DNAT; the hostPort is silent.
            assert statuses(report)[("tcp", 30080)] == "ok"
            nat = lab.server.ns.run(["iptables-save", "-c", "-t", "nat"]).stdout
            assert re.search(r"\[[1-9]\d*:\d+\] -A KUBE-SEP-\S+ .*-j DNAT", nat), nat


CONNECTS = """
import socket, sys
ok = 0
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((sys.argv[4], 0))
    s.settimeout(0.5)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        ok += 1
    except OSError:
        pass
    finally:
        s.close()
print(ok)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_limit_admits_a_burst_per_source(tmp_path: Path, backend: str) -> None:
    manifest = write(
        tmp_path,
        "limited.yaml",
        "version: 1\nservices:\n"
        "  - {name: ssh, port: 22, proto: tcp, limit: 3/minute, log: true}\n",
    )
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        harden(lab.server.ns, "apply", manifest, "--backend", backend,
               "--state-dir", tmp_path / "state")  # fmt: skip

        def burst(source: str, n: int) -> int:
            args = [str(lab.server.v4), "22", str(n), source]
            proc = lab.outside.ns.run([sys.executable, "-c", CONNECTS, *args], timeout=60)
            return int(proc.stdout)

        first, second = str(lab.outside.v4), str(lab.outside.extra[0])
        assert burst(first, 8) == 3  # the burst of 3, then silence
        assert burst(second, 2) == 2  # per source: another address has its own bucket
        assert burst(first, 2) == 0  # the first source is still over its limit


def _log_hits(ns: Namespace, backend: str, prefix: str) -> int:
    """Packets that reached harden's log rule with ``prefix`` (rule counters, summed)."""
    if backend == "nftables":
        listing = ns.run(["nft", "list", "table", "inet", "harden"]).stdout
        pattern = rf'counter packets (\d+) bytes \d+ limit .* log prefix "{prefix}"'
    else:
        listing = ns.run(["iptables-save", "-c", "-t", "filter"]).stdout
        pattern = rf'\[(\d+):\d+\] -A HARDEN-[A-Z-]+ .*--log-prefix "{prefix}"'
    return sum(int(n) for n in re.findall(pattern, listing))


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_counts_refused_attempts_only(tmp_path: Path, backend: str) -> None:
    manifest = write(
        tmp_path,
        "logged.yaml",
        "version: 1\nservices:\n"
        "  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24], log: true}\n"
        "  - {name: api, port: 8000, proto: tcp, limit: 1/minute, log: true}\n",
    )
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        assert lab.allowed is not None
        srv = lab.server.ns
        harden(srv, "apply", manifest, "--backend", backend, "--state-dir", tmp_path / "st")

        def connects(host: Namespace, source: str, port: int, n: int) -> int:
            args = [str(lab.server.v4), str(port), str(n), source]
            return int(host.run([sys.executable, "-c", CONNECTS, *args], timeout=60).stdout)

        assert connects(lab.allowed.ns, str(lab.allowed.v4), 22, 2) == 2
        assert _log_hits(srv, backend, "harden:ssh_tcp ") == 0  # accepted: not logged
        assert connects(lab.outside.ns, str(lab.outside.v4), 22, 2) == 0
        assert _log_hits(srv, backend, "harden:ssh_tcp ") == 2  # one SYN per refused attempt
        assert connects(lab.outside.ns, str(lab.outside.v4), 8000, 3) == 1
        assert _log_hits(srv, backend, "harden:limited ") == 2  # over the limit: logged
