"""Measurements on decoded speech for the `speed` tests and the stretcher benchmark (numpy only).

- `f0_hz`: median fundamental frequency over voiced frames, by normalized autocorrelation (a pitch change
  of a few percent moves it by as much; a tempo change with pitch kept must not).
- `speech_spans`: the stretches of sound between silences, so speech and pause lengths can be compared.
- `periodicity`: mean peak of the normalized autocorrelation over voiced frames (1 = perfectly periodic);
  stretchers that smear phase or splice badly lower it.
- `aligned_spectral_distance`: log-mel spectral distance (dB) between a stretched signal and its original,
  each output frame compared with the best original frame near the position a uniform stretch puts it at.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.040
HOP_S = 0.010


def _frames(x: np.ndarray, rate: int, frame_s: float = FRAME_S, hop_s: float = HOP_S) -> np.ndarray:
    n, hop = int(frame_s * rate), int(hop_s * rate)
    if len(x) < n:
        return np.zeros((0, n))
    idx = np.arange(n)[None, :] + hop * np.arange((len(x) - n) // hop + 1)[:, None]
    return np.asarray(x, dtype=np.float64)[idx]


def _voiced(x: np.ndarray, rate: int, fmin: float = 60.0, fmax: float = 400.0) -> tuple[np.ndarray, np.ndarray]:
    """(f0 per voiced frame, autocorrelation peak per voiced frame)."""
    frames = _frames(x, rate)
    if len(frames) == 0:
        return np.zeros(0), np.zeros(0)
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).mean(axis=1)
    loud = energy > max(energy.max() * 10 ** (-30 / 10), 1e-10)
    frames = frames[loud] * np.hanning(frames.shape[1])
    n = frames.shape[1]
    spec = np.fft.rfft(frames, 2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]
    window_ac = np.correlate(np.hanning(n), np.hanning(n), "full")[n - 1 :]  # unbias the taper
    ac = ac / np.maximum(window_ac, 1e-3 * window_ac[0])[None, :]
    ac = ac / np.maximum(ac[:, :1], 1e-20)
    lo, hi = int(rate / fmax), int(rate / fmin)
    lags = np.argmax(ac[:, lo:hi], axis=1) + lo
    peaks = ac[np.arange(len(ac)), lags]
    voiced = peaks > 0.6
    # parabolic interpolation around the peak for sub-sample lag precision
    a, b, c = (ac[np.arange(len(ac)), lags + d] for d in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    f0 = rate / (lags + np.clip(shift, -0.5, 0.5))
    return f0[voiced], peaks[voiced]


def f0_hz(x: np.ndarray, rate: int) -> float:
    """Median f0 (Hz) over voiced frames; nan when nothing is voiced."""
    f0, _ = _voiced(x, rate)
    return float(np.median(f0)) if len(f0) else float("nan")


def periodicity(x: np.ndarray, rate: int) -> float:
    """Mean normalized autocorrelation peak over voiced frames."""
    _, peaks = _voiced(x, rate)
    return float(np.mean(peaks)) if len(peaks) else float("nan")


def speech_spans(x: np.ndarray, rate: int, threshold_db: float = -40.0, min_gap_s: float = 0.15) -> list[
    tuple[float, float]
]:
    """(start, end) seconds of sound, 10 ms resolution; gaps shorter than min_gap_s are bridged (the short
    silences inside words and between them are part of speech; pauses are longer)."""
    win = int(0.010 * rate)
    n = len(x) // win
    if n == 0:
        return []
    energy = (np.asarray(x[: n * win], dtype=np.float64).reshape(n, win) ** 2).mean(axis=1)
    level = 10 * np.log10(np.maximum(energy, 1e-20))
    loud = level > max(threshold_db, level.max() - 45)
    spans: list[list[int]] = []
    for i in np.flatnonzero(loud):
        if spans and i - spans[-1][1] <= int(min_gap_s / 0.010):
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(a * 0.010, b * 0.010) for a, b in spans]


def _log_mel(x: np.ndarray, rate: int, bands: int = 40) -> np.ndarray:
    frames = _frames(x, rate, 0.025, HOP_S) * np.hanning(int(0.025 * rate))
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / rate)
    mel = 2595 * np.log10(1 + freqs / 700)
    edges = np.linspace(2595 * np.log10(1 + 80 / 700), 2595 * np.log10(1 + min(8000, rate / 2) / 700), bands + 2)
    fb = np.maximum(0, 1 - np.abs(mel[None, :] - edges[1:-1, None]) / (edges[1] - edges[0]))
    return 10 * np.log10(power @ fb.T + 1e-10)


def aligned_spectral_distance(original: np.ndarray, stretched: np.ndarray, rate: int, speed: float,
                              tolerance_frames: int = 3) -> float:
    """Mean over the stretched signal's loud frames of the RMS log-mel difference (dB) to the closest original
    frame within ±tolerance_frames of frame·speed."""
    a, b = _log_mel(original, rate), _log_mel(stretched, rate)
    loud = b.max(axis=1) > b.max() - 40
    dists = []
    for j in np.flatnonzero(loud):
        centre = round(float(j) * speed)
        lo, hi = max(0, centre - tolerance_frames), min(len(a), centre + tolerance_frames + 1)
        if lo >= hi:
            continue
        d = np.sqrt(np.mean((a[lo:hi] - b[j][None, :]) ** 2, axis=1))
        dists.append(d.min())
    return float(np.mean(dists)) if dists else float("nan")
