"""Tags that taggers put before, between or after audio frames: ID3v2 (leading or appended), ID3v1, APE.

They carry no speech: a walker keeps them with their file (mp3/ADTS) or skips them (before other formats).
"""

from __future__ import annotations

import re
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


_APE_ITEM = re.compile(rb"[\x00-\xff]{4}[\x00-\x07]\x00\x00\x00[\x20-\x7e]{2,255}\x00", re.DOTALL)


def ape_footer_tag_size(buf: bytes, p: int, limit: int = 1 << 20) -> int:
    """Size of an APEv2 tag without header that starts at `p` (items, then the footer that says how long
    they are: the usual layout); 0 if none. The footer is searched only when an APE item starts at `p`
    (value size, flags, ASCII key, NUL), so that junk costs no search."""
    if not _APE_ITEM.match(buf, p):
        return 0
    i = buf.find(b"APETAGEX", p, p + limit)
    while i >= 0:
        if i + 32 <= len(buf):
            version, size, _items, flags = struct.unpack_from("<IIII", buf, i + 8)
            if version in (1000, 2000) and not flags & 0x20000000 and i + 32 - size == p:
                return size
        i = buf.find(b"APETAGEX", i + 1, p + limit)
    return 0


_LYRICS_DIGITS = re.compile(rb"[0-9]{6}LYRICS200")


def lyrics3_size(buf: bytes, p: int) -> int:
    """Size of the Lyrics3 v1 (`LYRICSBEGIN` … `LYRICSEND`, ≤ 5100 bytes) or v2 (`LYRICSBEGIN` … six-digit size,
    `LYRICS200`) tag at `p`; 0 if none or cut short."""
    if not buf.startswith(b"LYRICSBEGIN", p):
        return 0
    for m in _LYRICS_DIGITS.finditer(buf, p + 11, p + 1_000_015):
        if int(m[0][:6]) == m.start() - p:
            return m.end() - p
    end = buf.find(b"LYRICSEND", p + 11, p + 5100 + 9)
    return end + 9 - p if end >= 0 else 0


def tag_size(buf: bytes, p: int) -> int:
    """Size of the trailing tag at `p` (ID3v1, APEv2 with or without header, Lyrics3 v1/v2, an appended ID3v2);
    0 if none; -1 if one starts there but is cut short by the end."""
    n = len(buf)
    if buf.startswith(b"TAG", p):
        return 128 if p + 128 <= n else -1
    if buf.startswith(b"APETAGEX", p):
        size = ape_size(buf, p)
        return size if size and p + size <= n else (-1 if n - p < 64 or size else 0)
    if buf.startswith(b"LYRICSBEGIN", p):
        return lyrics3_size(buf, p) or -1
    if buf.startswith(b"ID3", p):
        size = id3v2_size(buf, p)
        return size if size <= 0 or p + size <= n else -1
    return ape_footer_tag_size(buf, p, min(n - p, 1 << 20))


def trailing_tags(w: Walk, cut: Cut, p: int) -> tuple[Cut, int]:
    """Skip the ID3v1, APE and Lyrics3 tags after an mp3/ADTS file's last frame: they carry no speech and are
    left out of the file (ffmpeg's decoder reports "Header missing" on a footer-only APE tag, Lyrics3 and an
    appended ID3v2 tag). An ID3v2 tag there starts the next file, or is skipped by the walk at the end."""
    buf, n = w.buf, w.n
    cut.end = p
    while p < n:
        if w.starts_file(p):
            break
        size = tag_size(buf, p)
        if size == 0:
            break
        if size < 0 or p + size > n:
            return w.drop(cut, p, n, "an incomplete tag")
        p += size
    return cut, p
