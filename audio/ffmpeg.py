"""Locate ffmpeg and run it safely.

Every ffmpeg call of the project goes through `run()`: an argument list (never a shell), `-nostdin`,
`-protocol_whitelist file,pipe` so that no input can reach the network or other protocols, a timeout, and
stderr kept for the error message. The binary is found as $FFMPEG_BINARY, then `ffmpeg` on PATH, then the
static build shipped by the `imageio-ffmpeg` wheel, so no system package is needed. ffprobe is never used.

Under the Dify SDK, `subprocess` is patched by gevent, so waiting on ffmpeg does not block other greenlets.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import FFmpegError

DEFAULT_TIMEOUT_S = 300.0
SAFE_INPUT_FLAGS = ("-protocol_whitelist", "file,pipe")


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to use (cached for the process)."""
    env = os.environ.get("FFMPEG_BINARY", "").strip()
    if env:
        path = shutil.which(env) or env
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise FFmpegError(f"FFMPEG_BINARY={env!r} is not an executable file")
        return path
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a requirement, but say what to do if it is missing
        raise FFmpegError("ffmpeg not found: install ffmpeg, set FFMPEG_BINARY, or pip install imageio-ffmpeg") from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise FFmpegError(f"ffmpeg not found: {exc}") from exc


def warm_up() -> None:
    """Find the binary and import what running it needs, at process start rather than in the first job.

    The first invocation otherwise pays ~50 ms of imports (imageio_ffmpeg; gevent's subprocess pipes) in
    the one thread every greenlet shares. A missing ffmpeg is not an error here: the invocation that needs
    it reports it (FFmpegError is not cached, so it is raised again there with the same message).
    """
    try:
        ffmpeg_binary()
        run(["-version"], timeout=30, what="ffmpeg warm-up")
    except FFmpegError:
        pass


@dataclass(frozen=True)
class FFmpegResult:
    stdout: bytes
    stderr: str


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "ffmpeg",
    check: bool = True,
) -> FFmpegResult:
    """Run ffmpeg with `args` (everything after the binary).

    Inputs must be given with `input_args()` so each gets a forced demuxer and the protocol whitelist.
    Raises FFmpegError naming `what` on a missing binary, a timeout or (with `check`) a non-zero exit.
    """
    argv = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-y", *map(os.fspath, args)]
    try:
        proc = subprocess.run(  # noqa: S603 - argument list, no shell
            argv,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise FFmpegError(f"{what}: ffmpeg binary {argv[0]!r} not found") from exc
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode("utf-8", "replace")
        raise FFmpegError(f"{what}: ffmpeg did not finish within {timeout:.0f} s", err) from exc
    stderr = proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise FFmpegError(f"{what}: ffmpeg exited with code {proc.returncode}", stderr)
    return FFmpegResult(proc.stdout, stderr)


def input_args(path: str | os.PathLike[str], fmt: str, *extra: str) -> list[str]:
    """Arguments for one input: forced demuxer `fmt`, protocol whitelist, then `-i path`.

    Forcing the demuxer means a payload that claims to be mp3 is parsed as mp3 only: an HLS playlist or a
    concat list disguised as a chunk can never make ffmpeg open other files or URLs.
    """
    p = os.fspath(path)
    if p != "pipe:0" and p != "-":
        p = file_url(p)
    return [*SAFE_INPUT_FLAGS, "-f", fmt, *extra, "-i", p]


def file_url(path: str | os.PathLike[str]) -> str:
    """`file:/absolute/path`: the `file:` protocol keeps a name like `x:y.mp3` from being read as a protocol.

    `os.path.abspath`, not `Path.resolve()`: our own paths need no symlink resolution, and resolve() costs an
    lstat per path component, which adds up to tens of ms per job with hundreds of inputs in one thread.
    """
    return "file:" + os.path.abspath(path)


def raw_input_args(
    path: str | os.PathLike[str], sample_rate: int, channels: int, sample_fmt: str = "f32le"
) -> list[str]:
    """Arguments for a raw PCM input we wrote ourselves."""
    return input_args(path, sample_fmt, "-ar", str(sample_rate), "-ac", str(channels))
