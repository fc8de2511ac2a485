"""Choose ffmpeg by what it can do, and run it safely.

Every ffmpeg call of the project goes through `run()`: an argument list (never a shell), `-nostdin`,
`-protocol_whitelist file,pipe` so that no input can reach the network or other protocols, a timeout, and
stderr kept for the error message. ffprobe is never used.

Which binary (`capabilities()`, probed once per process per binary: 5 short ffmpeg runs in parallel,
0.1 s for the bundled static build, 0.3 s for a distribution's shared-library build):
1. `$FFMPEG_BINARY` if set: explicit, so it is used or the job stops with what it lacks; never skipped;
2. the static build of the `imageio-ffmpeg` wheel (the one requirements.txt pins and the tests exercise);
3. `ffmpeg` on PATH, only if it passes the same probe (distributions ship 4.4–6.1 without the loopback decoder).
A binary must have every encoder, decoder, muxer, demuxer and filter the pipeline uses (REQUIRED), and run the
pipeline's own filter graphs (master's chain with soxr resampling, and the measurement) on 0.1 s of silence.
The loopback decoder (`-dec`, ffmpeg ≥ 7, tested by running it) lets audio.master encode and measure in one
run; a binary without it is used only when nothing better is there, and master then measures the written
file in a second run. `require()` raises FFmpegError saying what is missing and how to fix it: the pipeline
calls it before the first TTS request, so a job never pays for speech it cannot encode.

On Linux every child gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG): when the daemon
kills the plugin (execution timeout), no ffmpeg outlives it. (A thread always outlives its own ffmpeg: run()
waits for it. Under gevent every greenlet runs in the main thread.) Under the Dify SDK, `subprocess` is patched by
gevent (it forks in Python and runs the preexec_fn too), so waiting on ffmpeg does not block other greenlets.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .errors import FFmpegError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
PROBE_TIMEOUT_S = 30.0
SAFE_INPUT_FLAGS = ("-protocol_whitelist", "file,pipe")

# What the pipeline uses (grep audio/ for -c:a, -f, input_args formats and filter names when adding one).
REQUIRED: dict[str, tuple[str, ...]] = {
    # master's five formats, the engine's mp3, decode's f32le output, the null muxer's default pcm_s16le
    "encoder": ("libmp3lame", "aac", "libopus", "flac", "pcm_s16le", "pcm_f32le"),
    # codecs the TTS providers send (segments.py accepts these) and master's output is measured from
    "decoder": ("mp3", "aac", "opus", "vorbis", "flac", "pcm_s16le", "pcm_f32le"),
    "muxer": ("mp3", "mp4", "ipod", "ogg", "flac", "wav", "null", "f32le"),
    "demuxer": ("mp3", "wav", "ogg", "flac", "aac", "mov", "mp4", "f32le", "s16le", "ffmetadata"),
    "filter": ("aresample", "aformat", "alimiter", "ebur128", "astats", "volume", "lowpass", "pan", "anull", "atempo"),
}
MIN_LOOPBACK_MAJOR = 7  # the first release with `-dec` (for the messages; the probe runs it)


# ------------------------------------------------------------------------------------------- children


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGKILL when the parent goes; if it already went, go now."""
    if _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL)) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _preexec() -> Callable[[], None] | None:
    return functools.partial(_die_with_parent, os.getpid()) if _PRCTL is not None else None


def _start(argv: list[str], stdin: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - argument list, no shell
        argv,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_preexec(),  # only prctl + getppid in the child: no locks taken
    )


def _finish(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float) -> tuple[bytes, bytes]:
    """communicate() with a timeout that kills and reaps the child, keeping what it wrote (as subprocess.run
    does); any other interruption (a cancelled greenlet) kills and reaps it too."""
    try:
        return proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        exc.stdout, exc.stderr = proc.communicate()
        raise
    except BaseException:
        proc.kill()
        proc.wait()
        raise


# --------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class Capabilities:
    """What one ffmpeg binary can do for the pipeline."""

    path: str
    version: str  # as the binary reports it, e.g. "5.1.9-0+deb12u1", "n9.0.2-17-g2a571b6068-20260930"
    major: int | None  # None for a git build ("N-123-g…") or an unreadable banner
    has_loopback: bool  # `-dec` works: encode and measure in one run
    missing: tuple[str, ...] = ()  # e.g. ("encoder libopus", "filter alimiter"); empty = usable
    source: str = ""  # "FFMPEG_BINARY", "imageio-ffmpeg" or "PATH"

    @property
    def usable(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        where = f" ({self.source})" if self.source else ""
        mode = "encode+measure in one run" if self.has_loopback else "no loopback decoder: measures the file after"
        if self.missing:
            mode = "lacks " + ", ".join(self.missing)
        return f"ffmpeg {self.version} at {self.path}{where}: {mode}"


_VERSION = re.compile(r"ffmpeg version (\S+)")
_LISTS = {"codecs": "-codecs", "formats": "-formats", "filters": "-filters"}
# 0.1 s of silence through an encoder, its loopback decoder and a filter: fails with "Unrecognized option
# 'dec'" before ffmpeg 7, and wherever a build lacks the feature.
_LOOPBACK_ARGS = [
    "-hide_banner", "-nostdin", "-v", "error", "-f", "s16le", "-ar", "8000", "-ac", "1", "-i", "pipe:0",
    "-c:a", "pcm_s16le", "-f", "null", "-",
    "-dec", "0:0", "-filter_complex", "[dec:0]anull[out]", "-map", "[out]", "-f", "null", "-",
]  # fmt: skip


def _pipeline_graph_args() -> list[str]:
    """0.1 s of silence through master's filter chain (pan, lowpass, volume, soxr, alimiter) and the measurement
    graph, as the pipeline writes them: catches options a build does not know (ffmpeg 5.1's ebur128 had no
    `framelog=quiet`), which the -filters list cannot show."""
    from .loudness import MEASURE_LOGLEVEL, measurement_graph  # these import this module
    from .master import _filter_chain

    graph = f"[0:a]{_filter_chain(1, 8000, 2, 16000, 1.0, -1.0, 3000)}[m];{measurement_graph('[m]', 16000)}"
    return ["-hide_banner", "-nostdin", "-loglevel", MEASURE_LOGLEVEL, "-f", "s16le", "-ar", "8000", "-ac", "1",
            "-i", "pipe:0", "-filter_complex", graph, "-map", "[measured]", "-f", "null", "-"]  # fmt: skip


def _graph_problem(err: str, returncode: int | None) -> str | None:
    """Why the pipeline's graph run failed (None: it ran and its measurement parses)."""
    from .loudness import parse_measurement

    try:
        if returncode == 0 and parse_measurement(err, 16000, "probe").samples > 0:
            return None
    except FFmpegError:
        pass
    lines = [line for line in err.splitlines() if "[error]" in line or "[fatal]" in line] or err.splitlines()
    return f"the pipeline's filter graph to run (it said: {' | '.join(lines[:2])[:300] or 'nothing'})"


def _parse_codecs(text: str) -> tuple[set[str], set[str]]:
    """(encoder names, codec names with a decoder) from `ffmpeg -codecs`."""
    encoders: set[str] = set()
    decoders: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^ ([D.])([E.])[A-Z.]{4} (\S+)\s+(.*)$", line)
        if not m or m[3] == "=":
            continue
        decode, encode, name, rest = m.groups()
        if decode == "D":
            decoders.add(name)
        if encode == "E":
            named = re.search(r"\(encoders: ([^)]*)\)", rest)
            encoders.update(named[1].split() if named else [name])
    return encoders, decoders


def _parse_formats(text: str) -> tuple[set[str], set[str]]:
    """(muxers, demuxers) from `ffmpeg -formats` (5.x: " DE name"; 7+: a third column, "d" for devices)."""
    muxers: set[str] = set()
    demuxers: set[str] = set()
    for line in text.splitlines():
        flags, rest = line[1:3], line[3:].split()
        if len(flags) < 2 or flags[0] not in "D " or flags[1] not in "E " or flags == "  " or not rest:
            continue
        names = (rest[1] if rest[0] == "d" and len(rest) > 1 else rest[0]).split(",")
        if flags[0] == "D":
            demuxers.update(names)
        if flags[1] == "E":
            muxers.update(names)
    return muxers, demuxers


def _parse_filters(text: str) -> set[str]:
    return {p[1] for p in (line.split() for line in text.splitlines()) if len(p) >= 3 and "->" in p[2]}


@functools.cache
def probe(path: str) -> Capabilities:
    """What the binary at `path` can do: 5 short runs in parallel (-codecs with the banner, -formats, -filters,
    a loopback run, the pipeline's own filter graph), once per process per binary. Never raises: a binary
    that does not run lacks "a binary that runs"."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    out: dict[str, tuple[bytes, bytes]] = {}
    try:
        for key, flag in _LISTS.items():
            started[key] = _start([path, *(["-hide_banner"] if key != "codecs" else []), flag], stdin=False)
        started["loopback"] = _start([path, *_LOOPBACK_ARGS], stdin=True)
        started["graph"] = _start([path, *_pipeline_graph_args()], stdin=True)
        for key, proc in started.items():
            out[key] = _finish(proc, bytes(1600) if key in ("loopback", "graph") else None, PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Capabilities(path, "?", None, False, (f"a binary that runs ({type(exc).__name__}: {exc})",))
    listings = {k: (v[0] + v[1]).decode("utf-8", "replace") for k, v in out.items()}
    for key, flag in _LISTS.items():
        if started[key].returncode != 0:
            last = (listings[key].strip().splitlines() or ["no output"])[-1][:200]
            problem = f"a binary that runs (`ffmpeg {flag}` exited with code {started[key].returncode}: {last})"
            return Capabilities(path, "?", None, False, (problem,))
    found_version = _VERSION.search(listings["codecs"])
    version = found_version[1] if found_version else "?"
    major = re.match(r"n?(\d+)\.", version)
    encoders, decoders = _parse_codecs(listings["codecs"])
    muxers, demuxers = _parse_formats(listings["formats"])
    have = {"encoder": encoders, "decoder": decoders, "muxer": muxers, "demuxer": demuxers,
            "filter": _parse_filters(listings["filters"])}  # fmt: skip
    missing = [f"{kind} {name}" for kind, names in REQUIRED.items() for name in names if name not in have[kind]]
    graph_problem = _graph_problem(out["graph"][1].decode("utf-8", "replace"), started["graph"].returncode)
    if graph_problem and not missing:  # a missing filter explains a failing graph better; then soxr would
        no_soxr = "--enable-libsoxr" not in listings["codecs"]
        missing.append("the soxr resampler (--enable-libsoxr)" if no_soxr else graph_problem)
    loopback = started["loopback"].returncode == 0
    return Capabilities(path, version, int(major[1]) if major else None, loopback, tuple(missing))


# ------------------------------------------------------------------------------------------ selection


def _fix_hint() -> str:
    need = ", ".join(REQUIRED["encoder"][:4]) + ", soxr, alimiter, ebur128, astats"
    return f"ffmpeg ≥ {MIN_LOOPBACK_MAJOR} with {need}"


def _bundled() -> tuple[str | None, str]:
    """(path of imageio-ffmpeg's binary or None, why not)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None, "the imageio-ffmpeg package is not installed"
    try:
        return imageio_ffmpeg.get_ffmpeg_exe(), ""
    except RuntimeError as exc:
        return None, f"imageio-ffmpeg has no binary for this platform ({exc})"


def _explicit(env: str) -> Capabilities:
    path = shutil.which(env) or env
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise FFmpegError(
            f"FFMPEG_BINARY={env!r} is not an executable file: unset FFMPEG_BINARY to use the ffmpeg of the "
            f"imageio-ffmpeg package, or point it at {_fix_hint()}"
        )
    caps = probe(path)
    if caps.missing:
        raise FFmpegError(
            f"FFMPEG_BINARY={env!r} (ffmpeg {caps.version}) lacks {', '.join(caps.missing)}: unset "
            f"FFMPEG_BINARY to use the ffmpeg of the imageio-ffmpeg package, or point it at {_fix_hint()}"
        )
    if not caps.has_loopback:
        log.info("FFMPEG_BINARY: ffmpeg %s has no loopback decoder; encoded files are measured after", caps.version)
    return replace(caps, source="FFMPEG_BINARY")


@functools.cache
def capabilities() -> Capabilities:
    """The ffmpeg the pipeline uses and what it can do, chosen once per process (see the module docstring).

    Raises FFmpegError, naming what is missing and how to fix it, when no usable binary exists (the error is
    not cached: the next call looks again, and says the same).
    """
    env = os.environ.get("FFMPEG_BINARY", "").strip()
    if env:
        return _explicit(env)
    usable: list[Capabilities] = []
    problems: list[str] = []
    bundled, why = _bundled()
    on_path = shutil.which("ffmpeg")
    for source, path in (("imageio-ffmpeg", bundled), ("PATH", on_path)):
        if path is None:
            problems.append(why if source == "imageio-ffmpeg" else "there is no ffmpeg on PATH")
            continue
        caps = replace(probe(path), source=source)
        if caps.usable and caps.has_loopback:
            return caps
        if caps.usable:
            usable.append(caps)
        else:
            problems.append(f"{path} (ffmpeg {caps.version}) lacks {', '.join(caps.missing)}")
    if usable:
        log.warning("%s; no ffmpeg ≥ %d with every feature was found", usable[0].describe(), MIN_LOOPBACK_MAJOR)
        return usable[0]
    raise FFmpegError(
        f"no usable ffmpeg: {'; '.join(problems)}. Install the plugin's requirements (they bring the "
        f"imageio-ffmpeg package and its ffmpeg), or set FFMPEG_BINARY to {_fix_hint()}"
    )


def require() -> Capabilities:
    """The chosen ffmpeg; FFmpegError (what is missing, how to fix it) if there is none. Called before any
    TTS request, so that a job that could not be encoded costs nothing."""
    return capabilities()


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to use (chosen once per process)."""
    return capabilities().path


def reset() -> None:
    """Forget the choice and the probes (tests that change FFMPEG_BINARY, PATH or the binaries)."""
    capabilities.cache_clear()
    probe.cache_clear()


def warm_up() -> Capabilities | None:
    """Choose the binary at process start rather than in the first job (the probe's runs also load what
    running ffmpeg needs: they go through the same _start/_finish as run()), and return the choice for the
    start-up log. A missing ffmpeg is not an error here: each invocation reports it before its first TTS call
    (FFmpegError is not cached)."""
    try:
        caps = capabilities()
    except FFmpegError as exc:
        log.warning("%s", exc)
        return None
    return caps


# ---------------------------------------------------------------------------------------------- run


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
        proc = _start(argv, stdin=stdin is not None)
        out, err = _finish(proc, stdin, timeout)
    except FileNotFoundError as exc:
        raise FFmpegError(f"{what}: ffmpeg binary {argv[0]!r} not found") from exc
    except subprocess.TimeoutExpired as exc:
        partial = (exc.stderr or b"").decode("utf-8", "replace")
        raise FFmpegError(f"{what}: ffmpeg did not finish within {timeout:.0f} s", partial) from exc
    stderr = err.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise FFmpegError(f"{what}: ffmpeg exited with code {proc.returncode}", stderr)
    return FFmpegResult(out, stderr)


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
