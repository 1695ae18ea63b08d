"""nftables through the official libnftables bindings (Debian's python3-nftables)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from harden.core.render import NFT_FILE
from harden.errors import ApplyError, EnvironmentProblem

TABLE = "inet harden"


class NftFirewall:
    """Loads, snapshots and restores ``table inet harden``; never touches another table."""

    name: Literal["nftables"] = "nftables"

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as exc:
            raise EnvironmentProblem(
                "the nftables Python bindings are missing (Debian package python3-nftables; "
                "a virtualenv needs --system-site-packages)"
            ) from exc
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
        return int(rc), str(out), str(err)

    def check(self, files: dict[str, str]) -> None:
        """Dry-run the whole transaction in the kernel (nft -c)."""
        rc, _, err = self._run(files[NFT_FILE], dry=True)
        if rc != 0:
            raise ApplyError(f"the kernel refused the ruleset (nothing changed): {_one_line(err)}")

    def snapshot(self) -> str:
        """The live table with its counters, or "" if harden has no table."""
        rc, out, _ = self._run(f"list table {TABLE}")
        return out if rc == 0 else ""

    def load(self, files: dict[str, str]) -> None:
        """Load the rendered file: declare, delete and recreate the table in one transaction."""
        rc, _, err = self._run(files[NFT_FILE])
        if rc != 0:
            raise ApplyError(f"loading the ruleset failed (nothing changed): {_one_line(err)}")

    def restore(self, snapshot: str) -> None:
        """Reload a snapshot atomically, or delete harden's table if there was none."""
        text = f"table {TABLE}\ndelete table {TABLE}\n"
        if snapshot:
            text += snapshot
        rc, _, err = self._run(text)
        if rc != 0:
            raise ApplyError(f"restoring the snapshot failed: {_one_line(err)}")

    def live(self) -> str:
        """The live table without counter values ("" if absent)."""
        rc, out, _ = self._run(f"list table {TABLE}", stateless=True)
        return out if rc == 0 else ""

    def canonical(self, files: dict[str, str]) -> str:
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
            raise ApplyError(f"the kernel refused the ruleset: {_one_line(proc.stderr)}")
        return proc.stdout


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]
