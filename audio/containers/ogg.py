"""Ogg pages (Opus, Vorbis, FLAC-in-Ogg): a file ends at a BOS page after data pages (chained streams)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import U32LE, Cut
from .flac import streaminfo

if TYPE_CHECKING:
    from ..segments import Walk


def starts(buf: bytes, p: int) -> bool:
    return p + 5 <= len(buf) and buf.startswith(b"OggS", p) and buf[p + 4] == 0


def walk(w: Walk, start: int, body: int) -> tuple[Cut, int]:
    buf, n = w.buf, w.n
    cut = Cut("ogg", body, body, 0, 0)
    serials: set[int] = set()
    ended: set[int] = set()
    data_pages = False
    p = body
    while p < n and buf.startswith(b"OggS", p):
        if p + 27 > n or p + 27 + buf[p + 26] > n:
            return w.drop(cut, p, n, "a partial final Ogg page")
        if buf[p + 4] != 0:
            break
        flags = buf[p + 5]
        granule = buf[p + 6 : p + 14]
        serial = U32LE(buf, p + 14)[0]
        segments = p + 27 + buf[p + 26]
        end = segments + sum(buf[p + 27 : segments])
        if end > n:
            return w.drop(cut, p, n, "a partial final Ogg page")
        if flags & 2:  # beginning of a logical stream
            if data_pages:
                break  # a chained stream: the next file
            if p == body:
                cut.sample_rate, cut.channels = _codec(w, buf[segments:end])
            serials.add(serial)
        elif p == body:
            raise w.bad("ogg", "Ogg data does not start with a stream header page (BOS)")
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


def _codec(w: Walk, packet: bytes) -> tuple[int, int]:
    if packet.startswith(b"OpusHead") and len(packet) >= 19:
        rate, channels = 48000, packet[9]  # Opus always decodes at 48 kHz
    elif packet.startswith(b"\x01vorbis") and len(packet) >= 30:
        rate, channels = U32LE(packet, 12)[0], packet[11]
    elif packet.startswith(b"\x7fFLAC") and len(packet) >= 51 and packet[9:13] == b"fLaC":
        info = streaminfo(packet[17:51])
        rate, channels = info.rate, info.channels
    else:
        raise w.bad("ogg", "an Ogg stream's codec is not supported (expected Opus, Vorbis or FLAC)", unusable=True)
    if not rate or not channels:
        raise w.bad("ogg", f"an Ogg stream header is invalid: {channels} channel(s), {rate} Hz", unusable=True)
    return rate, channels
