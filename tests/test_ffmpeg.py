"""ffmpeg discovery and the safe runner."""

from __future__ import annotations

import os
import stat

import pytest

from audio import ffmpeg
from audio.errors import FFmpegError


@pytest.fixture(autouse=True)
def _fresh_cache():
    ffmpeg.ffmpeg_binary.cache_clear()
    yield
    ffmpeg.ffmpeg_binary.cache_clear()


def test_finds_a_working_binary():
    out = ffmpeg.run(["-version"]).stdout.decode()
    assert out.startswith("ffmpeg version")


def test_env_override_must_be_executable(monkeypatch, tmp_path):
    bogus = tmp_path / "ffmpeg"
    bogus.write_text("not a program")
    monkeypatch.setenv("FFMPEG_BINARY", str(bogus))
    with pytest.raises(FFmpegError, match="not an executable"):
        ffmpeg.ffmpeg_binary()


def test_env_override_is_used(monkeypatch, tmp_path):
    fake = tmp_path / "fake-ffmpeg"
    fake.write_text("#!/bin/sh\necho fake-ffmpeg \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FFMPEG_BINARY", str(fake))
    out = ffmpeg.run(["-version"]).stdout.decode()
    assert out.startswith("fake-ffmpeg -hide_banner -nostdin")


def test_falls_back_to_imageio_ffmpeg(monkeypatch):
    monkeypatch.delenv("FFMPEG_BINARY", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    path = ffmpeg.ffmpeg_binary()
    assert "imageio_ffmpeg" in path and os.access(path, os.X_OK)


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


def test_a_relative_name_with_a_colon_is_read_as_a_file(tmp_path, monkeypatch):
    """`x:y.raw` would be parsed as protocol `x`; file_url makes it an absolute file: URL from the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x:y.raw").write_bytes(b"\x00\x00" * 400)
    url = ffmpeg.file_url("x:y.raw")
    assert url == f"file:{tmp_path}/x:y.raw"
    out = ffmpeg.run([*ffmpeg.raw_input_args("x:y.raw", 8000, 1, "s16le"), "-f", "s16le", "-"]).stdout
    assert len(out) == 800
