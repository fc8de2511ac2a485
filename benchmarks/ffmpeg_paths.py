"""What the ffmpeg choice costs (run by hand, not in CI).

1. The probe (audio.ffmpeg.probe: 5 short runs in parallel, once per process per binary) for the bundled
   imageio-ffmpeg binary and, if installed, the distribution's /usr/bin/ffmpeg.
2. Mastering a 10-minute speech-like programme (24 kHz mono, podcast target) into each lossy format:
   the bundled ffmpeg with the loopback decoder (encode + measure in one run), the same binary forced onto the
   slower path (encode, then measure the file), and the distribution's ffmpeg (slower path: it has no `-dec`).

Rounds are interleaved; printed: the median (min–max) wall time, and the median CPU time (this process and
its ffmpeg children), which a busy machine distorts less than the wall time.

    .venv/bin/python benchmarks/ffmpeg_paths.py [--rounds 3] [--minutes 10] [--formats mp3,m4a,ogg]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DISTRIBUTION_FFMPEG = "/usr/bin/ffmpeg"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--formats", default="mp3,m4a,ogg")
    args = ap.parse_args()

    from audio import ffmpeg
    from audio.master import master
    from audio.model import LOUDNESS_PRESETS, EncodeOptions
    from tests.test_loudness import speech_like, write_f32

    bundled, why = ffmpeg._bundled()
    assert bundled, why
    binaries = {"bundled": bundled}
    if os.access(DISTRIBUTION_FFMPEG, os.X_OK):
        binaries["distribution"] = DISTRIBUTION_FFMPEG

    probe_ms: dict[str, list[float]] = {name: [] for name in binaries}
    for _ in range(max(5, args.rounds)):
        for name, path in binaries.items():
            ffmpeg.probe.cache_clear()
            started = time.perf_counter()
            caps = ffmpeg.probe(path)
            probe_ms[name].append((time.perf_counter() - started) * 1000)
    for name, path in binaries.items():
        caps = ffmpeg.probe(path)
        print(f"probe {name:13s} {_stats(probe_ms[name], 'ms', 0)}   {caps.describe()}")

    variants = {"bundled, loopback": (bundled, True), "bundled, slow path": (bundled, False)}
    if "distribution" in binaries:
        variants["distribution, slow path"] = (DISTRIBUTION_FFMPEG, False)
    rate = 24000
    with tempfile.TemporaryDirectory() as tmp:
        program = write_f32(Path(tmp) / "programme.f32", speech_like(args.minutes * 60, rate, seed=7))
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        figures: dict[tuple[str, str], tuple[float | None, float | None, int]] = {}
        for _ in range(args.rounds):
            for fmt in args.formats.split(","):
                for variant, (path, loopback) in variants.items():
                    caps = replace(ffmpeg.probe(path), has_loopback=loopback)
                    ffmpeg.capabilities = lambda caps=caps: caps  # type: ignore[method-assign]
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    started, cpu0 = time.perf_counter(), _cpu_s()
                    e = master(program, rate, 1, None, None, LOUDNESS_PRESETS["podcast"], EncodeOptions(fmt=fmt), work)
                    times.setdefault((fmt, variant), []).append(time.perf_counter() - started)
                    cpu.setdefault((fmt, variant), []).append(_cpu_s() - cpu0)
                    figures[(fmt, variant)] = (e.loudness_lufs, e.true_peak_dbtp, e.encodes)
        for (fmt, variant), values in times.items():
            lufs, tp, encodes = figures[(fmt, variant)]
            base = statistics.median(times[(fmt, "bundled, loopback")])
            print(
                f"{args.minutes:g} min {fmt:4s} {variant:24s} {_stats(values, 's', 2)}  "
                f"x{statistics.median(values) / base:.2f}  CPU {statistics.median(cpu[(fmt, variant)]):.2f} s   "
                f"{lufs} LUFS {tp} dBTP, {encodes} encode(s)"
            )


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _stats(values: list[float], unit: str, digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


if __name__ == "__main__":
    main()
