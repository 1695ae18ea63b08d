"""The rollback watchdog: restores the snapshot at the deadline unless confirmed.

Started detached (its own session, no terminal, stdio on /dev/null, ``python -I`` in /
with a minimal environment) by ``harden apply --confirm N`` before the rules are
loaded, so neither kill -9 of the applying process nor a dying SSH session stops it.
It shares the network namespace it was started in. docs/design.md, "The confirm
window and the watchdog".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harden.apply.transaction import rollback_if_pending


def main(argv: list[str]) -> int:
    """``python -I -m harden.apply.watchdog STATE_DIR TOKEN DEADLINE READY_FD``."""
    state_dir, token, deadline, ready = Path(argv[0]), argv[1], float(argv[2]), int(argv[3])
    # Apply holds the state lock and waits for this line before it loads any rule.
    os.write(ready, b"ready\n")
    os.close(ready)
    time.sleep(max(0.0, deadline - time.time()))
    rollback_if_pending(state_dir, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
