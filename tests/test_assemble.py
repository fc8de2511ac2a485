"""assemble: seam trimming, fades, pauses, timeline, per-speaker leveling, flat memory."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from audio import assemble
from audio.decode import DecodedFile
from audio.model import AudioFile, Request

RATE = 24000


def _tone(seconds: float, level_db: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)  # speech-like amplitude movement
    return (10 ** (level_db / 20) * env * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _decoded(tmp_path, name: str, samples: np.ndarray, call: int) -> DecodedFile:
    path = tmp_path / f"{name}.f32"
    samples.astype("<f4").tofile(path)
    return DecodedFile(path, len(samples), RATE, 1, AudioFile(b"", "wav", RATE, 1, call_index=call))


def _padded(speech: np.ndarray, lead: float, tail: float) -> np.ndarray:
    return np.concatenate([np.zeros(int(lead * RATE), np.float32), speech, np.zeros(int(tail * RATE), np.float32)])


def test_seams_are_trimmed_and_pauses_inserted(tmp_path):
    a = _decoded(tmp_path, "a", _padded(_tone(1.0, -20), 0.5, 0.8), 0)
    b = _decoded(tmp_path, "b", _padded(_tone(1.0, -20), 0.3, 0.6), 1)
    reqs = [Request(0, "one"), Request(1, "two", pause_before_ms=400)]
    prog = assemble.assemble(
        [(reqs[0], [a]), (reqs[1], [b])], tmp_path / "p.f32", sample_rate=RATE, channels=1,
        pause_ms=250, level_speakers_to=None,
    )
    margins = assemble.LEAD_MARGIN_S + assemble.TAIL_MARGIN_S
    expected = 2 * (1.0 + margins) + 0.4
    assert prog.duration_s == pytest.approx(expected, abs=0.03)
    first, second = prog.timeline
    assert first.start == 0.0
    assert second.start - first.end == pytest.approx(0.4, abs=0.001)
    assert first.end - first.start == pytest.approx(1.0 + margins, abs=0.02)


def test_files_of_one_request_get_the_sentence_pause(tmp_path):
    a = _decoded(tmp_path, "a", _padded(_tone(0.5, -20), 0.2, 0.2), 0)
    b = _decoded(tmp_path, "b", _padded(_tone(0.5, -20), 0.2, 0.2), 0)
    prog = assemble.assemble(
        [(Request(0, "two sentences"), [a, b])], tmp_path / "p.f32", sample_rate=RATE, channels=1,
        pause_ms=300, level_speakers_to=None,
    )
    x = np.fromfile(prog.path, dtype="<f4")
    env = np.abs(x)
    quiet = env < 1e-4
    # the longest run of digital silence is the 300 ms pause plus the kept margins
    runs, best = 0, 0
    for q in quiet:
        runs = runs + 1 if q else 0
        best = max(best, runs)
    assert best / RATE == pytest.approx(0.3 + assemble.TAIL_MARGIN_S + assemble.LEAD_MARGIN_S, abs=0.025)


def test_seams_have_no_clicks(tmp_path):
    # a file that starts/ends at full amplitude (no silence) must still be faded at the seam
    loud = _decoded(tmp_path, "a", np.full(RATE // 2, 0.5, np.float32), 0)
    prog = assemble.assemble(
        [(Request(0, "x"), [loud])], tmp_path / "p.f32", sample_rate=RATE, channels=1,
        pause_ms=0, level_speakers_to=None,
    )
    x = np.fromfile(prog.path, dtype="<f4")
    assert abs(x[0]) < 1e-3 and abs(x[-1]) < 1e-3
    assert np.max(np.abs(np.diff(x))) < 0.5 / (assemble.FADE_S * RATE) * 2


def test_speakers_are_leveled_to_each_other(tmp_path):
    groups = []
    for i in range(6):
        speaker = "Host" if i % 2 == 0 else "Guest"
        level = -14 if speaker == "Host" else -26  # 12 dB apart
        d = _decoded(tmp_path, f"s{i}", _padded(_tone(1.2, level, 180 + 40 * i), 0.1, 0.1), i)
        groups.append((Request(i, f"line {i}", speaker=speaker), [d]))
    prog = assemble.assemble(groups, tmp_path / "p.f32", sample_rate=RATE, channels=1, pause_ms=200,
                             level_speakers_to=-20.0)
    x = np.fromfile(prog.path, dtype="<f4")
    meter = pyloudnorm.Meter(RATE)
    per_speaker = {}
    for entry in prog.timeline:
        seg = x[int(entry.start * RATE) : int(entry.end * RATE)]
        per_speaker.setdefault(entry.speaker, []).append(seg)
    levels = {k: meter.integrated_loudness(np.concatenate(v)) for k, v in per_speaker.items()}
    assert abs(levels["Host"] - levels["Guest"]) < 1.0
    assert levels["Host"] == pytest.approx(-20.0, abs=1.0)
    assert prog.integrated_lufs == pytest.approx(meter.integrated_loudness(x), abs=0.3)


def test_silent_request_is_reported(tmp_path):
    s = _decoded(tmp_path, "s", np.zeros(RATE, np.float32), 0)
    a = _decoded(tmp_path, "a", _tone(0.5, -20), 1)
    prog = assemble.assemble([(Request(0, "..."), [s]), (Request(1, "hi"), [a])], tmp_path / "p.f32",
                             sample_rate=RATE, channels=1, pause_ms=0, level_speakers_to=None)
    assert any("#1 produced only silence" in w for w in prog.warnings)
    assert prog.duration_s == pytest.approx(0.5, abs=0.01)


def test_peak_control_tames_only_peaks_far_above_the_speech_level():
    t = np.arange(2 * RATE) / RATE
    speech = (0.1 * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    click = speech.copy()
    click[RATE : RATE + 48] += 0.9  # a 2 ms spike ~25 dB above the speech peaks
    untouched = assemble.control_peaks(speech, RATE)
    assert np.allclose(untouched, speech)  # normal speech (peaks ~4.8 dB over RMS) is left alone
    tamed = assemble.control_peaks(click, RATE)
    rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    peak_db = 20 * np.log10(np.max(np.abs(tamed)) / rms)
    raw_db = 20 * np.log10(np.max(np.abs(click)) / rms)
    assert peak_db < raw_db - 9  # 3:1 above the threshold
    assert peak_db > assemble.PEAK_CONTROL_ABOVE_DB  # compressed, not clipped to the threshold
    far = np.r_[0 : RATE // 2, RATE + RATE // 2 : 2 * RATE]
    assert np.allclose(tamed[far], click[far])  # away from the spike nothing changes


def test_peak_control_is_off_when_loudness_is_off(tmp_path):
    spiky = _tone(1.0, -20)
    spiky[RATE // 2] = 0.95
    d = _decoded(tmp_path, "a", spiky, 0)
    prog = assemble.assemble([(Request(0, "x"), [d])], tmp_path / "p.f32", sample_rate=RATE, channels=1,
                             pause_ms=0, level_speakers_to=None)
    assert np.max(np.abs(np.fromfile(prog.path, dtype="<f4"))) == pytest.approx(0.95, abs=1e-3)


def _one_speaker(tmp_path, levels: list[float]):
    groups = []
    for i, level in enumerate(levels):
        d = _decoded(tmp_path, f"f{i}", _padded(_tone(1.5, level, 200 + 30 * i), 0.1, 0.1), i)
        groups.append((Request(i, f"sentence {i}"), [d]))
    return groups


def _entry_levels(prog) -> list[float]:
    x = np.fromfile(prog.path, dtype="<f4")
    meter = pyloudnorm.Meter(RATE)
    return [meter.integrated_loudness(x[int(e.start * RATE) : int(e.end * RATE)]) for e in prog.timeline]


def test_sentences_that_stray_from_their_speaker_are_brought_back_to_the_band(tmp_path):
    # one voice, typical −20; one call came back 8 dB louder, one 9 dB softer, one 1 dB softer (its own)
    levels = [-20, -20, -12, -20, -29, -20, -21, -20]
    prog = assemble.assemble(_one_speaker(tmp_path, levels), tmp_path / "p.f32", sample_rate=RATE, channels=1,
                             pause_ms=200, level_speakers_to=-16.0, peak_control=False)
    got = _entry_levels(prog)
    typical = float(np.median(got))
    band = assemble.LEVEL_BAND_LU
    assert got[2] - typical == pytest.approx(band, abs=0.2)  # +8 → the top of the band
    assert got[4] - typical == pytest.approx(-band, abs=0.2)  # −9 → the bottom
    x = np.fromfile(prog.path, dtype="<f4")
    inside = x[int(prog.timeline[6].start * RATE) : int(prog.timeline[6].end * RATE)]
    assert np.max(np.abs(inside)) == pytest.approx(np.max(np.abs(_tone(1.5, -21, 380))), rel=1e-4)  # untouched
    assert max(got) - min(got) <= 2 * band + 0.3


def test_sentence_leveling_is_off_with_loudness_off(tmp_path):
    levels = [-20, -12, -20]
    prog = assemble.assemble(_one_speaker(tmp_path, levels), tmp_path / "p.f32", sample_rate=RATE, channels=1,
                             pause_ms=200, level_speakers_to=None)
    got = _entry_levels(prog)
    assert got[1] - got[0] == pytest.approx(8.0, abs=0.2)


def test_speaker_leveling_counts_the_corrected_sentences(tmp_path):
    # Host has one sentence 10 dB too loud; after it is corrected the two voices must still match
    groups = []
    for i, (speaker, level) in enumerate([("Host", -20), ("Guest", -30), ("Host", -10), ("Guest", -30),
                                          ("Host", -20), ("Guest", -30), ("Host", -20)]):
        d = _decoded(tmp_path, f"s{i}", _padded(_tone(1.5, level, 180 + 35 * i), 0.1, 0.1), i)
        groups.append((Request(i, f"line {i}", speaker=speaker), [d]))
    prog = assemble.assemble(groups, tmp_path / "p.f32", sample_rate=RATE, channels=1, pause_ms=200,
                             level_speakers_to=-18.0)
    x = np.fromfile(prog.path, dtype="<f4")
    per: dict[str, list[np.ndarray]] = {}
    for e in prog.timeline:
        per.setdefault(e.speaker, []).append(x[int(e.start * RATE) : int(e.end * RATE)])
    meter = pyloudnorm.Meter(RATE)
    host, guest = (meter.integrated_loudness(np.concatenate(per[k])) for k in ("Host", "Guest"))
    assert host == pytest.approx(guest, abs=0.6)
    assert host == pytest.approx(-18.0, abs=1.0)
