"""AAC in ADTS frames: each frame carries a 7/9-byte header with its length, rate and channel layout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Cut
from .metadata import trailing_tags

if TYPE_CHECKING:
    from ..segments import Walk

_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def frame_header(buf: bytes, p: int) -> tuple[int, int, int] | None:
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
    return length, _RATES[rate_index], 8 if config == 7 else config


def starts(buf: bytes, p: int) -> bool:
    return frame_header(buf, p) is not None


def walk(w: Walk, start: int, body: int) -> tuple[Cut, int]:
    buf, n = w.buf, w.n
    first = frame_header(buf, body)
    assert first is not None
    cut = Cut("aac", start, body, first[1], first[2])
    p = last = body
    audio_before_last = False  # cut.audio before the last frame (if that frame is dropped)
    while p < n:
        frame = frame_header(buf, p)
        if frame is None:
            resumed = w.resume("aac", cut, last, p, audio_before_last)
            if resumed is None:
                break
            p, same = resumed  # junk skipped (with a note) after a confident resync
            if not same:
                return cut, p  # the last frame was cut off by the next file
            continue
        length, rate, channels = frame
        if p + length > n:
            return w.drop(cut, p, n)
        last, audio_before_last = p, cut.audio
        cut.audio = True
        cut.rates.add(rate)  # a change of rate or layout without a new file header: the same stream goes on
        cut.layouts.add(channels)
        p += length
    return trailing_tags(w, cut, p)
