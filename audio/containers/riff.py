"""RIFF/WAVE (and RF64): chunks before the samples, the data chunk, chunks after it (LIST, id3 ...).

Streaming writers leave placeholder sizes (0, 0xFFFFFFFF): such a file ends at the next `RIFF....WAVE` or
at the end of the call. Every WAV returned gets a rewritten header with exact sizes (fmt + data only).
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING

from .base import LE32, U16LE, U32LE, Cut

if TYPE_CHECKING:
    from ..segments import Walk

_CODECS = {1: (8, 16, 24, 32), 3: (32, 64), 6: (8,), 7: (8,)}  # PCM, IEEE float, A-law, mu-law
_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_CHUNK_ID = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9 _.\-]{3}")


def starts(buf: bytes, p: int) -> bool:
    return p + 12 <= len(buf) and buf.startswith((b"RIFF", b"RF64"), p) and buf.startswith(b"WAVE", p + 8)


def is_chunk_id(buf: bytes, p: int) -> bool:
    return p + 8 <= len(buf) and _CHUNK_ID.match(buf, p) is not None


def header(fmt_body: bytes, data_len: int) -> bytes:
    """A canonical RIFF/WAVE header (fmt, then data of `data_len` bytes)."""
    fmt_pad = len(fmt_body) & 1
    riff = 4 + 8 + len(fmt_body) + fmt_pad + 8 + data_len + (data_len & 1)
    return b"".join(
        (b"RIFF", LE32(riff), b"WAVE", b"fmt ", LE32(len(fmt_body)), fmt_body, b"\0" * fmt_pad, b"data")
    ) + LE32(data_len)


def walk(w: Walk, start: int, body: int) -> tuple[Cut, int]:
    buf, n = w.buf, w.n
    rf64 = buf.startswith(b"RF64", body)
    riff_size = U32LE(buf, body + 4)[0]
    incomplete = Cut("wav", body, body, 0, 0, truncated=True), n
    q = body + 12
    fmt_body: bytes | None = None
    ds64_data: int | None = None
    while True:  # the chunks before the samples
        if q + 8 > n:
            return incomplete
        cid, size = buf[q : q + 4], U32LE(buf, q + 4)[0]
        if cid == b"data":
            break
        if not is_chunk_id(buf, q):
            raise w.bad("wav", f"a WAV header is corrupt: no valid chunk at byte {q - body} of the file")
        nxt = q + 8 + size
        if nxt > n:
            return incomplete
        if cid == b"fmt ":
            fmt_body = buf[q + 8 : nxt]
        elif cid == b"ds64" and rf64 and size >= 16:
            ds64_data = struct.unpack_from("<Q", buf, q + 16)[0]
        if size & 1 and not (is_chunk_id(buf, nxt) and not is_chunk_id(buf, nxt + 1)):
            nxt += 1  # the pad byte of an odd-sized chunk (some writers omit it)
        q = nxt
    if fmt_body is None:
        raise w.bad("wav", "a WAV file has no fmt chunk before its samples")
    rate, channels, align = _format(w, fmt_body)
    data_start = q + 8
    if rf64 and size == 0xFFFFFFFF and ds64_data is not None:
        declared, streamed = ds64_data, ds64_data in (0, 0xFFFFFFFFFFFFFFFF)
    else:  # 0 and 0xFFFFFFFF are the usual placeholders of streaming writers; 0x7FFFFFFF-ish ones exist too
        declared, streamed = size, size == 0 or size >= 0x7FFFF000
    cut = Cut("wav", data_start, data_start, rate, channels)
    declared_end = data_start + declared
    next_wav = _next_wav(buf, data_start, n if streamed else min(n, declared_end))
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
            cut.notes.append(f"the WAV header declares {declared} bytes of samples but only {n - data_start} arrived")
    if not exact and data_end == n:
        w.reject_text_tail(data_start, n)  # streamed samples run to the end: no error body may hide there
    usable = data_end - data_start
    if rem := usable % align:
        cut.truncated = True
        cut.notes.append(f"dropped {rem} bytes of a partial final sample frame")
        usable -= rem
    if usable > 0xFFFFFFFF - 256:
        raise w.bad("wav", "a WAV file is larger than 4 GiB", unusable=True)
    cut.end = data_start + usable
    cut.audio = usable > 0
    cut.head = header(_canonical_fmt(fmt_body), usable)
    cut.tail = b"\0" * (usable & 1)
    p = data_end
    if exact:
        if declared & 1 and p < n and buf[p] == 0:
            p += 1
        p = _trailer(w, body, riff_size if not rf64 else 0, p)
    return cut, p


def _format(w: Walk, fmt: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, block align) from a fmt chunk; InvalidAudio if unsupported.

    PCM may have any depth from 1 to 32 bits: RIFF stores it left-justified in whole bytes (12 bits in 16,
    20 in 24), which is how it is then read; `canonical_fmt` writes the container depth."""
    if len(fmt) < 16:
        raise w.bad("wav", "a WAV fmt chunk is too short")
    tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", fmt)
    codec = tag
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the codec is the first field of the sub-format GUID
        if len(fmt) < 40 or fmt[26:40] != _KSDATAFORMAT_TAIL:
            raise w.bad("wav", "a WAVE_FORMAT_EXTENSIBLE header has an unknown sub-format", unusable=True)
        codec = U16LE(fmt, 24)[0]
    if codec not in _CODECS:
        raise w.bad(
            "wav",
            f"WAV audio with codec 0x{codec:04x} is not supported (use PCM 8/16/24/32-bit or float)",
            unusable=True,
        )
    container = -(-bits // 8) * 8 if codec == 1 and 0 < bits <= 32 else bits  # 12-bit samples in 16-bit words
    if container not in _CODECS[codec] or not channels or not rate:
        raise w.bad("wav", f"a WAV header is invalid: {channels} channel(s), {rate} Hz, {bits} bits", unusable=True)
    if align != channels * container // 8:
        raise w.bad(
            "wav",
            f"a WAV header is inconsistent: block align {align} for {channels} channel(s) of {bits} bits",
            unusable=True,
        )
    return rate, channels, align


def _canonical_fmt(fmt: bytes) -> bytes:
    """The fmt chunk with bits per sample rounded up to the container (whole bytes), so that every reader
    takes 12-bit samples in 16-bit words as 16-bit samples; a WAVE_FORMAT_EXTENSIBLE header keeps its count
    of valid bits."""
    bits = U16LE(fmt, 14)[0]
    if not bits % 8:
        return fmt
    return fmt[:14] + struct.pack("<H", -(-bits // 8) * 8) + fmt[16:]


def _next_wav(buf: bytes, a: int, b: int) -> int:
    """Start of the first `RIFF....WAVE` in [a, b), or b."""
    n = len(buf)
    limit = min(n, b + 12)
    i = buf.find(b"WAVE", a + 8, limit)
    while i >= 0:
        s = i - 8
        if buf.startswith((b"RIFF", b"RF64"), s) and (s + 16 > n or is_chunk_id(buf, s + 12)):
            return s
        i = buf.find(b"WAVE", i + 1, limit)
    return b


def _trailer(w: Walk, body: int, riff_size: int, p: int) -> int:
    """Skip the chunks after the samples (LIST, id3...): to the RIFF end if it is plausible, else chunk by
    chunk while whole chunks follow."""
    buf, n = w.buf, w.n
    riff_end = body + 8 + riff_size if riff_size not in (0, 0xFFFFFFFF) else 0
    if p <= riff_end <= n and (riff_end == n or w.starts_file(riff_end)):
        return riff_end
    while is_chunk_id(buf, p) and not w.starts_file(p):
        size = U32LE(buf, p + 4)[0]
        end = p + 8 + size
        if end > n:
            return n if end <= riff_end else p  # metadata cut off by the end of the call: nothing to decode
        p = end + (1 if size & 1 and end < n and buf[end] == 0 else 0)
    return p
