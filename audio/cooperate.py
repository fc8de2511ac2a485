"""Let other greenlets run during long Python work (the Dify SDK runs every invocation in one OS thread).

`time.sleep(0)` is not enough under gevent: it only queues the current greenlet behind other ready ones,
and the hub runs up to 50 such callbacks before it looks at its timers and sockets; heartbeats and other
invocations' I/O could wait 140 ms (measured by tests/test_reliability.py on a 15-minute job). A real sleep
of 0.1 ms makes the hub run a full loop iteration. Doing that at most every YIELD_EVERY_S keeps its cost
negligible, and outside gevent it is a 0.1 ms sleep every 10 ms of work.
"""

from __future__ import annotations

import time

YIELD_EVERY_S = 0.010
_last = time.monotonic()


def cooperate() -> None:
    """Call between pieces of CPU work; yields a full hub cycle when ≥ YIELD_EVERY_S has passed."""
    global _last
    now = time.monotonic()
    if now - _last >= YIELD_EVERY_S:
        time.sleep(0.0001)
        _last = time.monotonic()
