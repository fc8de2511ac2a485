"""Compare time stretchers for `speed` on embedded-engine speech (run by hand, not in CI).

Workload: ~3 minutes of eSpeak speech (sentences joined by 0.3 s pauses), one 48 kbit/s mp3 as a provider
would send it. Each variant is the pipeline's decode step (soxr resample to 24 kHz float) with the stretcher
appended to the filter chain, so the time shown is what `speed` adds to decoding. For each variant:
  wall     median decode time of --repeat runs (wall clock; noisy on a shared machine)
  cpu      median CPU time of the ffmpeg process (user + system; what the stretcher costs whatever the load)
  len      whole-file duration ratio original/stretched (pauses included: should be the speed)
  dur      speech-part duration ratio original/stretched (sound between pauses; should be the speed)
  f0       median f0 ratio stretched/original (1.000 = pitch kept)
  period   voicing periodicity ratio stretched/original (phasiness, splice glitches lower it)
  lsd      log-mel spectral distance to the original at the uniformly stretched position, dB (lower = closer)

Then the pipeline's own decode step (audio.decode.decode_all, batched) on --segments per-sentence mp3 files
(benchmarks/pipeline_bench.py's workload) at speed 1 and 1.25: the cost `speed` adds to a real job.

    .venv/bin/python benchmarks/tempo_compare.py [--speeds 0.8 1.25 1.5] [--minutes 3] [--segments 40]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio import ffmpeg  # noqa: E402
from audio.engine import _BY_NAME, _synth_pcm, sample_rate  # noqa: E402
from benchmarks.pipeline_bench import SENTENCES, build_workload  # noqa: E402
from tests import speechmeasure as sm  # noqa: E402

RATE = 24000
VARIANTS = {
    "atempo": "atempo={s}",
    "rubberband": "rubberband=tempo={s}",
    "rubberband-speech": "rubberband=tempo={s}:window=short:phase=independent",
    "rubberband-smooth": "rubberband=tempo={s}:transients=smooth:detector=soft",
}


def workload(directory: Path, minutes: float) -> Path:
    rate = sample_rate()
    pause = bytes(2 * int(0.3 * rate))
    pcm, seconds, k = b"", 0.0, 0
    voice = _BY_NAME["en-us"]
    cache: dict[str, bytes] = {}
    while seconds < minutes * 60:
        s = SENTENCES[k % len(SENTENCES)]
        cache.setdefault(s, _synth_pcm(s, voice))
        pcm += cache[s] + pause
        seconds = len(pcm) / 2 / rate
        k += 1
    raw, out = directory / "speech.raw", directory / "speech.mp3"
    raw.write_bytes(pcm)
    ffmpeg.run([*ffmpeg.raw_input_args(raw, rate, 1, "s16le"), "-c:a", "libmp3lame", "-b:a", "48k", str(out)])
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def decode(src: Path, out: Path, extra: str) -> tuple[float, float]:
    """(wall s, ffmpeg CPU s) of decoding `src` with `extra` appended to the pipeline's chain."""
    chain = f"aresample=osr={RATE}:resampler=soxr,aformat=sample_fmts=flt:channel_layouts=mono"
    if extra:
        chain += "," + extra
    t0, c0 = time.perf_counter(), _children_cpu()
    ffmpeg.run(["-v", "error", *ffmpeg.input_args(src, "mp3"), "-af", chain, "-f", "f32le", ffmpeg.file_url(out)])
    return time.perf_counter() - t0, _children_cpu() - c0


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speeds", type=float, nargs="+", default=[0.8, 1.25, 1.5])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--segments", type=int, default=40)
    ap.add_argument("--skip-compare", action="store_true")
    args = ap.parse_args()
    if not args.skip_compare:
        compare(args)
    pipeline_decode(args)


def pipeline_decode(args: argparse.Namespace) -> None:
    from audio import decode as dec
    from audio.model import AudioFile

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_workload(Path(tmp) / "w", args.segments)
        files = [AudioFile(b"", "mp3", 24000, 1, call_index=i, path=p) for i, p in enumerate(paths)]
        results = {}
        for speed in (None, 1.25, None, 1.25) * args.repeat:  # interleaved
            out = Path(tmp) / "d"
            t0, c0 = time.perf_counter(), _children_cpu()
            decoded = dec.decode_all(files, out, sample_rate=RATE, channels=1, max_seconds_per_file=1800,
                                     speeds=[speed] * len(files))
            results.setdefault(speed, []).append(
                (time.perf_counter() - t0, _children_cpu() - c0, sum(d.duration_s for d in decoded))
            )
            for d in decoded:
                d.path.unlink()
        for speed, runs in results.items():
            wall, cpu = _median([r[:2] for r in runs])
            print(f"decode_all {len(files)} files, speed {speed or 1.0}: {runs[0][2]:.1f} s of audio out, "
                  f"median {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms ffmpeg CPU")


def compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = workload(d, args.minutes)
        ref_out = d / "ref.f32"
        base, base_cpu = _median([decode(src, ref_out, "") for _ in range(args.repeat)])
        ref = np.fromfile(ref_out, "<f4")
        ref_speech = sum(b - a for a, b in sm.speech_spans(ref, RATE))
        ref_f0, ref_per = sm.f0_hz(ref, RATE), sm.periodicity(ref, RATE)
        excerpt = int(30 * RATE)
        print(f"ffmpeg {ffmpeg.ffmpeg_binary()}")
        print(f"{len(ref) / RATE:.1f} s of speech; plain decode {base * 1000:.0f} ms wall, {base_cpu * 1000:.0f} ms "
              f"CPU; f0 {ref_f0:.1f} Hz")
        heads = ("speed", "wall ms", "cpu ms", "+cpu ms", "len", "dur", "f0", "period", "lsd dB")
        print(f"{'variant':20} " + " ".join(f"{h:>7}" for h in heads))
        for speed in args.speeds:
            for name, pattern in VARIANTS.items():
                out = d / f"{name}.f32"
                wall, cpu = _median([decode(src, out, pattern.format(s=speed)) for _ in range(args.repeat)])
                y = np.fromfile(out, "<f4")
                speech = sum(b - a for a, b in sm.speech_spans(y, RATE))
                lsd = sm.aligned_spectral_distance(ref[: int(excerpt * speed)], y[:excerpt], RATE, speed)
                cells = (f"{speed:.2f}", f"{wall * 1000:.0f}", f"{cpu * 1000:.0f}", f"{(cpu - base_cpu) * 1000:.0f}",
                         f"{len(ref) / len(y):.3f}",
                         f"{ref_speech / speech:.3f}", f"{sm.f0_hz(y, RATE) / ref_f0:.3f}",
                         f"{sm.periodicity(y, RATE) / ref_per:.3f}", f"{lsd:.2f}")
                print(f"{name:20} " + " ".join(f"{c:>7}" for c in cells))


if __name__ == "__main__":
    main()
