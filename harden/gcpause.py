"""paused_gc: the cyclic garbage collector held off while harden builds a large manifest.

Reading a manifest of 100,000 sources allocates hundreds of thousands of objects (YAML
events, networks, pydantic's intermediates), nearly none of them in reference cycles.
Every 700 allocations start a young-generation collection, and the older generations'
passes walk everything built so far: hundreds of collections, a quarter of the Python
time of such an apply (docs/testing.md, "Benchmarks": large allowlists). Reference
counting still frees what is dropped; whatever cycles the build leaves wait for the first
collection after it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside the block; as it was after it (nesting is fine)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
