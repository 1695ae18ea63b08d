"""Real systemd boots in seconds: the VM image booted as a container under systemd-nspawn.

The image vagrant/qemu/build-image.sh makes for the VM tier (tests/vmlab.py builds and
caches it) boots its own systemd as PID 1 of a container whose network namespace is one of
ours, with no emulation: its units run for real (harden.service, network-pre.target, sshd,
docker.service, firewalld.service) and load their rules into that namespace, where a prober
in a second namespace watches the boot from the link.

Why not ``--volatile=overlay``: its overlay lives in a tmpfs that goes with the container,
and a boot test must reboot the same machine (persist, power off, boot again). Each run
here is instead an overlayfs we mount ourselves, in a private mount namespace that dies
with the nspawn process:

    upper (this machine's writes, kept across its reboots, in the test's tmp dir)
    layer (harden installed from the checkout into the image's venv, once per run)
    image (disk.img, loop-mounted read-only: never written)

Nothing stays mounted, attached or running after a container stops: the mount namespace
holds the only reference to the loop device (which mount -o loop attaches with autoclear),
a container whose test process dies gets SIGTERM (its halt), and the lab's network
namespaces are deleted on close, pass or fail.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harden.lab.net import _Namespaces
from harden.lab.netns import Namespace

from .vmlab import REPO, Image, die_with_parent

NEEDED = ("systemd-nspawn", "unshare", "nsenter", "debootstrap", "mkfs.ext4")
BOOT_SECONDS = 120.0
HALT_SECONDS = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs in a fresh private mount namespace (unshare -m): the overlay exists only there and
# goes when the command it execs (nspawn) exits.
_MOUNT = """set -e
image=$1 mnt=$2 lowers=$3 upper=$4 work=$5 root=$6; shift 6
mount -o loop,ro "$image" "$mnt"
mount -t overlay overlay -o "lowerdir=${lowers:+$lowers:}$mnt,upperdir=$upper,workdir=$work" "$root"
exec "$@"
"""

# What brings the container's link up: a unit ordered like ifupdown's networking.service
# (after network-pre.target), so the machine is unreachable until a real host's network
# would come up, and everything ordered before network-pre.target has run by then.
LINK_UNIT = """[Unit]
Description=Lab link (as networking.service would bring it up)
DefaultDependencies=no
After=network-pre.target
Wants=network-pre.target network.target
Before=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace {v4} dev eth0
ExecStart=/sbin/ip -6 addr replace {v6} dev eth0 nodad
ExecStart=/sbin/ip link set eth0 up

[Install]
WantedBy=multi-user.target
"""

# dockerd inside the container: vfs (overlay2 cannot stack on our overlay root) and a bridge
# address in the lab range, never Docker's default private range.
DOCKER_DAEMON = '{"storage-driver": "vfs", "bip": "198.19.77.1/24", "ip6tables": false}\n'


def skip_reason() -> str | None:
    """Why the nspawn boot tests cannot run here, or None."""
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if os.geteuid() != 0:
        return "needs root"
    if missing:
        return f"not installed: {missing} (make install adds them)"
    return None


def _overlay_argv(
    image: Image, lowers: Sequence[Path], upper: Path, work: Path, root: Path
) -> list[str]:
    """The command prefix that mounts image + lowers + upper at ``root`` privately, then execs."""
    mnt = root.parent / f"{root.name}.image"
    for folder in (mnt, upper, work, root):
        folder.mkdir(parents=True, exist_ok=True)
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        _MOUNT,
        "overlay",
        str(image.disk),
        str(mnt),
        ":".join(str(p) for p in lowers),
        str(upper),
        str(work),
        str(root),
    ]


def _nspawn_base(root: Path) -> list[str]:
    # --register=no --keep-unit: this machine's PID 1 is not systemd (no machined, no scopes).
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root)]


def harden_layer(image: Image, folder: Path) -> Path:
    """An overlay layer with the checkout's harden pip-installed in the image's venv.

    Built once per folder (a test session): the sources are copied in as Vagrant's synced
    folder would, and the image's own pip builds and installs them offline.
    """
    layer = folder / "upper"
    done = folder / "built.ok"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return layer
        shutil.rmtree(layer, ignore_errors=True)
        src = layer / "opt" / "harden-src"
        src.mkdir(parents=True)
        shutil.copy2(REPO / "pyproject.toml", src)
        shutil.copy2(REPO / "README.md", src)
        shutil.copytree(
            REPO / "harden", src / "harden", ignore=shutil.ignore_patterns("__pycache__")
        )
        pip = "/opt/harden/venv/bin/pip install -q --no-index --no-deps --no-build-isolation"
        script = (
            f"{pip} /opt/harden-src && ln -sf /opt/harden/venv/bin/harden /usr/local/sbin/harden"
        )
        argv = [
            *_overlay_argv(image, [], layer, folder / "work", folder / "root"),
            *_nspawn_base(folder / "root"),
            "--pipe",
            "--private-network",
            "sh",
            "-c",
            script,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"installing harden in the container layer failed:\n{proc.stderr}")
        done.touch()
    return layer


def _container_init(nspawn: int) -> int | None:
    """The host pid of the container's PID 1 (a descendant of nspawn that is pid 1 inside)."""
    queue = [nspawn]
    while queue:
        pid = queue.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        nspid = next(
            (line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), []
        )
        if pid != nspawn and len(nspid) > 1 and nspid[-1] == "1":
            return pid
        queue += [int(child) for child in children]
    return None


class BootLab(_Namespaces):
    """One machine booted by its own systemd in a container, and a prober on its link.

    The machine's network namespace holds one veth, eth0, down and unaddressed until its
    own lab-link.service (after network-pre.target) brings it up, as a real host's network
    comes up during boot. ``units`` are enabled in the machine before its first boot.
    """

    PREFIX_V4 = 24

    def __init__(self, image: Image, layer: Path, workdir: Path, units: Sequence[str] = ()) -> None:
        self.image = image
        self.layer = layer
        self.workdir = workdir
        self.units = tuple(units)
        self.prefix = "hboot"
        self._namespaces: list[Namespace] = []
        self.v4 = "198.18.60.1"
        self.v6 = "fd00:60::1"
        self.prober_v4 = "198.18.60.2"
        self.prober_v6 = "fd00:60::2"
        self.prober_dev = "pr0"
        self.upper = workdir / "upper"
        self.console = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.boots = 0

    def _build(self) -> None:
        self.host = self._ns("host")
        self.prober = self._ns("prober")
        tag = os.urandom(4).hex()
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                f"hb{tag}a",
                "netns",
                self.host.name,
                "type",
                "veth",
                "peer",
                "name",
                f"hb{tag}b",
                "netns",
                self.prober.name,
            ],
            check=True,
            capture_output=True,
        )
        self.host.run(["ip", "link", "set", f"hb{tag}a", "name", "eth0"])
        self.prober.run(["ip", "link", "set", f"hb{tag}b", "name", self.prober_dev])
        self.prober.run(["ip", "addr", "add", f"{self.prober_v4}/{self.PREFIX_V4}", "dev", "pr0"])
        self.prober.run(["ip", "-6", "addr", "add", f"{self.prober_v6}/64", "dev", "pr0", "nodad"])
        self.prober.run(["ip", "link", "set", "pr0", "up"])
        self._configure()

    def _configure(self) -> None:
        """Files in the machine's own upper layer before its first boot (its /etc)."""
        systemd = self.upper / "etc" / "systemd" / "system"
        wants = systemd / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (systemd / "lab-link.service").write_text(
            LINK_UNIT.format(v4=f"{self.v4}/{self.PREFIX_V4}", v6=f"{self.v6}/64")
        )
        (wants / "lab-link.service").symlink_to("/etc/systemd/system/lab-link.service")
        (self.upper / "etc" / "hostname").write_text("boot-target\n")
        docker = self.upper / "etc" / "docker"
        docker.mkdir(parents=True, exist_ok=True)
        (docker / "daemon.json").write_text(DOCKER_DAEMON)
        for unit in self.units:
            (wants / unit).symlink_to(f"/lib/systemd/system/{unit}")

    def boot(self, watch: Callable[[], None] = lambda: None) -> float:
        """Power on (link down, no addresses) and boot; return the seconds until it is up.

        ``watch`` runs once the machine is powered off, just before it boots.
        """
        assert self.process is None, "already running"
        self.host.run(["ip", "link", "set", "eth0", "down"])
        self.host.run(["ip", "addr", "flush", "dev", "eth0"])
        watch()
        started = time.monotonic()
        argv = [
            *_overlay_argv(
                self.image, [self.layer], self.upper, self.workdir / "work", self.workdir / "root"
            ),
            *_nspawn_base(self.workdir / "root"),
            "--boot",
            f"--network-namespace-path=/run/netns/{self.host.name}",
            # A joined namespace, unlike --private-network, does not grant these by itself.
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
            "--setenv=SYSTEMD_COLORS=0",
            "--machine=boot-target",
        ]
        self.boots += 1
        with self.console.open("ab") as console:
            console.write(f"\n--- boot {self.boots} ---\n".encode())
            self.process = subprocess.Popen(
                argv,
                # /proc/sys/net writable, as a machine's own network sysctls are (dockerd
                # turns on forwarding); the rest of /proc/sys stays read-only.
                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGTERM, a clean halt, if the test process dies however it dies.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        self._wait_running(started)
        return time.monotonic() - started

    def _wait_running(self, started: float) -> None:
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the container exited during boot:\n{self.tail()}")
            if time.monotonic() - started > BOOT_SECONDS:
                raise RuntimeError(
                    f"the container did not boot in {BOOT_SECONDS} s:\n{self.tail()}"
                )
            self.init_pid = self.init_pid or _container_init(self.process.pid)
            if self.init_pid is not None:
                state = self.sh("systemctl is-system-running --wait", check=False, timeout=60)
                if state.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)

    def halt(self) -> None:
        """Shut the machine down cleanly (SIGTERM to nspawn), or kill it after a minute."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=HALT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None
        self.init_pid = None

    def reboot(self, watch: Callable[[], None] = lambda: None) -> float:
        """Halt, then boot again on the same disk; ``watch`` as in boot()."""
        self.halt()
        return self.boot(watch)

    def sh(
        self, command: str, *, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command as root inside the running machine (all its namespaces)."""
        assert self.init_pid is not None, "not running"
        argv = [
            "nsenter",
            "--target",
            str(self.init_pid),
            "--all",
            "--wd=/",
            "env",
            "-i",
            f"PATH={PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "sh",
            "-c",
            command,
        ]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the container: {command}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def tail(self, lines: int = 60) -> str:
        """The end of the container's console (systemd's boot messages)."""
        if not self.console.exists():
            return ""
        return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])

    def watcher(self, seconds: float, ports: Sequence[str]) -> subprocess.Popen[str]:
        """Start tests/bootwatch.py in the prober: it probes closed ports from power-on to SSH."""
        argv = [sys.executable, str(REPO / "tests" / "bootwatch.py"), self.prober_dev, self.v4]
        return subprocess.Popen(
            ["ip", "netns", "exec", self.prober.name, *argv, str(seconds), *ports],
            stdout=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        """Halt the machine, then delete the namespaces; safe to call twice."""
        self.halt()
        super().close()
