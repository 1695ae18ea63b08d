"""Every default in one place: the CLI, the API, the engine and the lab read them here."""

from __future__ import annotations

from pathlib import Path

from harden.types import Backend

# verify (docs/design.md, "Loss, retries and lost sends")
WAIT = 0.4  # seconds to wait for replies after a round, at most (and when no RTT is known)
MIN_WAIT = 0.05  # ... at least, however short the measured round-trip time
RTT_FACTOR = 4  # the wait is this many echo round-trip times, between MIN_WAIT and WAIT
# The coarsest Linux timer tick (HZ=100): the target counts its ICMP budget in ticks, so
# k refill intervals are waited as k x (interval + TICK) + TICK (docs/design.md,
# "Counting in the target's ticks").
TICK = 0.01
RETRIES = 2  # extra rounds for silent probes (loss)
DECLARED_RETRIES = 4  # more rounds for declared ports that stay silent
ICMP_RATELIMIT_MS = 1000  # assumed net.ipv4.icmp_ratelimit / net.ipv6.icmp.ratelimit
ENUMERATE_SECONDS = 3.0  # keep listing UDP leaks this long as the ICMP budget refills
MAX_QUIET_WAIT = 20.0  # give up if the target never stays ICMP-quiet this long
CONNECT_TIMEOUT = 1.0  # connect mode: the least time a silent TCP port is given

# apply
BACKEND: Backend = "nftables"  # one inet table for IPv4 and IPv6, loaded atomically
STATE_DIR = Path("/var/lib/harden")
LAB_CONFIRM_WINDOW = 120  # seconds: the lab's apply rolls back unless verified in time
