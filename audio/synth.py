"""Run the TTS requests: concurrent, bounded, ordered, retried, cached.

Each request's chunks are validated (cut into complete audio files by `segments.split_call`) inside the
retry loop, so a provider that once answers with a JSON rate-limit body instead of audio is retried like one
that raised. The first request that still fails stops the job: remaining requests are not started, and the
error names the request, because returning audio with a missing part is never acceptable.

Concurrency uses a ThreadPoolExecutor. Under the Dify SDK, gevent has patched threading, so the workers are
greenlets and each backwards invocation waits cooperatively; in the CLI they are real threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from .cache import Cache, cache_key
from .errors import InvalidAudio, InvalidInput, SynthesisFailed
from .model import AudioFile, Request, Stats, Synthesize
from .segments import split_call

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallResult:
    """The complete audio files of one request, in order."""

    request: Request
    files: list[AudioFile]
    attempts: int
    cached: bool


class _Stalled(Exception):
    """Internal: a call produced no chunk for longer than the stall timeout."""


class _Cancelled(Exception):
    """Internal: the job failed elsewhere; stop this call quietly."""


def run(
    requests: Sequence[Request],
    synthesize: Synthesize,
    *,
    concurrency: int = 4,
    attempts: int = 3,
    backoff_s: float = 1.0,
    stall_timeout_s: float = 120.0,
    cache: Cache | None = None,
    namespace: str = "",
    stats: Stats | None = None,
    progress: Callable[[int, int], None] | None = None,
    spool: Path | None = None,
) -> list[CallResult]:
    """Synthesize every request and return their results in request order.

    `spool`: a directory to keep the audio files in instead of memory (each call's files are written there as
    soon as the call is validated), so memory does not grow with the length of the text.

    Raises SynthesisFailed (provider errors, stalls) or InvalidAudio (non-audio answers) for the first
    request that fails after `attempts` tries; InvalidInput from the engine (e.g. unknown voice) is not retried.
    """
    stats = stats if stats is not None else Stats()
    total = len(requests)
    results: list[CallResult | None] = [None] * total
    lock = threading.Lock()
    cancelled = threading.Event()
    activity: dict[int, float] = {}  # request index → monotonic time of its last sign of life
    done_count = 0

    def one(req: Request) -> CallResult:
        key = cache_key(namespace, req.voice, req.tts_text) if cache is not None else ""
        if cache is not None:
            chunks = cache.get(key)
            if chunks is not None:
                try:
                    files = split_call(chunks, req.index)
                except InvalidAudio:
                    log.warning("cache entry for request #%d is not valid audio; synthesizing again", req.index + 1)
                else:
                    with lock:
                        stats.cache_hits += 1
                    return CallResult(req, _spooled(files, spool), 0, True)
            with lock:
                stats.cache_misses += 1
        last_error: Exception | None = None
        for attempt in range(1, attempts + 1):
            if cancelled.is_set():
                raise _Cancelled
            if attempt > 1:
                with lock:
                    stats.retries += 1
                _sleep_cancellable(backoff_s * 2 ** (attempt - 2), cancelled)
                if cancelled.is_set():
                    raise _Cancelled
            try:
                chunks = _collect(synthesize, req, activity, lock, cancelled)
                files = split_call(chunks, req.index)
            except (InvalidInput, _Cancelled):
                raise
            except InvalidAudio as exc:
                last_error = exc
                log.warning("request #%d attempt %d: %s", req.index + 1, attempt, exc)
                continue
            except Exception as exc:
                last_error = exc
                log.warning("request #%d attempt %d failed: %s", req.index + 1, attempt, _short(str(exc)))
                continue
            if cache is not None:
                cache.put(key, chunks)
            return CallResult(req, _spooled(files, spool), attempt, False)
        if isinstance(last_error, InvalidAudio):
            raise last_error
        raise SynthesisFailed(req.index, req.text, _short(str(last_error) or type(last_error).__name__), attempts)

    position = {req.index: pos for pos, req in enumerate(requests)}
    workers = max(1, min(concurrency, total or 1))
    # Not a `with` block: on failure we must not wait for a call that is stuck inside the provider.
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts")
    pending: set[Future[CallResult]] = {pool.submit(one, req) for req in requests}
    try:
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in finished:
                res = fut.result()  # re-raises the request's error
                results[position[res.request.index]] = res
                done_count += 1
                if progress:
                    progress(done_count, total)
            _check_stalls(activity, lock, stall_timeout_s, requests, attempts)
    except BaseException:
        cancelled.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    stats.requests = total
    return [r for r in results if r is not None]


def _spooled(files: list[AudioFile], spool: Path | None) -> list[AudioFile]:
    """The files with their bytes moved to `spool` (unchanged when spool is None)."""
    if spool is None:
        return files
    out = []
    for f in files:
        path = spool / f"c{f.call_index:05d}-{f.file_index:04d}.{f.fmt}"
        path.write_bytes(f.data)
        out.append(replace(f, data=b"", path=path))
    return out


def _collect(
    synthesize: Synthesize,
    req: Request,
    activity: dict[int, float],
    lock: threading.Lock,
    cancelled: threading.Event,
) -> list[bytes]:
    """Drain one call's chunk iterator, recording activity so a stalled call can be detected."""
    chunks: list[bytes] = []
    with lock:
        activity[req.index] = time.monotonic()
    try:
        for chunk in synthesize(req.tts_text, req.voice):
            if cancelled.is_set():
                raise _Cancelled
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"the TTS engine yielded {type(chunk).__name__}, expected bytes")
            chunks.append(bytes(chunk))
            with lock:
                activity[req.index] = time.monotonic()
    finally:
        with lock:
            activity.pop(req.index, None)
    return chunks


def _check_stalls(
    activity: dict[int, float], lock: threading.Lock, timeout: float, requests: Sequence[Request], attempts: int
) -> None:
    now = time.monotonic()
    with lock:
        stalled = [idx for idx, last in activity.items() if now - last > timeout]
    if stalled:
        idx = min(stalled)
        req = next(r for r in requests if r.index == idx)
        raise SynthesisFailed(idx, req.text, f"no audio received for {timeout:.0f} s (the TTS call stalled)", attempts)


def _sleep_cancellable(seconds: float, cancelled: threading.Event) -> None:
    cancelled.wait(seconds)


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
