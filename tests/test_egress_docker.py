"""Egress on a Docker host, against a real dockerd in a namespace (docs/design.md, "Egress",
"On a Docker host").

``egress`` filters what the host itself sends: the output hook. A container's traffic to
the outside world is routed through the host, so it crosses the forward hook instead, and
the host's own traffic to its containers leaves over docker0, a trusted interface. So
with ``egress: {policy: drop}`` and nothing allowed:

- the host still reaches its container over docker0, and the published port still
  answers from outside;
- a new connection from the host itself to an outside listener is refused;
- the container's own connection to that same listener still gets through.

The offline image is a static busybox whose nc has no UDP mode: the container's UDP is
sent from the container's own network namespace (nsenter) by the host's python, which is
exactly the path the container's packets take. Needs root.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

from .dockerlab import docker_lab
from .labutil import HARDEN, uncommented_egress, write
from .test_dockerlab import http_get
from .test_egress import TALK, talk

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]
SRV, OUT = "198.19.62.1", "198.19.62.2"
LISTENER = 9000  # tcp and udp, in the outside namespace

DOCKER_EGRESS = """\
version: 1
policy: {trusted_interfaces: [docker0]}
services:
  - {name: ssh, port: 22, proto: tcp}
  - {name: app, port: 8080, proto: tcp, comment: published by the container}
forward: {policy: drop}
egress: {policy: drop}
"""
# Containers' own egress is forward's to restrict: docker0 untrusted, forward drop, and
# only what forward.allow names may leave the bridge.
CONTAINERS_RESTRICTED = f"""\
version: 1
services:
  - {{name: ssh, port: 22, proto: tcp}}
  - {{name: app, port: 8080, proto: tcp, comment: published by the container}}
forward:
  policy: drop
  allow:
    - {{name: listener, in_interface: docker0, destinations: [{OUT}/32], proto: tcp,
       ports: [{LISTENER}]}}
egress: {{policy: drop}}
"""


def container_talk(pid: str, *exchanges: tuple[str, str, int]) -> list[str]:
    """TALK's outcomes for exchanges sent from the container's network namespace."""
    specs = [f"{proto} {address} {port}" for proto, address, port in exchanges]
    proc = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-I", "-c", TALK, *specs],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd="/",
    )
    outcomes: list[str] = json.loads(proc.stdout)
    return outcomes


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_egress_filters_the_host_not_its_containers(
    netns: NsFactory,
    in_netns: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    backend: str,
) -> None:
    with docker_lab(netns, tmp_path, SRV, OUT) as (d, out):
        srv = d.ns
        serve = [HARDEN[0], "-I", "-m", "harden.lab.responder", "--tcp", str(LISTENER)]
        in_netns(out, *serve, "--udp", str(LISTENER), "--lifetime", "120")
        cid = d.publish(8080, 80)
        ip = d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid).stdout.strip()
        pid = d.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
        outside = [("tcp", OUT, LISTENER), ("udp", OUT, LISTENER)]
        assert talk(srv, *outside) == dict.fromkeys(outside, "ok")  # before: all reachable

        def apply(name: str, text: str) -> str:
            manifest = write(tmp_path, name, text)
            state: list[str | Path] = ["--state-dir", tmp_path / "st"]
            done = srv.run([*HARDEN, "apply", manifest, "--backend", backend, *state], check=False)
            assert done.returncode == 0, done.stderr
            return done.stdout

        apply("docker-egress.yaml", DOCKER_EGRESS)

        # The host itself: refused. Drop: the SYN never leaves, sendto fails with EPERM.
        assert talk(srv, *outside) == {outside[0]: "timeout", outside[1]: "EPERM"}
        # The host to its container: out over docker0, a trusted interface.
        assert "hello from dockerlab" in http_get(srv, ip, 80)
        # The published port from outside: in through Docker's DNAT, declared, answers.
        assert "hello from dockerlab" in http_get(out, SRV, 8080)
        # The container to the outside: forwarded (masqueraded), never the output hook.
        nc = d.docker("exec", cid, "nc", "-w", "3", OUT, str(LISTENER), check=False, timeout=30)
        assert nc.returncode == 0, nc.stderr
        assert container_talk(pid, *outside) == ["ok", "ok"]

        # What does restrict the containers is forward: only the forward.allow entry
        # leaves the bridge, and, docker0 untrusted, the host no longer reaches them.
        said = apply("restricted.yaml", CONTAINERS_RESTRICTED)
        assert container_talk(pid, *outside) == ["ok", "timeout"]  # udp: dropped in forward
        assert talk(srv, ("tcp", ip, 80)) == {("tcp", ip, 80): "timeout"}
        assert "hello from dockerlab" in http_get(out, SRV, 8080)
        # ... which apply (and validate) say, naming the bridge.
        assert "WARNING: egress is restricted and docker0 (Docker's bridge)" in said, said

        # init on this Docker host: its egress block, enforced, keeps the way to docker0.
        proposal = json.loads(srv.run([*HARDEN, "init", "--format", "json"]).stdout)
        [bridge] = proposal["container_bridges"]
        assert bridge["name"] == "docker0" and bridge["networks"], bridge
        said = apply("init.yaml", uncommented_egress(proposal["manifest"]))
        assert "docker0" not in said, said
        assert "hello from dockerlab" in http_get(srv, ip, 80)
        assert talk(srv, outside[0]) == {outside[0]: "timeout"}  # the rest stays refused
