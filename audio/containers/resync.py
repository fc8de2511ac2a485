"""Finding audio again after bytes that are not audio, the way decoders do, and telling junk from an error.

A decoder that meets bytes which are not a frame header scans on and resumes at a position where several
consecutive frame headers with the same parameters follow each other (ffmpeg's mp3 demuxer checks four).
`resync` does the same, and also accepts the start of a new file (an ID3v2 tag, RIFF/WAVE, an Ogg BOS page,
fLaC + STREAMINFO). What is skipped must carry no speech: `error_text` finds what reads like a provider's
error (a JSON object, HTML/XML, text with error words), which is never skipped, because it means the
provider stopped in the middle of the text.
"""

from __future__ import annotations

import re

from . import adts, mp3, riff
from .base import U32BE
from .metadata import after_id3v2, id3v2_size
from .sniff import text_kind

RESYNC_FRAMES = 4  # consecutive frames with the same parameters that make a resync confident
MAX_GAP = 1 << 20  # bytes searched for a resync point
_TAGS = (b"TAG", b"APETAGEX", b"LYRICSBEGIN", b"ID3")

_CANDIDATE = re.compile(rb"(?=\xff[\xe0-\xff]|ID3|RIFF|RF64|OggS|fLaC)")
_JSON_OBJECT = re.compile(rb'\{\s*"[^"\x00-\x1f]{1,64}"\s*:')
_MARKUP = re.compile(rb"<!doctype html|<html|<\?xml|<head>|<body|<title>", re.IGNORECASE)
_TAG_LEFTOVER = re.compile(rb"APETAGEX|LYRICSBEGIN|LYRICS200|LYRICSEND")
_TEXT_RUN = re.compile(rb"[\x20-\x7e\t\r\n]{8,}")
_ERROR_WORDS = re.compile(
    rb"error|exceed|quota|limit|denied|invalid|unauthori[sz]ed|forbidden|fail|timed? ?out|unavailable|"
    rb"not found|bad gateway|bad request|too many|overload|insufficient|expired|refused|exception|traceback|"
    rb"balance|billing|credential|api[ _-]?key",
    re.IGNORECASE,
)


def resync(buf: bytes, a: int) -> int | None:
    """The first position at or after `a` where audio confidently starts again (see the module doc)."""
    for m in _CANDIDATE.finditer(buf, a, min(len(buf), a + MAX_GAP)):
        if confident_start(buf, m.start()):
            return m.start()
    return None


def confident_start(buf: bytes, q: int) -> bool:
    """Whether a file starts at `q` or frames follow each other from `q` as in one stream."""
    b0 = buf[q]
    if b0 == 0xFF:
        return _chain(buf, q) > 0
    if b0 == 0x49:  # ID3
        if id3v2_size(buf, q) <= 0:
            return False
        after = after_id3v2(buf, q)
        return 0 <= after < len(buf) and _file(buf, after)
    return _file(buf, q)


def _file(buf: bytes, q: int) -> bool:
    n = len(buf)
    if riff.starts(buf, q):
        return riff.is_chunk_id(buf, q + 12)
    if buf.startswith(b"OggS", q):
        return q + 27 <= n and buf[q + 4] == 0 and bool(buf[q + 5] & 2)  # a beginning-of-stream page
    if buf.startswith(b"fLaC", q):
        return q + 8 <= n and buf[q + 4] & 0x7F == 0 and buf.startswith(b"\x00\x00\x22", q + 5)
    return buf[q] == 0xFF and _chain(buf, q) > 0


def _chain(buf: bytes, q: int) -> int:
    """How many consecutive mp3 or ADTS frames with the same parameters start at `q`, if that is enough to
    trust them (RESYNC_FRAMES, or at least two that end exactly at the end, a tag or a new file); else 0."""
    n = len(buf)
    count, params, p = 0, None, q
    while count < RESYNC_FRAMES:
        if p == n or (count and (buf.startswith(_TAGS, p) or (buf[p] != 0xFF and _file(buf, p)))):
            return count if count >= 2 else 0
        here = _frame(buf, p)
        if here is None or (params is not None and here[1:] != params):
            return 0
        params = here[1:]
        p += here[0]
        if p > n:
            return 0
        count += 1
    return count


def _frame(buf: bytes, p: int) -> tuple[int, str, int, int] | None:
    """(length, kind, rate, channels) of the mp3 or ADTS frame at `p`."""
    if p + 4 <= len(buf):
        f = mp3.frame_header(U32BE(buf, p)[0])
        if f is not None:
            return (f.length, "mp3", f.rate, f.channels) if f.length else None
    a = adts.frame_header(buf, p)
    return (a[0], "aac", a[1], a[2]) if a is not None else None


def error_text(data: bytes, *, text_is_error: bool = True) -> int | None:
    """Where something in `data` reads like a provider's error rather than leftover bytes: a JSON object, an
    HTML/XML document, a run of text with an error word in it ("quota exceeded"), or (`text_is_error`) bytes
    that are text altogether, unless a tag's leftovers (APE, Lyrics3); None if nothing does."""
    if text_is_error and text_kind(data) not in (None, "blank text") and not _TAG_LEFTOVER.search(data):
        return 0
    found = [m.start() for m in (_JSON_OBJECT.search(data), _MARKUP.search(data)) if m is not None]
    for m in _TEXT_RUN.finditer(data):
        if _ERROR_WORDS.search(m[0]):
            found.append(m.start())
            break
    return min(found) if found else None
