"""FLAC: `fLaC`, metadata blocks (STREAMINFO first), then frames without a length field.

Each next frame is found by its sync code, CRC-8 header and consecutive number; the last frame ends where
its CRC-16 checks and the call ends or the next file starts.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import U16BE, Cut

if TYPE_CHECKING:
    from ..segments import Walk


def starts(buf: bytes, p: int) -> bool:
    return buf.startswith(b"fLaC", p)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    min_block: int
    max_block: int
    max_frame: int
    rate: int
    channels: int
    bits: int
    total: int  # samples per channel; 0 = unknown (a streamed FLAC)


def streaminfo(si: bytes) -> StreamInfo:
    min_block, max_block = struct.unpack_from(">HH", si)
    packed = int.from_bytes(si[10:18], "big")
    return StreamInfo(
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


def _frame(buf: bytes, p: int, end: int, info: StreamInfo) -> tuple[int, int, int, int] | None:
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
        block = U16BE(buf, q)[0] + 1
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


def walk(w: Walk, start: int, body: int) -> tuple[Cut, int]:
    buf, n = w.buf, w.n
    p = body + 4
    info: StreamInfo | None = None
    while True:  # metadata blocks
        if p + 4 > n:
            return Cut("flac", body, body, 0, 0, truncated=True), n
        kind, length = buf[p] & 0x7F, int.from_bytes(buf[p + 1 : p + 4], "big")
        if kind == 127 or (info is None and (kind != 0 or length != 34)):
            raise w.bad("flac", "a FLAC file does not start with a valid STREAMINFO block")
        if p + 4 + length > n:
            return Cut("flac", body, body, 0, 0, truncated=True), n
        if info is None:
            info = streaminfo(buf[p + 4 : p + 38])
            if not info.rate:
                raise w.bad("flac", "a FLAC STREAMINFO block has a sample rate of 0", unusable=True)
        last = buf[p] & 0x80
        p += 4 + length
        if last:
            break
    cut = Cut("flac", body, p, info.rate, info.channels)
    limit = _next(w, p)
    if p == limit:
        return cut, p
    header = _frame(buf, p, limit, info)
    if header is None or header[1] != 0:
        if limit == n and n - p < 16:
            return w.drop(cut, p, n)
        raise w.garbage(p)
    # Frames carry no length: find each next header (sync, CRC-8, consecutive number) after the last one.
    last, last_header, index, samples = p, header, 0, 0
    search = p + header[3]
    while (m := _FLAC_SYNC.search(buf, search, limit)) is not None:
        c = m.start()
        h = _frame(buf, c, limit, info)
        expected = samples + last_header[0] if header[2] else index + 1
        if h is not None and h[2] == header[2] and h[1] == expected:
            samples += last_header[0]
            index += 1
            last, last_header = c, h
            search = c + h[3]
        else:
            search = c + 1
    return _end(w, cut, info, last, last_header, index, samples + last_header[0], limit)


def _end(
    w: Walk, cut: Cut, info: StreamInfo, last: int, header: tuple, index: int, samples: int, limit: int
) -> tuple[Cut, int]:
    """Where the last frame (starting at `last`) ends: where its CRC-16 checks and the call ends or the
    next file starts. No such place: a partial final frame, or garbage if one more byte than any frame
    could hold follows or text follows a complete frame."""
    n = w.n
    cap = info.max_frame or (info.max_block or 65535) * info.channels * ((info.bits + 7) // 8) + 64
    cap += 16
    ends = _crc16_ends(w.buf, last, min(limit, last + cap), last + header[3] + 2)
    end = next((e for e in ends if e in (limit, n) or w.starts_file(e)), None)
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
    if ends and (final or w.text_kind(w.buf[ends[0] : ends[0] + 4096])):
        raise w.garbage(ends[0])
    if limit - last > cap:
        raise w.garbage(ends[0] if ends else last + cap)
    cut.audio = index > 0
    return w.drop(cut, last, limit)


def _next(w: Walk, a: int) -> int:
    """Start of the next `fLaC` + STREAMINFO block header after `a`, or the end."""
    buf, n = w.buf, w.n
    i = buf.find(b"fLaC", a)
    while i >= 0:
        if i + 8 <= n and buf[i + 4] & 0x7F == 0 and buf.startswith(b"\x00\x00\x22", i + 5):
            return i
        i = buf.find(b"fLaC", i + 1)
    return n
