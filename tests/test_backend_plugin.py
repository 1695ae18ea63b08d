"""Adding a backend is one package and one registry line: a toy backend, registered here.

It renders through the CLI and the API, is a choice of every --backend option, is
refused nowhere the request layer checks names, and its boot files come and go as the
real backends' do. Nothing in harden names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from harden import api
from harden.apply import boot
from harden.backends import REGISTRY, firewall, register, render
from harden.backends.spec import BackendSpec
from harden.cli import main
from harden.errors import OptionError
from harden.files import load_manifest
from harden.policy.model import MAX_KEY, Policy, build_policy
from harden.request import ApplyRequest, DiffRequest

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "rulesets" / "web-server.yaml"


def toy_render(policy: Policy) -> dict[str, str]:
    lines = [f"allow {a.proto} {rng}" for a in policy.allows for rng in a.ports]
    return {"toy.rules": "\n".join([*lines, f"closed {policy.closed}"]) + "\n"}


class ToyFirewall:
    """A kernel that is a dict: what a backend's Firewall must do, and no more."""

    name = "toy"
    atomic = True
    loaded: ClassVar[dict[str, str]] = {}

    def render(self, policy: Policy) -> dict[str, str]:
        return toy_render(policy)

    def check(self, files: dict[str, str]) -> str:
        return files["toy.rules"]

    def load(self, files: dict[str, str]) -> None:
        ToyFirewall.loaded = dict(files)

    def snapshot(self) -> str:
        return ToyFirewall.loaded.get("toy.rules", "")

    def restore(self, snapshot: str) -> None:
        ToyFirewall.loaded = {"toy.rules": snapshot} if snapshot else {}

    def live(self) -> str:
        return self.snapshot()

    def counters(self) -> dict[str, int]:
        return {}

    def identity(self) -> str | None:
        return None

    def persist_targets(self, root: Path) -> list[Path]:
        return boot.targets(root)

    def persist(self, files: dict[str, str], root: Path) -> list[Path]:
        return boot.install(self.name, files, root)


TOY = BackendSpec(
    name="toy",
    summary="a dict standing in for a kernel",
    owns="toy rules",
    rule_files=("toy.rules",),
    render=toy_render,
    firewall="tests.test_backend_plugin:ToyFirewall",
    key_max=MAX_KEY,
    atomic=True,
    boot_exec=("ExecStart=/usr/bin/toy-restore /etc/harden/toy.rules",),
    boot_after=("After=toy-daemon.service",),
    boot_extras={"etc/toy/harden.conf": "toy: defer to harden\n"},
)


@pytest.fixture
def toy() -> Iterator[None]:
    register(TOY)
    try:
        yield
    finally:
        REGISTRY.pop("toy")


def test_a_registered_backend_renders_through_the_cli_and_the_api(
    toy: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "--backend", "toy", str(WEB)]) == 0
    out = capsys.readouterr().out
    assert "allow tcp 22" in out and "allow udp 443" in out and "closed drop" in out
    assert api.render(WEB, "toy") == toy_render(build_policy(load_manifest(WEB)))
    assert render(build_policy(load_manifest(WEB)), "toy") == api.render(WEB, "toy")


def test_the_request_layer_takes_a_registered_backend_and_refuses_others(toy: None) -> None:
    assert ApplyRequest.parse(WEB, "toy").backend == "toy"
    assert DiffRequest.parse(WEB, backend_name="toy").backend == "toy"
    REGISTRY.pop("toy")
    try:
        with pytest.raises(OptionError, match="'toy' is not one of nftables, iptables"):
            ApplyRequest.parse(WEB, "toy")
    finally:
        register(TOY)


def test_a_registered_backend_loads_and_persists_like_the_real_ones(
    toy: None, tmp_path: Path
) -> None:
    fw = firewall("toy")
    files = fw.render(build_policy(load_manifest(WEB)))
    fw.load(files)
    assert fw.live() == files["toy.rules"]
    written = fw.persist(files, tmp_path)
    assert tmp_path / "etc/harden/toy.rules" in written
    assert (tmp_path / "etc/toy/harden.conf").read_text() == "toy: defer to harden\n"
    unit = (tmp_path / boot.UNIT).read_text()
    assert "Description=harden firewall (toy rules)" in unit
    assert "After=toy-daemon.service\n" in unit
    assert "ExecStart=/usr/bin/toy-restore /etc/harden/toy.rules\n" in unit
    assert boot.describe(tmp_path)["backends"] == ["toy"]
    assert boot.read_rules(tmp_path, "toy") == files
    # A switch to a real backend takes the toy's files away, extras included.
    boot.install("nftables", api.render(WEB, "nftables"), tmp_path)
    assert not (tmp_path / "etc/harden/toy.rules").exists()
    assert not (tmp_path / "etc/toy/harden.conf").exists()
    assert boot.describe(tmp_path)["backends"] == ["nftables"]


def test_a_backend_whose_names_cannot_carry_every_key_is_refused() -> None:
    short = BackendSpec(**{**TOY.__dict__, "name": "short", "key_max": MAX_KEY - 1})
    with pytest.raises(ValueError, match="names hold 18 < 19 characters"):
        register(short)
    assert "short" not in REGISTRY
