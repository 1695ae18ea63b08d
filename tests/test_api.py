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


# CLI command -> (API function, CLI parameter -> API parameter where the names differ).
TWINS: dict[str, tuple[str, dict[str, str]]] = {
    "validate": ("validate", {"manifests": "path"}),
    "render": ("render", {"manifest": "path"}),
    "apply": ("apply", {"manifest": "path", "confirm_window": "confirm"}),
    "diff": ("diff", {"manifest": "path"}),
    "status": ("status", {}),
    "remove": ("remove", {}),
    "verify": ("verify", {"manifest": "path"}),
    "lab": ("lab", {"manifest": "path"}),
}
# Options that shape the CLI's output, not what is done: no API twin needed.
PRESENTATION = {"fmt", "output"}
# CLI options that select another mode, each with its own API function.
MODES = {
    ("verify", "inventory"): "verify --inventory: the fleet API is verify.sweep.run_verify",
    ("verify", "egress"): "api.verify_egress",
    ("verify", "sinks"): "api.verify_egress",
    ("verify", "sink_command"): "api.verify_egress",
    ("diff", "new"): "diff OLD NEW: the exposure diff",
    ("diff", "labels"): "diff OLD NEW: the names it shows for them",
    ("lab", "reap"): "lab --reap: harden.lab.netns.reap",
}


@pytest.mark.parametrize("command", sorted(TWINS))
def test_every_cli_option_has_its_api_twin(command: str) -> None:
    import inspect

    from harden.cli import cli

    function, renamed = TWINS[command]
    accepted = set(inspect.signature(getattr(api, function)).parameters)
    cli_params = {p.name for p in cli.commands[command].params if p.name}
    missing = sorted(
        name
        for name in cli_params - PRESENTATION
        if (command, name) not in MODES and renamed.get(name, name) not in accepted
    )
    assert missing == [], f"api.{function} lacks {missing}"


def test_verify_egress_takes_what_verify_egress_needs() -> None:
    import inspect

    params = inspect.signature(api.verify_egress).parameters
    assert {"path", "sinks", "sink_command", "ports"} <= set(params)
    assert params["ports"].kind is inspect.Parameter.KEYWORD_ONLY


def test_a_wrong_option_is_a_type_error_not_silence() -> None:
    with pytest.raises(TypeError):
        api.verify(WEB, ["198.18.0.1"], witnes="x")  # type: ignore[call-overload]


def test_bad_options_are_option_errors_never_value_errors() -> None:
    """The API parses options as the CLI does: one OptionError naming the option."""
    from harden.errors import OptionError

    cases: list[tuple[str, Callable[[], object]]] = [
        ("target", lambda: api.verify(WEB, ["not-an-address"])),
        ("source", lambda: api.verify(WEB, ["198.18.0.1"], sources=("300.1.1.1",))),
        ("seen_as", lambda: api.verify(WEB, ["198.18.0.1"], seen_as=("x",))),
        ("ports", lambda: api.verify(WEB, ["198.18.0.1"], ports="0-5")),
        ("wait", lambda: api.verify(WEB, ["198.18.0.1"], wait=-1)),
        ("format", lambda: api.verify(WEB, ["198.18.0.1"], format="pdf")),
        ("sink", lambda: api.verify_egress(WEB, ["nowhere"], "true")),
        ("ports", lambda: api.verify_egress(WEB, ["198.18.0.1"], "true", ports="declared")),
        ("ports", lambda: api.verify_egress(WEB, ["198.18.0.1"], "true", ports="80-70")),
        ("backend", lambda: api.render(WEB, "pf")),
        ("confirm", lambda: api.apply(WEB, confirm=0)),
        ("ports", lambda: api.lab(WEB, ports="x")),
    ]
    for option, call in cases:
        with pytest.raises(OptionError) as caught:
            call()
        assert caught.value.option == option, (option, caught.value)
