"""What a call's bytes look like: an audio format (which container walker reads them) or a description of
what came instead (an error body, a playlist, MP4 ...), with the message the user reads.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..model import AUDIO_FORMATS
from . import adts, flac, mp3, ogg, riff
from .metadata import after_id3v2

# Format name → its container module (`starts`, `walk`), in the order formats are tried at a position: mp3
# before ADTS (both start with 0xFF).
CONTAINERS = {"mp3": mp3, "aac": adts, "wav": riff, "ogg": ogg, "flac": flac}


def format_at(buf: bytes, p: int) -> str | None:
    """The audio format whose file (or frame, for mp3/ADTS) starts at `p`, if any."""
    if p >= len(buf):
        return None
    for name, module in CONTAINERS.items():
        if module.starts(buf, p):
            return name
    return None


def sniff(data: bytes) -> str:
    """What `data` looks like from its first bytes.

    An audio format name ("mp3", "wav", "ogg", "flac", "aac" = ADTS) or a description: "empty", "mp4",
    "webm", "RIFF file (not WAVE)", "JSON error body", "JSON document", "HTML page", "XML document",
    "HLS playlist", "ffconcat list", "URL", "plain text", "blank text", "hex-encoded mp3" / "base64-encoded
    wav" (etc.), "ID3 tag without audio", "ID3 tag followed by unknown data", "unknown binary".
    """
    if not data:
        return "empty"
    p = after_id3v2(data, 0)
    if p < 0 or (p and p >= len(data)):
        return "ID3 tag without audio"
    fmt = format_at(data, p)
    if fmt is not None:
        return fmt
    if p:
        return "ID3 tag followed by unknown data"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if data.startswith((b"RIFF", b"RIFX", b"RF64")):
        return "RIFF file (not WAVE)"
    return text_kind(data) or "unknown binary"


_TEXT_REPLY = "the provider returned {} instead of audio"
_NOT_AUDIO = {
    "empty": (
        "the provider returned no audio at all (zero bytes); check the TTS model's credentials and quota in Dify, "
        "and that its model plugin yields audio"
    ),
    "JSON error body": _TEXT_REPLY.format("a JSON error body")
    + "; its message (below) usually says what to fix: API key, quota, model or voice name",
    "JSON document": _TEXT_REPLY.format("a JSON document"),
    "HTML page": _TEXT_REPLY.format("an HTML page")
    + " (usually a proxy, gateway or login error page); check the provider's endpoint and network",
    "XML document": _TEXT_REPLY.format("an XML document") + " (often an error reply)",
    "HLS playlist": _TEXT_REPLY.format("an HLS playlist") + "; playlists and links are never followed",
    "ffconcat list": _TEXT_REPLY.format("an ffconcat file list") + "; file lists and links are never followed",
    "URL": _TEXT_REPLY.format("a URL") + "; links are never followed, audio must arrive as bytes",
    "plain text": _TEXT_REPLY.format("text"),
    "blank text": _TEXT_REPLY.format("blank text"),
    "mp4": (
        "the provider returned MP4/M4A audio, which cannot be cut into files here; configure the provider for "
        "mp3, wav, ogg (opus/vorbis), flac or aac (ADTS)"
    ),
    "webm": (
        "the provider returned WebM/Matroska audio, which is not supported; configure it for mp3, wav, ogg, flac "
        "or aac (ADTS)"
    ),
    "RIFF file (not WAVE)": (
        "the provider returned a RIFF file that is not WAVE audio; configure it for mp3, wav, ogg, flac or aac (ADTS)"
    ),
    "ID3 tag without audio": "the provider returned an ID3 tag but no audio frames (the audio was cut short)",
}


# Kinds of answers that are well-formed but unusable (not retried), unlike error bodies, empty or cut-off ones.
UNUSABLE = frozenset(
    {"mp4", "webm", "RIFF file (not WAVE)", "HLS playlist", "ffconcat list", "URL"}
    | {f"{enc}-encoded {fmt}" for enc in ("hex", "base64") for fmt in AUDIO_FORMATS}
)


def not_audio_message(kind: str) -> str:
    if kind in _NOT_AUDIO:
        return _NOT_AUDIO[kind]
    if kind.endswith(tuple(f"-encoded {fmt}" for fmt in AUDIO_FORMATS)):
        return (
            f"the provider returned {kind.split('-')[0]} text holding audio instead of raw bytes; the TTS model "
            "plugin must decode it before yielding chunks"
        )
    return (
        "the provider returned data that is not audio in a supported format (mp3, wav, ogg opus/vorbis, flac, "
        "aac ADTS): no file header and no run of consistent frame headers anywhere in its first MiB (raw PCM, "
        "for one, has neither); configure the provider for one of these formats"
    )


# (magic, size of the smallest complete structure it starts): a shorter tail starting so is a cut-off start
_STARTS = (
    (b"ID3", 10),
    (b"RIFF", 12),
    (b"RF64", 12),
    (b"OggS", 27),
    (b"fLaC", 42),
    (b"TAG", 128),
    (b"APETAGEX", 32),
)


def partial_start(buf: bytes, p: int) -> bool:
    """Whether the tail from `p` is the beginning of a frame, page, header or tag cut off by the end."""
    r = len(buf) - p
    if r <= 0 or r >= 128:
        return False
    tail = buf[p:]
    if tail[0] == 0xFF:
        return _frame_header_prefix(tail)
    return any(r < size and (tail.startswith(magic) or magic.startswith(tail)) for magic, size in _STARTS)


def _frame_header_prefix(tail: bytes) -> bool:
    """Whether `tail`, shorter than a frame header, can be the start of an mp3 or ADTS frame header."""
    r = len(tail)
    if r == 1:
        return True
    b1 = tail[1]
    if (b1 & 0xF6) == 0xF0:  # ADTS: a 7-byte header
        return r < 7 and (r < 3 or (tail[2] >> 2) & 0xF <= 12)
    if r >= 4 or (b1 & 0xE0) != 0xE0 or (b1 >> 3) & 3 == 1 or (b1 >> 1) & 3 != 1:  # mp3: 4 bytes, Layer III
        return False
    return r < 3 or ((tail[2] >> 4) not in (0, 15) and (tail[2] >> 2) & 3 != 3)


JSON_ERROR_KEY = re.compile(
    r'"(error|errors|err|error_code|error_msg|message|msg|detail|code|status|status_code|status_msg|base_resp)"\s*:'
)
_HTML = re.compile(r"<(html|head|body|title)[\s>]")
_URL = re.compile(r"([a-z][a-z0-9+.\-]{1,31}://|file:|data:)\S")
_HEX = re.compile(r"[0-9a-fA-F\s]+")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def text_kind(data: bytes) -> str | None:
    """A description of `data` if it is text (an error body, a playlist...), else None."""
    head = data[:4096]
    text = head.decode("utf-8", errors="replace")
    if len(data) > len(head):
        text = text.rstrip("\ufffd")  # a multi-byte character cut by the 4 KiB window
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f\v"))
    if not text or bad * 50 > len(text):
        return None
    s = text.lstrip("\ufeff \t\r\n\f\v")
    if not s:
        return "blank text"
    low = s[:2048].lower()
    if low.startswith("#extm3u"):
        return "HLS playlist"
    if low.startswith("ffconcat"):
        return "ffconcat list"
    if _URL.match(low):
        return "URL"
    if s[0] in "{[":
        return "JSON error body" if JSON_ERROR_KEY.search(low) else "JSON document"
    if low.startswith("<!doctype html") or _HTML.search(low):
        return "HTML page"
    if s[0] == "<":
        return "XML document"
    return _encoded_audio(s) or "plain text"


def _encoded_audio(s: str) -> str | None:
    """ "hex-encoded mp3" / "base64-encoded wav"... when text is audio in hex or base64."""
    compact = "".join(s[:4096].split())
    if len(compact) < 32:
        return None
    raw = b""
    try:
        if _HEX.fullmatch(compact):
            raw, name = bytes.fromhex(compact[: len(compact) // 2 * 2]), "hex"
        elif _B64.fullmatch(compact):
            raw, name = base64.b64decode(compact[: len(compact) // 4 * 4]), "base64"
    except (ValueError, binascii.Error):
        return None
    if not raw:
        return None
    p = after_id3v2(raw, 0)
    fmt = format_at(raw, p) if p >= 0 else "mp3"
    return f"{name}-encoded {fmt}" if fmt else None
