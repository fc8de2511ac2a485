"""The Dify tool: parameters in, one finished audio file (plus stats) out.

A short adapter around `audio.pipeline.narrate`. It validates every parameter with `audio.options` before any
TTS call (so a user learns which parameter to fix), synthesizes through Dify's reverse TTS invocation of the
model chosen in the model selector, and turns the `Result` — or a `PipelineError` — into the messages a Dify
user sees. Nothing here touches audio bytes.
"""

# No `from __future__ import annotations` here: the SDK's class loader executes this file without registering
# it in sys.modules, and @dataclass resolves string annotations through sys.modules (AttributeError at startup).
import json
import logging
import re
import unicodedata
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dify_plugin import Tool
from dify_plugin.config.logger_format import plugin_logger_handler
from dify_plugin.entities.model.tts import TTSModelConfig
from dify_plugin.entities.tool import ToolInvokeMessage

from audio import options
from audio.cache import KeyValueCache
from audio.errors import InvalidInput, PipelineError, SynthesisFailed
from audio.model import EncodeOptions, Result, Synthesize, Tags
from audio.pipeline import Job, narrate

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)
for _name in (__name__, "audio"):  # plugin log events reach the daemon's log; stdout is the protocol channel
    _log = logging.getLogger(_name)
    if plugin_logger_handler not in _log.handlers:
        _log.addHandler(plugin_logger_handler)

# TTSModelConfig requires a voice and the daemon rejects an empty one. OpenAI, Azure OpenAI, Tongyi and
# SiliconFlow replace a voice they do not know with their default, so this placeholder means "the default".
PLACEHOLDER_VOICE = "default"
DEFAULT_FILENAME = "narration"
MAX_FILENAME_CHARS = 100
# Dify stops a tool call after PLUGIN_MAX_EXECUTION_TIMEOUT (600 s by default); keep time for mastering.
TIME_BUDGET_S = 540.0
TIMELINE_TEXT_CHARS = 120

SUBTITLE_MIME = {"vtt": "text/vtt", "srt": "application/x-subrip"}
_KNOWN_EXTENSIONS = (".mp3", ".m4a", ".mp4", ".aac", ".ogg", ".oga", ".opus", ".flac", ".wav", ".srt", ".vtt")
_UNSAFE_FILENAME = re.compile(r'[/\\:*?"<>|]')


@dataclass(frozen=True)
class Invocation:
    """What one tool call asks for, validated."""

    job: Job
    provider: str
    model: str
    voice_source: str  # "voice parameter" | "model selector" | "placeholder"
    filename: str  # without extension
    use_cache: bool


class TtsPipelineTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        call = parse_parameters(tool_parameters)  # raises InvalidInput before any TTS call
        job = call.job
        logger.info(
            "narrating %d chars with %s/%s (voice from %s): %r",
            len(job.text), call.provider, call.model, call.voice_source, job.text[:40],
        )
        cache = KeyValueCache(self.session.storage) if call.use_cache else None
        try:
            result = narrate(job, self._synthesizer(call.provider, call.model), cache=cache)
        except PipelineError as err:
            logger.warning("failed: %s", err)
            err.args = (user_message(err, call),)
            raise
        except Exception as err:  # a bug, not the user's input or the provider: say so plainly
            logger.exception("internal error")
            raise RuntimeError(
                f"tts-pipeline internal error ({type(err).__name__}: {err}). Please report it with the plugin's log."
            ) from err
        # Only now, with every part synthesized and mastered, does anything reach the user.
        yield self.create_blob_message(
            result.data, meta={"mime_type": result.mime_type, "filename": call.filename + result.extension}
        )
        if result.subtitles is not None and result.subtitles_format in SUBTITLE_MIME:
            yield self.create_blob_message(
                result.subtitles.encode("utf-8"),
                meta={
                    "mime_type": SUBTITLE_MIME[result.subtitles_format],
                    "filename": f"{call.filename}.{result.subtitles_format}",
                },
            )
        stats = stats_json(result)
        yield self.create_json_message(stats)
        for name, value in stats.items():  # the output_schema's variables, for workflows
            yield self.create_variable_message(name, value)
        yield self.create_text_message(summary_text(result, call.filename + result.extension))
        logger.info("done: %.1f s of audio, %d bytes", result.duration_s, result.size_bytes)

    def _synthesizer(self, provider: str, model: str) -> Synthesize:
        tts = self.session.model.tts

        def synthesize(text: str, voice: str | None) -> Iterable[bytes]:
            config = TTSModelConfig(provider=provider, model=model, voice=voice or PLACEHOLDER_VOICE)
            return tts.invoke(model_config=config, content_text=text)

        return synthesize


# ---------------------------------------------------------------------------------------------------------
# Parameters → Invocation (pure functions, unit-tested without Dify)


def parse_parameters(params: Mapping[str, Any]) -> Invocation:
    """Validate every parameter; the first problem raises InvalidInput naming the parameter."""
    text = params.get("text")
    text = "" if text is None else str(text)
    if not text.strip():
        raise InvalidInput("text", "is empty; give the text to read aloud")
    provider, model, selector_voice = model_selector(params.get("model"))
    voice, voice_source = resolve_voice(params.get("voice"), selector_voice)
    speakers = options.speakers(params.get("speakers"))
    encode = EncodeOptions(
        fmt=options.output_format(params.get("output_format")),
        bitrate_kbps=options.bitrate(params.get("bitrate")),
        sample_rate=options.sample_rate(params.get("sample_rate")),
        channels=options.channels(params.get("channels")),
        max_bytes=int(options.number("max_output_mb", params.get("max_output_mb"), 30, integer=False) * 2**20),
    )
    job = Job(
        text=text,
        voice=voice,
        speakers=speakers,
        encode=encode,
        loudness=options.loudness(params.get("loudness")),
        pause_ms=int(options.number("pause_ms", params.get("pause_ms"), 300)),
        paragraph_pause_ms=int(options.number("paragraph_pause_ms", params.get("paragraph_pause_ms"), 700)),
        max_chars_per_request=int(options.number("max_chars_per_request", params.get("max_chars_per_request"), 600)),
        concurrency=int(options.number("concurrency", params.get("concurrency"), 4)),
        tags=Tags(title=_tag(params.get("title")), artist=_tag(params.get("artist")), album=_tag(params.get("album"))),
        subtitles=options.subtitles(params.get("subtitles")),
        # true means "when the text has headings" (None for the pipeline); false means never
        chapters=None if options.boolean("chapters", params.get("chapters"), True) else False,
        cache_namespace=f"{provider}/{model}",
        time_budget_s=TIME_BUDGET_S,
        speed=options.speed(params.get("speed")),
        lexicon=options.lexicon(params.get("lexicon")),
    )
    return Invocation(
        job=job,
        provider=provider,
        model=model,
        voice_source=voice_source,
        filename=sanitize_filename(params.get("filename")),
        use_cache=bool(options.boolean("cache", params.get("cache"), True)),
    )


def model_selector(value: Any) -> tuple[str, str, str | None]:
    """(provider, model, voice or None) from the model-selector value Dify passes as a dict."""
    hint = "choose a text-to-speech model in the model selector"
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInput("model", f"is not a model-selector value; {hint}") from None
    if not isinstance(value, Mapping):
        raise InvalidInput("model", f"no model selected; {hint}")
    provider = str(value.get("provider") or "").strip()
    model = str(value.get("model") or "").strip()
    missing = [name for name, got in (("provider", provider), ("model", model)) if not got]
    if missing:
        raise InvalidInput("model", f"the selection has no {' and no '.join(missing)}; {hint}")
    model_type = str(value.get("model_type") or "tts").strip().lower()
    if model_type not in ("tts", "text-to-speech"):
        raise InvalidInput("model", f"{model!r} is a {model_type} model, not a TTS model; {hint}")
    voice = str(value.get("voice") or "").strip() or None
    return provider, model, voice


def resolve_voice(explicit: Any, selector_voice: str | None) -> tuple[str | None, str]:
    """The `voice` parameter, else the selector's voice, else None (sent as PLACEHOLDER_VOICE)."""
    voice = str(explicit).strip() if explicit is not None else ""
    if voice:
        return voice, "voice parameter"
    if selector_voice:
        return selector_voice, "model selector"
    return None, "placeholder"


def sanitize_filename(value: Any) -> str:
    """A safe base name: no path separators, control or format characters, leading dots; ≤ 100 chars."""
    name = unicodedata.normalize("NFC", "" if value is None else str(value))
    name = "".join(_filename_char(ch) for ch in name)
    name = " ".join(_UNSAFE_FILENAME.sub("_", name).split())
    if name.lower().endswith(_KNOWN_EXTENSIONS):
        name = name.rsplit(".", 1)[0]
    name = name.lstrip(" ._-")[:MAX_FILENAME_CHARS].rstrip(" .")
    return name or DEFAULT_FILENAME


def _filename_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category in ("Cc", "Zl", "Zp", "Zs"):  # control characters and line breaks become spaces
        return " "
    return "" if category.startswith("C") else ch  # format (e.g. bidi overrides), surrogates, unassigned


def _tag(value: Any) -> str | None:
    text = "" if value is None else " ".join(str(value).split())
    return text or None


# ---------------------------------------------------------------------------------------------------------
# Result / error → what the user reads


def stats_json(result: Result) -> dict[str, Any]:
    """The fields declared in tools/tts_pipeline.yaml's output_schema."""
    return {
        "duration_s": round(result.duration_s, 3),
        "format": result.fmt,
        "sample_rate": result.sample_rate,
        "channels": result.channels,
        "bitrate_kbps": result.bitrate_kbps,
        "size_bytes": result.size_bytes,
        "loudness_lufs": _round(result.loudness_lufs, 2),
        "true_peak_dbtp": _round(result.true_peak_dbtp, 2),
        "target": result.target.name,
        "requests": result.stats.requests,
        "retries": result.stats.retries,
        "cache_hits": result.stats.cache_hits,
        "cache_misses": result.stats.cache_misses,
        "timeline": [
            {
                "index": e.index,
                "start": round(e.start, 3),
                "end": round(e.end, 3),
                "speaker": e.speaker,
                "voice": e.voice,
                "text": _preview(e.text),
            }
            for e in result.timeline
        ],
        "chapters": [{"title": c.title, "start": round(c.start, 3), "end": round(c.end, 3)} for c in result.chapters],
        "warnings": list(result.stats.warnings),
        "speed": result.stats.speed,
        "respellings": result.stats.respellings,
    }


def summary_text(result: Result, filename: str) -> str:
    """E.g. "Narrated 2:31 of audio from 12 requests (3 reused from cache) → narration.mp3, −16.0 LUFS"."""
    s = result.stats
    text = f"Narrated {_clock(result.duration_s)} of audio from {s.requests} request{'s' if s.requests != 1 else ''}"
    if s.cache_hits:
        text += f" ({s.cache_hits} reused from cache)"
    text += f" → {filename}"
    if s.speed != 1.0:
        text += f" at {s.speed:g}× speed"
    if result.loudness_lufs is not None:
        level = f"{result.loudness_lufs:.1f} LUFS".replace("-", "−")
        text += f", {level}" if result.target.integrated is not None else f", {level} (not normalized)"
    if s.retries:
        text += f"; {s.retries} request{'s' if s.retries != 1 else ''} retried"
    if s.warnings:
        more = f" (+{len(s.warnings) - 1} more in the JSON output)" if len(s.warnings) > 1 else ""
        text += f". Note: {s.warnings[0]}{more}"
    return text


def user_message(err: PipelineError, call: Invocation) -> str:
    """The error text a Dify user reads, with what to do about voices when the provider refused one."""
    message = str(err)
    if isinstance(err, SynthesisFailed) and "voice" in err.provider_message.lower():
        if call.voice_source == "placeholder":
            message += (
                f"\nNo voice was chosen, so the placeholder {PLACEHOLDER_VOICE!r} was sent and the TTS provider"
                " refused it. Pick a voice in the model selector's settings, or set the `voice` parameter."
            )
        else:
            message += (
                f"\nThe voice came from the {call.voice_source}. Pick a voice this model offers in the model"
                " selector's settings, or set the `voice` parameter (or fix `speakers`)."
            )
    return message


def _preview(text: str) -> str:
    """Timeline text is capped: the JSON also reaches an agent's LLM context (subtitles carry the full text)."""
    text = " ".join(text.split())
    return text if len(text) <= TIMELINE_TEXT_CHARS else text[: TIMELINE_TEXT_CHARS - 1] + "…"


def _clock(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
