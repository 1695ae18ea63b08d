"""A real, offline Docker daemon confined to one test network namespace.

Docker's iptables rules (DNAT for published ports, FORWARD chains) are what harden must
coexist with, so tests run Debian's docker.io 20.10 for real, inside a namespace the test
created (/work/shared/LAB.md, "Real Docker in a namespace"):

    with Dockerd(ns, workdir=tmp_path / "docker") as d:
        cid = d.publish(8080)            # busybox httpd on container port 80
        d.docker("ps")

``docker_lab`` sets up the usual pair for a test: a Docker host namespace joined by a veth
to an outside one, skipping the test when dockerd cannot run here.

Daemon choices:

- ``nsenter --net=/var/run/netns/NAME``, not ``ip netns exec``: the latter remounts /sys
  and dockerd then fails with "Devices cgroup isn't mounted".
- ``--iptables=true``: Docker's own NAT/FORWARD rules are the point of the lab.
- ``--ip6tables=false`` (and no ``--ipv6``): containers get IPv4 only, inside ``bridge_cidr``;
  no ip6tables chains appear in the namespace to muddle firewall comparisons.
- ``--userland-proxy=false``: no docker-proxy listener per published port, so a published
  port is reachable only through Docker's DNAT rule, which is what harden must handle.
- ``--live-restore``: ``restart()`` leaves containers running (and is fast), like a daemon
  upgrade on a real host; dockerd re-creates its iptables rules when it comes back.
- ``--storage-driver vfs``: no overlay mounts to leak; the image is tiny anyway.
- Sockets, exec-root and containerd state live in a short directory under /tmp because unix
  socket paths are limited to 107 bytes; bulky data (data-root, logs, rootfs) in ``workdir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from harden.lab.netns import Namespace, connect

DOCKER = "/usr/bin/docker"  # /usr/local/bin/docker is an unrelated newer CLI
DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
BUSYBOX = "/bin/busybox"
IMAGE = "local/busybox"
# The daemons find runc, iptables and the containerd shim here; never /usr/local/bin.
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
APPLETS = ("sh", "httpd", "sleep", "nc", "cat", "echo", "ls", "wget", "ps", "kill")


class DockerUnavailable(Exception):
    """Docker cannot run on this machine; ``str()`` is a one-line reason fit for pytest.skip."""

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.log = log  # daemon log tail, when a daemon was started


class DockerError(RuntimeError):
    """The daemons started but did not behave; the message carries the log tails."""


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (not this process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def _descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them, deepest first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # comm may contain spaces or parens: the ppid follows the last ')'.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out[::-1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _preflight(ns: Namespace) -> None:
    """Raise DockerUnavailable for what would make the daemons fail on this machine."""
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd needs root")
    for tool in (DOCKER, DOCKERD, CONTAINERD, BUSYBOX):
        if not Path(tool).exists():
            raise DockerUnavailable(
                f"{tool} is missing (Debian packages docker.io, busybox-static)"
            )
    for tool in ("runc", "containerd-shim-runc-v2", "nsenter", "iptables", "tar"):
        if shutil.which(tool, path=DAEMON_PATH) is None:
            raise DockerUnavailable(f"{tool} is not on {DAEMON_PATH}")
    cg = Path("/sys/fs/cgroup")
    if not (cg / "devices").is_dir() and not (cg / "cgroup.controllers").is_file():
        raise DockerUnavailable("no cgroups mounted at /sys/fs/cgroup (v1 devices or v2)")
    if not Path(f"/var/run/netns/{ns.name}").exists():
        raise DockerUnavailable(f"network namespace {ns.name} has no /var/run/netns entry")


class Dockerd:
    """containerd + dockerd running in ``ns``; stopped, by pid, on exit, pass or fail."""

    def __init__(
        self, ns: Namespace, bridge_cidr: str = "198.19.77.1/24", *, workdir: Path
    ) -> None:
        self.ns = ns
        self.bridge_cidr = bridge_cidr
        self.workdir = workdir
        self.rundir: Path | None = None  # short dir for sockets, made on enter
        self.containerd_proc: subprocess.Popen[bytes] | None = None
        self.dockerd_proc: subprocess.Popen[bytes] | None = None
        self._made: list[Path] = []

    # -- paths ---------------------------------------------------------------------------
    def _run(self) -> Path:
        assert self.rundir is not None, "Dockerd used outside its with-block"
        return self.rundir

    @property
    def socket(self) -> Path:
        """The dockerd API socket."""
        return self._run() / "docker.sock"

    @property
    def containerd_socket(self) -> Path:
        """The containerd gRPC socket (only this dockerd uses it)."""
        return self._run() / "containerd.sock"

    @property
    def pidfile(self) -> Path:
        """dockerd's --pidfile."""
        return self.workdir / "dockerd.pid"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Self:
        """Start containerd and dockerd in the namespace, wait ready, import the image."""
        _preflight(self.ns)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.rundir = Path(tempfile.mkdtemp(prefix="dlab-", dir="/tmp"))
            for sub in ("data", "ctd", "log"):
                (self.workdir / sub).mkdir(exist_ok=True)
                self._made.append(self.workdir / sub)
            self._start_containerd()
            self._start_dockerd()
            self._import_image()
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove containers, stop dockerd and containerd, delete what we made."""
        self._shutdown()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        # nsenter execs the daemon (no --fork), so the Popen pid *is* the daemon's pid.
        # Own session: a Ctrl-C on pytest does not hit the daemons before we stop them.
        log = (self.workdir / "log" / f"{name}.log").open("ab")
        with log:
            return subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.ns.name}", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": DAEMON_PATH, "HOME": str(self.workdir)},
            )

    def _start_containerd(self) -> None:
        ctd = self.workdir / "ctd"
        config = ctd / "config.toml"
        # Own config (not /etc/containerd): no CRI plugin, nothing under /opt or /var/lib.
        config.write_text(
            "version = 2\n"
            f'root = "{ctd / "root"}"\n'
            f'state = "{self._run() / "ctd-state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            f'[ttrpc]\n  address = "{self.containerd_socket}.ttrpc"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{ctd / "opt"}"\n'
        )
        self.containerd_proc = self._spawn("containerd", [CONTAINERD, "--config", str(config)])
        self._wait("containerd", self.containerd_proc, self.containerd_socket.exists, 30)

    def _dockerd_args(self) -> list[str]:
        config = self.workdir / "daemon.json"
        # Not /etc/docker/daemon.json. The key path (config-file only, no flag) keeps dockerd
        # from writing its trust key to /etc/docker/key.json.
        config.write_text(json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}))
        return [
            DOCKERD,
            f"--config-file={config}",
            f"--host=unix://{self.socket}",
            f"--containerd={self.containerd_socket}",
            f"--data-root={self.workdir / 'data'}",
            f"--exec-root={self._run() / 'exec'}",
            f"--pidfile={self.pidfile}",
            "--storage-driver=vfs",
            f"--bip={self.bridge_cidr}",
            "--iptables=true",
            "--ip6tables=false",
            "--userland-proxy=false",
            "--live-restore",
        ]

    def _start_dockerd(self) -> None:
        self.dockerd_proc = self._spawn("dockerd", self._dockerd_args())

        def ready() -> bool:
            return (
                self.socket.exists()
                and self.docker("info", check=False, timeout=10).returncode == 0
            )

        self._wait("dockerd", self.dockerd_proc, ready, 60)

    def _wait(
        self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            log = self.workdir / "log" / f"{name}.log"
            if proc.poll() is not None:
                lines = [ln for ln in _tail(log).splitlines() if ln.strip()]
                # The cause, not a trailing "See 'dockerd --help'." line.
                errors = [ln for ln in lines if re.search(r"error|fatal|fail", ln, re.I)]
                last = (errors or lines or ["(empty log)"])[-1]
                raise DockerUnavailable(
                    f"{name} exited with status {proc.returncode}: {last}", _tail(log)
                )
            if time.monotonic() > deadline:
                raise DockerError(f"{name} not ready after {timeout:.0f}s; log tail:\n{_tail(log)}")
            time.sleep(0.1)

    def _import_image(self) -> None:
        rootfs = self.workdir / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in APPLETS:
            link = rootfs / "bin" / applet
            if not link.is_symlink():
                link.symlink_to("busybox")
        (rootfs / "index.html").write_text("hello from dockerlab\n")  # httpd's home is /
        for d in ("tmp", "etc", "proc", "sys", "dev"):
            (rootfs / d).mkdir(exist_ok=True)
        tar = self.workdir / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        self.docker("import", str(tar), IMAGE)

    def restart(self) -> None:
        """Stop dockerd (SIGTERM, wait) and start it again; containers live on (live-restore)."""
        assert self.dockerd_proc is not None, "Dockerd not started"
        _stop(self.dockerd_proc, grace=30)
        self._start_dockerd()

    def _shutdown(self) -> None:
        """Stop everything we started, pass or fail; safe to call twice."""
        if self.dockerd_proc is not None and self.dockerd_proc.poll() is None:
            # live-restore keeps containers across a dockerd stop: remove them first.
            ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        for proc in (self.dockerd_proc, self.containerd_proc):
            if proc is not None:
                _stop(proc, grace=20)
        self.dockerd_proc = self.containerd_proc = None
        if self.rundir is not None:
            # Anything left (shims of containers dockerd could not remove, their
            # children) names our containerd socket or lives below it: kill it.
            leftovers = _descendants(processes_mentioning(str(self.rundir)))
            for pid in leftovers:
                _kill(pid, signal.SIGKILL)
            _remove_cgroups(self.workdir / "data" / "containers")
            _unmount_below(self.rundir)
            _unmount_below(self.workdir)
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None
        for d in (*self._made, self.workdir / "rootfs"):
            shutil.rmtree(d, ignore_errors=True)
        for f in ("rootfs.tar", "daemon.json", "dockerd.pid", "key.json"):
            (self.workdir / f).unlink(missing_ok=True)
        self._made = []

    # -- client --------------------------------------------------------------------------
    def docker(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon (from the host namespace: it only talks
        to the unix socket)."""
        proc = subprocess.run(
            [DOCKER, "-H", f"unix://{self.socket}", *args],
            text=True,
            capture_output=True,
            timeout=timeout,
            # Own CLI config dir: nothing written to ~/.docker.
            env={**os.environ, "DOCKER_CONFIG": str(self._run() / "cli")},
            check=False,
        )
        if check and proc.returncode != 0:
            log = _tail(self.workdir / "log" / "dockerd.log")
            raise DockerError(
                f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"dockerd log tail:\n{log}"
            )
        return proc

    def publish(self, host_port: int, container_port: int = 80, name: str | None = None) -> str:
        """Run busybox httpd with HOST:CONTAINER published; return the container id once
        it is running."""
        extra = ["--name", name] if name else []
        cid = self.docker(
            "run", "-d", *extra, "-p", f"{host_port}:{container_port}",
            IMAGE, "httpd", "-f", "-p", str(container_port),
        ).stdout.strip()  # fmt: skip
        deadline = time.monotonic() + 30
        while self.docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip() != "true":
            if time.monotonic() > deadline:
                logs = self.docker("logs", cid, check=False).stdout
                raise DockerError(f"container {cid[:12]} not running after 30s: {logs}")
            time.sleep(0.1)
        return cid


@contextlib.contextmanager
def docker_lab(
    netns: Callable[[str], Namespace], tmp_path: Path, srv: str, out: str
) -> Iterator[tuple[Dockerd, Namespace]]:
    """Namespace dsrv (address ``srv``/24, running Docker) joined by a veth to dout
    (``out``/24, the outside world); yields the daemon and dout. Skips the test when
    dockerd cannot run here."""
    srv_ns, out_ns = netns("dsrv"), netns("dout")
    connect(srv_ns, out_ns, [f"{srv}/24"], [f"{out}/24"])
    try:
        with Dockerd(srv_ns, workdir=tmp_path / "docker") as d:
            yield d, out_ns
    except DockerUnavailable as exc:
        pytest.skip(f"dockerd cannot run here: {exc}")


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _unmount_below(root: Path) -> None:
    """Lazily unmount whatever the daemons left mounted below ``root`` (netns bind mounts)."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_cgroups(containers: Path) -> None:
    """Kill what is left in the cgroups of this daemon's containers, and remove them.

    dockerd's default cgroupfs parent is /docker/<container id> in every hierarchy. A
    container can outlive its daemon's knowledge of it (after the restart in
    tests/test_forwarded.py, ``docker ps`` lists none, yet their processes run on): its
    cgroup is where its processes are found.
    """
    ids = [p.name for p in containers.iterdir()] if containers.is_dir() else []
    for cid in ids:
        root = Path("/sys/fs/cgroup")
        for cg in [*root.glob(f"*/docker/{cid}"), root / "docker" / cid]:  # v1, v2
            with contextlib.suppress(OSError, ValueError):
                for pid in (cg / "cgroup.procs").read_text().split():
                    _kill(int(pid), signal.SIGKILL)
            for _ in range(50):  # SIGKILLed tasks leave their cgroup a moment later
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
