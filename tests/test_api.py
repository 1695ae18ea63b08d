"""The public Python API returns data and raises HardenError; nothing prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harden import api
from harden.lab.netns import Namespace

from .conftest import REPO

WEB = REPO / "rulesets" / "web-server.yaml"


def test_load_and_render(capsys: pytest.CaptureFixture[str]) -> None:
    assert api.load(WEB).host == "web-1"
    assert api.render(WEB)["harden.nft"] == (REPO / "rulesets/web-server/harden.nft").read_text()
    assert set(api.render(WEB, "iptables")) == {"harden.rules.v4", "harden.rules.v6"}
    assert capsys.readouterr() == ("", "")


def test_errors_are_harden_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nservices: [{name: a, port: 0, proto: tcp}]\n")
    with pytest.raises(api.HardenError) as caught:
        api.render(bad)
    assert caught.value.exit_status == api.ExitStatus.USAGE


@pytest.mark.netns
def test_apply_and_diff_in_a_namespace(netns: Callable[[str], Namespace], tmp_path: Path) -> None:
    ns = netns("api")
    code = (
        "import json, sys\nfrom harden import api\n"
        "first = api.apply(sys.argv[1], state_dir=sys.argv[2])\n"
        "again = api.apply(sys.argv[1], state_dir=sys.argv[2])\n"
        "print(json.dumps([first['changed'], again['changed'], api.diff(sys.argv[1])['drift']]))"
    )
    out = ns.run([sys.executable, "-c", code, str(WEB), str(tmp_path / "st")]).stdout
    assert json.loads(out) == [True, False, False]
