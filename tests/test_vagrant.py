"""The two-VM regression setup: the Vagrantfile validates (Debian's vagrant), and its galaxy
step installs the harden.harden collection where the playbook finds it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .realserver import Step, install_steps, real_server_steps

VAGRANT = REPO / "vagrant"


def validate(folder: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (make install adds Debian's package)")
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_vagrantfile_validates() -> None:
    proc = validate(VAGRANT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_a_broken_vagrantfile_does_not(tmp_path: Path) -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    (tmp_path / "Vagrantfile").write_text(
        text.replace('config.vm.box = "debian/bookworm64"', "config.vm.boxx = 1")
    )
    proc = validate(tmp_path)
    assert proc.returncode != 0
    assert "boxx" in proc.stdout + proc.stderr


def test_vagrants_galaxy_step_installs_the_collection_next_to_the_playbook(
    tmp_path: Path,
) -> None:
    """What `vagrant provision` runs before the playbook, from the Vagrantfile's own settings:
    the collection lands in ansible/collections/, where ansible-playbook finds the role."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ansible-galaxy").exists():
        pytest.skip("ansible-core is not installed (make install adds it)")
    text = (VAGRANT / "Vagrantfile").read_text()
    role_file = re.search(r'ansible\.galaxy_role_file = "([^"]+)"', text)
    command = re.search(r'ansible\.galaxy_command = ((?:"[^"]*"\s*\\?\s*)+)', text)
    assert role_file and command, "the Vagrantfile no longer installs the collection"
    template = "".join(re.findall(r'"([^"]*)"', command.group(1)))
    shutil.copytree(VAGRANT / "ansible", tmp_path / "ansible",
                    ignore=shutil.ignore_patterns("collections"))  # fmt: skip
    # Vagrant fills in Ruby's %{role_file}, splits on spaces, runs it in the Vagrantfile's folder.
    args = template.replace("%{role_file}", str(tmp_path / role_file.group(1))).split(" ")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    subprocess.run(args, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    installed = tmp_path / "ansible" / "collections" / "ansible_collections" / "harden" / "harden"
    assert (installed / "roles" / "harden" / "meta" / "argument_specs.yml").exists()
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[targets]\ntarget\n[probers]\nprober\n")
    proc = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "--syntax-check", "-i", str(inventory),
         str(tmp_path / "ansible" / "site.yml")],
        cwd=tmp_path, env={**env, "ANSIBLE_ROLES_PATH": str(tmp_path / "none")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_real_server_section_says_where_each_command_runs() -> None:
    """tests/test_vms.py runs this README section on two VMs: its blocks must parse."""
    steps = real_server_steps((REPO / "README.md").read_text())
    assert {s.host for s in steps} == {"server", "prober"}
    assert [s.command.split()[0] for s in install_steps(steps)] == ["apt-get", "/usr/bin/python3",
                                                                    "/opt/harden/venv/bin/pip",
                                                                    "ln"]  # fmt: skip
    used = {s.command.split()[1] for s in steps if s.command.startswith("harden ")}
    assert used == {"init", "validate", "apply", "verify", "confirm", "status", "schedule",
                    "remove"}  # fmt: skip
    assert steps[-1] == Step("server", "harden remove", steps[-1].block, "# On the server:")
