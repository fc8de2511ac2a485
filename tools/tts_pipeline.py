"""The Dify tool: parameters in, one finished audio file (plus stats) out.

A short adapter around `audio.pipeline.narrate`. It validates every parameter with `audio.options` before any
TTS call (so a user learns which parameter to fix), synthesizes through Dify's reverse TTS invocation of the
model chosen in the model selector, and turns the `Result` — or a `PipelineError` — into the messages a Dify
user sees. Nothing here touches audio bytes.
"""

# No `from __future__ import annotations` here: the SDK's class loader executes this file without registering
# it in sys.modules, and @dataclass resolves string annotations through sys.modules (AttributeError at startup).
import hashlib
import json
import logging
import re
import tempfile
import unicodedata
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dify_plugin import Tool
from dify_plugin.config.logger_format import plugin_logger_handler
from dify_plugin.entities.model.tts import TTSModelConfig
from dify_plugin.entities.tool import ToolInvokeMessage

from audio import fetch, options, subtitles
from audio.cache import KeyValueCache
from audio.errors import InvalidAudio, InvalidInput, PipelineError, SynthesisFailed, VoiceRefused
from audio.model import MODEL_PARAMS, EncodeOptions, Result, SpeakerVoice, Synthesize, Tags
from audio.pipeline import Job, job_dir_prefix, narrate

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
# The largest tool file every Dify version this plugin supports (manifest: minimum_dify_version 1.0.0) accepts:
# Dify ≤ 1.2 (daemon ≤ 0.0.7) refuses a blob over 15 MiB; 1.3 until PLUGIN_MAX_FILE_SIZE: 30 MiB; newer:
# PLUGIN_MAX_FILE_SIZE (default 50 MiB). Users on a newer Dify raise `max_output_mb`.
DEFAULT_MAX_OUTPUT_MB = 15
# Dify stops a tool call after PLUGIN_MAX_EXECUTION_TIMEOUT (600 s by default); keep time for mastering.
TIME_BUDGET_S = 540.0
TIMELINE_TEXT_CHARS = 120

SUBTITLE_MIME = subtitles.MIME_TYPES  # chosen for the extension Dify stores the file under (see there)
_KNOWN_EXTENSIONS = (".mp3", ".m4a", ".mp4", ".aac", ".ogg", ".oga", ".opus", ".flac", ".wav", ".srt", ".vtt")
_UNSAFE_FILENAME = re.compile(r'[/\\:*?"<>|]')


@dataclass(frozen=True)
class SelectedModel:
    """One filled model selector: `model`, `model_2` or `model_3`."""

    provider: str
    model: str
    voice: str | None  # the voice chosen in the selector's own panel

    @property
    def name(self) -> str:
        """"provider/model": how messages, stats and cache keys identify it."""
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Invocation:
    """What one tool call asks for, validated."""

    job: Job
    provider: str
    model: str
    voice_source: str  # "voice parameter" | "model selector" | "placeholder"
    filename: str  # without extension
    use_cache: bool
    models: dict[int, SelectedModel] = field(default_factory=dict)  # model index → selection; 1 is `model`
    files: dict[str, fetch.RemoteFile] = field(default_factory=dict)  # intro/outro/music, downloaded in _invoke

    def downloaded(self, workdir: Path) -> Job:
        """The job with every file parameter downloaded into `workdir` (raises InvalidInput naming it)."""
        paths = {name: fetch.download(name, f, workdir / f"{name}.bin") for name, f in self.files.items()}
        return replace(self.job, **paths)


class TtsPipelineTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        call = parse_parameters(tool_parameters)  # raises InvalidInput before any TTS call
        job = call.job
        logger.info(
            "narrating %d chars with %s (voice from %s): %r",
            len(job.text), ", ".join(m.name for m in call.models.values()), call.voice_source, job.text[:40],
        )
        # The storage quota is per workspace; the app id stands for it (audio.cache.KeyValueCache, "scope").
        scope = str(getattr(self.session, "app_id", None) or "")
        cache = KeyValueCache(self.session.storage, scope=scope) if call.use_cache else None
        engines = {index: self._synthesizer(m.provider, m.model) for index, m in call.models.items()}
        try:
            with tempfile.TemporaryDirectory(prefix=job_dir_prefix("files")) as files_dir:
                # files first: a bad intro/outro/music fails here, before any TTS call (narrate checks them too)
                job = call.downloaded(Path(files_dir)) if call.files else job
                result = narrate(job, engines, cache=cache)
            if cache is not None:
                result.stats.warnings.extend(cache.notes)
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
        stats = stats_json(result, call.models)
        yield self.create_json_message(stats)
        for name, value in variables(stats):  # the output_schema's variables, for workflows
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
    models = {1: SelectedModel(provider, model, selector_voice)}
    for index in (2, 3):
        param = MODEL_PARAMS[index]
        if not empty_selector(params.get(param)):
            models[index] = SelectedModel(*model_selector(params.get(param), param))
    speakers = options.speakers(params.get("speakers"))
    check_speaker_models(speakers, models)
    encode = EncodeOptions(
        fmt=options.output_format(params.get("output_format")),
        bitrate_kbps=options.bitrate(params.get("bitrate")),
        sample_rate=options.sample_rate(params.get("sample_rate")),
        channels=options.channels(params.get("channels")),
        max_bytes=int(
            options.number("max_output_mb", params.get("max_output_mb"), DEFAULT_MAX_OUTPUT_MB, integer=False) * 2**20
        ),
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
        models={index: m.name for index, m in models.items()},
        model_voices={index: m.voice for index, m in models.items() if index != 1},
        time_budget_s=TIME_BUDGET_S,
        music_level=options.music_level(params.get("music_level")),
        intro_overlap_ms=options.intro_overlap_ms(params.get("intro_overlap_ms")),
        speed=options.speed(params.get("speed")),
        lexicon=options.lexicon(params.get("lexicon")),
    )
    files = {}
    for name in ("intro", "outro", "music"):
        remote = remote_file(name, params.get(name))
        if remote is not None:
            fetch.check_declared(name, remote)  # type, size and URL form, before anything is downloaded
            files[name] = remote
    return Invocation(
        job=job,
        provider=provider,
        model=model,
        voice_source=voice_source,
        filename=sanitize_filename(params.get("filename")),
        use_cache=bool(options.boolean("cache", params.get("cache"), True)),
        models=models,
        files=files,
    )


def remote_file(param: str, value: Any) -> fetch.RemoteFile | None:
    """The SDK's File (or its dict form, or a one-element list of either) as a plain RemoteFile; None if unset."""
    if isinstance(value, list | tuple):
        if len(value) > 1:
            raise InvalidInput(param, f"give one file, not {len(value)}")
        value = value[0] if value else None
    if not value or (isinstance(value, str) and not value.strip()):  # None, "", {} or []: not set
        return None
    get = value.get if isinstance(value, Mapping) else lambda key: getattr(value, key, None)
    url = get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(param, "is not a file (no URL); pass a file variable from the workflow")
    size = get("size")
    return fetch.RemoteFile(
        url=url.strip(),
        filename=get("filename"),
        mime_type=get("mime_type"),
        size=int(size) if isinstance(size, int | float) and size >= 0 else None,
    )


def empty_selector(value: Any) -> bool:
    """An optional model selector left empty (Dify sends nothing, null, "" or a selection without a model)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    if not isinstance(value, Mapping):
        return False
    return not any(str(value.get(key) or "").strip() for key in ("provider", "model"))


def check_speaker_models(speakers: Mapping[str, SpeakerVoice], models: Mapping[int, SelectedModel]) -> None:
    """A speaker mapped to an empty selector (`Guest=3:` with no model_3) is an error naming both."""
    for name, entry in speakers.items():
        if entry.model not in models:
            param = MODEL_PARAMS[entry.model]
            who = "the fallback '*'" if name == "*" else f"speaker {name!r}"
            raise InvalidInput(
                "speakers",
                f"{who} is mapped to model {entry.model}, but no model is selected in {param}; choose a TTS model "
                f"in {param}, or map {'*' if name == '*' else name} to "
                + " or ".join(str(i) for i in sorted(models))
                + f" ({', '.join(MODEL_PARAMS[i] for i in sorted(models))})",
            )


def model_selector(value: Any, param: str = "model") -> tuple[str, str, str | None]:
    """(provider, model, voice or None) from the model-selector value Dify passes as a dict; errors name
    `param` (model, model_2 or model_3)."""
    hint = "choose a text-to-speech model in the model selector"
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInput(param, f"is not a model-selector value; {hint}") from None
    if not isinstance(value, Mapping):
        raise InvalidInput(param, f"no model selected; {hint}")
    provider = str(value.get("provider") or "").strip()
    model = str(value.get("model") or "").strip()
    missing = [name for name, got in (("provider", provider), ("model", model)) if not got]
    if missing:
        raise InvalidInput(param, f"the selection has no {' and no '.join(missing)}; {hint}")
    model_type = str(value.get("model_type") or "tts").strip().lower()
    if model_type not in ("tts", "text-to-speech"):
        raise InvalidInput(param, f"{model!r} is a {model_type} model, not a TTS model; {hint}")
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


def stats_json(result: Result, models: Mapping[int, SelectedModel] | None = None) -> dict[str, Any]:
    """The fields declared in tools/tts_pipeline.yaml's output_schema. `models` names each timeline entry's
    provider and model (None when not given)."""
    models = models or {}
    return {
        "duration_s": round(result.duration_s, 3),
        "format": result.fmt,
        "sample_rate": result.sample_rate,
        "channels": result.channels,
        "bitrate_kbps": result.bitrate_kbps,
        "size_bytes": result.size_bytes,
        "sha256": file_sha256(result),
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
                "provider": models[e.model].provider if e.model in models else None,
                "model": models[e.model].model if e.model in models else None,
            }
            for e in result.timeline
        ],
        "chapters": [{"title": c.title, "start": round(c.start, 3), "end": round(c.end, 3)} for c in result.chapters],
        "warnings": list(result.stats.warnings),
        "intro_s": result.stats.intro_s,
        "outro_s": result.stats.outro_s,
        "music_level_lu": result.stats.music_level_lu,
        "speech_loudness_lufs": result.stats.speech_loudness_lufs,
        "speed": result.stats.speed,
        "respellings": result.stats.respellings,
    }


def variables(stats: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The stats as (name, value) variable messages, leaving out those without a value.

    Dify before langgenius/dify PR #30082 (2025-12-24) refuses a variable message whose value is None ("Only
    basic types and lists are allowed") and the tool call fails after the file was made; a variable that is
    not set reads as empty in a workflow. The JSON message keeps every field (null where there is no value).
    Only the top-level value is checked by Dify, so None inside a list (a timeline speaker) is fine.
    """
    return [(name, value) for name, value in stats.items() if value is not None]


def file_sha256(result: Result) -> str:
    """Hex SHA-256 of the audio file as sent, so a workflow can detect a file that arrived cut short (daemons
    0.0.8–0.1.2, Dify 1.3.0–1.5.x, drop blob chunks when their queue is full)."""
    if result.path is not None and not result.data:
        digest = hashlib.sha256()
        with open(result.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return hashlib.sha256(result.data).hexdigest()


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
    if s.music_level_lu is not None:
        text += f"; music bed {s.music_level_lu:.0f} LU under the voice".replace("-", "−")
    if s.retries:
        text += f"; {s.retries} request{'s' if s.retries != 1 else ''} retried"
    if s.warnings:
        more = f" (+{len(s.warnings) - 1} more in the JSON output)" if len(s.warnings) > 1 else ""
        text += f". Note: {s.warnings[0]}{more}"
    return text


def user_message(err: PipelineError, call: Invocation) -> str:
    """The error text a Dify user reads, with what to do about voices when the provider refused one."""
    message = str(err)
    voice_error = isinstance(err, VoiceRefused) or (
        isinstance(err, SynthesisFailed) and "voice" in err.provider_message.lower()
    )
    other = None  # a request of model_2/model_3: its voice came from there
    if isinstance(err, SynthesisFailed) and err.model_index != 1:
        other = MODEL_PARAMS[err.model_index]
    if isinstance(err, VoiceRefused) and err.voice is not None:  # the request's own voice, e.g. from `speakers`
        message += (
            f"\nThe TTS provider refused the voice {err.voice!r}. Use a voice this model offers (see the model"
            " selector's settings) in `voice`, `speakers` or the model selector."
        )
    elif voice_error:
        if other:
            message += (
                f"\nThe voice came from `speakers` or from {other}'s settings. Pick a voice this model offers there,"
                f" or set it in `speakers` (e.g. Guest={other[-1]}:voice)."
            )
        elif call.voice_source == "placeholder":
            message += (
                f"\nNo voice was chosen, so the placeholder {PLACEHOLDER_VOICE!r} was sent and the TTS provider"
                " refused it. Pick a voice in the model selector's settings, or set the `voice` parameter."
            )
        else:
            message += (
                f"\nThe voice came from the {call.voice_source}. Pick a voice this model offers in the model"
                " selector's settings, or set the `voice` parameter (or fix `speakers`)."
            )
    elif isinstance(err, InvalidAudio) and err.sniffed == "empty" and call.voice_source == "placeholder":
        # MiniMax answers an unknown voice with HTTP 200 and a JSON error its model plugin drops: zero chunks
        message += (
            f"\nNo voice was chosen, so the placeholder {PLACEHOLDER_VOICE!r} was sent; some providers (e.g."
            " MiniMax) answer a voice they do not know with no audio. Pick a voice in the model selector's"
            " settings, or set the `voice` parameter."
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
