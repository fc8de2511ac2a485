"""Tags that taggers put before, between or after audio frames: ID3v2 (leading or appended), ID3v1, APE.

They carry no speech: a walker keeps them with their file (mp3/ADTS) or skips them (before other formats).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..segments import Walk
    from .base import Cut


def after_id3v2(buf: bytes, p: int) -> int:
    """Position after the ID3v2 tags at `p` (`p` itself if there is none), -1 if a tag runs past the end."""
    while True:
        size = id3v2_size(buf, p)
        if size == 0:
            return p
        if size < 0 or p + size > len(buf):
            return -1
        p += size


def id3v2_size(buf: bytes, p: int) -> int:
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


def ape_size(buf: bytes, p: int) -> int:
    """Total size of an APE tag whose header is at `p`; 0 if it is not one."""
    if p + 32 > len(buf):
        return 0
    version, size, _items, flags = struct.unpack_from("<IIII", buf, p + 8)
    if version not in (1000, 2000) or size < 32 or not flags & 0x20000000 or any(buf[p + 24 : p + 32]):
        return 0
    return 32 + size  # size counts the items and the footer, not the header


def trailing_tags(w: Walk, cut: Cut, p: int) -> tuple[Cut, int]:
    """ID3v1 and APE tags at the end of an mp3/ADTS file belong to it."""
    buf, n = w.buf, w.n
    cut.end = p
    while p < n:
        if buf.startswith(b"TAG", p):
            size = 128
        elif buf.startswith(b"APETAGEX", p) and (size := ape_size(buf, p)):
            pass
        else:
            break
        if p + size > n:
            return w.drop(cut, p, n, "an incomplete tag")
        p += size
        cut.end = p
    return cut, p
