"""Run the TTS requests: concurrent, bounded, ordered, retried, cached.

Each request's chunks are validated (cut into complete audio files by `segments.split_call`) inside the
retry loop, so a provider that once answers with a JSON rate-limit body instead of audio is retried like one
that raised. The first request that still fails stops the job: remaining requests are not started, and the
error names the request, because returning audio with a missing part is never acceptable.

Concurrency uses one ThreadPoolExecutor per TTS model, each bounded by `concurrency`: a job that sends a guest's
lines to a second provider is not slowed by the first provider's rate limit, and neither provider sees more
than `concurrency` calls at once. Under the Dify SDK, gevent has patched threading, so the workers are
greenlets and each backwards invocation waits cooperatively; in the CLI they are real threads.

Every log line and error names the model next to the request ("TTS request #4 (model_2 minimax/speech-01 …")
when the caller gave the models names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from .cache import Cache, cache_key
from .errors import InvalidAudio, InvalidInput, SynthesisFailed, VoiceRefused
from .model import MODEL_PARAMS, AudioFile, Request, Stats, Synthesize, Synthesizers
from .segments import split_call
from .voices import VoiceGate, voice_refused

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
    synthesize: Synthesize | Synthesizers,
    *,
    concurrency: int = 4,
    attempts: int = 3,
    backoff_s: float = 1.0,
    stall_timeout_s: float = 120.0,
    cache: Cache | None = None,
    namespace: str = "",
    models: Mapping[int, str] | None = None,
    stats: Stats | None = None,
    progress: Callable[[int, int], None] | None = None,
    spool: Path | None = None,
) -> list[CallResult]:
    """Synthesize every request and return their results in request order.

    `synthesize`: one callable (every request is model 1's) or {model index: callable}; each request goes to
    its `Request.model`, and at most `concurrency` calls run at once per model. `models`: model index → name
    (e.g. "provider/model"), used in messages and as that model's cache namespace; model 1 falls back to
    `namespace`.

    `spool`: a directory to keep the audio files in instead of memory (each call's files are written there as
    soon as the call is validated), so memory does not grow with the length of the text.

    Raises InvalidInput("speakers") before any call when a request's model has no callable; SynthesisFailed
    (provider errors, stalls) or InvalidAudio (non-audio answers) for the first request that fails after
    `attempts` tries; InvalidInput from the engine (e.g. unknown voice) is not retried, nor is an error that
    says the voice was refused (VoiceRefused, after one call: see audio.voices), nor an answer in a format
    the pipeline cannot use (`InvalidAudio.retryable` False: MP4, a link...).
    """
    engines = as_synthesizers(synthesize)
    names = dict(models or {})
    check_models(requests, engines, names)
    labelled = bool(names) or len(engines) > 1  # a plain one-model run keeps its messages as they were
    stats = stats if stats is not None else Stats()
    total = len(requests)
    results: list[CallResult | None] = [None] * total
    lock = threading.Lock()
    cancelled = threading.Event()
    activity: dict[int, float] = {}  # request index → monotonic time of its last sign of life
    done_count = 0

    def one(req: Request) -> CallResult:
        label = model_label(req.model, names) if labelled else ""
        key = ""
        if cache is not None:
            key = cache_key(cache_namespace(req.model, names, namespace), req.voice, req.tts_text)
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
                chunks = _collect(engines[req.model], req, activity, lock, cancelled)
                files = split_call(chunks, req.index)
            except (InvalidInput, _Cancelled):
                raise
            except InvalidAudio as exc:
                last_error = exc
                log.warning("request #%d%s attempt %d: %s", req.index + 1, f" ({label})" * bool(label), attempt, exc)
                if not exc.retryable:
                    break  # a well-formed answer in a format we cannot use: asking again pays for the same answer
                continue
            except Exception as exc:
                if voice_refused(str(exc)):  # no retry can fix it (see audio.voices)
                    raise VoiceRefused(
                        req.index, req.text, _short(str(exc)), attempt, req.voice, model=label, model_index=req.model
                    ) from exc
                last_error = exc
                log.warning(
                    "request #%d%s attempt %d failed: %s", req.index + 1, f" ({label})" * bool(label), attempt,
                    _short(str(exc)),
                )
                continue
            if cache is not None:
                cache.put(key, chunks)
            return CallResult(req, _spooled(files, spool), attempt, False)
        if isinstance(last_error, InvalidAudio):
            raise InvalidAudio(
                last_error.call_index, last_error.message, sniffed=last_error.sniffed, preview=last_error.preview,
                model=label, retryable=last_error.retryable,
            ) from None
        message = _short(str(last_error) or type(last_error).__name__)
        raise SynthesisFailed(req.index, req.text, message, attempts, model=label, model_index=req.model)

    # A voice is proven per model: the same name may be fine for one provider and refused by another.
    gates = {model: VoiceGate(cache_namespace(model, names, namespace)) for model in engines}

    def gated(req: Request) -> CallResult:
        """`one`, but the first request of a voice not yet proven in this process runs alone (audio.voices)."""
        gate = gates[req.model]
        probe = gate.turn(req.voice, cancelled, _Cancelled)
        ok = False
        try:
            result = one(req)
            ok = True
            return result
        finally:
            if probe:
                gate.done(req.voice, ok=ok)

    position = {req.index: pos for pos, req in enumerate(requests)}
    per_model: dict[int, list[Request]] = {}
    for req in requests:
        per_model.setdefault(req.model, []).append(req)
    # One pool per model (the bound is per provider). Not `with` blocks: on failure we must not wait for a
    # call that is stuck inside the provider.
    pools = {
        model: ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(reqs))), thread_name_prefix=f"tts{model}")
        for model, reqs in per_model.items()
    }
    pending: set[Future[CallResult]] = set()
    try:
        for req in requests:
            pending.add(pools[req.model].submit(gated, req))
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in finished:
                res = fut.result()  # re-raises the request's error
                results[position[res.request.index]] = res
                done_count += 1
                if progress:
                    progress(done_count, total)
            _check_stalls(activity, lock, stall_timeout_s, requests, attempts, names if labelled else None)
    except BaseException:
        cancelled.set()
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    for pool in pools.values():
        pool.shutdown(wait=True)
    stats.requests = total
    return [r for r in results if r is not None]


def as_synthesizers(synthesize: Synthesize | Synthesizers) -> dict[int, Synthesize]:
    """{model index: callable} from either one callable (model 1) or such a mapping."""
    if isinstance(synthesize, Mapping):
        return dict(synthesize)
    return {1: synthesize}


def check_models(requests: Sequence[Request], engines: Mapping[int, Synthesize], names: Mapping[int, str]) -> None:
    """InvalidInput("speakers") naming the first speaker whose model has no callable (an empty selector)."""
    for req in requests:
        if req.model not in engines:
            param = MODEL_PARAMS.get(req.model, f"model {req.model}")
            who = req.speaker or f"request #{req.index + 1}"
            raise InvalidInput(
                "speakers",
                f"{who} is mapped to model {req.model}, but no model is selected in {param}; choose a TTS model "
                f"in {param} or map {who} to another model",
            )


def model_label(model: int, names: Mapping[int, str]) -> str:
    """How messages name a model: "model_2 minimax/speech-01" ("model_2" when it has no name)."""
    param = MODEL_PARAMS.get(model, f"model {model}")
    name = names.get(model)
    return f"{param} {name}" if name else param


def cache_namespace(model: int, names: Mapping[int, str], namespace: str) -> str:
    """The cache namespace of one model's requests: its name, else `namespace` (model 1) or a derived one."""
    if model in names:
        return names[model]
    return namespace if model == 1 else f"{namespace}|{MODEL_PARAMS.get(model, model)}"


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
    activity: dict[int, float],
    lock: threading.Lock,
    timeout: float,
    requests: Sequence[Request],
    attempts: int,
    names: Mapping[int, str] | None,
) -> None:
    now = time.monotonic()
    with lock:
        stalled = [idx for idx, last in activity.items() if now - last > timeout]
    if stalled:
        idx = min(stalled)
        req = next(r for r in requests if r.index == idx)
        raise SynthesisFailed(
            idx, req.text, f"no audio received for {timeout:.0f} s (the TTS call stalled)", attempts,
            model=model_label(req.model, names) if names is not None else "", model_index=req.model,
        )


def _sleep_cancellable(seconds: float, cancelled: threading.Event) -> None:
    cancelled.wait(seconds)


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
