"""relay's long-lived objects and Python's cyclic garbage collector.

A serving process holds a large heap that lives as long as it does: modules, the compiled
config (rules, templates, channels), the aiohttp app. Each full collection walked all of it
(about 25 ms, every half second under load: 5-7 % of the CPU of an ingest) to find no garbage
there. `settle` collects once, then freezes what is left (`gc.freeze`): later collections skip
it. Objects that die later are freed by their reference counts as always; only a cycle among
frozen objects would outlive its last user, so a config reload settles again (`resettle`), which
unfreezes first: the replaced config is collected, the new one frozen.

The youngest generation is collected every YOUNG_THRESHOLD container allocations instead of
Python's 700: a delivered notification allocates a few hundred (records, futures, the render's
dicts) that nearly all die by reference count, so at 700 a collection ran every ~20 notifications
to find almost nothing. Alternating A/Bs of `bench/delivery.py --count 10000` (8 pairs, a busy
machine) gave 363 and 379 us of CPU per notification on average at 700, 342 and 366 us at
7,000 (-3 to -6 %). Garbage in a cycle waits for at most that many more allocations (a few
hundred KB).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000  # Python's default: 700 (see above)


def settle() -> None:
    """Collect every cycle of garbage, then take what is alive out of later collections."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def resettle() -> None:
    """`settle` again if this process settled its heap before (`relay serve` does; a test
    that builds a service in its own process does not)."""
    if gc.get_freeze_count():
        settle()
