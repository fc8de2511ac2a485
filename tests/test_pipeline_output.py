"""narrate(output=...): the finished file goes straight to disk, and memory does not follow the length."""

from __future__ import annotations

import tracemalloc

import pytest

from audio import pipeline
from audio.loudness import measure_file
from tests import audiogen


def _text(sentences: int) -> str:
    return " ".join(f"Sentence number {n} is read aloud here." for n in range(sentences))


def _tone_engine(seconds: float):
    answer = audiogen.mp3(seconds, freq=220)
    return lambda text, voice: [answer[i : i + 1024] for i in range(0, len(answer), 1024)]


def test_output_path_gets_the_file_and_the_result_holds_no_audio(tmp_path):
    out = tmp_path / "narration.mp3"
    out.write_bytes(b"old")  # replaced atomically
    work = tmp_path / "work"
    work.mkdir()
    result = pipeline.narrate(pipeline.Job(text=_text(3), max_chars_per_request=45), _tone_engine(2.0),
                              workdir=work, output=out)
    assert result.path == out and result.data == b""
    assert result.size_bytes == out.stat().st_size > 10_000
    m = measure_file(out, "mp3")
    assert m.duration_s == pytest.approx(result.duration_s, abs=0.01)
    assert abs(m.integrated_lufs + 16.0) <= 1.0 and m.true_peak_dbtp <= -1.0
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["narration.mp3", "work"]


def _peak_traced_mb(sentences: int, workdir) -> float:
    tracemalloc.start()
    try:
        pipeline.narrate(pipeline.Job(text=_text(sentences), max_chars_per_request=45), _tone_engine(6.0),
                         workdir=workdir, output=workdir / "out.mp3")
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_memory_hardly_grows_with_the_length_of_the_programme(tmp_path):
    """1 vs 4 minutes of audio (10 vs 40 calls of 6 s). Holding the PCM would add 5.5 MB per extra minute at
    24 kHz float32, the compressed answers 0.5 MB; what may grow is the limiter's 5 ms peak profile (12 bytes
    per window, 0.15 MB per minute) and per-call bookkeeping."""
    short = _peak_traced_mb(10, tmp_path)
    long = _peak_traced_mb(40, tmp_path)
    assert long - short < 3 * 0.3, (short, long)
