"""Cut one TTS call's chunk stream back into complete audio files.

Providers cut their audio anywhere: one mp3 file per sentence sliced into 1 KiB chunks, random fragments of
one continuous stream, one complete file per chunk, WAVs streamed with placeholder sizes, Ogg, FLAC, ADTS.
Joining the bytes and decoding once plays WAV headers as clicks, hits decoder errors at every file boundary
and keeps each inner file's encoder delay and padding. So `split_call` joins the chunks once and walks the
*structure* (mp3/ADTS frames, RIFF chunks, Ogg pages, FLAC metadata and frames), never the chunk boundaries,
and returns every complete file on its own, to be decoded separately with the forced demuxer `AudioFile.fmt`.
The containers themselves are read by audio/containers/ (one module per format, `sniff` picks one); this
module joins the chunks and runs the walk from file to file.

Rules the walk follows (forgiving with containers, strict with content):
- A file may start with ID3v2 tags (kept with an mp3/ADTS file, dropped before other formats). After a
  file's first frame everything must be frames or trailing tags (ID3v1, APE, Lyrics3, an appended ID3v2:
  left out of the file), the start of the next file (any supported format), or a partial final frame: a
  valid header whose frame runs past the end of the call (dropped, the file is marked `truncated` with a
  note).
- Other bytes (junk before the first frame, between frames, between files) are skipped only where audio
  confidently resumes after them (containers.resync: several consistent frame headers or a new file
  header), with a note naming their size and position; a few stray bytes after a complete WAV too. Bytes
  that read like an error reply (JSON, HTML/XML, text) and bytes after which no audio resumes raise
  InvalidAudio: data is never cut off silently.
- mp3 files end at an ID3v2 tag, a Xing/Info/VBRI header frame, or after a trailing tag. Frames of one
  stream without such markers stay one file, even across a change of sample rate or channel count (one
  stream to a decoder; `AudioFile.reconfigures`). ADTS the same (without Xing). WAV files end where their
  data chunk says, or, for streamed sizes, at the next `RIFF....WAVE` or the end; each WAV gets a rewritten
  header with exact sizes. Ogg files end at a BOS page after data pages (chained streams). FLAC files end
  at the next `fLaC`+STREAMINFO; the last frame is checked with its CRC-16.
- Sizes read from headers are never trusted beyond the bytes that arrived; every loop moves forward.
- Work is linear: one join, forward walks and C-level searches. The files are one more copy of the input.
"""

from __future__ import annotations

from collections.abc import Iterable

from .containers import CONTAINERS
from .containers.base import Cut, text_tail
from .containers.metadata import after_id3v2, id3v2_size, tag_size
from .containers.resync import error_text, resync
from .containers.sniff import UNUSABLE, format_at, not_audio_message, partial_start, sniff, text_kind
from .errors import InvalidAudio, printable_preview
from .model import AUDIO_FORMATS, AudioFile

__all__ = ["Walk", "sniff", "split_call"]

MAX_GAP_NOTES = 3  # gaps reported one by one in a call; the rest in one summary note
STRAY_TAIL = 1024  # bytes after a complete WAV file accepted as stray metadata (if they read like no error)


def split_call(chunks: Iterable[bytes], call_index: int) -> list[AudioFile]:
    """The complete audio files contained in one TTS call's chunks, in order.

    Empty chunks are ignored. Raises InvalidAudio (naming the call, what the bytes look like and a preview)
    when the call holds no audio, something other than audio, or audio followed by data that is not audio.
    """
    buf = _join(chunks, call_index)
    kind = sniff(buf)
    walk = Walk(buf, call_index)
    start = 0
    if kind not in AUDIO_FORMATS:
        start = resync(buf, 0) if kind in _JUNK else None
        if start is None:
            raise InvalidAudio(
                call_index,
                not_audio_message(kind),
                sniffed=kind,
                preview=printable_preview(buf),
                retryable=kind not in UNUSABLE,
            )
        walk.skip(0, start, None, extend=False, what="before the first file")
    cuts = walk.run(start)
    return [cut.to_audio_file(buf, call_index, i) for i, cut in enumerate(cuts)]


_JUNK = ("unknown binary", "ID3 tag followed by unknown data")  # what may be junk before audio


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


class Walk:
    """The walk over one call's joined bytes, file by file; container walkers call back into it for errors."""

    def __init__(self, buf: bytes, call_index: int) -> None:
        self.buf = buf
        self.n = len(buf)
        self.call = call_index
        self.cuts: list[Cut] = []
        self.pending: list[str] = []  # notes about skipped bytes and empty files, for the next file kept
        self.gaps = 0  # gaps skipped (see `skip`)
        self.more_gaps = (0, 0)  # (count, bytes) of the gaps beyond MAX_GAP_NOTES

    def run(self, pos: int = 0) -> list[Cut]:
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
        if self.more_gaps[0]:
            count, size = self.more_gaps
            self.cuts[-1].notes.append(f"skipped {size} bytes that are not audio in {count} more gaps")
        return self.cuts

    # -- dispatch and errors ------------------------------------------------------------------------------

    def _file_at(self, start: int) -> int:
        """Walk the file starting at `start` (after optional ID3v2 tags); return where the next one starts."""
        buf, n = self.buf, self.n
        body = after_id3v2(buf, start)
        if body < 0:
            return self._cut_short(start, "an incomplete ID3v2 tag")
        if body < n and format_at(buf, body) is None:
            after = self._after_tags(body)  # an appended ID3v2 tag, then ID3v1/APE/Lyrics3: no speech in them
            if after == n or (after > body and self.starts_file(after)):
                body = start = after
        if body == n:  # only tags left
            if self.cuts:
                return n  # tags appended after the last file: left out
            return self._cut_short(start, "an ID3v2 tag without audio after it")
        fmt = format_at(buf, body)
        if fmt is None:
            return self._not_audio(start, body)
        cut, end = CONTAINERS[fmt].walk(self, start, body)
        if cut.audio:
            cut.notes[:0] = self.pending
            self.pending = []
            self.cuts.append(cut)
        elif cut.truncated and end >= n:
            return self._cut_short(start, f"an incomplete {fmt} file")
        else:
            self.pending.append(f"skipped {end - start} bytes: a {fmt} file without audio")
        return end

    def _after_tags(self, p: int) -> int:
        """Position after the complete known tags at `p` (ID3v2, ID3v1, APE, Lyrics3)."""
        while p < self.n and (size := tag_size(self.buf, p)) > 0:
            p += size
        return p

    def _not_audio(self, start: int, body: int) -> int:
        """Bytes at `body` that start no file: a cut-off start, junk before a confident resync (skipped with a
        note), a few stray bytes after a complete WAV, or garbage (InvalidAudio)."""
        if partial_start(self.buf, body):
            return self._cut_short(start, "an incomplete frame or header")
        q = resync(self.buf, body)
        last = self.cuts[-1] if self.cuts else None
        if q is not None:
            self.skip(start, q, last, extend=False)  # with the ID3v2 tag at `start` if there is one
            return q
        if last is not None and last.fmt == "wav" and not last.truncated and self.n - body <= STRAY_TAIL:
            self.skip(start, self.n, last, extend=False, what="after the WAV file", text_is_error=False)
            return self.n
        raise self.garbage(body)

    def skip(
        self,
        a: int,
        b: int,
        cut: Cut | None,
        *,
        extend: bool = True,
        what: str = "",
        text_is_error: bool = True,
        note: str = "",
    ) -> None:
        """Leave buf[a:b] out (not audio, but audio resumes after it) with a note on `cut` (or on the next file
        kept); raise InvalidAudio instead if the bytes read like an error body (see `error_text`). `extend`:
        the gap is inside `cut`'s stream (excised from its bytes), else between files."""
        check = after_id3v2(self.buf, a) if id3v2_size(self.buf, a) > 0 else a  # an ID3v2 tag is no error text
        check = check if a <= check <= b else a
        off = error_text(self.buf[check:b], text_is_error=text_is_error)
        if off is not None:
            raise self.garbage(check + off, b)
        if extend and cut is not None:
            cut.skips.append((a, b))
        self.gaps += 1
        if self.gaps > MAX_GAP_NOTES:  # the warnings stay readable: further gaps are counted in one note
            self.more_gaps = (self.more_gaps[0] + 1, self.more_gaps[1] + b - a)
            return
        where = what or ("between the frames of one stream" if extend else "before the next file")
        note = note or f"skipped {b - a} bytes that are not audio at bytes {a}-{b - 1} of the call ({where})"
        if cut is not None:
            cut.notes.append(note)
        else:
            self.pending.append(note)

    def resume(
        self, fmt: str, cut: Cut, last: int, p: int, audio_before_last: bool
    ) -> tuple[int, bool] | None:
        """Where audio resumes after the bytes at `p` that are no frame header nor tag, the last frame having
        started at `last`: (position, whether it is `cut`'s stream going on), the gap skipped (see `skip`).
        None if no frame of `fmt` confidently follows (the walk then ends the file at `p`).

        The search starts inside the last frame: a confident start there means that frame was cut off (a
        stream cut at an arbitrary byte, then the next file or more of the stream); it is dropped with a note
        instead of swallowing the start of what follows. When the next file starts inside it, `cut` ends
        before that frame, and has audio only if it had before it (`audio_before_last`)."""
        if self.starts_file(p) or tag_size(self.buf, p) != 0:
            return None
        q = resync(self.buf, last + 4)
        if q is None:
            return None
        same = format_at(self.buf, q) == fmt
        if q >= p:
            if not same:
                return None  # junk before the next file: left to `_not_audio`
            self.skip(p, q, cut)
            return q, True
        self.skip(
            last,
            q,
            cut,
            extend=same,
            note=f"dropped {q - last} bytes of a frame cut off at byte {q} of the call by "
            + ("more frames of the stream" if same else "the next file"),
        )
        cut.truncated = True
        if not same:
            cut.end, cut.audio = last, audio_before_last
        return q, same

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

    def garbage(self, pos: int, end: int | None = None) -> InvalidAudio:
        """The error for bytes that are not audio from `pos` to the end (or to `end`, where audio resumes)."""
        if end is not None and end < self.n:
            rest = self.buf[pos : min(end, pos + 4096)]
            return InvalidAudio(
                self.call,
                f"the audio is interrupted by {end - pos} bytes that are not audio (bytes {pos}-{end - 1} of "
                f"{self.n}) and read like an error reply: the provider probably stopped in the middle of the "
                "text; they are rejected rather than skipped",
                sniffed=sniff(rest),
                preview=printable_preview(rest),
            )
        body = text_tail(self.buf, max(0, pos - 4096), self.n)  # an error body whose start looked like a frame
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

    def drop(self, cut: Cut, at: int, end: int, what: str = "a partial final frame") -> tuple[Cut, int]:
        """The file's last frame/page/tag, from `at` to `end`, is incomplete: keep the file up to `at`."""
        self.reject_text_tail(at, end)  # unless it hides an error body appended after a cut-off frame
        cut.end = at
        cut.truncated = True
        cut.notes.append(f"dropped {end - at} bytes of {what}")
        return cut, end

    def bad(self, fmt: str, message: str, *, unusable: bool = False) -> InvalidAudio:
        """A file of `fmt` that cannot be used; `unusable`: well-formed, in a variant not supported (not retried)."""
        return InvalidAudio(self.call, message, sniffed=fmt, retryable=not unusable)

    def starts_file(self, p: int) -> bool:
        return format_at(self.buf, p) is not None or id3v2_size(self.buf, p) != 0

    def reject_text_tail(self, a: int, b: int) -> None:
        """Raise if buf[a:b] ends with an error body (see `containers.base.text_tail`)."""
        found = text_tail(self.buf, a, b)
        if found is not None:
            raise self.garbage(found)

    @staticmethod
    def text_kind(data: bytes) -> str | None:
        return text_kind(data)
