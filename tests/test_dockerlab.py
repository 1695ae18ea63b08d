"""tests/dockerlab.py against a real dockerd, confined to namespaces the tests create."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

from .dockerlab import Dockerd, DockerUnavailable, docker_lab, processes_mentioning

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]
SRV, OUT = "198.19.60.1", "198.19.60.2"
DNAT_8080 = "--dport 8080 -j DNAT --to-destination 198.19.77."

# Bounded: at most 40 fresh connections over ~10 s, then report the last error.
HTTP_GET = """
import socket, sys, time
last = ""
for _ in range(40):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        if data:
            sys.stdout.write(data.decode(errors="replace"))
            sys.exit(0)
    except OSError as e:
        last = repr(e)
    time.sleep(0.25)
sys.exit("no HTTP answer: " + last)
"""


def http_get(ns: Namespace, addr: str, port: int) -> str:
    return ns.run([sys.executable, "-c", HTTP_GET, addr, str(port)], timeout=30).stdout


def test_published_port_answers_from_outside(netns: NsFactory, tmp_path: Path) -> None:
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, out):
        cid = d.publish(8080, name="web")
        assert d.docker("inspect", "-f", "{{.Name}}", cid).stdout.strip() == "/web"
        answer = http_get(out, SRV, 8080)
        assert answer.startswith("HTTP/1.") and "hello from dockerlab" in answer


def test_dnat_rule_only_in_the_namespace(netns: NsFactory, tmp_path: Path) -> None:
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, _):
        d.publish(8080)
        assert DNAT_8080 in d.ns.run(["iptables-save", "-t", "nat"]).stdout
        # Read-only look at the machine's own namespace: Docker must not have touched it.
        host = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
        assert DNAT_8080 not in host.stdout


def test_restart_keeps_container_reachable(netns: NsFactory, tmp_path: Path) -> None:
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, out):
        cid = d.publish(8080)
        old_pid = d.pidfile.read_text().strip()
        d.restart()
        assert d.pidfile.read_text().strip() != old_pid
        assert d.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() == "true"
        assert DNAT_8080 in d.ns.run(["iptables-save", "-t", "nat"]).stdout
        assert "hello from dockerlab" in http_get(out, SRV, 8080)


def test_exit_leaves_no_processes(netns: NsFactory, tmp_path: Path) -> None:
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, _):
        d.publish(8080)
        assert d.rundir is not None and d.containerd_proc is not None
        rundir = d.rundir
        pids = [int(d.pidfile.read_text()), d.containerd_proc.pid]
        # dockerd and the container's shim name the socket dir; containerd its --config.
        assert len(processes_mentioning(str(rundir))) == 2
        assert d.containerd_proc.pid in processes_mentioning(str(tmp_path))
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert processes_mentioning(str(rundir)) == processes_mentioning(str(tmp_path)) == []
    assert not rundir.exists()
    assert list((tmp_path / "docker").iterdir()) == []


def test_failed_start_stops_containerd(netns: NsFactory, tmp_path: Path) -> None:
    """dockerd refusing its options half-way through __enter__ leaves nothing running."""
    d = Dockerd(netns("dbad"), bridge_cidr="not-a-cidr", workdir=tmp_path / "docker")
    with pytest.raises(DockerUnavailable, match="dockerd exited") as info, d:
        pass
    assert "not-a-cidr" in info.value.log
    assert d.containerd_proc is None and d.rundir is None
    assert processes_mentioning(str(tmp_path)) == []  # containerd's --config lives there
    assert list((tmp_path / "docker").iterdir()) == []


def test_exit_after_dockerd_crash_kills_container(netns: NsFactory, tmp_path: Path) -> None:
    """dockerd SIGKILLed: __exit__ cannot `docker rm`, yet the shim and httpd still go."""
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, _):
        cid = d.publish(8080)
        assert d.dockerd_proc is not None and d.rundir is not None
        d.dockerd_proc.kill()
        d.dockerd_proc.wait()
        rundir = d.rundir
        assert processes_mentioning(cid)  # the shim names the container id
    assert processes_mentioning(cid) == processes_mentioning(str(rundir)) == []
    assert not list(Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"))
    assert list((tmp_path / "docker").iterdir()) == []
