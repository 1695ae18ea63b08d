"""Every rendered ruleset is accepted by the real tools, inside a throwaway namespace."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.backends import render
from harden.files import parse_manifest
from harden.lab.netns import Namespace
from harden.policy.model import build_policy

from .conftest import REPO

pytestmark = pytest.mark.netns

GOLDEN = Path(__file__).parent / "golden"
NFT_FILES = sorted([*GOLDEN.glob("*/expected.harden.nft"), *REPO.glob("rulesets/*/harden.nft")])
IPT_FILES = sorted(
    [*GOLDEN.glob("*/expected.harden.rules.v*"), *REPO.glob("rulesets/*/harden.rules.v*")]
)


def label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", NFT_FILES, ids=label)
def test_nft_check_accepts(path: Path, netns: Callable[[str], Namespace]) -> None:
    ns = netns("syn")
    proc = ns.run(["nft", "-c", "-f", path], check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", IPT_FILES, ids=label)
def test_iptables_restore_accepts(path: Path, netns: Callable[[str], Namespace]) -> None:
    ns = netns("syn")
    tool = "iptables-restore" if path.name.endswith("v4") else "ip6tables-restore"
    proc = ns.run([tool, "--test", "--noflush", path], check=False)
    assert proc.returncode == 0, proc.stderr


def test_load_is_atomic_and_leaves_other_tables_alone(netns: Callable[[str], Namespace]) -> None:
    """Loading twice replaces harden's table in place; a foreign table is untouched."""
    ns = netns("syn")
    ns.run(
        [
            "nft",
            "add table ip nat; add chain ip nat pre { type nat hook prerouting priority -100; }",
        ]
    )
    ns.run(["nft", "add rule ip nat pre tcp dport 8080 dnat to 198.18.0.9:80"])
    foreign = ns.run(["nft", "list", "table", "ip", "nat"]).stdout
    ruleset = REPO / "rulesets" / "web-server" / "harden.nft"
    ns.run(["nft", "-f", ruleset])
    ns.run(["nft", "-f", ruleset])
    assert ns.run(["nft", "list", "table", "ip", "nat"]).stdout == foreign
    tables = ns.run(["nft", "list", "tables"]).stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table inet harden", "table ip nat"]
    chains = ns.run(["nft", "list", "table", "inet", "harden"]).stdout
    assert chains.count("chain input") == 1


def test_hostile_names_do_not_change_the_rules(
    netns: Callable[[str], Namespace], tmp_path: Path
) -> None:
    """Names full of nft/iptables syntax load to the same rules as plain names."""
    hostile = (GOLDEN / "06-hostile-names" / "manifest.yaml").read_text()
    manifest = parse_manifest(hostile)
    tame = hostile
    for i, service in enumerate(manifest.services):
        for text in (service.name, service.comment):
            if text:
                tame = tame.replace(json.dumps(text), f"svc{i}")
    tame = tame.replace(json.dumps(manifest.host), "plain")
    assert tame != hostile and "svc0" in tame and "svc2" in tame

    def loaded(text: str, family: int) -> tuple[list[str], dict[str, list[str]]]:
        ns = netns("syn")
        files = render(build_policy(parse_manifest(text)), "nftables")
        files.update(render(build_policy(parse_manifest(text)), "iptables"))
        nft = tmp_path / "r.nft"
        nft.write_text(files["harden.nft"])
        ns.run(["nft", "-f", nft])
        listing = ns.run(["nft", "list", "ruleset"]).stdout
        ipt = tmp_path / "r.ipt"
        ipt.write_text(files[f"harden.rules.v{family}"])
        tool = "iptables" if family == 4 else "ip6tables"
        ns.run([f"{tool}-restore", "--noflush", ipt])
        saved = ns.run([f"{tool}-save", "-t", "filter"]).stdout
        return [_shape(line) for line in listing.splitlines()], _ipt_shape(saved)

    for family in (4, 6):
        assert loaded(hostile, family) == loaded(tame, family)


def _shape(line: str) -> str:
    """A rule without its comment, and with set names (derived from names) blanked."""
    return re.sub(r"@\w+|set \w+", "SET", line.split(" comment ")[0].strip())


def _ipt_shape(saved: str) -> dict[str, list[str]]:
    """Rules per chain, comments dropped, harden's name-derived chain names blanked."""
    chains: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("-A "):
            _, chain, rule = line.split(" ", 2)
            rule = re.sub(r'-m comment --comment ("[^"]*"|\S+) ', "", rule)
            rule = _NAMED.sub("SRC", rule)
            chains.setdefault(_NAMED.sub("SRC", chain), []).append(rule)
    # Chains named after services sort by those names: compare their rules as a multiset.
    return {chain: sorted(rules) if chain == "SRC" else rules for chain, rules in chains.items()}


# harden's chains whose names come from the manifest (its fixed ones keep their names).
_NAMED = re.compile(r"HARDEN-(?!(?:INPUT|FORWARD|DNAT-IN|DNAT-FWD|CLOSED|LIMITED)\b)[A-Z0-9-]+")
