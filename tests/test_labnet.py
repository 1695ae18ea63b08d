"""The lab network itself: addresses, reachability and stand-in services (real kernel)."""

from __future__ import annotations

import pytest

from harden.files import load_manifest
from harden.lab.net import LabNet
from harden.policy.model import build_policy

from .conftest import REPO, own_namespaces

pytestmark = pytest.mark.netns


def test_outside_is_a_stranger_and_allowed_is_inside_every_source() -> None:
    policy = build_policy(load_manifest(REPO / "rulesets" / "dns-server.yaml"))
    with LabNet(policy) as lab:
        assert lab.allowed is not None
        restricted = [a for a in policy.allows if a.restricted]
        for allow in restricted:
            nets4 = allow.sources[4] or ()
            nets6 = allow.sources[6] or ()
            assert not any(lab.outside.v4 in n for n in nets4)
            assert lab.outside.v6 is not None and not any(lab.outside.v6 in n for n in nets6)
        # 198.18.1.10 is the only address inside both ntp's /16 and ssh's single host.
        assert str(lab.allowed.v4) == "198.18.1.10"
        assert str(lab.allowed.v6) == "fd00:1::10"
        lab.start_services(lifetime=30)
        lab.wait_reachable()
        for host in (lab.outside, lab.allowed):
            assert lab.server.v6 is not None
            for target in (lab.server.v4, lab.server.v6):
                out = host.ns.run(
                    [
                        "nmap",
                        "-n",
                        "-Pn",
                        "-sT",
                        "-p",
                        "22,53,54",
                        "-6" if target.version == 6 else "-4",
                        str(target),
                    ]
                ).stdout
                assert "22/tcp open" in out and "53/tcp open" in out
                assert "54/tcp closed" in out
        names = own_namespaces()
        assert len(names) == 3
    assert own_namespaces() == set()


def test_namespaces_are_removed_when_the_lab_fails() -> None:
    policy = build_policy(load_manifest(REPO / "rulesets" / "web-server.yaml"))
    with pytest.raises(RuntimeError, match="boom"), LabNet(policy):
        raise RuntimeError("boom")
    assert own_namespaces() == set()
