"""Mastering: programme PCM → gain → true-peak limit → encoded file and its measurement, in ONE ffmpeg run.

    master(programme.f32, ...)
        ├─ plan (Python, ~0.2 s per 10 min): bitrate under the size limit; a PeakProfile of the programme
        │  (5 ms peaks/energies) and a LimiterModel that predicts what the limiter takes, so the gain is
        │  solved for the level AFTER limiting and codec, not before
        ├─ ffmpeg: [layout] → volume → soxr ↑2–4× → alimiter → soxr ↓ → encoder → file    (one process)
        │                                      └→ loopback decoder → astats, ebur128, true peak (measurement_graph)
        └─ off target by > 0.5 LU, or true peak over the ceiling (or over max_bytes)? learn from the
           measurement (model scale/offset, this codec's overshoot), correct once and re-encode; if the
           codec still leaves a peak over the ceiling, scale down once more (PEAK_RETRIES)

Loudness targets (audio.model.LoudnessTarget):
- `integrated` set: the integrated loudness of the encoded file is aimed at the target (channel-layout
  changes are compensated: mono → N duplicates the channel, N → mono averages the channels).
- `rms_range` set (ACX audiobook): the plain RMS is aimed at the middle of the range; peaks ≤ `true_peak`.
- neither ("off"): no gain. The limiter runs only if a peak comes near the ceiling (clipping protection);
  otherwise the chain is volume-free and limiter-free, so "off" leaves such a programme untouched.
- `measured_lufs`/`measured_rms_db` None (the caller's meter found nothing above the gates: silence, or a
  programme under 400 ms): the programme is measured here; a clip shorter than 400 ms is measured without
  gating (its K-weighted energy as a whole). A programme that is silent even then gets no gain.

The limiter is ffmpeg's `alimiter` (sample-peak, 5 ms look-ahead, 50 ms release) at 4× the output rate for
wav/flac and 2× for lossy formats, which makes it approximately a true-peak limiter. Its threshold sits below
the ceiling by a margin: 0.5 dB for wav/flac; for lossy codecs a + b·λ (λ = predicted limiter loss, capped
at 2.5 LU), because mp3/aac/opus do not keep limited peaks in place (measured overshoot 0.5–2.5 dB on speech,
more the harder the limiter works; LAME with noise shaping 2–3 dB, hence mp3_fast). That margin also covers
what a 2× detector misses between samples on speech (+0.3–0.5 dB measured against 4×), and 2× makes the
encoding run ~20 % faster (10-min programme: 2.2 s instead of 2.5–3.0 s).

Known limit: speech with a high peak-to-loudness ratio (≳ 17 dB) near a loud target (−14 LUFS) through a
lossy codec would need more than MAX_LIMITING_LU of limiting; master stops there, keeps the ceiling and adds
a note that the target was missed (by up to ~1.5 LU) rather than crushing the speech. A gentle compressor
stage before the limiter would be the way to reach such targets.

Tags and chapters are written afterwards by audio.tags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import ffmpeg
from .cooperate import cooperate
from .errors import InvalidAudio, InvalidInput, OutputTooLarge
from .loudness import (
    ABSOLUTE_GATE_LUFS,
    MEASURE_LOGLEVEL,
    RELATIVE_GATE_LU,
    LoudnessMeter,
    Measurement,
    PeakProfile,
    measure_file,
    measurement_graph,
    parse_measurement,
)
from .model import EncodeOptions, LoudnessTarget

# Bitrates tried (highest first) when fitting a lossy file under max_bytes.
BITRATE_LADDER = (320, 256, 192, 160, 128, 96, 64, 48, 32, 24)
LOUDNESS_TOLERANCE_LU = 0.5  # re-encode when the first encode misses the target by more than this
LOUDNESS_LIMIT_LU = 1.0  # the promise: within ±1 LU of target
MAX_GAIN_DB = 60.0  # never amplify by more
HEAVY_LIMITING_LU = 4.0  # note it when reaching the target takes more limiting than this
MARGIN_LOSS_CAP_LU = 2.5  # the limiter margin grows with the predicted limiting up to this much of it
PASS2_SAFETY_DB = 0.3  # aim this far below the ceiling when a correction is for the true peak
PEAK_RETRIES = 1  # more encodes, each scaled down further, while the true peak is still over the ceiling
SOFT_LIMITING_LU = 5.0  # the first run's threshold is not lowered (for codec margin) past this much limiting
MAX_LIMITING_LU = 6.0  # never push more than this much gain into the limiter beyond the plain normalization


@dataclass(frozen=True)
class FormatSpec:
    codec: str
    muxer: str
    mime_type: str
    extension: str
    lossless: bool
    default_kbps: tuple[int, int] = (0, 0)  # speech defaults (mono, stereo)
    sample_rates: tuple[int, ...] = ()  # supported output rates; empty = any
    overhead: float = 0.0  # container overhead as a fraction of the audio payload
    # Limiter threshold below the true-peak ceiling, by kbit/s per channel: (from kbps, a, b) → a + b·λ dB,
    # λ = the predicted limiter loss in LU. Lossy codecs do not keep limited peaks in place (filterbank,
    # quantization): the true peak comes back above the threshold, more so the harder the limiter works.
    # Measured on 60 s of speech-like signals (eSpeak NG, synthetic voiced speech at 24/48 kHz), upper
    # envelope: mp3 32–128k +0.5/+1.2/+1.6/+2.0 dB at λ = 0.5/2/4/7; aac 64k +0.5/+1.3/+1.7/+1.7;
    # opus 32k +0.9/+1.9/+2.4/+3.2. Noise-like material overshoots more and gets the correction pass.
    # mp3 was raised after measuring a 10-minute eSpeak programme: LAME adds 1.2–2.0 dB of true peak at
    # 64–192 kbit/s (24 kHz) even behind light limiting (the max over a long programme grows), and takes
    # ~0.4 LU of loudness (its low-pass).
    margins: tuple[tuple[int, float, float], ...] = ((0, 0.5, 0.0),)  # lossless: soxr round trip, s16
    codec_loss_db: float = 0.0  # loudness the encoder's low-pass takes (measured), compensated in the gain
    fast_margins: tuple[tuple[int, float, float], ...] = ()  # margins in the encoder's fast mode (mp3_fast)

    def margin(self, kbps: int | None, channels: int, fast: bool = False) -> tuple[float, float]:
        """(a, b) of the limiter margin a + b·λ for this bitrate (and encoder mode)."""
        per_channel = (kbps or 0) / max(1, channels)
        table = self.fast_margins if fast and self.fast_margins else self.margins
        return next((a, b) for floor, a, b in table if per_channel >= floor)


# MIME types chosen for Dify's mimetypes.guess_extension(): audio/opus → .opus (audio/ogg would be .oga),
# audio/x-wav → .wav (audio/wav has no extension in Python's table and would be stored as .bin).
FORMATS: dict[str, FormatSpec] = {
    "mp3": FormatSpec(
        "libmp3lame", "mp3", "audio/mpeg", ".mp3", False, (64, 128),
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000), 0.01,
        ((0, 1.9, 0.4),), 0.4, ((0, 1.0, 0.25),),
    ),
    "m4a": FormatSpec(
        "aac", "mp4", "audio/mp4", ".m4a", False, (64, 96),
        (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000), 0.05,
        ((48, 1.0, 0.3), (0, 1.6, 0.3)), 0.1,
    ),
    "ogg": FormatSpec(
        "libopus", "ogg", "audio/opus", ".opus", False, (32, 64), (8000, 12000, 16000, 24000, 48000), 0.05,
        ((48, 1.0, 0.3), (32, 1.4, 0.35), (0, 1.6, 0.45)), 0.15,
    ),
    "flac": FormatSpec("flac", "flac", "audio/flac", ".flac", True),
    "wav": FormatSpec("pcm_s16le", "wav", "audio/x-wav", ".wav", True),
}  # fmt: skip
_TAG_RESERVE_BYTES = 64 * 1024  # room for the tags/chapters audio.tags writes afterwards
_WAV_HEADER_BYTES = 44


@dataclass(frozen=True)
class Encoded:
    """The mastered file (in workdir) and what the measurement of that file says."""

    path: Path
    fmt: str
    mime_type: str
    extension: str  # with the dot
    bitrate_kbps: int | None  # None for lossless
    sample_rate: int
    channels: int
    duration_s: float  # decoded duration of the encoded file
    size_bytes: int
    loudness_lufs: float | None  # measured on the encoded file (None: silent or < 400 ms)
    true_peak_dbtp: float | None  # measured on the encoded file
    gain_db: float  # gain applied before the limiter
    notes: list[str] = field(default_factory=list)  # human-readable remarks (bitrate lowered, rate changed, ...)
    rms_db: float | None = None  # plain RMS of the encoded file (for ACX)
    encodes: int = 1  # encoder runs it took (2 when the first result was corrected)


# ------------------------------------------------------------------------------------------ formats


def mp3_bitrates(sample_rate: int) -> tuple[int, ...]:
    """Legal Layer III bitrates for the MPEG version `sample_rate` implies."""
    if sample_rate >= 32000:  # MPEG-1
        return (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    if sample_rate >= 16000:  # MPEG-2
        return (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    return (8, 16, 24, 32, 40, 48, 56, 64)  # MPEG-2.5 (LAME's limit)


def legal_bitrate(fmt: str, kbps: int, sample_rate: int) -> int:
    """`kbps` moved to the nearest bitrate the codec accepts at `sample_rate` (mp3 only has fixed sets)."""
    if fmt != "mp3":
        return kbps
    allowed = mp3_bitrates(sample_rate)
    if kbps in allowed:
        return kbps
    if kbps > allowed[-1]:
        return allowed[-1]
    if kbps < allowed[0]:
        return allowed[0]
    return min(allowed, key=lambda b: (abs(b - kbps), -b))


def output_rate(fmt: str, wanted: int) -> int:
    """The sample rate the format will really carry: `wanted` if supported, else the nearest supported rate
    above it (so nothing is lost), else the highest."""
    rates = FORMATS[fmt].sample_rates
    if not rates or wanted in rates:
        return wanted
    above = [r for r in rates if r >= wanted]
    return min(above) if above else max(rates)


def estimate_bytes(fmt: str, duration_s: float, kbps: int | None, sample_rate: int, channels: int) -> int:
    """Size of the encoded file before tags: exact for wav, an upper estimate for lossy formats, the 16-bit
    PCM size (an upper bound) for flac."""
    spec = FORMATS[fmt]
    if spec.lossless:
        frames = math.ceil(duration_s * sample_rate)
        return _WAV_HEADER_BYTES + frames * channels * 2
    assert kbps is not None
    payload = duration_s * kbps * 1000 / 8
    return int(payload * (1 + spec.overhead)) + 16 * 1024


def _fmt_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def choose_bitrate(
    fmt: str, duration_s: float, sample_rate: int, channels: int, options: EncodeOptions, notes: list[str]
) -> int | None:
    """The bitrate to encode with (None for lossless), fitted under options.max_bytes. Raises OutputTooLarge."""
    spec = FORMATS[fmt]
    limit = options.max_bytes - _TAG_RESERVE_BYTES
    if spec.lossless:
        size = estimate_bytes(fmt, duration_s, None, sample_rate, channels)
        if fmt == "wav" and size > limit:
            raise OutputTooLarge(_too_large_message(fmt, duration_s, options, size))
        return None  # flac: checked after encoding
    wanted = options.bitrate_kbps or spec.default_kbps[0 if channels == 1 else 1]
    kbps = legal_bitrate(fmt, wanted, sample_rate)
    if kbps != wanted:
        notes.append(f"bitrate {wanted} kbit/s is not allowed for mp3 at {sample_rate} Hz; used {kbps} kbit/s")
    if estimate_bytes(fmt, duration_s, kbps, sample_rate, channels) <= limit:
        return kbps
    floor = max(options.min_bitrate_kbps, 1)
    for candidate in BITRATE_LADDER:
        if candidate >= kbps or candidate < floor or legal_bitrate(fmt, candidate, sample_rate) != candidate:
            continue
        if estimate_bytes(fmt, duration_s, candidate, sample_rate, channels) <= limit:
            notes.append(
                f"bitrate lowered from {kbps} to {candidate} kbit/s so the {_fmt_duration(duration_s)} file fits "
                f"the {_mib(options.max_bytes)} limit"
            )
            return candidate
    size = estimate_bytes(fmt, duration_s, legal_bitrate(fmt, floor, sample_rate), sample_rate, channels)
    raise OutputTooLarge(_too_large_message(fmt, duration_s, options, size))


def _too_large_message(fmt: str, duration_s: float, options: EncodeOptions, size: int) -> str:
    if FORMATS[fmt].lossless:
        change = "choose mp3 or ogg instead of wav/flac, shorten the text, or raise the maximum output size"
        what = f"as {fmt} it takes about {_mib(size)}"
    else:
        change = (
            "shorten the text, allow a lower bitrate, choose mono or ogg (Opus, smallest at a given quality), "
            "or raise the maximum output size"
        )
        what = f"even at {max(options.min_bitrate_kbps, 1)} kbit/s {fmt} it takes about {_mib(size)}"
    return (
        f"the audio is {_fmt_duration(duration_s)} long; {what}, over the {_mib(options.max_bytes)} output "
        f"limit. To fix: {change}."
    )


# ------------------------------------------------------------------------------------------ loudness


class LimiterModel:
    """Predicts what `alimiter` (attack 5 ms, release 50 ms, oversampled) does to a programme's level,
    from its PeakProfile: each 5 ms window whose peak, after `gain`, exceeds the threshold is turned down by
    the excess; the reduction decays with a 30 ms time constant after it and ramps in over the attack before
    it. Fitted against ffmpeg on speech and speech-like noise: the predicted loudness loss is within ~0.1 LU
    for losses up to 3 LU. Costs a few ms per evaluation (only windows over the threshold are visited).
    """

    RELEASE_TAU_S = 0.03
    ATTACK_S = 0.005

    def __init__(self, profile: PeakProfile) -> None:
        peaks, energy = profile.arrays()
        # float32 per 5 ms window (8 bytes per window in all: ~6 MB for 6 hours); the loudness side is kept
        # per 100 ms sub-block, and limiting only touches the windows it reduces (see losses)
        self.peak_db = np.maximum(peaks, np.float32(1e-10), dtype=np.float32)  # one array, computed in place
        np.log10(self.peak_db, out=self.peak_db)
        self.peak_db *= np.float32(20.0)
        self.energy = energy.astype(np.float32, copy=False)
        self.window_s = profile.window / profile.sample_rate
        self.samples = max(1, profile.frames * profile.channels)
        self._per_sub = max(1, round(0.1 / self.window_s))
        self._norm = self._per_sub * 4 * profile.window * profile.channels  # samples in a 400 ms block
        m = self.energy.size // self._per_sub  # complete sub-blocks (a partial last one is not gated)
        self._sub = self.energy[: m * self._per_sub].reshape(m, self._per_sub).sum(axis=1, dtype=np.float64)
        self._total = float(self.energy.sum(dtype=np.float64))

    def reduction_db(self, drive_db: float) -> np.ndarray:
        """Gain reduction per window (float32) when peaks are driven `drive_db` = gain − threshold."""
        red = np.zeros(self.peak_db.size, dtype=np.float32)
        idx = np.flatnonzero(self.peak_db > -drive_db)
        if idx.size == 0:
            return red
        rv = self.peak_db[idx] + np.float32(drive_db)
        red[idx] = rv
        n = red.size
        for k in range(1, math.ceil(3 * self.RELEASE_TAU_S / self.window_s) + 1):
            j = idx + k
            ok = j < n
            red[j[ok]] = np.maximum(red[j[ok]], rv[ok] * np.float32(math.exp(-k * self.window_s / self.RELEASE_TAU_S)))
        attack = max(1, round(self.ATTACK_S / self.window_s))
        for k in range(1, attack + 1):
            j = idx - k
            ok = j >= 0
            red[j[ok]] = np.maximum(red[j[ok]], rv[ok] * np.float32(1 - k / (attack + 1)))
        return red

    def _gated_db(self, sub: np.ndarray) -> float | None:
        """BS.1770 gated loudness (dB, K-weighting aside) of 100 ms sub-block energies."""
        m = sub.size
        if m < 4:  # shorter than one gating block: level of the whole
            total = float(sub.sum()) if m else 0.0
            return 10 * math.log10(total / self.samples) if total > 0 else None
        cs = np.concatenate(([0.0], np.cumsum(sub)))
        blocks = (cs[4:] - cs[:-4]) / self._norm
        with np.errstate(divide="ignore"):
            level = 10 * np.log10(blocks)
        kept = blocks[level > ABSOLUTE_GATE_LUFS]
        if kept.size == 0:
            return None
        rel = 10 * math.log10(float(kept.mean())) + RELATIVE_GATE_LU
        kept = blocks[(level > ABSOLUTE_GATE_LUFS) & (level > rel)]
        return 10 * math.log10(float(kept.mean()))

    def losses(self, gain_db: float, limit_db: float) -> tuple[float, float]:
        """(gated loudness, plain RMS) the limiter takes away at this gain and threshold, in dB.

        Only the windows the limiter reduces are visited: what each loses is subtracted from its sub-block.
        """
        g = 10 ** (gain_db / 10)
        red = self.reduction_db(gain_db - limit_db)
        hit = np.flatnonzero(red > 0)
        lost = self.energy[hit].astype(np.float64) * g * (1.0 - 10 ** (-red[hit].astype(np.float64) / 10))
        if self.energy.size < 4 * self._per_sub:  # too short to gate: the whole counts
            before, after = self._gated_db(np.array([self._total * g])), self._gated_db(
                np.array([self._total * g - float(lost.sum())])
            )
        else:
            sub_of = hit // self._per_sub
            whole = sub_of < self._sub.size
            taken = np.bincount(sub_of[whole], weights=lost[whole], minlength=self._sub.size)
            gained = self._sub * g
            before, after = self._gated_db(gained), self._gated_db(np.maximum(gained - taken, 0.0))
        loudness = before - after if before is not None and after is not None else 0.0
        e0 = self._total * g
        e1 = e0 - float(lost.sum())
        return loudness, (10 * math.log10(e0 / e1) if e0 > 0 and e1 > 0 else 0.0)


@dataclass(frozen=True)
class _Plan:
    """How the level will be set. predict(g) = base + g − scale·(limiter loss at g) − offset."""

    mode: str  # "lufs" | "rms" | "off" | "silent"
    ceiling_db: float  # true-peak promise
    target: float | None  # integrated LUFS, or the RMS aimed at
    base: float | None  # programme level the gain applies to (LUFS incl. layout change, or plain RMS)
    model: LimiterModel | None
    rms_range: tuple[float, float] | None = None
    offset: float = 0.0  # what the codec takes (first run: a per-format estimate; then measured)
    scale: float = 1.0  # correction of the model's limiter loss, learned from a measured run

    def loss(self, gain_db: float, limit_db: float) -> float:
        assert self.model is not None
        loudness, rms = self.model.losses(gain_db, limit_db)
        return self.scale * (rms if self.mode == "rms" else loudness)

    def predict(self, gain_db: float, limit_db: float) -> float:
        """Level (LUFS or RMS, as `mode`) of the encoded file at this gain and limiter threshold."""
        assert self.base is not None
        return self.base + gain_db - self.loss(gain_db, limit_db) - self.offset

    def solve(self, limit_db: float, notes: list[str] | None = None, max_loss: float | None = None) -> float:
        """The gain that makes predict() hit the target. predict rises with the gain, ever more slowly as the
        limiter takes over, so: step up to bracket the target (stopping where the limiter would take more
        than MAX_LIMITING_LU: a target beyond that is missed, with a note, rather than crushing the speech),
        then regula falsi inside the bracket."""
        assert self.base is not None and self.target is not None
        level = self.target
        max_loss = MAX_LIMITING_LU if max_loss is None else max_loss

        def f(g: float) -> float:
            cooperate()
            return self.predict(g, limit_db) - level

        lo = level - self.base + self.offset - 0.01  # below any solution: the limiter only takes away
        f_lo = f(lo)
        if f_lo >= 0:
            return lo
        hi, step = lo, 1.0
        while True:
            hi = min(MAX_GAIN_DB, hi + step)
            f_hi = f(hi)
            if f_hi >= 0:
                break
            if self.loss(hi, limit_db) > max_loss or hi >= MAX_GAIN_DB:
                gain = self._max_gain(lo, hi, limit_db, max_loss)
                if notes is not None:
                    notes.append(
                        f"the speech has very strong peaks: the target was missed by "
                        f"{level - self.predict(gain, limit_db):.1f} dB rather than limit them by more than "
                        f"{max_loss:.0f} LU"
                    )
                return gain
            lo, f_lo, step = hi, f_hi, step * 1.6
        for _ in range(30):  # Illinois regula falsi
            g = hi - f_hi * (hi - lo) / (f_hi - f_lo)
            fg = f(g)
            if abs(fg) < 0.01:
                break
            if fg > 0:
                hi, f_hi = g, fg
                f_lo /= 2
            else:
                lo, f_lo = g, fg
                f_hi /= 2
        if notes is not None and self.loss(g, limit_db) > HEAVY_LIMITING_LU:
            notes.append(
                f"the speech has strong peaks: reaching the target took {self.loss(g, limit_db):.1f} LU of limiting"
            )
        return g

    def _max_gain(self, lo: float, hi: float, limit_db: float, max_loss: float) -> float:
        """Largest gain in [lo, hi] whose limiter loss stays under max_loss (bisection)."""
        for _ in range(12):
            mid = (lo + hi) / 2
            if self.loss(mid, limit_db) > max_loss:
                hi = mid
            else:
                lo = mid
        return lo

    def learn(self, gain_db: float, limit_db: float, measured: float) -> _Plan:
        """This plan corrected by a measured run: a limiter loss of ≥ 1 dB rescales the model's loss (its
        error grows with the limiting), a smaller one leaves it and moves the offset."""
        assert self.base is not None
        taken = self.base + gain_db - measured  # all that went missing: limiter + codec + model error
        model_loss = self.loss(gain_db, limit_db) / self.scale
        if model_loss >= 1.0:
            scale = min(1.5, max(0.5, (taken - self.offset) / model_loss))
            return replace(self, scale=scale)
        return replace(self, offset=taken - self.scale * model_loss)


def _analyse(
    program: Path, sample_rate: int, channels: int, out_channels: int, profile: PeakProfile | None, meter: bool
) -> tuple[PeakProfile, LoudnessMeter | None, float]:
    """One pass over the programme in ~2 s pieces: the peak profile (of the downmix when the output has
    fewer channels), a BS.1770 meter when asked, and the downmix's energy change in dB."""
    mix = channels > 1 and out_channels == 1
    need_profile = profile is None
    if need_profile:
        profile = PeakProfile(sample_rate, 1 if mix else channels)
    lm = LoudnessMeter(sample_rate, channels) if meter else None
    e_in = e_mix = 0.0
    if need_profile or lm is not None or mix:
        frame_bytes = 4 * channels
        with open(program, "rb") as fh:
            while chunk := fh.read(max(1, int(2 * sample_rate)) * frame_bytes):
                usable = len(chunk) - len(chunk) % frame_bytes
                x = np.frombuffer(chunk[:usable], dtype="<f4").reshape(-1, channels)
                if lm is not None:
                    lm.add(x)
                y = x.mean(axis=1, keepdims=True) if mix else x
                if mix:
                    e_in += float(np.einsum("ij,ij->", x, x, dtype=np.float64))
                    e_mix += float(np.einsum("ij,ij->", y, y, dtype=np.float64)) * channels
                if need_profile:
                    profile.add(y)
                cooperate()
    assert profile is not None
    mix_db = 10 * math.log10(e_mix / e_in) if mix and e_in > 0 and e_mix > 0 else 0.0
    return profile, lm, mix_db


def _plan(
    program: Path,
    sample_rate: int,
    channels: int,
    out_channels: int,
    duration_s: float,
    measured_lufs: float | None,
    measured_rms_db: float | None,
    target: LoudnessTarget,
    profile: PeakProfile | None,
    notes: list[str],
) -> _Plan:
    ceiling = target.true_peak
    if target.rms_range is not None:
        mode = "rms"
    elif target.integrated is not None:
        mode = "lufs"
    else:  # no gain; the profile only tells whether the limiter has anything to do
        prof, _, _ = _analyse(program, sample_rate, channels, out_channels, profile, meter=False)
        return _Plan("off", ceiling, None, None, LimiterModel(prof))
    measured = measured_rms_db if mode == "rms" else measured_lufs
    prof, lm, mix_db = _analyse(program, sample_rate, channels, out_channels, profile, meter=measured is None)
    if lm is not None:
        if mode == "rms":
            measured = lm.rms_db()
        else:
            measured = lm.integrated()
            if measured is None and duration_s < 0.4:
                measured = lm.ungated()
                if measured is not None:
                    notes.append(
                        f"the programme is only {duration_s * 1000:.0f} ms long (BS.1770 needs 400 ms); "
                        "its loudness was measured without gating"
                    )
    if measured is None:
        notes.append("the programme is silent; its level was left unchanged")
        return _Plan("silent", ceiling, None, None, None)
    model = LimiterModel(prof)
    if mode == "rms":
        assert target.rms_range is not None
        lo, hi = target.rms_range
        # the profile is of the output layout; plain RMS of a duplicated or averaged channel is the RMS
        return _Plan("rms", ceiling, (lo + hi) / 2, measured + mix_db, model, (lo, hi))
    assert target.integrated is not None
    if channels == 1 and out_channels > 1:
        measured += 10 * math.log10(out_channels)  # the channel is duplicated into each output channel
    elif channels > 1 and out_channels == 1:
        measured += mix_db - 10 * math.log10(channels)  # average of the channels (exact energy change)
    return _Plan("lufs", ceiling, target.integrated, measured, model)


# ------------------------------------------------------------------------------------------ encoding


def _needs_limiter(plan: _Plan, gain_db: float, limit_db: float) -> bool:
    """False when no sample peak comes within 0.5 dB (room for inter-sample peaks) of the threshold: the
    oversampled limiter would change nothing, so the encode skips it (faster, and bit-transparent)."""
    if plan.mode == "silent":
        return False
    if plan.model is None or plan.model.peak_db.size == 0:
        return True
    return float(plan.model.peak_db.max()) + gain_db + 0.5 > limit_db


def _filter_chain(
    channels: int,
    sample_rate: int,
    out_channels: int,
    out_rate: int,
    gain_db: float,
    limit_db: float | None,
    lowpass_hz: int | None = None,
) -> str:
    """[channel layout] → volume → (soxr ↑ → alimiter → soxr ↓ | soxr to the output rate). limit_db None = no
    limiter. soxr's cutoff is raised from 0.91 to 0.99 of Nyquist so the round trip keeps the top of the band.
    Oversampling: 2× ahead of a lossy encoder (`lowpass_hz` set; see the module docstring), else up to 4×."""
    parts: list[str] = []
    if channels != out_channels:
        layout = {1: "mono", 2: "stereo"}.get(out_channels, f"{out_channels}c")
        if channels == 1:
            parts.append(f"pan={layout}|" + "|".join(f"c{i}=c0" for i in range(out_channels)))
        elif out_channels == 1:
            share = 1.0 / channels
            parts.append("pan=mono|c0=" + "+".join(f"{share:.6f}*c{i}" for i in range(channels)))
        else:
            parts.append(f"aresample=ochl={layout}")
    if lowpass_hz:
        parts.append(f"lowpass=f={lowpass_hz}:poles=2,lowpass=f={lowpass_hz}:poles=2")
    if abs(gain_db) >= 0.005:
        parts.append(f"volume={gain_db:.3f}dB")
    if limit_db is not None:
        factor = 2 if lowpass_hz else max(2, min(4, 192000 // out_rate))
        limit = min(1.0, max(0.0625, 10 ** (limit_db / 20)))
        parts += [
            f"aresample={out_rate * factor}:resampler=soxr:cutoff=0.99",
            f"alimiter=limit={limit:.6f}:attack=5:release=50:level=false:latency=true",
            f"aresample={out_rate}:resampler=soxr:cutoff=0.99",
        ]
    elif out_rate != sample_rate:
        parts.append(f"aresample={out_rate}:resampler=soxr:cutoff=0.99")
    return ",".join(parts) or "anull"


MP3_FAST_BITS_PER_SAMPLE = 1.4  # kbit/s per channel per kHz from which LAME's -q 7 is used (mp3_fast)


def mp3_fast(kbps: int | None, rate: int, channels: int) -> bool:
    """Whether LAME runs at -q 7 (no noise shaping) instead of its default -q 5 for this mp3.

    Measured on 5 min of eSpeak speech (PESQ-WB, 20 excerpts, and true peak behind a −3.85 dBFS limiter):
    24 kHz mono 64 kbit/s: PESQ 3.97 vs 3.68, SNR 22.9 vs 18.4 dB, true peak −3.2 vs −0.4 dBTP, and LAME
    runs twice as fast; 44.1 kHz stereo 128k 4.42 vs 4.29; 48 kHz mono 96k 4.53 vs 4.52; 24 kHz mono
    40–48k and 16 kHz mono 32k better too. Noise shaping moves quantization noise into bands the psychoacoustic
    model deems masked, which on limited speech piles up at transients and puts the limited peaks back up by
    2–3 dB. Below ~1.4 kbit/s per channel per kHz of sample rate (24 kHz mono 32k, 44.1 kHz mono 48k, stereo
    64k) noise shaping wins (PESQ −0.07 to −0.22 without it), so the default stays there.
    """
    return bool(kbps) and kbps / max(1, channels) >= MP3_FAST_BITS_PER_SAMPLE * rate / 1000


OPUS_CUTOFFS_HZ = (4000, 6000, 8000, 12000, 20000)  # the bandwidths libopus accepts


def codec_lowpass_hz(fmt: str, kbps: int | None, rate: int, channels: int) -> int | None:
    """The audio bandwidth the lossy encoder keeps, set explicitly (None for lossless formats).

    Lossy encoders low-pass the signal; if the limiter works on content the encoder then removes, the
    limited peaks come back up (Gibbs ringing): measured on eSpeak speech at 22.05 kHz/64 kbit/s mp3, a
    limiter at −2.25 dBFS gave a −0.3 dBTP file. Band-limiting BEFORE the limiter to the same frequency the
    encoder is told to keep removes most of that overshoot, so one encode normally meets the ceiling.
    Speech keeps its intelligibility: 32 kbit/s per channel → 7.2 kHz, 64 → 10.4 kHz, 128 → 16.8 kHz.
    """
    if FORMATS[fmt].lossless or not kbps:
        return None
    per_channel = kbps / max(1, channels)
    hz = int(min(0.45 * rate, 4000 + 100 * per_channel))
    if fmt == "ogg":
        hz = max(c for c in OPUS_CUTOFFS_HZ if c <= max(hz, OPUS_CUTOFFS_HZ[0]))
    return hz


def _codec_args(
    fmt: str, kbps: int | None, lowpass_hz: int | None = None, rate: int = 0, channels: int = 1
) -> list[str]:
    spec = FORMATS[fmt]
    args = ["-c:a", spec.codec]
    if lowpass_hz:
        args += ["-cutoff", str(lowpass_hz)]
    if fmt == "mp3":
        args += ["-b:a", f"{kbps}k", "-write_xing", "1"]  # CBR; Xing/Info + LAME header (seekable output)
        if mp3_fast(kbps, rate, channels):
            args += ["-compression_level", "7"]
    elif fmt == "m4a":
        # the "fast" coder: 5x faster than the default twoloop here, with less peak overshoot, fine for speech
        args += ["-b:a", f"{kbps}k", "-aac_coder", "fast", "-movflags", "+faststart"]
    elif fmt == "ogg":
        # constrained VBR keeps the size predictable. ("-application voip" was tried: its decoded peaks
        # overshoot the limiter as much or more on most test signals.)
        args += ["-b:a", f"{kbps}k", "-vbr", "constrained"]
    elif fmt == "flac":
        args += ["-sample_fmt", "s16"]
    args += ["-fflags", "+bitexact"] if spec.lossless else []  # no encoder-version chunks: exact wav size
    return args


def _encode(
    program: Path,
    sample_rate: int,
    channels: int,
    fmt: str,
    kbps: int | None,
    out_rate: int,
    out_channels: int,
    gain_db: float,
    limit_db: float | None,
    out: Path,
    duration_s: float,
) -> Measurement:
    """Encode, and measure what was encoded, in one ffmpeg process.

    A loopback decoder (`-dec 0:0`, ffmpeg ≥ 7) decodes the encoder's packets as they are produced and feeds
    them to the measuring graph, so the file is never read back and encoding and measuring run in parallel
    threads (10-min mp3: 3.1 s instead of 2.9 s + 1.6 s for a separate measure_file run). The figures equal
    measure_file on the written file (tests/test_master.py checks all five formats: loudness, true peak, RMS).
    The loopback's sample count includes AAC's and Opus' last-frame padding, which the file's gapless
    metadata removes on playback; for those two the count is that of the encoder's input (_file_samples).
    An ffmpeg without the loopback decoder (5.x, 6.x, see audio.ffmpeg) encodes, then measure_file reads the
    file back through the same measurement graph: the same figures, one more process (~1.5x the time).
    """
    spec = FORMATS[fmt]
    lowpass = codec_lowpass_hz(fmt, kbps, out_rate, out_channels)
    decoded_rate = 48000 if fmt == "ogg" else out_rate  # ffmpeg's Opus decoder always outputs 48 kHz
    args = [
        "-nostats", "-loglevel", MEASURE_LOGLEVEL,
        *ffmpeg.raw_input_args(program, sample_rate, channels),
        "-af", _filter_chain(channels, sample_rate, out_channels, out_rate, gain_db, limit_db, lowpass),
        *_codec_args(fmt, kbps, lowpass, out_rate, out_channels),
        "-ar", str(out_rate), "-ac", str(out_channels),
        "-map_metadata", "-1",
        "-f", spec.muxer, ffmpeg.file_url(out),
    ]  # fmt: skip
    what = f"encoding {fmt}"
    timeout = 60.0 + duration_s / 6.0
    if not ffmpeg.capabilities().has_loopback:  # ffmpeg < 7: measure the written file, same graph and figures
        ffmpeg.run(args, timeout=timeout, what=what)
        return measure_file(out, fmt, sample_rate=decoded_rate, timeout=timeout)
    args += ["-dec", "0:0", "-filter_complex", measurement_graph("[dec:0]", decoded_rate), "-map", "[measured]"]
    res = ffmpeg.run([*args, "-f", "null", "-"], timeout=timeout, what=what)
    m = parse_measurement(res.stderr, decoded_rate, what)
    return _file_samples(m, fmt, round(duration_s * decoded_rate))


def _file_samples(m: Measurement, fmt: str, expected: int) -> Measurement:
    """The loopback measurement with the sample count a decoder of the FILE reports.

    mp3 (LAME's Info tag), flac and wav come out exact. AAC and Opus packets carry up to one frame of end
    padding that only the container's metadata trims; the file then decodes to exactly the encoder's input
    (`expected`: the programme's length at the decoded rate). A count that is not `expected` plus at most
    one frame (2048 samples at most) is kept as it is, so a real shortfall still shows.
    """
    if fmt not in ("m4a", "ogg") or not 0 < m.samples - expected <= 2048:
        return m
    return replace(m, samples=expected, duration_s=expected / m.sample_rate)


def _settle(
    plan: _Plan, margin: Callable[[float], float], notes: list[str] | None, max_loss: float | None = None
) -> tuple[float, float]:
    """(gain, limiter threshold) such that the level hits the target and the threshold sits `margin(λ)`
    below the ceiling, λ being the limiter loss that gain causes (a short fixed-point iteration).

    A lower threshold needs more gain, hence more limiting, hence (for lossy codecs) a larger margin: on
    peaky speech this runs away into crushing limiting, where codecs overshoot most. So the threshold is not
    lowered past the point where λ reaches SOFT_LIMITING_LU; the measurement decides whether that sufficed.
    """
    limit = plan.ceiling_db - margin(0.0)
    if plan.target is None or plan.model is None:
        return 0.0, limit
    gain = plan.solve(limit, max_loss=max_loss)
    loss = plan.loss(gain, limit)
    for _ in range(5):
        new_limit = plan.ceiling_db - margin(loss)
        if abs(new_limit - limit) < 0.05:
            break
        new_gain = plan.solve(new_limit, max_loss=max_loss)
        new_loss = plan.loss(new_gain, new_limit)
        if new_loss > SOFT_LIMITING_LU and new_limit < limit:
            # stop where λ = SOFT_LIMITING_LU, between the two thresholds (λ rises as the threshold falls)
            if loss < SOFT_LIMITING_LU:
                frac = (SOFT_LIMITING_LU - loss) / (new_loss - loss)
                limit = limit + frac * (new_limit - limit)
            break
        limit, loss = new_limit, new_loss
    return plan.solve(limit, notes, max_loss=max_loss), limit


def master(
    program: Path,
    sample_rate: int,
    channels: int,
    measured_lufs: float | None,
    measured_rms_db: float | None,
    target: LoudnessTarget,
    options: EncodeOptions,
    workdir: Path,
    *,
    profile: PeakProfile | None = None,
) -> Encoded:
    """Normalize, true-peak limit and encode the float32le programme; measure the result.

    `measured_lufs`/`measured_rms_db`: the programme's BS.1770 loudness and plain RMS as the caller measured
    them (None: measured here). `profile`: the programme's PeakProfile if the caller built one while writing
    it (saves one read of the file); otherwise it is built here in ~2 s pieces.

    Normally one ffmpeg run (encode + measurement); one more when the first result misses the loudness
    target by more than 0.5 LU, has a true peak over the ceiling, or (rarely) is over max_bytes; and up to
    PEAK_RETRIES more while the true peak is still over the ceiling.
    Raises OutputTooLarge when no allowed bitrate fits, InvalidInput for an unknown format.
    """
    program = Path(program)
    fmt = options.fmt
    if fmt not in FORMATS:
        raise InvalidInput("output_format", f"{fmt!r} is not one of: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    frames = program.stat().st_size // (4 * channels)
    if frames == 0:
        raise InvalidAudio(None, "the programme to encode is empty")
    duration_s = frames / sample_rate
    notes: list[str] = []
    out_channels = options.channels or channels
    wanted_rate = options.sample_rate or sample_rate
    out_rate = output_rate(fmt, wanted_rate)
    if out_rate != wanted_rate:
        notes.append(f"{fmt} does not support {wanted_rate} Hz; encoded at {out_rate} Hz")
    kbps = choose_bitrate(fmt, duration_s, out_rate, out_channels, options, notes)

    plan = _plan(
        program, sample_rate, channels, out_channels, duration_s, measured_lufs, measured_rms_db, target, profile,
        notes,
    )
    a, b = spec.margin(kbps, out_channels, fmt == "mp3" and mp3_fast(kbps, out_rate, out_channels))
    if plan.target is not None:
        plan = replace(plan, offset=spec.codec_loss_db)
    gain, limit = _settle(plan, lambda loss: a + b * min(loss, MARGIN_LOSS_CAP_LU), notes)
    limiter = _needs_limiter(plan, gain, limit)
    out = Path(workdir) / f"master{spec.extension}"

    def encode_and_measure() -> Measurement:
        lim = limit if limiter else None
        return _encode(program, sample_rate, channels, fmt, kbps, out_rate, out_channels, gain, lim, out, duration_s)

    def encode_again() -> tuple[Measurement, int]:
        """A corrective encode and its size; it must fit (no bitrate step comes after it)."""
        m = encode_and_measure()
        size = out.stat().st_size
        if size > options.max_bytes - _TAG_RESERVE_BYTES:
            raise OutputTooLarge(_too_large_message(fmt, duration_s, options, size))
        return m, size

    m = encode_and_measure()
    encodes = 1
    size = out.stat().st_size
    too_big = size > options.max_bytes - _TAG_RESERVE_BYTES
    if too_big and spec.lossless:
        raise OutputTooLarge(_too_large_message(fmt, duration_s, options, size))
    level_off, over = _misses(plan, m)
    if level_off or over or too_big:
        got = _level(plan, m)
        new_gain, new_limit = gain, limit
        if over:
            # Scale the whole limited signal down: gain and threshold drop together, so the limiting (and
            # with it the codec's overshoot) stays as it was and the true peak drops by the same amount.
            # Pushing the level back up with more limiting would bring the overshoot back (measured).
            new_gain, new_limit = _scaled_down(gain, limit, over)
        elif plan.target is not None and got is not None and plan.model is not None:
            # only the level is off: re-solve with the model corrected by this measurement; keep the true
            # peak's measured headroom for the overshoot that extra limiting adds (b per LU)
            loss1 = plan.loss(gain, limit)
            plan = plan.learn(gain, limit, got)
            headroom = plan.ceiling_db - (m.true_peak_dbtp if m.true_peak_dbtp is not None else limit)
            max_loss = min(MAX_LIMITING_LU, loss1 + 1.5)
            for _ in range(2):
                new_gain = plan.solve(new_limit, max_loss=max_loss)
                extra = max(0.0, b * (plan.loss(new_gain, new_limit) - loss1) + PASS2_SAFETY_DB - headroom)
                new_limit = limit - extra
            new_gain = plan.solve(new_limit, max_loss=max_loss)
        elif plan.target is not None and got is not None:
            new_gain = gain + plan.target - got  # no model (cannot happen with a target): plain correction
        better = (
            plan.target is not None
            and got is not None
            and not over
            and abs(plan.predict(new_gain, new_limit) - plan.target) < abs(got - plan.target) - 0.2
        )
        fallback = _direct_correction(plan, m, gain, limit)
        if not (over or too_big or better) and fallback is not None:
            new_gain, new_limit, better = *fallback, True
        if not (over or too_big or better):  # nothing a second run could improve
            _check_result(plan, m, notes)
            return _encoded(out, fmt, spec, kbps, out_rate, m, size, gain, notes, encodes)
        gain, limit = new_gain, new_limit
        limiter = bool(over) or _needs_limiter(plan, gain, limit)
        if too_big:
            kbps = _step_down(fmt, kbps, out_rate, size, options, duration_s, notes)
        m, size = encode_again()
        encodes = 2
        # A lossy codec's overshoot is not always proportional to the level: at a hard-limited transient LAME
        # can put back the same peak after the whole signal was scaled down (measured on the 41-min benchmark
        # programme: scaling by 0.3-0.7 dB left a -0.7 dBTP peak where it was, 0.8 dB gave -1.3 dBTP). The
        # ceiling is a hard promise, so scale down again by what is still over (the level then drops as much).
        for _ in range(PEAK_RETRIES):
            _, over = _misses(plan, m)
            if not over:
                break
            (gain, limit), limiter = _scaled_down(gain, limit, over), True
            m, size = encode_again()
            encodes += 1
    _check_result(plan, m, notes)
    return _encoded(out, fmt, spec, kbps, out_rate, m, size, gain, notes, encodes)


def _encoded(
    out: Path, fmt: str, spec: FormatSpec, kbps: int | None, rate: int, m: Measurement, size: int, gain: float,
    notes: list[str], encodes: int,
) -> Encoded:
    return Encoded(
        path=out,
        fmt=fmt,
        mime_type=spec.mime_type,
        extension=spec.extension,
        bitrate_kbps=kbps,
        sample_rate=rate,  # what was encoded (Opus decoders play every rate at 48 kHz)
        channels=m.channels,
        duration_s=m.duration_s,
        size_bytes=size,
        loudness_lufs=m.integrated_lufs,
        true_peak_dbtp=m.true_peak_dbtp,
        gain_db=round(gain, 2),
        notes=notes,
        rms_db=m.rms_db,
        encodes=encodes,
    )


def _scaled_down(gain: float, limit: float, over: float) -> tuple[float, float]:
    """(gain, threshold) both lowered by what the true peak is over, plus PASS2_SAFETY_DB: the limited signal
    as it was, only quieter, so the limiting (and the codec's overshoot with it) stays the same."""
    return gain - over - PASS2_SAFETY_DB, limit - over - PASS2_SAFETY_DB


def _direct_correction(plan: _Plan, m: Measurement, gain: float, limit: float) -> tuple[float, float] | None:
    """(gain, threshold) for a result that misses the ±1 LU promise in a way the model could not explain.

    The gain is corrected by the miss; headroom the codec left unused under the ceiling (it overshot less than
    the margin assumed) goes back to the limiter. None when the level is within the promise.
    """
    got = _level(plan, m)
    if plan.target is None or got is None or abs(got - plan.target) <= LOUDNESS_LIMIT_LU:
        return None
    headroom = plan.ceiling_db - (m.true_peak_dbtp if m.true_peak_dbtp is not None else plan.ceiling_db)
    return gain + (plan.target - got), limit + max(0.0, headroom - 0.5)


def _level(plan: _Plan, m: Measurement) -> float | None:
    return m.rms_db if plan.mode == "rms" else m.integrated_lufs


def _misses(plan: _Plan, m: Measurement) -> tuple[bool, float]:
    """(level off target by more than the tolerance, dB the true peak is over the ceiling) of an encode."""
    level_off = False
    got = _level(plan, m)
    if plan.target is not None and got is not None:
        if plan.rms_range is not None:
            lo, hi = plan.rms_range[0] + 0.5, plan.rms_range[1] - 0.5
        else:
            lo, hi = plan.target - LOUDNESS_TOLERANCE_LU, plan.target + LOUDNESS_TOLERANCE_LU
        level_off = not lo <= got <= hi
    over = 0.0
    if m.true_peak_dbtp is not None and m.true_peak_dbtp > plan.ceiling_db:
        over = m.true_peak_dbtp - plan.ceiling_db
    return level_off, over


def _step_down(
    fmt: str, kbps: int | None, rate: int, size: int, options: EncodeOptions, duration_s: float, notes: list[str]
) -> int:
    """The next lower allowed bitrate whose size, scaled from the real file, fits."""
    assert kbps is not None
    limit = options.max_bytes - _TAG_RESERVE_BYTES
    for candidate in BITRATE_LADDER:
        if candidate >= kbps or candidate < options.min_bitrate_kbps:
            continue
        if legal_bitrate(fmt, candidate, rate) != candidate:
            continue
        if size * candidate / kbps * 1.02 <= limit:
            notes.append(
                f"bitrate lowered from {kbps} to {candidate} kbit/s: the encoded file was {_mib(size)}, over the "
                f"{_mib(options.max_bytes)} limit"
            )
            return candidate
    raise OutputTooLarge(_too_large_message(fmt, duration_s, options, size))


def _check_result(plan: _Plan, m: Measurement, notes: list[str]) -> None:
    """Notes for a result that still misses its promise after the correction (should be rare)."""
    if m.decode_errors:
        notes.append(f"the encoded file decodes with {m.decode_errors} error line(s): {m.error_lines[:1]}")
    got = _level(plan, m)
    if got is not None and plan.target is not None:
        if plan.rms_range is not None and not plan.rms_range[0] <= got <= plan.rms_range[1]:
            lo, hi = plan.rms_range
            notes.append(f"RMS {got:.1f} dB is outside the {lo:.0f} to {hi:.0f} dB range")
        elif plan.rms_range is None and abs(got - plan.target) > LOUDNESS_LIMIT_LU:
            notes.append(f"loudness {got:.1f} LUFS misses the {plan.target:.1f} LUFS target")
    if m.true_peak_dbtp is not None and m.true_peak_dbtp > plan.ceiling_db:
        notes.append(f"true peak {m.true_peak_dbtp:.1f} dBTP is above the {plan.ceiling_db:.1f} dBTP ceiling")
