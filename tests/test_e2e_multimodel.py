"""End to end with two TTS models: the packaged plugin under the fake daemon, a host on `model` and a guest on
`model_2`, the two providers answering in different shapes and at levels 10 dB apart.

Model 1 answers like OpenAI (one mp3 per sentence, ID3 + Xing, 24 kHz, in 1024-byte slices); model 2 like a
provider that sends a whole WAV per sentence at 22.05 kHz, 10 dB quieter. The result is checked independently
of the pipeline: decoded by ffmpeg with zero errors, each speaker's span (from the timeline) measured with
pyloudnorm, every subtitle cue's span checked for its sentence's tone, and every TTS call the daemon recorded
checked against the model its speaker is mapped to.
"""

from __future__ import annotations

import io
import re
import wave
import zipfile
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from tests import audiogen
from tests.daemon import DEFAULT_MODEL, FakeDaemon, TTSCall, slices
from tests.test_e2e_plugin import (
    FREQS,
    RATE,
    STATS_FIELDS,
    _load_packager,
    decode_mp3,
    dominant_freq,
    header_duration,
    true_peak_dbtp,
    word_of,
)

pytestmark = pytest.mark.slow

MODEL_2 = {"provider": "langgenius/minimax/minimax", "model": "speech-01-turbo", "model_type": "tts",
           "voice": "female-shaonv"}  # fmt: skip
SCRIPT = (
    "Host: Alpha opens the show with a few words.\n"
    "Guest: Bravo follows with a second line.\n"
    "Host: Charlie adds a third thought.\n"
    "Guest: Delta starts a new idea here.\n"
    "Host: Echo keeps it going for a while.\n"
    "Guest: Foxtrot closes the test."
)
SPEAKER_OF = {"Alpha": "Host", "Bravo": "Guest", "Charlie": "Host", "Delta": "Guest", "Echo": "Host",
              "Foxtrot": "Guest"}  # fmt: skip
MODEL_OF = {"Host": (DEFAULT_MODEL["provider"], DEFAULT_MODEL["model"]),
            "Guest": (MODEL_2["provider"], MODEL_2["model"])}  # fmt: skip
HOST_S, GUEST_S = 1.2, 1.0  # seconds of audio per call


def quieter_wav(seconds: float, rate: int, freq: float, gain_db: float) -> bytes:
    """audiogen's WAV tone with its samples scaled by gain_db (a provider that delivers quieter speech)."""
    with wave.open(io.BytesIO(audiogen.wav(seconds, rate, freq=freq))) as src:
        params = src.getparams()
        pcm = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2").astype(np.float64)
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(np.round(pcm * 10 ** (gain_db / 20)).astype("<i2").tobytes())
    return out.getvalue()


def two_providers(call: TTSCall) -> list[bytes]:
    """Answer in the shape of the model the call was sent to (whatever speaker the text belongs to)."""
    freq = FREQS[word_of(call.text)]
    if call.model == MODEL_2["model"]:
        return [quieter_wav(GUEST_S, 22050, freq, -10.0)]
    return slices(audiogen.mp3(HOST_S, 24000, freq=freq, id3=True), 1024)


def params(**overrides) -> dict:
    return {
        "text": SCRIPT, "model": dict(DEFAULT_MODEL), "model_2": dict(MODEL_2), "speakers": "Host=alloy; Guest=2:",
        "subtitles": "srt", "cache": False, **overrides,
    }  # fmt: skip


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    package = _load_packager().build(Path(__file__).resolve().parent.parent, tmp_path_factory.mktemp("dist"))
    target = tmp_path_factory.mktemp("plugin")
    with zipfile.ZipFile(package) as zf:
        zf.extractall(target)
    with FakeDaemon(target, tts=two_providers) as d:
        yield d
        assert d.alive and not d.stray_lines and not d.global_errors, d.stderr_tail()


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        start, end = (
            sum(float(part) * 60**k for k, part in enumerate(reversed(stamp.strip().replace(",", ".").split(":"))))
            for stamp in lines[1].split("-->")
        )
        cues.append((start, end, " ".join(lines[2:])))
    return cues


def span(samples: np.ndarray, start: float, end: float, margin: float = 0.0) -> np.ndarray:
    return samples[int((start + margin) * RATE) : int((end - margin) * RATE)]


def test_a_guest_on_a_second_model_gives_one_clean_levelled_file(daemon):
    daemon.tts = two_providers
    run = daemon.invoke_tool(params())
    assert run.ok, run.describe()
    assert not run.protocol_errors, run.protocol_errors

    # every call went to the model its speaker is mapped to, with that model's voice
    assert len(run.tts_calls) == 6
    for call in run.tts_calls:
        speaker = SPEAKER_OF[word_of(call.text)]
        assert (call.provider, call.model) == MODEL_OF[speaker], call
        assert call.voice == ("alloy" if speaker == "Host" else MODEL_2["voice"]), call

    # one clean file
    audio = run.audio_files()
    assert len(audio) == 1 and audio[0].filename == "narration.mp3"
    samples = decode_mp3(audio[0].data)  # asserts zero decoder errors
    decoded_s = len(samples) / RATE
    audio_s = 3 * HOST_S + 3 * GUEST_S
    assert audio_s < decoded_s < audio_s + 5 * 1.0, decoded_s  # five pauses, none longer than a second
    assert abs(header_duration(audio[0].data) - decoded_s) < 0.1
    assert abs(pyloudnorm.Meter(RATE).integrated_loudness(samples) - -16.0) <= 1.0
    assert true_peak_dbtp(samples) <= -0.7

    # stats: each timeline entry names the provider and model that read it
    stats = run.jsons[0]
    assert list(stats) == STATS_FIELDS and stats["requests"] == 6
    timeline = stats["timeline"]
    assert [e["speaker"] for e in timeline] == [SPEAKER_OF[word_of(e["text"])] for e in timeline]
    for entry in timeline:
        assert (entry["provider"], entry["model"]) == MODEL_OF[entry["speaker"]], entry

    # speakers within 1.5 LU of each other, measured on the decoded output over each speaker's spans
    levels = speaker_levels(samples, timeline)
    assert abs(levels["Host"] - levels["Guest"]) <= 1.5, levels

    # the subtitles lie on the decoded audio: each cue's span carries its own sentence's tone
    srt = next(f for f in run.files if f.filename == "narration.srt").data.decode("utf-8")
    cues = parse_srt(srt)
    assert len(cues) == 6
    for start, end, text in cues:
        assert end <= decoded_s + 0.05
        segment = span(samples, start, end, margin=(end - start) * 0.2)
        expected = FREQS[word_of(text)]
        assert abs(dominant_freq(segment) - expected) < expected * 0.04, (text, dominant_freq(segment))
    assert cues[1][2].startswith("[Guest]")  # two speakers: cues name them


def speaker_levels(samples: np.ndarray, timeline: list[dict]) -> dict[str, float]:
    """Integrated loudness (LUFS) of each speaker's spans of the decoded output."""
    levels = {}
    for name in ("Host", "Guest"):
        spans = [span(samples, e["start"], e["end"]) for e in timeline if e["speaker"] == name]
        levels[name] = pyloudnorm.Meter(RATE).integrated_loudness(np.concatenate(spans))
    return levels


def test_the_measurement_sees_the_10_db_between_the_providers_without_leveling(daemon):
    """The control for the test above: with loudness off nothing is levelled, and the same measurement finds
    the guest's provider about 10 dB below the host's."""
    daemon.tts = two_providers
    run = daemon.invoke_tool(params(loudness="off"))
    assert run.ok, run.describe()
    levels = speaker_levels(decode_mp3(run.audio_files()[0].data), run.jsons[0]["timeline"])
    assert 8.0 < levels["Host"] - levels["Guest"] < 12.0, levels


def test_chapters_across_models(daemon):
    """Headings (read by model 1's narrator) become chapters that start where their heading's audio starts, with
    the speakers of both models in between; each chapter's audio is where the timeline says."""
    text = ("# Echo section\n\nHost: Alpha opens the show.\nGuest: Bravo answers it.\n\n"
            "# Foxtrot section\n\nHost: Charlie goes on.\nGuest: Delta ends it.")  # fmt: skip
    daemon.tts = two_providers
    run = daemon.invoke_tool(params(text=text, subtitles="none"))
    assert run.ok, run.describe()
    samples = decode_mp3(run.audio_files()[0].data)
    stats = run.jsons[0]
    timeline = stats["timeline"]
    assert [(e["speaker"], e["model"]) for e in timeline] == [
        (None, "tts-1"), ("Host", "tts-1"), ("Guest", "speech-01-turbo")] * 2  # fmt: skip
    headings = [e for e in timeline if e["speaker"] is None]
    chapters = stats["chapters"]
    assert [c["title"] for c in chapters] == ["Echo section", "Foxtrot section"]
    assert chapters[0]["start"] == 0.0 and chapters[1]["start"] == pytest.approx(headings[1]["start"], abs=0.01)
    assert chapters[0]["end"] == pytest.approx(chapters[1]["start"], abs=0.01)
    assert chapters[1]["end"] == pytest.approx(len(samples) / RATE, abs=0.1)
    for entry in timeline:
        segment = span(samples, entry["start"], entry["end"], margin=(entry["end"] - entry["start"]) * 0.2)
        expected = FREQS[word_of(entry["text"])]
        assert abs(dominant_freq(segment) - expected) < expected * 0.04, (entry, dominant_freq(segment))
    levels = speaker_levels(samples, timeline)
    assert abs(levels["Host"] - levels["Guest"]) <= 1.5, levels


def test_a_failing_second_model_is_named_in_the_error(daemon):
    def guest_provider_down(call: TTSCall) -> list[bytes]:
        if call.model == MODEL_2["model"]:
            raise RuntimeError("[minimax] Rate limit exceeded for speech-01-turbo")
        return two_providers(call)

    daemon.tts = guest_provider_down
    run = daemon.invoke_tool(params())
    assert run.error is not None, run.describe()
    message = run.error_message
    assert "model_2 langgenius/minimax/minimax/speech-01-turbo" in message and "Rate limit exceeded" in message
    assert re.search(r"TTS request #(2|4|6) ", message), message  # a guest's request
    assert run.files == [] and run.jsons == []


@pytest.mark.parametrize(
    ("override", "param", "words"),
    [
        ({"speakers": "Host=alloy; Guest=3:nova"}, "speakers", ["guest", "model_3"]),  # model_3 is empty
        ({"speakers": '{"Host": "alloy", "Guest": {"model": 3}}', "model_3": {"provider": "", "model": ""}},
         "speakers", ["guest", "model_3"]),
        ({"speakers": "Host=alloy; Guest=2:", "model_2": None}, "speakers", ["guest", "model_2"]),
        ({"speakers": "Host=alloy; Guest=2:nova@fast"}, "speakers", ["Guest", "fast"]),
        ({"speakers": "Host=alloy; Guest=7:nova"}, "speakers", ["Guest", "model '7'"]),
        ({"speakers": '{"Guest": {"model": 2, "voice": "nova"'}, "speakers", ["invalid JSON"]),
        ({"model_2": {"provider": "langgenius/minimax/minimax", "model": "abab6.5", "model_type": "llm"}},
         "model_2", ["not a TTS model"]),
    ],
)
def test_bad_mappings_fail_before_any_tts_call(daemon, override, param, words):
    daemon.tts = two_providers
    run = daemon.invoke_tool(params(**override), timeout=60)
    assert run.error is not None, run.describe()
    assert run.error_message.startswith(f"{param}: "), run.error_message
    for word in words:
        assert word in run.error_message, run.error_message
    assert run.tts_calls == [] and run.files == []
