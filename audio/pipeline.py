"""The orchestrator: text + a `synthesize` callable in, one mastered `Result` out.

Stages (each its own module): script.plan → synth.run → segments.split_call → decode → assemble →
master → tags/subtitles. This module only wires them and owns the job's temporary directory, which is
removed on success, failure and cancellation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .model import LOUDNESS_PRESETS, EncodeOptions, LoudnessTarget, Result, Synthesize, Tags

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
    max_text_chars: int = 200_000
    max_seconds_per_call: float = 1800.0  # decoded duration cap of one TTS call
    max_total_seconds: float = 6 * 3600.0
    cache_namespace: str = ""  # identifies engine/provider+model for cache keys


def narrate(
    job: Job,
    synthesize: Synthesize,
    *,
    cache: object | None = None,
    progress: Progress | None = None,
    workdir: str | Path | None = None,
) -> Result:
    """Run the whole pipeline. Raises audio.errors.PipelineError subclasses on user-facing failures."""
    raise NotImplementedError("pipeline.narrate is being built")
