"""Subtitles (SRT, WebVTT) from the programme's timeline.

One entry of the timeline (one TTS request) becomes one cue, its text wrapped at word boundaries to lines of
at most `MAX_LINE_CHARS` characters, at most `MAX_LINES` lines per cue. A longer entry is split into
consecutive cues that share the entry's time span **in proportion to their number of characters** (we do not
know where inside one TTS call each word is spoken, so sub-cue timing within one entry is an estimate; the
entry's own start and end are exact).

Guarantees: cues are in time order and never overlap (an entry that starts before the previous one ended is
started at that end; one that ends after the next entry starts is ended there); entries with no text or no
duration left are dropped. Times are rounded to the millisecond.

Speakers: WebVTT marks each cue with a voice span `<v Name>` whenever the entry has a speaker. SRT has no
voice tag, so the cue starts with `[Name] ` — only when the timeline has at least two distinct speakers
(a single narrator's name on every line is noise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

from .errors import InvalidInput
from .model import TimelineEntry

MAX_LINE_CHARS = 42
MAX_LINES = 2
SUBTITLE_FORMATS = ("srt", "vtt")
# What to announce for each format. Dify stores a tool file under mimetypes.guess_extension(mime_type), and its
# API image may lack /etc/mime.types: `application/x-subrip` has no extension in Python's table nor in Debian's
# (stored as .bin, an opaque "custom" file), while `text/plain` is .txt everywhere (a readable document; Python's
# own table maps .srt to text/plain too). The `filename` in the message's meta keeps the .srt name, which
# newer Dify versions also take the extension from.
MIME_TYPES = {"srt": "text/plain", "vtt": "text/vtt"}

_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    speaker: str | None


def to_srt(entries: Iterable[TimelineEntry]) -> str:
    """SubRip text: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, blank line between cues."""
    entries = list(entries)
    label = len({cue.speaker for cue in _cues(entries, speaker_prefix=False) if cue.speaker}) >= 2
    blocks = []
    for n, cue in enumerate(_cues(entries, speaker_prefix=label), start=1):
        lines = [line.replace("-->", "->") for line in cue.lines]
        blocks.append(f"{n}\n{_timestamp(cue.start_ms, ',')} --> {_timestamp(cue.end_ms, ',')}\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def to_vtt(entries: Iterable[TimelineEntry]) -> str:
    """WebVTT text: `WEBVTT` header, `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues, `<v Name>` voice spans."""
    out = ["WEBVTT"]
    for cue in _cues(list(entries), speaker_prefix=False):
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        if cue.speaker:
            text = f"<v {_vtt_escape(cue.speaker)}>{text}</v>"
        out.append(f"{_timestamp(cue.start_ms, '.')} --> {_timestamp(cue.end_ms, '.')}\n{text}")
    return "\n\n".join(out) + "\n"


def render(entries: Iterable[TimelineEntry], fmt: str) -> str:
    """`to_srt` or `to_vtt` by name."""
    if fmt == "srt":
        return to_srt(entries)
    if fmt == "vtt":
        return to_vtt(entries)
    raise InvalidInput("subtitles", f"unknown subtitle format {fmt!r}; use one of {', '.join(SUBTITLE_FORMATS)}")


def filename_for(base: str, fmt: str) -> str:
    """A safe file name for the subtitles of `base` (e.g. "episode-1" or "episode-1.mp3" → "episode-1.srt")."""
    if fmt not in SUBTITLE_FORMATS:
        raise InvalidInput("subtitles", f"unknown subtitle format {fmt!r}; use one of {', '.join(SUBTITLE_FORMATS)}")
    name = PurePath(base.replace("\\", "/")).name if base else ""
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext.lower() in {"mp3", "m4a", "ogg", "oga", "opus", "flac", "wav", "aac", "srt", "vtt"}:
        name = stem
    name = re.sub(r"[^\w.\- ]+", "_", name).strip(" ._")[:100].strip(" ._")
    return f"{name or 'subtitles'}.{fmt}"


def wrap(text: str, width: int = MAX_LINE_CHARS) -> list[str]:
    """Greedy word wrap to lines of at most `width` characters; words longer than a line are cut."""
    lines: list[str] = []
    current = ""
    for word in _clean(text).split(" "):
        if not word:
            continue
        while len(word) > width:
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:width])
            word = word[width:]
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def _cues(entries: list[TimelineEntry], *, speaker_prefix: bool) -> list[Cue]:
    ordered = sorted(
        (e for e in entries if _clean(e.text)),
        key=lambda e: (_ms(e.start), e.index),
    )
    cues: list[Cue] = []
    previous_end = 0
    for i, entry in enumerate(ordered):
        start = max(_ms(entry.start), previous_end)
        end = _ms(entry.end)
        if i + 1 < len(ordered):
            end = min(end, max(_ms(ordered[i + 1].start), start))
        if end <= start:
            continue
        speaker = _clean(entry.speaker or "") or None
        text = _clean(entry.text)
        if speaker_prefix and speaker:
            text = f"[{speaker}] {text}"
        lines = wrap(text)
        groups = [tuple(lines[j : j + MAX_LINES]) for j in range(0, len(lines), MAX_LINES)]
        if end - start < len(groups):  # not even 1 ms per piece (degenerate entry): keep the words together
            groups = [tuple(lines)]
        weights = [sum(len(line) for line in g) for g in groups]
        total, done, cue_start = sum(weights), 0, start
        for k, group in enumerate(groups):
            done += weights[k]
            left = len(groups) - 1 - k  # pieces still to place, 1 ms each at least
            cue_end = min(max(start + round((end - start) * done / total), cue_start + 1), end - left)
            cues.append(Cue(cue_start, cue_end, group, speaker))
            cue_start = cue_end
        previous_end = end
    return cues


def _clean(text: str) -> str:
    return _WS.sub(" ", _CONTROL.sub(" ", text)).strip()


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _timestamp(ms: int, sep: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
