"""nftables through the official libnftables bindings (Debian's python3-nftables)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harden.apply import boot
from harden.backends.nftables.rules import NFT_FILE, render
from harden.errors import ApplyError, EnvironmentProblem, StateError
from harden.policy.model import Policy
from harden.text import one_line
from harden.types import Backend

TABLE = "inet harden"


DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # where Debian's python3-nftables lives


def bindings_missing(error: str = "") -> str:
    """Why ``import nftables`` failed in this interpreter, and what to do about it."""
    return why_not_importable(
        sys.executable,
        sys.prefix,
        sys.base_prefix,
        sys.path,
        Path(DIST_PACKAGES, "nftables").is_dir(),
        error,
    )


def why_not_importable(
    executable: str, prefix: str, base: str, path: list[str], installed: bool, error: str = ""
) -> str:
    """The hint for a Python that cannot import Debian's bindings (pure: given its facts)."""
    who = f"the nftables Python bindings cannot be imported by {executable}"
    if not installed:
        return f"{who}: Debian's python3-nftables is not installed (apt install python3-nftables)"
    if DIST_PACKAGES in path:
        return f"{who}: {DIST_PACKAGES} is on its path, but the import failed: {error}"
    fix = "make the venv with /usr/bin/python3 -m venv --system-site-packages"
    if prefix != base and base != "/usr":
        why = f"its virtualenv is based on {base}, not Debian's /usr/bin/python3"
    elif prefix != base:
        why = "its virtualenv was made without --system-site-packages"
    else:
        why = f"it is not Debian's /usr/bin/python3 (its prefix is {base})"
        fix = "run harden with /usr/bin/python3, or " + fix
    return f"{who}: {why}, so it cannot see {DIST_PACKAGES}, where python3-nftables is; {fix}"


# Commands or outputs larger than this (bytes) get a fresh context after them.
BIG = 1 << 20


class NftFirewall:
    """Loads, snapshots and restores ``table inet harden``; never touches another table."""

    name: Backend = "nftables"
    atomic: bool = True

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as exc:
            raise EnvironmentProblem(bindings_missing(str(exc))) from exc
        self._module = nftables
        self._nft = nftables.Nftables()
        self._nft.set_json_output(False)

    def _run(
        self, text: str, *, dry: bool = False, stateless: bool = False
    ) -> tuple[int, str, str]:
        self._nft.set_dry_run(dry)
        self._nft.set_stateless_output(stateless)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_dry_run(False)
        if len(text) + len(out) > BIG:
            self._fresh()
        return int(rc), str(out), str(err)

    def _fresh(self, *, collect: bool = False) -> None:
        """A new libnftables context: the old one's cache goes, and its memory back.

        Loading 100,000 set elements takes about 80 MB in libnftables, and listing them
        130 MB; kept (glibc holds freed memory), a load then a listing would add up.
        """
        self._nft = self._module.Nftables()  # the old one is freed with its last reference
        self._nft.set_json_output(False)
        if collect:
            gc.collect()  # and what harden dropped in cycles (the manifest's, pydantic's)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def render(self, policy: Policy) -> dict[str, str]:
        """``harden.nft``: one ``table inet harden`` transaction."""
        return render(policy)

    def check(self, files: dict[str, str]) -> str:
        """Load the whole transaction where nothing is at stake; the canonical form.

        The load into a throwaway network namespace is the kernel's own check, stronger
        than a dry run (nft -c) in this one, which it replaced: at 100,000 sources each
        pass over the ruleset costs most of a second.
        """
        return self._canonical(files)

    def snapshot(self) -> str:
        """The live table with its counters, or "" if harden has no table."""
        rc, out = self._listed(stateless=False)
        return out if rc == 0 else ""

    def _listed(self, *, stateless: bool) -> tuple[int, str]:
        """``nft [-s] list table inet harden``, in a child process.

        Listing 100,000 set elements takes libnftables 130 MB; in a child, that memory is
        the child's and goes with it, instead of adding to what harden holds (the
        manifest's networks, a load's own 80 MB). The same library prints the same text.
        Without the nft program, the bindings list it here.
        """
        argv = ["nft", *(["-s"] if stateless else []), "list", "table", *TABLE.split()]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            rc, out, _ = self._run(f"list table {TABLE}", stateless=stateless)
            return rc, out
        return proc.returncode, proc.stdout

    def load(self, files: dict[str, str]) -> None:
        """Load the rendered file: declare, delete and recreate the table in one transaction."""
        self._fresh(collect=True)  # what harden no longer holds goes back first: the peak
        rc, _, err = self._run(files[NFT_FILE])
        if rc != 0:
            raise ApplyError(f"loading the ruleset failed (nothing changed): {one_line(err, 400)}")

    def restore(self, snapshot: str) -> None:
        """Reload a snapshot atomically, or delete harden's table if there was none."""
        refuse_foreign_snapshot(snapshot)
        text = f"table {TABLE}\ndelete table {TABLE}\n"
        if snapshot:
            text += snapshot
        rc, _, err = self._run(text)
        if rc != 0:
            raise ApplyError(f"restoring the snapshot failed: {one_line(err, 400)}")

    def live(self) -> str:
        """The live table without counter values or dynamic set contents ("" if absent).

        A ``limit:`` meter fills with the addresses that connect: state the kernel keeps,
        not rules. Listed as they are, every SSH login would be drift, and the re-apply
        that drift invites would wipe the meters and hand a brute-forcer a fresh burst.
        """
        rc, out = self._listed(stateless=True)
        return without_dynamic_elements(out) if rc == 0 else ""

    def _canonical(self, files: dict[str, str]) -> str:  # empty meters: as live() lists them
        """Load the ruleset into a throwaway network namespace and list it back."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / NFT_FILE
            path.write_text(files[NFT_FILE])
            proc = subprocess.run(
                [
                    "unshare",
                    "--net",
                    "sh",
                    "-c",
                    f'nft -f "$1" && nft -s list table {TABLE}',
                    "sh",
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise ApplyError(
                f"the kernel refused the ruleset (nothing changed): {one_line(proc.stderr, 400)}"
            )
        return proc.stdout

    def counters(self) -> dict[str, int]:
        """Packets per named counter of ``table inet harden`` ({} without the table)."""
        self._nft.set_json_output(True)
        try:
            rc, out, _ = self._run(f"list counters table {TABLE}")
        finally:
            self._nft.set_json_output(False)
        if rc != 0:
            return {}
        found = {}
        for item in json.loads(out).get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("table") == "harden":
                found[str(counter["name"])] = int(counter["packets"])
        return found

    def ruleset(self, *, terse: bool = False) -> dict[str, Any]:
        """The whole ruleset as libnftables JSON (every table, read only).

        ``terse``: without named sets' elements (``nft -t``), which the kernel then need
        not send at all. 11 ms instead of a second beside a 100,000-source allowlist;
        enough to name the other firewalls' base chains and what their rules drop.
        """
        data: dict[str, Any] = json.loads(self.listing(terse=terse))
        return data

    def listing(self, *, terse: bool = False) -> str:
        """``ruleset()`` as the JSON text libnftables prints."""
        self._nft.set_json_output(True)
        self._nft.set_terse_output(terse)
        try:
            rc, out, err = self._run("list ruleset")
        finally:
            self._nft.set_json_output(False)
            self._nft.set_terse_output(False)
        if rc != 0:
            raise EnvironmentProblem(f"cannot list the ruleset: {one_line(err, 300)}")
        return out or "{}"

    def identity(self) -> str | None:
        """``inet harden handle N``: the kernel numbers each new table afresh."""
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        try:
            rc, out, _ = self._run("list tables inet")
        finally:
            self._nft.set_json_output(False)
            self._nft.set_handle_output(False)
        if rc != 0:
            return None
        for item in json.loads(out).get("nftables", []):
            table = item.get("table")
            if table and table.get("name") == "harden":
                return f"inet harden handle {table.get('handle')}"
        return None

    def persist_targets(self, root: Path) -> list[Path]:
        """The files persist() may write or remove under ``root`` (harden/apply/boot.py)."""
        return boot.targets(root)

    def persist(self, files: dict[str, str], root: Path) -> list[Path]:
        """/etc/harden/harden.nft, loaded by harden.service (enabled), nothing else."""
        return boot.install("nftables", files, root)


def refuse_foreign_snapshot(snapshot: str) -> None:
    """Refuse a snapshot that holds anything but ``table inet harden`` (StateError).

    A snapshot is loaded as root: one that flushed the ruleset or touched another table
    would do so too. ``nft list table`` output has the table's lines at column 0 and
    everything inside indented.
    """
    top = [line for line in snapshot.splitlines() if line and not line[0].isspace()]
    if top and (top[0] != f"table {TABLE} {{" or top[1:] != ["}"]):
        raise StateError(f"the nftables snapshot holds more than table {TABLE}: refused")


def without_dynamic_elements(listing: str) -> str:
    """``nft list table`` output with the elements of dynamic sets (meters) left out."""
    out: list[str] = []
    block: list[str] | None = None
    for line in listing.splitlines(keepends=True):
        stripped = line.strip()
        if block is None:
            if stripped.startswith("set ") and stripped.endswith("{"):
                block = [line]
            else:
                out.append(line)
            continue
        block.append(line)
        if stripped == "}" and len(line) - len(line.lstrip("\t")) == 1:  # the set's own end
            dynamic = any(b.strip().startswith("flags") and "dynamic" in b for b in block)
            out.extend(_drop_elements(block) if dynamic else block)
            block = None
    return "".join(out + (block or []))


def _drop_elements(block: list[str]) -> list[str]:
    kept, skipping = [], False
    for line in block:
        if line.strip().startswith("elements = {"):
            skipping = True
        if not skipping:
            kept.append(line)
        elif line.rstrip().endswith("}"):
            skipping = False
    return kept
