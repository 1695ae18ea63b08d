"""The iptables backend: harden's own chains through iptables-restore and ip6tables-restore."""

from __future__ import annotations

from harden.backends.iptables.rules import IPT_CHAIN_MAX, IPT_FILES, render
from harden.backends.spec import BackendSpec

# firewalld's iptables backend flushes every chain of the filter tables as it loads its
# own: harden's chains load after it. firewalld runs before network-pre.target, so this
# keeps harden there too; without firewalld the ordering is void. firewalld counts as
# started once it holds its D-Bus name, before its rules are in: the unit also waits (up
# to 10 s) until firewall-cmd --state says it is running.
_WAIT_FIREWALLD = (
    "ExecStartPre=/bin/sh -c 'systemctl -q is-active firewalld.service || exit 0; i=0;"
    " until firewall-cmd --state >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 100 ] && exit 0;"
    " sleep 0.1; done'"
)


def _jump(tool: str, hook: str, chain: str) -> str:
    return f"ExecStart=/bin/sh -c '{tool} -C {hook} -j {chain} || {tool} -I {hook} 1 -j {chain}'"


def _egress_jump(tool: str) -> str:
    # Egress: only a ruleset that restricts it has HARDEN-OUTPUT.
    return (
        f"ExecStart=/bin/sh -c '{tool} -n -L HARDEN-OUTPUT >/dev/null 2>&1 || exit 0;"
        f" {tool} -C OUTPUT -j HARDEN-OUTPUT || {tool} -I OUTPUT 1 -j HARDEN-OUTPUT'"
    )


# dockerd inserts its FORWARD rules ahead of harden's jump each time it starts (after
# harden.service, at boot). This drop-in moves harden's forward check into DOCKER-USER,
# which Docker keeps first, once dockerd is up: what apply does on a host where Docker
# runs. Ignored by systemd where Docker is not installed.
DOCKER_DROPIN = "etc/systemd/system/docker.service.d/harden.conf"
_DOCKER_HEAD = """\
# Written by harden apply --persist (iptables backend): Docker inserts its FORWARD rules
# ahead of harden's jump when it starts; harden's forward check moves into DOCKER-USER,
# which Docker keeps first. docs/design.md, "Idempotence and persistence".
[Service]
"""
_DOCKER_LINE = """\
ExecStartPost=-/bin/sh -c '{tool} -n -L HARDEN-FORWARD >/dev/null 2>&1 || exit 0; \\
  {tool} -n -L DOCKER-USER >/dev/null 2>&1 || exit 0; \\
  {tool} -C DOCKER-USER -j HARDEN-FORWARD 2>/dev/null || \\
  {tool} -I DOCKER-USER 1 -j HARDEN-FORWARD; \\
  while {tool} -D FORWARD -j HARDEN-FORWARD 2>/dev/null; do :; done'
"""
_TOOLS = ("iptables", "ip6tables")

SPEC = BackendSpec(
    name="iptables",
    summary="iptables-restore and ip6tables-restore files",
    owns="iptables chains HARDEN-*",
    rule_files=(IPT_FILES[4], IPT_FILES[6]),
    render=render,
    firewall="harden.backends.iptables.firewall:IptablesFirewall",
    # Chains are "HARDEN-" + the key, and "HARDEN-" + the key + "-F" for the forward twin.
    key_max=IPT_CHAIN_MAX - len("HARDEN-") - len("-F"),
    atomic=False,
    boot_exec=(
        _WAIT_FIREWALLD,
        f"ExecStart=/usr/sbin/iptables-restore --noflush /etc/harden/{IPT_FILES[4]}",
        f"ExecStart=/usr/sbin/ip6tables-restore --noflush /etc/harden/{IPT_FILES[6]}",
        *(_jump(tool, "INPUT", "HARDEN-INPUT") for tool in _TOOLS),
        *(_jump(tool, "FORWARD", "HARDEN-FORWARD") for tool in _TOOLS),
        *(_egress_jump(tool) for tool in _TOOLS),
    ),
    boot_after=("After=firewalld.service",),
    boot_extras={
        DOCKER_DROPIN: _DOCKER_HEAD + "".join(_DOCKER_LINE.format(tool=t) for t in _TOOLS)
    },
)
