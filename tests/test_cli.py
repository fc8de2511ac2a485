"""`python -m audio` driven as a user would: subprocesses, exit codes, stderr lines, the files it writes.

The end-to-end narrate tests run the whole pipeline with the embedded engine and check the result
independently of the pipeline's own measurements (ffmpeg decode + pyloudnorm, mutagen headers).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audio import cli, ffmpeg
from audio.model import SpeakerVoice

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_cli(*args: str | os.PathLike[str], stdin: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.setdefault("XDG_CACHE_HOME", str(ROOT / ".pytest_cache" / "cli-xdg"))  # never the user's cache
    proc = subprocess.run(
        [sys.executable, "-m", "audio", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=ROOT,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )


def decode(path: Path, fmt: str) -> tuple[np.ndarray, int, str]:
    """Samples (frames × channels, float32), sample rate, and the error-level lines ffmpeg logged decoding it."""
    res = ffmpeg.run(["-loglevel", "repeat+level+info", *ffmpeg.input_args(path, fmt), "-f", "f32le", "-"])
    m = re.search(r"Output #0.*?Audio: pcm_f32le[^,]*, (\d+) Hz, (mono|stereo)", res.stderr, re.S)
    assert m, res.stderr
    rate, channels = int(m.group(1)), 1 if m.group(2) == "mono" else 2
    errors = "\n".join(line for line in res.stderr.splitlines() if "[error]" in line or "[fatal]" in line)
    return np.frombuffer(res.stdout, dtype=np.float32).reshape(-1, channels), rate, errors


def integrated_lufs(samples: np.ndarray, rate: int) -> float:
    pyloudnorm = pytest.importorskip("pyloudnorm")
    return float(pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64)))


def header_duration(path: Path) -> float:
    import mutagen

    return float(mutagen.File(path).info.length)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    def secs(stamp: str) -> float:
        h, m, rest = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(rest)

    cues = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        assert lines[0].strip().isdigit(), block
        start, end = (s.strip() for s in lines[1].split("-->"))
        cues.append((secs(start), secs(end), " ".join(lines[2:])))
    return cues


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- voices


def test_voices_lists_the_embedded_voices():
    proc = run_cli("voices")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) >= 4
    names = [line.split()[0] for line in lines]
    assert {"en-us", "en-gb", "en-gb+f3"} <= set(names)
    assert "(default)" in lines[0]
    as_json = json.loads(run_cli("voices", "--json").stdout)
    assert [v["name"] for v in as_json] == names
    assert all(v["language"] and v["description"] for v in as_json)


# ------------------------------------------------------------------------------------- option errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "xyz"], "--format"),
        (["--loudness", "loud"], "--loudness"),
        (["--loudness", "-60"], "--loudness"),
        (["--bitrate", "7"], "--bitrate"),
        (["--concurrency", "99"], "--concurrency"),
        (["--sample-rate", "12345"], "--sample-rate"),
        (["--channels", "quad"], "--channels"),
        (["--pause-ms", "-5"], "--pause-ms"),
        (["--max-chars-per-request", "10"], "--max-chars-per-request"),
        (["--subtitles", "ass"], "--subtitles"),
        (["--max-output-mb", "1000"], "--max-output-mb"),
        (["--voice", "alloy"], "--voice"),
        (["--speakers", "Host=alloy"], "--speakers"),
        (["--speakers", "Host"], "--speakers"),
        (["--pause-ms"], "--pause-ms"),  # argparse: missing value
        (["--speed", "3"], "--speed"),
        (["--lexicon", "Dify"], "--lexicon"),
        (["--lexicon", "@/nonexistent/lexicon.txt"], "--lexicon"),
    ],
)
def test_bad_option_is_one_line_naming_it(tmp_path, args, needle):
    text = tmp_path / "in.txt"
    text.write_text("Hello there.")
    line = assert_one_error_line(run_cli("narrate", text, "-o", tmp_path / "out.mp3", *args), needle)
    if args[0] == "--voice":
        assert "available: en-us" in line
    assert not (tmp_path / "out.mp3").exists()


def test_missing_input_file(tmp_path):
    assert_one_error_line(run_cli("narrate", tmp_path / "nope.md", "-o", tmp_path / "o.mp3"), "INPUT", "nope.md")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \n"])
def test_empty_input_file_and_stdin(tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(content)
    assert_one_error_line(run_cli("narrate", empty, "-o", tmp_path / "o.mp3"), "INPUT", "empty")
    assert_one_error_line(run_cli("narrate", "-", "-o", tmp_path / "o.mp3", stdin=content), "INPUT", "empty")


def test_not_utf8_and_bad_output_directory(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00caf\xe9")
    assert_one_error_line(run_cli("narrate", bad, "-o", tmp_path / "o.mp3"), "INPUT", "UTF-8")
    good = tmp_path / "good.txt"
    good.write_text("Hello.")
    assert_one_error_line(run_cli("narrate", good, "-o", tmp_path / "missing" / "o.mp3"), "-o/--output")


def test_argparse_errors_are_one_line_too(tmp_path):
    assert_one_error_line(run_cli("narrate", tmp_path / "x.txt"), "-o/--output")
    assert_one_error_line(run_cli("speak"), "invalid choice")
    proc = run_cli()
    assert proc.returncode == 2 and "narrate" in proc.stderr


def test_inspect_missing_file_and_non_audio(tmp_path):
    assert_one_error_line(run_cli("inspect", tmp_path / "none.mp3"), "FILE")
    junk = tmp_path / "junk.mp3"
    junk.write_text("this is not audio at all")
    assert_one_error_line(run_cli("inspect", junk), code=1)


def test_ctrl_c_exits_130_without_traceback(tmp_path):
    """SIGINT while the CLI waits on stdin (no pipeline involved)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (1.0, 3.0):  # the signal must arrive after the interpreter is up
        proc = subprocess.Popen(
            [sys.executable, "-m", "audio", "narrate", "-", "-o", str(tmp_path / "o.mp3")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if proc.returncode != -signal.SIGINT:
            break
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and err.strip() == b"interrupted"


def test_inspect_a_single_engine_file(tmp_path):
    from audio.engine import EspeakEngine

    data = b"".join(EspeakEngine()("Inspect this file, please.", "en-gb"))
    mp3 = tmp_path / "one.mp3"
    mp3.write_bytes(data)  # one sentence = one complete mp3 file
    proc = run_cli("inspect", mp3)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^duration:\s+[0-9.]+ s \(decoded\)$", proc.stdout, re.M)
    assert re.search(r"^header duration:\s+[0-9.]+ s$", proc.stdout, re.M)
    assert re.search(r"^loudness:\s+-[0-9.]+ LUFS integrated$", proc.stdout, re.M)
    assert re.search(r"^sample rate:\s+22050 Hz$", proc.stdout, re.M)
    data = json.loads(run_cli("inspect", mp3, "--json").stdout)
    assert data["container"] == "MP3" and data["decode_errors"] == 0 and data["channels"] == 1
    assert 0.5 < data["duration_s"] < 5 and data["header_duration_s"] == pytest.approx(data["duration_s"], abs=0.1)


# ------------------------------------------------------------------------------------ in-process units


def test_speakers_get_distinct_voices_in_a_fixed_order():
    order = ("en-us", "en-gb+f3", "en-us+m3")
    sv = SpeakerVoice
    assert cli.assign_speakers(["Host", "Guest"], {}, None, order) == {"host": sv("en-us"), "guest": sv("en-gb+f3")}
    # --voice goes first; voices already given are skipped; given speakers are kept
    assert cli.assign_speakers(["Host", "Guest", "Ann"], {"guest": sv("en-us")}, "en-us+m3", order) == {
        "host": sv("en-us+m3"),
        "ann": sv("en-gb+f3"),
    }
    assert cli.assign_speakers(["A", "B"], {"*": sv("de")}, None, order) == {}
    assert cli.assign_speakers(["A", "B", "C", "D"], {}, None, order)["d"] == sv("en-us")  # wraps around
    # `Guest=2:` (model 2, no voice) gets a voice and keeps its model and speed; so does a voiceless fallback
    assert cli.assign_speakers(["Host", "Guest"], {"host": sv("en-us"), "guest": sv(None, 2, 1.2)}, None, order) == {
        "guest": sv("en-gb+f3", 2, 1.2)
    }
    assert cli.assign_speakers(["A", "B"], {"*": sv(None, 2)}, None, order) == {"a": sv("en-us", 2),
                                                                               "b": sv("en-gb+f3", 2)}


def test_numeric_defaults_match_the_pipeline_job():
    from audio import pipeline
    from audio.model import EncodeOptions

    fields = pipeline.Job.__dataclass_fields__
    for name in ("pause_ms", "paragraph_pause_ms", "max_chars_per_request", "concurrency"):
        assert cli.DEFAULTS[name] == fields[name].default, name
    assert cli.DEFAULTS["max_output_mb"] * 2**20 == EncodeOptions().max_bytes


def test_progress_bar_draws_one_line_per_stage():
    import io

    stream = io.StringIO()
    bar = cli.ProgressBar(stream)
    for done in range(4):
        bar("synthesize", done, 3)
    bar("decode", 3, 3)
    bar("master", 0, 1)
    bar("master", 1, 1)
    bar.close()
    lines = stream.getvalue().split("\n")
    assert [line.rsplit("\r", 1)[-1].split()[0] for line in lines if line] == ["synthesize", "decode", "master"]
    assert "3/3" in lines[0].rsplit("\r", 1)[-1] and "1/1" in lines[2]
    assert stream.getvalue().endswith("\n")


def test_parser_mirrors_the_tool_parameters():
    args = cli.build_parser().parse_args(
        ["narrate", "in.md", "-o", "o.mp3", "--loudness", "-20", "--no-chapters", "--no-cache", "--stats"]
    )
    assert args.loudness == "-20" and args.chapters is False and args.no_cache and args.stats
    assert cli.build_parser().parse_args(["narrate", "in.md", "-o", "o.mp3"]).chapters is None


# ------------------------------------------------------------------------ end to end (needs the pipeline)


def check_programme(path: Path, fmt: str, *, min_s: float, max_s: float, lufs: float = -16.0) -> float:
    samples, rate, errors = decode(path, fmt)
    assert errors.strip() == "", f"decoder errors: {errors}"
    duration = len(samples) / rate
    assert min_s < duration < max_s, duration
    assert integrated_lufs(samples, rate) == pytest.approx(lufs, abs=1.0)
    return duration


def test_chatbot_reply_to_mp3_with_stats_and_cache(tmp_path):
    out = tmp_path / "reply.mp3"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    started = time.monotonic()
    proc = run_cli("narrate", EXAMPLES / "chatbot_reply.txt", "-o", out, "--stats", env=env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "wrote" in proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["format"] == "mp3" and stats["size_bytes"] == out.stat().st_size
    duration = check_programme(out, "mp3", min_s=5, max_s=30)
    assert stats["duration_s"] == pytest.approx(duration, abs=0.1)
    assert header_duration(out) == pytest.approx(duration, abs=0.1)  # Xing header tells the truth
    assert stats["cache_misses"] == stats["requests"] >= 1 and stats["cache_hits"] == 0
    assert elapsed < 60
    # the default cache dir (under XDG_CACHE_HOME) makes a second run hit every request
    again = run_cli("narrate", EXAMPLES / "chatbot_reply.txt", "-o", tmp_path / "again.mp3", "--stats", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cache_hits"] == stats["requests"]
    assert any((tmp_path / "xdg" / "tts-pipeline").rglob("*.ttsc"))


def test_stdin_to_wav_by_extension_quiet_with_vtt(tmp_path):
    out = tmp_path / "short.wav"
    proc = run_cli("narrate", "-", "-o", out, "--quiet", "--no-cache", "--subtitles", "vtt",
                   stdin=b"Short and sweet. Two sentences.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert out.read_bytes()[:4] == b"RIFF"
    duration = check_programme(out, "wav", min_s=1, max_s=10)
    vtt = out.with_suffix(".vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT")
    stamps = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})", vtt)
    assert len(stamps) == 2  # one cue per sentence
    last_end = [int(x) for x in stamps[-1][4:]]
    assert last_end[0] * 3600 + last_end[1] * 60 + last_end[2] + last_end[3] / 1000 <= duration + 0.5


@pytest.fixture(scope="module")
def podcast(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("podcast")
    out = tmp / "podcast.mp3"
    started = time.monotonic()
    proc = run_cli("narrate", EXAMPLES / "podcast.md", "-o", out, "--subtitles", "srt", "--stats", "--no-cache",
                   "--title", "Tidy Audio")
    return proc, out, time.monotonic() - started


def test_podcast_demo(podcast):
    proc, out, elapsed = podcast
    assert proc.returncode == 0, proc.stderr
    # no --speakers: the embedded voices are handed out in a fixed order, and the mapping is shown
    assert "speakers: Host=en-us; Guest=en-gb+f3" in proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["speakers"] == {"host": "en-us", "guest": "en-gb+f3"}
    duration = check_programme(out, "mp3", min_s=45, max_s=240)
    assert header_duration(out) == pytest.approx(duration, abs=0.1)
    titles = [c["title"] for c in stats["chapters"]]
    assert titles[-3:] == ["Why one file matters", "How the pipeline works", "What comes next"]
    assert {t["voice"] for t in stats["timeline"]} == {"en-us", "en-gb+f3"}
    assert elapsed < 120


def test_podcast_subtitles_and_inspect(podcast):
    proc, out, _ = podcast
    assert proc.returncode == 0, proc.stderr
    srt = out.with_suffix(".srt")
    cues = parse_srt(srt.read_text(encoding="utf-8"))
    assert len(cues) >= 10
    assert all(a <= b for a, b, _ in cues)
    assert all(cues[i][1] <= cues[i + 1][0] + 1e-3 for i in range(len(cues) - 1))
    assert any("Tidy Audio" in text for _, _, text in cues)
    assert cues[-1][1] <= header_duration(out) + 0.5

    shown = run_cli("inspect", out)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^duration:\s+\d+\.\d+ s", shown.stdout, re.M)
    assert re.search(r"^loudness:\s+-1[5-7]\.\d LUFS", shown.stdout, re.M)
    assert re.search(r"^decoder errors:\s+0$", shown.stdout, re.M)
    assert re.search(r"^title:\s+Tidy Audio$", shown.stdout, re.M)
    data = json.loads(run_cli("inspect", out, "--json").stdout)
    assert data["decode_errors"] == 0 and data["integrated_lufs"] == pytest.approx(-16, abs=1)
    assert data["header_duration_s"] == pytest.approx(data["duration_s"], abs=0.1)


def test_a_guest_on_the_second_embedded_model(tmp_path):
    """`Guest=2:` sends the guest to the second embedded model: whole WAVs per sentence, 10 dB quieter, instead of
    sliced mp3s. One clean file; each speaker's span (from the timeline) within 1.5 LU of the other's."""
    script = tmp_path / "dialog.txt"
    script.write_text(
        "Host: Welcome to the show. It is good to have you here today.\n"
        "Guest: Thanks for having me. I am reading from another model, in another format.\n"
        "Host: And yet you sound just as loud as I do. That is the point of leveling.\n"
        "Guest: Exactly. Nobody should reach for the volume knob.\n"
    )
    out = tmp_path / "dialog.mp3"
    proc = run_cli("narrate", script, "-o", out, "--speakers", "Host=en-us; Guest=2:en-gb+f3", "--stats",
                   "--no-cache", "--subtitles", "srt")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["speakers"] == {"host": "en-us", "guest": "2:en-gb+f3"}
    mapped = {"Host": (1, "en-us"), "Guest": (2, "en-gb+f3")}
    assert [t["speaker"] for t in stats["timeline"]] == ["Host"] * 2 + ["Guest"] * 2 + ["Host"] * 2 + ["Guest"] * 2
    assert all((t["model"], t["voice"]) == mapped[t["speaker"]] for t in stats["timeline"])
    samples, rate, errors = decode(out, "mp3")
    assert errors == ""
    spans = {"Host": [], "Guest": []}
    for t in stats["timeline"]:
        spans[t["speaker"]].append(samples[int(t["start"] * rate) : int(t["end"] * rate)])
    host, guest = (integrated_lufs(np.concatenate(spans[name]), rate) for name in ("Host", "Guest"))
    assert abs(host - guest) <= 1.5, (host, guest)
    cues = parse_srt(out.with_suffix(".srt").read_text(encoding="utf-8"))
    assert len(cues) == len(stats["timeline"])  # with subtitles every sentence is its own request and cue
    assert cues[-1][1] <= len(samples) / rate + 0.5


def test_a_speaker_on_a_model_the_runner_does_not_have(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("Host: Hello there.\nGuest: Hi.")
    line = assert_one_error_line(
        run_cli("narrate", text, "-o", tmp_path / "o.mp3", "--speakers", "Host=en-us; Guest=3:en-gb"), "--speakers"
    )
    assert "guest" in line and "model 3" in line
    assert not (tmp_path / "o.mp3").exists()


def test_article_to_ogg_at_concurrency_2(tmp_path):
    out = tmp_path / "article.ogg"
    proc = run_cli("narrate", EXAMPLES / "article.md", "-o", out, "--concurrency", "2", "--no-cache", "--stats")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["format"] == "ogg"
    duration = check_programme(out, "ogg", min_s=6 * 60, max_s=16 * 60)
    assert header_duration(out) == pytest.approx(duration, abs=0.1)
    assert len(stats["chapters"]) >= 6


def test_speed_and_lexicon(tmp_path):
    """--speed and --lexicon reach the pipeline: the stats show them, the timeline keeps the written words."""
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("Dify=Dee-fy\nSQL=sequel\n", encoding="utf-8")
    text = "Dify speaks SQL. Dify is fast."
    runs = {}
    for speed in ("1", "1.5"):
        out = tmp_path / f"s{speed}.mp3"
        proc = run_cli("narrate", "-", "-o", out, "--stats", "--no-cache", "--quiet", "--speed", speed,
                       "--lexicon", f"@{lexicon}", stdin=text.encode())
        assert proc.returncode == 0, proc.stderr
        runs[speed] = json.loads(proc.stdout)
    fast = runs["1.5"]
    assert fast["speed"] == 1.5 and fast["respellings"] == 3
    assert " ".join(e["text"] for e in fast["timeline"]) == text
    speech = {k: sum(e["end"] - e["start"] for e in v["timeline"]) for k, v in runs.items()}
    assert speech["1"] / speech["1.5"] == pytest.approx(1.5, rel=0.1)  # entries include fixed seam margins
