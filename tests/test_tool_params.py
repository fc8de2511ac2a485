"""The Dify adapter without a daemon: parameter mapping, voice resolution, messages, errors."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

# Importing dify_plugin runs gevent's monkey.patch_all() (dify_plugin/_gevent.py), which would turn every thread
# of this pytest process into a greenlet; the SDK classes work without it (see test_plugin_package.py).
sys.modules.setdefault("dify_plugin._gevent", types.ModuleType("dify_plugin._gevent"))

from dify_plugin.entities.tool import ToolRuntime  # noqa: E402

from audio.cache import KeyValueCache  # noqa: E402
from audio.errors import InvalidAudio, InvalidInput, SynthesisFailed  # noqa: E402
from audio.model import LOUDNESS_PRESETS, Chapter, Result, SpeakerVoice, Stats, TimelineEntry  # noqa: E402
from tools import tts_pipeline as tool_module  # noqa: E402
from tools.tts_pipeline import (  # noqa: E402
    PLACEHOLDER_VOICE,
    SelectedModel,
    TtsPipelineTool,
    parse_parameters,
    resolve_voice,
    sanitize_filename,
    stats_json,
    summary_text,
)

REPO = Path(__file__).resolve().parent.parent
MODEL = {"provider": "langgenius/openai/openai", "model": "tts-1", "model_type": "tts"}


def params(**overrides):
    return {"text": "Hello there. How are you?", "model": dict(MODEL), **overrides}


# --- parameters → Job --------------------------------------------------------------------------------


def test_defaults():
    call = parse_parameters(params())
    job = call.job
    assert job.text == "Hello there. How are you?"
    assert (call.provider, call.model) == ("langgenius/openai/openai", "tts-1")
    assert job.voice is None and call.voice_source == "placeholder"
    assert job.speakers == {}
    assert (job.encode.fmt, job.encode.bitrate_kbps, job.encode.sample_rate, job.encode.channels) == ("mp3", None,
                                                                                                      None, 1)
    assert job.encode.max_bytes == 15 * 2**20  # Dify ≤ 1.2 refuses tool files over 15 MiB
    assert job.loudness == LOUDNESS_PRESETS["podcast"]
    assert (job.pause_ms, job.paragraph_pause_ms, job.max_chars_per_request, job.concurrency) == (300, 700, 600, 4)
    assert job.subtitles == "none" and job.chapters is None
    assert (job.tags.title, job.tags.artist, job.tags.album) == (None, None, None)
    assert job.cache_namespace == "langgenius/openai/openai/tts-1"
    assert job.time_budget_s and job.time_budget_s < 600
    assert call.filename == "narration" and call.use_cache is True


def test_values_as_dify_sends_them():
    """Dify's form sends selects as strings, numbers as int/float (or strings from variables), booleans as
    bools (or strings)."""
    call = parse_parameters(params(
        voice="  nova ", speakers="Host=alloy; Guest=echo", output_format="M4A", bitrate="64",
        sample_rate="44100", channels="stereo", loudness="broadcast", pause_ms=250.0, paragraph_pause_ms="900",
        max_chars_per_request=1200, concurrency="8", title=" My  show ", artist="Me", album="Pilot",
        filename="episode-1.mp3", subtitles="vtt", chapters=False, cache="false", max_output_mb=12.5,
    ))  # fmt: skip
    job = call.job
    assert job.voice == "nova" and call.voice_source == "voice parameter"
    assert job.speakers == {"host": SpeakerVoice("alloy"), "guest": SpeakerVoice("echo")}
    assert (job.encode.fmt, job.encode.bitrate_kbps, job.encode.sample_rate, job.encode.channels) == ("m4a", 64,
                                                                                                      44100, 2)
    assert job.encode.max_bytes == int(12.5 * 2**20)
    assert job.loudness.name == "broadcast" and job.loudness.integrated == -23.0
    assert (job.pause_ms, job.paragraph_pause_ms, job.max_chars_per_request, job.concurrency) == (250, 900, 1200, 8)
    assert (job.tags.title, job.tags.artist, job.tags.album) == ("My show", "Me", "Pilot")
    assert job.subtitles == "vtt" and job.chapters is False
    assert call.filename == "episode-1" and call.use_cache is False


def test_blank_optional_values_mean_defaults():
    blank = {name: "" for name in ("voice", "model_2", "model_3", "speakers", "output_format", "bitrate",
                                   "sample_rate", "channels",
                                   "loudness", "pause_ms", "paragraph_pause_ms", "max_chars_per_request",
                                   "concurrency", "title", "artist", "album", "filename", "subtitles", "chapters",
                                   "cache", "max_output_mb", "speed", "lexicon")}
    assert parse_parameters(params(**blank)) == parse_parameters(params())
    nones = dict.fromkeys(blank)
    assert parse_parameters(params(**nones)) == parse_parameters(params())


MODEL_2 = {"provider": "minimax", "model": "speech-01", "model_type": "tts", "voice": "female-shaonv"}


def test_speakers_can_use_the_second_and_third_model():
    call = parse_parameters(params(
        voice="onyx", model_2=dict(MODEL_2), model_3=json.dumps({**MODEL, "model": "tts-1-hd"}),
        speakers='{"Host": "alloy", "Guest": {"model": 2}, "Expert": "3:nova@1.2", "*": "2:"}',
    ))  # fmt: skip
    job = call.job
    assert set(call.models) == {1, 2, 3}
    assert (call.models[2].provider, call.models[2].model, call.models[2].voice) == ("minimax", "speech-01",
                                                                                      "female-shaonv")
    assert job.models == {1: "langgenius/openai/openai/tts-1", 2: "minimax/speech-01",
                          3: "langgenius/openai/openai/tts-1-hd"}
    assert job.cache_namespace == job.models[1]  # model 1's cache keys are what they were before model_2 existed
    assert job.model_voices == {2: "female-shaonv", 3: None}
    assert job.speakers == {"host": SpeakerVoice("alloy"), "guest": SpeakerVoice(None, 2),
                            "expert": SpeakerVoice("nova", 3, 1.2), "*": SpeakerVoice(None, 2)}


@pytest.mark.parametrize("empty", [None, "", {}, {"provider": "", "model": "", "model_type": "tts"}])
def test_an_empty_extra_selector_is_no_model(empty):
    call = parse_parameters(params(model_2=empty, model_3=empty))
    assert set(call.models) == {1} and call.job.models == {1: "langgenius/openai/openai/tts-1"}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"speakers": "Host=alloy; Guest=3:nova"}, "speakers", ["'guest'", "model_3", "model 3"]),
        ({"speakers": "Host=alloy; Guest=2:"}, "speakers", ["'guest'", "model_2"]),
        ({"speakers": '{"*": {"model": 3}}', "model_2": MODEL_2}, "speakers", ["'*'", "model_3", "1 or 2"]),
        ({"model_2": {"provider": "minimax", "model_type": "tts"}}, "model_2", ["no model"]),
        ({"model_3": {**MODEL, "model": "gpt-4o", "model_type": "llm"}}, "model_3", ["not a TTS model"]),
    ],
)
def test_a_speaker_sent_to_an_empty_or_bad_selector_is_an_error(extra, param, words):
    with pytest.raises(InvalidInput) as err:
        parse_parameters(params(text="Host: Hi.\nGuest: Hello.", **extra))
    assert err.value.param == param
    for word in words:
        assert word in str(err.value), str(err.value)


def test_chapters_true_means_when_the_text_has_headings():
    assert parse_parameters(params(chapters=True)).job.chapters is None
    assert parse_parameters(params(chapters="true")).job.chapters is None
    assert parse_parameters(params(chapters=False)).job.chapters is False


def test_model_selector_as_json_string():
    call = parse_parameters(params(model=json.dumps({**MODEL, "voice": "shimmer"})))
    assert (call.provider, call.model, call.job.voice, call.voice_source) == (MODEL["provider"], "tts-1", "shimmer",
                                                                              "model selector")


@pytest.mark.parametrize(
    ("explicit", "selector", "expected"),
    [
        ("onyx", "nova", ("onyx", "voice parameter")),
        ("", "nova", ("nova", "model selector")),
        ("   ", "nova", ("nova", "model selector")),
        (None, "nova", ("nova", "model selector")),
        (None, None, (None, "placeholder")),
        ("", None, (None, "placeholder")),
    ],
)
def test_voice_resolution(explicit, selector, expected):
    assert resolve_voice(explicit, selector) == expected


def test_selector_voice_is_used_and_blank_selector_voice_ignored():
    assert parse_parameters(params(model={**MODEL, "voice": "alloy", "language": "en-US"})).job.voice == "alloy"
    assert parse_parameters(params(model={**MODEL, "voice": ""})).job.voice is None
    assert parse_parameters(params(model={**MODEL, "voice": "alloy"}, voice="echo")).job.voice == "echo"


BAD = [
    ({"text": ""}, "text", "empty"),
    ({"text": "   \n "}, "text", "empty"),
    ({"text": None}, "text", "empty"),
    ({"model": None}, "model", "model selector"),
    ({"model": {}}, "model", "provider and no model"),
    ({"model": {"provider": "langgenius/openai/openai"}}, "model", "no model"),
    ({"model": {"model": "tts-1"}}, "model", "no provider"),
    ({"model": {**MODEL, "model_type": "llm"}}, "model", "not a TTS model"),
    ({"model": "gpt-4o"}, "model", "model selector"),
    ({"output_format": "mp4"}, "output_format", "mp3, m4a, ogg, flac, wav"),
    ({"bitrate": "100"}, "bitrate", "auto"),
    ({"sample_rate": "12345"}, "sample_rate", "44100"),
    ({"channels": "quad"}, "channels", "mono, stereo"),
    ({"loudness": "loud"}, "loudness", "podcast"),
    ({"pause_ms": -1}, "pause_ms", "0 to 10000"),
    ({"paragraph_pause_ms": 20000}, "paragraph_pause_ms", "0 to 10000"),
    ({"max_chars_per_request": 10}, "max_chars_per_request", "50 to 4000"),
    ({"concurrency": 99}, "concurrency", "1 to 16"),
    ({"concurrency": 0}, "concurrency", "1 to 16"),
    ({"concurrency": "many"}, "concurrency", "not a number"),
    ({"concurrency": 2.5}, "concurrency", "whole number"),
    ({"max_output_mb": 0}, "max_output_mb", "1 to 200"),
    ({"max_output_mb": 500}, "max_output_mb", "1 to 200"),
    ({"subtitles": "ass"}, "subtitles", "none, srt, vtt"),
    ({"speakers": "Host"}, "speakers", "Name=voice"),
    ({"chapters": "maybe"}, "chapters", "true or false"),
    ({"cache": "sometimes"}, "cache", "true or false"),
    ({"speed": 0.25}, "speed", "0.5 to 2"),
    ({"speed": "2.5"}, "speed", "0.5 to 2"),
    ({"speed": "fast"}, "speed", "not a number"),
    ({"lexicon": "Dify"}, "lexicon", "word=respelling"),
    ({"lexicon": '{"Dify": '}, "lexicon", "invalid JSON"),
    ({"lexicon": "=x"}, "lexicon", "empty word"),
]


@pytest.mark.parametrize(("override", "param", "hint"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_parameters_name_the_parameter(override, param, hint):
    with pytest.raises(InvalidInput) as info:
        parse_parameters(params(**override))
    assert info.value.param == param
    assert str(info.value).startswith(f"{param}: ")
    assert hint in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "narration"),
        ("", "narration"),
        ("...", "narration"),
        ("../../etc/passwd", "etc_passwd"),
        ("C:\\temp\\x", "C__temp_x"),
        (".hidden", "hidden"),
        ("a\nb\tc", "a b c"),
        ("a\x00b", "a b"),
        ("a\u202eb", "ab"),
        ("episode 1.MP3", "episode 1"),
        ("show.notes.v2", "show.notes.v2"),
        ("résumé", "résumé"),
        ("x" * 300, "x" * 100),
        ('a<b>c:"d"|e?f*', "a_b_c__d__e_f_"),
    ],
)
def test_sanitize_filename(value, expected):
    assert sanitize_filename(value) == expected


# --- results → messages ------------------------------------------------------------------------------


def fake_result(**overrides) -> Result:
    stats = Stats(requests=12, retries=1, cache_hits=3, cache_misses=9, warnings=["TTS call #4: last frame dropped"])
    values = dict(
        data=b"ID3fake-mp3-bytes",
        fmt="mp3",
        mime_type="audio/mpeg",
        extension=".mp3",
        duration_s=151.2345,
        sample_rate=24000,
        channels=1,
        bitrate_kbps=64,
        size_bytes=17,
        loudness_lufs=-16.0412,
        true_peak_dbtp=-1.2049,
        target=LOUDNESS_PRESETS["podcast"],
        timeline=[
            TimelineEntry(0, 0.0, 2.5, "Hello there.", speaker="host", voice="alloy", section="Intro"),
            TimelineEntry(1, 2.8, 5.01234, "word " * 100, speaker=None, voice=None),
        ],
        chapters=[Chapter("Intro", 0.0, 151.2345)],
        stats=stats,
    )
    values.update(overrides)
    return Result(**values)


def test_stats_json_has_exactly_the_declared_fields():
    schema = yaml.safe_load((REPO / "tools" / "tts_pipeline.yaml").read_text(encoding="utf-8"))["output_schema"]
    models = {1: SelectedModel("langgenius/openai/openai", "tts-1", None),
              2: SelectedModel("minimax", "speech-01", None)}
    timeline = [
        TimelineEntry(0, 0.0, 2.5, "Hello there.", speaker="host", voice="alloy", section="Intro"),
        TimelineEntry(1, 2.8, 5.01234, "word " * 100, speaker="guest", voice=None, model=2),
    ]
    stats = stats_json(fake_result(timeline=timeline), models)
    assert list(stats) == list(schema["properties"])
    json.dumps(stats)  # serializable
    assert stats["duration_s"] == 151.234 and stats["loudness_lufs"] == -16.04 and stats["true_peak_dbtp"] == -1.2
    assert stats["target"] == "podcast" and stats["requests"] == 12 and stats["cache_hits"] == 3
    entry = stats["timeline"][0]
    assert set(entry) == set(schema["properties"]["timeline"]["items"]["properties"])
    assert entry == {"index": 0, "start": 0.0, "end": 2.5, "speaker": "host", "voice": "alloy", "text": "Hello there.",
                     "provider": "langgenius/openai/openai", "model": "tts-1"}
    assert (stats["timeline"][1]["provider"], stats["timeline"][1]["model"]) == ("minimax", "speech-01")
    assert len(stats["timeline"][1]["text"]) <= 120 and stats["timeline"][1]["text"].endswith("…")
    assert stats["chapters"] == [{"title": "Intro", "start": 0.0, "end": 151.234}]
    assert stats["warnings"] == ["TTS call #4: last frame dropped"]


def test_summary_text():
    text = summary_text(fake_result(), "narration.mp3")
    assert text.startswith("Narrated 2:31 of audio from 12 requests (3 reused from cache) → narration.mp3, −16.0 LUFS")
    assert "1 request retried" in text and "last frame dropped" in text
    plain = summary_text(fake_result(stats=Stats(requests=1), duration_s=3725.0), "a.mp3")
    assert plain == "Narrated 1:02:05 of audio from 1 request → a.mp3, −16.0 LUFS"
    off = summary_text(fake_result(stats=Stats(requests=2), target=LOUDNESS_PRESETS["off"], loudness_lufs=-20.3),
                       "a.wav")
    assert off.endswith("−20.3 LUFS (not normalized)")


# --- the Tool class with a fake session ---------------------------------------------------------------


class FakeTTS:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, str]] = []

    def invoke(self, model_config, content_text):
        self.calls.append((model_config.model_dump(mode="json"), content_text))
        return iter([b"chunk"])


class FakeStorage:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key):
        return self.data[key]

    def set(self, key, val):
        self.data[key] = val

    def exist(self, key):
        return key in self.data

    def delete(self, key):
        del self.data[key]


def make_tool():
    session = types.SimpleNamespace(model=types.SimpleNamespace(tts=FakeTTS()), storage=FakeStorage())
    tool = TtsPipelineTool(runtime=ToolRuntime(credentials={}, user_id="u", session_id="s"), session=session)
    return tool, session


def test_synthesize_calls_dify_tts_with_the_resolved_voice():
    tool, session = make_tool()
    synthesize = tool._synthesizer("langgenius/openai/openai", "tts-1")
    assert list(synthesize("Hello.", None)) == [b"chunk"]
    assert list(synthesize("Hi.", "nova")) == [b"chunk"]
    (first, text1), (second, text2) = session.model.tts.calls
    assert first == {"provider": "langgenius/openai/openai", "model": "tts-1", "model_type": "tts",
                     "voice": PLACEHOLDER_VOICE}
    assert second["voice"] == "nova" and (text1, text2) == ("Hello.", "Hi.")
    assert PLACEHOLDER_VOICE.strip()  # the daemon rejects an empty voice


def run_tool(monkeypatch, parameters, outcome):
    """Invoke the tool with narrate replaced by `outcome` (a Result or an exception); returns (messages, seen)."""
    tool, _ = make_tool()
    seen = {}

    def fake_narrate(job, synthesize, *, cache=None, progress=None, workdir=None):
        seen.update(job=job, synthesize=synthesize, cache=cache)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(tool_module, "narrate", fake_narrate)
    return list(tool._invoke(parameters)), seen


def test_messages_of_a_successful_run(monkeypatch):
    messages, seen = run_tool(monkeypatch, params(filename="My Show", model_2=MODEL_2), fake_result())
    assert isinstance(seen["cache"], KeyValueCache)
    assert set(seen["synthesize"]) == {1, 2}  # one Dify TTS callable per selected model
    kinds = [m.type.value for m in messages]
    assert kinds[0] == "blob" and kinds.count("blob") == 1 and kinds.count("json") == 1 and kinds[-1] == "text"
    assert messages[0].message.blob == b"ID3fake-mp3-bytes"
    assert messages[0].meta == {"mime_type": "audio/mpeg", "filename": "My Show.mp3"}
    stats = next(m.message.json_object for m in messages if m.type.value == "json")
    variables = {m.message.variable_name: m.message.variable_value for m in messages if m.type.value == "variable"}
    assert variables == {k: v for k, v in stats.items() if v is not None}  # None is no variable message
    assert stats["sha256"] == hashlib.sha256(b"ID3fake-mp3-bytes").hexdigest()
    assert "My Show.mp3" in messages[-1].message.text


def test_no_variable_message_has_no_value(monkeypatch):
    """Dify before PR #30082 refuses a variable message whose value is None; the JSON keeps the nulls."""
    lossless = fake_result(fmt="flac", mime_type="audio/flac", extension=".flac", bitrate_kbps=None,
                           loudness_lufs=None, true_peak_dbtp=None, target=LOUDNESS_PRESETS["off"])
    messages, _ = run_tool(monkeypatch, params(output_format="flac", loudness="off"), lossless)
    stats = next(m.message.json_object for m in messages if m.type.value == "json")
    assert stats["bitrate_kbps"] is None and stats["loudness_lufs"] is None and stats["true_peak_dbtp"] is None
    variables = {m.message.variable_name: m.message.variable_value for m in messages if m.type.value == "variable"}
    assert all(value is not None for value in variables.values())
    production = {"intro_s", "outro_s", "music_level_lu", "speech_loudness_lufs"}  # no intro, outro or music
    assert set(stats) - set(variables) == {"bitrate_kbps", "loudness_lufs", "true_peak_dbtp", *production}
    assert variables["timeline"] == stats["timeline"]  # None inside a list is fine (Dify checks the top level)


def test_subtitles_come_as_a_second_file(monkeypatch):
    result = fake_result(subtitles="WEBVTT\n\n00:00.000 --> 00:02.500\nHello there.\n", subtitles_format="vtt")
    messages, _ = run_tool(monkeypatch, params(subtitles="vtt"), result)
    blobs = [m for m in messages if m.type.value == "blob"]
    assert [b.meta for b in blobs] == [{"mime_type": "audio/mpeg", "filename": "narration.mp3"},
                                       {"mime_type": "text/vtt", "filename": "narration.vtt"}]
    assert blobs[1].message.blob.startswith(b"WEBVTT")
    srt = fake_result(subtitles="1\n00:00:00,000 --> 00:00:02,500\nHello there.\n", subtitles_format="srt")
    messages, _ = run_tool(monkeypatch, params(subtitles="srt"), srt)
    assert [m.meta for m in messages if m.type.value == "blob"][1] == {"mime_type": "text/plain",
                                                                      "filename": "narration.srt"}


def test_cache_off(monkeypatch):
    _, seen = run_tool(monkeypatch, params(cache=False), fake_result())
    assert seen["cache"] is None


def test_bad_parameters_never_reach_narrate(monkeypatch):
    with pytest.raises(InvalidInput, match=r"^concurrency: "):
        run_tool(monkeypatch, params(concurrency=99), AssertionError("narrate must not be called"))


def test_pipeline_errors_reach_the_user_and_no_file_is_sent(monkeypatch):
    tool, _ = make_tool()
    err = InvalidAudio(2, "not audio", sniffed="JSON", preview='{"error": "quota"}')
    monkeypatch.setattr(tool_module, "narrate", lambda *a, **k: (_ for _ in ()).throw(err))
    produced = []
    with pytest.raises(InvalidAudio) as info:
        produced.extend(tool._invoke(params()))
    assert produced == []
    assert "TTS call #3" in str(info.value) and "quota" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "hint"),
    [
        ({}, "placeholder 'default'"),
        ({"voice": "bogus"}, "voice came from the voice parameter"),
        ({"model": {**MODEL, "voice": "bogus"}}, "voice came from the model selector"),
    ],
)
def test_voice_errors_tell_the_user_what_to_do(monkeypatch, extra, hint):
    failure = SynthesisFailed(0, "Hello there.", "invoke tts model failed: Invalid voice 'bogus'", 3)
    with pytest.raises(SynthesisFailed) as info:
        run_tool(monkeypatch, params(**extra), failure)
    message = str(info.value)
    assert message.startswith('TTS request #1 ("Hello there.…") failed after 3 attempt(s): ')
    assert hint in message and "`voice` parameter" in message and "model selector" in message


def test_a_refused_speaker_voice_is_named(monkeypatch):
    from audio.errors import VoiceRefused

    refused = VoiceRefused(2, "Guest says hi.", "invoke tts model failed: Invalid voice 'bogus'.", 1, "bogus")
    with pytest.raises(VoiceRefused) as info:
        run_tool(monkeypatch, params(speakers="Host=alloy; Guest=bogus"), refused)
    message = str(info.value)
    assert "refused the voice 'bogus'" in message and "`speakers`" in message and "placeholder" not in message


def test_no_audio_at_all_with_the_placeholder_suggests_picking_a_voice(monkeypatch):
    """MiniMax answers an unknown voice with a JSON error its model plugin drops: zero chunks."""
    empty = InvalidAudio(0, "the provider returned no audio at all (zero bytes)", sniffed="empty")
    with pytest.raises(InvalidAudio) as info:
        run_tool(monkeypatch, params(), empty)
    assert "placeholder 'default'" in str(info.value) and "Pick a voice" in str(info.value)
    with pytest.raises(InvalidAudio) as info:
        run_tool(monkeypatch, params(voice="nova"), InvalidAudio(0, "no audio", sniffed="empty"))
    assert "Pick a voice" not in str(info.value)


def test_other_synthesis_errors_get_no_voice_hint(monkeypatch):
    failure = SynthesisFailed(4, "Some text.", "invoke tts model failed: rate limit exceeded", 3)
    with pytest.raises(SynthesisFailed) as info:
        run_tool(monkeypatch, params(), failure)
    assert "rate limit exceeded" in str(info.value) and "`voice`" not in str(info.value)


def test_unexpected_errors_are_reported_as_internal(monkeypatch):
    with pytest.raises(RuntimeError, match=r"^tts-pipeline internal error \(KeyError: 'x'\)"):
        run_tool(monkeypatch, params(), KeyError("x"))


def test_speed_and_lexicon_reach_the_job():
    job = parse_parameters(params()).job
    assert job.speed == 1.0 and job.lexicon is None
    job = parse_parameters(params(speed=1.25, lexicon='{"Dify": "Dee-fy"}')).job
    assert job.speed == 1.25 and job.lexicon is not None and job.lexicon.entries == (("Dify", "Dee-fy"),)
    assert parse_parameters(params(speed="0.8", lexicon="Dify=Dee-fy")).job.lexicon == job.lexicon


def test_stats_json_reports_speed_and_respellings():
    result = fake_result()
    result.stats.speed, result.stats.respellings = 1.25, 4
    stats = stats_json(result)
    assert stats["speed"] == 1.25 and stats["respellings"] == 4
    assert " at 1.25× speed" in summary_text(result, "narration.mp3")
    assert "speed" not in summary_text(fake_result(), "narration.mp3")
