"""What every container walker shares: the `Cut` it returns, byte readers and the text-tail detector.

A walker (one module per container: mp3, adts, riff, ogg, flac) gets the joined bytes of one call through a
`Walk` (audio.segments) and the position of a file, and returns the `Cut` it found and where the next file
starts. Interface, per module: `starts(buf, p) -> bool` (a file/frame of this format starts at p) and
`walk(w, start, body) -> (Cut, next position)` (`start` = where leading ID3v2 tags begin, `body` = the first
byte of the format's own structure).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

from ..model import AudioFile

U16BE = struct.Struct(">H").unpack_from
U32BE = struct.Struct(">I").unpack_from
U16LE = struct.Struct("<H").unpack_from
U32LE = struct.Struct("<I").unpack_from
LE32 = struct.Struct("<I").pack

JSON_START = re.compile(rb'\{\s*"')
MARKUP_START = re.compile(rb"<!doctype html|<html|<\?xml", re.IGNORECASE)


@dataclass
class Cut:
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
    skips: list[tuple[int, int]] = field(default_factory=list)  # [a, b) ranges inside the file left out
    rates: set[int] = field(default_factory=set)  # every sample rate of the frames (mp3/ADTS streams)
    layouts: set[int] = field(default_factory=set)  # every channel count of the frames

    def to_audio_file(self, buf: bytes, call_index: int, file_index: int) -> AudioFile:
        view = memoryview(buf)
        if self.skips:
            pieces, p = [], self.start
            for a, b in self.skips:
                pieces.append(view[p:a])
                p = b
            pieces.append(view[p : self.end])
            data = b"".join((self.head, *pieces, self.tail))
        elif self.head or self.tail:
            data = b"".join((self.head, view[self.start : self.end], self.tail))
        else:
            data = buf[self.start : self.end]  # the whole input is returned as is, without a copy
        changes = len(self.rates) > 1 or len(self.layouts) > 1
        return AudioFile(
            data=data,
            fmt=self.fmt,
            sample_rate=max(self.rates) if changes else self.sample_rate,
            channels=max(self.layouts) if changes else self.channels,
            call_index=call_index,
            file_index=file_index,
            truncated=self.truncated,
            note="; ".join(self.notes),
            reconfigures=changes,
        )


def text_tail(buf: bytes, a: int, b: int) -> int | None:
    """Where a JSON/HTML/XML error body that ends buf[a:b] starts (searched in the last 64 KiB), if any.

    Streamed WAV samples and a cut-off last frame are opaque bytes: this is what tells a provider's error
    body appended to them from audio."""
    lo = max(a, b - 65536)
    seg = buf[lo:b]
    end = seg.rstrip()
    if end.endswith(b"}"):
        for k, m in enumerate(JSON_START.finditer(seg)):
            if k == 32:
                break
            try:
                json.loads(seg[m.start() :].decode("utf-8"))
            except ValueError:  # UnicodeDecodeError is a ValueError
                continue
            return lo + m.start()
    if end.endswith(b">") and (m := MARKUP_START.search(seg)):
        try:
            seg[m.start() :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return lo + m.start()
    return None
