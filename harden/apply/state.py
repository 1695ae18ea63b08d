"""harden's state: what is applied, what was before it, and a pending confirmation.

``State`` is a pure state machine (every transition returns a new State and refuses
an illegal one); ``StateDir`` keeps it on disk, written atomically (temp file +
rename) under an flock, so apply, ``harden confirm`` and the rollback watchdog never
see half a record. See docs/design.md, "The confirm window and the watchdog".
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from harden import defaults
from harden.apply import boot
from harden.backends import REGISTRY
from harden.errors import (
    ApplyError,
    EnvironmentProblem,
    InternalError,
    Refused,
    StateError,
    UnsafeStateDir,
)
from harden.types import Backend

DEFAULT_STATE_DIR = defaults.STATE_DIR
HISTORY = 20  # events kept


# Write errors that are the file system's state, not harden's: full, over quota, read-only.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


@dataclass(frozen=True)
class Applied:
    """One ruleset that harden loaded: where it came from and what the kernel showed."""

    backend: Backend
    manifest: str
    manifest_sha256: str
    ruleset_sha256: str
    applied_at: float
    live_sha256: str  # harden's live rules right after loading them


Phase = Literal["loading", "loaded"]


@dataclass(frozen=True)
class Pending:
    """An apply in progress (written before the load) or waiting for ``harden confirm``.

    ``phase`` is "loading" from before the rules are loaded until the load returned:
    a crash in between leaves this record, so a way back always exists. ``deadline``
    is None for an apply without a confirm window (it settles once loaded).
    """

    token: str
    deadline: float | None  # time.time(); None: no confirm window
    watchdog_pid: int | None = None
    persist: bool = False
    root: str = "/"
    phase: Phase = "loading"


@dataclass(frozen=True)
class State:
    """The record: the current ruleset, the one before it, a pending confirmation."""

    current: Applied | None = None
    previous: Applied | None = None  # what a rollback restores (None: harden had nothing)
    pending: Pending | None = None
    live_sha256: str = ""  # harden's live rules after the last transition
    history: tuple[dict[str, Any], ...] = ()  # the last events, newest last

    def _event(self, what: str, when: float, **extra: Any) -> tuple[dict[str, Any], ...]:
        return (*self.history, {"event": what, "at": when, **extra})[-HISTORY:]

    @property
    def interrupted(self) -> bool:
        """Whether an apply stopped between writing its record and finishing its load."""
        return self.pending is not None and self.pending.phase == "loading"

    def ensure_settled(self) -> None:
        """Refuse a new apply while the last one is unfinished or awaits confirmation."""
        if self.pending is None:
            return
        if self.pending.deadline is None:
            raise Refused(
                "the last apply was interrupted before it finished: run 'harden rollback' "
                "(restores the rules from before it) or 'harden confirm' (keeps them if "
                "they are live)"
            )
        raise Refused(
            "a confirmation is pending from the last apply: run 'harden confirm' or "
            "'harden rollback' first"
        )

    def applied(self, new: Applied, pending: Pending | None) -> State:
        """A ruleset was loaded; with ``pending`` it rolls back unless confirmed."""
        self.ensure_settled()
        return State(
            current=new,
            previous=self.current,
            pending=pending,
            live_sha256=new.live_sha256,
            history=self._event("applied", new.applied_at, manifest_sha256=new.manifest_sha256),
        )

    def recorded(self, new: Applied) -> State:
        """An apply found ``new``'s rules live already: record them as the applied ones.

        Nothing changed, so nothing is pending and ``previous`` stays what the last change
        replaced (a rollback still undoes that change, with its snapshot). Recording the
        same rules from the same manifest again changes nothing.
        """
        self.ensure_settled()
        old = self.current
        same = old is not None and (old.backend, old.manifest, old.manifest_sha256) == (
            new.backend,
            new.manifest,
            new.manifest_sha256,
        )
        if same and self.live_sha256 == new.live_sha256:
            return self
        return replace(
            self,
            current=new,
            live_sha256=new.live_sha256,
            history=self._event(
                "recorded", new.applied_at, manifest_sha256=new.manifest_sha256, changed=False
            ),
        )

    def loaded(self, live_sha256: str | None = None) -> State:
        """The load returned: without a confirm window the apply is settled.

        ``live_sha256``: what the new rules hash to as the kernel lists them, for an apply
        that wrote its record before it could know (an atomic backend lists its rules
        once they are loaded; the record said "" until then, and a confirm of an apply
        interrupted in between is refused: docs/design.md, "Check, snapshot, load").
        """
        if self.pending is None or self.pending.phase != "loading":
            raise InternalError("no apply is loading")
        state = self
        if live_sha256 is not None and self.current is not None:
            current = replace(self.current, live_sha256=live_sha256)
            state = replace(self, current=current, live_sha256=live_sha256)
        if self.pending.deadline is None:
            return replace(state, pending=None)
        return replace(state, pending=replace(self.pending, phase="loaded"))

    def confirmed(self, now: float, live_sha256: str) -> State:
        """The pending ruleset is kept: no rollback.

        ``live_sha256`` is what harden's rules hash to now: an interrupted apply is
        confirmed only if its rules did get loaded.
        """
        if self.pending is None or self.current is None:
            raise Refused("nothing to confirm: no apply is waiting for confirmation")
        deadline = self.pending.deadline
        if deadline is not None and now > deadline:
            raise ApplyError("too late: the confirm window has passed")
        if self.pending.phase == "loading" and live_sha256 != self.current.live_sha256:
            raise Refused(
                "the interrupted apply's rules are not the live ones: run 'harden rollback'"
            )
        return replace(
            self, pending=None, live_sha256=live_sha256, history=self._event("confirmed", now)
        )

    def rolled_back(self, now: float, live_sha256: str, reason: str = "") -> State:
        """The rules from before the last apply are live again."""
        if self.current is None:
            raise Refused("nothing to roll back: harden has applied nothing")
        extra: dict[str, Any] = {"manifest": self.current.manifest}
        if reason:
            extra["reason"] = reason
        return State(
            current=self.previous,
            previous=None,
            pending=None,
            live_sha256=live_sha256,
            history=self._event("rolled back", now, **extra),
        )

    def removed(self, now: float) -> State:
        """Harden's rules and boot files are gone (``harden remove``): nothing is applied."""
        self.ensure_settled()
        manifest = self.current.manifest if self.current is not None else None
        return State(history=self._event("removed", now, manifest=manifest))

    def with_watchdog(self, pid: int) -> State:
        """Remember the pending rollback's watchdog process."""
        if self.pending is None:
            raise InternalError("no pending apply to attach a watchdog to")
        return replace(self, pending=replace(self.pending, watchdog_pid=pid))

    def to_json(self) -> dict[str, Any]:
        """The on-disk record."""
        return {"version": 2, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Parse the on-disk record; StateError if it is not one."""
        try:
            if data.get("version") != 2:
                return _from_version_1(data)
            return State(
                current=_applied(data.get("current")),
                previous=_applied(data.get("previous")),
                pending=Pending(**data["pending"]) if data.get("pending") else None,
                live_sha256=str(data.get("live_sha256", "")),
                history=tuple(data.get("history", ())),
            )
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise StateError(f"state record is not one harden wrote ({exc})") from None


def _applied(data: dict[str, Any] | None) -> Applied | None:
    if data is None:
        return None
    applied = Applied(**data)
    if applied.backend not in REGISTRY:
        raise ValueError(f"unknown backend {applied.backend!r}")
    return applied


def _from_version_1(data: dict[str, Any]) -> State:
    # The flat record of harden 0.1 (one apply, no "previous").
    current = None
    if data.get("backend"):
        current = _applied(
            {
                "backend": data["backend"],
                "manifest": data.get("manifest", ""),
                "manifest_sha256": data.get("manifest_sha256", ""),
                "ruleset_sha256": data.get("ruleset_sha256", ""),
                "applied_at": data.get("applied_at", 0.0),
                "live_sha256": data.get("live_sha256", ""),
            }
        )
    pending = data.get("pending")
    return State(
        current=current,
        pending=Pending(**pending) if pending else None,
        live_sha256=str(data.get("live_sha256", "")),
        history=tuple(data.get("history", ())),
    )


# The only files harden reads or writes in a state directory.
RECORD, SNAPSHOT, APPLIED, PERSISTED, LOCK = (
    "state.json",
    "snapshot.json",
    "applied.json",
    "persisted.json",
    "lock",
)
MAX_FILE = 64 * 1024 * 1024  # a snapshot of a 10,000-entry allowlist is well under this


class StateDir:
    """The files of a state directory, which must be harden's alone.

    A directory another user can write would let them plant a snapshot that root then
    loads, or a record that makes root write files elsewhere: it is refused (exit 2).
    Files are opened without following symlinks and only by the names above.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        if str(path) in ("", "."):
            raise UnsafeStateDir("the state directory must be a path, not empty or '.'")
        self.path = path

    @property
    def record(self) -> Path:
        """The JSON state record."""
        return self.path / RECORD

    @property
    def snapshot_file(self) -> Path:
        """Harden's rules as they were before the last apply, per backend."""
        return self.path / SNAPSHOT

    def check(self, create: bool = False) -> bool:
        """Refuse a state directory that is not a private directory of this user.

        Every ancestor is checked too (owned by root or this user; writable by others only
        if sticky and root's), walking down from / one component at a time without
        following a symlink, and the directory is kept open: every later read and write
        is relative to that descriptor, so a parent swapped for a symlink afterwards
        redirects nothing (docs/design.md, "The state directory").
        Returns whether it exists (after creating it if ``create``).
        """
        if self._fd is not None:
            return True
        fd = _walk(self.path.absolute(), create)
        if fd is None:
            return False
        st = os.fstat(fd)
        problem = None
        if st.st_uid != os.geteuid():
            problem = (
                f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
                "refusing to trust it"
            )
        elif st.st_mode & 0o022:
            problem = (
                f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                "refusing to trust it (chmod 700)"
            )
        if problem:
            os.close(fd)
            raise UnsafeStateDir(f"state directory {self.path} {problem}")
        self._fd = fd
        return True

    def _dir(self, create: bool = True) -> int | None:
        """The open state directory (checked; created if missing and ``create``, else None)."""
        if not self.check(create=create):
            return None
        assert self._fd is not None
        return self._fd

    def _made(self) -> int:
        """The open state directory, created if missing (for writes and the lock)."""
        fd = self._dir(create=True)
        assert fd is not None
        return fd

    def close(self) -> None:
        """Close the directory descriptor (a later use opens and checks it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        """Close the descriptor with the object."""
        self.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state directory's lock (apply, confirm, rollback, watchdog)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(LOCK, flags, 0o600, dir_fd=self._made())
        except OSError as exc:
            raise UnsafeStateDir(f"{self.path / LOCK}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, name: str) -> str | None:
        """A state file's text (None if absent), never through a symlink."""
        path = self.path / name
        directory = self._dir(create=False)  # reading creates nothing
        if directory is None:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise StateError(f"{path} is not a regular file")
            data = handle.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise StateError(f"{path} is larger than harden ever writes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(f"{path} is not UTF-8 text") from None

    def _read_json(self, name: str) -> Any:
        text = self._read(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StateError(f"{self.path / name} is not valid JSON ({exc})") from None

    def _write(self, name: str, data: Any) -> None:
        """Replace a state file atomically, in the open directory, never through a symlink.

        A rename replaces a symlink planted at the name; it never writes through it.
        """
        directory = self._made()
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(data, indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException as exc:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=directory)
            if isinstance(exc, OSError) and exc.errno in _FULL_OR_READ_ONLY:
                # The host's doing, not a bug: say what the system said, exit 4.
                raise EnvironmentProblem(
                    f"cannot write {self.path / name}: {exc.strerror} (free space there, "
                    "or choose another --state-dir)"
                ) from None
            raise

    def _unlink(self, name: str) -> None:
        directory = self._dir(create=False)
        if directory is not None:
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=directory)

    def load(self) -> State:
        """The record, or an empty one if nothing was ever applied."""
        if not self.check():
            return State()
        data = self._read_json(RECORD)
        if data is None:
            return State()
        if not isinstance(data, dict):
            raise StateError(f"{self.record} is not a harden state record")
        return State.from_json(data)

    def save(self, state: State) -> None:
        """Write the record atomically."""
        self._write(RECORD, state.to_json())

    def save_snapshot(self, snapshots: Mapping[Backend, str]) -> None:
        """Keep each backend's pre-apply rules ("" where harden had nothing loaded)."""
        self._write(SNAPSHOT, {"version": 1, "backends": dict(snapshots)})

    def load_snapshot(self) -> dict[Backend, str] | None:
        """The kept snapshots per backend, or None if there is none."""
        data = self._read_json(SNAPSHOT)
        if data is None:
            return None
        backends = data.get("backends") if isinstance(data, dict) else None
        if not isinstance(backends, dict) or not all(
            k in REGISTRY and isinstance(v, str) for k, v in backends.items()
        ):
            raise StateError(f"{self.snapshot_file} is not a snapshot harden wrote")
        return {str(k): v for k, v in backends.items()}

    def drop_snapshot(self) -> None:
        """Forget the snapshot (after a rollback used it)."""
        self._unlink(SNAPSHOT)

    def save_files(self, files: dict[str, str]) -> None:
        """Keep the rendered files that were loaded (persisted on confirm)."""
        self._write(APPLIED, files)

    def load_files(self) -> dict[str, str]:
        """The rendered files of the last apply."""
        data = self._read_json(APPLIED)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise StateError(f"{self.path / APPLIED} is not a ruleset harden wrote")
        return data

    def save_persist_undo(self, before: Mapping[str, tuple[str | None, int]]) -> None:
        """What each boot file held before harden persisted: (text or None if absent, mode)."""
        self._write(PERSISTED, {path: list(value) for path, value in before.items()})

    def load_persist_undo(self) -> dict[str, tuple[str | None, int]]:
        """The boot files to put back on rollback (empty if nothing was persisted)."""
        data = self._read_json(PERSISTED)
        if data is None:
            return {}
        out: dict[str, tuple[str | None, int]] = {}
        bad = StateError(f"{self.path / PERSISTED} is not a record harden wrote")
        if not isinstance(data, dict):
            raise bad
        for path, value in data.items():
            if not (isinstance(path, str) and path.startswith("/") and isinstance(value, list)):
                raise bad
            if len(value) != 2 or not isinstance(value[1], int):
                raise bad
            if value[0] is not None and not isinstance(value[0], str):
                raise bad
            # -1: a symlink (the unit's wants link), its target in place of the text.
            out[path] = (value[0], value[1] if value[1] == -1 else value[1] & 0o7777)
        _only_boot_files(out, bad)
        return out

    def drop_persist_undo(self) -> None:
        """Forget the persisted files' previous contents."""
        self._unlink(PERSISTED)

    def reset(self, now: float) -> list[Path]:
        """Move every state file aside (``*.broken-<time>``); the live rules stay as they are."""
        directory = self._dir(create=False)
        if directory is None:
            return []
        moved = []
        for name in (RECORD, SNAPSHOT, APPLIED, PERSISTED):
            target = f"{name}.broken-{int(now)}"
            try:
                os.rename(name, target, src_dir_fd=directory, dst_dir_fd=directory)
            except FileNotFoundError:
                continue
            moved.append(self.path / target)
        return moved


def _only_boot_files(undo: Mapping[str, tuple[str | None, int]], bad: StateError) -> None:
    """Refuse a persist record naming anything but harden's boot files under one root.

    A rollback writes what it names, as root: a record that names another file (or a
    wants link to another unit) would make root write it.
    """
    known = {str(p.relative_to("/")) for p in boot.targets(Path("/"))} | {str(boot.WANTS)}
    roots = set()
    for name, (text, mode) in undo.items():
        rel = next((k for k in known if name.endswith("/" + k)), None)
        if rel is None or ".." in Path(name).parts:
            raise bad
        roots.add(name[: -len(rel)])
        is_link = rel == str(boot.WANTS)
        if is_link != (mode == -1) or (is_link and text not in (None, f"/{boot.UNIT}")):
            raise bad
    if len(roots) > 1:
        raise bad


def _walk(path: Path, create: bool) -> int | None:
    """Open ``path`` from / one component at a time, never through a symlink (or None).

    Each ancestor is checked before its child is opened; missing ones are made (0700) if
    ``create``.
    """
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = Path("/")
    try:
        for part in path.parts[1:]:
            _check_ancestor(fd, walked)
            walked = walked / part
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                with suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeStateDir(
                f"state directory {path}: {walked} is a symlink or not a directory (harden "
                "keeps its state only on a path of real directories)"
            ) from None
        raise UnsafeStateDir(f"state directory {path}: {walked}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_ancestor(fd: int, path: Path) -> None:
    """An ancestor of the state directory must be root's or ours, and nobody else's to write."""
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeStateDir(
            f"{path}, an ancestor of the state directory, belongs to uid {st.st_uid}: that "
            "user could swap the state directory for a symlink (refused)"
        )
    sticky_root = st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if st.st_mode & 0o022 and not sticky_root:
        raise UnsafeStateDir(
            f"{path}, an ancestor of the state directory, is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):o}): they could swap the state directory (refused)"
        )
