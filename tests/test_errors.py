"""Errors by kind: the library names options as the API does, the CLI as its flags; a broken
invariant is a bug (exit 70), a command that does not fit the state is refused (exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harden.apply.state import State
from harden.errors import ExitStatus, InternalError, OptionError, Refused
from harden.verify.engine.route import check_target
from harden.verify.options import PortSelection

from .conftest import REPO

WEB = REPO / "rulesets" / "web-server.yaml"


def test_library_errors_name_the_option_not_the_flag() -> None:
    with pytest.raises(OptionError) as caught:
        PortSelection.parse("1-2-3")
    assert caught.value.option == "ports" and str(caught.value).startswith("ports: ")
    from ipaddress import ip_address

    with pytest.raises(OptionError, match=r"^target: 224\.0\.0\.1 is a multicast address"):
        check_target(ip_address("224.0.0.1"))


def test_the_cli_names_the_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harden.cli", "verify", str(WEB), "--target", "224.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == ExitStatus.USAGE
    assert proc.stderr.startswith("harden: error: --target: 224.0.0.1 is a multicast"), proc.stderr


def test_a_broken_invariant_is_a_bug_and_a_state_conflict_is_refused() -> None:
    with pytest.raises(InternalError) as bug:
        State().loaded()
    assert bug.value.exit_status == ExitStatus.INTERNAL
    with pytest.raises(Refused) as refused:
        State().rolled_back(0.0, "")
    assert refused.value.exit_status == ExitStatus.USAGE


def test_version_names_the_backends_in_use() -> None:
    """A bug report carries the versions of the tools harden drives."""
    proc = subprocess.run(
        [sys.executable, "-m", "harden.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("harden ")
    found = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert set(found) == {"nft", "iptables", "ip6tables", "libnftables", "python3-nftables"}
    assert found["nft"].startswith("nftables v")
    assert "(nf_tables)" in found["iptables"] or "(legacy)" in found["iptables"]


@pytest.mark.parametrize("argv", [[], ["schedule"]], ids=["harden", "harden schedule"])
def test_a_bare_command_prints_its_help_not_a_one_line_error(argv: list[str]) -> None:
    """'harden' alone printed the whole help squeezed onto one line after "error:"."""
    proc = subprocess.run(
        [sys.executable, "-m", "harden.cli", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == ExitStatus.USAGE
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"Usage: harden {' '.join(argv)}".rstrip() + " [OPTIONS] COMMAND")
    assert "Commands:" in lines and "error" not in lines[0] and len(lines) > 10


def test_the_bindings_hint_says_which_interpreter_and_why() -> None:
    """A pyenv-based venv, a venv without system site packages, a foreign python and a
    host without the package each get the reason that applies to them."""
    from harden.backends.nftables.firewall import DIST_PACKAGES, why_not_importable

    pyenv = why_not_importable(
        "/srv/venv/bin/python", "/srv/venv", "/root/.pyenv/versions/3.12.1", [], True
    )
    assert pyenv.startswith(
        "the nftables Python bindings cannot be imported by /srv/venv/bin/python"
    )
    assert "based on /root/.pyenv/versions/3.12.1, not Debian's /usr/bin/python3" in pyenv
    assert pyenv.endswith("make the venv with /usr/bin/python3 -m venv --system-site-packages")
    bare = why_not_importable("/srv/venv/bin/python", "/srv/venv", "/usr", [], True)
    assert "made without --system-site-packages" in bare
    foreign = why_not_importable("/opt/py/bin/python3", "/opt/py", "/opt/py", [], True)
    assert "not Debian's /usr/bin/python3 (its prefix is /opt/py)" in foreign
    missing = why_not_importable("/usr/bin/python3", "/usr", "/usr", [DIST_PACKAGES], False)
    assert missing.endswith("python3-nftables is not installed (apt install python3-nftables)")
