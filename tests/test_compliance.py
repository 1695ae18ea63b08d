"""The host-firewall controls mapped in docs/compliance.md, checked on harden's own output.

A manifest with every setting the mapping needs (``egress.policy: drop``, ``forward.policy:
drop``) is rendered for both backends with harden's own code, and each mapped control is
asserted on what was rendered, on what ``apply`` adds (the iptables jumps) and on what
``--persist`` writes. One nftables test loads the ruleset into a throwaway network namespace
and reads the base chains back from the kernel. These are harden's checks of harden's rules,
written from docs/compliance.md; no auditor's code is used.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from harden.apply import boot
from harden.backends import render
from harden.backends.iptables.firewall import IptablesFirewall, parse_save
from harden.backends.iptables.rules import IPT_FILES
from harden.backends.nftables.rules import NFT_FILE
from harden.files import parse_manifest
from harden.manifest.model import Manifest
from harden.policy.model import build_policy
from harden.types import FAMILIES, Backend, Family

MANIFEST = """\
version: 1
host: compliance
policy:
  closed: drop
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: dns, port: 53, proto: [tcp, udp]}
  - {name: rtp, ports: ["10000-10100"], proto: udp}
forward:
  policy: drop
egress:
  policy: drop
  allow:
    - {name: dns, destinations: [198.51.100.53/32, "2001:db8::53/128"], port: 53,
       proto: [udp, tcp]}
    - {name: updates, destinations: [203.0.113.0/24], ports: [80, 443], proto: tcp}
    - {name: ntp, port: 123, proto: udp}
"""

HOOKS = ("input", "forward", "output")
# harden's chain for each built-in chain, and the position of the jump apply adds.
IPT_CHAINS = {"INPUT": "HARDEN-INPUT", "FORWARD": "HARDEN-FORWARD", "OUTPUT": "HARDEN-OUTPUT"}
LOOPBACK: dict[Family, str] = {4: "127.0.0.0/8", 6: "::1/128"}


def manifest() -> Manifest:
    return parse_manifest(MANIFEST, "compliance.yaml")


def rendered(backend: Backend) -> dict[str, str]:
    return render(build_policy(manifest()), backend)


def nft_text() -> str:
    return rendered("nftables")[NFT_FILE]


def nft_chain(name: str) -> list[str]:
    """The statements of one chain of table inet harden, comments and blank lines left out."""
    match = re.search(rf"\n\tchain {name} {{\n(.*?)\n\t}}\n", nft_text(), re.S)
    assert match, f"no chain {name}"
    lines = (line.strip() for line in match.group(1).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ipt_rules(family: Family) -> dict[str, list[str]]:
    """Each chain declared in the iptables file, with the rule specs appended to it, in order."""
    chains: dict[str, list[str]] = {}
    for line in rendered("iptables")[IPT_FILES[family]].splitlines():
        if line.startswith(":"):
            chains[line[1:].split()[0]] = []
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            chains[chain].append(spec)
    return chains


def applied_text(family: Family, monkeypatch: pytest.MonkeyPatch) -> str:
    """What ``harden apply`` hands to ``*-restore --noflush`` on a host with no harden rules."""
    firewall = IptablesFirewall()
    monkeypatch.setattr(firewall, "_owned", lambda family: parse_save(""))
    return firewall._load_text(family, rendered("iptables")[IPT_FILES[family]])


def ends_in_drop(chains: dict[str, list[str]], chain: str) -> bool:
    """Whether the chain's last rule is an unconditional DROP, directly or by a final jump."""
    last = chains[chain][-1]
    if last == "-j DROP":
        return True
    jump = re.fullmatch(r"-j (HARDEN-[A-Z0-9-]+)", last)
    return jump is not None and ends_in_drop(chains, jump.group(1))


def dports(spec: str) -> set[int]:
    """The destination ports a multiport rule matches."""
    match = re.search(r"--dports (\S+)", spec)
    ports: set[int] = set()
    for item in match.group(1).split(",") if match else ():
        first, _, last = item.partition(":")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


def kernel_ruleset(path: Path) -> list[dict[str, dict[str, object]]]:
    """Load ``path`` with nft in a new, empty network namespace and list it back as JSON."""
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'nft -f "$1" && nft -j list ruleset', "sh", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    items: list[dict[str, dict[str, object]]] = json.loads(proc.stdout)["nftables"]
    return items


# nftables section


def test_a_table_exists() -> None:
    text = nft_text()
    assert "\ntable inet harden {\n" in text
    # Only harden's table is replaced: no statement empties the whole ruleset.
    statements = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("flush" in line for line in statements)


def test_base_chains_exist_for_input_forward_and_output() -> None:
    for hook in HOOKS:
        assert nft_chain(hook)[0].startswith(f"type filter hook {hook} priority filter;")


def test_iptables_chains_exist_and_are_jumped_to_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for family in FAMILIES:
        chains = ipt_rules(family)
        loaded = applied_text(family, monkeypatch).splitlines()
        for builtin, own in IPT_CHAINS.items():
            assert own in chains
            assert f"-I {builtin} 1 -j {own}" in loaded
        # Nothing but harden's own chains is declared (and so flushed) by the file.
        assert all(chain.startswith("HARDEN-") for chain in chains)


def test_loopback_accepted_and_forged_loopback_dropped() -> None:
    rules = nft_chain("input")
    spoofed = ['iif != "lo" ip saddr 127.0.0.0/8 drop', 'iif != "lo" ip6 saddr ::1 drop']
    accept = rules.index('iif "lo" accept')
    assert all(rules.index(rule) < accept for rule in spoofed)
    # Nothing accepts before the forged-loopback drops.
    assert not any("accept" in rule for rule in rules[: max(map(rules.index, spoofed))])
    assert 'oif "lo" accept' in nft_chain("output")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_iptables_loopback_accepted_and_forged_loopback_dropped(family: Family) -> None:
    chains = ipt_rules(family)
    rules = chains["HARDEN-INPUT"]
    assert rules[0] == f"! -i lo -s {LOOPBACK[family]} -j DROP"
    assert "-i lo -j RETURN" in rules
    assert "-o lo -j RETURN" in chains["HARDEN-OUTPUT"]


def test_established_and_outbound_configured() -> None:
    established = "ct state vmap { established : accept, related : accept, invalid : drop }"
    assert established in nft_chain("input")
    assert established in nft_chain("forward")
    output = nft_chain("output")
    assert output[1] == "ct state established accept"
    # Related traffic leaves only as ICMP errors (another table's FTP helper must not
    # open outbound connections: docs/design.md, "Egress").
    assert output[2] == "ct state related meta l4proto { icmp, ipv6-icmp } accept"
    for allow in manifest().egress.allow:
        assert any(f'comment "{allow.name}"' in rule for rule in output), allow.name
    assert output[-1] == "drop"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_iptables_established_and_outbound_configured(family: Family) -> None:
    chains = ipt_rules(family)
    for chain in IPT_CHAINS.values():
        state = "ESTABLISHED" if chain == "HARDEN-OUTPUT" else "RELATED,ESTABLISHED"
        assert chains[chain][0 if chain != "HARDEN-INPUT" else 1] == (
            f"-m conntrack --ctstate {state} -j RETURN"
        )
    output = chains["HARDEN-OUTPUT"]
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    assert output[1] == f"-p {icmp} -m conntrack --ctstate RELATED -j RETURN"
    for allow in manifest().egress.allow:
        nets = [n for n in allow.destinations or () if n.version == family]
        if allow.destinations and not nets:
            continue  # no destination of this family: nothing may leave over it
        for proto in allow.proto:
            for port in allow.port_list:
                assert any(
                    f"-p {proto} " in rule
                    and set(port) <= dports(rule)
                    and all(f"-d {net} " in " ".join(output) for net in nets)
                    and rule.endswith("-j RETURN")
                    for rule in output
                ), (allow.name, proto, str(port))


def test_default_deny_on_every_base_chain() -> None:
    for hook in HOOKS:
        assert nft_chain(hook)[0].endswith("policy drop;"), hook


def test_the_witness_chains_count_and_decide_nothing() -> None:
    """verify.probers adds counting base chains with policy accept (docs/compliance.md,
    N6): each rule only counts, so no packet's verdict changes, and harden's input and
    forward chains (policy drop) still decide every packet; the default deny stands."""
    text = MANIFEST + "verify: {probers: [198.18.9.0/24, 'fd00:9::/64']}\n"
    nft = render(build_policy(parse_manifest(text, "probers.yaml")), "nftables")[NFT_FILE]
    chains = re.findall(r"\n\tchain (\w+) {\n(.*?)\n\t}\n", nft, re.S)
    accepting = {name: body for name, body in chains if "policy accept;" in body}
    assert sorted(accepting) == [
        "witness", "witness_forward", "witness_passed", "witness_passed_forward",
    ]  # fmt: skip
    for name, body in accepting.items():
        rules = [r.strip() for r in body.splitlines()[1:] if r.strip()]
        assert rules and all(re.search(r" counter name \S+$", r) for r in rules), (name, rules)
        verdicts = {"accept", "drop", "reject", "jump", "goto", "return", "queue"}
        assert not [r for r in rules if verdicts & set(r.split())], name
    for hook in ("input", "forward", "output"):
        body = dict(chains)[hook]
        assert "policy drop;" in body.splitlines()[0], hook


@pytest.mark.parametrize("family", list(FAMILIES))
def test_iptables_default_deny_in_harden_chains(
    family: Family, monkeypatch: pytest.MonkeyPatch
) -> None:
    chains = ipt_rules(family)
    for chain in IPT_CHAINS.values():
        assert ends_in_drop(chains, chain), chain
    # What harden allows is RETURNed to the built-in chain, never ACCEPTed here.
    assert not any("-j ACCEPT" in rule for rules in chains.values() for rule in rules)
    # The built-in chains' policies stay the host's: the file does not set them.
    text = applied_text(family, monkeypatch)
    assert not re.search(r"^(:(INPUT|FORWARD|OUTPUT) |-P )", text, re.M)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_rules_are_permanent_and_the_service_enabled(backend: Backend, tmp_path: Path) -> None:
    files = rendered(backend)
    boot.install(backend, files, tmp_path)
    for name, text in files.items():
        assert (tmp_path / "etc/harden" / name).read_text() == text
    unit = (tmp_path / boot.UNIT).read_text()
    assert unit == boot.unit_text(backend)
    assert "WantedBy=sysinit.target" in unit and "Before=network-pre.target" in unit
    for name in files:
        assert f"/etc/harden/{name}" in unit
    link = tmp_path / boot.WANTS
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/harden.service"
    assert boot.describe(tmp_path)["loads_at_boot"] is True
    if backend == "nftables":
        assert "ExecStart=/usr/sbin/nft -f /etc/harden/harden.nft" in unit
    else:
        for builtin, own in IPT_CHAINS.items():
            assert f"-I {builtin} 1 -j {own}" in unit.replace("ip6tables", "iptables")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_declared_port_has_a_rule(family: Family) -> None:
    chains = ipt_rules(family)
    rules = chains["HARDEN-INPUT"]
    for service in manifest().services:
        for proto in service.proto:
            for port in service.port_list:
                matching = [r for r in rules if f"-p {proto} " in r and set(port) <= dports(r)]
                assert len(matching) == 1, (service.name, proto, str(port))
                if service.sources is None:
                    assert matching[0].endswith("-j RETURN")
                    continue
                group = re.search(r"-g (HARDEN-\S+)$", matching[0])
                assert group, matching[0]
                nets = [n for n in service.sources if n.version == family]
                allowed = chains[group.group(1)]
                assert [f"-s {net} -j RETURN" for net in nets] == allowed[:-1]
                assert ends_in_drop(chains, group.group(1))


@pytest.mark.netns
def test_kernel_lists_the_base_chains_with_their_hooks_and_drop_policy(tmp_path: Path) -> None:
    path = tmp_path / NFT_FILE
    path.write_text(nft_text())
    items = kernel_ruleset(path)
    tables = [item["table"] for item in items if "table" in item]
    assert [(t["family"], t["name"]) for t in tables] == [("inet", "harden")]
    base = {
        str(c["hook"]): c
        for c in (item["chain"] for item in items if "chain" in item)
        if "hook" in c
    }
    assert sorted(base) == sorted(HOOKS)
    for hook, chain in base.items():
        assert (chain["table"], chain["type"], chain["policy"]) == ("harden", "filter", "drop")
        assert chain["prio"] == 0, hook  # priority filter


@pytest.mark.netns
@pytest.mark.parametrize("family", list(FAMILIES))
def test_kernel_lists_the_iptables_jumps_first(
    family: Family, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / IPT_FILES[family]
    path.write_text(applied_text(family, monkeypatch))
    tool = "iptables" if family == 4 else "ip6tables"
    script = f'{tool}-restore --noflush < "$1" && {tool} -S'
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "sh", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.splitlines()
    for builtin, own in IPT_CHAINS.items():
        rules = [line for line in listed if line.startswith(f"-A {builtin} ")]
        assert rules[0] == f"-A {builtin} -j {own}"
        # The built-in policy is the host's (a new namespace's ACCEPT), as documented.
        assert f"-P {builtin} ACCEPT" in listed
    assert "-A HARDEN-OUTPUT -j DROP" in listed and "-A HARDEN-FORWARD -j DROP" in listed
