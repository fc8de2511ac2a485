"""Lay the decoded files out on one timeline and write the programme as raw PCM on disk.

At every seam (between files of one call and between calls) silence is clipped to a small margin, short
fades remove clicks, and then exactly the pause the script asked for is inserted, so the rhythm is the
same whichever provider (and whatever leading/trailing silence) produced the audio.

Loudness is levelled per speaker (voice) as a whole before the programme is mastered: normalizing each
sentence on its own would make levels jump, while one gain per speaker keeps a voice's natural dynamics and
makes voices from different providers sit at the same loudness.

Memory stays flat: each file is read from disk, processed and appended to the programme file, one at a time.
Between files `cooperate()` lets the gevent hub run when inside the Dify SDK.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d

from .cooperate import cooperate
from .decode import DecodedFile
from .loudness import LoudnessMeter, gated_loudness
from .model import Request, TimelineEntry

WINDOW_S = 0.010  # silence detection resolution
LEAD_MARGIN_S = 0.030  # silence kept before speech at a seam
TAIL_MARGIN_S = 0.060  # silence kept after speech (decays, breaths)
FADE_S = 0.008  # fade length at every seam (5–10 ms)
SILENCE_FLOOR_DB = -60.0  # below this a window is silence, whatever the file's level
SILENCE_BELOW_PEAK_DB = 45.0  # … or this far below the file's loudest window


@dataclass(frozen=True)
class Programme:
    """The assembled programme: raw float32le PCM on disk plus what was measured while writing it."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    timeline: list[TimelineEntry]
    integrated_lufs: float | None  # programme loudness after per-speaker leveling
    rms_db: float | None
    speaker_gains_db: dict[str, float]
    warnings: list[str]

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def speech_bounds(samples: np.ndarray, sample_rate: int) -> tuple[int, int] | None:
    """(first, last) sample index of speech with margins, or None when the file is all silence."""
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    win = max(1, int(WINDOW_S * sample_rate))
    n_win = len(mono) // win
    if n_win == 0:
        return (0, len(mono)) if np.any(np.abs(mono) > 10 ** (SILENCE_FLOOR_DB / 20)) else None
    frames = mono[: n_win * win].reshape(n_win, win).astype(np.float64)
    energy = np.mean(frames * frames, axis=1)
    level = 10 * np.log10(np.maximum(energy, 1e-20))
    threshold = max(SILENCE_FLOOR_DB, float(level.max()) - SILENCE_BELOW_PEAK_DB)
    loud = np.flatnonzero(level > threshold)
    if len(loud) == 0:
        return None
    start = max(0, loud[0] * win - int(LEAD_MARGIN_S * sample_rate))
    end_of_speech = len(mono) if loud[-1] == n_win - 1 else (loud[-1] + 1) * win
    end = min(len(mono), end_of_speech + int(TAIL_MARGIN_S * sample_rate))
    return int(start), int(end)


PEAK_CONTROL_ABOVE_DB = 6.0  # peaks more than this above a file's speech RMS are compressed…
PEAK_CONTROL_RATIO = 3.0  # …at this ratio
PEAK_CONTROL_WINDOW_S = 0.010  # look-ahead/hold of the peak detector and smoothing of the gain


def control_peaks(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Gently compress peaks far above the speech level (a float32 copy).

    TTS voices (eSpeak's especially) can have peaks 17 dB or more above their loudness. Normalizing such
    speech to −16 LUFS then takes 4–5 LU of true-peak limiting, and lossy encoders do not keep heavily
    limited peaks in place (measured: a −2.25 dBFS limiter gave +0.2 dBTP mp3), so the target was missed or
    needed a second encode. Taming only what stands PEAK_CONTROL_ABOVE_DB above the file's speech RMS, with a
    look-ahead peak detector and a smoothed gain, leaves normal speech untouched and lets the final limiter
    work lightly. Vectorized (max/min/uniform filters): ~10 ms per minute of audio.
    """
    x = np.asarray(samples, dtype=np.float32)
    mag = np.abs(x) if x.ndim == 1 else np.abs(x).max(axis=1)
    if mag.size == 0:
        return x.copy()
    mono = x if x.ndim == 1 else x.mean(axis=1)
    win = max(1, int(WINDOW_S * sample_rate))
    n_win = len(mono) // win
    if n_win == 0:
        return x.copy()
    energy = np.mean(mono[: n_win * win].reshape(n_win, win).astype(np.float64) ** 2, axis=1)
    level = 10 * np.log10(np.maximum(energy, 1e-20))
    active = energy[level > max(SILENCE_FLOOR_DB, float(level.max()) - SILENCE_BELOW_PEAK_DB)]
    if active.size == 0:
        return x.copy()
    threshold = float(np.sqrt(active.mean())) * 10 ** (PEAK_CONTROL_ABOVE_DB / 20)
    size = max(1, int(PEAK_CONTROL_WINDOW_S * sample_rate))
    envelope = maximum_filter1d(mag, size=size)
    if float(envelope.max()) <= threshold:
        return x.copy()
    gain = np.ones_like(envelope)
    over = envelope > threshold
    gain[over] = (envelope[over] / threshold) ** (1.0 / PEAK_CONTROL_RATIO - 1.0)
    # spread each reduction over the window, then smooth: the smoothed gain never exceeds the needed one
    gain = uniform_filter1d(minimum_filter1d(gain, size=size), size=size)
    return x * (gain if x.ndim == 1 else gain[:, None])


LEVEL_BAND_LU = 1.5  # a file may differ this much from its speaker's typical loudness before it is touched
LEVEL_MAX_DB = 12.0  # the largest correction one file gets


def level_corrections(measured: Sequence[tuple[str, Path, LoudnessMeter]]) -> dict[Path, float]:
    """Gain (dB) per file that brings files whose loudness strays more than LEVEL_BAND_LU from their
    speaker's typical loudness back to the edge of that band.

    TTS calls are independent: a provider (or a retry, or a cache entry from another day) can return one
    sentence several dB louder or softer than its neighbours, which no speaker-wide gain fixes and which the
    final limiter would otherwise have to crush (measured on the ±6 dB benchmark workload: 4.9 LU of limiting
    at −16 LUFS, and LAME then overshoots the true-peak ceiling). Differences inside the band are the voice's
    own expression and are kept. The typical loudness is the duration-weighted median of the speaker's
    files (robust to the outliers being corrected). Files too short to measure keep their level.
    """
    by_speaker: dict[str, list[tuple[Path, float, float]]] = {}
    for key, path, meter in measured:
        lufs = meter.integrated()
        if lufs is not None:
            by_speaker.setdefault(key, []).append((path, lufs, meter.duration_s))
    gains: dict[Path, float] = {}
    for files in by_speaker.values():
        ordered = sorted(files, key=lambda f: f[1])
        half, acc, typical = sum(f[2] for f in ordered) / 2, 0.0, ordered[-1][1]
        for _, lufs, seconds in ordered:
            acc += seconds
            if acc >= half:
                typical = lufs
                break
        for path, lufs, _ in files:
            excess = abs(lufs - typical) - LEVEL_BAND_LU
            if excess > 0:
                gains[path] = -math.copysign(min(excess, LEVEL_MAX_DB), lufs - typical)
    return gains


def apply_fades(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Half-cosine fade-in and fade-out of FADE_S at both ends (in place on a float32 copy)."""
    out = np.array(samples, dtype=np.float32, copy=True)
    n = min(int(FADE_S * sample_rate), len(out) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))).astype(np.float32)
        if out.ndim == 2:
            ramp = ramp[:, None]
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def _load(d: DecodedFile) -> np.ndarray:
    data = np.fromfile(d.path, dtype="<f4")
    return data.reshape(-1, d.channels) if d.channels > 1 else data


def _speaker_key(req: Request) -> str:
    return req.speaker.lower() if req.speaker else (req.voice or "")


def assemble(
    groups: Sequence[tuple[Request, Sequence[DecodedFile]]],
    out_path: Path,
    *,
    sample_rate: int,
    channels: int,
    pause_ms: int,
    level_speakers_to: float | None,
    peak_control: bool | None = None,
    level_files: bool | None = None,
) -> Programme:
    """Write the programme for `groups` (each request with its decoded files, in order) to out_path.

    `pause_ms` is the pause between files of one request (providers split long requests into per-sentence
    files); a request's own `pause_before_ms` goes before it. `level_speakers_to` (LUFS) brings every speaker
    to that loudness when there are several; None leaves levels untouched (loudness "off").
    `peak_control` (default: on when leveling) tames peaks far above the speech level, see control_peaks.
    """
    if peak_control is None:
        peak_control = level_speakers_to is not None
    if level_files is None:
        level_files = level_speakers_to is not None

    def prepare(samples: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
        piece = samples[bounds[0] : bounds[1]]
        return control_peaks(piece, sample_rate) if peak_control else piece

    warnings: list[str] = []
    bounds: dict[Path, tuple[int, int] | None] = {}
    speakers = {_speaker_key(req) for req, _ in groups}
    gains: dict[str, float] = dict.fromkeys(speakers, 0.0)
    file_gains: dict[Path, float] = {}

    if level_speakers_to is not None and (level_files or len(speakers) > 1):
        # First pass: each file's speech, peak-controlled, written back in place (the second pass reads it
        # ready), and its loudness blocks; from those the per-file and per-speaker gains.
        measured: list[tuple[str, Path, LoudnessMeter]] = []
        for req, files in groups:
            for d in files:
                samples = _load(d)
                b = speech_bounds(samples, sample_rate)
                if b:
                    piece = prepare(samples, b)
                    piece.astype("<f4", copy=False).tofile(d.path)
                    b = (0, len(piece))
                    meter = LoudnessMeter(sample_rate, channels)
                    meter.add(piece)
                    measured.append((_speaker_key(req), d.path, meter))
                bounds[d.path] = b
                cooperate()
        prepared = set(bounds)
        if level_files:
            file_gains = level_corrections(measured)
        if len(speakers) > 1:
            for key in speakers:
                blocks = [m.block_energies() * 10 ** (file_gains.get(p, 0.0) / 10) for k, p, m in measured if k == key]
                loudness = gated_loudness(np.concatenate(blocks)) if blocks else None
                if loudness is not None:
                    gains[key] = float(np.clip(level_speakers_to - loudness, -30.0, 30.0))
    else:
        prepared = set()

    programme_meter = LoudnessMeter(sample_rate, channels)
    timeline: list[TimelineEntry] = []
    frames_written = 0
    silence_cache: dict[int, bytes] = {}

    def write_silence(out, ms: int) -> None:
        nonlocal frames_written
        n = round(ms * sample_rate / 1000)
        if n <= 0:
            return
        if n not in silence_cache:
            silence_cache[n] = np.zeros(n * channels, dtype="<f4").tobytes()
        out.write(silence_cache[n])
        programme_meter.add(np.zeros((n, channels) if channels > 1 else n, dtype=np.float32))
        frames_written += n

    with open(out_path, "wb") as out:
        for req, files in groups:
            if frames_written > 0:
                write_silence(out, req.pause_before_ms)
            start = frames_written
            wrote_speech = False
            gain = 10 ** (gains[_speaker_key(req)] / 20)
            for d in files:
                samples = _load(d)
                b = bounds[d.path] if d.path in bounds else speech_bounds(samples, sample_rate)
                if b is None:
                    continue
                if wrote_speech:
                    write_silence(out, pause_ms)
                piece = apply_fades(samples if d.path in prepared else prepare(samples, b), sample_rate)
                g = gain * 10 ** (file_gains.get(d.path, 0.0) / 20)
                if g != 1.0:
                    piece *= np.float32(g)
                out.write(piece.astype("<f4", copy=False).tobytes())
                programme_meter.add(piece)
                frames_written += len(piece)
                wrote_speech = True
                cooperate()
            if not wrote_speech:
                warnings.append(f"TTS request #{req.index + 1} produced only silence")
            timeline.append(
                TimelineEntry(
                    index=req.index,
                    start=start / sample_rate,
                    end=frames_written / sample_rate,
                    text=req.text,
                    speaker=req.speaker,
                    voice=req.voice,
                    section=req.section,
                    model=req.model,
                )
            )

    return Programme(
        path=out_path,
        frames=frames_written,
        sample_rate=sample_rate,
        channels=channels,
        timeline=timeline,
        integrated_lufs=programme_meter.integrated(),
        rms_db=programme_meter.rms_db(),
        speaker_gains_db={k: round(v, 2) for k, v in gains.items()},
        warnings=warnings,
    )
