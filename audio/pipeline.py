"""The orchestrator: text + a `synthesize` callable in, one mastered `Result` out.

Stages (each its own module): script.plan → synth.run → segments.split_call → decode → assemble →
master → tags/subtitles. This module only wires them and owns the job's temporary directory, which is
removed on success, failure and cancellation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import assemble, decode, ffmpeg, master, media, production, script, subtitles, synth, tags
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
    SpeakerVoice,
    Stats,
    Synthesize,
    Synthesizers,
    Tags,
    TimelineEntry,
)

# progress(stage, done, total): stage is "synthesize", "decode", "master"
Progress = Callable[[str, int, int], None]
# A job's temporary directory: ttsp-<pid of the process that owns it>-<random>.
WORKDIR_PREFIX = "ttsp-"


def job_dir_prefix(kind: str = "") -> str:
    """Prefix of a temporary directory a job owns (`ttsp-<pid>-[kind-]`): remove_stale_workdirs can tell
    whether its process is still alive."""
    return f"{WORKDIR_PREFIX}{os.getpid()}-{kind + '-' if kind else ''}"


def remove_stale_workdirs(root: str | Path | None = None) -> list[Path]:
    """Remove the job directories (in `root`, default the temp dir) whose owning process is dead: a plugin
    process the daemon killed (execution timeout) had no chance to. Called once at start-up (main.py).

    Only `ttsp-<pid>-*` directories of a pid that no longer exists are removed: another plugin process may
    share /tmp, and a live owner (or one we may not signal) keeps its directory. One with this process's own
    pid is a previous process's (the pid was reused, e.g. in a restarted container): this runs before any job
    of ours, so it goes too. Returns what was removed.
    """
    removed: list[Path] = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.is_symlink():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except OSError:  # PermissionError: alive, someone else's
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@dataclass(frozen=True)
class Job:
    """Everything the pipeline needs besides the speech engine. Validated values (see audio.options)."""

    text: str
    voice: str | None = None  # default voice; None = the provider's default
    # lower-cased name → SpeakerVoice (model, voice, speed; see audio.options.speakers) or a plain voice name;
    # "*" = fallback
    speakers: Mapping[str, SpeakerVoice | str] = field(default_factory=dict)
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
    cache_namespace: str = ""  # identifies engine/provider+model for cache keys (model 1 when `models` lacks it)
    # Model index → name (e.g. "provider/model"): names it in messages and is its cache namespace.
    models: Mapping[int, str] = field(default_factory=dict)
    # Model index → its default voice (the selector's), for speakers mapped without one (`Guest=2:`); model 1's
    # default is `voice`.
    model_voices: Mapping[int, str | None] = field(default_factory=dict)
    stall_timeout_s: float = 120.0  # a TTS call that sends nothing for this long fails
    time_budget_s: float | None = None  # the caller's execution limit (Dify: 600 s); None = unlimited
    # the finished episode (audio.production): local files, checked before any TTS call
    intro: Path | None = None
    outro: Path | None = None
    music: Path | None = None
    music_level: float = production.MUSIC_LEVEL_DEFAULT_LU  # LU relative to the speech, while someone speaks
    intro_overlap_ms: int = production.INTRO_OVERLAP_DEFAULT_MS
    speed: float = 1.0  # speech rate, pitch kept (audio.tempo); a Request's own `speed` overrides it
    lexicon: Lexicon | None = None  # respellings for what the TTS model is sent (audio.lexicon)

    @property
    def produced(self) -> bool:
        """True when the speech gets an intro, an outro or a music bed."""
        return any(p is not None for p in (self.intro, self.outro, self.music))


def narrate(
    job: Job,
    synthesize: Synthesize | Synthesizers,
    *,
    cache: Cache | None = None,
    progress: Progress | None = None,
    workdir: str | Path | None = None,
    output: str | Path | None = None,
) -> Result:
    """Run the whole pipeline. Raises audio.errors.PipelineError subclasses on user-facing failures.

    `synthesize`: the speech engine, or {model index: engine} when speakers use several models (see
    audio.synth.run: each request goes to its model, `concurrency` applies per model).

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
        model_voices=job.model_voices or None,
        max_chars=job.max_chars_per_request,
        pause_ms=job.pause_ms,
        paragraph_pause_ms=job.paragraph_pause_ms,
        sentence_per_request=job.subtitles != "none",
    )
    plan = respell(plan, job.lexicon, stats)
    check_budget(plan.requests, job)
    ffmpeg.require()  # no usable ffmpeg: stop here, before any TTS call is made (and paid for)
    for param in ("intro", "outro", "music"):  # a bad file fails here, before any TTS call
        path = getattr(job, param)
        if path is not None:
            media.check(param, Path(path), None if param == "music" else production.MAX_JINGLE_S)
    with tempfile.TemporaryDirectory(prefix=job_dir_prefix(), dir=workdir) as tmp:
        return _run(job, plan, synthesize, cache, progress, Path(tmp), stats, Path(output) if output else None)


def _run(
    job: Job,
    plan: Plan,
    synthesize: Synthesize | Synthesizers,
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
        models=job.models,
        stats=stats,
        progress=report("synthesize"),
        spool=spool,
    )
    files = [f for call in calls for f in call.files]
    for f in files:
        if f.truncated:
            stats.truncated_files += 1
        if f.truncated or f.note:  # what was dropped or skipped (junk, stray bytes) is never silent
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

    target = job.loudness
    speech_shift = 0.0
    if job.produced:
        programme, target, speech_shift = _produce(job, programme, tmp, stats)

    encoded = master.master(
        programme.path,
        rate,
        channels,
        programme.integrated_lufs,
        programme.rms_db,
        target,
        job.encode,
        tmp,
    )
    stats.warnings.extend(encoded.notes)
    if job.produced and encoded.loudness_lufs is not None:
        stats.speech_loudness_lufs = round(encoded.loudness_lufs - speech_shift, 2)
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


# The mix may differ from the speech's loudness by at most this much when the target is aimed at the speech
# (a loud bed); beyond it the speech gives way so the file still meets the target within ±1 LU.
MAX_MIX_OFFSET_LU = 0.5


def _produce(
    job: Job, speech: assemble.Programme, tmp: Path, stats: Stats
) -> tuple[assemble.Programme, LoudnessTarget, float]:
    """Mix intro, speech, music bed and outro; return the mixed programme, the loudness target master must
    aim the MIX at so the SPEECH lands on the job's target, and the measured mix − speech loudness difference
    (which a uniform gain keeps: the speech's loudness in the file is the file's minus it).

    Master normalizes what it is given. Given the mix, it would pull the speech down by whatever the bed adds;
    so the target is moved by the measured (mix − speech) offset, capped at ±MAX_MIX_OFFSET_LU so the file
    as a whole still meets the target within ±1 LU.
    """
    made = production.produce(
        speech,
        tmp,
        tmp / "episode.f32",
        intro=job.intro,
        outro=job.outro,
        music=job.music,
        music_level_lu=job.music_level,
        intro_overlap_s=job.intro_overlap_ms / 1000,
    )
    speech.path.unlink(missing_ok=True)
    stats.warnings.extend(made.warnings)
    stats.intro_s = None if made.intro_s is None else round(made.intro_s, 3)
    stats.outro_s = None if made.outro_s is None else round(made.outro_s, 3)
    stats.music_level_lu = made.music_level_lu
    delta = 0.0 if made.mix_lufs is None else made.mix_lufs - made.speech_lufs
    offset = max(-MAX_MIX_OFFSET_LU, min(MAX_MIX_OFFSET_LU, delta))
    target = job.loudness
    if target.integrated is not None and offset:
        target = replace(target, integrated=target.integrated + offset)
    mixed = replace(
        speech,
        path=made.path,
        frames=made.frames,
        timeline=made.timeline,
        integrated_lufs=made.mix_lufs,
        rms_db=made.mix_rms_db,
    )
    return mixed, target, delta


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
    per_model: dict[int, float] = {}  # each model has its own `concurrency` calls at once
    for r in requests:
        call_s = MIN_CALL_S + len(r.text) / CHARS_PER_AUDIO_S / FASTEST_REALTIME_FACTOR
        per_model[r.model] = per_model.get(r.model, 0.0) + call_s
    optimistic = max(per_model.values(), default=0.0) / max(1, job.concurrency)
    if optimistic > job.time_budget_s:
        raise InvalidInput(
            "text",
            f"is too long to synthesize within the {job.time_budget_s:.0f} s time limit at concurrency "
            f"{job.concurrency}: {len(requests)} TTS requests need at least ~{optimistic:.0f} s. "
            "Raise `concurrency`, raise `max_chars_per_request`, or split the text across several runs.",
        )
