"""Parse and validate user-facing options, shared by the Dify tool and the CLI.

Both front ends take strings/numbers from users; validating them here, with the parameter's public name in
every message, means a user of either gets the same clear answer before any TTS call is made.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import lexicon as _lexicon
from . import tempo
from .errors import InvalidInput
from .model import LOUDNESS_PRESETS, LoudnessTarget

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


def speakers(value: Any) -> dict[str, str]:
    """`Host=alloy; Guest=nova` (also `,` or newlines as separators) or a JSON object → {name: voice}.

    Names are matched case-insensitively, so keys are stored lower-cased; `*` is the fallback voice.
    """
    if _blank(value):
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput("speakers", f"invalid JSON object: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise InvalidInput("speakers", "the JSON value must be an object of name: voice")
            pairs = list(obj.items())
        else:
            pairs = []
            for part in text.replace("\n", ";").replace(",", ";").split(";"):
                if not part.strip():
                    continue
                name, sep, voice = part.partition("=")
                if not sep:
                    name, sep, voice = part.partition(":")
                if not sep:
                    raise InvalidInput("speakers", f"{part.strip()!r} is not of the form Name=voice")
                pairs.append((name, voice))
    result: dict[str, str] = {}
    for name, voice in pairs:
        key, val = str(name).strip().lower(), str(voice).strip()
        if not key or not val:
            raise InvalidInput("speakers", f"empty name or voice in {name!r}={voice!r}")
        if len(key) > 64 or len(val) > 128:
            raise InvalidInput("speakers", f"name or voice too long in {name!r}")
        result[key] = val
    return result


def speed(value: Any) -> float:
    """Speech rate, 0.5–2.0 (1.0 = as the model speaks; blank = 1.0)."""
    return float(number("speed", value, 1.0, integer=False))


def lexicon(value: Any) -> _lexicon.Lexicon | None:
    """Pronunciation respellings (`Dify=Dee-fy; SQL=sequel` or a JSON object); see audio.lexicon."""
    return _lexicon.parse(value)
