"""Two Debian 12 VMs (target, prober) under qemu, for the Vagrant workflow run for real.

The VMs boot the image ``vagrant/qemu/build-image.sh`` makes (built once, cached by a
digest of its inputs) from per-run copy-on-write overlays, on a bridge inside a throwaway
network namespace: the machine's own network never sees them, and everything goes when
the lab closes, pass or fail. The controller (Ansible, ssh) runs in that namespace too.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harden.lab.net import _Namespaces
from harden.lab.netns import Namespace

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "vagrant" / "qemu" / "build-image.sh"
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"
CACHE = Path(os.environ.get("HARDEN_VM_CACHE", "/var/cache/harden-vm"))
KVM_PROBE_SECONDS = 10.0
BOOT_SECONDS = {"kvm": 120.0, "tcg": 600.0}


def vagrant_addresses() -> dict[str, str]:
    """The machines' addresses as the Vagrantfile gives them: {"target": ip, "prober": ip}."""
    text = VAGRANTFILE.read_text()
    found = dict(re.findall(r'^(TARGET|PROBER)_IP\s*=\s*"([0-9.]+)"', text, re.MULTILINE))
    return {"target": found["TARGET"], "prober": found["PROBER"]}


def python_requirements() -> list[str]:
    """harden's runtime dependencies, as pyproject.toml declares them."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


@dataclass(frozen=True)
class Image:
    """A built image: disk, kernel, initrd and the SSH key root accepts."""

    folder: Path

    @property
    def disk(self) -> Path:
        return self.folder / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def key(self) -> Path:
        return self.folder / "id_ed25519"


def ensure_image(log: Path) -> Image:
    """The cached image for the current build script and dependencies; build it if missing."""
    requirements = python_requirements()
    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes() + "\n".join(requirements).encode())
    folder = CACHE / f"bookworm-{digest.hexdigest()[:16]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    # One build for every process that needs it (xdist workers, a parallel run): the others
    # wait for it here, then find it built.
    with (CACHE / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "built.ok").exists():
            _build_image(folder, requirements, log)
    return Image(folder)


def _build_image(folder: Path, requirements: list[str], log: Path) -> None:
    """Run build-image.sh into ``folder``; its output goes to ``log`` (the tail, on failure)."""
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), str(folder), *requirements],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Wheels come from this interpreter's pip, with this machine's pip settings.
            env={**os.environ, "PYTHON": sys.executable},
            check=False,
            timeout=1800,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"building the VM image failed:\n{log.read_text()[-3000:]}")


def kvm_skip_reason() -> str | None:
    """Why the VM tests cannot run here (no /dev/kvm and nothing forced), or None."""
    if os.environ.get("HARDEN_VM_ACCEL", "") in ("kvm", "tcg"):
        return None
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm on this machine (HARDEN_VM_ACCEL=tcg runs the VMs under emulation)"
    return None


def choose_accelerator(image: Image) -> tuple[str, str]:
    """("kvm" | "tcg", why): KVM if it boots Debian's kernel here, else software emulation.

    A /dev/kvm that cannot run a stock kernel (a nested ``kvm_pvm`` host runs only
    PVM-built guest kernels) falls back to TCG, and the reason says so.
    """
    forced = os.environ.get("HARDEN_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced, f"HARDEN_VM_ACCEL={forced}"
    # The kernel alone, no root disk: under working KVM it prints its banner and
    # panics within a second or two.
    try:
        proc = subprocess.run(
            [
                *qemu_base("kvm", 256),
                "-kernel",
                str(image.kernel),
                "-append",
                "console=ttyS0 panic=-1",
                "-serial",
                "stdio",
            ],
            capture_output=True,
            timeout=KVM_PROBE_SECONDS,
            check=False,
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as timeout:
        output = (timeout.stdout or b"") + (timeout.stderr or b"")
    if b"Linux version" in output:
        return "kvm", "KVM booted Debian's kernel"
    pvm = Path("/sys/module/kvm_pvm").exists()
    return "tcg", (
        f"/dev/kvm is present but Debian's kernel did not boot under it within "
        f"{KVM_PROBE_SECONDS:.0f} s"
        + (" (this host's KVM is kvm_pvm, which runs only PVM-built guest kernels)" if pvm else "")
        + ": using software emulation (TCG)"
    )


def qemu_base(accel: str, memory_mb: int) -> list[str]:
    """The qemu command line both the probe and the lab VMs start from."""
    # -arch-capabilities: qemu's -cpu host sets MSR 0x10a, which nested KVM may refuse.
    cpu = "host,-arch-capabilities" if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        str(memory_mb),
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-nodefaults",
    ]


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the child gets ``sig`` when the process that started it dies, however."""

    def arm() -> None:
        pr_set_pdeathsig = 1  # linux/prctl.h; kept across exec (ip netns exec, sh exec)
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig)

    return arm


@dataclass
class Vm:
    """One lab VM: its name, addresses and the qemu process running it."""

    name: str
    v4: str
    v6: str
    mac: str
    tap: str
    overlay: Path
    console: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class VmLab(_Namespaces):
    """target and prober on a bridge in a namespace; the controller is the bridge itself."""

    PREFIX = 24
    CONTROLLER_V4_HOST = 1

    def __init__(self, image: Image, accel: str, workdir: Path, memory_mb: int = 1024) -> None:
        self.image = image
        self.accel = accel
        self.workdir = workdir
        self.memory_mb = memory_mb
        addresses = vagrant_addresses()
        net = addresses["target"].rsplit(".", 1)[0]
        third = net.split(".")[2]
        self.controller_v4 = f"{net}.{self.CONTROLLER_V4_HOST}"
        self.controller_v6 = f"fd00:{third}::{self.CONTROLLER_V4_HOST}"
        self.vms = {
            name: Vm(
                name=name,
                v4=addresses[name],
                v6=f"fd00:{third}::{addresses[name].rsplit('.', 1)[1]}",
                mac=f"52:54:00:00:{third}:{int(addresses[name].rsplit('.', 1)[1]):02x}",
                tap=f"tap-{name}",
                overlay=workdir / f"{name}.qcow2",
                console=workdir / f"{name}.console.log",
            )
            for name in ("target", "prober")
        }
        self.prefix = "hvm"
        self._namespaces: list[Namespace] = []
        # Where the test installed the harden.harden collection for ansible-playbook.
        self.collections = workdir / "collections"

    def _build(self) -> None:
        """Make the namespace and bridge, start both VMs, wait until they answer ssh."""
        self.ns = self._ns("lab")
        self.ns.run(["ip", "link", "add", "br0", "type", "bridge"])
        self.ns.run(["ip", "addr", "add", f"{self.controller_v4}/{self.PREFIX}", "dev", "br0"])
        self.ns.run(["ip", "-6", "addr", "add", f"{self.controller_v6}/64", "dev", "br0", "nodad"])
        self.ns.run(["ip", "link", "set", "br0", "up"])
        for vm in self.vms.values():
            self._start(vm)
        for vm in self.vms.values():
            self._wait_ssh(vm)

    def close(self) -> None:
        """Kill the VMs, remove overlays and the namespace; safe to call twice."""
        for vm in self.vms.values():
            if vm.process is not None and vm.process.poll() is None:
                vm.process.terminate()
                try:
                    vm.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    vm.process.kill()
                    vm.process.wait(timeout=10)
            vm.process = None
            vm.overlay.unlink(missing_ok=True)
        super().close()

    def _start(self, vm: Vm) -> None:
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(self.image.disk),
                str(vm.overlay),
            ],
            check=True,
            capture_output=True,
        )
        self.ns.run(["ip", "tuntap", "add", "dev", vm.tap, "mode", "tap"])
        self.ns.run(["ip", "link", "set", vm.tap, "master", "br0", "up"])
        self.launch(vm)

    def launch(self, vm: Vm) -> None:
        """Start qemu for ``vm`` on its existing disk overlay and tap (a boot, or a reboot:
        with -no-reboot qemu exits when the guest reboots, and this boots it again)."""
        append = " ".join(
            [
                "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
                f"lab.name={vm.name} lab.ip4={vm.v4}/{self.PREFIX} lab.ip6={vm.v6}/64",
            ]
        )
        cmd = [
            *qemu_base(self.accel, self.memory_mb),
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            append,
            "-drive",
            f"file={vm.overlay},if=virtio,format=qcow2",
            "-netdev",
            f"tap,id=net0,ifname={vm.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={vm.mac}",
            "-serial",
            f"file:{vm.console}",
        ]
        # qemu opens the tap by name, so it must run inside the lab namespace.
        vm.process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"{vm.name}.qemu.log").open("wb"),
            start_new_session=True,
            # A killed test run must not leave VMs running.
            preexec_fn=die_with_parent(),
        )

    def reboot(self, name: str, before_boot: Callable[[], None] = lambda: None) -> None:
        """Reboot a VM from inside; ``before_boot`` runs once it is down, before it boots."""
        vm = self.vms[name]
        assert vm.process is not None
        self.ssh(name, "systemctl reboot", check=False, timeout=30)
        vm.process.wait(timeout=BOOT_SECONDS[self.accel])  # -no-reboot: qemu exits
        before_boot()
        self.launch(vm)
        self._wait_ssh(vm)

    def _wait_ssh(self, vm: Vm) -> None:
        deadline = time.monotonic() + BOOT_SECONDS[self.accel]
        while True:
            assert vm.process is not None
            if vm.process.poll() is not None:
                raise RuntimeError(f"{vm.name} exited during boot:\n{self.tail(vm)}")
            proc = self.ssh(vm.name, "true", check=False, timeout=30)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{vm.name} did not answer ssh in time:\n{self.tail(vm)}")
            time.sleep(2)

    def revive_hung(self) -> dict[str, str]:
        """Power-cycle every VM that no longer answers ssh; return {name: its console tail}.

        An emulated virtio-net NIC can hang its transmit queue for good (the guest logs
        "NETDEV WATCHDOG: transmit queue 0 timed out"): the VM is then unreachable until it
        is reset. A hard reset on the same disk overlay brings it back with its state.
        """
        hung = {}
        for vm in self.vms.values():
            alive = vm.process is not None and vm.process.poll() is None
            if alive and self.ssh(vm.name, "true", check=False, timeout=30).returncode == 0:
                continue
            hung[vm.name] = self.tail(vm)
            if vm.process is not None and vm.process.poll() is None:
                vm.process.kill()
                vm.process.wait(timeout=30)
            self.launch(vm)
            self._wait_ssh(vm)
        return hung

    def tail(self, vm: Vm, lines: int = 40) -> str:
        """The end of a VM's serial console and of qemu's own complaints."""
        text = ""
        for path in (vm.console, self.workdir / f"{vm.name}.qemu.log"):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def ssh_options(self) -> list[str]:
        """Options for ssh to the lab VMs (throwaway host keys: not recorded anywhere)."""
        return [
            "-i",
            str(self.image.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            # A connection that dies after the handshake (seen once on a loaded machine:
            # the client waited 20 minutes on bytes the VM never acknowledged) fails in a
            # minute instead; ANSIBLE_SSH_RETRIES then connects again.
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]

    def _ssh_argv(self, name: str, command: str) -> list[str]:
        return ["ssh", *self.ssh_options(), f"root@{self.vms[name].v4}", command]

    def ssh(
        self,
        name: str,
        command: str,
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command as root on a VM, from the controller."""
        try:
            return self.ns.run(
                self._ssh_argv(name, command),
                input=input,
                check=check,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess(command, 255, "", "timeout")

    def sync_source(self, dest: str = "/opt/harden-src") -> None:
        """Copy the checkout's package sources to both VMs, as Vagrant's rsync folder does."""
        files = ["pyproject.toml", "README.md", "harden"]
        tar = subprocess.run(
            ["tar", "-C", str(REPO), "--exclude=__pycache__", "-cz", *files],
            capture_output=True,
            check=True,
        )
        quoted = shlex.quote(dest)
        unpack = f"rm -rf {quoted} && mkdir -p {quoted} && tar -C {quoted} -xz"
        for name in self.vms:
            # Bytes on stdin, which Namespace.run (text) does not take.
            subprocess.run(
                ["ip", "netns", "exec", self.ns.name, *self._ssh_argv(name, unpack)],
                input=tar.stdout,
                capture_output=True,
                check=True,
                timeout=120,
            )
