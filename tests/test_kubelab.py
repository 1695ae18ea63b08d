"""The kube-proxy look-alike in tests/kubelab.py: its rules load and really DNAT to the pod."""

from __future__ import annotations

import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest

from harden.lab.netns import Namespace, connect

from .kubelab import (
    CLUSTER_IP,
    Pod,
    endpoint_chain,
    kube_node,
    port_proto_hash,
    render_rules,
)

NsFactory = Callable[[str], Namespace]
NODE, OUT = "198.19.61.1", "198.19.61.2"

CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
    s.close()
"""


def tcp_connect(ns: Namespace, host: str, port: int) -> str:
    """A fresh TCP connection from ``ns``: "connected" or the error's class name."""
    return ns.run([sys.executable, "-c", CONNECT, host, str(port)], timeout=30).stdout.strip()


def passive_opens(ns: Namespace) -> int:
    """TCP connections accepted in ``ns`` so far (per-namespace /proc/net/snmp)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Tcp:"][:2]
    return int(values[names.index("PassiveOpens")])


def rule_packets(ns: Namespace, needle: str) -> int:
    """Packet counter of the one nat rule containing ``needle`` (iptables-save -c)."""
    hits = [
        ln
        for ln in ns.run(["iptables-save", "-c", "-t", "nat"]).stdout.splitlines()
        if needle in ln
    ]
    assert len(hits) == 1, hits
    return int(hits[0].split("]")[0].lstrip("[").split(":")[0])


def test_chain_names_match_upstream() -> None:
    # Vectors from kubernetes pkg/proxy/iptables/proxier_test.go: ns1/svc1:p80, 10.180.0.1:80.
    assert port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_render_without_hostport_has_no_cni_rules() -> None:
    text, chains = render_rules(
        IPv4Address("198.18.244.2"),
        IPv4Network("198.18.244.0/24"),
        node_port=30080,
        pod_port=8080,
        host_port=None,
        container_id="x",
    )
    assert "CNI-" not in text and "@hostport" not in text and chains.dn is None
    assert "-j DNAT --to-destination 198.18.244.2:8080" in text


@pytest.fixture
def lab(netns: NsFactory) -> tuple[Namespace, Namespace, Namespace]:
    node, pod, out = netns("kn"), netns("kp"), netns("ko")
    connect(node, out, [f"{NODE}/24"], [f"{OUT}/24"])
    return node, pod, out


@pytest.mark.netns
def test_nodeport_reaches_pod(lab: tuple[Namespace, Namespace, Namespace]) -> None:
    node, pod_ns, out = lab
    # Nothing listens on the node itself: before the rules, the NodePort is closed.
    assert tcp_connect(out, NODE, 30080) == "ConnectionRefusedError"
    with kube_node(node, pod_ns) as pod:
        assert isinstance(pod, Pod) and str(pod.ip) == "198.18.244.2"
        assert pod.chains is not None
        before = passive_opens(pod_ns)
        assert tcp_connect(out, NODE, 30080) == "connected"
        # The pod's kernel accepted it (the responder), through the kube-proxy DNAT rule.
        assert passive_opens(pod_ns) == before + 1
        assert rule_packets(node, "--to-destination 198.18.244.2:8080") == 1
        # ClusterIP from the node itself (OUTPUT -> KUBE-SERVICES) goes the same way. Routing
        # picks a route before OUTPUT's DNAT, so like a real node this one needs a default route.
        node.run(["ip", "route", "add", "default", "via", OUT])
        assert tcp_connect(node, str(CLUSTER_IP), 80) == "connected"
        assert passive_opens(pod_ns) == before + 2
        # Stop the pod's listener: the NodePort now answers RST from the pod, not the node.
        pod.stop()
        assert tcp_connect(out, NODE, 30080) == "ConnectionRefusedError"


@pytest.mark.netns
def test_hostport_is_a_second_dnat_path(lab: tuple[Namespace, Namespace, Namespace]) -> None:
    node, pod_ns, out = lab
    with kube_node(node, pod_ns, node_port=30081, pod_port=8081, host_port=8443) as pod:
        assert pod.chains is not None and pod.chains.dn is not None
        before = passive_opens(pod_ns)
        assert tcp_connect(out, NODE, 8443) == "connected"
        assert passive_opens(pod_ns) == before + 1
        assert rule_packets(node, f"-A {pod.chains.dn} -p tcp -m tcp --dport 8443 -j DNAT") == 1
        assert rule_packets(node, f"-A {pod.chains.sep} -p tcp") == 0  # not via kube-proxy
        assert tcp_connect(out, NODE, 30081) == "connected"
        assert passive_opens(pod_ns) == before + 2
        assert rule_packets(node, f"-A {pod.chains.sep} -p tcp") == 1
        # Neither port is open on the node's own sockets; other ports stay closed.
        assert tcp_connect(out, NODE, 8081) == "ConnectionRefusedError"


@pytest.mark.netns
def test_iptables_save_shows_kube_proxy_layout(
    lab: tuple[Namespace, Namespace, Namespace],
) -> None:
    node, pod_ns, _ = lab
    with kube_node(node, pod_ns, host_port=8080) as pod:
        assert pod.chains is not None
        nat = node.run(["iptables-save", "-t", "nat"]).stdout.splitlines()
        ext, svc, sep = pod.chains.ext, pod.chains.svc, pod.chains.sep
        assert (
            f'-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp '
            f"--dport 30080 -j {ext}"
        ) in nat
        assert (
            '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this '
            'must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
        ) in nat
        assert [ln for ln in nat if ln.startswith("-A KUBE-SERVICES")][-1].endswith(
            "-j KUBE-NODEPORTS"
        )
        assert f"-A {ext} -j {svc}" in nat
        assert (
            f'-A {sep} -p tcp -m comment --comment "default/web:http" -m tcp '
            "-j DNAT --to-destination 198.18.244.2:8080"
        ) in nat
        prerouting = [ln for ln in nat if ln.startswith("-A PREROUTING")]
        assert prerouting == [
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        ]
        assert any(
            ln.startswith("-A CNI-HOSTPORT-DNAT ") and 'dnat name: \\"cbr0\\"' in ln for ln in nat
        ), nat
        flt = node.run(["iptables-save", "-t", "filter"]).stdout.splitlines()
        assert (
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
            "-m mark --mark 0x4000/0x4000 -j ACCEPT"
        ) in flt
        assert [ln for ln in flt if ln.startswith("-A FORWARD")] == [
            '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load '
            'balancer firewall" -j KUBE-PROXY-FIREWALL',
            '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
            '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service '
            'portals" -j KUBE-SERVICES',
            '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes '
            'externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        ]
