"""Run the plugin with a probe that measures how long the gevent hub is blocked.

The Dify SDK runs every tool invocation, every backwards call and the heartbeat as greenlets in ONE OS thread;
Python CPU work that does not yield blocks all of them. This launcher is started in place of `python -m main`:

    python tests/hubprobe.py -m main          (cwd = the plugin directory, as the daemon starts it)

It imports `dify_plugin` (which applies gevent's monkey patching, as in the real plugin), starts

- a ticker greenlet that sleeps 5 ms in a loop and records how late each wake-up is: the lateness is the time
  the hub could not switch to it, i.e. how long some greenlet held the thread. On a busy machine part of that
  is time the OS did not run the thread at all (runnable, waiting for a CPU); the kernel counts it per thread
  in /proc/thread-self/schedstat, so each block is also reported net of that wait (`block_ms`), which is what
  the plugin's own code is responsible for (`late_ms` is the raw figure);
- a sampler running in a real OS thread (gevent's original `start_new_thread`) that, while the ticker is
  overdue by more than SAMPLE_AFTER_S, samples the main thread's Python stack, so each long block is
  reported with the code that caused it (the stage: segments, decode, assemble, loudness, master, ...);

then runs the module named after `-m` as `__main__` with runpy (sys.argv/sys.path as `python -m` sets them).

Results go to the JSON file named by $HUBPROBE_OUT, rewritten on every new maximum and about once a second:
`max_block_ms` (lateness net of run-queue wait), `max_late_ms` (raw), `ticks`, `histogram` (wake-ups by net
block length), `worst` (the 5 longest blocks: `block_ms`, `late_ms`, `runqueue_ms`, `cpu_ms` of the hub's
thread, wall-clock `at` of its end, and `stacks`: the 3 most frequent Python stacks of the hub's thread
sampled every 5 ms during the block, with their sample counts; empty for blocks too short to be sampled).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from collections import Counter

if __name__ == "__main__":  # as `python -m` does: the plugin directory, not tests/, comes first on sys.path
    sys.path[0] = os.getcwd()

import dify_plugin  # noqa: F401  - applies gevent's monkey.patch_all() exactly as the plugin does
import gevent
from gevent import monkey

PERIOD_S = 0.005
SAMPLE_AFTER_S = 0.02  # sample the stack of blocks longer than this
SAMPLE_EVERY_S = 0.005
WRITE_EVERY_S = 1.0
BUCKETS_MS = (1, 5, 10, 20, 50, 100, 250, 1000)  # histogram upper bounds; the last bucket is "more"
KEEP_WORST = 5
STACK_DEPTH = 10  # innermost frames kept per sample

_real_start_thread = monkey.get_original("_thread", "start_new_thread")
_real_sleep = monkey.get_original("time", "sleep")
_real_get_ident = monkey.get_original("_thread", "get_ident")


class Probe:
    def __init__(self, out_path: str | None) -> None:
        self.out_path = out_path
        self.main_ident = _real_get_ident()
        self.tick_started = time.perf_counter()  # when the current 5 ms sleep began
        self.ticks = 0
        self.max_block = 0.0  # lateness minus the time the thread waited for a CPU
        self.max_late = 0.0  # raw lateness
        self.histogram = [0] * (len(BUCKETS_MS) + 1)
        self.worst: list[dict] = []  # the KEEP_WORST longest blocks, longest first
        self.samples: dict[float, Counter[tuple[str, ...]]] = {}  # tick_started → stacks sampled in that block
        self.last_write = 0.0

    # -- in the hub's thread -----------------------------------------------------------------------------

    def tick_forever(self) -> None:
        while True:
            cpu0, wait0 = _schedstat()
            started = self.tick_started = time.perf_counter()
            gevent.sleep(PERIOD_S)
            late = max(0.0, time.perf_counter() - started - PERIOD_S)
            cpu1, wait1 = _schedstat()
            self.record(late, wait1 - wait0, cpu1 - cpu0, started)

    def record(self, late: float, runqueue: float, cpu: float, started: float) -> None:
        self.ticks += 1
        block = max(0.0, late - runqueue)
        ms = block * 1000
        self.histogram[next((i for i, b in enumerate(BUCKETS_MS) if ms <= b), len(BUCKETS_MS))] += 1
        sampled = self.samples.pop(started, Counter())
        self.samples.clear()
        changed = False
        if len(self.worst) < KEEP_WORST or ms > self.worst[-1]["block_ms"]:
            self.worst.append(
                {
                    "block_ms": round(ms, 2),
                    "late_ms": round(late * 1000, 2),
                    "runqueue_ms": round(runqueue * 1000, 2),
                    "cpu_ms": round(cpu * 1000, 2),
                    "at": time.time(),
                    "stacks": [{"samples": n, "stack": list(st)} for st, n in sampled.most_common(3)],
                }
            )
            self.worst.sort(key=lambda b: -b["block_ms"])
            del self.worst[KEEP_WORST:]
            changed = True
        self.max_block = max(self.max_block, block)
        self.max_late = max(self.max_late, late)
        now = time.monotonic()
        if changed or now - self.last_write > WRITE_EVERY_S:
            self.last_write = now
            self.write()

    def write(self) -> None:
        if not self.out_path:
            return
        report = {
            "max_block_ms": round(self.max_block * 1000, 2),
            "max_late_ms": round(self.max_late * 1000, 2),
            "ticks": self.ticks,
            "period_ms": PERIOD_S * 1000,
            "histogram": {
                **{f"<={b}ms": n for b, n in zip(BUCKETS_MS, self.histogram, strict=False)},
                f">{BUCKETS_MS[-1]}ms": self.histogram[-1],
            },
            "worst": self.worst,
        }
        tmp = f"{self.out_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, self.out_path)

    # -- in a real OS thread -------------------------------------------------------------------------------

    def sample_forever(self) -> None:
        while True:
            _real_sleep(SAMPLE_EVERY_S)
            started = self.tick_started
            if time.perf_counter() - started - PERIOD_S < SAMPLE_AFTER_S:
                continue
            frame = sys._current_frames().get(self.main_ident)
            if frame is None:
                continue
            stack = tuple(
                f"{fs.filename if fs.filename.startswith('<') else os.path.relpath(fs.filename)}:{fs.lineno} {fs.name}"
                for fs in traceback.extract_stack(frame)[-STACK_DEPTH:]
            )
            self.samples.setdefault(started, Counter())[stack] += 1


def _schedstat() -> tuple[float, float]:
    """(CPU time, time spent runnable but waiting for a CPU) of the calling OS thread, in seconds."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return 0.0, 0.0  # not Linux: blocks are reported as raw lateness
    try:
        cpu_ns, wait_ns, *_ = os.read(fd, 128).split()
    finally:
        os.close(fd)
    return int(cpu_ns) / 1e9, int(wait_ns) / 1e9


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("usage: python tests/hubprobe.py -m MODULE [args...]")
    module, rest = argv[1], argv[2:]
    probe = Probe(os.environ.get("HUBPROBE_OUT"))
    probe.write()
    gevent.spawn(probe.tick_forever)
    _real_start_thread(probe.sample_forever, ())
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
