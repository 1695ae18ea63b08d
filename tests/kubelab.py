"""A one-node Kubernetes look-alike inside lab namespaces, for testing DNAT'd NodePort traffic.

kube-proxy cannot run here, so ``kube_node()`` builds what it would leave behind on a node: a
pod behind the ``cni0`` bridge, serving one TCP port, and the iptables rules kube-proxy
(iptables mode, Kubernetes 1.28-1.30) writes for one NodePort service with
``externalTrafficPolicy: Cluster`` -- optionally plus the CNI ``portmap`` plugin's hostPort
DNAT to the same pod, a second, different DNAT path.

Everything happens inside the namespaces the caller made (``ip netns exec``); nothing here
touches the machine's own network namespace. Every address is in 198.18.0.0/15.
"""

from __future__ import annotations

import base64
import hashlib
import select
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import TracebackType

from harden.lab.netns import Namespace

# The Service kube-proxy would be told about (names only feed the chain-name hashes/comments).
SERVICE = "default/web"  # namespace/name
PORT_NAME = "http"
SERVICE_PORT = 80
CLUSTER_IP = IPv4Address("198.18.245.10")  # a stand-in service CIDR 198.18.245.0/24, lab range
MASQ_MARK = "0x4000"  # kube-proxy --iptables-masquerade-bit=14 (the default)
CNI_NETWORK = "cbr0"  # CNI network name: feeds portmap's CNI-DN-<hash>
PORTMAP_MARK = "0x2000"  # portmap DefaultMarkBit = 13
RESPONDER_LIFETIME = 900.0  # seconds: an aborted run never leaves the responder behind for long
READY_TIMEOUT = 15.0

# --------------------------------------------------------------------------------------------
# The rules, as one iptables-restore template (loaded with --noflush, so nothing else in the
# node's tables is touched). Sources followed -- re-read them before changing anything here:
#
#  * kube-proxy: kubernetes/kubernetes pkg/proxy/iptables/proxier.go
#    https://github.com/kubernetes/kubernetes/blob/release-1.29/pkg/proxy/iptables/proxier.go
#    (iptablesJumpChains / iptablesKubeletJumpChains, syncProxyRules(),
#    writeServiceToEndpointRules(), portProtoHash(), servicePortEndpointChainName()), checked
#    against the expected iptables-save dumps in pkg/proxy/iptables/proxier_test.go
#    (TestOverallIPTablesRules et al.). Settings reproduced: ClusterCIDR local-traffic
#    detector (= pod_cidr, single node), masquerade bit 14, iptables with --random-fully,
#    localhostNodePorts=true (the default: route_localnet=1 + the KUBE-FIREWALL rule),
#    nodePortAddresses unset (NodePorts on every local address), nf_conntrack_tcp_be_liberal=0
#    (so the INVALID drop in KUBE-FORWARD is present). Newer kube-proxy adds "-m nfacct"
#    counters to two rules when nfacct is available; 1.28-1.30 nodes without it do not.
#  * CNI portmap plugin: containernetworking/plugins plugins/meta/portmap/portmap_iptables.go
#    (genToplevelDnatChain, genDnatChain, fillDnatRules, genSetMarkChain, genMarkMasqChain),
#    chain.go (entry rules appended unless prependEntry) and pkg/utils/iptables.go
#    (MustFormatChainNameWithPrefix: "CNI-DN-" + sha512(net name + container id), 28 chars).
#    https://github.com/containernetworking/plugins/tree/main/plugins/meta/portmap
#
# kube-proxy adds its jump rules with EnsureRule(Prepend, ...) one by one in list order, which
# "-I CHAIN 1" below reproduces (so the last one listed ends up first). The service's own
# chains come from its iptables-restore input (":CHAIN - [0:0]" then "-A" rules).
# Lines starting with "@hostport " exist only when a hostPort is mapped (the marker is
# stripped); lines starting with "#" are comments to iptables-restore.
# --------------------------------------------------------------------------------------------
RULES_TEMPLATE = r"""
*filter
# -- kube-proxy: top-level filter chains (syncProxyRules writes these chain lines every sync)
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
# kubelet's anti-martian chain, duplicated by kube-proxy when localhostNodePorts is on
:KUBE-FIREWALL - [0:0]
# iptables.Monitor canary (kube-proxy creates one in mangle, nat and filter)
:KUBE-PROXY-CANARY - [0:0]
# -- kube-proxy jump rules (iptablesJumpChains, filter entries, each prepended)
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-I INPUT 1 -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I FORWARD 1 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
# (iptablesKubeletJumpChains: no comment)
-I INPUT 1 -j KUBE-FIREWALL
-I OUTPUT 1 -j KUBE-FIREWALL
# -- filter rules. KUBE-SERVICES / KUBE-EXTERNAL-SERVICES only get REJECT/DROP rules for
# services without (local) endpoints and KUBE-NODEPORTS only health-check-port ACCEPTs for
# externalTrafficPolicy=Local: all empty for our Cluster-policy service with one endpoint.
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
# -- kube-proxy: top-level nat chains, then the per-service chains (EXT, SVC, one SEP)
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:{ext} - [0:0]
:{svc} - [0:0]
:{sep} - [0:0]
# -- CNI portmap chains
@hostport :CNI-HOSTPORT-SETMARK - [0:0]
@hostport :CNI-HOSTPORT-MASQ - [0:0]
@hostport :CNI-HOSTPORT-DNAT - [0:0]
@hostport :{dn} - [0:0]
# -- kube-proxy jump rules (iptablesJumpChains, nat entries, each prepended)
-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
# -- kube-proxy: masquerade machinery (mark in KUBE-MARK-MASQ, SNAT in KUBE-POSTROUTING)
-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark {mark}
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark {mark}
# -- kube-proxy: the service. ClusterIP capture, NodePort capture -> EXT -> SVC -> SEP (DNAT)
-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m tcp -p tcp -d {cluster_ip} --dport {svc_port} -j {svc}
-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {node_port} -j {ext}
-A {svc} -m comment --comment "{name} cluster IP" -m tcp -p tcp -d {cluster_ip} --dport {svc_port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ
-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" -j KUBE-MARK-MASQ
-A {ext} -j {svc}
-A {svc} -m comment --comment "{name} -> {endpoint}" -j {sep}
-A {sep} -m comment --comment {name} -s {pod_ip} -j KUBE-MARK-MASQ
-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {endpoint}
# the tail call: must stay the last rule of KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
# -- CNI portmap hostPort (runs after kube-proxy on a real node: pods start later).
# SETMARK/MASQ chains; the MASQ entry is the one portmap prepends.
@hostport -A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark {cni_mark}/{cni_mark}
@hostport -A CNI-HOSTPORT-MASQ -m mark --mark {cni_mark}/{cni_mark} -j MASQUERADE
@hostport -I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
# top-level DNAT chain, appended to PREROUTING and OUTPUT (after kube-proxy's KUBE-SERVICES)
@hostport -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
@hostport -A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
# per-container chain: multiport entry rule, then hairpin mark, localhost mark, DNAT
@hostport -A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \"{cni_net}\" id: \"{container_id}\"" -m multiport -p tcp --destination-ports {host_port} -j {dn}
@hostport -A {dn} -p tcp --dport {host_port} -s {pod_if} -j CNI-HOSTPORT-SETMARK
@hostport -A {dn} -p tcp --dport {host_port} -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
@hostport -A {dn} -p tcp --dport {host_port} -j DNAT --to-destination {pod_ip}:{pod_port}
COMMIT
"""  # noqa: E501 -- rule lines are kept whole, as iptables-save prints them


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(name + protocol))[:16]."""
    digest = hashlib.sha256((service_port_name + protocol).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """kube-proxy's servicePortEndpointChainName: KUBE-SEP-<16 chars>."""
    digest = hashlib.sha256((service_port_name + protocol + endpoint).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


def cni_chain(net_name: str, container_id: str, prefix: str) -> str:
    """CNI's MustFormatChainNameWithPrefix: "CNI-" + prefix + sha512 hex, cut to 28 chars."""
    return ("CNI-" + prefix + hashlib.sha512((net_name + container_id).encode()).hexdigest())[:28]


@dataclass
class Chains:
    """The per-service chain names (for assertions on iptables-save output)."""

    svc: str
    ext: str
    sep: str
    dn: str | None  # CNI-DN-<hash>, only with a hostPort


def render_rules(
    pod_ip: IPv4Address,
    pod_cidr: IPv4Network,
    *,
    node_port: int,
    pod_port: int,
    host_port: int | None,
    container_id: str,
) -> tuple[str, Chains]:
    """The iptables-restore input for our one service (and hostPort), with its chain names."""
    name = f"{SERVICE}:{PORT_NAME}"  # proxy.ServicePortName.String()
    endpoint = f"{pod_ip}:{pod_port}"
    chains = Chains(
        svc="KUBE-SVC-" + port_proto_hash(name, "tcp"),
        ext="KUBE-EXT-" + port_proto_hash(name, "tcp"),
        sep=endpoint_chain(name, "tcp", endpoint),
        dn=cni_chain(CNI_NETWORK, container_id, "DN-") if host_port is not None else None,
    )
    lines = []
    for line in RULES_TEMPLATE.lstrip("\n").splitlines():
        if line.startswith("@hostport "):
            if host_port is None:
                continue
            line = line.removeprefix("@hostport ")
        lines.append(line)
    text = "\n".join(lines) + "\n"
    return text.format(
        mark=MASQ_MARK,
        cni_mark=PORTMAP_MARK,
        name=name,
        cluster_ip=CLUSTER_IP,
        svc_port=SERVICE_PORT,
        cluster_cidr=pod_cidr,
        node_port=node_port,
        endpoint=endpoint,
        pod_ip=pod_ip,
        pod_port=pod_port,
        # portmap's hairpin match uses the pod's address with its prefix (ip.Address)
        pod_if=f"{pod_ip}/{pod_cidr.prefixlen}",
        host_port=host_port,
        cni_net=CNI_NETWORK,
        container_id=container_id,
        svc=chains.svc,
        ext=chains.ext,
        sep=chains.sep,
        dn=chains.dn,
    ), chains


@dataclass
class Pod:
    """The pod kube_node() made: its namespace, address and the responder serving pod_port.

    Deleting a namespace does not stop processes inside it: call ``stop()`` (or use the pod
    as a context manager) before the namespaces go.
    """

    ns: Namespace
    ip: IPv4Address
    responder: subprocess.Popen[str] | None = field(default=None, repr=False, compare=False)
    chains: Chains | None = field(default=None, compare=False)
    rules: str = field(default="", repr=False, compare=False)

    def stop(self) -> None:
        """Stop the responder; safe to call twice."""
        if self.responder is not None:
            if self.responder.poll() is None:
                self.responder.kill()
            self.responder.wait(timeout=10)
            for stream in (self.responder.stdout, self.responder.stderr):
                if stream is not None:
                    stream.close()
            self.responder = None

    def __enter__(self) -> Pod:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _start_responder(pod_ns: Namespace, pod_port: int) -> subprocess.Popen[str]:
    """Start harden.lab.responder in the pod namespace and wait for its "ready" line."""
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", pod_ns.name, sys.executable, "-m", "harden.lab.responder"),
            *("--tcp", str(pod_port), "--lifetime", str(RESPONDER_LIFETIME)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline().strip() if ready else ""
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"responder in {pod_ns.name} did not start: {line!r} {err.strip()}")
    return proc


def kube_node(
    node: Namespace,
    pod_ns: Namespace,
    *,
    node_port: int = 30080,
    pod_port: int = 8080,
    pod_cidr: str = "198.18.244.0/24",
    host_port: int | None = None,
) -> Pod:
    """Make ``node`` a Kubernetes node running one pod (in ``pod_ns``) behind a NodePort.

    ``cni0`` in the node gets pod_cidr's first address, the pod the second (default route via
    cni0); forwarding is enabled in the node namespace only; a responder serves TCP pod_port in
    the pod; kube-proxy's rules (and portmap's, if ``host_port``) are loaded in the node with
    ``iptables-restore --noflush``. The returned Pod owns the responder: stop() it.
    """
    net = IPv4Network(pod_cidr)
    if not net.subnet_of(IPv4Network("198.18.0.0/15")):
        raise ValueError(f"pod_cidr {pod_cidr} is outside the lab range 198.18.0.0/15")
    hosts = net.hosts()
    gateway, pod_ip = next(hosts), next(hosts)

    # Bridge + veth, all from inside the node namespace (the peer is created directly in the pod).
    host_if = f"veth{uuid.uuid4().hex[:8]}"
    node.run(["ip", "link", "add", "cni0", "type", "bridge"])
    node.run(["ip", "addr", "add", f"{gateway}/{net.prefixlen}", "dev", "cni0"])
    node.run(["ip", "link", "set", "cni0", "up"])
    node.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0"])
    node.run(["ip", "link", "set", "eth0", "netns", pod_ns.name])
    node.run(["ip", "link", "set", host_if, "master", "cni0"])
    node.run(["ip", "link", "set", host_if, "up"])
    pod_ns.run(["ip", "addr", "add", f"{pod_ip}/{net.prefixlen}", "dev", "eth0"])
    pod_ns.run(["ip", "link", "set", "eth0", "up"])
    pod_ns.run(["ip", "route", "add", "default", "via", str(gateway)])

    # net.* sysctls are per network namespace: these change the node namespace only.
    node.run(["sysctl", "-w", "net.ipv4.ip_forward=1"])
    # kube-proxy sets this itself when localhostNodePorts is on (the default).
    node.run(["sysctl", "-w", "net.ipv4.conf.all.route_localnet=1"])

    responder = _start_responder(pod_ns, pod_port)
    pod = Pod(ns=pod_ns, ip=pod_ip, responder=responder)
    try:
        container_id = hashlib.sha256(pod_ns.name.encode()).hexdigest()  # like a sandbox id
        rules, chains = render_rules(
            pod_ip,
            net,
            node_port=node_port,
            pod_port=pod_port,
            host_port=host_port,
            container_id=container_id,
        )
        node.run(["iptables-restore", "--noflush"], input=rules)
        pod.chains, pod.rules = chains, rules
    except BaseException:
        pod.stop()
        raise
    return pod
