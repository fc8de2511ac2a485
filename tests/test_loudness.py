"""BS.1770 meter against pyloudnorm (an independent implementation), and one-run file measurement."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import lfilter
from scipy.signal.windows import tukey

from audio import ffmpeg
from audio.errors import FFmpegError
from audio.loudness import LoudnessMeter, PeakProfile, k_weighting_sos, measure_file, meter_raw_file, sniff_format


def speech_like(
    seconds: float, rate: int, channels: int = 1, seed: int = 0, rms_db: float = -20.0, stress_db: float = 10.0
) -> np.ndarray:
    """Speech-like float32 PCM, shape (n,) mono or (n, 2): glottal pulses (varying pitch) through three
    formants (vowel crest factor ~9 dB), syllables of random length and stress (0 to −stress_db) with
    steady vowels, fricative noise, pauses. Peak-to-loudness ratio ~18 dB, peaks sparse as in real speech."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, 6)) + 6 * np.sin(2 * np.pi * 2.9 * t)
    pulses = np.diff(np.floor(np.cumsum(f0 / rate)), prepend=0.0)
    glottal = lfilter([1.0], [1.0, -1.9 * 0.97, 0.97 * 0.97 * 0.95], pulses)
    voiced = np.zeros(n)
    for fc, bw, gain in ((600, 90, 1.0), (1400, 130, 0.6), (2600, 200, 0.3)):
        r = math.exp(-math.pi * bw / rate)
        voiced += gain * lfilter([1 - r], [1, -2 * r * math.cos(2 * math.pi * fc / rate), r * r], glottal)
    voiced = np.diff(voiced, prepend=0.0)
    env = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.12, 0.3) * rate)
        seg = tukey(length, 0.5)[: n - pos] * 10 ** (-rng.uniform(0, stress_db) / 20)
        env[pos : pos + seg.size] = seg
        pos += length + int((rng.uniform(0.15, 0.45) if rng.random() < 0.25 else 0.02) * rate)
    noise = lfilter([1, -0.8], [1], rng.standard_normal(n))
    fric = (rng.random(n // 2000 + 1) < 0.2).repeat(2000)[:n]
    x = np.where(fric, 0.02 * noise, voiced) * env
    x *= 10 ** (rms_db / 20) / np.sqrt(np.mean(x**2))
    if channels == 2:
        x = np.stack([x, 0.8 * np.roll(x, int(0.0003 * rate))], axis=1)
    return x.astype(np.float32)


def write_f32(path: Path, x: np.ndarray) -> Path:
    np.ascontiguousarray(x, dtype="<f4").tofile(path)
    return path


def encode(src: Path, rate: int, channels: int, out: Path, *codec: str) -> Path:
    ffmpeg.run([*ffmpeg.raw_input_args(src, rate, channels), *codec, str(out)])
    return out


def decode_f32(path: Path, fmt: str) -> tuple[np.ndarray, int, int]:
    """An independent decode (not measure_file): samples as float32 frames × channels, rate, channels."""
    m = measure_file(path, fmt)  # only to learn rate/channels
    out = ffmpeg.run([*ffmpeg.input_args(path, fmt), "-f", "f32le", "-c:a", "pcm_f32le", "-"]).stdout
    return np.frombuffer(out, "<f4").reshape(-1, m.channels), m.sample_rate, m.channels


def reference_lufs(x: np.ndarray, rate: int) -> float:
    return pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64))


# ------------------------------------------------------------------------------------------------ meter


@pytest.mark.parametrize("rate", [48000, 44100, 24000, 16000])
@pytest.mark.parametrize("channels", [1, 2])
def test_meter_matches_pyloudnorm(rate, channels):
    x = speech_like(6.0, rate, channels, seed=rate + channels)
    meter = LoudnessMeter(rate, channels)
    meter.add(x)
    # pyloudnorm's high-pass has a 0.04 dB lower passband gain than BS.1770's 48 kHz coefficients
    assert meter.integrated() == pytest.approx(reference_lufs(x, rate), abs=0.1)
    assert meter.duration_s == pytest.approx(6.0)


def test_k_weighting_reproduces_bs1770_coefficients_at_48k():
    sos = k_weighting_sos(48000)
    shelf_b = [1.53512485958697, -2.69169618940638, 1.19839281085285]
    shelf_a = [1.0, -1.69065929318241, 0.73248077421585]
    hp_a = [1.0, -1.99004745483398, 0.99007225036621]
    np.testing.assert_allclose(sos[0], shelf_b + shelf_a, atol=1e-9)
    np.testing.assert_allclose(sos[1], [1.0, -2.0, 1.0, *hp_a], atol=1e-9)


def test_meter_is_rate_independent():
    """The same content at 16 kHz and upsampled to 48 kHz reads the same (the K-filter is rate-exact)."""
    from scipy.signal import resample_poly

    x = speech_like(5.0, 16000, seed=3).astype(np.float64)
    a, b = LoudnessMeter(16000, 1), LoudnessMeter(48000, 1)
    a.add(x)
    b.add(resample_poly(x, 3, 1))
    assert a.integrated() == pytest.approx(b.integrated(), abs=0.05)


_PIECE_SIGNAL = speech_like(2.5, 16000, 2, seed=7)
_ONE_SHOT = LoudnessMeter(16000, 2)
_ONE_SHOT.add(_PIECE_SIGNAL)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9000), min_size=1, max_size=12))
def test_piecewise_feeding_equals_one_shot(cuts):
    meter = LoudnessMeter(16000, 2)
    bounds = sorted({min(c * 4, len(_PIECE_SIGNAL)) for c in cuts} | {0, len(_PIECE_SIGNAL)})
    for lo, hi in itertools.pairwise(bounds):
        meter.add(_PIECE_SIGNAL[lo:hi])
    assert meter.integrated() == pytest.approx(_ONE_SHOT.integrated(), abs=1e-9)
    assert meter.rms_db() == pytest.approx(_ONE_SHOT.rms_db(), abs=1e-9)
    assert meter.sample_peak_db() == _ONE_SHOT.sample_peak_db()
    assert meter.duration_s == _ONE_SHOT.duration_s


def test_silence_and_too_short_are_none():
    meter = LoudnessMeter(24000, 1)
    meter.add(np.zeros(24000 * 3, np.float32))
    assert meter.integrated() is None and meter.rms_db() is None and meter.sample_peak_db() is None
    assert meter.ungated() is None
    short = LoudnessMeter(24000, 1)
    short.add(speech_like(0.3, 24000))  # under one 400 ms block
    assert short.integrated() is None
    assert short.ungated() is not None and short.rms_db() is not None


def test_gating_ignores_long_silence():
    speech = speech_like(4.0, 24000, seed=5)
    hiss = (np.random.default_rng(1).standard_normal(24000 * 20) * 10 ** (-85 / 20)).astype(np.float32)
    with_gaps = np.concatenate([speech[:48000], hiss, speech[48000:]])
    alone, gapped = LoudnessMeter(24000, 1), LoudnessMeter(24000, 1)
    alone.add(speech)
    gapped.add(with_gaps)
    assert gapped.integrated() == pytest.approx(reference_lufs(with_gaps, 24000), abs=0.1)
    # only the blocks straddling the gap's edges differ; without the gates, 20 s of near-silence would count
    assert gapped.integrated() == pytest.approx(alone.integrated(), abs=0.5)
    assert gapped.ungated() < alone.integrated() - 6


def test_rms_and_peak_of_a_sine():
    t = np.arange(48000) / 48000
    meter = LoudnessMeter(48000, 1)
    meter.add((0.5 * np.sin(2 * np.pi * 997 * t)).astype(np.float32))
    assert meter.rms_db() == pytest.approx(20 * math.log10(0.5) - 3.0103, abs=0.01)
    assert meter.sample_peak_db() == pytest.approx(20 * math.log10(0.5), abs=0.01)


def test_meter_rejects_wrong_shape():
    with pytest.raises(ValueError):
        LoudnessMeter(24000, 2).add(np.zeros(100, np.float32))


def test_meter_raw_file_and_peak_profile_piecewise(tmp_path):
    x = speech_like(5.3, 22050, 2, seed=9)
    src = write_f32(tmp_path / "p.f32", x)
    m = meter_raw_file(src, 22050, 2)
    ref = LoudnessMeter(22050, 2)
    ref.add(x)
    assert m.integrated() == pytest.approx(ref.integrated(), abs=1e-9)
    whole, pieces = PeakProfile(22050, 2), PeakProfile(22050, 2)
    whole.add(x)
    for lo in range(0, len(x), 777):
        pieces.add(x[lo : lo + 777])
    for a, b in zip(whole.arrays(), pieces.arrays(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    peaks, energy = whole.arrays()
    assert peaks.max() == pytest.approx(np.abs(x).max())
    assert energy.sum() == pytest.approx(float(np.square(x, dtype=np.float64).sum()), rel=1e-4)


# ------------------------------------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    x = speech_like(6.0, 44100, 2, seed=11)
    src = write_f32(d / "p.f32", x)
    return {
        "x": x,
        "wav": encode(src, 44100, 2, d / "s.wav", "-c:a", "pcm_s16le", "-f", "wav"),
        "mp3": encode(src, 44100, 2, d / "s.mp3", "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"),
        "flac": encode(src, 44100, 2, d / "s.flac", "-c:a", "flac", "-f", "flac"),
        "ogg": encode(src, 44100, 2, d / "s.opus", "-c:a", "libopus", "-b:a", "64k", "-f", "ogg"),
        "m4a": encode(src, 44100, 2, d / "s.m4a", "-c:a", "aac", "-b:a", "96k", "-f", "mp4"),
    }


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "ogg", "m4a"])
def test_measure_file_matches_pyloudnorm_on_decoded_audio(speech_files, fmt):
    path = speech_files[fmt]
    m = measure_file(path, fmt)
    samples, rate, channels = decode_f32(path, fmt)
    assert channels == 2 and m.channels == 2
    assert rate == m.sample_rate == (48000 if fmt == "ogg" else 44100)
    assert m.samples == len(samples)
    assert m.integrated_lufs == pytest.approx(reference_lufs(samples, rate), abs=0.15)  # ebur128 prints 0.1
    assert m.decode_errors == 0 and m.error_lines == ()
    peak = 20 * math.log10(np.abs(samples).max())
    assert m.sample_peak_db == pytest.approx(peak, abs=0.05)
    assert m.true_peak_dbtp >= peak - 0.1
    rms = 10 * math.log10(np.mean(np.square(samples, dtype=np.float64)))
    assert m.rms_db == pytest.approx(rms, abs=0.05)


def ebur128_true_peak(path: Path, fmt: str) -> float:
    """ffmpeg's own BS.1770 true-peak meter (ebur128 peak=true), at full precision from its frame metadata."""
    log = path.with_suffix(".tp.log")
    ffmpeg.run([*ffmpeg.input_args(path, "mov" if fmt == "m4a" else fmt), "-af",
                f"ebur128=peak=true:framelog=verbose:metadata=1,ametadata=mode=print:key=lavfi.r128.true_peak"
                f":file={log}", "-f", "null", "-"])  # fmt: skip
    last = log.read_text().strip().splitlines()[-1]
    return 20 * math.log10(float(last.split("=")[1]))


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "m4a"])
def test_true_peak_agrees_with_ebur128_and_an_independent_oversampler(speech_files, fmt):
    """measure_file's true peak (soxr to 192 kHz + astats) equals ebur128's peak=true within 0.01 dB, agrees
    with a 4x polyphase oversampler in numpy (a shorter filter: within 0.1 dB) and is not rounded to 0.1 dB."""
    from scipy.signal import resample_poly

    m = measure_file(speech_files[fmt], fmt)
    samples, _, _ = decode_f32(speech_files[fmt], fmt)
    up = resample_poly(samples.astype(np.float64), 4, 1, axis=0)
    independent = 20 * math.log10(max(np.abs(up).max(), np.abs(samples).max()))
    assert m.true_peak_dbtp == pytest.approx(ebur128_true_peak(speech_files[fmt], fmt), abs=0.01)
    assert m.true_peak_dbtp == pytest.approx(independent, abs=0.1)
    assert m.true_peak_dbtp >= m.sample_peak_db - 1e-6
    assert abs(m.true_peak_dbtp * 10 - round(m.true_peak_dbtp * 10)) > 1e-6  # not a 0.1 dB summary value


def test_true_peak_over_full_scale_is_not_clipped(tmp_path):
    """A decoder or resampler that converts to 16-bit would report 0 dBFS for a file that goes over it; the
    meter stays in float, so an overshoot is measured as it is (what the limiter correction needs)."""
    x = 2.0 * speech_like(3.0, 24000, 1, seed=5) / np.abs(speech_like(3.0, 24000, 1, seed=5)).max()  # +6 dBFS
    src = write_f32(tmp_path / "loud.f32", x)
    f32wav = encode(src, 24000, 1, tmp_path / "loud.wav", "-c:a", "pcm_f32le", "-f", "wav")
    mp3 = encode(src, 24000, 1, tmp_path / "loud.mp3", "-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")
    for path, fmt in ((f32wav, "wav"), (mp3, "mp3")):
        m = measure_file(path, fmt)
        assert m.sample_peak_db > 5.0
        assert m.true_peak_dbtp >= m.sample_peak_db - 1e-6
        assert m.true_peak_dbtp == pytest.approx(ebur128_true_peak(path, fmt), abs=0.01)


def test_measure_wav_duration_is_exact(tmp_path):
    for frames in (24000 * 2 + 1, 12345):
        src = write_f32(tmp_path / "p.f32", speech_like(frames / 24000, 24000, seed=frames))
        wav = encode(src, 24000, 1, tmp_path / f"{frames}.wav", "-c:a", "pcm_s16le", "-f", "wav")
        m = measure_file(wav)
        assert m.samples == frames
        assert m.duration_s == frames / 24000


def test_measure_raw_pcm(tmp_path):
    x = speech_like(3.0, 16000, seed=2)
    m = measure_file(write_f32(tmp_path / "p.f32", x), "f32le", sample_rate=16000, channels=1)
    assert m.samples == len(x) and m.sample_rate == 16000 and m.channels == 1
    assert m.integrated_lufs == pytest.approx(reference_lufs(x, 16000), abs=0.15)


def test_sniffing_picks_the_demuxer(speech_files):
    for fmt in ("wav", "mp3", "flac", "ogg", "m4a"):
        path = speech_files[fmt]
        assert measure_file(path).samples == measure_file(path, fmt).samples
    assert sniff_format(b"\xff\xf1\x50\x80") == "aac"
    assert sniff_format(b"\xff\xfb\x90\x64") == "mp3"
    assert sniff_format(b"hello world!") is None


def test_decode_errors_counted_for_a_corrupted_mp3(speech_files, tmp_path):
    clean = speech_files["mp3"]
    assert measure_file(clean, "mp3").decode_errors == 0
    data = bytearray(clean.read_bytes())
    syncs = [i for i in range(2000, len(data) - 4) if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0]
    for i in syncs[::12][:6]:
        data[i + 2] = 0xFC  # bitrate index 15, sample rate index 3: invalid frame headers
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(bytes(data))
    m = measure_file(bad, "mp3")
    assert m.decode_errors > 0
    assert any("[error]" in line for line in m.error_lines)


def test_silent_file_has_no_loudness(tmp_path):
    src = write_f32(tmp_path / "z.f32", np.zeros(24000 * 2, np.float32))
    m = measure_file(encode(src, 24000, 1, tmp_path / "z.wav", "-c:a", "pcm_s16le", "-f", "wav"))
    assert m.integrated_lufs is None and m.true_peak_dbtp is None and m.rms_db is None
    assert m.samples == 48000


def test_unreadable_file_raises(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00" * 5000)
    with pytest.raises(FFmpegError):
        measure_file(junk, "mp3")
    with pytest.raises(FFmpegError, match="cannot tell"):
        measure_file(junk)
