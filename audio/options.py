"""Parse and validate user-facing options, shared by the Dify tool and the CLI.

Both front ends take strings/numbers from users; validating them here, with the parameter's public name in
every message, means a user of either gets the same clear answer before any TTS call is made.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from . import lexicon as _lexicon
from . import production, tempo
from .errors import InvalidInput
from .model import LOUDNESS_PRESETS, MODEL_PARAMS, LoudnessTarget, SpeakerVoice

OUTPUT_FORMATS = ("mp3", "m4a", "ogg", "flac", "wav")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
BITRATES_KBPS = (24, 32, 48, 64, 96, 128, 160, 192, 256, 320)
CHANNELS = {"mono": 1, "stereo": 2, "1": 1, "2": 2}
SUBTITLE_FORMATS = ("none", "srt", "vtt")

# Bounds chosen so a typo cannot make a job run for hours; the CLI and the tool share them.
LIMITS: dict[str, tuple[float, float]] = {
    "pause_ms": (0, 10_000),
    "paragraph_pause_ms": (0, 10_000),
    "max_chars_per_request": (50, 4_000),
    "concurrency": (1, 16),
    "max_output_mb": (1, 200),
    "music_level": production.MUSIC_LEVEL_RANGE_LU,  # LU relative to the speech, while someone speaks
    "intro_overlap_ms": production.INTRO_OVERLAP_RANGE_MS,
    "speed": (tempo.MIN_SPEED, tempo.MAX_SPEED),
}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def choice(param: str, value: Any, allowed: tuple[str, ...], default: str) -> str:
    """A value from a fixed list (case-insensitive); blank means the default."""
    if _blank(value):
        return default
    text = str(value).strip().lower()
    if text not in allowed:
        raise InvalidInput(param, f"{value!r} is not one of: {', '.join(allowed)}")
    return text


def number(param: str, value: Any, default: float, *, integer: bool = True) -> float:
    """A number inside LIMITS[param]; blank means the default."""
    if _blank(value):
        return default
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(param, f"{value!r} is not a number") from None
    if not math.isfinite(num):
        raise InvalidInput(param, f"{value!r} is not a finite number")
    lo, hi = LIMITS[param]
    if not lo <= num <= hi:
        raise InvalidInput(param, f"{value!r} is out of range; allowed {lo:g} to {hi:g}")
    if integer:
        if num != int(num):
            raise InvalidInput(param, f"{value!r} must be a whole number")
        return int(num)
    return num


def output_format(value: Any) -> str:
    return choice("output_format", value, OUTPUT_FORMATS, "mp3")


def bitrate(value: Any) -> int | None:
    """kbit/s, or None for `auto` (speech default, fitted to the size limit)."""
    if _blank(value) or str(value).strip().lower() == "auto":
        return None
    text = str(value).strip().lower().removesuffix("k").removesuffix("kbps").strip()
    try:
        kbps = int(text)
    except ValueError:
        raise InvalidInput("bitrate", f"{value!r} is not 'auto' or one of {list(BITRATES_KBPS)}") from None
    if kbps not in BITRATES_KBPS:
        raise InvalidInput("bitrate", f"{value!r} is not 'auto' or one of {list(BITRATES_KBPS)}")
    return kbps


def sample_rate(value: Any) -> int | None:
    """Hz, or None for `auto` (highest input rate up to 48 kHz)."""
    if _blank(value) or str(value).strip().lower() == "auto":
        return None
    try:
        rate = int(str(value).strip())
    except ValueError:
        raise InvalidInput("sample_rate", f"{value!r} is not 'auto' or one of {list(SAMPLE_RATES)}") from None
    if rate not in SAMPLE_RATES:
        raise InvalidInput("sample_rate", f"{value!r} is not 'auto' or one of {list(SAMPLE_RATES)}")
    return rate


def channels(value: Any) -> int:
    if _blank(value):
        return 1
    key = str(value).strip().lower()
    if key not in CHANNELS:
        raise InvalidInput("channels", f"{value!r} is not one of: mono, stereo")
    return CHANNELS[key]


def loudness(value: Any) -> LoudnessTarget:
    """A preset name, or a number in LUFS between -40 and -5 (true peak ceiling -1 dBTP)."""
    if _blank(value):
        return LOUDNESS_PRESETS["podcast"]
    key = str(value).strip().lower()
    if key in LOUDNESS_PRESETS:
        return LOUDNESS_PRESETS[key]
    try:
        lufs = float(key.removesuffix("lufs").strip())
    except ValueError:
        raise InvalidInput(
            "loudness", f"{value!r} is not a number in LUFS or one of: {', '.join(LOUDNESS_PRESETS)}"
        ) from None
    if not -40.0 <= lufs <= -5.0:
        raise InvalidInput("loudness", f"{value!r} is out of range; allowed -40 to -5 LUFS")
    return LoudnessTarget(f"{lufs:g} LUFS", lufs)


def subtitles(value: Any) -> str:
    return choice("subtitles", value, SUBTITLE_FORMATS, "none")


def boolean(param: str, value: Any, default: bool | None) -> bool | None:
    if _blank(value):
        return default
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "1", "yes", "on"):
        return True
    if key in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(param, f"{value!r} is not true or false")


# Speech rate of one speaker (`Name=voice@1.2`): the range every TTS provider and ffmpeg's atempo handle well.
SPEAKER_SPEED = (tempo.MIN_SPEED, tempo.MAX_SPEED)  # the same rates as `speed`
_MODEL_PREFIX_RE = re.compile(r"\s*(\d+)\s*:")
_JSON_FIELDS = ("model", "voice", "speed")


def speakers(value: Any) -> dict[str, SpeakerVoice]:
    """The speaker mapping → {lower-cased name: SpeakerVoice}; `*` is the fallback for unmapped speakers.

    Text form: `Name=[N:]voice[@speed]` separated by `;`, `,` or newlines, e.g. `Host=alloy; Guest=2:nova@1.2;
    *=echo`. `N:` (1, 2 or 3) picks the model selector `model`, `model_2` or `model_3`; `Guest=2:` means
    model_2 with its selector's voice; `@speed` is the speech rate (0.5-2.0). `Name:voice` (no `=`) is read
    as `Name=voice`. JSON form: an object whose values are such specs (`{"Guest": "2:nova@1.2"}`) or objects
    (`{"Guest": {"model": 2, "voice": "nova", "speed": 1.2}}`). Names are matched case-insensitively.
    Every problem raises InvalidInput("speakers") naming the speaker.
    """
    if _blank(value):
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        text = str(value).strip()
        if text.startswith(("{", "[")):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput("speakers", f"invalid JSON object: {exc.msg} (at character {exc.pos})") from None
            if not isinstance(obj, dict):
                raise InvalidInput("speakers", "the JSON value must be an object of name: voice")
            pairs = list(obj.items())
        else:
            pairs = []
            for part in text.replace("\n", ";").replace(",", ";").split(";"):
                if not part.strip():
                    continue
                name, sep, spec = part.partition("=")
                if not sep:
                    name, sep, spec = part.partition(":")
                if not sep:
                    raise InvalidInput(
                        "speakers", f"{part.strip()!r} is not of the form Name=voice (or Name=N:voice@speed)"
                    )
                pairs.append((name, spec))
    result: dict[str, SpeakerVoice] = {}
    for name, spec in pairs:
        key = " ".join(str(name).split()).lower()
        if not key:
            raise InvalidInput("speakers", f"a speaker name is empty (in {name!r}: {spec!r})")
        if len(key) > 64:
            raise InvalidInput("speakers", f"the speaker name {str(name)[:40]!r}… is longer than 64 characters")
        result[key] = speaker_voice(str(name).strip(), spec)
    return result


def speaker_voice(name: str, spec: Any) -> SpeakerVoice:
    """One speaker's SpeakerVoice from a text spec (`[N:]voice[@speed]`) or a JSON object; see speakers()."""
    if isinstance(spec, SpeakerVoice):
        return spec
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in _JSON_FIELDS]
        if unknown:
            raise InvalidInput(
                "speakers", f"{name}: unknown field {unknown[0]!r}; an entry may have {', '.join(_JSON_FIELDS)}"
            )
        model = _model_index(name, spec.get("model", 1))
        voice = spec.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise InvalidInput("speakers", f"{name}: the voice must be a string, not {voice!r}")
        raw_speed = spec.get("speed")
        speed = None if raw_speed is None or raw_speed == "" else _speed(name, raw_speed)
        return SpeakerVoice(_voice(name, voice), model, speed)
    if not isinstance(spec, str):
        raise InvalidInput(
            "speakers", f"{name}: {spec!r} is not a voice; give \"[N:]voice[@speed]\" or {{\"model\": N, "
            "\"voice\": ..., \"speed\": ...}"
        )
    text = spec.strip()
    model, prefixed = 1, _MODEL_PREFIX_RE.match(text)
    if prefixed:
        model, text = _model_index(name, prefixed[1]), text[prefixed.end() :]
    speed = None
    if "@" in text:
        text, _, raw = text.rpartition("@")
        speed = _speed(name, raw)
    if not text.strip() and not prefixed and speed is None:
        raise InvalidInput(
            "speakers", f"{name}: no voice; write {name}=voice, or {name}=2: for model_2 with its selector's voice"
        )
    return SpeakerVoice(_voice(name, text), model, speed)


def speaker_spec(entry: SpeakerVoice) -> str:
    """The text form of one entry, as speakers() reads it back: "alloy", "2:nova@1.2", "2:"."""
    text = f"{entry.model}:" if entry.model != 1 else ""
    text += entry.voice or ""
    if entry.speed is not None:
        text += f"@{entry.speed:g}"
    return text or "1:"


def _voice(name: str, voice: str | None) -> str | None:
    text = (voice or "").strip()
    if len(text) > 128:
        raise InvalidInput("speakers", f"{name}: the voice {text[:40]!r}… is longer than 128 characters")
    if any(not ch.isprintable() for ch in text):
        raise InvalidInput("speakers", f"{name}: the voice {text!r} has control characters")
    return text or None


def _model_index(name: str, value: Any) -> int:
    """1, 2 or 3 from 2, "2", "model_2" (also "model" for 1)."""
    text = str(value).strip().lower()
    by_param = {param: index for index, param in MODEL_PARAMS.items()}
    if not isinstance(value, bool) and isinstance(value, int | str) and (text in by_param or text.isdigit()):
        index = by_param.get(text) or int(text)
        if index in MODEL_PARAMS:
            return index
    choices = ", ".join(f"{i} ({p})" for i, p in MODEL_PARAMS.items())
    raise InvalidInput("speakers", f"{name}: model {value!r} does not exist; use {choices}")


def _speed(name: str, value: Any) -> float:
    lo, hi = SPEAKER_SPEED
    try:
        speed = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidInput("speakers", f"{name}: the speed {value!r} after '@' is not a number") from None
    if isinstance(value, bool) or not math.isfinite(speed) or not lo <= speed <= hi:
        raise InvalidInput("speakers", f"{name}: the speed {value!r} is out of range; allowed {lo:g} to {hi:g}")
    return speed


def local_file(param: str, value: Any) -> Path | None:
    """A path to an existing, non-empty file (intro/outro/music in the CLI); blank means none."""
    if _blank(value):
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise InvalidInput(param, f"{str(value)!r} is not a file")
    if path.stat().st_size == 0:
        raise InvalidInput(param, f"{str(value)!r} is empty")
    return path


def music_level(value: Any) -> float:
    """The music bed's level under speech, LU relative to the speech (blank = the producer's default, −20)."""
    return float(number("music_level", value, production.MUSIC_LEVEL_DEFAULT_LU, integer=False))


def intro_overlap_ms(value: Any) -> int:
    """How long the intro's tail runs under what follows, in ms (blank = 500)."""
    return int(number("intro_overlap_ms", value, production.INTRO_OVERLAP_DEFAULT_MS))


def speed(value: Any) -> float:
    """Speech rate, 0.5–2.0 (1.0 = as the model speaks; blank = 1.0)."""
    return float(number("speed", value, 1.0, integer=False))


def lexicon(value: Any) -> _lexicon.Lexicon | None:
    """Pronunciation respellings (`Dify=Dee-fy; SQL=sequel` or a JSON object); see audio.lexicon."""
    return _lexicon.parse(value)
