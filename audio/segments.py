"""Cut one TTS call's chunk stream back into complete audio files.

Providers cut their audio anywhere: one mp3 file per sentence sliced into 1 KiB chunks, random fragments of
one continuous stream, one complete file per chunk, WAVs streamed with placeholder sizes, Ogg, FLAC, ADTS.
Joining the bytes and decoding once plays WAV headers as clicks, hits decoder errors at every file boundary
and keeps each inner file's encoder delay and padding. So `split_call` joins the chunks once and walks the
*structure* (mp3/ADTS frames, RIFF chunks, Ogg pages, FLAC metadata and frames), never the chunk boundaries,
and returns every complete file on its own, to be decoded separately with the forced demuxer `AudioFile.fmt`.

Rules the walk follows:
- A file may start with ID3v2 tags (kept with an mp3/ADTS file, dropped before other formats). After a
  file's first frame everything must be frames or trailing tags (ID3v1, APE) of that file, the start of the
  next file (any supported format), or a partial final frame: a valid header whose frame runs past the end
  of the call (dropped, the file is marked `truncated` with a note). Anything else (an error body after the
  audio, random bytes) raises InvalidAudio: data is never cut off silently.
- mp3 files end at an ID3v2 tag, a Xing/Info/VBRI header frame, a change of sample rate or channel count, or
  after an ID3v1/APE trailer. Frames of one stream without such markers stay one file. ADTS the same
  (without Xing). WAV files end where their data chunk says, or, for streamed sizes, at the next
  `RIFF....WAVE` or the end; each WAV gets a rewritten header with exact sizes. Ogg files end at a BOS page
  after data pages (chained streams). FLAC files end at the next `fLaC`+STREAMINFO; the last frame is
  checked with its CRC-16.
- Sizes read from headers are never trusted beyond the bytes that arrived; every loop moves forward.
- Work is linear: one join, forward walks and C-level searches. The files are one more copy of the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .cooperate import cooperate
from .errors import InvalidAudio, printable_preview
from .model import AUDIO_FORMATS, AudioFile

__all__ = ["sniff", "split_call"]

_U16BE = struct.Struct(">H").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_LE32 = struct.Struct("<I").pack


# ---------------------------------------------------------------------------------------------------------
# Public API


def split_call(chunks: Iterable[bytes], call_index: int) -> list[AudioFile]:
    """The complete audio files contained in one TTS call's chunks, in order.

    Empty chunks are ignored. Raises InvalidAudio (naming the call, what the bytes look like and a preview)
    when the call holds no audio, something other than audio, or audio followed by data that is not audio.
    """
    buf = _join(chunks, call_index)
    kind = sniff(buf)
    if kind not in AUDIO_FORMATS:
        raise InvalidAudio(call_index, _not_audio_message(kind), sniffed=kind, preview=printable_preview(buf))
    cuts = _Splitter(buf, call_index).run()
    return [cut.to_audio_file(buf, call_index, i) for i, cut in enumerate(cuts)]


def sniff(data: bytes) -> str:
    """What `data` looks like from its first bytes.

    An audio format name ("mp3", "wav", "ogg", "flac", "aac" = ADTS) or a description: "empty", "mp4",
    "webm", "RIFF file (not WAVE)", "JSON error body", "JSON document", "HTML page", "XML document",
    "HLS playlist", "ffconcat list", "URL", "plain text", "blank text", "hex-encoded mp3" / "base64-encoded
    wav" (etc.), "ID3 tag without audio", "ID3 tag followed by unknown data", "unknown binary".
    """
    if not data:
        return "empty"
    p = _after_id3v2(data, 0)
    if p < 0 or (p and p >= len(data)):
        return "ID3 tag without audio"
    fmt = _format_at(data, p)
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
    return _text_kind(data) or "unknown binary"


# ---------------------------------------------------------------------------------------------------------
# Joining and user-facing messages


def _join(chunks: Iterable[bytes], call_index: int) -> bytes:
    if isinstance(chunks, bytes | bytearray | memoryview):  # one blob instead of an iterable of chunks
        return bytes(chunks)
    parts: list[bytes | bytearray | memoryview] = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidAudio(
                call_index,
                f"chunk #{i + 1} is a {type(chunk).__name__}, not bytes: the TTS model plugin must yield audio bytes",
                sniffed=type(chunk).__name__,
                preview=printable_preview(str(chunk).encode("utf-8", "replace")),
            )
        if len(chunk):
            parts.append(chunk)
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)


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
    "ID3 tag without audio": "the provider returned an ID3 tag but no audio frames (the audio was cut short)",
}


def _not_audio_message(kind: str) -> str:
    if kind in _NOT_AUDIO:
        return _NOT_AUDIO[kind]
    if kind.endswith(tuple(f"-encoded {fmt}" for fmt in AUDIO_FORMATS)):
        return (
            f"the provider returned {kind.split('-')[0]} text holding audio instead of raw bytes; the TTS model "
            "plugin must decode it before yielding chunks"
        )
    return (
        "the provider returned data that is not audio in a supported format (mp3, wav, ogg opus/vorbis, flac, "
        "aac ADTS); raw PCM without a header cannot be used, configure the provider for one of these formats"
    )


# ---------------------------------------------------------------------------------------------------------
# Sniffing


def _format_at(buf: bytes, p: int) -> str | None:
    """The audio format whose file (or frame, for mp3/ADTS) starts at `p`, if any."""
    n = len(buf)
    if p >= n:
        return None
    b0 = buf[p]
    if b0 == 0xFF:
        if p + 4 <= n and _mpeg_frame(_U32BE(buf, p)[0]) is not None:
            return "mp3"
        if _adts_frame(buf, p) is not None:
            return "aac"
        return None
    if b0 == 0x52 and p + 12 <= n and buf.startswith((b"RIFF", b"RF64"), p) and buf.startswith(b"WAVE", p + 8):
        return "wav"
    if b0 == 0x4F and p + 5 <= n and buf.startswith(b"OggS", p) and buf[p + 4] == 0:
        return "ogg"
    if b0 == 0x66 and buf.startswith(b"fLaC", p):
        return "flac"
    return None


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


def _partial_start(buf: bytes, p: int) -> bool:
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


_JSON_ERROR_KEY = re.compile(
    r'"(error|errors|err|error_code|error_msg|message|msg|detail|code|status|status_code|status_msg|base_resp)"\s*:'
)
_HTML = re.compile(r"<(html|head|body|title)[\s>]")
_URL = re.compile(r"([a-z][a-z0-9+.\-]{1,31}://|file:|data:)\S")
_HEX = re.compile(r"[0-9a-fA-F\s]+")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def _text_kind(data: bytes) -> str | None:
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
        return "JSON error body" if _JSON_ERROR_KEY.search(low) else "JSON document"
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
    p = _after_id3v2(raw, 0)
    fmt = _format_at(raw, p) if p >= 0 else "mp3"
    return f"{name}-encoded {fmt}" if fmt else None


def _after_id3v2(buf: bytes, p: int) -> int:
    """Position after the ID3v2 tags at `p` (`p` itself if there is none), -1 if a tag runs past the end."""
    while True:
        size = _id3v2_size(buf, p)
        if size == 0:
            return p
        if size < 0 or p + size > len(buf):
            return -1
        p += size


def _id3v2_size(buf: bytes, p: int) -> int:
    """Total size of the ID3v2 tag at `p` (header, syncsafe size, footer); 0 if none, -1 if cut short."""
    if not buf.startswith(b"ID3", p):
        return 0
    if p + 10 > len(buf):
        return -1 if len(buf) - p < 10 else 0
    major, minor, flags = buf[p + 3], buf[p + 4], buf[p + 5]
    s0, s1, s2, s3 = buf[p + 6 : p + 10]
    if major not in (2, 3, 4) or minor == 0xFF or (s0 | s1 | s2 | s3) & 0x80:
        return 0
    size = (s0 << 21) | (s1 << 14) | (s2 << 7) | s3
    footer = 10 if major == 4 and flags & 0x10 else 0
    return 10 + size + footer


# ---------------------------------------------------------------------------------------------------------
# Frame headers


@dataclass(frozen=True, slots=True)
class _Mpeg:
    length: int  # 0 = free format
    rate: int
    channels: int
    vbr_offset: int  # where a Xing/Info tag would sit, from the frame start


_MP3_BITRATES = (
    (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 Layer III
    (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 and 2.5 Layer III
)
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MPEG_CACHE: dict[int, _Mpeg] = {}  # at most a few thousand valid header variants
_VBR_TAGS = (b"Xing", b"Info")


def _mpeg_frame(header: int) -> _Mpeg | None:
    """Parse a 32-bit MPEG-1/2/2.5 Layer III frame header; None if it is not one."""
    key = header & 0xFFFFFEC0  # ignore the private, mode-extension, copyright, original and emphasis bits
    hit = _MPEG_CACHE.get(key)
    if hit is not None:
        return hit
    version = (key >> 19) & 3  # 0 = MPEG-2.5, 1 reserved, 2 = MPEG-2, 3 = MPEG-1
    bitrate_index = (key >> 12) & 0xF
    rate_index = (key >> 10) & 3
    if (key >> 21) != 0x7FF or version == 1 or (key >> 17) & 3 != 1 or bitrate_index == 15 or rate_index == 3:
        return None
    mpeg1 = version == 3
    rate = _MP3_RATES[version][rate_index]
    channels = 1 if (key >> 6) & 3 == 3 else 2
    kbps = _MP3_BITRATES[0 if mpeg1 else 1][bitrate_index]
    length = ((144 if mpeg1 else 72) * kbps * 1000 // rate + ((key >> 9) & 1)) if kbps else 0
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    frame = _Mpeg(length, rate, channels, 4 + (0 if key & 0x10000 else 2) + side_info)
    _MPEG_CACHE[key] = frame
    return frame


_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def _adts_frame(buf: bytes, p: int) -> tuple[int, int, int] | None:
    """(frame length, sample rate, channels) of the ADTS frame header at `p`; None if it is not one."""
    if p + 7 > len(buf) or buf[p] != 0xFF or (buf[p + 1] & 0xF6) != 0xF0:  # syncword 0xFFF, layer 00
        return None
    b2, b3 = buf[p + 2], buf[p + 3]
    rate_index = (b2 >> 2) & 0xF
    if rate_index > 12:
        return None
    length = ((b3 & 3) << 11) | (buf[p + 4] << 3) | (buf[p + 5] >> 5)
    if length < (7 if buf[p + 1] & 1 else 9):
        return None
    config = ((b2 & 1) << 2) | (b3 >> 6)  # 0 = described in a PCE (unknown here), 7 = 7.1
    return length, _ADTS_RATES[rate_index], 8 if config == 7 else config


def _ape_size(buf: bytes, p: int) -> int:
    """Total size of an APE tag whose header is at `p`; 0 if it is not one."""
    if p + 32 > len(buf):
        return 0
    version, size, _items, flags = struct.unpack_from("<IIII", buf, p + 8)
    if version not in (1000, 2000) or size < 32 or not flags & 0x20000000 or any(buf[p + 24 : p + 32]):
        return 0
    return 32 + size  # size counts the items and the footer, not the header


@dataclass(frozen=True, slots=True)
class _StreamInfo:
    min_block: int
    max_block: int
    max_frame: int
    rate: int
    channels: int
    bits: int
    total: int  # samples per channel; 0 = unknown (a streamed FLAC)


def _streaminfo(si: bytes) -> _StreamInfo:
    min_block, max_block = struct.unpack_from(">HH", si)
    packed = int.from_bytes(si[10:18], "big")
    return _StreamInfo(
        min_block=min_block,
        max_block=max_block,
        max_frame=int.from_bytes(si[7:10], "big"),
        rate=packed >> 44,
        channels=((packed >> 41) & 7) + 1,
        bits=((packed >> 36) & 31) + 1,
        total=packed & ((1 << 36) - 1),
    )


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


_CRC8 = _crc_table(0x07, 8)
_CRC16 = _crc_table(0x8005, 16)
_FLAC_SYNC = re.compile(rb"\xff[\xf8\xf9]")
_FLAC_RATES = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


def _flac_frame(buf: bytes, p: int, end: int, info: _StreamInfo) -> tuple[int, int, int, int] | None:
    """(block size, frame or sample number, variable-blocksize flag, header length) of the FLAC frame
    header at `p`, checked with its CRC-8 and against STREAMINFO; None if it is not one."""
    if p + 6 > end:
        return None
    b1, b2, b3 = buf[p + 1], buf[p + 2], buf[p + 3]
    block_code, rate_code, channel_code = b2 >> 4, b2 & 0xF, b3 >> 4
    if block_code == 0 or rate_code == 0xF or channel_code > 10 or (b3 >> 1) & 7 == 3 or b3 & 1:
        return None
    if (channel_code + 1 if channel_code < 8 else 2) != info.channels:
        return None
    if 0 < rate_code < 12 and _FLAC_RATES[rate_code] != info.rate:
        return None
    q = p + 4
    first = buf[q]  # the frame/sample number, UTF-8 style: 0xxxxxxx, 110xxxxx 10xxxxxx, ... 11111110 + 6 bytes
    ones = 0
    while ones < 8 and first & (0x80 >> ones):
        ones += 1
    if ones in (1, 8):
        return None
    extra = ones - 1 if ones else 0
    number = first & (0x7F >> ones)
    if q + 1 + extra > end:
        return None
    for c in buf[q + 1 : q + 1 + extra]:
        if c & 0xC0 != 0x80:
            return None
        number = (number << 6) | (c & 0x3F)
    q += 1 + extra
    if block_code == 6:
        if q + 1 > end:
            return None
        block = buf[q] + 1
        q += 1
    elif block_code == 7:
        if q + 2 > end:
            return None
        block = _U16BE(buf, q)[0] + 1
        q += 2
    else:
        block = 192 if block_code == 1 else (576 << (block_code - 2) if block_code < 6 else 256 << (block_code - 8))
    q += 1 if rate_code == 12 else 2 if rate_code in (13, 14) else 0
    if q >= end:
        return None
    crc = 0
    for c in buf[p:q]:
        crc = _CRC8[crc ^ c]
    if crc != buf[q]:
        return None
    return block, number, b1 & 1, q + 1 - p


def _crc16_ends(buf: bytes, start: int, stop: int, first_end: int) -> list[int]:
    """Positions e in [first_end, stop] where the FLAC CRC-16 of buf[start:e] is 0, i.e. where a frame that
    starts at `start` could end (its last two bytes are the CRC of everything before them)."""
    crc, ends, table = 0, [], _CRC16
    for i, c in enumerate(buf[start:stop], start + 1):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ c]
        if not crc and i >= first_end:
            ends.append(i)
    return ends


# ---------------------------------------------------------------------------------------------------------
# WAV details

_WAV_CODECS = {1: (8, 16, 24, 32), 3: (32, 64), 6: (8,), 7: (8,)}  # PCM, IEEE float, A-law, mu-law
_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_CHUNK_ID = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9 _.\-]{3}")
_JSON_START = re.compile(rb'\{\s*"')
_MARKUP_START = re.compile(rb"<!doctype html|<html|<\?xml", re.IGNORECASE)


def _is_chunk_id(buf: bytes, p: int) -> bool:
    return p + 8 <= len(buf) and _CHUNK_ID.match(buf, p) is not None


def _wav_header(fmt_body: bytes, data_len: int) -> bytes:
    fmt_pad = len(fmt_body) & 1
    riff = 4 + 8 + len(fmt_body) + fmt_pad + 8 + data_len + (data_len & 1)
    return b"".join(
        (b"RIFF", _LE32(riff), b"WAVE", b"fmt ", _LE32(len(fmt_body)), fmt_body, b"\0" * fmt_pad, b"data")
    ) + _LE32(data_len)


# ---------------------------------------------------------------------------------------------------------
# The walk


@dataclass
class _Cut:
    """One file found in the joined bytes: buf[start:end], framed by `head`/`tail` (a rewritten WAV header)."""

    fmt: str
    start: int
    end: int
    sample_rate: int
    channels: int
    audio: bool = False  # at least one complete audio frame / sample
    truncated: bool = False
    head: bytes = b""
    tail: bytes = b""
    notes: list[str] = field(default_factory=list)

    def to_audio_file(self, buf: bytes, call_index: int, file_index: int) -> AudioFile:
        if self.head or self.tail:
            data = b"".join((self.head, memoryview(buf)[self.start : self.end], self.tail))
        else:
            data = buf[self.start : self.end]  # the whole input is returned as is, without a copy
        return AudioFile(
            data=data,
            fmt=self.fmt,
            sample_rate=self.sample_rate,
            channels=self.channels,
            call_index=call_index,
            file_index=file_index,
            truncated=self.truncated,
            note="; ".join(self.notes),
        )


class _Splitter:
    """Walks the joined bytes of one call file by file, format by format."""

    def __init__(self, buf: bytes, call_index: int) -> None:
        self.buf = buf
        self.n = len(buf)
        self.call = call_index
        self.cuts: list[_Cut] = []
        self.pending: list[str] = []  # notes about skipped empty files, for the next file kept

    def run(self) -> list[_Cut]:
        pos = 0
        while pos < self.n:
            pos = self._file_at(pos)
        if not self.cuts:
            raise InvalidAudio(
                self.call,
                "the provider's audio holds no complete frame or sample",
                sniffed=sniff(self.buf[:4096]),
                preview=printable_preview(self.buf),
            )
        self.cuts[-1].notes.extend(self.pending)
        return self.cuts

    # -- dispatch and errors ------------------------------------------------------------------------------

    def _file_at(self, start: int) -> int:
        """Walk the file starting at `start` (after optional ID3v2 tags); return where the next one starts."""
        buf, n = self.buf, self.n
        body = _after_id3v2(buf, start)
        if body < 0:
            return self._cut_short(start, "an incomplete ID3v2 tag")
        if body == n:  # only tags left
            last = self.cuts[-1] if self.cuts else None
            if last is not None and last.fmt in ("mp3", "aac") and last.end == start:
                last.end = n  # an ID3v2 tag appended to the end of the last file
                return n
            return self._cut_short(start, "an ID3v2 tag without audio after it")
        fmt = _format_at(buf, body)
        if fmt is None:
            if _partial_start(buf, body):
                return self._cut_short(start, "an incomplete frame or header")
            raise self._garbage(body)
        walk = getattr(self, f"_walk_{fmt}")
        cut, end = walk(start, body)
        if cut.audio:
            cut.notes[:0] = self.pending
            self.pending = []
            self.cuts.append(cut)
        elif cut.truncated and end >= n:
            return self._cut_short(start, f"an incomplete {fmt} file")
        else:
            self.pending.append(f"skipped {end - start} bytes: a {fmt} file without audio")
        return end

    def _cut_short(self, start: int, what: str) -> int:
        """The call ends with an incomplete file: report it on the previous file, or fail if there is none."""
        dropped = self.n - start
        if not self.cuts:
            raise InvalidAudio(
                self.call,
                f"the audio was cut short before its first complete frame ({dropped} bytes: {what})",
                sniffed=sniff(self.buf[:4096]),
                preview=printable_preview(self.buf),
            )
        last = self.cuts[-1]
        last.truncated = True
        last.notes.append(f"dropped {dropped} bytes of {what} at the end of the call")
        return self.n

    def _garbage(self, pos: int) -> InvalidAudio:
        body = self._text_tail(max(0, pos - 4096), self.n)  # an error body whose start looked like a frame
        if body is not None and body < pos:
            pos = body
        rest = self.buf[pos : pos + 4096]
        return InvalidAudio(
            self.call,
            f"the audio is followed by {self.n - pos} bytes that are not audio (from byte {pos} of {self.n}); "
            "they are rejected rather than cut off silently",
            sniffed=sniff(rest),
            preview=printable_preview(rest),
        )

    def _drop(self, cut: _Cut, at: int, end: int, what: str = "a partial final frame") -> tuple[_Cut, int]:
        """The file's last frame/page/tag, from `at` to `end`, is incomplete: keep the file up to `at`."""
        self._reject_text_tail(at, end)  # unless it hides an error body appended after a cut-off frame
        cut.end = at
        cut.truncated = True
        cut.notes.append(f"dropped {end - at} bytes of {what}")
        return cut, end

    def _bad(self, fmt: str, message: str) -> InvalidAudio:
        return InvalidAudio(self.call, message, sniffed=fmt)

    def _starts_file(self, p: int) -> bool:
        return _format_at(self.buf, p) is not None or _id3v2_size(self.buf, p) != 0

    # -- mp3 and ADTS -------------------------------------------------------------------------------------

    def _walk_mp3(self, start: int, body: int) -> tuple[_Cut, int]:
        buf, n = self.buf, self.n
        first = _mpeg_frame(_U32BE(buf, body)[0])
        assert first is not None  # _format_at said so
        if not first.length:
            raise self._bad("mp3", "free-format mp3 (no bitrate in the frame headers) is not supported")
        cut = _Cut("mp3", start, body, first.rate, first.channels)
        p = body
        count = 0
        while p + 4 <= n:
            count += 1
            if count % 256 == 0:
                cooperate()  # a long call (MBs of frames) must not hold the gevent hub
            frame = _mpeg_frame(_U32BE(buf, p)[0])
            if frame is None or not frame.length:
                break
            vbr_header = buf.startswith(_VBR_TAGS, p + frame.vbr_offset) or buf.startswith(b"VBRI", p + 36)
            if p > body and (vbr_header or frame.rate != cut.sample_rate or frame.channels != cut.channels):
                break  # the next file starts here
            end = p + frame.length
            if end > n:
                return self._drop(cut, p, n)
            cut.audio = cut.audio or not vbr_header
            p = end
        return self._trailing_tags(cut, p)

    def _walk_aac(self, start: int, body: int) -> tuple[_Cut, int]:
        buf, n = self.buf, self.n
        first = _adts_frame(buf, body)
        assert first is not None
        cut = _Cut("aac", start, body, first[1], first[2])
        p = body
        while (frame := _adts_frame(buf, p)) is not None:
            length, rate, channels = frame
            if rate != cut.sample_rate or channels != cut.channels:
                break
            if p + length > n:
                return self._drop(cut, p, n)
            cut.audio = True
            p += length
        return self._trailing_tags(cut, p)

    def _trailing_tags(self, cut: _Cut, p: int) -> tuple[_Cut, int]:
        """ID3v1 and APE tags at the end of an mp3/ADTS file belong to it."""
        buf, n = self.buf, self.n
        cut.end = p
        while p < n:
            if buf.startswith(b"TAG", p):
                size = 128
            elif buf.startswith(b"APETAGEX", p) and (size := _ape_size(buf, p)):
                pass
            else:
                break
            if p + size > n:
                return self._drop(cut, p, n, "an incomplete tag")
            p += size
            cut.end = p
        return cut, p

    # -- WAV ----------------------------------------------------------------------------------------------

    def _walk_wav(self, start: int, body: int) -> tuple[_Cut, int]:
        buf, n = self.buf, self.n
        rf64 = buf.startswith(b"RF64", body)
        riff_size = _U32LE(buf, body + 4)[0]
        incomplete = _Cut("wav", body, body, 0, 0, truncated=True), n
        q = body + 12
        fmt_body: bytes | None = None
        ds64_data: int | None = None
        while True:  # the chunks before the samples
            if q + 8 > n:
                return incomplete
            cid, size = buf[q : q + 4], _U32LE(buf, q + 4)[0]
            if cid == b"data":
                break
            if not _is_chunk_id(buf, q):
                raise self._bad("wav", f"a WAV header is corrupt: no valid chunk at byte {q - body} of the file")
            nxt = q + 8 + size
            if nxt > n:
                return incomplete
            if cid == b"fmt ":
                fmt_body = buf[q + 8 : nxt]
            elif cid == b"ds64" and rf64 and size >= 16:
                ds64_data = struct.unpack_from("<Q", buf, q + 16)[0]
            if size & 1 and not (_is_chunk_id(buf, nxt) and not _is_chunk_id(buf, nxt + 1)):
                nxt += 1  # the pad byte of an odd-sized chunk (some writers omit it)
            q = nxt
        if fmt_body is None:
            raise self._bad("wav", "a WAV file has no fmt chunk before its samples")
        rate, channels, align = self._wav_format(fmt_body)
        data_start = q + 8
        if rf64 and size == 0xFFFFFFFF and ds64_data is not None:
            declared, streamed = ds64_data, ds64_data in (0, 0xFFFFFFFFFFFFFFFF)
        else:  # 0 and 0xFFFFFFFF are the usual placeholders of streaming writers; 0x7FFFFFFF-ish ones exist too
            declared, streamed = size, size == 0 or size >= 0x7FFFF000
        cut = _Cut("wav", data_start, data_start, rate, channels)
        declared_end = data_start + declared
        next_wav = self._next_wav(data_start, n if streamed else min(n, declared_end))
        exact = not streamed and declared_end <= next_wav
        data_end = declared_end if exact else next_wav
        if not exact and not streamed:
            if next_wav < n:
                cut.notes.append(
                    f"the WAV header declares {declared} bytes of samples but the next file starts after "
                    f"{next_wav - data_start}"
                )
            else:
                cut.truncated = True
                cut.notes.append(
                    f"the WAV header declares {declared} bytes of samples but only {n - data_start} arrived"
                )
        if not exact and data_end == n:
            self._reject_text_tail(data_start, n)  # streamed samples run to the end: no error body may hide there
        usable = data_end - data_start
        if rem := usable % align:
            cut.truncated = True
            cut.notes.append(f"dropped {rem} bytes of a partial final sample frame")
            usable -= rem
        if usable > 0xFFFFFFFF - 256:
            raise self._bad("wav", "a WAV file is larger than 4 GiB")
        cut.end = data_start + usable
        cut.audio = usable > 0
        cut.head = _wav_header(fmt_body, usable)
        cut.tail = b"\0" * (usable & 1)
        p = data_end
        if exact:
            if declared & 1 and p < n and buf[p] == 0:
                p += 1
            p = self._wav_trailer(body, riff_size if not rf64 else 0, p)
        return cut, p

    def _wav_format(self, fmt: bytes) -> tuple[int, int, int]:
        """(sample rate, channels, block align) from a fmt chunk; InvalidAudio if unsupported."""
        if len(fmt) < 16:
            raise self._bad("wav", "a WAV fmt chunk is too short")
        tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", fmt)
        codec = tag
        if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the codec is the first field of the sub-format GUID
            if len(fmt) < 40 or fmt[26:40] != _KSDATAFORMAT_TAIL:
                raise self._bad("wav", "a WAVE_FORMAT_EXTENSIBLE header has an unknown sub-format")
            codec = _U16LE(fmt, 24)[0]
        if codec not in _WAV_CODECS:
            raise self._bad(
                "wav", f"WAV audio with codec 0x{codec:04x} is not supported (use PCM 8/16/24/32-bit or float)"
            )
        if bits not in _WAV_CODECS[codec] or not channels or not rate:
            raise self._bad("wav", f"a WAV header is invalid: {channels} channel(s), {rate} Hz, {bits} bits")
        if align != channels * bits // 8:
            raise self._bad(
                "wav", f"a WAV header is inconsistent: block align {align} for {channels} channel(s) of {bits} bits"
            )
        return rate, channels, align

    def _next_wav(self, a: int, b: int) -> int:
        """Start of the first `RIFF....WAVE` in [a, b), or b."""
        buf, n = self.buf, self.n
        limit = min(n, b + 12)
        i = buf.find(b"WAVE", a + 8, limit)
        while i >= 0:
            s = i - 8
            if buf.startswith((b"RIFF", b"RF64"), s) and (s + 16 > n or _is_chunk_id(buf, s + 12)):
                return s
            i = buf.find(b"WAVE", i + 1, limit)
        return b

    def _wav_trailer(self, body: int, riff_size: int, p: int) -> int:
        """Skip the chunks after the samples (LIST, id3...): to the RIFF end if it is plausible, else chunk
        by chunk while whole chunks follow."""
        buf, n = self.buf, self.n
        riff_end = body + 8 + riff_size if riff_size not in (0, 0xFFFFFFFF) else 0
        if p <= riff_end <= n and (riff_end == n or self._starts_file(riff_end)):
            return riff_end
        while _is_chunk_id(buf, p) and not self._starts_file(p):
            size = _U32LE(buf, p + 4)[0]
            end = p + 8 + size
            if end > n:
                return n if end <= riff_end else p  # metadata cut off by the end of the call: nothing to decode
            p = end + (1 if size & 1 and end < n and buf[end] == 0 else 0)
        return p

    def _reject_text_tail(self, a: int, b: int) -> None:
        """Raise if buf[a:b] ends with an error body (see `_text_tail`)."""
        found = self._text_tail(a, b)
        if found is not None:
            raise self._garbage(found)

    def _text_tail(self, a: int, b: int) -> int | None:
        """Where a JSON/HTML/XML error body that ends buf[a:b] starts (searched in the last 64 KiB), if any.

        Streamed WAV samples and a cut-off last frame are opaque bytes: this is what tells a provider's error
        body appended to them from audio."""
        lo = max(a, b - 65536)
        seg = self.buf[lo:b]
        end = seg.rstrip()
        if end.endswith(b"}"):
            for k, m in enumerate(_JSON_START.finditer(seg)):
                if k == 32:
                    break
                try:
                    json.loads(seg[m.start() :].decode("utf-8"))
                except ValueError:  # UnicodeDecodeError is a ValueError
                    continue
                return lo + m.start()
        if end.endswith(b">") and (m := _MARKUP_START.search(seg)):
            try:
                seg[m.start() :].decode("utf-8")
            except UnicodeDecodeError:
                return None
            return lo + m.start()
        return None

    # -- Ogg ----------------------------------------------------------------------------------------------

    def _walk_ogg(self, start: int, body: int) -> tuple[_Cut, int]:
        buf, n = self.buf, self.n
        cut = _Cut("ogg", body, body, 0, 0)
        serials: set[int] = set()
        ended: set[int] = set()
        data_pages = False
        p = body
        while p < n and buf.startswith(b"OggS", p):
            if p + 27 > n or p + 27 + buf[p + 26] > n:
                return self._drop(cut, p, n, "a partial final Ogg page")
            if buf[p + 4] != 0:
                break
            flags = buf[p + 5]
            granule = buf[p + 6 : p + 14]
            serial = _U32LE(buf, p + 14)[0]
            segments = p + 27 + buf[p + 26]
            end = segments + sum(buf[p + 27 : segments])
            if end > n:
                return self._drop(cut, p, n, "a partial final Ogg page")
            if flags & 2:  # beginning of a logical stream
                if data_pages:
                    break  # a chained stream: the next file
                if p == body:
                    cut.sample_rate, cut.channels = self._ogg_codec(buf[segments:end])
                serials.add(serial)
            elif p == body:
                raise self._bad("ogg", "Ogg data does not start with a stream header page (BOS)")
            elif serial not in serials or serial in ended:
                break
            else:
                data_pages = True
                cut.audio = cut.audio or any(granule)
            if flags & 4:
                ended.add(serial)
            p = end
            cut.end = p
        return cut, p

    def _ogg_codec(self, packet: bytes) -> tuple[int, int]:
        if packet.startswith(b"OpusHead") and len(packet) >= 19:
            rate, channels = 48000, packet[9]  # Opus always decodes at 48 kHz
        elif packet.startswith(b"\x01vorbis") and len(packet) >= 30:
            rate, channels = _U32LE(packet, 12)[0], packet[11]
        elif packet.startswith(b"\x7fFLAC") and len(packet) >= 51 and packet[9:13] == b"fLaC":
            info = _streaminfo(packet[17:51])
            rate, channels = info.rate, info.channels
        else:
            raise self._bad("ogg", "an Ogg stream's codec is not supported (expected Opus, Vorbis or FLAC)")
        if not rate or not channels:
            raise self._bad("ogg", f"an Ogg stream header is invalid: {channels} channel(s), {rate} Hz")
        return rate, channels

    # -- FLAC ---------------------------------------------------------------------------------------------

    def _walk_flac(self, start: int, body: int) -> tuple[_Cut, int]:
        buf, n = self.buf, self.n
        p = body + 4
        info: _StreamInfo | None = None
        while True:  # metadata blocks
            if p + 4 > n:
                return _Cut("flac", body, body, 0, 0, truncated=True), n
            kind, length = buf[p] & 0x7F, int.from_bytes(buf[p + 1 : p + 4], "big")
            if kind == 127 or (info is None and (kind != 0 or length != 34)):
                raise self._bad("flac", "a FLAC file does not start with a valid STREAMINFO block")
            if p + 4 + length > n:
                return _Cut("flac", body, body, 0, 0, truncated=True), n
            if info is None:
                info = _streaminfo(buf[p + 4 : p + 38])
                if not info.rate:
                    raise self._bad("flac", "a FLAC STREAMINFO block has a sample rate of 0")
            last = buf[p] & 0x80
            p += 4 + length
            if last:
                break
        cut = _Cut("flac", body, p, info.rate, info.channels)
        limit = self._next_flac(p)
        if p == limit:
            return cut, p
        header = _flac_frame(buf, p, limit, info)
        if header is None or header[1] != 0:
            if limit == n and n - p < 16:
                return self._drop(cut, p, n)
            raise self._garbage(p)
        # Frames carry no length: find each next header (sync, CRC-8, consecutive number) after the last one.
        last, last_header, index, samples = p, header, 0, 0
        search = p + header[3]
        while (m := _FLAC_SYNC.search(buf, search, limit)) is not None:
            c = m.start()
            h = _flac_frame(buf, c, limit, info)
            expected = samples + last_header[0] if header[2] else index + 1
            if h is not None and h[2] == header[2] and h[1] == expected:
                samples += last_header[0]
                index += 1
                last, last_header = c, h
                search = c + h[3]
            else:
                search = c + 1
        return self._flac_end(cut, info, last, last_header, index, samples + last_header[0], limit)

    def _flac_end(
        self, cut: _Cut, info: _StreamInfo, last: int, header: tuple, index: int, samples: int, limit: int
    ) -> tuple[_Cut, int]:
        """Where the last frame (starting at `last`) ends: where its CRC-16 checks and the call ends or the
        next file starts. No such place: a partial final frame, or garbage if one more byte than any frame
        could hold follows or text follows a complete frame."""
        n = self.n
        cap = info.max_frame or (info.max_block or 65535) * info.channels * ((info.bits + 7) // 8) + 64
        cap += 16
        ends = _crc16_ends(self.buf, last, min(limit, last + cap), last + header[3] + 2)
        end = next((e for e in ends if e in (limit, n) or self._starts_file(e)), None)
        if end is not None:
            cut.end, cut.audio = end, True
            if info.total and samples < info.total:
                cut.truncated = True
                cut.notes.append(f"the FLAC header announces {info.total} samples but only {samples} arrived")
            return cut, end
        # Is the last frame the file's final one? Then it is complete and whatever follows it is garbage. Known
        # from the total in STREAMINFO or, in a fixed-blocksize stream, from a block shorter than the others.
        fixed = not header[2] and info.min_block == info.max_block
        final = samples >= info.total if info.total else fixed and header[0] < info.max_block
        if ends and (final or _text_kind(self.buf[ends[0] : ends[0] + 4096])):
            raise self._garbage(ends[0])
        if limit - last > cap:
            raise self._garbage(ends[0] if ends else last + cap)
        cut.audio = index > 0
        return self._drop(cut, last, limit)

    def _next_flac(self, a: int) -> int:
        """Start of the next `fLaC` + STREAMINFO block header after `a`, or the end."""
        buf, n = self.buf, self.n
        i = buf.find(b"fLaC", a)
        while i >= 0:
            if i + 8 <= n and buf[i + 4] & 0x7F == 0 and buf.startswith(b"\x00\x00\x22", i + 5):
                return i
            i = buf.find(b"fLaC", i + 1)
        return n
