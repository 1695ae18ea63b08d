"""harden's state directory: what is applied, its snapshot, and a pending confirmation.

Everything is written atomically (temp file + rename) under an flock, so the apply
process, ``harden confirm`` and the rollback watchdog never see half a record.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/var/lib/harden")


@dataclass
class Pending:
    """An apply waiting for ``harden confirm`` before its deadline."""

    token: str
    deadline: float  # time.time()
    watchdog_pid: int | None = None
    persist: bool = False
    root: str = "/"


@dataclass
class State:
    """The record of the last apply."""

    backend: str = ""
    manifest: str = ""
    manifest_sha256: str = ""
    ruleset_sha256: str = ""
    applied_at: float = 0.0
    live_sha256: str = ""  # harden's live rules right after the last apply or rollback
    pending: Pending | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # last events, newest last

    def event(self, what: str, when: float, **extra: Any) -> None:
        """Remember an event (applied, confirmed, rolled back), keeping the last 20."""
        self.history = [*self.history, {"event": what, "at": when, **extra}][-20:]


class StateDir:
    """Files in the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def record(self) -> Path:
        """The JSON state record."""
        return self.path / "state.json"

    @property
    def snapshot_file(self) -> Path:
        """Harden's rules as they were before the last apply."""
        return self.path / "snapshot"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state directory's lock (apply, confirm, rollback, watchdog)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> State:
        """The record, or an empty one if nothing was ever applied."""
        try:
            data = json.loads(self.record.read_text())
        except FileNotFoundError:
            return State()
        pending = data.pop("pending", None)
        state = State(**data)
        state.pending = Pending(**pending) if pending else None
        return state

    def save(self, state: State) -> None:
        """Write the record atomically."""
        write_atomic(self.record, json.dumps(asdict(state), indent=2) + "\n")

    def save_snapshot(self, text: str) -> None:
        """Keep the pre-apply rules (may be empty: harden had nothing loaded)."""
        write_atomic(self.snapshot_file, text)

    def save_files(self, files: dict[str, str]) -> None:
        """Keep the rendered files that were loaded (persisted on confirm)."""
        write_atomic(self.path / "applied.json", json.dumps(files, indent=2) + "\n")

    def load_files(self) -> dict[str, str]:
        """The rendered files of the last apply."""
        files: dict[str, str] = json.loads((self.path / "applied.json").read_text())
        return files

    def load_snapshot(self) -> str | None:
        """The kept snapshot, or None if there is none."""
        try:
            return self.snapshot_file.read_text()
        except FileNotFoundError:
            return None


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so no reader sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
