"""The rollback watchdog: restores the snapshot at the deadline unless confirmed.

Started detached (its own session, no terminal, stdio on /dev/null, ``python -I`` in
/) by ``harden apply --confirm N``, so neither kill -9 of the applying process nor a
dying SSH session stops it. It shares the network namespace it was started in.
docs/design.md, "The confirm window and the watchdog".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harden.apply.engine import rollback_if_pending
from harden.apply.state import StateDir


def main(argv: list[str]) -> int:
    """``python -I -m harden.apply.watchdog STATE_DIR TOKEN``: sleep to the deadline, act."""
    state_dir, token = Path(argv[0]), argv[1]
    states = StateDir(state_dir)
    with states.locked():  # apply holds the lock until the record naming us is saved
        pending = states.load().pending
    if pending is None or pending.token != token:
        return 0
    time.sleep(max(0.0, pending.deadline - time.time()))
    rollback_if_pending(state_dir, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
