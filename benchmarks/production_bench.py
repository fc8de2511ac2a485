"""What the finished-episode stage (audio.production) costs on a long programme (run by hand, not in CI).

A 10-minute speech programme (noise bursts of 4 s with 0.3 s pauses and a 2.7 s pause every tenth, so the bed
ducks and opens as with real speech) gets an intro, an outro and a looped music bed; the mix is written as
float32 to a temporary directory. Baseline, measured in the same run: copying the programme file once
through numpy in the same 2-s blocks (the floor for any streaming pass). Prints wall and CPU time, the peak
resident memory, and the measured bed level under speech.

    .venv/bin/python benchmarks/production_bench.py [--minutes 10] [--rate 24000] [--channels 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from audio import ffmpeg, production  # noqa: E402
from audio.assemble import Programme  # noqa: E402
from audio.model import TimelineEntry  # noqa: E402
from scripts.make_pad import make_pad  # noqa: E402


def speech_like(path: Path, minutes: float, rate: int, channels: int) -> Programme:
    """Write the programme block by block (never all of it in memory) and its timeline."""
    n = int(minutes * 60 * rate)
    timeline: list[TimelineEntry] = []
    i = 0
    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:
        written = 0
        while written < n:
            seg = min(int(4.0 * rate), n - written)
            (rng.standard_normal((seg, channels)) * 0.05).astype("<f4").tofile(fh)
            timeline.append(TimelineEntry(i, written / rate, (written + seg) / rate, f"sentence {i}"))
            written += seg
            gap = min(int((2.7 if i % 10 == 9 else 0.3) * rate), n - written)
            np.zeros((gap, channels), "<f4").tofile(fh)
            written += gap
            i += 1
    return Programme(path, n, rate, channels, timeline, -26.0, -26.0, {}, [])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=24000)
    ap.add_argument("--channels", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        prog = speech_like(d / "speech.f32", args.minutes, args.rate, args.channels)
        pad = make_pad(d / "pad.flac", 16.0)
        for name in ("intro", "outro"):
            ffmpeg.run(["-f", "lavfi", "-i", "sine=f=440:d=3", "-c:a", "libmp3lame", "-f", "mp3",
                        ffmpeg.file_url(d / f"{name}.mp3")])
        t0, c0 = time.perf_counter(), time.process_time()
        block = 2 * args.rate * args.channels
        with open(prog.path, "rb") as src, open(d / "copy.f32", "wb") as dst:
            while (piece := np.fromfile(src, "<f4", block)).size:
                piece.tofile(dst)
        base_wall, base_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        made = production.produce(prog, d, d / "episode.f32", intro=d / "intro.mp3", outro=d / "outro.mp3",
                                  music=pad, music_level_lu=-20.0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.minutes:g} min, {args.rate} Hz, {args.channels} ch")
    print(f"  baseline (stream copy): {base_wall:.2f} s wall, {base_cpu:.2f} s CPU")
    print(f"  production:             {wall:.2f} s wall, {cpu:.2f} s CPU (×{wall / max(base_wall, 1e-3):.1f})")
    print(f"  bed under speech {made.music_level_lu} LU (target -20), peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
