"""Long-form and multi-voice through the whole pipeline (in process, fake providers, independent checks).

Speaker leveling, turn order, subtitle timing against the decoded audio, chapters read back with mutagen, a
100,000-character text, and markup never reaching the TTS model.
"""

from __future__ import annotations

import functools
import itertools
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from mutagen.id3 import ID3

from audio import ffmpeg
from audio.pipeline import Job, narrate
from tests import audiogen

RATE = 24000


@functools.lru_cache(maxsize=32)
def tone_mp3(seconds: float, freq: float, gain_db: float) -> bytes:
    """Speech-like tone (3 Hz envelope) at a given level, as one mp3 file with Xing header."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.mp3"
        ffmpeg.run([
            "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={RATE}:duration={seconds}",
            "-af", f"volume='(0.6+0.4*sin(2*PI*3*t))':eval=frame,volume={gain_db}dB",
            "-c:a", "libmp3lame", "-b:a", "64k", str(out),
        ])  # fmt: skip
        return out.read_bytes()


class Provider:
    """Answers each voice with its own tone and level; records the texts it was asked to read."""

    def __init__(self, voices: dict[str, tuple[float, float]], seconds: float = 1.2):
        self.voices = voices
        self.seconds = seconds
        self.texts: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: str | None):
        with self.lock:
            self.texts.append((text, voice))
        freq, gain = self.voices[voice or "default"]
        data = tone_mp3(self.seconds, freq, gain)
        return [data[i : i + 1024] for i in range(0, len(data), 1024)]


def decoded(result) -> np.ndarray:
    samples, errors = audiogen.decode(result.data, "mp3", RATE, 1)
    assert errors == ""
    return samples[:, 0]


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[np.argmax(spectrum)])


SCRIPT = """# Episode

Host: Welcome to the show. Today is about sound.
Guest: Thanks for having me.
It is good to be here.
Host: Let us begin.

## Part two

Guest: The second part starts now. It has two sentences.
Host: And it ends here.
"""


def test_two_speakers_10_db_apart_end_within_1_5_lu_in_the_right_order():
    provider = Provider({"alloy": (220.0, 0.0), "nova": (330.0, -10.0), "default": (440.0, -5.0)})
    job = Job(text=SCRIPT, speakers={"host": "alloy", "guest": "nova"}, backoff_s=0)
    result = narrate(job, provider)
    x = decoded(result)
    turns = [e.speaker for e in result.timeline if e.speaker]
    assert turns == ["Host", "Guest", "Host", "Guest", "Host"]  # one request per turn at the default cap
    meter = pyloudnorm.Meter(RATE)
    per_speaker: dict[str, list[np.ndarray]] = {}
    for e in result.timeline:
        seg = x[int(e.start * RATE) : int(e.end * RATE)]
        per_speaker.setdefault(e.speaker or "narrator", []).append(seg)
        voice_hz = {"alloy": 220.0, "nova": 330.0}.get(e.voice or "", 440.0)  # headings: the default voice
        assert dominant_hz(seg) == pytest.approx(voice_hz, abs=8), e  # the right voice at the right place
    host = meter.integrated_loudness(np.concatenate(per_speaker["Host"]))
    guest = meter.integrated_loudness(np.concatenate(per_speaker["Guest"]))
    assert abs(host - guest) <= 1.5, (host, guest)
    assert meter.integrated_loudness(x) == pytest.approx(-16.0, abs=1.0)


def test_subtitle_cues_match_the_timeline_and_the_audio():
    provider = Provider({"default": (300.0, -6.0)}, seconds=1.0)
    text = "First sentence here. Second one follows. Third is last.\n\nA new paragraph. And its end."
    result = narrate(Job(text=text, subtitles="vtt", backoff_s=0), provider)
    assert [t for t, _ in provider.texts] == [
        "First sentence here.", "Second one follows.", "Third is last.", "A new paragraph.", "And its end.",
    ]  # fmt: skip  (one sentence per request when subtitles are asked)
    cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)", result.subtitles)

    def seconds(h, m, s, ms):
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    assert len(cues) == len(result.timeline) == 5
    x = decoded(result)
    envelope = np.abs(x)
    for cue, entry in zip(cues, result.timeline, strict=True):
        start, end = seconds(*cue[:4]), seconds(*cue[4:8])
        assert start == pytest.approx(entry.start, abs=0.05) and end == pytest.approx(entry.end, abs=0.05)
        assert cue[8] == entry.text
        inside = envelope[int((start + 0.1) * RATE) : int((end - 0.1) * RATE)]
        assert np.sqrt(np.mean(inside**2)) > 0.01  # sound where the cue says
    for before, after in itertools.pairwise(cues):
        gap = envelope[int((seconds(*before[4:8]) + 0.02) * RATE) : int((seconds(*after[:4]) - 0.02) * RATE)]
        assert gap.size > 0 and np.max(gap) < 0.01  # silence between cues (the inserted pause)


def test_chapters_are_readable_with_mutagen_and_start_at_their_sections(tmp_path):
    provider = Provider({"alloy": (220.0, 0.0), "nova": (330.0, 0.0), "default": (440.0, 0.0)})
    result = narrate(Job(text=SCRIPT, speakers={"host": "alloy", "guest": "nova"}, backoff_s=0), provider)
    path = tmp_path / "out.mp3"
    path.write_bytes(result.data)
    tags = ID3(path)
    chaps = sorted(tags.getall("CHAP"), key=lambda c: c.start_time)
    titles = [c.sub_frames["TIT2"].text[0] for c in chaps]
    assert titles == ["Episode", "Part two"]
    part_two = next(e for e in result.timeline if e.section == "Part two")
    assert chaps[0].start_time == 0
    assert chaps[1].start_time / 1000 == pytest.approx(part_two.start, abs=0.01)
    assert len(tags.getall("CTOC")) == 1
    assert [(c.title, round(c.start, 3)) for c in result.chapters] == [
        ("Episode", 0.0), ("Part two", round(part_two.start, 3)),
    ]  # fmt: skip


def test_a_100k_character_text_goes_through_split_under_the_cap():
    paragraph = (
        "The committee met on Tuesday, and after a long discussion about budgets, schedules and the weather, "
        "it decided that the project would continue as planned. Dr. Smith noted that 3.5 percent was enough. "
    )
    text = "\n\n".join([paragraph * 3] * 170)[:100_000]
    text = text[: text.rfind(".") + 1]
    provider = Provider({"default": (250.0, -6.0)}, seconds=0.2)
    result = narrate(Job(text=text, max_chars_per_request=300, concurrency=8, backoff_s=0), provider)
    sent = [t for t, _ in provider.texts]
    assert len(sent) == result.stats.requests > 300
    assert all(len(t) <= 300 for t in sent)
    assert " ".join(sent).split() == text.split()  # every word, in order, none cut
    assert result.duration_s > 0.2 * len(sent)


def test_markup_never_reaches_the_tts_model():
    text = """# A *styled* heading

Some **bold** and _italic_ words, a [link](https://example.com/page), and `inline code`.

```python
print("this code block is skipped")
```

| a | b |
|---|---|
| 1 | 2 |

- a list item
- another one [pause 300ms] after a pause
<speak>Some <emphasis>SSML</emphasis> here.<break time="500ms"/> Done.</speak>
"""
    provider = Provider({"default": (250.0, -6.0)}, seconds=0.3)
    result = narrate(Job(text=text, backoff_s=0), provider)
    sent = " ".join(t for t, _ in provider.texts)
    for symbol in ("*", "_", "`", "[", "]", "(", ")", "#", "|", "<", ">", "```", "print("):
        assert symbol not in sent, (symbol, sent)
    for word in ("styled", "bold", "italic", "link", "inline code", "list item", "SSML", "Done"):
        assert word in sent
    assert result.stats.warnings == [] or all("silence" not in w for w in result.stats.warnings)
