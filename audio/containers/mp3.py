"""MPEG audio Layer III ("mp3"): frame headers and the frame walk.

A file is an optional ID3v2 tag, an optional Xing/Info/VBRI header frame, frames, optional trailing tags.
Frames carry their own length, so the walk hops from header to header; a file ends at the next ID3v2 tag or
header frame, or after an ID3v1/APE/Lyrics3 trailer. A change of sample rate or channel count without such a
header is one stream to a decoder (ffmpeg's decoder follows it), so it stays one file: no pause, no seam in
the middle of a sentence. Junk between frames is skipped only after a confident resync (audio.containers.
resync), with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cooperate import cooperate
from .base import U32BE, Cut
from .metadata import trailing_tags

if TYPE_CHECKING:
    from ..segments import Walk


@dataclass(frozen=True, slots=True)
class Mpeg:
    length: int  # 0 = free format
    rate: int
    channels: int
    vbr_offset: int  # where a Xing/Info tag would sit, from the frame start


_BITRATES = (
    (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 Layer III
    (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2 and 2.5 Layer III
)
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_CACHE: dict[int, Mpeg] = {}  # at most a few thousand valid header variants
VBR_TAGS = (b"Xing", b"Info")


def frame_header(header: int) -> Mpeg | None:
    """Parse a 32-bit MPEG-1/2/2.5 Layer III frame header; None if it is not one."""
    key = header & 0xFFFFFEC0  # ignore the private, mode-extension, copyright, original and emphasis bits
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    version = (key >> 19) & 3  # 0 = MPEG-2.5, 1 reserved, 2 = MPEG-2, 3 = MPEG-1
    bitrate_index = (key >> 12) & 0xF
    rate_index = (key >> 10) & 3
    if (key >> 21) != 0x7FF or version == 1 or (key >> 17) & 3 != 1 or bitrate_index == 15 or rate_index == 3:
        return None
    mpeg1 = version == 3
    rate = _RATES[version][rate_index]
    channels = 1 if (key >> 6) & 3 == 3 else 2
    kbps = _BITRATES[0 if mpeg1 else 1][bitrate_index]
    length = ((144 if mpeg1 else 72) * kbps * 1000 // rate + ((key >> 9) & 1)) if kbps else 0
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    frame = Mpeg(length, rate, channels, 4 + (0 if key & 0x10000 else 2) + side_info)
    _CACHE[key] = frame
    return frame


def starts(buf: bytes, p: int) -> bool:
    return p + 4 <= len(buf) and buf[p] == 0xFF and frame_header(U32BE(buf, p)[0]) is not None


def walk(w: Walk, start: int, body: int) -> tuple[Cut, int]:
    buf, n = w.buf, w.n
    first = frame_header(U32BE(buf, body)[0])
    assert first is not None  # starts() said so
    if not first.length:
        raise w.bad("mp3", "free-format mp3 (no bitrate in the frame headers) is not supported", unusable=True)
    cut = Cut("mp3", start, body, first.rate, first.channels)
    p = last = body
    audio_before_last = False  # cut.audio before the last frame (if that frame is dropped)
    count = 0
    while p + 4 <= n:
        count += 1
        if count % 256 == 0:
            cooperate()  # a long call (MBs of frames) must not hold the gevent hub
        frame = frame_header(U32BE(buf, p)[0])
        if frame is None or not frame.length:
            resumed = w.resume("mp3", cut, last, p, audio_before_last)
            if resumed is None:
                break
            p, same = resumed  # junk skipped (with a note) after a confident resync
            if not same:
                return cut, p  # the last frame was cut off by the next file
            continue
        vbr_header = buf.startswith(VBR_TAGS, p + frame.vbr_offset) or buf.startswith(b"VBRI", p + 36)
        if p > body and vbr_header:
            break  # the next file starts here
        end = p + frame.length
        if end > n:
            return w.drop(cut, p, n)
        last, audio_before_last = p, cut.audio
        if not vbr_header:  # a change of rate or channels without a new header: the same stream goes on
            cut.audio = True
            cut.rates.add(frame.rate)
            cut.layouts.add(frame.channels)
        p = end
    return trailing_tags(w, cut, p)
