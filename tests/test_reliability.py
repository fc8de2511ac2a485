"""Reliability and security: faults, concurrency, limits, hostile input.

Most tests run the plugin as Dify's daemon does (`python -m main` over stdio, see tests/daemon.py) with TMPDIR
pointed at a fresh directory, so every run also proves the job left no temporary files behind, on success and
on failure. A few run `audio.pipeline.narrate` in-process where the plugin offers no handle (cancellation,
internal limits, the ffmpeg command line).

Already covered by tests/test_e2e_plugin.py and not repeated here: a call that fails once is retried
(test_a_failing_call_is_retried), a call that always fails fails the job naming the request, without audio
(test_a_call_that_always_fails_fails_the_job_without_audio), a call with zero chunks
(test_a_call_with_no_audio_at_all_is_an_error_not_an_empty_file), a JSON error body instead of audio, a call
that is silent once (SDK timeout, then retried: test_a_silent_call_times_out_and_is_retried), and one parallel
pair of sessions.

The hub-block test runs the plugin under tests/hubprobe.py and prints its figures; run with `-s` to see them.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from audio import ffmpeg, pipeline
from audio.errors import InvalidAudio, InvalidInput, OutputTooLarge, SynthesisFailed
from audio.model import EncodeOptions
from tests import audiogen
from tests.daemon import DEFAULT_MODEL, NEVER, FakeDaemon, TTSCall, slices

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RATE = 24000  # analysis rate (the fixtures' rate, so nothing is resampled twice)
NO_HANG_S = 120  # bounded waits: a session that takes longer than this is a hang, not a slow run


def params(text: str, **overrides) -> dict:
    return {"text": text, "model": dict(DEFAULT_MODEL), "max_chars_per_request": 50, "cache": False, **overrides}


# Three sentences → three TTS requests at max_chars_per_request=50; the first word picks the answer's tone.
THREE = "Alpha opens the show with a few words. Bravo follows with a second line. Charlie adds a third thought."
TONES = {"Alpha": 220.0, "Bravo": 330.0, "Charlie": 495.0}


def word_of(text: str) -> str:
    found = [w for w in TONES if w in text]
    assert found, f"no marker word in TTS text {text!r}"
    return found[0]


def tone(call: TTSCall) -> list[bytes]:
    """A provider answering every call with 1 s of mp3 in 1024-byte slices, its tone set by the first word."""
    return slices(audiogen.mp3(1.0, freq=TONES[word_of(call.text)]), 1024)


def decode(data: bytes, fmt: str = "mp3") -> np.ndarray:
    pcm, errors = audiogen.decode(data, fmt, RATE, 1)
    assert errors == "", f"decoder errors:\n{errors}"
    return pcm[:, 0]


def dominant_freq(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    band = (freqs > 100) & (freqs < 2000)
    return float(freqs[band][np.argmax(spectrum[band])])


def segment(samples: np.ndarray, entry: dict) -> np.ndarray:
    """The middle 60 % of one timeline entry's audio."""
    start, end = entry["start"], entry["end"]
    margin = (end - start) * 0.2
    return samples[int((start + margin) * RATE) : int((end - margin) * RATE)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- plugin processes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_tmp(tmp_path_factory) -> Path:
    """TMPDIR of the shared plugin process: the pipeline's ttsp-* directories are created here."""
    return tmp_path_factory.mktemp("plugin-tmp")


@pytest.fixture(scope="module")
def shared_daemon(plugin_tmp):
    with FakeDaemon(REPO, env={"TMPDIR": str(plugin_tmp)}) as daemon:
        yield daemon


@pytest.fixture
def daemon(shared_daemon, plugin_tmp):
    """The module's plugin process with a fresh handler. After each test: still alive, clean protocol, and
    TMPDIR empty (temporary directories are removed on success and on failure)."""
    shared_daemon.tts = tone
    yield shared_daemon
    assert shared_daemon.alive, f"plugin died:\n{shared_daemon.stderr_tail()}"
    assert not shared_daemon.stray_lines, shared_daemon.stray_lines
    assert not shared_daemon.global_errors, shared_daemon.global_errors
    assert leftovers(plugin_tmp) == [], "temporary files left behind by the plugin"


FAKE_FFMPEG = """#!/bin/sh
# ffmpeg that fails on demand; the behaviour is read from {state}/mode at every invocation:
#   pass        run the real ffmpeg
#   after:K     run the real ffmpeg for the first K invocations (counted in calls.log), then exit 1
#   lame        exit 1 when the arguments select the libmp3lame encoder (the final encode), else run it
echo "$*" >> "{state}/calls.log"
mode=$(cat "{state}/mode")
case "$mode" in
  after:*)
    if [ "$(wc -l < "{state}/calls.log")" -gt "${{mode#after:}}" ]; then
      echo "fake ffmpeg: crashed (invocation $(wc -l < "{state}/calls.log"))" >&2; exit 1
    fi ;;
  lame)
    case " $* " in *" libmp3lame "*) echo "fake ffmpeg: libmp3lame encoder failed" >&2; exit 1 ;; esac ;;
esac
exec "{real}" "$@"
"""


class FaultyFFmpeg:
    def __init__(self, directory: Path) -> None:
        self.state = directory
        self.binary = directory / "ffmpeg"
        self.binary.write_text(FAKE_FFMPEG.format(state=directory, real=ffmpeg.ffmpeg_binary()), encoding="utf-8")
        self.binary.chmod(self.binary.stat().st_mode | stat.S_IXUSR)
        self.set("pass")

    def set(self, mode: str) -> None:
        (self.state / "calls.log").write_text("", encoding="utf-8")
        (self.state / "mode").write_text(mode, encoding="utf-8")

    @property
    def calls(self) -> list[str]:
        return (self.state / "calls.log").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def faulty_ffmpeg(tmp_path_factory) -> FaultyFFmpeg:
    return FaultyFFmpeg(tmp_path_factory.mktemp("fake-ffmpeg"))


@pytest.fixture(scope="module")
def faulty_daemon(faulty_ffmpeg, tmp_path_factory):
    """A plugin process in a hostile environment: FFMPEG_BINARY is the on-demand failing ffmpeg above, and the
    SDK gives up on a backwards call after 1 s without an answer (MAX_INVOCATION_TIMEOUT)."""
    tmp = tmp_path_factory.mktemp("faulty-tmp")
    env = {"TMPDIR": str(tmp), "FFMPEG_BINARY": str(faulty_ffmpeg.binary)}
    with FakeDaemon(REPO, tts=tone, env=env, max_invocation_timeout=1) as daemon:
        daemon.tmp = tmp
        yield daemon


# --- 1. provider faults ------------------------------------------------------------------------------------


def test_a_call_that_never_answers_fails_in_bounded_time(faulty_daemon, faulty_ffmpeg):
    faulty_ffmpeg.set("pass")
    faulty_daemon.tts = lambda call: NEVER if word_of(call.text) == "Bravo" else tone(call)
    run = faulty_daemon.invoke_tool(params(THREE), timeout=NO_HANG_S)
    assert run.error is not None, run.describe()
    assert "#2" in run.error_message and "Bravo follows" in run.error_message, run.error_message
    assert run.files == [] and run.jsons == []
    assert sum(word_of(c.text) == "Bravo" for c in run.tts_calls) == 3  # every attempt timed out
    assert leftovers(faulty_daemon.tmp) == []


def test_a_stalled_stream_fails_at_the_stall_timeout(tmp_path):
    """The job's own watchdog: a call that sent some audio and then nothing (in-process, stall_timeout_s=1)."""
    release = threading.Event()

    def stalls_mid_stream(text: str, voice: str | None) -> Iterator[bytes]:
        data = audiogen.mp3(1.0)
        yield data[:1024]
        if "Bravo" in text:
            release.wait(NO_HANG_S)
        yield data[1024:]

    job = pipeline.Job(text=THREE, max_chars_per_request=50, stall_timeout_s=1.0, backoff_s=0.01)
    started = time.monotonic()
    try:
        with pytest.raises(SynthesisFailed, match=r"#2 .*stalled"):
            pipeline.narrate(job, stalls_mid_stream, workdir=tmp_path)
    finally:
        release.set()
    assert time.monotonic() - started < 30
    assert leftovers(tmp_path) == []


def test_a_stream_cut_inside_its_last_frame_keeps_the_sentence_and_warns(daemon):
    def truncated(call: TTSCall) -> list[bytes]:
        data = audiogen.mp3(1.0, freq=TONES[word_of(call.text)])
        return slices(data[:-100] if word_of(call.text) == "Bravo" else data, 1024)  # frames are 144 bytes

    daemon.tts = truncated
    run = daemon.invoke_tool(params(THREE))
    assert run.ok, run.describe()
    stats = run.jsons[0]
    assert any("#2" in w and "partial final frame" in w for w in stats["warnings"]), stats["warnings"]
    samples = decode(run.audio_files()[0].data)
    for entry in stats["timeline"]:  # the cut call lost one frame (24 ms), not its sentence
        assert entry["end"] - entry["start"] > 0.9, entry
        expected = TONES[word_of(entry["text"])]
        assert abs(dominant_freq(segment(samples, entry)) - expected) < expected * 0.04, entry


def test_audio_followed_by_garbage_is_an_error_naming_the_call(daemon):
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    daemon.tts = lambda call: [*tone(call), page] if word_of(call.text) == "Charlie" else tone(call)
    run = daemon.invoke_tool(params(THREE))
    assert run.error is not None, run.describe()
    assert "TTS call #3" in run.error_message and "not audio" in run.error_message, run.error_message
    assert "502 Bad Gateway" in run.error_message  # the provider's explanation reaches the user
    assert run.files == [] and run.jsons == []


def test_a_wav_answer_among_mp3_answers_gives_one_correct_file(daemon, plugin_tmp):
    during_job: set[str] = set()

    def mixed(call: TTSCall) -> list[bytes]:
        during_job.update(leftovers(plugin_tmp))  # the job's temporary directory exists while it runs
        freq = TONES[word_of(call.text)]
        if word_of(call.text) == "Bravo":
            return slices(audiogen.wav(1.0, 16000, freq=freq, streamed=True), 1024)
        return tone(call)

    daemon.tts = mixed
    run = daemon.invoke_tool(params(THREE))
    assert run.ok, run.describe()
    assert any(name.startswith("ttsp-") for name in during_job), during_job  # so TMPDIR checks mean something
    [audio] = run.audio_files()
    assert audio.mime_type == "audio/mpeg"
    samples = decode(audio.data)
    assert abs(len(samples) / RATE - (3.0 + 2 * 0.3)) < 0.3
    for entry in run.jsons[0]["timeline"]:
        assert entry["end"] - entry["start"] > 0.9, entry
        expected = TONES[word_of(entry["text"])]
        assert abs(dominant_freq(segment(samples, entry)) - expected) < expected * 0.04, entry


# --- 2. ffmpeg missing or failing ----------------------------------------------------------------------------


def test_missing_ffmpeg_is_a_clear_error(tmp_path):
    with FakeDaemon(REPO, tts=tone, env={"TMPDIR": str(tmp_path), "FFMPEG_BINARY": "/nonexistent/ffmpeg"}) as d:
        run = d.invoke_tool(params(THREE), timeout=NO_HANG_S)
        assert d.alive
    assert run.error is not None, run.describe()
    assert "ffmpeg" in run.error_message.lower() and "/nonexistent/ffmpeg" in run.error_message, run.error_message
    assert "internal error" not in run.error_message
    assert run.files == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("mode", "failing_stage"),
    [
        ("after:1", "after the first ffmpeg run (decoding done, mastering fails)"),
        ("lame", "the mp3 encoder"),
    ],
)
def test_ffmpeg_failing_mid_run_is_a_clear_error(faulty_daemon, faulty_ffmpeg, mode, failing_stage):
    faulty_ffmpeg.set(mode)
    faulty_daemon.tts = tone
    run = faulty_daemon.invoke_tool(params(THREE), timeout=NO_HANG_S)
    assert run.error is not None, f"{failing_stage}: {run.describe()}"
    assert "ffmpeg" in run.error_message.lower(), run.error_message
    assert "fake ffmpeg" in run.error_message, run.error_message  # ffmpeg's own words are quoted
    assert "internal error" not in run.error_message
    assert "TTS call" not in run.error_message, run.error_message  # not blamed on the provider
    assert run.files == [] and run.jsons == []
    calls = faulty_ffmpeg.calls
    if mode == "lame":
        assert "libmp3lame" in calls[-1] and "libmp3lame" not in calls[0], calls  # decoded, then the encode failed
    else:
        assert len(calls) >= 2, calls  # one real run, then the failing one
    assert leftovers(faulty_daemon.tmp) == []
    assert faulty_daemon.alive


def test_ffmpeg_failing_at_decode_does_not_blame_the_provider(faulty_daemon, faulty_ffmpeg):
    """ffmpeg failing from its first run (decoding good audio) is an ffmpeg problem, not bad audio from the
    TTS call: the message must not send the user to their provider."""
    faulty_ffmpeg.set("after:0")
    faulty_daemon.tts = tone
    run = faulty_daemon.invoke_tool(params(THREE), timeout=NO_HANG_S)
    assert run.error is not None, run.describe()
    assert "fake ffmpeg" in run.error_message, run.error_message
    assert leftovers(faulty_daemon.tmp) == []
    assert "could not be decoded" not in run.error_message and "TTS call" not in run.error_message, run.error_message


# --- 3. temporary directories on cancellation ----------------------------------------------------------------


def _interrupting(exc_type: type[BaseException]):
    calls = 0
    lock = threading.Lock()

    def synthesize(text: str, voice: str | None) -> list[bytes]:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        if n == 3:
            raise exc_type()
        return [audiogen.mp3(1.0)]

    return synthesize


FIVE = " ".join(f"Sentence {w} is here to be read aloud." for w in ("one", "two", "three", "four", "five"))


@pytest.mark.parametrize("exc", ["KeyboardInterrupt", "GreenletExit"])
def test_cancellation_during_synthesis_removes_the_temp_dir(tmp_path, exc):
    if exc == "GreenletExit":
        import gevent  # not monkey-patched: only its exception type is used

        exc_type: type[BaseException] = gevent.GreenletExit
    else:
        exc_type = KeyboardInterrupt
    job = pipeline.Job(text=FIVE, max_chars_per_request=50, concurrency=2)
    with pytest.raises(exc_type):
        pipeline.narrate(job, _interrupting(exc_type), workdir=tmp_path)
    assert leftovers(tmp_path) == []


def test_cancellation_after_decoding_removes_the_temp_dir(tmp_path):
    """Cancelled when the decoded files are on disk (the progress callback raises as mastering starts)."""
    seen: list[str] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "master":
            seen.extend(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
            raise KeyboardInterrupt

    job = pipeline.Job(text=FIVE, max_chars_per_request=50)
    with pytest.raises(KeyboardInterrupt):
        pipeline.narrate(job, lambda text, voice: [audiogen.mp3(1.0)], progress=progress, workdir=tmp_path)
    assert any(name.endswith(".f32") for name in seen), seen  # there were files to clean up
    assert leftovers(tmp_path) == []


# --- 4. concurrency ------------------------------------------------------------------------------------------

SESSION_FREQS = [210.0, 290.0, 370.0, 450.0, 530.0, 610.0, 690.0, 770.0]


def test_eight_simultaneous_invocations_get_their_own_audio(daemon):
    def by_session(call: TTSCall) -> list[bytes]:
        k = int(call.text.split()[1])  # "Session K ..."
        return slices(audiogen.mp3(1.0, freq=SESSION_FREQS[k]), 1024)

    daemon.tts = by_session
    texts = [f"Session {k} opens with its words. Session {k} then ends here." for k in range(8)]
    started = time.monotonic()
    runs = [daemon.start_tool(params(text, filename=f"session-{k}")) for k, text in enumerate(texts)]
    for run in runs:
        run.wait(NO_HANG_S)
    wall = time.monotonic() - started
    print(f"\n8 simultaneous invocations (2 requests, 2 s of audio each): {wall:.2f} s wall")
    for k, run in enumerate(runs):
        assert run.ok, run.describe()
        assert not run.protocol_errors, run.protocol_errors
        assert {c.text.split()[1] for c in run.tts_calls} == {str(k)}  # each session's calls carry its own text
        [audio] = run.audio_files()
        assert audio.filename == f"session-{k}.mp3"
        samples = decode(audio.data)
        assert abs(len(samples) / RATE - 2.3) < 0.3
        assert abs(dominant_freq(samples) - SESSION_FREQS[k]) < 15, (k, dominant_freq(samples))


# --- 5. the gevent hub is never blocked for long -------------------------------------------------------------


class ProbedDaemon(FakeDaemon):
    """The fake daemon, but the plugin process is `python tests/hubprobe.py -m main`: FakeDaemon starts
    `<python> -m main`, so `python` is a two-line launcher that puts the probe in front."""

    def __init__(self, plugin_dir: Path, workdir: Path, **kwargs) -> None:
        launcher = workdir / "python-with-hubprobe"
        probe = Path(__file__).with_name("hubprobe.py")
        launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{probe}" "$@"\n', encoding="utf-8")
        launcher.chmod(0o755)
        self.probe_out = workdir / "hubprobe.json"
        env = {**kwargs.pop("env", {}), "HUBPROBE_OUT": str(self.probe_out)}
        super().__init__(plugin_dir, python=str(launcher), env=env, **kwargs)

    def probe(self) -> dict:
        return json.loads(self.probe_out.read_text(encoding="utf-8"))


HUB_BLOCK_LIMIT_MS = 100.0


def describe_blocks(report: dict, count: int = 3) -> str:
    """The longest blocks, each with the innermost frames of its most often sampled stack."""
    lines = []
    for block in report["worst"][:count]:
        lines.append(
            f"{block['block_ms']:.0f} ms (raw {block['late_ms']:.0f} ms, of which waiting for a CPU "
            f"{block['runqueue_ms']:.0f} ms; CPU {block['cpu_ms']:.0f} ms)"
        )
        for sampled in block["stacks"][:2]:
            frames = " <- ".join(frame.rsplit("/", 1)[-1] for frame in reversed(sampled["stack"][-4:]))
            lines.append(f"    {sampled['samples']} samples: {frames}")
    return "\n".join(lines)


def test_the_hub_is_never_blocked_long_during_a_15_minute_job(tmp_path):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    text = " ".join(f"Sentence number {i} talks about {words[i % 10]} and more things." for i in range(110))
    answer = slices(audiogen.mp3(8.0, freq=300), 1024)  # ~8 s of mp3 per request, as 1024-byte slices

    with ProbedDaemon(REPO, tmp_path, tts=lambda call: answer, env={"TMPDIR": str(tmp_path)}) as daemon:
        deadline = time.monotonic() + 30
        while daemon.probe()["ticks"] == 0:  # the probe is running once the plugin's hub runs
            assert time.monotonic() < deadline, daemon.stderr_tail()
            time.sleep(0.05)
        started = time.monotonic()
        run = daemon.invoke_tool(params(text, max_chars_per_request=60, concurrency=8), timeout=300)
        wall = time.monotonic() - started
        time.sleep(0.3)  # the ticker records the last block once the hub runs it again
        report = daemon.probe()
    assert run.ok, run.describe()
    stats = run.jsons[0]
    assert stats["requests"] == 110 and 14 * 60 < stats["duration_s"] < 16 * 60, stats["duration_s"]
    print(
        f"\n15-minute job ({stats['duration_s'] / 60:.1f} min, 110 requests, concurrency 8): {wall:.1f} s wall; "
        f"longest hub block {report['max_block_ms']:.0f} ms (raw lateness {report['max_late_ms']:.0f} ms "
        f"incl. waiting for a CPU), {report['ticks']} ticks, histogram {report['histogram']}\n"
        f"{describe_blocks(report)}"
    )
    assert report["max_block_ms"] < HUB_BLOCK_LIMIT_MS, f"the gevent hub was blocked:\n{describe_blocks(report)}"


# --- 6. logs keep the text and the credentials out --------------------------------------------------------


def test_logs_contain_neither_the_text_nor_credentials(daemon):
    marker = "Zyxqvort" + os.urandom(4).hex()
    secret = "sk-SECRET" + os.urandom(8).hex()
    text = (
        "This opening sentence is long enough to push the marker well past sixty characters. "
        f"Then the private word {marker} appears here."
    )
    assert text.index(marker) > 60 and marker not in " ".join(text.split()[:8])
    credentials = {"api_key": secret}

    daemon.tts = lambda call: [audiogen.mp3(1.0)]
    ok = daemon.invoke_tool(params(text, max_chars_per_request=600), credentials=credentials)
    assert ok.ok, ok.describe()

    def mute_failure(call: TTSCall) -> list[bytes]:
        raise RuntimeError("")  # the provider error echoes nothing

    daemon.tts = mute_failure
    failed = daemon.invoke_tool(params(text, max_chars_per_request=600), credentials=credentials)
    assert failed.error is not None, failed.describe()
    assert any(marker in c.text for c in ok.tts_calls + failed.tts_calls)  # the TTS payloads do carry it

    time.sleep(0.2)  # stderr is read by another thread
    log_lines = [
        *(json.dumps(entry) for entry in daemon.logs),
        *daemon.stderr_tail(300).splitlines(),
        *(json.dumps(e) for e in daemon.global_errors),
        *daemon.stray_lines,
    ]
    assert any("narrating" in line for line in log_lines)  # logging works, so its absence below means something
    for needle in (marker, secret):
        leaked = [line for line in log_lines if needle in line]
        assert leaked == [], leaked


# --- 7. limits -----------------------------------------------------------------------------------------------


def test_text_over_the_maximum_fails_before_any_tts_call(daemon):
    run = daemon.invoke_tool(params("Word. " * 40_000 + "End."))  # 240,004 characters > 200,000
    assert run.error is not None, run.describe()
    assert run.error_message.startswith("text: ") and "200,000" in run.error_message, run.error_message
    assert run.tts_calls == []


def test_a_pause_tag_over_the_bound_is_named(daemon):
    run = daemon.invoke_tool(params("Alpha says hello. [pause 99s] Bravo says goodbye."))
    assert run.error is not None, run.describe()
    assert run.error_message.startswith("text: ") and "[pause 99s]" in run.error_message, run.error_message
    assert run.tts_calls == []


def test_a_call_decoding_past_the_per_call_cap_is_refused(tmp_path):
    job = pipeline.Job(text=THREE, max_chars_per_request=50, max_seconds_per_call=2.0)
    answers = {"Alpha": 1.0, "Bravo": 3.0, "Charlie": 1.0}
    with pytest.raises(InvalidAudio, match=r"TTS call #2: .*more than 2 s"):
        pipeline.narrate(job, lambda text, voice: [audiogen.mp3(answers[word_of(text)])], workdir=tmp_path)
    assert leftovers(tmp_path) == []


def test_the_total_duration_cap(tmp_path):
    job = pipeline.Job(text=THREE, max_chars_per_request=50, max_total_seconds=2.5)
    with pytest.raises(InvalidInput, match=r"^text: produces \d\.\d s of audio, more than the 2\.5 s limit"):
        pipeline.narrate(job, lambda text, voice: [audiogen.mp3(1.0)], workdir=tmp_path)
    assert leftovers(tmp_path) == []


TWENTY_S = " ".join(f"Part {w} of this text is read aloud." for w in ("one", "two", "three", "four"))
TAG_RESERVE = 64 * 1024  # audio.master keeps this much of max_bytes for tags


def test_output_size_guard_lowers_the_bitrate_with_a_warning(tmp_path):
    """~20 s of audio: 64 kbit/s (the mono default) needs ~178 kB, 48 kbit/s ~138 kB; the limit allows 150 kB."""
    job = pipeline.Job(text=TWENTY_S, max_chars_per_request=50, encode=EncodeOptions(max_bytes=TAG_RESERVE + 150_000))
    result = pipeline.narrate(job, lambda text, voice: [audiogen.mp3(5.0)], workdir=tmp_path)
    assert result.bitrate_kbps is not None and result.bitrate_kbps < 64
    assert result.size_bytes <= job.encode.max_bytes
    assert any("bitrate lowered" in w for w in result.stats.warnings), result.stats.warnings
    assert leftovers(tmp_path) == []


def test_max_output_mb_lowers_the_bitrate_of_a_long_text(daemon):
    """~2.6 min of audio under max_output_mb=1: the default 64 kbit/s would need ~1.25 MB, 48 kbit/s fits."""
    text = " ".join(f"Alpha paragraph number {n} is read aloud here." for n in range(10))
    daemon.tts = lambda call: slices(audiogen.mp3(15.0, freq=220), 1024)
    run = daemon.invoke_tool(params(text, max_output_mb=1))
    assert run.ok, run.describe()
    [audio] = run.audio_files()
    stats = run.jsons[0]
    assert stats["requests"] == 10 and stats["duration_s"] > 150
    assert len(audio.data) <= 2**20 and stats["bitrate_kbps"] < 64
    assert any("bitrate lowered" in w and "1.0 MiB" in w for w in stats["warnings"]), stats["warnings"]


def test_output_size_guard_fails_clearly_when_nothing_fits(tmp_path):
    job = pipeline.Job(text=TWENTY_S, max_chars_per_request=50, encode=EncodeOptions(max_bytes=TAG_RESERVE + 40_000))
    with pytest.raises(OutputTooLarge, match=r"over the .* output limit"):
        pipeline.narrate(job, lambda text, voice: [audiogen.mp3(5.0)], workdir=tmp_path)
    assert leftovers(tmp_path) == []


# --- 8. hostile input --------------------------------------------------------------------------------------


def test_playlists_lists_and_urls_from_the_provider_are_never_opened(daemon, tmp_path):
    """Each payload points at a FIFO: opening it for reading would block until a writer comes, so a reader
    that followed the link would hang the job, and would still hold the FIFO open afterwards."""
    fifo = tmp_path / "bait.fifo"
    os.mkfifo(fifo)
    payloads = {
        "HLS playlist": f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:{fifo}\n#EXT-X-ENDLIST\n".encode(),
        "ffconcat list": f"ffconcat version 1.0\nfile '{fifo}'\n".encode(),
        "URL": b"file:/etc/passwd",
        "URL to the FIFO": f"file:{fifo}".encode(),
    }
    daemon.tts = lambda call: [payloads[call.text.split(" ", 1)[0].replace("_", " ")]]
    # one session per payload, all at once: the retries' back-off is waited once
    runs = {kind: daemon.start_tool(params(kind.replace(" ", "_") + " is the payload here.")) for kind in payloads}
    for kind, run in runs.items():
        run.wait(NO_HANG_S)
        assert run.error is not None, run.describe()
        assert "TTS call #1" in run.error_message and "never followed" in run.error_message, run.error_message
        expected = "URL" if kind.startswith("URL") else kind
        assert f"(looks like: {expected})" in run.error_message, run.error_message
        assert run.files == []
    with pytest.raises(OSError) as no_reader:  # nobody holds the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert no_reader.value.errno == errno.ENXIO
    assert leftovers(tmp_path) == ["bait.fifo"]


def test_every_ffmpeg_input_has_a_forced_demuxer_and_the_protocol_whitelist(tmp_path, monkeypatch):
    """What makes a disguised playlist harmless even if it passed the sniffing: ffmpeg never probes formats."""
    answers = {"Alpha": audiogen.mp3(1.0), "Bravo": audiogen.wav(1.0, 16000), "Charlie": audiogen.mp3(1.0)}
    recorded: list[list[str]] = []
    real_run = ffmpeg.run

    def recording_run(args: Iterable, **kwargs):
        recorded.append([os.fspath(a) for a in args])
        return real_run(args, **kwargs)

    monkeypatch.setattr(ffmpeg, "run", recording_run)
    job = pipeline.Job(text=THREE, max_chars_per_request=50)
    pipeline.narrate(job, lambda text, voice: [answers[word_of(text)]], workdir=tmp_path)

    inputs: list[tuple[str, str]] = []  # (forced demuxer, input) of every ffmpeg input
    for argv in recorded:
        previous = -1
        for i, arg in enumerate(argv):
            if arg != "-i":
                continue
            options = argv[previous + 2 : i]  # this input's options (after the previous input's path)
            previous = i
            assert "-f" in options and "-protocol_whitelist" in options, argv
            assert options[options.index("-protocol_whitelist") + 1] == "file,pipe", argv
            assert argv[i + 1].startswith("file:") or argv[i + 1] in ("-", "pipe:0"), argv
            inputs.append((options[options.index("-f") + 1], argv[i + 1]))
    tts_files = {(fmt, Path(path).suffix) for fmt, path in inputs if path.endswith((".mp3", ".wav"))}
    assert tts_files == {("mp3", ".mp3"), ("wav", ".wav")}, inputs


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../etc/passwd", "etc_passwd.mp3"),
        ("a\x00b\x1fc\nd\u202eevil", "a b c devil.mp3"),
        ("x" * 500, "x" * 100 + ".mp3"),
    ],
)
def test_hostile_filenames_are_sanitized(daemon, filename, expected):
    run = daemon.invoke_tool(params("Alpha is the only sentence.", filename=filename))
    assert run.ok, run.describe()
    [audio] = run.audio_files()
    assert audio.filename == expected
    assert "/" not in audio.filename and not any(ord(ch) < 32 for ch in audio.filename)
