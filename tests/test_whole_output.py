"""tools/whole_output.py: every write reaches stdout whole (issue 11, part 9).

The write loop is tested with fake writers that take at most 4096 bytes per call, raise InterruptedError or
BlockingIOError, or report no room; the stream over a real pipe; the installation in a `PYTHONUNBUFFERED=1`
interpreter whose writes are interrupted by a timer signal while the reader lags. The whole plugin under
concurrent load is tests/test_stdout_stress.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tools.whole_output import WholeWriteStdout, write_all

REPO = Path(__file__).resolve().parent.parent


class StingyWriter:
    """An os.write-like callable: at most `limit` bytes per call; by the call number, sometimes an
    InterruptedError, a BlockingIOError, or None (a non-blocking raw stream with no room)."""

    def __init__(self, limit: int = 4096, interrupt_every: int = 3, block_every: int = 5, none_every: int = 7):
        self.limit = limit
        self.interrupt_every, self.block_every, self.none_every = interrupt_every, block_every, none_every
        self.out = bytearray()
        self.calls = 0
        self.faults: list[str] = []

    def __call__(self, view: memoryview) -> int | None:
        self.calls += 1
        if self.calls % self.interrupt_every == 0:
            self.faults.append("eintr")
            raise InterruptedError(4, "Interrupted system call")
        if self.calls % self.block_every == 0:
            self.faults.append("eagain")
            raise BlockingIOError(11, "Resource temporarily unavailable")
        if self.calls % self.none_every == 0:
            self.faults.append("none")
            return None
        taken = bytes(view[: self.limit])
        self.out += taken
        return len(taken)


def test_write_all_loops_over_short_writes_and_interruptions():
    data = bytes(range(256)) * 45  # 11 520 bytes: a blob-chunk line
    writer = StingyWriter(limit=1024)
    waits = []
    assert write_all(writer, data, lambda: waits.append(1)) == len(data)
    assert bytes(writer.out) == data
    assert {"eintr", "eagain", "none"} <= set(writer.faults)
    # every "no room" answer waited for the fd before retrying; an EINTR retried at once
    assert len(waits) == writer.faults.count("eagain") + writer.faults.count("none")


@pytest.mark.parametrize("limit", [1, 7, 4096, 8192, 1 << 20])
def test_write_all_with_any_short_write_size(limit):
    data = os.urandom(50_000)
    writer = StingyWriter(limit=limit, interrupt_every=2, block_every=1_000_000, none_every=1_000_000)
    write_all(writer, data, lambda: None)
    assert bytes(writer.out) == data


def test_a_blocking_error_after_a_partial_write_keeps_the_written_part():
    """A BufferedWriter-style BlockingIOError carries characters_written: those bytes are not sent again."""
    out = bytearray()
    calls = []

    def write(view: memoryview) -> int:
        calls.append(len(view))
        if len(calls) == 1:
            out.extend(view[:100])
            exc = BlockingIOError(11, "full")
            exc.characters_written = 100
            raise exc
        out.extend(view)
        return len(view)

    write_all(write, b"x" * 300 + b"y" * 300, lambda: None)
    assert bytes(out) == b"x" * 300 + b"y" * 300
    assert calls == [600, 500]


def test_a_stream_that_never_takes_anything_is_an_error_not_a_hang():
    with pytest.raises(OSError, match="accepted no data"):
        write_all(lambda view: 0, b"data", lambda: None)


def test_the_stream_writes_each_text_whole_to_a_real_pipe():
    """WholeWriteStdout over a pipe, its raw writes cut to 4096 bytes and interrupted: the reader gets
    every line whole and in order, non-ASCII text included."""
    read_fd, write_fd = os.pipe()
    writer = StingyWriter(limit=4096, interrupt_every=4, block_every=1_000_000, none_every=1_000_000)

    def raw_write(fd: int, view: memoryview) -> int | None:
        before = len(writer.out)
        result = writer(view)
        if result:
            os.write(fd, bytes(writer.out[before:]))
        return result

    stream = WholeWriteStdout(write_fd, encoding="utf-8", raw_write=raw_write)
    lines = [json.dumps({"n": n, "blob": "é" * 3000 + "a" * (n * 997)}, ensure_ascii=False) for n in range(12)]
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_all(read_fd)))
    reader.start()
    for line in lines:
        assert stream.write(line) == len(line)
        stream.write("\n\n")
        stream.flush()
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    got = [json.loads(chunk) for chunk in received.decode("utf-8").split("\n\n") if chunk]
    assert [g["n"] for g in got] == list(range(12))
    assert [json.dumps(g, ensure_ascii=False) for g in got] == lines
    assert "eintr" in writer.faults and stream.fileno() == write_fd and stream.encoding == "utf-8"


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 65536):
        parts.append(chunk)
    return b"".join(parts)


# In a fresh interpreter with PYTHONUNBUFFERED=1: install, then write 40 lines of 200 KB while a timer signal
# fires every 0.5 ms (as SIGCHLD does when ffmpeg children exit) and the reader drains the pipe slowly.
CHILD = r"""
import signal, sys, logging
sys.path.insert(0, sys.argv[1])
from tools.whole_output import make_stdout_whole
from dify_plugin.config.logger_format import plugin_logger_handler
assert make_stdout_whole()
assert type(sys.stdout).__name__ == "WholeWriteStdout", type(sys.stdout)
assert plugin_logger_handler.stream is sys.stdout
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
for n in range(40):
    sys.stdout.write('{"n": %d, "blob": "%s"}' % (n, chr(97 + n % 26) * 200_000))
    sys.stdout.write("\n\n")
    sys.stdout.flush()
signal.setitimer(signal.ITIMER_REAL, 0, 0)
"""


def test_an_unbuffered_interpreter_with_signals_writes_every_line_whole():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    received = bytearray()
    while chunk := proc.stdout.read1(3000):  # a lagging reader keeps the pipe full, so writes block
        received += chunk
        time.sleep(0.0002)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(30) == 0, stderr
    lines = [line for line in received.split(b"\n") if line]
    assert len(lines) == 40, [len(line) for line in lines]
    for n, line in enumerate(lines):
        message = json.loads(line)
        assert message["n"] == n and message["blob"] == chr(97 + n % 26) * 200_000


def test_install_keeps_a_stdout_without_descriptor_and_is_idempotent(monkeypatch):
    import io
    import logging

    from tools import whole_output

    fake = io.StringIO()  # e.g. a test runner's capture: no fileno, nothing to make whole
    monkeypatch.setattr(sys, "stdout", fake)
    assert whole_output.make_stdout_whole() is False and sys.stdout is fake

    read_fd, write_fd = os.pipe()
    try:
        stream = open(write_fd, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - closed below
        handler = logging.StreamHandler(stream)
        logging.getLogger().addHandler(handler)
        monkeypatch.setattr(sys, "stdout", stream)
        try:
            assert whole_output.make_stdout_whole() is True
            whole = sys.stdout
            assert isinstance(whole, WholeWriteStdout) and whole.fileno() == write_fd
            assert handler.stream is whole  # log records take the same whole-write path
            assert whole_output.make_stdout_whole() is True and sys.stdout is whole
            print("héllo", file=whole)
        finally:
            logging.getLogger().removeHandler(handler)
            stream.close()
        assert os.read(read_fd, 100) == "héllo\n".encode()
    finally:
        os.close(read_fd)
        os.close(write_fd)
