"""Audio files the user supplies (intro, outro, music bed): sniff, check and decode them safely.

The same rules as provider audio: the format is sniffed from the content (a file name or MIME type says
nothing), the demuxer is forced to what was sniffed, and ffmpeg may open nothing but the file itself
(`audio.ffmpeg.input_args`; for mp4/m4a the whitelist is narrowed to `file` and external data references are
disabled, since the mov demuxer can follow them). Every error names the parameter the file came in.

`check()` runs before any TTS call (a short trial decode), `decode()` after it, at the programme's rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ffmpeg
from .containers.metadata import id3v2_size
from .decode import BYTES_PER_SAMPLE, decoder_problems, output_args
from .errors import InvalidInput, printable_preview
from .loudness import sniff_format

ACCEPTED = "mp3, wav, ogg/opus, flac or m4a/aac"
# demuxers we accept for user files (sniff_format's names) and what to call them in messages
_KINDS = {"mp3": "mp3", "wav": "wav", "ogg": "ogg", "flac": "flac", "mov": "m4a/mp4", "aac": "aac"}
CHECK_SECONDS = 20.0  # the trial decode before the TTS calls reads this much
CHECK_RATE = 8000


def sniff(param: str, path: Path) -> str:
    """The demuxer for `path`'s content, or InvalidInput naming `param` when it is no audio we accept."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            if not head:
                raise InvalidInput(param, "the file is empty")
            # ID3v2 tags (cover art makes them large) may stand before mp3 or ADTS audio: sniff what follows
            offset = 0
            while (size := id3v2_size(head, 0)) > 0:
                offset += size
                fh.seek(offset)
                head = fh.read(4096)
    except OSError as exc:
        raise InvalidInput(param, f"cannot read {path}: {exc.strerror or exc}") from None
    demuxer = sniff_format(head)
    if demuxer is None and offset:
        demuxer = "mp3"  # a tag, then nothing we recognise: mp3 is what ID3 usually heads
    if demuxer is None:
        what = _describe(head)
        raise InvalidInput(param, f"is not an audio file we can read ({what}); give {ACCEPTED}")
    return demuxer


def _describe(head: bytes) -> str:
    """What a refused file looks like, for the message."""
    if head[:5] == b"%PDF-":
        return "it is a PDF document"
    if head[:4] == b"PK\x03\x04":
        return "it is a zip archive (or an office document)"
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:4] == b"GIF8":
        return "it is an image"
    if head[:4] == b"RIFF":
        return f"it is a RIFF {head[8:12].decode('latin-1').strip()!r} file, not WAVE"
    sample = head[:512].decode("utf-8", "replace")
    if sum(ch.isprintable() or ch in "\r\n\t" for ch in sample) >= 0.9 * len(sample):
        return f"it is text starting with {printable_preview(head, 60)!r}"
    return "unknown content"


def _input(path: Path, demuxer: str) -> list[str]:
    extra: tuple[str, ...] = ()
    if demuxer == "mov":  # mp4/m4a: no data references to other files or URLs
        extra = ("-protocol_whitelist", "file", "-enable_drefs", "0")
    return ffmpeg.input_args(path, demuxer, *extra)


def check(param: str, path: Path, max_seconds: float | None = None) -> str:
    """Sniff and trial-decode the file (before any TTS call): its first CHECK_SECONDS, or with `max_seconds`
    all of it up to that length, which it must not exceed (intro/outro; at 8 kHz mono 2 min take ~0.1 s).
    Returns the demuxer."""
    demuxer = sniff(param, path)
    seconds = CHECK_SECONDS if max_seconds is None else max_seconds + 0.5
    res = ffmpeg.run(
        ["-v", "error", *_input(path, demuxer), "-map", "0:a:0", "-t", f"{seconds:g}",
         "-ac", "1", "-ar", str(CHECK_RATE), "-f", "f32le", "pipe:1"],
        what=f"checking {param}", check=False, timeout=60,
    )  # fmt: skip
    samples = np.frombuffer(res.stdout[: len(res.stdout) // 4 * 4], dtype="<f4")
    if samples.size == 0:
        detail = decoder_problems(res.stderr, 3) or "no audio samples"
        raise InvalidInput(
            param, f"could not be decoded as {_KINDS[demuxer]} ({detail}); give a valid {ACCEPTED} file"
        )
    if max_seconds is not None and samples.size > max_seconds * CHECK_RATE:
        raise InvalidInput(param, f"is longer than {max_seconds:.0f} s; give a shorter {param}")
    return demuxer


def decode(
    param: str,
    path: Path,
    out: Path,
    sample_rate: int,
    channels: int,
    *,
    max_seconds: float,
) -> tuple[int, list[str]]:
    """Decode the file's first audio stream to float32le PCM at the programme's rate and layout, at most
    `max_seconds` of it. Returns (frames, warnings): a file that decodes with errors but still yields audio
    (a damaged frame in a long mp3) is used and the decoder's complaint becomes a warning."""
    demuxer = sniff(param, path)
    res = ffmpeg.run(
        ["-v", "error", *_input(path, demuxer), *output_args(0, out, sample_rate, channels, max_seconds)],
        what=f"decoding {param}", check=False, timeout=120 + max_seconds / 4,
    )  # fmt: skip
    frames = out.stat().st_size // (BYTES_PER_SAMPLE * channels) if out.exists() else 0
    if frames == 0:
        detail = decoder_problems(res.stderr, 3) or "no audio samples"
        raise InvalidInput(param, f"could not be decoded as {_KINDS[demuxer]} ({detail})")
    warnings = []
    if res.stderr.strip():
        problems = decoder_problems(res.stderr, 3)
        warnings.append(f"{param}: the decoder reported problems, the audio may have a glitch: {problems}")
    return frames, warnings
