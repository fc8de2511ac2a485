"""Stress: every protocol line reaches the daemon whole, with PYTHONUNBUFFERED=1 and ffmpeg children exiting.

Issue 11, part 9. With `PYTHONUNBUFFERED=1` (set by many Docker images; the daemon passes its environment on),
CPython's stdout is a TextIOWrapper straight over the raw fd: one `os.write` per SDK write, and a write cut
short is not retried. A blob-chunk line is ~11 KB; when the pipe to the daemon is full the write blocks, and
a SIGCHLD (an ffmpeg child of another session exiting) interrupts it after 4096 or 8192 bytes went out — the
rest of the line is lost and the session still ends "ok" with a corrupt file.

This runs the real plugin process (`python -m main`) under the fake daemon with many sessions at once, each
spawning and reaping ffmpeg children, and a daemon that reads its end of the pipe with small pauses (as a busy
daemon does), so writes block often. It asserts that every stdout line parses as JSON, that every session ends
with one audio file whose length equals the blob's total_length, and that the file decodes without a single
decoder error. tools/whole_output.py is the fix; tests/test_whole_output.py tests its write loop alone.

    STDOUT_STRESS_ROUNDS=10 .venv/bin/python -m pytest tests/test_stdout_stress.py -s   # a longer run
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import audiogen
from tests.daemon import DEFAULT_MODEL, FakeDaemon, TTSCall, slices

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SESSIONS = 12  # at once, per round
ROUNDS = int(os.environ.get("STDOUT_STRESS_ROUNDS", "3"))
ROUND_TIMEOUT_S = 150.0  # a round that takes longer is reported as hung sessions, not waited for
# Four sentences → four TTS calls at max_chars_per_request=50, each answered with 2.5 s of mp3: ~11 s of output,
# ~70 KB of mp3 at 48 kbit/s, ~9 blob-chunk lines of ~11 KB per session.
TEXT = (
    "One sentence to say here, in a few words. Two sentences to say, with a few more. "
    "Three sentences now, and still more words. Four and the end of this little text."
)


class LaggingLines:
    """The plugin's stdout as the fake daemon reads it, with a pause every few lines: a daemon busy elsewhere
    lets the pipe fill up, so the plugin's writes block (where a signal can cut them short)."""

    def __init__(self, stream: Any, every: int = 4, pause_s: float = 0.004) -> None:
        self.stream, self.every, self.pause_s = stream, every, pause_s

    def __iter__(self) -> Iterator[bytes]:
        for n, line in enumerate(self.stream):
            if n % self.every == 0:
                time.sleep(self.pause_s)
            yield line

    def close(self) -> None:
        self.stream.close()


class LaggingDaemon(FakeDaemon):
    def _read_stdout(self) -> None:
        assert self.proc is not None
        self.proc.stdout = LaggingLines(self.proc.stdout)  # type: ignore[assignment]
        super()._read_stdout()


def answer(call: TTSCall) -> list[bytes]:
    """2.5 s of mp3 in 1024-byte slices (as openai sends), a tone per sentence so files differ."""
    freq = 200.0 + 40 * (len(call.text) % 11)
    return slices(audiogen.mp3(2.5, freq=freq), 1024)


def test_every_line_and_blob_arrives_whole_under_pythonunbuffered(tmp_path):
    env = {"PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    bad: list[str] = []
    sessions = 0
    with LaggingDaemon(REPO, tts=answer, env=env) as daemon:
        for round_no in range(ROUNDS):
            runs = [
                daemon.start_tool({"text": TEXT, "model": dict(DEFAULT_MODEL), "max_chars_per_request": 50,
                                   "cache": False, "filename": f"r{round_no}-s{k}"})
                for k in range(SESSIONS)
            ]
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            for run in runs:
                sessions += 1
                if not run.done.wait(max(0.1, deadline - time.monotonic())):
                    bad.append(f"{run.session_id}: no end within the round's {ROUND_TIMEOUT_S:.0f} s")
                    continue
                if not run.ok or run.protocol_errors:
                    bad.append(f"{run.session_id}: error={run.error_message!r} protocol={run.protocol_errors}")
                    continue
                files = run.audio_files()
                if len(files) != 1:
                    bad.append(f"{run.session_id}: {len(files)} audio files")
                    continue
                _, errors = audiogen.decode(files[0].data, "mp3", 24000, 1)
                if errors:
                    bad.append(f"{run.session_id}: decoder errors: {errors[:200]}")
        stray = list(daemon.stray_lines)
        global_errors = list(daemon.global_errors)
        assert daemon.alive, daemon.stderr_tail()
    print(f"\n{sessions} sessions in {ROUNDS} rounds of {SESSIONS}: {len(bad)} bad sessions, "
          f"{len(stray)} stdout lines that were not JSON, {len(global_errors)} global errors")
    assert not stray, f"{len(stray)} stdout lines did not parse as JSON; first: {stray[0][:300]!r}"
    assert not global_errors, global_errors[:3]
    assert not bad, "\n".join(bad[:10])
