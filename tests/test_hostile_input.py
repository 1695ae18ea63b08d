"""Hostile manifests and inventories: generated or special files, refused in one line, fast."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harden.backends import render
from harden.backends.iptables.rules import IPT_CHAIN_MAX, ipt_chain
from harden.errors import ExitStatus, ManifestError
from harden.files import MAX_BYTES, load_manifest, parse_manifest
from harden.manifest import safeyaml
from harden.manifest.ports import show
from harden.policy.model import build_policy
from harden.verify.inventory import load_inventory

WEB = Path(__file__).parent.parent / "rulesets" / "web-server.yaml"


def run_validate(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harden.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def assert_one_line_usage_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == ExitStatus.USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("harden: error: ")
    for text in expected:
        assert text in lines[0]


def bomb(levels: int) -> str:
    """A manifest whose port is a list of ``levels`` anchors, each nine aliases of the last."""
    items = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"version: 1\nservices: [{{name: a, proto: tcp, port: [{', '.join(items)}]}}]\n"


def test_billion_laughs_is_refused_before_expansion(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9))
    start = time.perf_counter()
    with pytest.raises(ManifestError, match="aliases expand to over") as caught:
        load_manifest(path)
    assert time.perf_counter() - start < 1
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200 + len(str(path))
    assert_one_line_usage_error(run_validate(path), str(path), "alias bomb")


def test_error_message_does_not_expand_a_shared_structure() -> None:
    value: list[object] = ["x"] * 9
    for _ in range(8):  # 9^9 leaves if walked: only reprlib's bounded walk is fast
        value = [value] * 9
    start = time.perf_counter()
    text = show(value)
    assert time.perf_counter() - start < 1
    assert len(text) <= 40


def test_alias_bomb_under_the_limit_as_a_port_gives_a_short_message() -> None:
    start = time.perf_counter()
    with pytest.raises(ManifestError) as caught:
        parse_manifest(bomb(4), "bomb.yaml")
    assert time.perf_counter() - start < 1
    message = str(caught.value)
    assert message.startswith("bomb.yaml: services[0].port: expected a port")
    assert "\n" not in message and len(message) < 200


def test_deep_nesting_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nhost: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert_one_line_usage_error(run_validate(path), str(path), "nested deeper than 64 levels")
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text("[" * 50_000)
    assert_one_line_usage_error(run_validate(unclosed), str(unclosed), "nested deeper")
    block = tmp_path / "block.yaml"
    block.write_text("".join(" " * i + "a:\n" for i in range(100)))
    with pytest.raises(ManifestError, match="nested deeper than 64"):
        load_manifest(block)


def test_nesting_at_the_limit_is_only_a_validation_error() -> None:
    text = "version: 1\nhost: " + "[" * 60 + "]" * 60 + "\n"
    with pytest.raises(ManifestError, match=r"host: expected text \(quote it\), got a list"):
        parse_manifest(text, "m.yaml")


def test_recursion_error_while_loading_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(safeyaml, "_check_shape", boom)
    monkeypatch.setattr(safeyaml, "_fast_load", boom)
    with pytest.raises(ManifestError, match=r"m\.yaml: YAML nested too deeply"):
        parse_manifest("version: 1\n", "m.yaml")


def test_huge_integer_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\nservices: [{name: a, proto: tcp, port: " + "9" * 5000 + "}]\n")
    assert_one_line_usage_error(run_validate(path), str(path), "line 2 column 40", "5000 digits")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nhost: 2026-13-45\n", "line 2 column 7"),
        ("version: 1\n? [a, b]\n: x\n", "keys must be strings"),
        ("version: 1\nservices: [{name: a, port: !!int 'abc', proto: tcp}]\n", "cannot read int"),
        ("version: 1\nservices: [{name: a, port: 1:20, proto: tcp}]\n", "got '1:20'"),
    ],
)
def test_constructor_errors_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line_usage_error(run_validate(path), str(path), expected)


def test_yaml_12_numbers_still_parse() -> None:
    text = (
        "version: 1\n"
        "services: [{name: a, port: 80, proto: tcp}, {name: b, port: '81', proto: tcp}]\n"
    )
    manifest = parse_manifest(text, "m.yaml")
    assert [str(s.port) for s in manifest.services] == ["80", "81"]
    loaded = safeyaml.load_yaml("a: [1, -2, +3, 1.5, .5, 1e3, 1:20, 0x50, 1_0, 0o17]", "x")
    assert loaded == {"a": [1, -2, "+3", 1.5, 0.5, 1000.0, "1:20", "0x50", "1_0", "0o17"]}


@pytest.mark.parametrize(
    ("text", "field", "got"),
    [
        ("policy: {icmp: {echo: yes}}", "policy.icmp.echo", "'yes'"),
        ("policy: {ipv6: off}", "policy.ipv6", "'off'"),
        ("services: [{name: web, port: +80, proto: tcp}]", "services[0].port", "'+80'"),
        ("services: [{name: web, port: 0120, proto: tcp}]", "services[0].port", "'0120'"),
        ("services: [{name: web, port: '0120', proto: tcp}]", "services[0].port", "'0120'"),
        ("services: [{name: web, port: '080-090', proto: tcp}]", "services[0].port", "'080-090'"),
    ],
)
def test_yaml_11_booleans_and_unusual_numbers_are_refused_by_field(
    text: str, field: str, got: str
) -> None:
    """yes/no/on/off are booleans to YAML 1.1 and 0120 is octal 80: the README promises
    true/false and plain decimal digits, so anything else names its field."""
    with pytest.raises(ManifestError) as error:
        parse_manifest(f"version: 1\n{text}\n", "m.yaml")
    assert f"m.yaml: {field}:" in str(error.value) and got in str(error.value)


def test_dev_zero_is_refused_quickly() -> None:
    start = time.perf_counter()
    proc = run_validate("/dev/zero")
    assert time.perf_counter() - start < 10
    assert_one_line_usage_error(proc, "/dev/zero: not a regular file")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert_one_line_usage_error(run_validate(fifo), f"{fifo}: not a regular file")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a regular file"):
        load_manifest(tmp_path)


def test_file_over_10_mb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("version: 1\n" + "#" * MAX_BYTES + "\n")
    assert_one_line_usage_error(run_validate(path), f"{path}: larger than 10 MB")
    exact = tmp_path / "exact.yaml"
    exact.write_text("version: 1\n" + "#" * (MAX_BYTES - len("version: 1\n")))
    assert exact.stat().st_size == MAX_BYTES
    load_manifest(exact)


def test_chain_names_fit_iptables_with_long_and_shared_names() -> None:
    prefix = "p" * 40
    lines = ["version: 1", "services:"]
    for i in range(150):
        lines.append(
            f"  - {{name: {prefix}{i:03d}, port: {1000 + i}, proto: [tcp, udp], "
            f"sources: [198.18.{i}.0/24]}}"
        )
    lines.append(f"  - {{name: '{'1' * 64}', port: 99, proto: tcp, sources: [198.19.0.0/24]}}")
    lines.append(f"  - {{name: {'x' * 64}, port: 98, proto: tcp, sources: [198.19.1.0/24]}}")
    policy = build_policy(parse_manifest("\n".join(lines) + "\n", "m.yaml"))
    chains = [ipt_chain(allow) for allow in policy.allows if allow.sources[4] is not None]
    assert len(chains) == 302
    assert max(len(c) for c in chains) <= IPT_CHAIN_MAX
    assert len(set(chains)) == len(chains)
    files = render(policy, "iptables")
    for text in files.values():
        for line in text.splitlines():
            if line.startswith(":") or line.startswith("-N "):
                assert len(line.split()[0 if line.startswith(":") else 1].lstrip(":")) <= 28


def write_inventory(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    return path


def test_inventory_address_under_two_manifests_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\n")
    path = write_inventory(
        tmp_path,
        f"hosts:\n  - {{name: web-1, manifest: {WEB}, targets: [198.18.0.1]}}\n"
        f"  - {{name: db-1, manifest: {other}, targets: [198.18.0.2, 198.18.0.1]}}\n",
    )
    with pytest.raises(ManifestError) as caught:
        load_inventory(path)
    assert str(caught.value) == (
        f"{path}: hosts[1].targets[1]: 198.18.0.1 is also a target of hosts[0] (web-1)"
    )


def test_inventory_same_manifest_may_share_an_address(tmp_path: Path) -> None:
    path = write_inventory(
        tmp_path,
        f"hosts:\n  - {{name: a, manifest: {WEB}, targets: [198.18.0.1]}}\n"
        f"  - {{name: b, manifest: {WEB}, targets: [198.18.0.1]}}\n",
    )
    assert [h.name for h in load_inventory(path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hosts: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than 64"),
        ("hosts:\n  - {name: a, 1: x}\n", "keys must be strings"),
        ("hosts:\n  - {name: 2026-13-45}\n", "cannot read timestamp"),
    ],
)
def test_inventory_uses_the_hardened_loader(tmp_path: Path, text: str, expected: str) -> None:
    path = write_inventory(tmp_path, text)
    with pytest.raises(ManifestError, match=expected) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_inventory_special_file_is_refused() -> None:
    with pytest.raises(ManifestError, match="/dev/zero: not a regular file"):
        load_inventory(Path("/dev/zero"))


def test_the_fast_path_reads_what_the_full_loader_reads() -> None:
    """load_yaml's event-based fast path (long allowlists) against the composing loader
    on random documents in both styles, with the scalars YAML 1.1 and 1.2 read apart:
    the same values, or it steps aside (anchors, tags, floats) for the full loader."""
    import yaml
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tricky = st.sampled_from(
        ["yes", "no", "on", "off", "y", "~", "null", "", "true", "False", "0x50", "0o17",
         "0120", "+80", "1:20", "1_0", "80", "-3", "1.5", ".inf", "2026-12-07", "<<", "=",
         "198.18.0.0/15", "fd00::/64", "a: b", "- x", "#", "'q'"]
    )  # fmt: skip
    scalars = st.one_of(tricky, st.text(max_size=8), st.integers(), st.booleans(), st.none())
    data = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=25,
    )

    @settings(max_examples=400, deadline=None)
    @given(data, st.booleans())
    def agree(value: object, flow: bool) -> None:
        text = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True)
        for doc in (text, text.replace("'", "")):  # quoted and, where it still parses, plain
            try:
                full = yaml.load(doc, Loader=safeyaml._UniqueKeyLoader)
            except yaml.YAMLError:
                continue
            try:
                fast = safeyaml._fast_load(doc)
            except safeyaml._Unusual:
                continue
            read.append(doc)
            assert repr(fast) == repr(full), doc  # repr: True and 1 differ, nested too

    read: list[str] = []
    agree()
    assert len(read) > 200  # the fast path did read most of them


def reads_as_ipaddress_does(value: str) -> None:
    """model._parse_network gives ipaddress's network (type and text too), or refuses too."""
    import ipaddress

    from harden.manifest.model import _parse_network

    try:
        want = ipaddress.ip_network(value, strict=True)
    except ValueError:
        with pytest.raises(ValueError):
            _parse_network(value)
        return
    got = _parse_network(value)
    assert got == want and type(got) is type(want) and str(got) == str(want), value


def test_the_ipv4_fast_path_reads_networks_as_ipaddress_does() -> None:
    """model._parse_network's shortcut for dotted quads (a long allowlist's sources) gives
    ipaddress's network, object type included, or defers to it, which then refuses with
    its own words: host bits, leading zeros, octets or prefixes out of range."""

    from hypothesis import given, settings
    from hypothesis import strategies as st

    octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "-1"]))
    prefix = st.one_of(st.none(), st.integers(0, 40).map(str), st.sampled_from(["08", "", "x"]))
    text = st.builds(
        lambda o, p: ".".join(o) + ("" if p is None else "/" + p),
        st.lists(octet, min_size=3, max_size=5),
        prefix,
    )

    @settings(max_examples=500, deadline=None)
    @given(text)
    def agree(value: str) -> None:
        reads_as_ipaddress_does(value)

    agree()


def test_the_ipv6_fast_path_reads_networks_as_ipaddress_does() -> None:
    """The same for IPv6 in plain hex groups: compressed, exploded, upper case, masked to
    whole networks or not, and mangled (":::", five-digit groups, a stray colon, a
    zone, an embedded IPv4 address, a prefix of 129 or 064)."""
    import ipaddress

    from hypothesis import given, settings
    from hypothesis import strategies as st

    def text(address: ipaddress.IPv6Address, bits: int, form: int, mangle: int) -> str:
        net = ipaddress.IPv6Network((int(address) >> (128 - bits) << (128 - bits), bits))
        base = [net.network_address.compressed, net.network_address.exploded.upper(),
                address.compressed][form]  # fmt: skip
        suffix = ["", f"/{bits}", "/129", "/064", "%eth0", f"/{bits}"][mangle % 6]
        mangled = [base, base.replace("::", ":::"), ":" + base, base + ":", "1" + base,
                   "::ffff:1.2.3.4", base][mangle % 7]  # fmt: skip
        return mangled + suffix

    @settings(max_examples=600, deadline=None)
    @given(st.ip_addresses(v=6), st.integers(0, 128), st.integers(0, 2), st.integers(0, 41))
    def agree(address: ipaddress.IPv6Address, bits: int, form: int, mangle: int) -> None:
        reads_as_ipaddress_does(text(address, bits, form, mangle))

    agree()
