"""Loudness measurement: a streaming BS.1770-4 / EBU R128 meter in numpy, and one-run file measurement.

`LoudnessMeter` is fed PCM piece by piece (one meter per speaker, or one for the programme) and keeps only
100 ms sub-block energies, so an hour of audio costs ~36 000 floats. Its K-weighting is derived for any sample
rate from the analog prototype, as libebur128 and ffmpeg's ebur128 filter do (at 48 kHz it reproduces the
BS.1770 coefficients).

`measure_file` decodes a file in ONE ffmpeg run through `astats` (exact decoded sample count, RMS, sample
peak, channel count), `ebur128` (integrated, LRA) and a 192 kHz soxr + `astats` true-peak meter, and counts
the decoder's error lines. It is the measuring path for the mastered output, the CLI's `inspect` command,
and other modules' tests.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import sosfilt

from . import ffmpeg
from .cooperate import cooperate
from .errors import FFmpegError

ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
_OFFSET = -0.691  # BS.1770 constant
_SUB_BLOCKS_PER_S = 10  # 100 ms sub-blocks; a gating block is 4 of them (400 ms, 75 % overlap)
_PIECE_S = 2.0  # Python work per piece before yielding to the gevent hub


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """The two K-weighting biquads (pre-filter high shelf, RLB high pass) for `sample_rate`, as SOS rows.

    Same derivation as libebur128 (bilinear transform of the analog prototype whose parameters reproduce
    the BS.1770 48 kHz coefficients exactly), with the high-pass passband gain held at its 48 kHz value, so
    results agree with ffmpeg's ebur128 (which resamples to 48 kHz) at every rate.
    """
    if sample_rate < 4000:
        raise ValueError(f"sample rate {sample_rate} Hz is too low for K-weighting (need ≥ 4000 Hz)")
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sample_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf_b = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    shelf_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    # BS.1770's 48 kHz high-pass numerator is (1, −2, 1), i.e. the bilinear design times a0(48 kHz): a passband
    # gain of +0.043 dB. libebur128 keeps (1, −2, 1) at every rate, which makes that gain rate-dependent
    # (+0.13 dB at 16 kHz, +0.26 dB at 8 kHz); scaling by a0(48k)/a0(rate) keeps the 48 kHz response everywhere.
    k48 = math.tan(math.pi * f0 / 48000.0)
    g = (1.0 + k48 / q + k48 * k48) / a0
    hp_b = [g, -2.0 * g, g]
    hp_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf_b + shelf_a, hp_b + hp_a], dtype=np.float64)


def channel_weights(channels: int) -> np.ndarray:
    """BS.1770 channel weights: 1.0 for front channels, 1.41 for surrounds, 0 for the LFE of 5.1."""
    if channels == 5:  # L R C Ls Rs
        return np.array([1.0, 1.0, 1.0, 1.41, 1.41])
    if channels == 6:  # L R C LFE Ls Rs
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
    return np.ones(channels)


def _lufs(energy: float) -> float:
    return _OFFSET + 10.0 * math.log10(energy)


class LoudnessMeter:
    """Streaming BS.1770-4 meter. Feed float PCM with `add()` in pieces of any size; read the results.

    Results do not depend on how the audio was split into `add()` calls: the filter state and the partial
    100 ms sub-block carry over between calls.
    """

    def __init__(self, sample_rate: int, channels: int) -> None:
        if channels < 1:
            raise ValueError(f"channels must be ≥ 1, got {channels}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self._sos = k_weighting_sos(self.sample_rate)
        self._zi = np.zeros((2, 2, self.channels))
        self._weights = channel_weights(self.channels)
        self._frames = 0  # frames seen
        self._sub_energy: list[float] = []  # weighted K-filtered energy of each completed sub-block
        self._partial = 0.0  # energy of the current, incomplete sub-block
        self._k_total = 0.0  # all K-weighted energy (for `ungated`)
        self._sum_squares = 0.0  # plain, for RMS
        self._peak = 0.0

    def _boundary(self, k: int) -> int:
        """First frame of sub-block k (exact for rates that are not a multiple of 10 Hz too)."""
        return k * self.sample_rate // _SUB_BLOCKS_PER_S

    def add(self, samples: np.ndarray) -> None:
        """Add frames: shape (n, channels), or (n,) for mono. Large arrays are processed in ~2 s pieces,
        yielding to other greenlets between pieces (audio.cooperate: a hub cycle every ≥10 ms under gevent)."""
        x = np.asarray(samples)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected shape (n, {self.channels}), got {np.shape(samples)}")
        piece = max(1, int(_PIECE_S * self.sample_rate))
        for start in range(0, x.shape[0], piece):
            if start:
                cooperate()
            self._add_piece(x[start : start + piece].astype(np.float64))

    def _add_piece(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        squares = x * x
        self._sum_squares += float(squares.sum())
        self._peak = max(self._peak, float(np.sqrt(squares.max())))
        y, self._zi = sosfilt(self._sos, x, axis=0, zi=self._zi)
        energy = (y * y) @ self._weights
        self._k_total += float(energy.sum())
        start, end = self._frames, self._frames + n
        k = len(self._sub_energy)  # index of the incomplete sub-block
        pos = 0
        while self._boundary(k + 1) <= end:
            cut = self._boundary(k + 1) - start
            self._sub_energy.append(self._partial + float(energy[pos:cut].sum()))
            self._partial = 0.0
            pos = cut
            k += 1
        self._partial += float(energy[pos:].sum())
        self._frames = end

    @property
    def duration_s(self) -> float:
        return self._frames / self.sample_rate

    def block_energies(self) -> np.ndarray:
        """Mean weighted energy of every complete 400 ms gating block (step 100 ms)."""
        sub = np.asarray(self._sub_energy, dtype=np.float64)
        if sub.size < 4:
            return np.zeros(0)
        cs = np.concatenate(([0.0], np.cumsum(sub)))
        bounds = np.array([self._boundary(k) for k in range(sub.size + 1)], dtype=np.float64)
        return (cs[4:] - cs[:-4]) / (bounds[4:] - bounds[:-4])

    def integrated(self) -> float | None:
        """Gated integrated loudness in LUFS; None when no block passes the gates (silence, < 400 ms)."""
        return gated_loudness(self.block_energies())

    def ungated(self) -> float | None:
        """K-weighted loudness of ALL audio seen, without gating (defined for clips shorter than 400 ms).

        None when nothing was added or the result is below the absolute gate (−70 LUFS): silence.
        """
        if self._frames == 0 or self._k_total <= 0.0:
            return None
        value = _lufs(self._k_total / self._frames)
        return value if value > ABSOLUTE_GATE_LUFS else None

    def rms_db(self) -> float | None:
        """Plain (unweighted) RMS over all samples of all channels in dBFS (full-scale sine = −3.01)."""
        if self._frames == 0 or self._sum_squares <= 0.0:
            return None
        return 10.0 * math.log10(self._sum_squares / (self._frames * self.channels))

    def sample_peak_db(self) -> float | None:
        """Largest absolute sample value in dBFS; None for digital silence."""
        return 20.0 * math.log10(self._peak) if self._peak > 0.0 else None


def gated_loudness(blocks: np.ndarray) -> float | None:
    """BS.1770 gating over 400 ms block energies (LoudnessMeter.block_energies; several meters' blocks may be
    concatenated, and scaled by a gain, to get the loudness of their audio together). None: nothing above the
    gates."""
    with np.errstate(divide="ignore"):
        loud = _OFFSET + 10.0 * np.log10(blocks)
    above_abs = blocks[loud > ABSOLUTE_GATE_LUFS]
    if above_abs.size == 0:
        return None
    relative_gate = _lufs(float(above_abs.mean())) + RELATIVE_GATE_LU
    gated = blocks[(loud > ABSOLUTE_GATE_LUFS) & (loud > relative_gate)]
    return _lufs(float(gated.mean()))


def meter_raw_file(
    path: str | os.PathLike[str], sample_rate: int, channels: int, *, dtype: str = "<f4"
) -> LoudnessMeter:
    """Run a LoudnessMeter over a raw interleaved PCM file, reading ~2 s at a time."""
    meter = LoudnessMeter(sample_rate, channels)
    frame_bytes = np.dtype(dtype).itemsize * channels
    piece = max(1, int(_PIECE_S * sample_rate)) * frame_bytes
    with open(path, "rb") as fh:
        while chunk := fh.read(piece):
            usable = len(chunk) - len(chunk) % frame_bytes
            meter.add(np.frombuffer(chunk[:usable], dtype=dtype).reshape(-1, channels))
            cooperate()
    return meter


class PeakProfile:
    """Sample peak and plain energy of every 5 ms window of a programme (linked over channels), fed like
    LoudnessMeter. Enough to predict what a look-ahead limiter does to loudness (see audio.master) without
    running it: ~1.5 MB per hour of audio.
    """

    def __init__(self, sample_rate: int, channels: int, window_s: float = 0.005) -> None:
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.window = max(1, round(self.sample_rate * window_s))
        self._peaks: list[np.ndarray] = []
        self._energy: list[np.ndarray] = []
        self._carry = np.zeros((0, self.channels), dtype=np.float32)
        self.frames = 0

    def add(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected shape (n, {self.channels}), got {np.shape(samples)}")
        piece = max(self.window, int(_PIECE_S * self.sample_rate) // self.window * self.window)
        for start in range(0, x.shape[0], piece):
            if start:
                cooperate()
            self._add_piece(x[start : start + piece])

    def _add_piece(self, x: np.ndarray) -> None:
        self.frames += x.shape[0]
        if self._carry.shape[0]:
            x = np.concatenate((self._carry, x))
        m = x.shape[0] // self.window
        if m:
            w = x[: m * self.window].reshape(m, self.window * self.channels)
            self._peaks.append(np.abs(w).max(axis=1))
            self._energy.append(np.einsum("ij,ij->i", w, w, dtype=np.float64).astype(np.float32))
        self._carry = x[m * self.window :].copy()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(peaks, energies) per window, the last partial window included. Read-only views: the pieces are
        joined once and kept joined, so asking again copies nothing."""
        for pieces in (self._peaks, self._energy):
            if len(pieces) > 1:
                joined = np.concatenate(pieces)
                pieces.clear()
                pieces.append(joined)
        peaks = self._peaks[0] if self._peaks else np.zeros(0, np.float32)
        energy = self._energy[0] if self._energy else np.zeros(0, np.float32)
        if self._carry.shape[0]:
            peaks = np.append(peaks, np.float32(np.abs(self._carry).max()))
            energy = np.append(energy, np.float32(np.square(self._carry, dtype=np.float64).sum()))
        peaks.flags.writeable = energy.flags.writeable = False
        return peaks, energy


# ---------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Measurement:
    """What one decode of a file says about it. Loudness values are None when ebur128 has nothing to
    report (silence or shorter than 400 ms: it prints −70 LUFS / −inf)."""

    integrated_lufs: float | None
    loudness_range_lu: float | None
    true_peak_dbtp: float | None
    sample_peak_db: float | None
    rms_db: float | None
    duration_s: float  # decoded samples per channel / sample_rate (exact, after encoder delay/padding trim)
    samples: int  # decoded samples per channel
    sample_rate: int
    channels: int
    decode_errors: int  # lines ffmpeg logged at error level or worse while reading the file
    error_lines: tuple[str, ...] = ()  # the first few of them, for messages

    @property
    def integrated(self) -> float | None:  # short alias
        return self.integrated_lufs

    @property
    def true_peak(self) -> float | None:  # short alias
        return self.true_peak_dbtp


# demuxer to force for our format names (input_args always forces one)
_DEMUXERS = {
    "mp3": "mp3", "wav": "wav", "ogg": "ogg", "opus": "ogg", "flac": "flac", "m4a": "mov", "mp4": "mov", "aac": "aac"
}
_RAW_FORMATS = ("f32le", "s16le", "s32le", "f64le")


def sniff_format(head: bytes) -> str | None:
    """Demuxer name for the first bytes of a file: wav, flac, ogg, mov, mp3 or aac (ADTS); None if unknown."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mov"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00 = ADTS
    return None


_FLOAT = r"(-?(?:\d+(?:\.\d*)?|inf|nan))"
_RE_I = re.compile(r"^\s*I:\s*" + _FLOAT + r"\s*LUFS", re.M)
_RE_LRA = re.compile(r"^\s*LRA:\s*" + _FLOAT + r"\s*LU", re.M)
_DECODED = r"\[astats@decoded @ [^\]]*\] \[info\] "  # log lines of the astats instances measurement_graph names
_TRUE_PEAK = r"\[astats@truepeak @ [^\]]*\] \[info\] "
_RE_TP = re.compile(_TRUE_PEAK + r"Peak level dB: " + _FLOAT)
_RE_SAMPLES = re.compile(_DECODED + r"Number of samples: (\d+)")
_RE_RMS = re.compile(_DECODED + r"RMS level dB: " + _FLOAT)
_RE_PEAK = re.compile(_DECODED + r"Peak level dB: " + _FLOAT)
_RE_CHANNEL = re.compile(_DECODED + r"Channel: (\d+)")
_RE_IN_RATE = re.compile(r"Input #0.*?Stream #0:\d+.*?: Audio: .*?, (\d+) Hz", re.S)


def _value(pattern: re.Pattern[str], text: str, floor: float | None = None) -> float | None:
    found = pattern.findall(text)
    if not found:
        return None
    value = float(found[-1])
    if not math.isfinite(value) or (floor is not None and value <= floor):
        return None
    return value


def measure_file(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    timeout: float | None = None,
) -> Measurement:
    """Measure a file in one ffmpeg run (astats, ebur128, true peak; see measurement_graph).

    `fmt`: our format name (mp3, wav, ogg/opus, flac, m4a, aac) or an ffmpeg demuxer name; None = sniff the
    file's first bytes. Raw PCM (f32le, s16le, ...) needs `sample_rate` and `channels`; for an encoded file
    `sample_rate` is optional knowledge of its rate (≥ 22.05 kHz skips the 48 kHz upsampling before ebur128).
    Raises FFmpegError when ffmpeg cannot read the file at all.
    """
    path = Path(path)
    size = path.stat().st_size
    if fmt is None:
        with open(path, "rb") as fh:
            fmt = sniff_format(fh.read(16))
        if fmt is None:
            raise FFmpegError(f"measure: cannot tell the audio format of {path.name}")
    if fmt in _RAW_FORMATS:
        if not sample_rate or not channels:
            raise ValueError(f"raw format {fmt} needs sample_rate and channels")
        inputs = ffmpeg.raw_input_args(path, sample_rate, channels, fmt)
    else:
        inputs = ffmpeg.input_args(path, _DEMUXERS.get(fmt, fmt))
    if timeout is None:
        # generous: decoding + true peak runs at > 100x real time here; allow 20x, assuming ≥ 8 kbit/s input
        seconds = size / (4 * (sample_rate or 1) * (channels or 1)) if fmt in _RAW_FORMATS else size / 1000.0
        timeout = 60.0 + seconds / 20.0
    res = ffmpeg.run(
        ["-nostats", "-loglevel", MEASURE_LOGLEVEL, *inputs,
         "-filter_complex", measurement_graph("[0:a:0]", sample_rate), "-map", "[measured]", "-f", "null", "-"],
        timeout=timeout,
        what=f"measuring {path.name}",
    )  # fmt: skip
    rate_found = _RE_IN_RATE.findall(res.stderr)
    return parse_measurement(res.stderr, int(rate_found[0]) if rate_found else 0, f"measuring {path.name}")


MEASURE_LOGLEVEL = "repeat+level+info"  # parse_measurement reads astats' and ebur128's info-level summaries
TRUE_PEAK_RATE = 192000  # BS.1770-4 Annex 2: oversample to at least 192 kHz (8x at 24 kHz, 4x at 48 kHz)


def measurement_graph(source: str, sample_rate: int | None) -> str:
    """Filtergraph (for -filter_complex) that measures the stream labelled `source`; its output is
    `[measured]`, to be mapped to the null muxer, and ffmpeg must log at MEASURE_LOGLEVEL.

    `astats@decoded` sees the decoded samples (exact count, RMS, sample peak, one "Channel: n" line per
    channel). Then, in the same chain (a branch with asplit measured ~8 % slower):
    - loudness: ebur128 (integrated, LRA) at 48 kHz: on other rates ffmpeg's K-weighting reads up to +0.2 LU
      high (8 kHz), soxr upsampling removes that bias without changing the content. At 22.05 kHz and above
      the bias is below 0.05 LU and the resampler costs ~15 % of the run, so only lower rates (or an unknown
      one) are upsampled.
    - true peak: soxr upsamples to TRUE_PEAK_RATE and `astats@truepeak` takes the sample peak of that,
      printed to 6 decimals. Float throughout (aformat), so peaks over 0 dBFS are kept; both resamplers pass
      up to 0.99 of Nyquist, so the top of the band counts. This is BS.1770's definition with a better
      interpolator than ebur128's own (peak=true), which costs three times as much (15-min mp3: 1.5 s of CPU
      instead of 0.5 s) and prints its summary rounded to 0.1 dB. The two agree within 0.01 dB
      (tests/test_loudness.py).
    ebur128's per-frame log goes to the verbose level (`framelog=verbose`, hidden at MEASURE_LOGLEVEL; ffmpeg
    5.x has no `quiet` and logs every 100 ms frame at info for any other value).
    """
    upsample = "aresample=48000:resampler=soxr:cutoff=0.99," if not sample_rate or sample_rate < 22050 else ""
    return (
        f"{source}astats@decoded=metadata=0:reset=0:measure_perchannel=Number_of_samples"
        f":measure_overall=Number_of_samples+RMS_level+Peak_level,aformat=sample_fmts=flt,{upsample}"
        f"ebur128=framelog=verbose,aresample={TRUE_PEAK_RATE}:resampler=soxr:cutoff=0.99,aformat=sample_fmts=flt,"
        "astats@truepeak=metadata=0:reset=0:measure_perchannel=none:measure_overall=Peak_level[measured]"
    )


def _true_peak(oversampled: float | None, sample_peak: float | None) -> float | None:
    """The true peak is never below the sample peak; at rates that do not divide 192 kHz (44.1 kHz) the
    oversampled signal need not contain the original samples and may read up to ~0.001 dB low. No
    oversampled reading (silence) stays None: a sample peak is not passed off as a true peak."""
    if oversampled is None or sample_peak is None:
        return oversampled
    return max(oversampled, sample_peak)


def parse_measurement(err: str, rate: int, what: str) -> Measurement:
    """The Measurement in the stderr of an ffmpeg run that used measurement_graph(); `rate` is the rate of
    the measured stream as decoded. Raises FFmpegError when nothing was decoded."""
    errors = [line for line in err.splitlines() if "[error]" in line or "[fatal]" in line]
    samples_found = _RE_SAMPLES.findall(err)
    if not samples_found or not rate:
        raise FFmpegError(f"{what}: no audio decoded", err)
    samples = int(samples_found[-1])
    sample_peak = _value(_RE_PEAK, err)
    return Measurement(
        integrated_lufs=_value(_RE_I, err, floor=ABSOLUTE_GATE_LUFS),
        loudness_range_lu=_value(_RE_LRA, err),
        true_peak_dbtp=_true_peak(_value(_RE_TP, err), sample_peak),
        sample_peak_db=sample_peak,
        rms_db=_value(_RE_RMS, err),
        duration_s=samples / rate,
        samples=samples,
        sample_rate=rate,
        channels=len(set(_RE_CHANNEL.findall(err))) or 1,
        decode_errors=len(errors),
        error_lines=tuple(errors[:5]),
    )
