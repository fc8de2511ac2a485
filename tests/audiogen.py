"""Real audio fixtures, made with ffmpeg at test time (shared by the test modules).

Every generator returns the bytes of one complete file and is cached (an ffmpeg call costs ~20 ms), so equal
arguments give the same bytes object. The signal is a tone with two harmonics under a slow envelope, not a
pure tone, so codecs behave more as on speech and decoded comparisons mean something; `freq` (the dominant
frequency, equal to the zero-crossing rate) makes files distinguishable. Files are written to a temporary
file, not a pipe, so that muxers that seek back (mp3 Xing/LAME header, WAV sizes, FLAC STREAMINFO) finish
their headers, as providers' files do.

    mp3(1.2, id3=True)                 ID3v2 + Xing/Info/LAME header + frames
    wav(1.0, 24000, 1, streamed=True)  RIFF/data sizes patched to 0xFFFFFFFF
    pcm_f32(data, "mp3", 24000, 1)     decode to float32 frames × channels (raises on decoder errors)
    random_slices(data, rng)           cut into random chunks, some empty
"""

from __future__ import annotations

import functools
import random
import struct
import tempfile
from pathlib import Path

import numpy as np

from audio import ffmpeg

WAV_CODECS = {"u8": "pcm_u8", "s16": "pcm_s16le", "s24": "pcm_s24le", "s32": "pcm_s32le", "f32": "pcm_f32le"}


def _source(duration: float, rate: int, channels: int, freq: float) -> list[str]:
    """lavfi input: `freq` plus two weaker harmonics under a slow envelope (each channel a little higher).
    The fundamental dominates, so the zero-crossing rate stays `freq` (tests use that to tell files apart)."""
    exprs = []
    for ch in range(channels):
        f = freq * (1 + 0.25 * ch)
        exprs.append(
            f"0.35*(0.6+0.4*sin(2*PI*2.3*t))"
            f"*(sin(2*PI*{f:g}*t)+0.25*sin(2*PI*{2 * f:g}*t+0.7)+0.1*sin(2*PI*{3 * f:g}*t+1.3))"
        )
    return ["-f", "lavfi", "-i", f"aevalsrc=exprs={'|'.join(exprs)}:s={rate}:d={duration:g}"]


def _render(duration: float, rate: int, channels: int, freq: float, out_args: list[str], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"out{suffix}"
        ffmpeg.run([*_source(duration, rate, channels, freq), *out_args, str(out)], what=f"fixture {suffix}")
        return out.read_bytes()


@functools.lru_cache(maxsize=256)
def mp3(
    duration: float,
    rate: int = 24000,
    channels: int = 1,
    freq: float = 440,
    id3: bool = False,
    xing: bool = True,
    bitrate: str = "48k",
) -> bytes:
    """An mp3 file; `id3` adds an ID3v2.3 tag, `xing` the Xing/Info + LAME header frame (ffmpeg's default)."""
    tags = ["-id3v2_version", "3", "-metadata", f"title=tone {freq:g}"] if id3 else ["-id3v2_version", "0"]
    args = ["-map_metadata", "-1", "-c:a", "libmp3lame", "-b:a", bitrate, *tags, "-write_xing", str(int(xing))]
    return _render(duration, rate, channels, freq, [*args, "-f", "mp3"], ".mp3")


@functools.lru_cache(maxsize=64)
def wav(
    duration: float,
    rate: int = 24000,
    channels: int = 1,
    sample_fmt: str = "s16",
    streamed: bool = False,
    freq: float = 440,
) -> bytes:
    """A WAV file (ffmpeg writes fmt, LIST and data chunks; WAVE_FORMAT_EXTENSIBLE above 16 bits).
    `streamed` patches the RIFF and data sizes to 0xFFFFFFFF like a writer that cannot seek back."""
    data = _render(duration, rate, channels, freq, ["-c:a", WAV_CODECS[sample_fmt], "-f", "wav"], ".wav")
    return patch_wav_sizes(data, 0xFFFFFFFF, 0xFFFFFFFF) if streamed else data


@functools.lru_cache(maxsize=32)
def ogg_opus(duration: float, channels: int = 1, freq: float = 440, bitrate: str = "32k") -> bytes:
    """An Ogg Opus file (always 48 kHz)."""
    return _render(duration, 48000, channels, freq, ["-c:a", "libopus", "-b:a", bitrate, "-f", "ogg"], ".ogg")


@functools.lru_cache(maxsize=32)
def ogg_vorbis(duration: float, rate: int = 22050, channels: int = 1, freq: float = 440) -> bytes:
    """An Ogg Vorbis file."""
    return _render(duration, rate, channels, freq, ["-c:a", "libvorbis", "-q:a", "3", "-f", "ogg"], ".ogg")


@functools.lru_cache(maxsize=32)
def flac(duration: float, rate: int = 24000, channels: int = 1, freq: float = 440, streamed: bool = False) -> bytes:
    """A FLAC file. `streamed` writes it to a pipe: STREAMINFO then has no total sample count and no MD5."""
    args = ["-c:a", "flac", "-sample_fmt", "s16", "-f", "flac"]
    if streamed:
        return ffmpeg.run([*_source(duration, rate, channels, freq), *args, "-"], what="fixture flac").stdout
    return _render(duration, rate, channels, freq, args, ".flac")


@functools.lru_cache(maxsize=32)
def adts(
    duration: float, rate: int = 24000, channels: int = 1, freq: float = 440, bitrate: str = "48k", id3: bool = False
) -> bytes:
    """An AAC-LC ADTS stream; `id3` adds a leading ID3v2 tag."""
    args = ["-c:a", "aac", "-b:a", bitrate, "-f", "adts", "-write_id3v2", str(int(id3))]
    return _render(duration, rate, channels, freq, args, ".aac")


def patch_wav_sizes(data: bytes, riff_size: int, data_size: int) -> bytes:
    """`data` with its RIFF size and data chunk size replaced (as streaming writers leave them)."""
    out = bytearray(data)
    out[4:8] = struct.pack("<I", riff_size)
    p = 12
    while out[p : p + 4] != b"data":
        p += 8 + struct.unpack_from("<I", out, p + 4)[0]
    out[p + 4 : p + 8] = struct.pack("<I", data_size)
    return bytes(out)


def wav_chunks(data: bytes) -> dict[str, tuple[int, int]]:
    """{chunk id: (offset of its body, declared size)} of a WAV file, plus "RIFF": (0, riff size)."""
    chunks = {"RIFF": (0, struct.unpack_from("<I", data, 4)[0])}
    p = 12
    while p + 8 <= len(data):
        cid, size = data[p : p + 4].decode("latin-1"), struct.unpack_from("<I", data, p + 4)[0]
        chunks[cid] = (p + 8, size)
        if cid == "data":
            break
        p += 8 + size + (size & 1)
    return chunks


def decode(data: bytes, fmt: str, rate: int, channels: int) -> tuple[np.ndarray, str]:
    """Decode with ffmpeg (forced demuxer `fmt`) to float32 frames × channels at `rate`; also ffmpeg's
    error output (empty when the decoder reported nothing). Reads a file, not a pipe: ffmpeg trims the LAME
    end padding of an mp3 only when it can seek."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in.{fmt}"
        path.write_bytes(data)
        args = ["-v", "error", *ffmpeg.input_args(path, fmt), "-f", "f32le", "-ac", str(channels), "-ar", str(rate)]
        res = ffmpeg.run([*args, "-"], what=f"decoding {fmt} fixture")
    pcm = np.frombuffer(res.stdout, dtype="<f4").reshape(-1, channels)
    return pcm, res.stderr.strip()


@functools.lru_cache(maxsize=128)
def pcm_f32(data: bytes, fmt: str, rate: int, channels: int) -> np.ndarray:
    """Decoded samples (read-only float32 frames × channels); AssertionError if ffmpeg reported errors."""
    pcm, errors = decode(data, fmt, rate, channels)
    assert not errors, f"decoding {fmt} reported errors:\n{errors}"
    return pcm


def slices(data: bytes, size: int) -> list[bytes]:
    """`data` cut into `size`-byte chunks (the last one shorter), like openai/azure's 1024-byte slices."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def random_slices(data: bytes, rng: random.Random, max_size: int = 3000, empty: float = 0.1) -> list[bytes]:
    """`data` cut at random points into chunks of 1..max_size bytes, with empty chunks mixed in."""
    out: list[bytes] = []
    p = 0
    while p < len(data):
        if rng.random() < empty:
            out.append(b"")
        size = rng.randint(1, max_size)
        out.append(data[p : p + size])
        p += size
    return out
