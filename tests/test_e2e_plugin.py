"""End to end: the packaged plugin, started as Dify's daemon starts it, against provider-shaped TTS answers.

The package is built and unpacked once; the plugin runs from there (`python -m main`, stdio protocol) and the
fake daemon in tests/daemon.py answers its TTS and storage calls. Every answer is real audio made with ffmpeg
in the shapes providers really send (see DESIGN.md §1): whole files per chunk, 1024-byte slices of
per-sentence mp3 files with ID3 + Xing headers, fragments of one continuous stream, WAV. The result is checked
independently: decoded by ffmpeg with zero errors, loudness measured with pyloudnorm, tone order by spectrum.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import yaml
from scipy.signal import resample_poly

from audio import ffmpeg
from tests import audiogen
from tests.daemon import DEFAULT_MODEL, NEVER, FakeDaemon, HoldAndRelease, TTSCall, fragments, slices

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RATE = 48000  # analysis rate
STATS_FIELDS = list(
    yaml.safe_load((REPO / "tools" / "tts_pipeline.yaml").read_text(encoding="utf-8"))["output_schema"]["properties"]
)

# Six sentences, two paragraphs: one TTS request each at max_chars_per_request=50. Each sentence starts with a
# word that decides the tone the fake provider answers with, so the order can be checked in the output.
TEXT = (
    "Alpha opens the show with a few words. Bravo follows with a second line. Charlie adds a third thought.\n\n"
    "Delta starts a new paragraph here. Echo keeps it going for a while. Foxtrot closes the test."
)
WORDS = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"]
FREQS = dict(zip(WORDS, [200.0, 260.0, 340.0, 450.0, 590.0, 770.0], strict=True))
PAUSES_S = 4 * 0.3 + 0.7  # between sentences / at the paragraph break, with the default pauses


def base_params(**overrides) -> dict:
    return {"text": TEXT, "model": dict(DEFAULT_MODEL), "max_chars_per_request": 50, "cache": False, **overrides}


def word_of(text: str) -> str:
    found = [w for w in WORDS if w in text]
    assert found, f"no marker word in TTS text {text!r}"
    return found[0]


# --- provider-shaped answers -----------------------------------------------------------------------------

# name → (chunks for one call with tone `freq`, seconds of audio per call, files per call)
SHAPES: dict[str, tuple[Callable[[float], list[bytes]], float, int]] = {
    # tongyi: one complete file per call, one chunk
    "whole_files": (lambda f: [audiogen.mp3(1.0, freq=f)], 1.0, 1),
    # openai / azure / siliconflow: one mp3 per sentence (here two per call), ID3 + Xing, in 1024-byte slices
    "sentence_slices": (
        lambda f: slices(audiogen.mp3(0.5, freq=f, id3=True) + audiogen.mp3(0.6, freq=f, id3=True), 1024),
        1.1,
        2,
    ),
    # minimax: fragments of one continuous stream (no Xing, no ID3) at irregular sizes
    "stream_fragments": (
        lambda f: fragments(audiogen.mp3(1.0, freq=f, xing=False), [700, 1500, 333, 2900, 64, 4096]),
        1.0,
        1,
    ),
    # a WAV file per call
    "wav_whole": (lambda f: [audiogen.wav(1.0, 24000, freq=f)], 1.0, 1),
    # a streamed WAV (sizes 0xFFFFFFFF) in 1024-byte slices
    "wav_streamed_slices": (lambda f: slices(audiogen.wav(1.0, 24000, freq=f, streamed=True), 1024), 1.0, 1),
}


def tone_handler(shape: str = "whole_files") -> Callable[[TTSCall], list[bytes]]:
    make = SHAPES[shape][0]
    return lambda call: make(FREQS[word_of(call.text)])


# --- fixtures ----------------------------------------------------------------------------------------------


def _load_packager():
    spec = importlib.util.spec_from_file_location("tts_pipeline_packager_e2e", REPO / "scripts" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """The .difypkg, built from this checkout and unpacked: what Dify would install."""
    package = _load_packager().build(REPO, tmp_path_factory.mktemp("dist"))
    target = tmp_path_factory.mktemp("plugin")
    with zipfile.ZipFile(package) as zf:
        zf.extractall(target)
    return target


@pytest.fixture(scope="module")
def shared_daemon(plugin_dir):
    with FakeDaemon(plugin_dir) as daemon:
        yield daemon


@pytest.fixture
def daemon(shared_daemon):
    """The module's plugin process, with a fresh handler and empty storage for each test."""
    shared_daemon.tts = tone_handler()
    shared_daemon.storage.clear()
    shared_daemon.storage_fault = None
    yield shared_daemon
    assert shared_daemon.alive, f"plugin died:\n{shared_daemon.stderr_tail()}"
    assert not shared_daemon.stray_lines, shared_daemon.stray_lines
    assert not shared_daemon.global_errors, shared_daemon.global_errors


# --- independent measurements --------------------------------------------------------------------------------


def decode_mp3(data: bytes) -> np.ndarray:
    pcm, errors = audiogen.decode(data, "mp3", RATE, 1)
    assert errors == "", f"decoder errors in the output:\n{errors}"
    return pcm[:, 0]


def header_duration(data: bytes) -> float:
    """The duration ffmpeg reads from the file's headers (Xing/Info for mp3)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.mp3"
        path.write_bytes(data)
        err = ffmpeg.run(["-i", str(path)], check=False).stderr
    match = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", err)
    assert match, err
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def true_peak_dbtp(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(resample_poly(samples.astype(np.float64), 4, 1))))
    return 20 * np.log10(max(peak, 1e-9))


def dominant_freq(samples: np.ndarray) -> float:
    window = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    band = (freqs > 100) & (freqs < 1500)
    return float(freqs[band][np.argmax(spectrum[band])])


def check_narration(
    run, *, audio_s: float, pauses_s: float = PAUSES_S, requests: int = 6, inner_seams: int = 0
) -> np.ndarray:
    """The common contract of a successful run. Returns the decoded samples.

    `inner_seams`: seams between files of one call; the pipeline may put up to a sentence pause there."""
    assert run.ok, run.describe()
    assert not run.protocol_errors, run.protocol_errors
    audio = run.audio_files()
    assert len(audio) == 1, run.describe()
    assert audio[0].mime_type == "audio/mpeg" and audio[0].filename == "narration.mp3"
    samples = decode_mp3(audio[0].data)
    decoded_s = len(samples) / RATE
    expected = audio_s + pauses_s
    assert expected - 0.5 < decoded_s < expected + inner_seams * 0.3 + 0.5, (decoded_s, audio_s, pauses_s)
    assert abs(header_duration(audio[0].data) - decoded_s) < 0.1
    loudness = pyloudnorm.Meter(RATE).integrated_loudness(samples)
    assert abs(loudness - -16.0) <= 1.0, loudness
    assert true_peak_dbtp(samples) <= -0.7  # ceiling −1 dBTP, with measurement tolerance

    assert len(run.jsons) == 1
    stats = run.jsons[0]
    assert list(stats) == STATS_FIELDS
    assert stats["format"] == "mp3" and stats["size_bytes"] == len(audio[0].data)
    assert stats["sha256"] == hashlib.sha256(audio[0].data).hexdigest()  # of the blob as reassembled here
    assert abs(stats["duration_s"] - decoded_s) < 0.1
    assert stats["requests"] == requests == len(stats["timeline"])
    assert stats["target"] == "podcast" and abs(stats["loudness_lufs"] - loudness) < 1.0
    assert run.variables == {name: value for name, value in stats.items() if value is not None}
    assert len(run.texts) == 1 and "narration.mp3" in run.texts[0]
    return samples


# --- tests -------------------------------------------------------------------------------------------------


def test_plugin_starts_from_the_package(shared_daemon, plugin_dir):
    assert shared_daemon.manifest["name"] == "tts_pipeline"
    assert shared_daemon.manifest["version"] == "0.1.0"
    deadline = time.monotonic() + 10  # the SDK logs its configuration just after printing the manifest
    while not any("Installed tool: tts_pipeline" in log.get("message", "") for log in shared_daemon.logs):
        assert time.monotonic() < deadline, shared_daemon.logs
        time.sleep(0.05)
    assert not (plugin_dir / "tests").exists()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_provider_shapes_give_one_clean_file(daemon, shape):
    daemon.tts = tone_handler(shape)
    run = daemon.invoke_tool(base_params())
    _, seconds, files = SHAPES[shape]
    check_narration(run, audio_s=6 * seconds, inner_seams=6 * (files - 1))
    assert len(run.tts_calls) == 6
    assert {call.voice for call in run.tts_calls} == {"default"}  # no voice chosen: the placeholder
    assert {(c.provider, c.model) for c in run.tts_calls} == {(DEFAULT_MODEL["provider"], DEFAULT_MODEL["model"])}


def test_calls_answered_out_of_order_keep_the_text_order(daemon):
    # The first call of a voice the plugin process has not heard yet runs alone (audio.voices); make it heard.
    assert daemon.invoke_tool(base_params(text="Alpha warms the voice up.")).ok
    hold = HoldAndRelease(tone_handler(), count=4)  # answer the first four in reverse order of arrival
    daemon.tts = hold
    run = daemon.invoke_tool(base_params(concurrency=4))
    samples = check_narration(run, audio_s=6.0)
    assert hold.answered[:4] == hold.arrived[:4][::-1]  # they really were answered out of order
    for entry in run.jsons[0]["timeline"]:
        start, end = entry["start"], entry["end"]
        margin = (end - start) * 0.2
        segment = samples[int((start + margin) * RATE) : int((end - margin) * RATE)]
        expected = FREQS[word_of(entry["text"])]
        assert abs(dominant_freq(segment) - expected) < expected * 0.04, (entry, dominant_freq(segment))


def test_a_failing_call_is_retried(daemon):
    attempts: Counter[str] = Counter()
    tones = tone_handler()

    def flaky(call: TTSCall) -> list[bytes]:
        attempts[word_of(call.text)] += 1
        if word_of(call.text) == "Charlie" and attempts["Charlie"] == 1:
            raise RuntimeError("[openai] Server Unavailable Error, 503 service unavailable")
        return tones(call)

    daemon.tts = flaky
    run = daemon.invoke_tool(base_params())
    check_narration(run, audio_s=6.0)
    assert attempts["Charlie"] == 2 and len(run.tts_calls) == 7
    assert run.jsons[0]["retries"] >= 1


def test_a_call_that_always_fails_fails_the_job_without_audio(daemon):
    tones = tone_handler()

    def broken(call: TTSCall) -> list[bytes]:
        if word_of(call.text) == "Delta":
            raise RuntimeError("[openai] Rate Limit Error, Rate limit reached for tts-1 in organization org-x")
        return tones(call)

    daemon.tts = broken
    run = daemon.invoke_tool(base_params())
    assert run.error is not None, run.describe()
    assert "Rate limit reached for tts-1" in run.error_message
    assert "#4" in run.error_message and "Delta" in run.error_message  # names the request
    assert run.files == [] and run.jsons == [] and run.texts == []
    assert sum(word_of(c.text) == "Delta" for c in run.tts_calls) >= 2  # it was retried first


def test_a_json_error_body_instead_of_audio_is_an_error_naming_the_call(daemon):
    tones = tone_handler()
    body = b'{"error": {"message": "Incorrect API key provided: sk-abc***", "type": "invalid_request_error"}}'

    def json_body(call: TTSCall) -> list[bytes]:
        return [body] if word_of(call.text) == "Echo" else tones(call)

    daemon.tts = json_body
    run = daemon.invoke_tool(base_params())
    assert run.error is not None, run.describe()
    assert "Incorrect API key provided" in run.error_message
    assert "#5" in run.error_message
    assert run.files == [] and run.jsons == []


def test_a_call_with_no_audio_at_all_is_an_error_not_an_empty_file(daemon):
    """A model plugin on SDK 0.7.x whose _invoke returns bytes yields zero chunks."""
    tones = tone_handler()
    daemon.tts = lambda call: [] if word_of(call.text) == "Bravo" else tones(call)
    run = daemon.invoke_tool(base_params())
    assert run.error is not None, run.describe()
    assert "#2" in run.error_message
    assert run.files == []


@pytest.mark.parametrize(
    ("override", "param"),
    [
        ({"text": ""}, "text"),
        ({"output_format": "mp4"}, "output_format"),
        ({"concurrency": 99}, "concurrency"),
        ({"model": {"provider": "langgenius/openai/openai", "model_type": "tts"}}, "model"),
        ({"max_chars_per_request": 10}, "max_chars_per_request"),
        ({"speakers": "Host"}, "speakers"),
        ({"speed": 5}, "speed"),
        ({"lexicon": "show"}, "lexicon"),
    ],
)
def test_bad_parameters_fail_before_any_tts_call(daemon, override, param):
    run = daemon.invoke_tool(base_params(**override), timeout=60)
    assert run.error is not None, run.describe()
    assert run.error_message.startswith(f"{param}: "), run.error_message
    assert run.tts_calls == [] and run.storage_calls == [] and run.files == []


def test_voice_comes_from_the_parameter_then_the_selector(daemon):
    one = "Alpha is the only sentence."
    run = daemon.invoke_tool(base_params(text=one, model={**DEFAULT_MODEL, "voice": "nova"}))
    assert run.ok, run.describe()
    assert [c.voice for c in run.tts_calls] == ["nova"]
    run = daemon.invoke_tool(base_params(text=one, model={**DEFAULT_MODEL, "voice": "nova"}, voice="onyx"))
    assert run.ok, run.describe()
    assert [c.voice for c in run.tts_calls] == ["onyx"]


def test_speakers_get_their_voices(daemon):
    script = "Host: Alpha welcomes everyone to the show.\nGuest: Bravo is glad to be here.\nHost: Charlie wraps up."
    run = daemon.invoke_tool(base_params(text=script, speakers="Host=alloy; Guest=nova"))
    assert run.ok, run.describe()
    voices = {word_of(c.text): c.voice for c in run.tts_calls}
    assert voices == {"Alpha": "alloy", "Bravo": "nova", "Charlie": "alloy"}
    assert all("Host:" not in c.text and "Guest:" not in c.text for c in run.tts_calls)
    timeline = run.jsons[0]["timeline"]
    assert [e["voice"] for e in timeline] == ["alloy", "nova", "alloy"]


def test_speed_and_lexicon(daemon):
    """The model is sent the respelling, the stats keep the written word; 1.25× speed shortens the audio, not
    the pauses."""
    run = daemon.invoke_tool(base_params(speed=1.25, lexicon="show=shoe; few words=a handful"))
    check_narration(run, audio_s=6.0 / 1.25)
    sent = " ".join(c.text for c in run.tts_calls)
    assert "Alpha opens the shoe with a a handful." in sent and "show" not in sent
    stats = run.jsons[0]
    assert stats["timeline"][0]["text"] == "Alpha opens the show with a few words."
    assert stats["speed"] == 1.25 and stats["respellings"] == 2


def test_a_rerun_is_served_from_the_cache(daemon):
    first = daemon.invoke_tool(base_params(cache=True))
    check_narration(first, audio_s=6.0)
    assert len(first.tts_calls) == 6 and first.jsons[0]["cache_misses"] == 6
    assert daemon.storage, "nothing was cached"
    second = daemon.invoke_tool(base_params(cache=True))
    check_narration(second, audio_s=6.0)
    assert second.tts_calls == []
    assert second.jsons[0]["cache_hits"] == 6 and "reused from cache" in second.texts[0]


def test_a_broken_storage_does_not_break_the_job(daemon):
    def fault(call):
        raise RuntimeError("persistence not found")

    daemon.storage_fault = fault
    run = daemon.invoke_tool(base_params(cache=True))
    check_narration(run, audio_s=6.0)


def test_subtitles_are_a_second_file(daemon):
    run = daemon.invoke_tool(base_params(subtitles="vtt", filename="../Episode 1.mp3"))
    assert run.ok, run.describe()
    assert [f.filename for f in run.files] == ["Episode 1.mp3", "Episode 1.vtt"]
    assert [f.mime_type for f in run.files] == ["audio/mpeg", "text/vtt"]
    vtt = run.files[1].data.decode("utf-8")
    assert vtt.startswith("WEBVTT")
    assert vtt.count("-->") >= 6 and "Foxtrot" in vtt


def test_parallel_tool_calls(daemon):
    runs = [daemon.start_tool(base_params()), daemon.start_tool(base_params(text="Echo alone. Foxtrot too."))]
    first, second = (run.wait(180) for run in runs)
    check_narration(first, audio_s=6.0)
    assert second.ok, second.describe()
    assert len(second.audio_files()) == 1
    assert {c.session_id for c in first.tts_calls} == {first.session_id}


def test_a_silent_call_times_out_and_is_retried(plugin_dir):
    """The SDK gives up on a call after MAX_INVOCATION_TIMEOUT seconds without an answer (lowered here)."""
    seen: Counter[str] = Counter()
    tones = tone_handler()
    lock = threading.Lock()

    def silent_once(call: TTSCall) -> Iterable[bytes] | object:
        with lock:
            seen[word_of(call.text)] += 1
            first = seen[word_of(call.text)] == 1
        return NEVER if word_of(call.text) == "Bravo" and first else tones(call)

    with FakeDaemon(plugin_dir, tts=silent_once, max_invocation_timeout=2) as daemon:
        run = daemon.invoke_tool(base_params())
    check_narration(run, audio_s=6.0)
    assert seen["Bravo"] == 2 and run.jsons[0]["retries"] >= 1


# --- the finished episode: Dify `file` parameters, downloaded by the plugin ---------------------------------


@pytest.fixture(scope="module")
def file_server(tmp_path_factory):
    """A tiny HTTP server on 127.0.0.1 standing in for Dify's file URL (FILES_URL)."""
    import http.server
    import socket

    root = tmp_path_factory.mktemp("files")
    ffmpeg.run(["-f", "lavfi", "-i", "aevalsrc=0.3*sin(2*PI*440*t)+0.2*sin(2*PI*554*t):s=44100:d=2",
                "-c:a", "libmp3lame", "-f", "mp3", ffmpeg.file_url(root / "jingle.mp3")])
    ffmpeg.run(["-f", "lavfi", "-i", "aevalsrc=0.3*sin(2*PI*70*t):s=44100:d=3.3", "-f", "flac",
                ffmpeg.file_url(root / "bed.flac")])
    (root / "notes.mp3").write_text("<html>not audio</html>" * 50)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    yield f"http://127.0.0.1:{httpd.server_address[1]}", closed
    httpd.shutdown()
    httpd.server_close()


def dify_file(url: str, name: str, mime: str = "audio/mpeg", size: int | None = 1000) -> dict:
    """A file parameter as the daemon sends it (the SDK turns it into dify_plugin.file.File)."""
    return {"dify_model_identity": "__dify__file__", "url": url, "type": "audio", "mime_type": mime,
            "filename": name, "extension": "." + name.rsplit(".", 1)[-1], "size": size}


def test_an_episode_with_intro_and_music_from_dify_files(daemon, file_server):
    base, _ = file_server
    run = daemon.invoke_tool(base_params(
        intro=dify_file(f"{base}/jingle.mp3?timestamp=1&sign=x", "jingle.mp3"),
        music=dify_file(f"{base}/bed.flac?sign=y", "bed.flac", "audio/flac"), music_level=-22,
    ))
    assert run.ok, run.describe()
    stats = run.jsons[0]
    assert list(stats) == STATS_FIELDS
    assert stats["intro_s"] == pytest.approx(2.0, abs=0.06) and stats["outro_s"] is None
    assert stats["music_level_lu"] == pytest.approx(-22.0, abs=1.0)
    assert abs(stats["speech_loudness_lufs"] - -16.0) <= 1.0 and abs(stats["loudness_lufs"] - -16.0) <= 1.0
    assert stats["timeline"][0]["start"] > 2.0  # shifted by the intro
    samples = decode_mp3(run.audio_files()[0].data)
    assert abs(len(samples) / RATE - stats["duration_s"]) < 0.1


@pytest.mark.parametrize("case", ["not audio", "unreachable"])
def test_a_bad_dify_file_fails_before_any_tts_call(daemon, file_server, case):
    base, closed = file_server
    url = f"{base}/notes.mp3" if case == "not audio" else f"http://127.0.0.1:{closed}/files/x/file-preview"
    run = daemon.invoke_tool(base_params(outro=dify_file(url, "outro.mp3"))).wait()
    assert not run.ok and run.error_message.startswith("outro: "), run.describe()
    assert ("not an audio file" if case == "not audio" else "FILES_URL") in run.error_message
    assert run.tts_calls == []
