"""Decode each complete audio file on its own into float32 PCM at the programme's rate and layout.

Decoding files separately is what makes the join gapless: ffmpeg reads each mp3's LAME header and trims its
encoder delay and padding, and no decoder ever sees a foreign header in the middle of its stream.

Speed comes from the process count (DESIGN.md: one process per file costs ~14–75 ms of start-up each), so
files are decoded in batches: ONE ffmpeg process with many inputs writing as many raw outputs. Decoder errors
are not attributable to an input in a batch's stderr, so a batch that reports any error is decoded again
file by file to name the culprit; that slow path only runs when something is already wrong.

`speeds` (the `speed` option, per file) appends a tempo filter (audio.tempo) to a file's chain in the same
process, so the decoded files come out at their final rate and every later stage follows without knowing.
The per-file duration cap applies to the provider's audio before stretching (a slow read is not a bomb).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from . import ffmpeg, tempo
from .containers import riff
from .cooperate import cooperate
from .errors import FFmpegError, InvalidAudio
from .model import AudioFile

BATCH_SIZE = 48  # inputs per ffmpeg process: bounds open files and argv length, allows progress
BYTES_PER_SAMPLE = 4  # float32


@dataclass(frozen=True)
class DecodedFile:
    """Raw float32le interleaved PCM of one AudioFile, on disk."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    source: AudioFile

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def programme_rate(files: Sequence[AudioFile], requested: int | None) -> int:
    """The rate everything is decoded to: as asked, else the highest input rate up to 48 kHz."""
    if requested:
        return requested
    rates = [f.sample_rate for f in files if 0 < f.sample_rate <= 48000]
    return max(rates) if rates else 24000


def decode_all(
    files: Sequence[AudioFile],
    workdir: Path,
    *,
    sample_rate: int,
    channels: int,
    max_seconds_per_file: float,
    parallel: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    speeds: Sequence[float | None] | None = None,
) -> list[DecodedFile]:
    """Decode every file (in order) into workdir; raise InvalidAudio naming the call on any decoder error.

    `speeds[i]`: speech rate of file i (None or 1.0 = as delivered); see audio.tempo.
    """
    file_speeds = [1.0 if tempo.is_unity(s) else s for s in (speeds or [None] * len(files))]
    if len(file_speeds) != len(files):
        raise ValueError("decode_all: one speed per file")
    workdir.mkdir(parents=True, exist_ok=True)
    inputs: list[Path] = []
    for pos, f in enumerate(files):
        if f.path is not None:  # spooled by synth: decode it where it is
            inputs.append(f.path)
            continue
        path = workdir / f"in{pos:05d}.{f.fmt}"
        path.write_bytes(f.data)
        inputs.append(path)
        cooperate()
    outputs = [workdir / f"dec{pos:05d}.f32" for pos in range(len(files))]
    wanted = max(1, min(parallel or os.cpu_count() or 1, 4))
    batches = _batches(len(files), wanted)
    workers = min(wanted, len(batches) or 1)
    done = 0

    def run_batch(batch: list[int]) -> None:
        args: list[str] = ["-v", "error"]
        for pos in batch:
            args += ffmpeg.input_args(inputs[pos], files[pos].fmt)
        for k, pos in enumerate(batch):
            args += output_args(
                k, outputs[pos], sample_rate, channels, max_seconds_per_file, files[pos].reconfigures, file_speeds[pos]
            )
        timeout = 60 + 2 * sum(files[p].size for p in batch) / 4000  # generous: ~2 s per 4 kB/s·s
        res = ffmpeg.run(args, what="decoding the TTS audio", check=False, timeout=timeout)
        if res.stderr.strip() or any(not outputs[p].exists() for p in batch):
            for pos in batch:
                _decode_one_strict(
                    files[pos], inputs[pos], outputs[pos], sample_rate, channels, max_seconds_per_file, file_speeds[pos]
                )

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for _ in pool.map(run_batch, batches):
            done += 1
            if progress:
                progress(done, len(batches))

    decoded: list[DecodedFile] = []
    for pos, f in enumerate(files):
        cooperate()
        if f.path is None:
            inputs[pos].unlink(missing_ok=True)
        size = outputs[pos].stat().st_size
        frames = size // (BYTES_PER_SAMPLE * channels)
        if frames >= int(max_seconds_per_file / file_speeds[pos] * sample_rate):
            raise InvalidAudio(
                f.call_index,
                f"file {f.file_index + 1} decodes to more than {max_seconds_per_file:.0f} s of audio; "
                "refusing it (a small payload must not expand to hours)",
                sniffed=f.fmt,
            )
        if frames == 0:
            raise InvalidAudio(f.call_index, f"file {f.file_index + 1} contains no audio samples", sniffed=f.fmt)
        decoded.append(DecodedFile(outputs[pos], frames, sample_rate, channels, f))
    return decoded


def _batches(count: int, workers: int) -> list[list[int]]:
    """Positions 0..count-1 in equal consecutive batches of at most BATCH_SIZE, as many as a multiple of
    `workers`: 120 files on 2 workers are 4 batches of 30, not 48+48+24 (whose last batch runs alone)."""
    if count == 0:
        return []
    n = -(-count // BATCH_SIZE)
    n = min(count, -(-n // workers) * workers)
    size, extra = divmod(count, n)
    bounds = [0]
    for k in range(n):
        bounds.append(bounds[-1] + size + (k < extra))
    return [list(range(a, b)) for a, b in pairwise(bounds)]


def output_args(
    k: int, out: Path, rate: int, channels: int, max_seconds: float, reconfigures: bool = False, speed: float = 1.0
) -> list[str]:
    """Output `k`: float32 at `rate`/`channels`, stretched to `speed` after resampling (the stretcher then
    works at the final rate), cut at max_seconds of the source's time.

    A stream whose rate or layout changes mid-way makes ffmpeg rebuild the filter graph there, and the
    resampler's buffered samples are lost at each rebuild: 25–50 ms of speech with soxr, at most 3 ms with
    swr's default filter (measured: 24→22.05→24 kHz to 16/24/44.1 kHz), so such a file is resampled with swr."""
    layout = "mono" if channels == 1 else "stereo"
    resampler = "swr" if reconfigures else "soxr"
    chain = f"aresample=osr={rate}:resampler={resampler},aformat=sample_fmts=flt:channel_layouts={layout}"
    stretch = tempo.tempo_filter(speed)
    if stretch:
        chain += "," + stretch
    return [
        "-map", f"{k}:a:0",
        "-af", chain,
        "-t", f"{max_seconds / speed:.3f}",
        "-f", "f32le", ffmpeg.file_url(out),
    ]  # fmt: skip


def _decode_one_strict(
    f: AudioFile, src: Path, out: Path, rate: int, channels: int, max_seconds: float, speed: float = 1.0
) -> None:
    """Decode a single file; any decoder message is an error that names the call and file."""
    res = ffmpeg.run(
        [
            "-v",
            "error",
            *ffmpeg.input_args(src, f.fmt),
            *output_args(0, out, rate, channels, max_seconds, f.reconfigures, speed),
        ],
        what="decoding the TTS audio",
        check=False,
        timeout=60 + f.size / 2000,
    )
    problems = [line for line in res.stderr.splitlines() if line.strip()]
    if problems or not out.exists():
        _check_ffmpeg_works(src.parent, rate, channels, res.stderr)
        detail = decoder_problems(res.stderr, 5) or "no output"
        raise InvalidAudio(
            f.call_index,
            f"file {f.file_index + 1} ({f.fmt}) could not be decoded cleanly: {detail}",
            sniffed=f.fmt,
        )


def _reference_wav(seconds: float = 0.05, rate: int = 8000) -> bytes:
    """A tiny valid WAV (silence) written by us: if ffmpeg cannot decode this, ffmpeg is the problem."""
    frames = int(seconds * rate)
    fmt_body = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, 16-bit
    return riff.header(fmt_body, 2 * frames) + bytes(2 * frames)


def _check_ffmpeg_works(workdir: Path, rate: int, channels: int, stderr: str) -> None:
    """Raise FFmpegError when ffmpeg fails on our own reference file too.

    Only called after a file failed to decode: a crashing or broken ffmpeg must not be reported as the
    provider's invalid audio (which would send the user to the wrong place).
    """
    ref, out = workdir / "reference.wav", workdir / "reference.f32"
    ref.write_bytes(_reference_wav())
    try:
        res = ffmpeg.run(
            ["-v", "error", *ffmpeg.input_args(ref, "wav"), *output_args(0, out, rate, channels, 10.0)],
            what="decoding a reference file",
            check=False,
            timeout=60,
        )
        ok = not res.stderr.strip() and out.exists() and out.stat().st_size > 0
    except FFmpegError:
        ok = False
    finally:
        ref.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    if not ok:
        raise FFmpegError("decoding the TTS audio: ffmpeg fails even on a reference file it should decode", stderr)


def decoder_problems(stderr: str, limit: int) -> str:
    """The first `limit` lines ffmpeg complained with, addresses stripped and repeats dropped, for a message."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(_strip_address(line) for line in lines[:limit]))


def _strip_address(line: str) -> str:
    """'[mp3float @ 0x55d…] Header missing' → 'mp3float: Header missing' (stable, readable)."""
    line = line.strip()
    if line.startswith("[") and "]" in line:
        tag, _, rest = line[1:].partition("]")
        return f"{tag.split(' @ ')[0]}: {rest.strip()}"
    return line
