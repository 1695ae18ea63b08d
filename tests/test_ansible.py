"""The Ansible collection's role, run for real: ansible-playbook -c local inside the lab's server
namespace, verification inside the outside namespace (needs root and ansible-core). The
collection is built and installed from its tarball once per session (tests/collection.py),
and the playbooks name its role harden.harden.harden.

The inventory has two hosts on the same machine: "server" (the target) and "prober", whose
commands run in the outside namespace through harden_verify_prefix: the role refuses to verify
a host from itself, and here the packets do cross a real link into the server namespace.
Boot files are persisted under a scratch --root (harden_persist_root), never the machine's /.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harden.lab.net import LabNet

from . import collection
from .conftest import REPO
from .labutil import lab_for

pytestmark = pytest.mark.netns
ANSIBLE_DIR = REPO / "vagrant" / "ansible"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
FLEET = ANSIBLE_DIR / "fleet.yml"
BIN = Path(sys.executable).parent
PLAYBOOK_BIN = BIN / "ansible-playbook"
WEB = REPO / "rulesets" / "web-server.yaml"


# Where the session's collection is installed (set by the _ansible fixture).
INSTALLED: list[Path] = []


def ansible_env(tmp: Path) -> dict[str, str]:
    return {
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ans"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ans"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # Only the installed collection: no roles path, so the role comes from the tarball.
        "ANSIBLE_COLLECTIONS_PATH": str(INSTALLED[-1]),
        "ANSIBLE_ROLES_PATH": str(tmp / "no-roles"),
    }


def play(
    lab: LabNet, tmp: Path, extra: dict[str, object], *options: str, playbook: Path = PLAYBOOK
) -> tuple[int, dict[str, int], str]:
    inventory = tmp / "hosts.ini"
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    inventory.write_text(f"[targets]\nserver {local}\n[probers]\nprober {local}\n")
    variables = tmp / "vars.json"
    variables.write_text(json.dumps(extra))
    proc = lab.server.ns.run(
        [
            "env",
            *(f"{k}={v}" for k, v in ansible_env(tmp).items()),
            str(PLAYBOOK_BIN),
            "-i",
            str(inventory),
            str(playbook),
            "-e",
            f"@{variables}",
            *options,
        ],
        check=False,
        timeout=600,
    )
    recap = re.search(r"^server\s*:\s*(.*)$", proc.stdout.split("PLAY RECAP")[-1], re.MULTILINE)
    assert recap, proc.stdout + proc.stderr
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))}
    return proc.returncode, counts, proc.stdout + proc.stderr


def variables(lab: LabNet, tmp: Path, manifest: Path = WEB) -> dict[str, object]:
    return {
        "harden_become": False,
        "harden_manifest": yaml.safe_load(manifest.read_text()),
        "harden_manifest_path": str(tmp / "manifest.yaml"),
        "harden_state_dir": str(tmp / "state"),
        "harden_persist_root": str(tmp / "root"),
        "harden_report_dir": str(tmp),
        "harden_cmd": f"{sys.executable} -m harden.cli",
        "harden_prober": "prober",
        "harden_verify_targets": [str(lab.server.v4), str(lab.server.v6)],
        "harden_verify_prefix": f"ip netns exec {lab.outside.ns.name}",
        "harden_verify_args": ["--ports", "1-2000"],
    }


def boot_files(tmp: Path) -> tuple[Path, Path]:
    """What `harden apply --persist --root` writes for nftables (harden/apply/boot.py)."""
    root = tmp / "root"
    return root / "etc" / "harden" / "harden.nft", root / "etc/systemd/system/harden.service"


# harden bug (harden/apply/transaction.py, not this role): `harden confirm` with persistence saves
# what the boot files held before (the persist-undo record), and nothing drops that record
# when the next apply starts. Rolling back that next apply (never confirmed, so it never
# touched the boot files) "restores" the boot files to what they were before the *earlier*
# confirm: on a fresh host, deleted, while the earlier rules stay live. The fix belongs in
# engine.apply (drop the stale record when a new apply is recorded). Until then this check
# is an expected failure; once fixed it passes, and this branch should go.
def assert_boot_files_restored(tmp: Path, before: tuple[str, str]) -> None:
    nft_file, nft_conf = boot_files(tmp)
    after = tuple(p.read_text() if p.exists() else "" for p in (nft_file, nft_conf))
    assert after == before


def live_table(lab: LabNet) -> str:
    proc = lab.server.ns.run(["nft", "list", "table", "inet", "harden"], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def task_result(out: str, task: str) -> str:
    """The status line ("ok", "changed", "skipping", ...) Ansible printed for a task."""
    found = re.search(rf"TASK \[[^\]]*{re.escape(task)}\][^\n]*\n(\w+):", out)
    assert found, f"no task {task!r} in:\n{out}"
    return found.group(1)


def status(lab: LabNet, tmp: Path) -> dict[str, object]:
    state = str(tmp / "state")
    proc = lab.server.ns.run(
        [sys.executable, "-m", "harden.cli", "status", "--state-dir", state, "--format", "json"]
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="session")
def installed_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PLAYBOOK_BIN.exists() or shutil.which("ip") is None:
        pytest.skip("ansible-core is not installed in this environment")
    return collection.build_and_install(tmp_path_factory.mktemp("collection"))


@pytest.fixture(autouse=True)
def _ansible(installed_collection: Path) -> None:
    INSTALLED[:] = [installed_collection]


def test_playbook_applies_verifies_confirms_persists_and_is_idempotent(tmp_path: Path) -> None:
    """A first run converges (apply, verify, confirm, persist); then, on that converged host,
    a second run changes nothing, lost boot files are rewritten alone, ``--tags
    harden_verify`` only verifies, and check mode predicts (see check_mode_predicts)."""
    nft_file, nft_conf = boot_files(tmp_path)
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code == 0, out
        assert recap["changed"] >= 2 and recap["failed"] == 0  # manifest written, applied
        assert "Confirm (verification passed)" in out
        junit = (tmp_path / "harden-server.xml").read_text()
        assert 'failures="0"' in junit
        # Persisted on confirm: the boot files hold the live table.
        assert "table inet harden" in nft_file.read_text()
        assert "nft -f /etc/harden/harden.nft" in nft_conf.read_text()  # harden.service
        assert status(lab, tmp_path)["pending_confirmation"] is None

        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code == 0 and recap["changed"] == 0, out

        # Boot files lost (or a host converged before persistence): the next run rewrites
        # them without touching the live rules, and says so.
        before = live_table(lab)
        nft_file.unlink()
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code == 0 and recap["changed"] == 1, out
        assert task_result(out, "Write the boot files") == "changed", out
        assert "table inet harden" in nft_file.read_text()
        assert live_table(lab) == before

        # --tags harden_verify alone: verify the live rules from the prober, change nothing.
        (tmp_path / "harden-server.xml").unlink()
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path), "--tags", "harden_verify")
        assert code == 0 and recap["changed"] == 0, out
        assert task_result(out, "Verify from outside") == "ok", out
        assert "Apply with a confirm window" not in out
        assert 'failures="0"' in (tmp_path / "harden-server.xml").read_text()

        check_mode_predicts(lab, tmp_path)


def check_mode_predicts(lab: LabNet, tmp_path: Path) -> None:
    """On a converged host, --check --diff predicts nothing; with a service added, it
    predicts the change and shows the rule diff, and changes nothing."""
    code, recap, out = play(lab, tmp_path, variables(lab, tmp_path), "--check", "--diff")
    assert code == 0 and recap["changed"] == 0, out

    before, manifest_before = live_table(lab), (tmp_path / "manifest.yaml").read_text()
    boot_before = boot_files(tmp_path)[0].read_text()
    edited = variables(lab, tmp_path)
    edited["harden_manifest"]["services"].append(  # type: ignore[index]
        {"name": "alt-web", "port": 8443, "proto": "tcp"}
    )
    code, recap, out = play(lab, tmp_path, edited, "--check", "--diff")
    assert code == 0 and recap["failed"] == 0, out
    assert task_result(out, "Compare the live rules with the manifest") == "changed", out
    assert task_result(out, "Apply with a confirm window") == "skipping", out
    # The rule diff, as harden diff prints it, is in the output.
    shown = out.split("harden.harden.harden : Show the rule changes]")[1].split("TASK [")[0]
    assert "8443" in shown, out
    assert live_table(lab) == before
    assert (tmp_path / "manifest.yaml").read_text() == manifest_before
    assert boot_files(tmp_path)[0].read_text() == boot_before
    assert status(lab, tmp_path)["pending_confirmation"] is None


def test_the_witness_reads_the_targets_counters(tmp_path: Path) -> None:
    marker = tmp_path / "witness-ran"
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        extra = variables(lab, tmp_path)
        # The witness counters count new connections from these sources (verify.probers):
        # every address of the outside host, since the kernel picks the v6 source itself.
        sources = [lab.outside.v4, lab.outside.v6, *lab.outside.extra]
        extra["harden_manifest"]["verify"] = {  # type: ignore[index]
            "probers": [f"{a}/{a.max_prefixlen}" for a in sources if a is not None]
        }
        counters = f"{sys.executable} -m harden.cli counters --format json"
        extra["harden_verify_witness"] = (
            f"touch {marker} && ip netns exec {lab.server.ns.name} {counters}"
        )
        code, recap, out = play(lab, tmp_path, extra)
        assert code == 0 and recap["failed"] == 0, out
        assert "Confirm (verification passed)" in out
        assert marker.exists()  # verify ran the witness, before and after its sweep
        seen = json.loads(lab.server.ns.run(counters.split()).stdout)["counters"]
        assert seen.get("witness_in_tcp_v4", 0) > 0, seen  # the probes it counted


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"harden_backend": "pf"}, r"harden_backend.*pf|pf.*harden_backend"),
        ({"harden_confirm_seconds": "soon"}, r"harden_confirm_seconds.*unable to convert to int"),
        ({"harden_confirm_seconds": 7200}, r"harden_confirm_seconds must be 1-3600"),
        ({"harden_prober": ""}, r"set harden_prober to another inventory host"),
        ({"harden_prober": "server"}, r"verifying server from itself proves nothing"),
    ],
)
def test_bad_variables_are_refused_before_anything_changes(
    tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    with lab_for(WEB) as lab:
        code, recap, out = play(lab, tmp_path, {**variables(lab, tmp_path), **bad})
        assert code != 0 and recap["failed"] == 1 and recap["changed"] == 0, out
        assert re.search(message, out), out
        assert not (tmp_path / "manifest.yaml").exists()
        assert live_table(lab) == ""


def test_a_failed_verification_rolls_back_rules_and_boot_files(tmp_path: Path) -> None:
    nft_file, nft_conf = boot_files(tmp_path)
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        code, _, out = play(lab, tmp_path, variables(lab, tmp_path))  # the known-good state
        assert code == 0, out
        live_before = live_table(lab)
        boot_before = nft_file.read_text(), nft_conf.read_text()
        leak_443(lab)
        edited = variables(lab, tmp_path)
        edited["harden_manifest"]["services"].append(  # type: ignore[index]
            {"name": "alt-web", "port": 8443, "proto": "tcp"}
        )
        code, recap, out = play(lab, tmp_path, edited)
        assert code != 0 and recap["failed"] == 1, out
        assert "Roll back (verification failed)" in out
        assert "FAIL" in out and "previous rules and boot files were restored" in out
        assert live_table(lab) == live_before  # the previous rules, not the change
        assert "8443" not in live_table(lab)
        assert status(lab, tmp_path)["pending_confirmation"] is None
        assert_boot_files_restored(tmp_path, boot_before)


def test_a_failed_first_run_leaves_no_boot_files(tmp_path: Path) -> None:
    nft_file, nft_conf = boot_files(tmp_path)
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        leak_443(lab)
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code != 0 and recap["failed"] == 1, out
        assert "Roll back (verification failed)" in out
        tables = lab.server.ns.run(["nft", "list", "tables"]).stdout
        assert "inet harden" not in tables  # back to what was there before: nothing
        assert "inet other" in tables
        assert not nft_file.exists() and not nft_conf.exists()


def leak_443(lab: LabNet) -> None:
    """Another table drops a declared port before harden's chain sees it.

    A drop in any table is final, so harden cannot fix this (unlike a DNAT'd undeclared
    port, which it now closes itself); only the prober notices that 443 stays silent.
    """
    lab.server.ns.run(
        [
            "nft",
            "add table inet other; "
            "add chain inet other in { type filter hook input priority -10; }; "
            "add rule inet other in tcp dport 443 drop",
        ]
    )


def test_the_fleet_playbook_verifies_with_an_inventory_and_settles(tmp_path: Path) -> None:
    nft_file, _ = boot_files(tmp_path)
    report = tmp_path / "harden-fleet" / "report.json"
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path), playbook=FLEET)
        assert code == 0 and recap["failed"] == 0, out
        assert "Confirm (verification passed)" in out
        assert json.loads(report.read_text())["verdict"] == "pass"
        assert "table inet harden" in nft_file.read_text()
        live_before = live_table(lab)
        boot_before = nft_file.read_text(), boot_files(tmp_path)[1].read_text()

        leak_443(lab)
        edited = variables(lab, tmp_path)
        edited["harden_manifest"]["services"].append(  # type: ignore[index]
            {"name": "alt-web", "port": 8443, "proto": "tcp"}
        )
        code, recap, out = play(lab, tmp_path, edited, playbook=FLEET)
        assert code != 0 and recap["failed"] == 1, out
        assert "fleet verification of server: fail" in out, out
        assert json.loads(report.read_text())["verdict"] == "fail"
        assert live_table(lab) == live_before
        assert status(lab, tmp_path)["pending_confirmation"] is None
        assert_boot_files_restored(tmp_path, boot_before)


def test_probers_split_the_fleet_between_them(tmp_path: Path) -> None:
    """Sharding is one set of facts per prober: no firewall, no packets, nothing applied."""
    local = f"ansible_connection=local ansible_python_interpreter={sys.executable}"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[site_a]\nweb-1\nweb-2\n[site_a:vars]\nharden_prober=prober-a\n"
        "[other]\nweb-3\nweb-4\nweb-5 harden_prober=elsewhere\nweb-6\n"
        "[targets:children]\nsite_a\nother\n"
        f"[probers]\nprober-a {local}\nprober-b {local}\n"
    )
    playbook = tmp_path / "share.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Shares",
                    "hosts": "probers",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Share",
                            "ansible.builtin.include_role": {
                                "name": "harden.harden.harden",
                                "tasks_from": "fleet_share",
                            },
                        },
                        {
                            "name": "Show",
                            "ansible.builtin.debug": {
                                "msg": "SHARE {{ inventory_hostname }} "
                                "{{ harden_fleet_share | to_json }}"
                            },
                        },
                    ],
                }
            ]
        )
    )
    proc = subprocess.run(
        [str(PLAYBOOK_BIN), "-i", str(inventory), str(playbook)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ansible_env(tmp_path)},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shares = {
        name: json.loads(json.loads(f'"{share}"'))
        for name, share in re.findall(r'"SHARE (\S+) (.*)"', proc.stdout)
    }
    # Site A's targets go to its prober; the rest (web-5 names no prober of the play)
    # alternate between the probers.
    assert shares == {
        "prober-a": ["web-1", "web-2", "web-3", "web-5"],
        "prober-b": ["web-4", "web-6"],
    }, proc.stdout


def ansible_lint() -> Path | None:
    """ansible-lint from this venv (pyproject's test extras), else from PATH."""
    here = BIN / "ansible-lint"
    found = here if here.exists() else shutil.which("ansible-lint")
    return Path(found) if found else None


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    lint = ansible_lint()
    if lint is None:
        pytest.skip("ansible-lint is not installed (pip install -e '.[test]' adds it)")
    proc = subprocess.run(
        [str(lint), "--profile", "production", "--offline", "--nocolor"],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ansible_env(tmp_path)},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # The one warning .ansible-lint lets through: galaxy.yml names no public repository.
    assert "0 failure(s), 1 warning(s)" in out and "galaxy[no-repository]" in out, out


def test_the_installed_collection_documents_its_role(tmp_path: Path) -> None:
    """ansible-doc reads the role from the installed tarball: every entry point is there."""
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "role", "--json", "harden.harden.harden"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ansible_env(tmp_path)},
        check=True,
    )
    doc = json.loads(proc.stdout)["harden.harden.harden"]
    assert set(doc["entry_points"]) == {"main", "install", "fleet_verify", "fleet_settle"}
    assert "harden_confirm_seconds" in doc["entry_points"]["main"]["options"]


def test_the_role_readme_documents_every_variable() -> None:
    specs = yaml.safe_load((collection.ROLE / "meta" / "argument_specs.yml").read_text())
    described = {name for spec in specs["argument_specs"].values() for name in spec["options"]}
    defaults = yaml.safe_load((collection.ROLE / "defaults" / "main.yml").read_text())
    assert described == set(defaults)  # no variable without a spec, none without a default
    readme = collection.ROLE_README.read_text()
    assert readme == collection.readme_with_table(readme), "stale table: make role-readme"
    assert all(f"| `{name}` |" in readme for name in described)


def test_the_fleet_playbook_passes_a_syntax_check(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[targets]\nweb-1\nweb-2\nweb-3\n[probers]\nprober-a\nprober-b\n")
    proc = subprocess.run(
        [str(PLAYBOOK_BIN), "--syntax-check", "-i", str(inventory), str(FLEET)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ansible_env(tmp_path)},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
