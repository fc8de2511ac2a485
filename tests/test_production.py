"""The finished episode (audio.production), measured on the decoded output of real narrations (eSpeak).

- a 70 Hz bed (no overlap with eSpeak's speech) sits at `music_level` ± 2 dB relative to the speech while it
  speaks, ≥ 8 dB higher in a 3-second pause, and the speech still meets the loudness target;
- the bed's loop seam is continuous (no click, no swell), unlike a plain repetition;
- intro + narration + outro: duration, intro/outro loudness matched, every cue still on the speech it names;
- a bad local file fails naming its parameter before any TTS call.
"""

from __future__ import annotations

import io
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from audio import ffmpeg, media, production
from audio.cache import DiskCache
from audio.engine import EspeakEngine
from audio.errors import InvalidInput
from audio.loudness import LoudnessMeter
from audio.model import EncodeOptions
from audio.pipeline import Job, narrate
from tests import audiogen

BED_HZ = 70.0
CHORD = "0.3*sin(2*PI*%d*t)+0.2*sin(2*PI*%d*t)"
TEXT = (
    "Welcome to the show. This is the first part of our story, told slowly. "
    "[pause 3s] "
    "And here we continue after a long pause. That is all for today, thank you for listening."
)


def _lavfi(path: Path, expr: str, seconds: float, *codec: str) -> Path:
    ffmpeg.run(["-f", "lavfi", "-i", f"aevalsrc={expr}:s=44100:d={seconds}", *codec, ffmpeg.file_url(path)])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        # 4.33 s of 70 Hz is 303.1 periods: a plain repetition would jump at every seam
        "music": _lavfi(d / "bed.flac", f"0.3*sin(2*PI*{BED_HZ:g}*t)", 4.33, "-f", "flac"),
        "intro": _lavfi(d / "intro.mp3", CHORD % (440, 554), 2.5, "-c:a", "libmp3lame", "-f", "mp3"),
        "outro": _lavfi(d / "outro.m4a", CHORD % (330, 415), 2.0, "-c:a", "aac", "-f", "mp4"),
    }


class Counting:
    """The embedded engine, counting calls."""

    def __init__(self) -> None:
        self.engine = EspeakEngine()
        self.calls = 0
        self.cache_namespace = self.engine.cache_namespace

    def __call__(self, text: str, voice: str | None):
        self.calls += 1
        return self.engine(text, voice)


def wav_pcm(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0, w.getframerate()


def loudness(x: np.ndarray, rate: int) -> float:
    meter = LoudnessMeter(rate, 1)
    meter.add(x)
    value = meter.integrated()
    assert value is not None
    return value


def tone_level(x: np.ndarray, rate: int, hz: float = BED_HZ) -> float:
    """Amplitude of the `hz` component (Hann-windowed projection: speech leaks in by < 1 %)."""
    t = np.arange(len(x)) / rate
    w = np.hanning(len(x))
    return float(2 * abs(np.sum(w * x * np.exp(-2j * np.pi * hz * t))) / np.sum(w))


def tone_lufs(amplitude: float, rate: int) -> float:
    """The loudness of a `BED_HZ` sine of this amplitude (K-weighting at 70 Hz calibrated with the meter)."""
    t = np.arange(2 * rate) / rate
    return loudness(np.sin(2 * np.pi * BED_HZ * t), rate) + 20 * np.log10(amplitude)


def without_bed(x: np.ndarray, rate: int) -> np.ndarray:
    """The speech alone: an 8th-order 150 Hz high-pass takes the 70 Hz bed down by > 45 dB."""
    return sosfilt(butter(8, 150, btype="highpass", fs=rate, output="sos"), x)


def test_bed_is_ducked_under_speech_and_up_in_pauses(files):
    tts = Counting()
    level = -20.0
    job = Job(text=TEXT, encode=EncodeOptions(fmt="wav"), music=files["music"], music_level=level, subtitles="vtt")
    result = narrate(job, tts)
    x, rate = wav_pcm(result.data)
    first, last = result.timeline[0], result.timeline[-1]
    assert first.start == pytest.approx(production.BED_LEAD_S, abs=0.01)

    speech = loudness(without_bed(x, rate)[int(first.start * rate) : int(last.end * rate)], rate)
    assert abs(speech - job.loudness.integrated) <= 1.0, speech  # the target applies to the speech
    assert result.stats.speech_loudness_lufs == pytest.approx(speech, abs=1.0)
    assert abs(result.loudness_lufs - job.loudness.integrated) <= 1.0  # and the file still meets it
    assert result.true_peak_dbtp <= job.loudness.true_peak

    under = []
    for e in result.timeline:  # the middle of every sentence: the bed is fully down
        seg = x[int((e.start + 0.1) * rate) : int((e.end - 0.1) * rate)]
        under.append(tone_lufs(tone_level(seg, rate), rate) - speech)
    assert all(abs(u - level) <= 2.0 for u in under), under
    assert result.stats.music_level_lu == pytest.approx(level, abs=0.5)

    gap = result.timeline[2].start - result.timeline[1].end
    assert gap >= 3.0
    mid = (result.timeline[1].end + result.timeline[2].start) / 2
    pause = tone_lufs(tone_level(x[int((mid - 0.5) * rate) : int((mid + 0.5) * rate)], rate), rate) - speech
    assert pause >= max(under) + 8.0, (pause, under)
    assert pause <= -3.0  # never above the speech
    # look-ahead: the bed is already down 20 ms before the first syllable of the part after the pause
    lead = x[int((result.timeline[2].start - 0.12) * rate) : int((result.timeline[2].start - 0.02) * rate)]
    assert tone_lufs(tone_level(lead, rate), rate) - speech <= level + 3.0
    # fades: the bed starts and ends in silence
    assert np.max(np.abs(x[:50])) < 1e-3 and np.max(np.abs(x[-50:])) < 1e-3
    print(f"\nbed under speech {np.round(under, 2)} LU (target {level}), in the 3 s pause {pause:.1f} LU, "
          f"speech {speech:.2f} LUFS, file {result.loudness_lufs:.2f} LUFS, tp {result.true_peak_dbtp:.2f} dBTP")


def test_loop_seam_is_continuous(files, tmp_path):
    rate = 24000
    warnings: list[str] = []
    bed = production._Bed.load(files["music"], tmp_path, rate, 1, 20 * rate, warnings)
    assert bed.loops and not warnings
    y = bed.samples(0, 3 * bed.period + rate)[:, 0].astype(np.float64)
    assert np.array_equal(np.concatenate([bed.samples(0, 777), bed.samples(777, len(y) - 777)])[:, 0], y)
    seams = [bed.period * m for m in (1, 2, 3)]
    delta = np.abs(np.diff(y))
    near = np.zeros(len(delta), dtype=bool)
    for s in seams:
        near[s - 5 : s + 5] = True
    assert delta[near].max() <= delta[~near].max() * 1.01  # no click where the loop restarts
    # no swell or dip through the crossfade: 20 ms RMS stays within ±0.5 dB of the steady level
    win = rate // 50
    rms = np.sqrt(np.convolve(y * y, np.ones(win) / win, mode="valid"))[win:-win]
    steady = np.sqrt(np.mean(y[: bed.period] ** 2))
    assert np.all(np.abs(20 * np.log10(rms / steady)) < 0.5)
    # the control: repeating the file as it is clicks at the seam
    naive = np.tile(np.asarray(bed.pcm[:, 0], dtype=np.float64), 2)
    jump = abs(naive[len(bed.pcm)] - naive[len(bed.pcm) - 1])
    assert jump > 5 * delta[~near].max()


def test_loop_crossfade_keeps_power_for_unrelated_material():
    rng = np.random.default_rng(1)
    n = 48000
    tail, head = rng.standard_normal((n, 1)), rng.standard_normal((n, 1))
    y = production.loop_crossfade(tail, head)[:, 0]
    mid = y[n // 2 - 2000 : n // 2 + 2000]
    assert 20 * np.log10(np.sqrt(np.mean(mid**2))) == pytest.approx(0.0, abs=0.5)  # equal power, no dip


def test_intro_and_outro_shift_the_timeline_and_match_loudness(files, tmp_path):
    text = "# The opening of our little show\n\nWelcome to the show.\n\n# News\n\nHere is the news of the day. Goodbye."
    cache = DiskCache(tmp_path / "cache")
    tts = Counting()
    base = narrate(Job(text=text, encode=EncodeOptions(fmt="wav"), subtitles="vtt"), tts, cache=cache)
    job = Job(
        text=text, encode=EncodeOptions(fmt="wav"), subtitles="vtt", intro=files["intro"], outro=files["outro"]
    )
    result = narrate(job, tts, cache=cache)
    x, rate = wav_pcm(result.data)
    b, _ = wav_pcm(base.data)
    intro_s, outro_s = result.stats.intro_s, result.stats.outro_s
    assert intro_s == pytest.approx(2.5, abs=0.06) and outro_s == pytest.approx(2.0, abs=0.06)
    shift = intro_s - job.intro_overlap_ms / 1000
    expected = shift + base.duration_s + production.OUTRO_PAUSE_S + outro_s
    assert result.duration_s == pytest.approx(expected, abs=0.02)

    # every cue and chapter moved by exactly the intro (minus its overlap), and lands on the same speech
    cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})", result.subtitles)
    base_cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})", base.subtitles)
    assert len(cues) == len(base_cues) == len(result.timeline) == 5

    def secs(h, m, s, ms):
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    for cue, old, e in zip(cues, base_cues, result.timeline, strict=True):
        start, end = secs(*cue[:4]), secs(*cue[4:])
        assert start == pytest.approx(secs(*old[:4]) + shift, abs=0.002)
        assert end == pytest.approx(secs(*old[4:]) + shift, abs=0.002)
        skip = 0.05 + max(0.0, intro_s - start)  # past the intro's tail, which overlaps the first words
        new_seg = x[int((start + skip) * rate) : int((end - 0.05) * rate)]
        assert len(new_seg) > 0.2 * rate
        old_seg = b[int((secs(*old[:4]) + skip) * rate) :][: len(new_seg)]
        corr = np.dot(new_seg, old_seg) / np.sqrt(np.dot(new_seg, new_seg) * np.dot(old_seg, old_seg))
        assert corr > 0.99, (e.text, corr)  # the same speech, where the cue says
    assert [c.title for c in result.chapters] == ["The opening of our little show", "News"]
    assert result.chapters[0].start == 0.0
    assert result.chapters[1].start == pytest.approx(base.chapters[1].start + shift, abs=0.002)

    speech = loudness(x[int(result.timeline[0].start * rate) : int(result.timeline[-1].end * rate)], rate)
    intro = loudness(x[: int((shift - 0.01) * rate)], rate)
    outro_at = result.timeline[-1].end + production.OUTRO_PAUSE_S
    outro = loudness(x[int((outro_at + 0.05) * rate) :], rate)
    assert abs(intro - speech) <= 1.5 and abs(outro - speech) <= 1.5, (intro, outro, speech)
    assert abs(result.loudness_lufs - job.loudness.integrated) <= 1.0
    print(f"\nspeech {speech:.2f} LUFS, intro {intro:.2f}, outro {outro:.2f}; duration {result.duration_s:.3f} s "
          f"(expected {expected:.3f})")


@pytest.mark.parametrize("param", ["intro", "outro", "music"])
def test_a_file_that_is_not_audio_fails_before_any_tts_call(files, tmp_path, param):
    bad = tmp_path / "notes.mp3"
    bad.write_text("These are my show notes, not audio at all. " * 20)
    tts = Counting()
    with pytest.raises(InvalidInput) as err:
        narrate(Job(text=TEXT, **{param: bad}), tts)
    assert err.value.param == param and "not an audio file" in str(err.value)
    assert tts.calls == 0


def test_a_corrupt_audio_file_fails_before_any_tts_call(tmp_path):
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    tts = Counting()
    with pytest.raises(InvalidInput) as err:
        narrate(Job(text=TEXT, music=bad), tts)
    assert err.value.param == "music" and "could not be decoded" in str(err.value)
    assert tts.calls == 0


def test_cli_makes_an_episode_with_the_demo_pad(files, tmp_path):
    from scripts.make_pad import make_pad
    from tests.test_cli import run_cli

    pad = make_pad(tmp_path / "pad.flac", seconds=8.0)
    out = tmp_path / "episode.mp3"
    proc = run_cli("narrate", "-", "-o", out, "--quiet", "--no-cache", "--stats", "--intro", files["intro"],
                   "--outro", files["outro"], "--music", pad, "--music-level", "-24",
                   stdin=b"Hello there. [pause 2s] This is a short episode with music under it.")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["music_level_lu"] == pytest.approx(-24.0, abs=1.0)
    assert stats["intro_s"] == pytest.approx(2.5, abs=0.06) and stats["outro_s"] == pytest.approx(2.0, abs=0.06)
    assert stats["timeline"][0]["start"] == pytest.approx(2.0 + production.BED_LEAD_S, abs=0.01)
    assert abs(stats["loudness_lufs"] - (-16.0)) <= 1.0


@pytest.mark.parametrize(("flags", "param"), [
    (["--music", "/nonexistent.mp3"], "--music"),
    (["--music-level", "-3"], "--music-level"),
    (["--intro-overlap-ms", "9000"], "--intro-overlap-ms"),
])  # fmt: skip
def test_cli_rejects_bad_production_options(flags, param):
    from tests.test_cli import run_cli

    proc = run_cli("narrate", "-", "-o", "-", "--quiet", "--no-cache", *flags, stdin=b"Hello.")
    assert proc.returncode != 0 and param in proc.stderr, proc.stderr


@pytest.mark.parametrize(("name", "codec", "demuxer"), [
    ("a.wav", ["-c:a", "pcm_s16le", "-f", "wav"], "wav"),
    ("a.opus", ["-c:a", "libopus", "-f", "ogg"], "ogg"),
    ("a.ogg", ["-c:a", "libvorbis", "-f", "ogg"], "ogg"),
    ("a.flac", ["-f", "flac"], "flac"),
    ("a.m4a", ["-c:a", "aac", "-f", "mp4"], "mov"),
    ("a.aac", ["-c:a", "aac", "-f", "adts"], "aac"),
    ("a.mp3", ["-c:a", "libmp3lame", "-f", "mp3"], "mp3"),
    ("misnamed.mp3", ["-f", "flac"], "flac"),  # the content decides, not the name
])  # fmt: skip
def test_accepted_formats_are_sniffed_and_decoded(tmp_path, name, codec, demuxer):
    path = _lavfi(tmp_path / name, "0.3*sin(2*PI*220*t)", 1.0, *codec)
    assert media.check("music", path) == demuxer
    frames, warnings = media.decode("music", path, tmp_path / "out.f32", 24000, 2, max_seconds=10)
    assert abs(frames - 24000) < 2048 and not warnings


def test_layout_of_an_episode():
    rate = 1000
    lay = production.layout(rate, speech=5000, intro=2000, outro=3000, music=True, intro_overlap_s=0.5)
    assert (lay.overlap, lay.bed0) == (500, 1500)  # the bed fades in under the intro's tail
    assert lay.speech0 == 1500 + production.BED_LEAD_S * rate and lay.speech1 == lay.speech0 + 5000
    assert lay.outro0 == lay.speech1 + production.OUTRO_PAUSE_S * rate and lay.end == lay.outro0 + 3000
    assert lay.bed1 == lay.outro0 + production.BED_UNDER_OUTRO_S * rate <= lay.end
    short = production.layout(rate, speech=5000, intro=600, outro=0, music=False, intro_overlap_s=5.0)
    assert short.overlap == 300 and short.speech0 == 300 and short.end == 5300  # overlap ≤ half the intro
    assert short.bed0 == short.bed1 == 0


def test_an_intro_over_two_minutes_fails_before_any_tts_call(tmp_path, monkeypatch):
    monkeypatch.setattr(production, "MAX_JINGLE_S", 3.0)
    long = _lavfi(tmp_path / "long.ogg", "0.3*sin(2*PI*220*t)", 4.0, "-c:a", "libvorbis", "-f", "ogg")
    tts = Counting()
    with pytest.raises(InvalidInput) as err:
        narrate(Job(text=TEXT, intro=long), tts)
    assert err.value.param == "intro" and "longer than 3 s" in str(err.value) and tts.calls == 0


@pytest.mark.parametrize(("head", "said"), [
    (b"%PDF-1.7\n...", "PDF document"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "an image"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100), "RIFF 'WEBP' file"),
    (b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://example.com/a.ts\n", "text starting with '#EXTM3U"),
    (bytes(range(256)) * 4, "unknown content"),
])  # fmt: skip
def test_a_refused_file_says_what_it_looks_like(tmp_path, head, said):
    path = tmp_path / "x.mp3"
    path.write_bytes(head)
    with pytest.raises(InvalidInput) as err:
        media.sniff("music", path)
    assert err.value.param == "music" and said in str(err.value), str(err.value)


def test_an_intro_keeps_who_read_each_line_in_the_timeline(files):
    """The timeline is shifted by the intro; speaker, voice, section and model stay with every entry (the
    stats' provider/model per entry come from `model`)."""
    from audio.model import SpeakerVoice

    text = "# Show\n\nHost: Welcome to the show.\nGuest: Thanks for having me."
    speakers = {"host": SpeakerVoice("en-us"), "guest": SpeakerVoice("en-gb", model=2)}
    tts = Counting()
    plain = narrate(Job(text=text, encode=EncodeOptions(fmt="wav"), speakers=speakers), {1: tts, 2: tts})
    produced = narrate(
        Job(text=text, encode=EncodeOptions(fmt="wav"), speakers=speakers, intro=files["intro"]), {1: tts, 2: tts}
    )
    who = [(e.speaker, e.voice, e.section, e.model) for e in produced.timeline]
    assert who == [(e.speaker, e.voice, e.section, e.model) for e in plain.timeline]
    assert [e.model for e in produced.timeline if e.speaker] == [1, 2]  # the heading is read by model 1 too
    assert produced.timeline[0].start > plain.timeline[0].start + 1.0  # shifted by the intro


def id3v2_tag(payload_bytes: int) -> bytes:
    """An ID3v2.3 tag with one APIC-like private frame of `payload_bytes` (cover art makes tags this large)."""
    frame = b"PRIV" + payload_bytes.to_bytes(4, "big") + b"\x00\x00" + bytes(payload_bytes)
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + frame


@pytest.mark.parametrize("kind", ["aac", "mp3"])
def test_a_tagged_file_is_sniffed_by_what_follows_its_id3_tag(tmp_path, kind):
    """An ADTS (.aac) or mp3 music file with a 10 kB ID3v2 tag in front (larger than the sniffed head): the
    demuxer is chosen by the audio after the tag, and ffmpeg decodes it (ADTS forced as mp3 decodes nothing)."""
    audio_bytes = audiogen.adts(2.0) if kind == "aac" else audiogen.mp3(2.0)
    path = tmp_path / f"tagged.{kind}"
    path.write_bytes(id3v2_tag(10_000) + audio_bytes)
    assert media.check("music", path) == kind
    frames, warnings = media.decode("music", path, tmp_path / "out.f32", 24000, 1, max_seconds=10)
    assert frames == pytest.approx(2.0 * 24000, rel=0.05) and warnings == []


def test_decoder_complaints_name_no_memory_addresses(tmp_path):
    """A file that decodes to nothing: the message quotes ffmpeg without its '@ 0x…' addresses."""
    path = tmp_path / "broken.mp3"
    path.write_bytes(audiogen.mp3(1.0)[:4] + bytes(range(256)) * 8)
    with pytest.raises(InvalidInput) as info:
        media.check("music", path)
    assert str(info.value).startswith("music: ") and " @ 0x" not in str(info.value)
