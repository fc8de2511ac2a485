"""Make every line the plugin writes to stdout reach the daemon whole, whatever the environment.

Locally installed, the plugin talks to Dify's daemon in JSON lines on stdout: the SDK's StdioResponseWriter
does `sys.stdout.write(json)`, `sys.stdout.write("\\n\\n")`, `sys.stdout.flush()`, and the SDK's log handler
writes to the same stream. How much of a write reaches the pipe depends on the environment:

- Normally stdout is TextIOWrapper → BufferedWriter → FileIO, and BufferedWriter loops until every byte is
  written.
- With `PYTHONUNBUFFERED=1` (set by many Docker images; the daemon passes its environment on) or `python -u`,
  the TextIOWrapper sits straight on the FileIO: each write is ONE `os.write`, and TextIOWrapper ignores
  the count it returns. A blob-chunk line is ~11 KB; when the pipe to the daemon is full the write blocks,
  and a signal (SIGCHLD, from any ffmpeg child of any session exiting; gevent watches children) ends it
  after the bytes already copied, 4096 or 8192: the rest of the line is lost, the daemon reads garbage and
  the file is corrupt (issue 11: 5 in 480 concurrent sessions; tests/test_stdout_stress.py reproduces it).
- gevent does not wrap sys.stdout (`monkey.patch_sys` is a no-op on Python 3), so writes are plain
  blocking writes in the hub's thread.

`make_stdout_whole()` replaces sys.stdout (and the SDK's log handler's stream) with `WholeWriteStdout`,
whose `write()` hands the encoded text to `write_all()`: it loops until every byte is out, retrying after a
short write, an EINTR (InterruptedError) and, should the fd be non-blocking, EAGAIN (BlockingIOError, after
waiting in the unpatched `select`). It never switches greenlets in the middle of a write, like the blocking
write it replaces, so messages of concurrent sessions still never mix (see tools/cooperative_output.py).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import gevent.monkey

_ZERO_WRITES_LIMIT = 1000  # consecutive writes that took nothing although the fd was writable: give up


def write_all(write: Callable[[memoryview], int | None], data: bytes, wait_writable: Callable[[], None]) -> int:
    """Write all of `data` with `write` (os.write-like: returns the count written, which may be short, or
    None / raises BlockingIOError when a non-blocking fd has no room); returns len(data).

    InterruptedError is retried at once (only a signal handler that raises stops the loop, by its
    exception); no room → `wait_writable()`, then retry. Raises OSError if the stream keeps accepting nothing.
    """
    view = memoryview(data).cast("B")
    zero_writes = 0
    while view:
        try:
            written = write(view)
        except InterruptedError:
            continue
        except BlockingIOError as exc:
            written = _characters_written(exc)
            if written:
                view = view[written:]
            wait_writable()
            continue
        if not written:  # None (no room) or 0
            zero_writes += 1
            if zero_writes >= _ZERO_WRITES_LIMIT:
                raise OSError(f"stdout accepted no data in {zero_writes} writes; {len(view)} bytes unwritten")
            wait_writable()
            continue
        zero_writes = 0
        view = view[written:]
    return len(data)


def _characters_written(exc: BlockingIOError) -> int:
    try:
        return int(exc.characters_written)
    except AttributeError:  # os.write never sets it
        return 0


def _select_writable(fd: int) -> None:
    """Block until `fd` is writable, without handing over to other greenlets (the unpatched select): a
    message must not be interleaved with another greenlet's."""
    original_select = gevent.monkey.get_original("select", "select")
    original_select([], [fd], [], 1.0)


class WholeWriteStdout(io.TextIOBase):
    """A text stream over a file descriptor whose every `write()` reaches the descriptor whole.

    No buffering: the SDK flushes after each write anyway, and a message must be out before the greenlet
    that wrote it moves on. The raw descriptor is not closed by this object.
    """

    def __init__(self, fd: int, encoding: str = "utf-8", errors: str = "strict",
                 raw_write: Callable[[int, memoryview], int] | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._encoding = encoding
        self._errors = errors
        self._raw_write = raw_write or _os_write

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, text: str) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        data = text.encode(self._encoding, self._errors)
        write_all(lambda view: self._raw_write(self._fd, view), data, lambda: _select_writable(self._fd))
        return len(text)

    def flush(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def close(self) -> None:  # leave fd 1 open: sys.__stdout__ and the interpreter's shutdown still use it
        super().close()


def _os_write(fd: int, view: memoryview) -> int:
    return os.write(fd, view)


def make_stdout_whole() -> bool:
    """Replace sys.stdout with a `WholeWriteStdout` over the same descriptor, and point the SDK's log
    handler at it. Returns False (and changes nothing) when stdout has no usable descriptor."""
    current: Any = sys.stdout
    if isinstance(current, WholeWriteStdout):
        return True
    try:
        fd = current.fileno()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        return False
    current.flush()  # anything printed so far goes out first, in order
    whole = WholeWriteStdout(fd, encoding=getattr(current, "encoding", None) or "utf-8",
                             errors=getattr(current, "errors", None) or "strict")
    sys.stdout = whole
    for handler in _stream_handlers():
        if handler.stream is current:
            handler.setStream(whole)
    return True


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """The SDK's plugin log handler (it kept the sys.stdout of import time) and any on the root logger."""
    found: list[logging.StreamHandler[Any]] = []
    try:
        from dify_plugin.config.logger_format import plugin_logger_handler
    except ImportError:
        plugin_logger_handler = None
    if isinstance(plugin_logger_handler, logging.StreamHandler):
        found.append(plugin_logger_handler)
    found.extend(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler))
    return found
