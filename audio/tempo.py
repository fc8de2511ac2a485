"""Speech rate (`speed`): the ffmpeg filter that changes tempo with pitch kept, appended to decoding.

Stretching happens in audio.decode, in the same ffmpeg process that decodes each provider file, so every
later stage (silence trimming, leveling, assembly, timeline, subtitles, chapters) sees audio that is already
at its final rate and needs no knowledge of `speed`; the pauses the pipeline inserts are never stretched.

Stretcher: ffmpeg's `atempo` (WSOLA: it repeats or drops whole pitch periods, so pitch and formants stay).
rubberband is in both bundled builds too, but on eSpeak speech it measured further from the original
(log-mel distance 3.7–4.8 dB against atempo's 2.1–2.8 dB at 0.8×–1.5×, lower voicing periodicity) and cost
5–10× the time; atempo is also in every ffmpeg, so no capability check is needed. benchmarks/tempo_compare.py
reproduces the comparison.
"""

from __future__ import annotations

MIN_SPEED = 0.5
MAX_SPEED = 2.0


def is_unity(speed: float | None) -> bool:
    """True when `speed` changes nothing (no filter is added); None means "the job's speed" upstream."""
    return speed is None or abs(speed - 1.0) < 1e-4


def tempo_filter(speed: float | None) -> str | None:
    """The -af filter that plays speech `speed` times as fast with pitch kept; None when there is nothing to do.

    atempo takes 0.5–100 in current ffmpeg and 0.5–2.0 in old releases: MIN_SPEED–MAX_SPEED fits both.
    """
    if is_unity(speed):
        return None
    if not MIN_SPEED - 1e-9 <= speed <= MAX_SPEED + 1e-9:
        raise ValueError(f"speed {speed} is outside {MIN_SPEED}–{MAX_SPEED}")
    return f"atempo={speed:.6g}"
