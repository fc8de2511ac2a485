"""The orchestrator: text + a `synthesize` callable in, one mastered `Result` out.

Stages (each its own module): script.plan → synth.run → segments.split_call → decode → assemble →
master → tags/subtitles. This module only wires them and owns the job's temporary directory, which is
removed on success, failure and cancellation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import assemble, decode, master, script, subtitles, synth, tags
from .cache import Cache
from .errors import InvalidAudio, InvalidInput, OutputTooLarge, PipelineError
from .lexicon import Lexicon
from .model import (
    LOUDNESS_PRESETS,
    Chapter,
    EncodeOptions,
    LoudnessTarget,
    Plan,
    Request,
    Result,
    Stats,
    Synthesize,
    Tags,
    TimelineEntry,
)

# progress(stage, done, total): stage is "synthesize", "decode", "master"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Job:
    """Everything the pipeline needs besides the speech engine. Validated values (see audio.options)."""

    text: str
    voice: str | None = None  # default voice; None = the provider's default
    speakers: dict[str, str] = field(default_factory=dict)  # lower-cased name → voice; "*" = fallback
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    loudness: LoudnessTarget = LOUDNESS_PRESETS["podcast"]
    pause_ms: int = 300
    paragraph_pause_ms: int = 700
    max_chars_per_request: int = 600
    concurrency: int = 4
    attempts: int = 3  # per request, with exponential backoff between them
    backoff_s: float = 1.0  # first wait; doubles each attempt
    tags: Tags = field(default_factory=Tags)
    subtitles: str = "none"  # none | srt | vtt
    chapters: bool | None = None  # None = on when the text has markdown headings
    chapters_by: str = "sections"  # sections | speakers (one chapter per speaker turn)
    max_text_chars: int = 200_000
    max_seconds_per_call: float = 1800.0  # decoded duration cap of one TTS call
    max_total_seconds: float = 6 * 3600.0
    cache_namespace: str = ""  # identifies engine/provider+model for cache keys
    stall_timeout_s: float = 120.0  # a TTS call that sends nothing for this long fails
    time_budget_s: float | None = None  # the caller's execution limit (Dify: 600 s); None = unlimited
    speed: float = 1.0  # speech rate, pitch kept (audio.tempo); a Request's own `speed` overrides it
    lexicon: Lexicon | None = None  # respellings for what the TTS model is sent (audio.lexicon)


def narrate(
    job: Job,
    synthesize: Synthesize,
    *,
    cache: Cache | None = None,
    progress: Progress | None = None,
    workdir: str | Path | None = None,
    output: str | Path | None = None,
) -> Result:
    """Run the whole pipeline. Raises audio.errors.PipelineError subclasses on user-facing failures.

    `output`: a path to put the finished file at (atomically); the Result then carries that path and empty
    `data`, so the audio is never held in memory (the CLI writes files this way).

    All intermediate files live in one temporary directory (inside `workdir` if given) that is removed on
    success, on failure and on cancellation (GreenletExit/KeyboardInterrupt pass through `finally`).
    """
    if not job.text or not job.text.strip():
        raise InvalidInput("text", "is empty; give the text to read aloud")
    if len(job.text) > job.max_text_chars:
        raise InvalidInput(
            "text", f"has {len(job.text):,} characters; the limit is {job.max_text_chars:,}. Split it into parts."
        )
    stats = Stats(speed=job.speed)
    plan = script.plan(
        job.text,
        voice=job.voice,
        speakers=job.speakers or None,
        max_chars=job.max_chars_per_request,
        pause_ms=job.pause_ms,
        paragraph_pause_ms=job.paragraph_pause_ms,
        sentence_per_request=job.subtitles != "none",
    )
    plan = respell(plan, job.lexicon, stats)
    check_budget(plan.requests, job)
    with tempfile.TemporaryDirectory(prefix="ttsp-", dir=workdir) as tmp:
        return _run(job, plan, synthesize, cache, progress, Path(tmp), stats, Path(output) if output else None)


def _run(
    job: Job,
    plan: Plan,
    synthesize: Synthesize,
    cache: Cache | None,
    progress: Progress | None,
    tmp: Path,
    stats: Stats,
    output: Path | None = None,
) -> Result:
    def report(stage: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    spool = tmp / "calls"
    spool.mkdir()
    calls = synth.run(
        plan.requests,
        synthesize,
        concurrency=job.concurrency,
        attempts=job.attempts,
        backoff_s=job.backoff_s,
        stall_timeout_s=job.stall_timeout_s,
        cache=cache,
        namespace=job.cache_namespace,
        stats=stats,
        progress=report("synthesize"),
        spool=spool,
    )
    files = [f for call in calls for f in call.files]
    for f in files:
        if f.truncated:
            stats.truncated_files += 1
            stats.warnings.append(f"TTS call #{f.call_index + 1}: {f.note or 'last frame was cut short'}")

    rate = decode.programme_rate(files, job.encode.sample_rate)
    channels = job.encode.channels
    decoded = decode.decode_all(
        files,
        tmp / "decoded",
        sample_rate=rate,
        channels=channels,
        max_seconds_per_file=job.max_seconds_per_call,
        progress=report("decode"),
        speeds=[call.request.speed or job.speed for call in calls for _ in call.files],
    )
    total_s = sum(d.duration_s for d in decoded)
    if total_s > job.max_total_seconds:
        raise InvalidInput(
            "text",
            f"produces {_duration(total_s)} of audio, more than the {_duration(job.max_total_seconds)} limit",
        )
    by_call: dict[int, list[decode.DecodedFile]] = {}
    for d in decoded:
        by_call.setdefault(d.source.call_index, []).append(d)
    groups = [(call.request, by_call.get(call.request.index, [])) for call in calls]

    if progress:
        progress("master", 0, 1)
    programme = assemble.assemble(
        groups,
        tmp / "programme.f32",
        sample_rate=rate,
        channels=channels,
        pause_ms=job.pause_ms,
        level_speakers_to=job.loudness.integrated,
    )
    stats.warnings.extend(programme.warnings)
    for d in decoded:
        d.path.unlink(missing_ok=True)
    if programme.frames == 0:
        raise InvalidAudio(None, "every TTS call returned only silence; nothing to save")

    encoded = master.master(
        programme.path,
        rate,
        channels,
        programme.integrated_lufs,
        programme.rms_db,
        job.loudness,
        job.encode,
        tmp,
    )
    stats.warnings.extend(encoded.notes)
    chapter_list = chapters_for(programme.timeline, plan, job, programme.duration_s)
    stats.warnings.extend(tags.write_tags(encoded.path, encoded.fmt, job.tags, chapter_list))
    size = encoded.path.stat().st_size
    if size > job.encode.max_bytes:
        raise OutputTooLarge(
            f"the file is {size / 2**20:.1f} MiB after tagging, over the {job.encode.max_bytes / 2**20:.0f} MiB limit"
        )
    subs = None
    if job.subtitles == "srt":
        subs = subtitles.to_srt(programme.timeline)
    elif job.subtitles == "vtt":
        subs = subtitles.to_vtt(programme.timeline)
    if output is not None:
        deliver(encoded.path, output)
        data = b""
    else:
        data = encoded.path.read_bytes()
    if progress:
        progress("master", 1, 1)
    return Result(
        data=data,
        fmt=encoded.fmt,
        mime_type=encoded.mime_type,
        extension=encoded.extension,
        duration_s=encoded.duration_s,
        sample_rate=encoded.sample_rate,
        channels=encoded.channels,
        bitrate_kbps=encoded.bitrate_kbps,
        size_bytes=size,
        loudness_lufs=encoded.loudness_lufs,
        true_peak_dbtp=encoded.true_peak_dbtp,
        target=job.loudness,
        timeline=programme.timeline,
        chapters=chapter_list,
        stats=stats,
        subtitles=subs,
        subtitles_format=job.subtitles if subs is not None else None,
        path=output,
    )


def respell(plan: Plan, lexicon: Lexicon | None, stats: Stats) -> Plan:
    """The plan with each request's `spoken` text (what the TTS model reads) respelled by the lexicon; `text`
    stays the author's, for subtitles, the timeline and stats. Counts the replacements in stats."""
    if lexicon is None:
        return plan
    requests = []
    for req in plan.requests:
        spoken, count = lexicon.apply(req.text)
        stats.respellings += count
        requests.append(replace(req, spoken=spoken) if count else req)
    return replace(plan, requests=requests)


def deliver(src: Path, dest: Path) -> None:
    """Move the finished file to `dest` atomically (a copy is made next to `dest` first when it is on another
    filesystem than the job's temporary directory)."""
    replace_atomically(dest, lambda tmp: shutil.move(src, tmp))


def replace_atomically(dest: Path, fill: Callable[[str], object]) -> None:
    """Create `dest` through a temporary file next to it that `fill(path)` writes: readers see the old file
    or the whole new one, never a part. Raises PipelineError naming `dest` when that fails."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        try:
            fill(tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PipelineError(f"cannot write {dest}: {exc.strerror or exc}") from None


def _duration(seconds: float) -> str:
    """For messages: "42.0 s", "12.5 min" (whole minutes would print a 30 s limit as "0 min")."""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def chapters_for(timeline: list[TimelineEntry], plan: Plan, job: Job, duration_s: float) -> list[Chapter]:
    """One chapter per markdown section (or per speaker turn with chapters_by="speakers").

    `job.chapters` None means: on when the text has headings. A chapter starts where its first request's
    audio starts (the first one at 0) and ends where the next begins.
    """
    enabled = job.chapters if job.chapters is not None else bool(plan.sections)
    if not enabled or not timeline:
        return []
    starts: list[tuple[str, float]] = []
    previous: object = object()
    for entry in timeline:
        key = entry.section if job.chapters_by == "sections" else entry.speaker
        if key != previous and key:
            starts.append((key, entry.start))
        previous = key
    if not starts:
        return []
    starts[0] = (starts[0][0], 0.0)
    return [
        Chapter(title, start, starts[i + 1][1] if i + 1 < len(starts) else duration_s)
        for i, (title, start) in enumerate(starts)
    ]


# A TTS call is assumed to take at least this long (fast providers) when judging early whether a job can
# finish within the caller's time budget; speech runs at roughly 15 characters per second of audio.
MIN_CALL_S = 0.5
CHARS_PER_AUDIO_S = 15.0
FASTEST_REALTIME_FACTOR = 20.0


def check_budget(requests: list[Request], job: Job) -> None:
    """Fail early when the text clearly cannot be synthesized within job.time_budget_s.

    Uses an optimistic speed (20× real time, 0.5 s minimum per call) so it only fires when success is
    impossible, and says what to change.
    """
    if not job.time_budget_s:
        return
    per_call = [MIN_CALL_S + len(r.text) / CHARS_PER_AUDIO_S / FASTEST_REALTIME_FACTOR for r in requests]
    optimistic = sum(per_call) / max(1, job.concurrency)
    if optimistic > job.time_budget_s:
        raise InvalidInput(
            "text",
            f"is too long to synthesize within the {job.time_budget_s:.0f} s time limit at concurrency "
            f"{job.concurrency}: {len(requests)} TTS requests need at least ~{optimistic:.0f} s. "
            "Raise `concurrency`, raise `max_chars_per_request`, or split the text across several runs.",
        )
