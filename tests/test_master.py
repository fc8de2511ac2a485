"""Mastering: every preset × format measured on the ENCODED file by an independent path (ffmpeg decode →
pyloudnorm for loudness, 4x oversampled numpy peak next to ebur128's true peak)."""

from __future__ import annotations

import math
import mimetypes
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mutagen.mp3 import MP3, BitrateMode
from scipy.signal import resample_poly

from audio import ffmpeg
from audio import master as master_module
from audio.errors import OutputTooLarge
from audio.loudness import LoudnessMeter, PeakProfile, measure_file
from audio.master import FORMATS, LimiterModel, legal_bitrate, master, output_rate
from audio.model import LOUDNESS_PRESETS, EncodeOptions, LoudnessTarget
from tests.test_loudness import decode_f32, reference_lufs, speech_like, write_f32

real_capabilities = ffmpeg.capabilities
FMTS = ["mp3", "m4a", "ogg", "flac", "wav"]
TARGETS = {**LOUDNESS_PRESETS, "-18 LUFS": LoudnessTarget("-18 LUFS", -18.0)}
DEMUX = {"mp3": "mp3", "m4a": "mov", "ogg": "ogg", "flac": "flac", "wav": "wav"}


class Programme:
    def __init__(self, path: Path, x: np.ndarray, rate: int, channels: int) -> None:
        self.path, self.x, self.rate, self.channels = path, x, rate, channels
        meter = LoudnessMeter(rate, channels)
        meter.add(x)
        self.lufs, self.rms = meter.integrated(), meter.rms_db()
        self.duration_s = len(x) / rate

    def master(self, target: LoudnessTarget, workdir: Path, measured: bool = True, **options):
        options.setdefault("channels", self.channels)
        lufs, rms = (self.lufs, self.rms) if measured else (None, None)
        return master(self.path, self.rate, self.channels, lufs, rms, target, EncodeOptions(**options), workdir)


def programme(d: Path, name: str, x: np.ndarray, rate: int) -> Programme:
    return Programme(write_f32(d / f"{name}.f32", x), x, rate, 1 if x.ndim == 1 else x.shape[1])


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    d = tmp_path_factory.mktemp("programmes")
    return {
        # speech with a peak-to-loudness ratio of ~17 dB, like TTS output
        "mono24": programme(d, "mono24", speech_like(8.0, 24000, seed=1, stress_db=10), 24000),
        "stereo44": programme(d, "stereo44", speech_like(8.0, 44100, 2, seed=2, stress_db=10), 44100),
        "mono22": programme(d, "mono22", speech_like(5.0, 22050, seed=3), 22050),
    }


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def true_peak_db(x: np.ndarray) -> float:
    """Independent true peak: 4x polyphase oversampling (numpy/scipy), max over channels."""
    up = resample_poly(x.astype(np.float64), 4, 1, axis=0)
    return 20 * math.log10(max(np.abs(up).max(), np.abs(x).max()))


def check_file(e, fmt: str, prog: Programme) -> np.ndarray:
    """Container facts every result must have; returns the decoded samples."""
    assert e.path.is_file() and e.path.suffix == e.extension
    assert mimetypes.guess_extension(e.mime_type) == e.extension
    assert e.size_bytes == e.path.stat().st_size
    m = measure_file(e.path, DEMUX[fmt])
    assert m.decode_errors == 0
    assert e.duration_s == pytest.approx(prog.duration_s, abs=0.06)
    if fmt in ("wav", "flac") and e.sample_rate == prog.rate:
        assert m.samples == len(prog.x)
    samples, _, _ = decode_f32(e.path, DEMUX[fmt])
    return samples


# ------------------------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("preset", ["podcast", "mono_podcast", "broadcast", "-18 LUFS", "audiobook", "off"])
def test_every_preset_and_format_meets_its_target(progs, tmp_path, preset, fmt):
    prog, target = progs["mono24"], TARGETS[preset]
    e = prog.master(target, tmp_path, fmt=fmt)
    samples = check_file(e, fmt, prog)
    rate = 48000 if fmt == "ogg" else e.sample_rate
    lufs = reference_lufs(samples, rate)
    tp = true_peak_db(samples)
    assert e.true_peak_dbtp <= target.true_peak
    assert tp <= target.true_peak + 0.1  # a different oversampler than ebur128's
    if target.rms_range:  # ACX: RMS −23…−18 dB, peaks ≤ −3 dB
        rms = 10 * math.log10(np.mean(np.square(samples, dtype=np.float64)))
        assert target.rms_range[0] <= rms <= target.rms_range[1]
        assert tp <= -3.0
    elif target.integrated is not None:
        assert lufs == pytest.approx(target.integrated, abs=1.0)
        assert e.loudness_lufs == pytest.approx(target.integrated, abs=1.0)
    else:  # off: no gain, the programme's own loudness (the codec may shave a little)
        assert e.gain_db == 0
        assert lufs == pytest.approx(prog.lufs, abs=0.6)


@pytest.mark.parametrize("fmt", FMTS)
def test_streaming_target_on_stereo(progs, tmp_path, fmt):
    prog, target = progs["stereo44"], LOUDNESS_PRESETS["streaming"]
    e = prog.master(target, tmp_path, fmt=fmt)
    samples = check_file(e, fmt, prog)
    assert samples.shape[1] == 2 and e.channels == 2
    assert reference_lufs(samples, 48000 if fmt == "ogg" else 44100) == pytest.approx(-14.0, abs=1.0)
    assert e.true_peak_dbtp <= -1.0 and true_peak_db(samples) <= -0.9


@pytest.mark.parametrize("fmt", FMTS)
def test_streaming_on_peaky_mono_speech_is_close_or_explained(progs, tmp_path, fmt):
    """−14 LUFS with peaks ≤ −1 dBTP needs more than MAX_LIMITING_LU of limiting on this speech for lossy
    codecs: master stops there, keeps the ceiling and says so rather than crushing the speech."""
    prog = progs["mono24"]
    e = prog.master(LOUDNESS_PRESETS["streaming"], tmp_path, fmt=fmt)
    samples = check_file(e, fmt, prog)
    lufs = reference_lufs(samples, 48000 if fmt == "ogg" else 24000)
    assert e.true_peak_dbtp <= -1.0
    assert lufs == pytest.approx(-14.0, abs=2.0)
    if abs(lufs + 14.0) > 1.0:
        assert any("peaks" in note or "misses" in note for note in e.notes), e.notes


@pytest.mark.parametrize("prog", ["stereo44", "mono22"])
@pytest.mark.parametrize("fmt", FMTS)
def test_the_measurement_taken_while_encoding_equals_reading_the_file_back(progs, tmp_path, fmt, prog):
    """master measures through a loopback decoder inside the encoding run; a separate decode of the written
    file must agree: same loudness and peaks, and (AAC/Opus end padding accounted for) the same length."""
    e = progs[prog].master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt=fmt)
    m = measure_file(e.path, DEMUX[fmt], sample_rate=e.sample_rate)  # same rule for ebur128's 48 kHz upsampling
    assert e.loudness_lufs == pytest.approx(m.integrated_lufs, abs=0.02)
    assert e.true_peak_dbtp == pytest.approx(m.true_peak_dbtp, abs=0.02)
    assert e.rms_db == pytest.approx(m.rms_db, abs=0.02)
    assert e.channels == m.channels == progs[prog].channels
    assert e.duration_s == m.duration_s


@pytest.mark.parametrize("prog", ["stereo44", "mono22"])
@pytest.mark.parametrize("fmt", FMTS)
def test_without_a_loopback_decoder_the_file_is_measured_after_with_the_same_figures(
    progs, tmp_path, monkeypatch, fmt, prog
):
    """ffmpeg 5.x/6.x has no `-dec`: master encodes, then measures the written file (audio.ffmpeg picks such a
    binary only when nothing better is there). Same binary both ways here, so the figures must be equal."""
    with_loopback = progs[prog].master(LOUDNESS_PRESETS["podcast"], mkdir(tmp_path / "a"), fmt=fmt)
    real_run, runs = ffmpeg.run, []

    def spy(args, **kwargs):
        runs.append([str(a) for a in args])
        return real_run(args, **kwargs)

    monkeypatch.setattr(ffmpeg, "capabilities", lambda: replace(real_capabilities(), has_loopback=False))
    monkeypatch.setattr(ffmpeg, "run", spy)
    e = progs[prog].master(LOUDNESS_PRESETS["podcast"], mkdir(tmp_path / "b"), fmt=fmt)
    assert runs and not any("-dec" in args for args in runs)
    assert len(runs) == 2 * e.encodes  # an encode and a measurement each time
    m = measure_file(e.path, DEMUX[fmt], sample_rate=e.sample_rate)
    for got in (e, with_loopback):
        assert got.loudness_lufs == pytest.approx(m.integrated_lufs, abs=0.02)
        assert got.true_peak_dbtp == pytest.approx(m.true_peak_dbtp, abs=0.02)
        assert got.rms_db == pytest.approx(m.rms_db, abs=0.02)
        assert got.duration_s == m.duration_s and got.channels == m.channels
    same = ("gain_db", "encodes", "size_bytes")
    assert [getattr(e, k) for k in same] == [getattr(with_loopback, k) for k in same]


def _stubborn_peak(monkeypatch, over_for: int) -> list[tuple[float, float]]:
    """Make the first `over_for` encodes report a true peak of -0.7 dBTP whatever the gain, as LAME did at
    one hard-limited transient of the 41-minute benchmark; returns the (gain, threshold) of every encode."""
    real = master_module._encode
    calls: list[tuple[float, float]] = []

    def encode(*args):
        m = real(*args)
        calls.append((args[7], args[8]))
        return replace(m, true_peak_dbtp=-0.7) if len(calls) <= over_for else m

    monkeypatch.setattr(master_module, "_encode", encode)
    return calls


def test_a_peak_that_does_not_scale_down_gets_one_more_encode(progs, tmp_path, monkeypatch):
    calls = _stubborn_peak(monkeypatch, over_for=2)
    e = progs["mono24"].master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3")
    assert e.encodes == 3 and len(calls) == 3
    (g1, l1), (g2, l2), (g3, l3) = calls
    assert g1 - g2 == pytest.approx(l1 - l2) and g2 - g3 == pytest.approx(0.3 + 0.3, abs=0.01)  # over + safety
    assert l3 == pytest.approx(l2 - 0.6, abs=0.01)
    assert e.true_peak_dbtp <= -1.0 and not any("ceiling" in n for n in e.notes)


def test_a_peak_still_over_after_the_retries_is_reported(progs, tmp_path, monkeypatch):
    calls = _stubborn_peak(monkeypatch, over_for=99)
    e = progs["mono24"].master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3")
    assert e.encodes == len(calls) == 2 + master_module.PEAK_RETRIES
    assert any("above the -1.0 dBTP ceiling" in n for n in e.notes), e.notes


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "ogg", "wav"])
def test_speech_normally_takes_one_encode(progs, tmp_path, fmt):
    e = progs["mono24"].master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt=fmt)
    assert e.encodes == 1


@pytest.mark.parametrize(
    "kbps, rate, channels, fast",
    [(64, 24000, 1, True), (32, 24000, 1, False), (128, 44100, 2, True), (64, 44100, 2, False), (96, 48000, 1, True)],
)
def test_lame_skips_noise_shaping_where_that_measured_better(progs, tmp_path, monkeypatch, kbps, rate, channels, fast):
    """mp3_fast decides; the encoding run must really carry LAME's -q 7 (ffmpeg's compression_level) then."""
    seen: list[list[str]] = []
    real = master_module.ffmpeg.run

    def run(args, *a, **k):
        seen.append(list(args))
        return real(args, *a, **k)

    monkeypatch.setattr(master_module.ffmpeg, "run", run)
    assert master_module.mp3_fast(kbps, rate, channels) is fast
    e = progs["mono24"].master(
        LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3", bitrate_kbps=kbps, sample_rate=rate, channels=channels
    )
    encodes = [a for a in seen if "libmp3lame" in a]
    assert len(encodes) == e.encodes >= 1
    for args in encodes:
        assert ("-compression_level" in args) is fast
        if fast:
            assert args[args.index("-compression_level") + 1] == "7"
    assert e.true_peak_dbtp <= -1.0 and abs(e.loudness_lufs + 16.0) <= 1.0


# ------------------------------------------------------------------------------------ edge programmes


def test_short_programme_is_normalized(tmp_path):
    prog = programme(tmp_path, "short", speech_like(1.5, 24000, seed=7, rms_db=-30, stress_db=4), 24000)
    for measured in (True, False):  # caller's meter value, or none: master measures itself
        e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, measured=measured, fmt="mp3")
        samples = check_file(e, "mp3", prog)
        assert reference_lufs(samples, 24000) == pytest.approx(-16.0, abs=1.0)
        assert e.true_peak_dbtp <= -1.0 and e.gain_db > 10


def test_clip_under_400ms_is_measured_without_gating(tmp_path):
    prog = programme(tmp_path, "clip", speech_like(0.3, 24000, seed=6, rms_db=-32), 24000)
    assert prog.lufs is None  # no complete BS.1770 block
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, measured=False, fmt="wav")
    assert any("without gating" in n for n in e.notes)
    samples, _, _ = decode_f32(e.path, "wav")
    meter = LoudnessMeter(24000, 1)
    meter.add(samples)
    assert meter.ungated() == pytest.approx(-16.0, abs=1.0)
    assert true_peak_db(samples) <= -0.9


def test_a_click_does_not_break_the_ceiling(tmp_path):
    x = speech_like(6.0, 24000, seed=8, rms_db=-30)
    x[30000:30004] = [1.0, -1.0, 1.0, -0.9]  # full-scale click in quiet speech
    prog = programme(tmp_path, "click", x, 24000)
    for fmt in ("mp3", "wav"):
        e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt=fmt)
        samples = check_file(e, fmt, prog)
        assert e.true_peak_dbtp <= -1.0 and true_peak_db(samples) <= -0.9
        assert reference_lufs(samples, 24000) == pytest.approx(-16.0, abs=1.0)


def test_silent_programme_is_left_alone(tmp_path):
    prog = programme(tmp_path, "silence", np.zeros(24000 * 3, np.float32), 24000)
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3")
    assert e.gain_db == 0 and e.loudness_lufs is None
    assert any("silent" in n for n in e.notes)
    assert e.duration_s == pytest.approx(3.0, abs=0.05)


def test_off_leaves_quiet_speech_untouched(progs, tmp_path):
    prog = progs["mono24"]
    e = prog.master(LOUDNESS_PRESETS["off"], tmp_path, fmt="wav")
    samples, _, _ = decode_f32(e.path, "wav")
    # peaks are under the ceiling, so the limiter passes the audio through (16-bit rounding aside)
    assert np.abs(samples[:, 0] - prog.x).max() < 2e-3


# --------------------------------------------------------------------------------- formats and headers


def test_mp3_has_an_info_header_and_its_duration_is_right(progs, tmp_path):
    prog = progs["mono24"]
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3")
    head = e.path.read_bytes()[:4096]
    assert b"Info" in head or b"Xing" in head
    info = MP3(e.path).info
    assert info.bitrate_mode == BitrateMode.CBR and info.bitrate == 64000
    assert info.length == pytest.approx(measure_file(e.path, "mp3").duration_s, abs=0.1)
    assert info.length == pytest.approx(prog.duration_s, abs=0.1)


def test_mp3_bitrate_is_clamped_for_24khz(progs, tmp_path):
    e = progs["mono24"].master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3", bitrate_kbps=192)
    assert e.bitrate_kbps == 160
    assert any("192" in n and "160" in n for n in e.notes)
    assert MP3(e.path).info.bitrate == 160000


def test_resample_and_downmix_in_the_same_run(progs, tmp_path):
    prog = progs["stereo44"]
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3", sample_rate=22050, channels=1)
    samples = check_file(e, "mp3", prog)
    assert e.sample_rate == 22050 and e.channels == 1 and samples.shape[1] == 1
    assert reference_lufs(samples, 22050) == pytest.approx(-16.0, abs=1.0)
    assert e.true_peak_dbtp <= -1.0


def test_opus_gets_the_next_supported_rate(progs, tmp_path):
    prog = progs["mono22"]
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="ogg")
    assert e.sample_rate == 24000 and any("24000 Hz" in n for n in e.notes)
    assert e.mime_type == "audio/opus" and e.extension == ".opus"
    check_file(e, "ogg", prog)
    assert prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="m4a").sample_rate == 22050


def test_mime_types_give_the_right_dify_extension():
    expected = {"mp3": ".mp3", "m4a": ".m4a", "ogg": ".opus", "flac": ".flac", "wav": ".wav"}
    for fmt, spec in FORMATS.items():
        assert spec.extension == expected[fmt]
        assert mimetypes.guess_extension(spec.mime_type) == expected[fmt], spec.mime_type


def test_bitrate_and_rate_rules():
    assert legal_bitrate("mp3", 192, 24000) == 160
    assert legal_bitrate("mp3", 24, 44100) == 32
    assert legal_bitrate("mp3", 128, 8000) == 64
    assert legal_bitrate("mp3", 64, 22050) == 64
    assert legal_bitrate("ogg", 24, 48000) == 24
    assert output_rate("ogg", 22050) == 24000 and output_rate("ogg", 44100) == 48000
    assert output_rate("mp3", 96000) == 48000 and output_rate("wav", 96000) == 96000


# ---------------------------------------------------------------------------------------- size guard


def test_size_guard_lowers_the_bitrate(tmp_path):
    prog = programme(tmp_path, "long", speech_like(20.0, 24000, seed=9), 24000)
    e = prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3", max_bytes=200_000)
    assert e.bitrate_kbps == 32
    assert any("lowered from 64 to 32" in n for n in e.notes)
    assert e.size_bytes <= 200_000
    assert MP3(e.path).info.bitrate == 32000


def test_nothing_fits_raises_a_useful_error(tmp_path):
    prog = programme(tmp_path, "long", speech_like(20.0, 24000, seed=9), 24000)
    with pytest.raises(OutputTooLarge) as err:
        prog.master(LOUDNESS_PRESETS["podcast"], tmp_path, fmt="mp3", max_bytes=70_000)
    text = str(err.value)
    assert "20.0 s" in text and "0.1 MiB" in text and "24 kbit/s" in text
    assert "shorten the text" in text and "raise the maximum output size" in text
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    with pytest.raises(OutputTooLarge, match="mp3 or ogg instead of wav/flac"):
        prog.master(LOUDNESS_PRESETS["podcast"], wav_dir, fmt="wav", max_bytes=500_000)
    assert not list(wav_dir.iterdir())  # refused before encoding: the size is exact
    with pytest.raises(OutputTooLarge, match="as flac it takes"):
        prog.master(LOUDNESS_PRESETS["podcast"], wav_dir, fmt="flac", max_bytes=100_000)


# ------------------------------------------------------------------------------------- limiter model


def test_limiter_model_predicts_alimiter(progs, tmp_path):
    prog = progs["mono24"]
    profile = PeakProfile(prog.rate, 1)
    profile.add(prog.x)
    model = LimiterModel(profile)
    for gain, limit in ((2.0, -1.5), (6.0, -2.0), (9.0, -3.0)):
        af = (
            f"volume={gain}dB,aresample={4 * prog.rate}:resampler=soxr,"
            f"alimiter=limit={10 ** (limit / 20)}:attack=5:release=50:level=false:latency=true,"
            f"aresample={prog.rate}:resampler=soxr"
        )
        out = ffmpeg.run([*ffmpeg.raw_input_args(prog.path, prog.rate, 1), "-af", af, "-f", "f32le", "-"]).stdout
        y = np.frombuffer(out, "<f4")
        assert len(y) == len(prog.x)  # alimiter's latency is compensated: timeline unchanged
        meter = LoudnessMeter(prog.rate, 1)
        meter.add(y)
        actual = prog.lufs + gain - meter.integrated()
        assert model.losses(gain, limit)[0] == pytest.approx(actual, abs=max(0.15, 0.1 * actual))
