"""Benchmark the audio core against the floor and a naive join (run by hand, not in CI).

Workload: N speech segments of one or two sentences from the embedded engine (default 120 ≈ 14 min),
24 kHz mono mp3 files with levels varying ±6 dB, as a per-sentence provider would send them. In one run it
measures wall time, CPU time and peak memory (this process's own peak RSS and its ffmpeg children's) of:
  (a) floor    one ffmpeg process that decodes, concatenates and encodes the same files to mp3
  (a') floor_fast  the same with the LAME mode the pipeline chooses here (-q 7; see audio.master.mp3_fast)
  (b) naive    pydub: AudioSegment.from_file each, `+=`, export
  (c) pipeline audio.pipeline.narrate with default mastering (-16 LUFS, mp3)
and prints c/a, c/a' and b/a. Each variant runs in its own child process so peak memory is its own; each
runs --repeat times (default 3, interleaved) and the median time is used. "children" is the largest peak RSS
of a variant's subprocesses (ffmpeg); it includes the parent's size at the moment of the fork.

    .venv/bin/python benchmarks/pipeline_bench.py            # 120 segments
    .venv/bin/python benchmarks/pipeline_bench.py --scale 4  # 4× the programme length
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "The history of radio begins with a handful of experiments that few people noticed at the time.",
    "Engineers argued for years about the best way to carry a voice across long distances.",
    "By the end of the decade, families gathered every evening to listen to the news together.",
    "Some programmes were scripted to the second, while others were improvised on the spot.",
    "Listeners wrote thousands of letters, and many of them were answered on air.",
    "Today the same ideas live on in podcasts, audiobooks and voice assistants.",
    "Early microphones were heavy, fragile and expensive, so studios shared them between shows.",
    "Music, drama and sport each found their own rhythm on the air within a few years.",
    "Reporters learned to describe what the audience could not see, one careful detail at a time.",
]


def build_workload(directory: Path, count: int, seed: int = 7) -> list[Path]:
    """Synthesize `count` segments of one or two sentences (~7 s on average) with the embedded engine, as a
    per-sentence provider sends them: mp3 24 kHz mono, each at a random gain within ±6 dB."""
    from audio import ffmpeg
    from audio.engine import EspeakEngine

    directory.mkdir(parents=True, exist_ok=True)
    engine = EspeakEngine(fmt="wav")  # one WAV file per sentence
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        sentences = rng.sample(SENTENCES, rng.choice((1, 2)))
        gain = rng.uniform(-6.0, 6.0)
        path = directory / f"seg{i:04d}.mp3"
        paths.append(path)
        if path.exists():
            continue
        pcm, rate = b"", 0
        for sentence in sentences:
            with wave.open(io.BytesIO(b"".join(engine(sentence, None)))) as w:
                pcm, rate = pcm + w.readframes(w.getnframes()), w.getframerate()
        ffmpeg.run(
            [*ffmpeg.raw_input_args("pipe:0", rate, 1, "s16le"), "-af", f"volume={gain:.2f}dB,aresample=24000",
             "-c:a", "libmp3lame", "-b:a", "48k", str(path)],
            stdin=pcm,
        )
    return paths


def variant_floor(paths: list[Path], out: Path, encoder: tuple[str, ...] = ()) -> None:
    from audio import ffmpeg

    args: list[str] = []
    for p in paths:
        args += ffmpeg.input_args(p, "mp3")
    graph = "".join(f"[{i}:a]" for i in range(len(paths))) + f"concat=n={len(paths)}:v=0:a=1[out]"
    ffmpeg.run(
        [*args, "-filter_complex", graph, "-map", "[out]", "-c:a", "libmp3lame", "-b:a", "64k", *encoder, str(out)],
        timeout=3600,
    )


def variant_floor_fast(paths: list[Path], out: Path) -> None:
    """The floor with the LAME mode the pipeline picks for 24 kHz mono 64 kbit/s (audio.master.mp3_fast: -q 7,
    twice as fast as ffmpeg's default -q 5), so the pipeline's own work is also compared like for like."""
    variant_floor(paths, out, ("-compression_level", "7"))


def variant_naive(paths: list[Path], out: Path) -> None:
    from pydub import AudioSegment

    from audio import ffmpeg

    # AudioSegment.from_file(mp3) would run ffprobe, which this project never depends on; decoding each
    # file with one ffmpeg process to WAV and loading that is what from_file does besides the probe.
    AudioSegment.converter = ffmpeg.ffmpeg_binary()
    programme = AudioSegment.empty()
    for p in paths:
        wav = ffmpeg.run([*ffmpeg.input_args(p, "mp3"), "-f", "wav", "pipe:1"]).stdout
        programme += AudioSegment.from_file(io.BytesIO(wav), format="wav")
    programme.export(out, format="mp3", bitrate="64k")


def variant_pipeline(paths: list[Path], out: Path) -> None:
    from audio.pipeline import Job, narrate

    by_text = {f"Segment number {i}.": p for i, p in enumerate(paths)}

    def synthesize(text: str, voice: str | None):  # a provider streams its answer; nothing is held here
        data = by_text[text].read_bytes()
        for i in range(0, len(data), 1024):
            yield data[i : i + 1024]

    text = "\n\n".join(by_text)
    narrate(Job(text=text, concurrency=8, backoff_s=0), synthesize, output=out)


VARIANTS = {
    "floor": variant_floor, "floor_fast": variant_floor_fast, "naive": variant_naive, "pipeline": variant_pipeline
}


# Imported before the clock starts: a plugin imports once at start-up and then serves many jobs, so what is
# timed is the job (audio.pipeline's imports, numpy/scipy, take ~0.85 s here; pydub's ~0.05 s).
PRELOAD = {"floor": ("audio.ffmpeg",), "floor_fast": ("audio.ffmpeg",), "naive": ("audio.ffmpeg", "pydub"),
           "pipeline": ("audio.pipeline",)}


def child(variant: str, workload: Path, out: Path, scale: int) -> None:
    import importlib

    for module in PRELOAD[variant]:
        importlib.import_module(module)
    paths = sorted(workload.glob("seg*.mp3")) * scale
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    VARIANTS[variant](paths, out)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "seconds": elapsed, "cpu_s": cpu, "rss_mb": own, "ffmpeg_rss_mb": kids}))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the ffmpeg processes).

    Wall time on a small machine depends on how well work spreads over its cores; CPU time is the work itself,
    so the two ratios together say whether a gap is work or parallelism.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=120)
    parser.add_argument("--scale", type=int, default=1, help="repeat the workload this many times")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ttsp-bench")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the median time is reported")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    workload = args.workdir / f"workload-v3-{args.segments}"
    if args.child:
        child(args.child[0], workload, Path(args.child[1]), args.scale)
        return

    t0 = time.perf_counter()
    build_workload(workload, args.segments)
    print(f"workload: {args.segments} segments × {args.scale} (built/cached in {time.perf_counter() - t0:.1f} s)")
    from audio.loudness import measure_file

    variants = [v for v in VARIANTS if not (v == "naive" and args.skip_naive)]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeat):  # rounds interleave the variants, so a slow spell of the machine hits all
        for variant in variants:
            out = args.workdir / f"out-{variant}-{args.scale}.mp3"
            proc = subprocess.run(
                [sys.executable, __file__, "--segments", str(args.segments), "--scale", str(args.scale),
                 "--workdir", str(args.workdir), "--child", variant, str(out)],
                capture_output=True, text=True, check=True,
            )
            runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = {}
    for variant in variants:
        times = sorted(r["seconds"] for r in runs[variant])
        res = {"seconds": statistics.median(times), "spread": (times[0], times[-1]),
               "cpu_s": statistics.median(r["cpu_s"] for r in runs[variant]),
               "rss_mb": max(r["rss_mb"] for r in runs[variant]),
               "ffmpeg_rss_mb": max(r["ffmpeg_rss_mb"] for r in runs[variant])}
        m = measure_file(args.workdir / f"out-{variant}-{args.scale}.mp3", "mp3")
        results[variant] = res
        print(
            f"{variant:10s} {res['seconds']:6.2f} s ({times[0]:.2f}–{times[-1]:.2f})  CPU {res['cpu_s']:6.2f} s  "
            f"peak RSS {res['rss_mb']:5.0f} MB "
            f"(children {res['ffmpeg_rss_mb']:4.0f} MB)  {m.duration_s / 60:5.1f} min  "
            f"{m.integrated:6.1f} LUFS  TP {m.true_peak:5.1f} dBTP"
        )
    floor = results["floor"]["seconds"]
    cpu_floor = results["floor"]["cpu_s"]
    print(f"c/a (pipeline / floor) = {results['pipeline']['seconds'] / floor:.2f}  "
          f"(CPU time {results['pipeline']['cpu_s'] / cpu_floor:.2f})")
    print(f"c/a' (pipeline / floor with the pipeline's LAME mode) = "
          f"{results['pipeline']['seconds'] / results['floor_fast']['seconds']:.2f}  "
          f"(CPU time {results['pipeline']['cpu_s'] / results['floor_fast']['cpu_s']:.2f})")
    if "naive" in results:
        print(f"b/a (naive pydub / floor) = {results['naive']['seconds'] / floor:.2f}  "
              f"(CPU time {results['naive']['cpu_s'] / cpu_floor:.2f})")


if __name__ == "__main__":
    main()
