"""ffmpeg: chosen by capability (FFMPEG_BINARY → imageio-ffmpeg → PATH), the slower path for an ffmpeg without
the loopback decoder, failing before any TTS call, no child outliving the plugin, and the safe runner."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from audio import ffmpeg, pipeline
from audio.errors import FFmpegError
from audio.loudness import measure_file
from tests import audiogen

REPO = Path(__file__).resolve().parent.parent
DEBIAN_FFMPEG = "/usr/bin/ffmpeg"


@pytest.fixture(autouse=True)
def _fresh_choice():
    ffmpeg.reset()
    yield
    ffmpeg.reset()


@pytest.fixture(scope="module")
def bundled() -> str:
    path, why = ffmpeg._bundled()
    assert path, why
    return path


# An ffmpeg as distributions ship it (Ubuntu 24.04: 6.1): the real binary behind a wrapper that reports 6.1 and
# rejects `-dec` as ffmpeg < 7 does; `drop` removes lines from its -codecs/-formats/-filters listings.
FAKE_OLD = """#!/bin/bash
for a in "$@"; do
  if [ "$a" = -dec ]; then
    echo "Unrecognized option 'dec'." >&2
    echo "Error splitting the argument list: Option not found" >&2
    exit 8
  fi
done
case " $* " in
  *" -codecs "*|*" -formats "*|*" -filters "*|*" -version "*)
    "{real}" "$@" 2>&1 | sed -E -e 's/ffmpeg version [^ ]+/ffmpeg version 6.1.1-fake/' {drop}
    exit "${{PIPESTATUS[0]}}" ;;
esac
exec "{real}" "$@"
"""


def fake_ffmpeg(directory: Path, real: str, drop: tuple[str, ...] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ffmpeg"
    deletes = " ".join(f"-e '/\\<{name}\\>/d'" for name in drop)
    path.write_text(FAKE_OLD.format(real=real, drop=deletes), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def tone_answer(bundled) -> bytes:
    return audiogen.mp3(1.5, freq=220)


class CountingEngine:
    """A TTS stand-in: the same mp3 for every request, in 1024-byte slices; counts the calls."""

    def __init__(self, answer: bytes) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self, text: str, voice: str | None) -> list[bytes]:
        self.calls += 1
        return [self.answer[i : i + 1024] for i in range(0, len(self.answer), 1024)]


TEXT = "The first sentence is read here. A second sentence follows it. And a third one ends it."


def narrate(tmp_path: Path, answer: bytes, fmt: str = "mp3") -> tuple[pipeline.Result, CountingEngine]:
    engine = CountingEngine(answer)
    job = pipeline.Job(text=TEXT, max_chars_per_request=40, encode=pipeline.EncodeOptions(fmt=fmt))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    result = pipeline.narrate(job, engine, workdir=work, output=tmp_path / f"out.{fmt}")
    assert list(work.iterdir()) == []
    return result, engine


def check_figures(result: pipeline.Result) -> None:
    """The figures the job reports are those of the file, and on target (podcast: −16 LUFS, ≤ −1 dBTP)."""
    assert result.path is not None
    m = measure_file(result.path, result.fmt, sample_rate=48000 if result.fmt == "ogg" else result.sample_rate)
    assert m.decode_errors == 0
    assert result.loudness_lufs == pytest.approx(m.integrated_lufs, abs=0.02)
    assert result.true_peak_dbtp == pytest.approx(m.true_peak_dbtp, abs=0.02)
    assert result.duration_s == pytest.approx(m.duration_s, abs=0.001)
    assert abs(m.integrated_lufs + 16.0) <= 1.0 and m.true_peak_dbtp <= -1.0


# ------------------------------------------------------------------------------------------- choice


def test_the_bundled_binary_is_chosen_and_has_everything(monkeypatch, bundled):
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    caps = ffmpeg.capabilities()
    assert (caps.path, caps.source) == (bundled, "imageio-ffmpeg")
    assert caps.usable and caps.has_loopback and caps.major is not None and caps.major >= 7, caps
    assert ffmpeg.run(["-version"]).stdout.decode().startswith("ffmpeg version")


def test_probing_happens_once_per_binary(monkeypatch, bundled):
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    started: list[list[str]] = []
    real_start = ffmpeg._start
    monkeypatch.setattr(ffmpeg, "_start", lambda argv, stdin: started.append(argv) or real_start(argv, stdin))
    ffmpeg.capabilities()
    ffmpeg.capabilities.cache_clear()  # a second choice reuses the probe
    ffmpeg.capabilities()
    ffmpeg.run(["-version"])
    assert len(started) == 6  # 5 probe runs in parallel, then the job's own
    assert not any("-hide_banner" not in a and "-codecs" not in a for a in started)


def test_a_fake_old_ffmpeg_first_on_path_is_not_chosen(monkeypatch, tmp_path, bundled, tone_answer):
    fake = fake_ffmpeg(tmp_path / "bin", bundled)
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    caps = ffmpeg.capabilities()
    assert caps.path == bundled and caps.has_loopback
    result, engine = narrate(tmp_path, tone_answer)
    assert engine.calls == 3
    check_figures(result)


def test_the_fake_old_ffmpeg_probes_as_6_1_without_loopback(tmp_path, bundled):
    caps = ffmpeg.probe(str(fake_ffmpeg(tmp_path / "bin", bundled)))
    assert (caps.version, caps.major, caps.has_loopback, caps.missing) == ("6.1.1-fake", 6, False, ())


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "ogg", "flac", "wav"])
def test_ffmpeg_binary_without_loopback_takes_the_slower_path(monkeypatch, tmp_path, bundled, tone_answer, fmt):
    fake = fake_ffmpeg(tmp_path / "bin", bundled)
    monkeypatch.setenv("FFMPEG_BINARY", str(fake))
    caps = ffmpeg.capabilities()
    assert (caps.path, caps.source, caps.has_loopback) == (str(fake), "FFMPEG_BINARY", False)
    result, engine = narrate(tmp_path, tone_answer, fmt)
    assert engine.calls == 3
    check_figures(result)


def test_an_old_ffmpeg_on_path_is_used_when_nothing_better_exists(monkeypatch, tmp_path, bundled, tone_answer, caplog):
    fake = fake_ffmpeg(tmp_path / "bin", bundled)
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")  # the wrapper needs sed
    monkeypatch.setattr(ffmpeg, "_bundled", lambda: (None, "the imageio-ffmpeg package is not installed"))
    with caplog.at_level(logging.WARNING, logger="audio.ffmpeg"):
        caps = ffmpeg.capabilities()
    assert (caps.path, caps.source, caps.has_loopback) == (str(fake), "PATH", False)
    assert any("no loopback decoder" in r.getMessage() for r in caplog.records), caplog.records
    result, _ = narrate(tmp_path, tone_answer)
    check_figures(result)


@pytest.mark.skipif(not os.access(DEBIAN_FFMPEG, os.X_OK), reason="no distribution ffmpeg installed")
@pytest.mark.parametrize("fmt", ["mp3", "m4a", "ogg", "flac", "wav"])
def test_the_distribution_ffmpeg_forced_works_or_stops_before_any_tts_call(monkeypatch, tmp_path, tone_answer, fmt):
    """Debian 12's 5.1 (and Ubuntu 24.04's 6.1) have every feature but `-dec`: forced, they take the slower path
    with correct figures. A distribution build lacking a feature must stop the job before its first TTS call."""
    caps = ffmpeg.probe(DEBIAN_FFMPEG)
    assert not caps.has_loopback or caps.major is None or caps.major >= 7, caps
    monkeypatch.setenv("FFMPEG_BINARY", DEBIAN_FFMPEG)
    if caps.usable:
        result, engine = narrate(tmp_path, tone_answer, fmt)
        assert engine.calls == 3
        check_figures(result)
    else:
        engine = CountingEngine(tone_answer)
        with pytest.raises(FFmpegError, match="lacks"):
            pipeline.narrate(pipeline.Job(text=TEXT), engine, workdir=tmp_path)
        assert engine.calls == 0


# ---------------------------------------------------------------------------------- fail before paying


def test_an_ffmpeg_binary_lacking_features_fails_before_any_tts_call(monkeypatch, tmp_path, bundled, tone_answer):
    fake = fake_ffmpeg(tmp_path / "bin", bundled, drop=("libopus", "alimiter", "mp4"))
    monkeypatch.setenv("FFMPEG_BINARY", str(fake))
    with pytest.raises(FFmpegError) as err:
        narrate(tmp_path, tone_answer)
    message = str(err.value)
    for part in ("FFMPEG_BINARY", str(fake), "6.1.1-fake", "encoder libopus", "filter alimiter", "muxer mp4",
                 "unset FFMPEG_BINARY", "imageio-ffmpeg", "ffmpeg ≥ 7"):  # fmt: skip
        assert part in message, message
    assert not (tmp_path / "out.mp3").exists()


def test_an_ffmpeg_that_cannot_run_the_pipelines_graph_is_refused(monkeypatch, tmp_path, bundled, tone_answer):
    """Every filter listed, but an option of the pipeline's graph unknown (as 5.1's ebur128 had no
    framelog=quiet): found by the probe's graph run, reported with ffmpeg's words, before any TTS call."""
    fake = tmp_path / "ffmpeg"
    fake.write_text(
        "#!/bin/bash\n"
        'case " $* " in *" pipe:0 "*ebur128*) echo "[fatal] Error initializing complex filters." >&2; exit 1 ;; esac\n'
        f'exec "{bundled}" "$@"\n'
    )
    fake.chmod(0o755)
    assert ffmpeg.probe(str(fake)).missing == (
        "the pipeline's filter graph to run (it said: [fatal] Error initializing complex filters.)",
    )
    monkeypatch.setenv("FFMPEG_BINARY", str(fake))
    engine = CountingEngine(tone_answer)
    with pytest.raises(FFmpegError, match="lacks the pipeline's filter graph to run"):
        pipeline.narrate(pipeline.Job(text=TEXT), engine, workdir=tmp_path)
    assert engine.calls == 0


def test_no_ffmpeg_at_all_fails_before_any_tts_call(monkeypatch, tmp_path, tone_answer):
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(ffmpeg, "_bundled", lambda: (None, "the imageio-ffmpeg package is not installed"))
    engine = CountingEngine(tone_answer)
    with pytest.raises(FFmpegError) as err:
        pipeline.narrate(pipeline.Job(text=TEXT), engine, workdir=tmp_path)
    assert engine.calls == 0
    message = str(err.value)
    assert "no usable ffmpeg" in message and "imageio-ffmpeg package is not installed" in message, message
    assert "no ffmpeg on PATH" in message and "requirements" in message and "FFMPEG_BINARY" in message, message
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_binary_must_be_executable(monkeypatch, tmp_path):
    bogus = tmp_path / "ffmpeg"
    bogus.write_text("not a program")
    monkeypatch.setenv("FFMPEG_BINARY", str(bogus))
    with pytest.raises(FFmpegError, match="not an executable"):
        ffmpeg.ffmpeg_binary()
    assert ffmpeg.warm_up() is None  # at start-up: logged, not raised


def test_ffmpeg_binary_that_does_not_run_is_reported(monkeypatch, tmp_path):
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("FFMPEG_BINARY", str(broken))
    with pytest.raises(FFmpegError, match=r"lacks a binary that runs \(`ffmpeg -codecs` exited with code 1: broken"):
        ffmpeg.require()


# -------------------------------------------------------------------------------- no orphaned ffmpeg

CHILD = """
import sys
if sys.argv[1] == "gevent":
    from gevent import monkey
    monkey.patch_all()
from audio import ffmpeg
# ~real time (-re), so it costs no CPU: runs until killed
ffmpeg.run(["-re", "-f", "lavfi", "-i", "anullsrc=r=8000", "-f", "null", "-"], timeout=120)
"""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # killed; a zombie only waits for a reaper that may not exist in a container


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("mode", ["plain", "gevent"])
def test_no_ffmpeg_outlives_a_killed_plugin_process(mode):
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        grandchildren: list[int] = []
        while not grandchildren and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            grandchildren = [p for p in _children(child.pid) if "ffmpeg" in Path(f"/proc/{p}/cmdline").read_text()]
        assert grandchildren, f"no ffmpeg started (exit {child.poll()})"
        time.sleep(0.2)  # past the probe: the long run is the one left
        grandchildren = _children(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 5
        while not all(_gone(p) for p in grandchildren) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in grandchildren), grandchildren
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# ------------------------------------------------------------------------------- stale job directories


def test_stale_job_directories_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getppid()
    for name in (f"ttsp-{dead.pid}-abc", f"ttsp-{live}-def", f"ttsp-{os.getpid()}-old", "ttsp-legacy", "other-1-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "calls").mkdir()
    removed = pipeline.remove_stale_workdirs(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f"ttsp-{dead.pid}-abc", f"ttsp-{os.getpid()}-old"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"ttsp-{live}-def", "ttsp-legacy", "other-1-x"])


def test_a_job_directory_carries_its_owner_pid(tmp_path, tone_answer):
    seen: list[str] = []
    engine = CountingEngine(tone_answer)

    def spying(text: str, voice: str | None) -> list[bytes]:
        seen.extend(p.name for p in tmp_path.iterdir())
        return engine(text, voice)

    pipeline.narrate(pipeline.Job(text="One short sentence."), spying, workdir=tmp_path)
    assert seen and all(name.startswith(f"ttsp-{os.getpid()}-") for name in seen), seen
    assert list(tmp_path.iterdir()) == []


def test_the_next_start_removes_what_a_killed_plugin_left_and_logs_its_ffmpeg(tmp_path, tone_answer):
    """The daemon SIGKILLs the plugin at its execution timeout (here: mid-job, waiting for a TTS answer); the
    next plugin process removes that job's directory and logs which ffmpeg it chose."""
    from tests.daemon import DEFAULT_MODEL, NEVER, FakeDaemon

    asked = threading.Event()

    def never_answers(call):
        asked.set()
        return NEVER

    env = {"TMPDIR": str(tmp_path), "FFMPEG_BINARY": ""}  # the choice without a forced binary
    with FakeDaemon(REPO, tts=never_answers, env=env) as first:
        first.start_tool({"text": TEXT, "model": dict(DEFAULT_MODEL), "cache": False})
        assert asked.wait(60), first.stderr_tail()
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left and all(name.startswith(f"ttsp-{first.proc.pid}-") for name in left), left
        first.proc.kill()  # the plugin process only, as the daemon does
        first.proc.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    with FakeDaemon(REPO, tts=lambda call: CountingEngine(tone_answer)(call.text, None), env=env) as second:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("ffmpeg" in e.get("message", "") for e in second.logs):
            time.sleep(0.1)
        messages = [e.get("message", "") for e in second.logs]
        assert any(f"removed the stale job directory {tmp_path / left[0]}" in m for m in messages), messages
        assert any(m.startswith("ffmpeg ") and "(imageio-ffmpeg): encode+measure in one run" in m for m in messages)
        assert list(tmp_path.iterdir()) == []
        assert second.invoke_tool({"text": TEXT, "model": dict(DEFAULT_MODEL), "cache": False}).ok


# ------------------------------------------------------------------------------------------- runner


def test_failure_keeps_stderr_and_names_the_step(tmp_path):
    with pytest.raises(FFmpegError) as err:
        ffmpeg.run([*ffmpeg.input_args(tmp_path / "missing.mp3", "mp3"), "-f", "null", "-"], what="decoding test")
    assert "decoding test" in str(err.value)
    assert "missing.mp3" in err.value.stderr


def test_timeout_is_enforced():
    with pytest.raises(FFmpegError, match="did not finish"):
        ffmpeg.run(["-f", "lavfi", "-i", "anullsrc", "-f", "null", "-"], timeout=0.5)


def test_raw_input_roundtrip(tmp_path):
    raw = tmp_path / "x.raw"
    raw.write_bytes(b"\x00\x00" * 800)
    out = ffmpeg.run([*ffmpeg.raw_input_args(raw, 8000, 1, "s16le"), "-f", "s16le", "-"]).stdout
    assert len(out) == 1600
    piped = ffmpeg.run([*ffmpeg.raw_input_args("pipe:0", 8000, 1, "s16le"), "-f", "s16le", "-"], stdin=bytes(800))
    assert len(piped.stdout) == 800


def test_a_relative_name_with_a_colon_is_read_as_a_file(tmp_path, monkeypatch):
    """`x:y.raw` would be parsed as protocol `x`; file_url makes it an absolute file: URL from the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x:y.raw").write_bytes(b"\x00\x00" * 400)
    url = ffmpeg.file_url("x:y.raw")
    assert url == f"file:{tmp_path}/x:y.raw"
    out = ffmpeg.run([*ffmpeg.raw_input_args("x:y.raw", 8000, 1, "s16le"), "-f", "s16le", "-"]).stdout
    assert len(out) == 800


def test_parsers_read_both_listing_layouts():
    codecs = "\n".join([
        " D..... = Decoding supported",
        " DEAIL. mp3    MP3 (MPEG audio layer 3) (decoders: mp3float mp3 ) (encoders: libmp3lame libshine )",
        " DEA.L. aac    AAC (Advanced Audio Coding) (decoders: aac aac_fixed)",
        " D.AIL. vorbis Vorbis",
    ])  # fmt: skip
    encoders, decoders = ffmpeg._parse_codecs(codecs)
    assert encoders == {"libmp3lame", "libshine", "aac"} and decoders == {"mp3", "aac", "vorbis"}
    formats = " D. = Demuxing supported\n DE mp3             MP3\n D  mov,mp4,m4a,3gp  QuickTime\n  E ipod  iPod\n"
    formats += " D d lavfi           Libavfilter virtual input device\n  E  null            raw null video\n"
    muxers, demuxers = ffmpeg._parse_formats(formats)
    assert muxers == {"mp3", "ipod", "null"} and demuxers == {"mp3", "mov", "mp4", "m4a", "3gp", "lavfi"}
    filters = "  T.. = Timeline support\n T. alimiter          A->A       Audio lookahead limiter.\n"
    assert ffmpeg._parse_filters(filters) == {"alimiter"}
