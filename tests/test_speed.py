"""`speed`: speech rate with pitch kept, applied while decoding (audio.tempo), measured on decoded output.

Real speech from the embedded eSpeak engine: the speech is 1/speed as long, its f0 stays, the pauses the
pipeline inserts keep their length, subtitles stay on the speech, loudness still meets the target; per-request
speeds (from the speaker mapping) apply to their own request only; the per-file duration cap counts the
provider's time, not the stretched time.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pyloudnorm
import pytest

from audio import decode, options, pipeline, tempo
from audio.engine import EspeakEngine
from audio.errors import InvalidAudio, InvalidInput
from audio.model import AudioFile, Plan, Request
from audio.segments import split_call
from tests import audiogen
from tests import speechmeasure as sm

RATE = 24000
TEXT = (
    "The history of radio begins with a handful of experiments that few people noticed at the time. "
    "Engineers argued for years about the best way to carry a voice across long distances. "
    "By the end of the decade, families gathered every evening to listen to the news together. "
    "Today the same ideas live on in podcasts, audiobooks and voice assistants."
)


def _decoded(result) -> np.ndarray:
    samples, errors = audiogen.decode(result.data, "mp3", RATE, 1)
    assert errors == ""
    return samples[:, 0]


def _speech_in(x: np.ndarray, start: float, end: float) -> tuple[float, float]:
    """(first, last) second of sound inside [start, end] of the programme."""
    spans = sm.speech_spans(x[int(start * RATE) : int(end * RATE)], RATE)
    assert spans, (start, end)
    return start + spans[0][0], start + spans[-1][1]


def _cues(vtt: str) -> list[tuple[float, float, str]]:
    found = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)", vtt)

    def sec(h, m, s, ms):
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(sec(*c[:4]), sec(*c[4:8]), c[8]) for c in found]


@pytest.fixture(scope="module")
def runs():
    """The same text at speed 1 and 1.25 (one sentence per request: subtitles on)."""
    engine = EspeakEngine()
    out = {}
    for speed in (1.0, 1.25):
        job = pipeline.Job(text=TEXT, subtitles="vtt", speed=speed, encode=replace(pipeline.Job(text="x").encode,
                                                                                      sample_rate=RATE))
        result = pipeline.narrate(job, engine)
        out[speed] = (result, _decoded(result))
    return out


def test_speech_is_1_25_times_shorter_with_the_same_pitch(runs):
    (r1, x1), (r2, x2) = runs[1.0], runs[1.25]
    assert len(r1.timeline) == len(r2.timeline) == 4
    speech1 = [_speech_in(x1, e.start, e.end) for e in r1.timeline]
    speech2 = [_speech_in(x2, e.start, e.end) for e in r2.timeline]
    ratio = sum(b - a for a, b in speech1) / sum(b - a for a, b in speech2)
    assert ratio == pytest.approx(1.25, rel=0.05), ratio
    for (a1, b1), (a2, b2) in zip(speech1, speech2, strict=True):  # every sentence, not just the sum
        assert (b1 - a1) / (b2 - a2) == pytest.approx(1.25, rel=0.08)
    f1, f2 = sm.f0_hz(x1, RATE), sm.f0_hz(x2, RATE)
    assert 60 < f1 < 300
    assert f2 / f1 == pytest.approx(1.0, rel=0.05), (f1, f2)
    assert r2.stats.speed == 1.25 and r1.stats.speed == 1.0


def test_pauses_keep_their_length(runs):
    (r1, x1), (r2, x2) = runs[1.0], runs[1.25]
    gaps = []
    for result, x in ((r1, x1), (r2, x2)):
        speech = [_speech_in(x, e.start, e.end) for e in result.timeline]
        gaps.append([nxt[0] - prev[1] for prev, nxt in pairwise(speech)])
        inserted = [b.start - a.end for a, b in pairwise(result.timeline)]
        assert inserted == pytest.approx([0.3] * 3, abs=0.002)  # the pipeline's pause, unscaled
    # silence measured in the audio between sentences: the pause plus the seam margins, not 1/1.25 of it
    assert gaps[1] == pytest.approx(gaps[0], abs=0.04), gaps
    assert min(gaps[1]) > 0.3


def test_subtitles_stay_on_the_speech_and_loudness_meets_the_target(runs):
    result, x = runs[1.25]
    cues = _cues(result.subtitles)
    assert len(cues) >= len(result.timeline)  # long sentences are split into several cues
    for start, end, _ in cues:
        inside = x[int(start * RATE) : int(end * RATE)]
        assert np.sqrt(np.mean(inside**2)) > 0.01, (start, end)  # sound where every cue is
    for first, last in sm.speech_spans(x, RATE):  # and every stretch of sound is under a cue
        assert any(start - 0.03 <= first and last <= end + 0.03 for start, end in _merged(cues)), (first, last)
    assert pyloudnorm.Meter(RATE).integrated_loudness(x) == pytest.approx(-16.0, abs=1.0)
    assert result.true_peak_dbtp <= -1.0


def _merged(cues: list[tuple[float, float, str]]) -> list[tuple[float, float]]:
    """Back-to-back cues (one sentence split into several) as one interval."""
    out: list[list[float]] = []
    for start, end, _ in cues:
        if out and start - out[-1][1] < 0.01:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def test_a_request_with_its_own_speed_is_stretched_alone(monkeypatch):
    """Request.speed (from the speaker mapping) beats the job's speed; None means the job's."""
    sentence = "Engineers argued for years about the best way to carry a voice across long distances."
    plan = Plan(
        requests=[
            Request(0, sentence, speaker="Host"),
            Request(1, sentence, speaker="Guest", speed=1.5, pause_before_ms=500),
            Request(2, sentence, speaker="Host", pause_before_ms=500),
        ],
        speakers=["Host", "Guest"],
    )
    monkeypatch.setattr(pipeline.script, "plan", lambda *args, **kwargs: plan)
    job = pipeline.Job(text=sentence, speed=0.8, encode=replace(pipeline.Job(text="x").encode, sample_rate=RATE))
    result = pipeline.narrate(job, EspeakEngine())
    x = _decoded(result)
    lengths = [b - a for a, b in (_speech_in(x, e.start, e.end) for e in result.timeline)]
    assert lengths[0] == pytest.approx(lengths[2], rel=0.02)  # both at the job's 0.8
    assert lengths[0] / lengths[1] == pytest.approx(1.5 / 0.8, rel=0.05), lengths
    assert result.stats.speed == 0.8
    meter = pyloudnorm.Meter(RATE)  # per-speaker leveling still holds with speakers at different rates
    host = meter.integrated_loudness(np.concatenate([x[int(e.start * RATE) : int(e.end * RATE)]
                                                     for e in result.timeline if e.speaker == "Host"]))
    guest = next(meter.integrated_loudness(x[int(e.start * RATE) : int(e.end * RATE)])
                 for e in result.timeline if e.speaker == "Guest")
    assert abs(host - guest) <= 1.5, (host, guest)


def _file(data: bytes, call: int = 0):
    (f,) = split_call([data], call)
    return f


def test_decode_stretches_only_the_files_asked(tmp_path):
    tone = audiogen.mp3(2.0, freq=220)
    files = [_file(tone, 0), _file(tone, 1), _file(tone, 2)]
    out = decode.decode_all(files, tmp_path, sample_rate=RATE, channels=1, max_seconds_per_file=60,
                            speeds=[None, 2.0, 0.5])
    assert [d.duration_s for d in out] == pytest.approx([2.0, 1.0, 4.0], abs=0.03)
    for d in out:  # a pure tone keeps its frequency whatever the tempo
        x = np.fromfile(d.path, dtype="<f4")[2000:-2000]
        crossings = np.count_nonzero(np.diff(np.signbit(x))) / 2
        assert crossings / (len(x) / RATE) == pytest.approx(220, rel=0.02)


def test_the_duration_cap_counts_the_providers_time(tmp_path):
    """A slow read of a legitimate answer is not an expansion bomb; a fast read does not hide one."""
    slow = decode.decode_all([_file(audiogen.mp3(2.0), 0)], tmp_path / "a", sample_rate=RATE, channels=1,
                             max_seconds_per_file=3.0, speeds=[0.5])
    assert slow[0].duration_s == pytest.approx(4.0, abs=0.05)  # 4 s out of a 2 s answer, under a 3 s cap
    with pytest.raises(InvalidAudio, match="more than 3 s"):
        decode.decode_all([_file(audiogen.mp3(4.0), 0)], tmp_path / "b", sample_rate=RATE, channels=1,
                          max_seconds_per_file=3.0, speeds=[2.0])


def test_a_corrupt_file_is_still_named_when_stretching(tmp_path):
    """The batch's fallback (file by file) keeps each file's speed and still names the culprit."""
    data = bytearray(audiogen.mp3(0.5, freq=300))
    for pos in range(2000, 2600):
        data[pos] ^= 0x5A
    bad = AudioFile(bytes(data), "mp3", 24000, 1, call_index=1)
    with pytest.raises(InvalidAudio, match="TTS call #2"):
        decode.decode_all([_file(audiogen.mp3(0.5), 0), bad], tmp_path, sample_rate=RATE, channels=1,
                          max_seconds_per_file=60, speeds=[1.5, 1.5])


class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, list[bytes]] = {}

    def get(self, key: str) -> list[bytes] | None:
        return self.data.get(key)

    def put(self, key: str, chunks: list[bytes]) -> None:
        self.data[key] = chunks


def test_changing_the_speed_needs_no_new_synthesis():
    """The cache holds the provider's audio; the stretch happens after it, so a re-run at another rate is
    served entirely from the cache."""
    cache = MemoryCache()
    first = pipeline.narrate(pipeline.Job(text=TEXT, speed=1.0), EspeakEngine(), cache=cache)
    again = pipeline.narrate(pipeline.Job(text=TEXT, speed=1.5), EspeakEngine(), cache=cache)
    assert first.stats.cache_misses == again.stats.cache_hits == again.stats.requests >= 1
    assert again.stats.cache_misses == 0
    assert first.duration_s / again.duration_s == pytest.approx(1.5, rel=0.1)


def test_tempo_filter():
    assert tempo.tempo_filter(1.0) is None and tempo.tempo_filter(None) is None
    assert tempo.tempo_filter(1.25) == "atempo=1.25"
    assert tempo.tempo_filter(0.5) == "atempo=0.5" and tempo.tempo_filter(2.0) == "atempo=2"
    with pytest.raises(ValueError):
        tempo.tempo_filter(3.0)


@pytest.mark.parametrize(("value", "expected"), [(None, 1.0), ("", 1.0), (1, 1.0), ("1.25", 1.25), (0.5, 0.5),
                                                 (2, 2.0)])
def test_speed_option(value, expected):
    assert options.speed(value) == expected


@pytest.mark.parametrize(("value", "hint"), [(0.4, "0.5 to 2"), ("2.5", "0.5 to 2"), ("fast", "not a number"),
                                             ("nan", "finite")])
def test_bad_speed_names_the_parameter(value, hint):
    with pytest.raises(InvalidInput) as info:
        options.speed(value)
    assert info.value.param == "speed" and str(info.value).startswith("speed: ") and hint in str(info.value)
