"""Guards that run before anything changes: the SSH lockout check and the netns belt.

docs/design.md, "The SSH guard".
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Mapping

from harden.core.policy import Policy
from harden.errors import EnvironmentProblem
from harden.lab.netns import current_namespace_name


def require_namespace() -> None:
    """Refuse to touch a ruleset outside a named netns when HARDEN_REQUIRE_NETNS=1.

    The test suite sets it: a test that forgets ``ip netns exec`` then fails
    instead of firewalling the machine it runs on.
    """
    if os.environ.get("HARDEN_REQUIRE_NETNS") == "1" and current_namespace_name() is None:
        raise EnvironmentProblem(
            "HARDEN_REQUIRE_NETNS=1 and this process is not inside a named network namespace: "
            "refusing to change the firewall"
        )


def ssh_guard(policy: Policy, env: Mapping[str, str], sshd_ports: list[int]) -> str | None:
    """Why applying ``policy`` would lock the operator out, or None if it would not."""
    connection = env.get("SSH_CONNECTION", "").split()
    if len(connection) == 4:
        client = ipaddress.ip_address(connection[0].removeprefix("::ffff:"))
        port = int(connection[3])
        if not policy.accepts(client, "tcp", port):
            return (
                f"this session came over SSH from {client} to port {port}, and the manifest "
                f"does not allow tcp/{port} from {client}: you could not reconnect"
            )
    for port in sshd_ports:
        if not policy.reachable("tcp", port):
            return f"sshd listens on tcp/{port}, and the manifest closes it to every source"
    return None


def lockout_reason(policy: Policy, env: Mapping[str, str]) -> str | None:
    """Why applying ``policy`` here would lock the operator out, or None (apply's entry)."""
    return ssh_guard(policy, env, sshd_ports())


def sshd_ports() -> list[int]:
    """TCP ports sshd listens on in this network namespace (ss from iproute2)."""
    proc = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=False)
    ports = set()
    for line in proc.stdout.splitlines():
        if '"sshd"' in line:
            local = line.split()[3]
            ports.add(int(local.rsplit(":", 1)[1]))
    return sorted(ports)
