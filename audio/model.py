"""Plain data passed between the stages. Frozen dataclasses, no behaviour beyond small derived values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# synthesize(text, voice) -> the provider's chunks, in order. voice None = the provider's default.
Synthesize = Callable[[str, str | None], Iterable[bytes]]
# One Synthesize per TTS model a job may use: model index (1 = `model`, 2 = `model_2`, 3 = `model_3`) → callable.
# Each model is its own provider (own rate limit, own concurrency bound); a plain Synthesize means {1: it}.
Synthesizers = Mapping[int, Synthesize]
# Model index → the tool parameter (model selector) that chooses it.
MODEL_PARAMS = {1: "model", 2: "model_2", 3: "model_3"}

# Container/codec names used across the project (also ffmpeg demuxer names, except "aac" → "aac" ADTS).
AUDIO_FORMATS = ("mp3", "wav", "ogg", "flac", "aac")


@dataclass(frozen=True)
class AudioFile:
    """One complete audio file cut out of a TTS call's chunk stream (see audio.segments)."""

    data: bytes
    fmt: str  # one of AUDIO_FORMATS
    sample_rate: int  # from the file's own header; 0 if unknown
    channels: int  # from the file's own header; 0 if unknown
    call_index: int = 0
    file_index: int = 0  # position within its call
    truncated: bool = False  # the last frame/page was cut short and dropped
    note: str = ""  # human-readable remark (e.g. what was dropped)
    path: Path | None = None  # where the bytes are when spooled to disk (audio.synth); `data` is then empty
    # The sample rate or channel count changes inside this one stream (mp3/ADTS frames without a new file
    # header): one file to the timeline; sample_rate/channels are then the highest the stream holds.
    reconfigures: bool = False

    @property
    def size(self) -> int:
        """Bytes of the file, wherever they are."""
        return self.path.stat().st_size if self.path is not None else len(self.data)


@dataclass(frozen=True)
class SpeakerVoice:
    """Where one speaker's lines go: which model (1, 2 or 3), which voice (None = that model's default voice)
    and at what speech rate (None = the job's). Parsed from `Name=[N:]voice[@speed]` by audio.options."""

    voice: str | None = None
    model: int = 1
    speed: float | None = None


@dataclass(frozen=True)
class Request:
    """One TTS call to make: text the model reads, voice, and where it sits in the programme."""

    index: int
    text: str
    voice: str | None = None
    speaker: str | None = None
    section: str | None = None  # title of the markdown section this request belongs to
    pause_before_ms: int = 0  # silence inserted before this request's audio (after seam trimming)
    model: int = 1  # which TTS model reads it: 1 = `model`, 2 = `model_2`, 3 = `model_3`
    speed: float | None = None  # speech rate of this request; None = the job's `speed`
    spoken: str | None = None  # what the TTS model is sent when a lexicon respelled `text` (None = `text`)

    @property
    def tts_text(self) -> str:
        """The text sent to the TTS model and hashed for the cache: `text` with the lexicon's respellings.

        `text` itself stays the original: subtitles, the timeline and stats show what the reader wrote."""
        return self.text if self.spoken is None else self.spoken


@dataclass(frozen=True)
class Plan:
    """What the script stage made of the text."""

    requests: list[Request]
    sections: list[str] = field(default_factory=list)  # section titles in order of appearance
    speakers: list[str] = field(default_factory=list)  # speaker names in order of first appearance
    skipped: dict[str, int] = field(default_factory=dict)  # e.g. {"code_blocks": 2, "tables": 1}


@dataclass(frozen=True)
class TimelineEntry:
    """Where one request's audio ended up in the programme (seconds, after trims and pauses)."""

    index: int
    start: float
    end: float
    text: str
    speaker: str | None = None
    voice: str | None = None
    section: str | None = None
    model: int = 1  # the request's model index (see Request.model)


@dataclass(frozen=True)
class Chapter:
    title: str
    start: float
    end: float


@dataclass(frozen=True)
class LoudnessTarget:
    """Mastering target. `integrated` in LUFS (None = no normalization); `true_peak` ceiling in dBTP.

    `rms_range` is set for ACX-style targets (audiobook): RMS must fall inside it, peaks ≤ true_peak.
    """

    name: str
    integrated: float | None
    true_peak: float = -1.0
    rms_range: tuple[float, float] | None = None


LOUDNESS_PRESETS: dict[str, LoudnessTarget] = {
    "podcast": LoudnessTarget("podcast", -16.0),
    "streaming": LoudnessTarget("streaming", -14.0),
    "mono_podcast": LoudnessTarget("mono_podcast", -19.0),
    "broadcast": LoudnessTarget("broadcast", -23.0),
    "audiobook": LoudnessTarget("audiobook", -20.0, true_peak=-3.5, rms_range=(-23.0, -18.0)),
    "off": LoudnessTarget("off", None),
}


@dataclass(frozen=True)
class EncodeOptions:
    fmt: str = "mp3"  # mp3 | m4a | ogg | flac | wav
    bitrate_kbps: int | None = None  # None = speech default for the format (fitted to max_bytes)
    sample_rate: int | None = None  # None = highest input rate ≤ 48 kHz
    channels: int = 1
    max_bytes: int = 30 * 1024 * 1024  # Dify's default tool-file limit
    min_bitrate_kbps: int = 24  # floor when fitting under max_bytes


@dataclass(frozen=True)
class Tags:
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    comment: str | None = None
    date: str | None = None
    language: str | None = None


@dataclass
class Stats:
    """Counters filled while the job runs (mutable on purpose: stages add to it)."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    truncated_files: int = 0
    warnings: list[str] = field(default_factory=list)
    # the finished episode (audio.production); None when not used
    intro_s: float | None = None
    outro_s: float | None = None
    music_level_lu: float | None = None  # the bed's loudness under speech relative to the speech, measured
    speech_loudness_lufs: float | None = None  # the speech's loudness in the file (the mix's minus the bed's share)
    speed: float = 1.0  # the job's speech rate (`speed`); per-speaker rates come from the speaker mapping
    respellings: int = 0  # words the lexicon replaced in what was sent to the TTS model


@dataclass(frozen=True)
class Result:
    """The finished file and everything measured about it."""

    data: bytes
    fmt: str
    mime_type: str
    extension: str  # with the dot, e.g. ".mp3"
    duration_s: float
    sample_rate: int
    channels: int
    bitrate_kbps: int | None
    size_bytes: int
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    target: LoudnessTarget
    timeline: list[TimelineEntry]
    chapters: list[Chapter]
    stats: Stats
    subtitles: str | None = None  # SRT or VTT text when asked
    subtitles_format: str | None = None
    path: Path | None = None  # the file, when narrate() was given `output`; `data` is then empty
