"""Metadata and chapters for the finished file: one entry point, `write_tags`, one helper per format.

| format | tags (mutagen)                                    | chapters                                         |
|--------|---------------------------------------------------|--------------------------------------------------|
| mp3    | ID3v2.3: TIT2 TPE1 TALB COMM TDRC TLAN            | CHAP frames chp0… + one top-level ordered CTOC   |
| m4a    | ©nam ©ART ©alb ©cmt ©day                          | QuickTime chapter track, written by an ffmpeg    |
|        |                                                   | remux (-c copy) from an FFMETADATA1 file, before |
|        |                                                   | the mutagen tags                                 |
| ogg    | Vorbis comments TITLE ARTIST ALBUM COMMENT DATE   | CHAPTER001=HH:MM:SS.mmm, CHAPTER001NAME=title    |
| flac   | LANGUAGE                                          | (Xiph chapter extension, 001…999)                |
| wav    | ID3v2.3 chunk ("id3 "): TIT2 TPE1 TALB COMM TDRC  | not supported → note                             |

ID3v2.3, not 2.4: v2.3 is what every player, car stereo and OS file browser reads (Windows Explorer and
many hardware players ignore v2.4), and CHAP/CTOC are defined for both. mutagen stores TDRC as TYER+TDAT
in v2.3 and reads them back as TDRC. Tagging only prepends/resizes the ID3 tag: the Xing/Info + LAME
header (frame count, encoder delay/padding) is untouched, so duration and gapless playback are kept.

Every value is sanitized first: control characters become spaces, bidi overrides are dropped, runs of
whitespace collapse to one space, and each value is cut to 250 characters, so a tag parameter can never
start a new line/field (in the ffmetadata file, `=`, `;`, `#`, `\\` and newlines are escaped as well).
Chapters are sorted by start and clamped (start ≥ 0, end ≥ start); an empty title becomes "Chapter n".

The file is tagged as a copy next to it and swapped in with `os.replace`: if anything fails, the original
stays as it was and the failure is returned as a note (metadata is never worth losing a finished job).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import mutagen
from mutagen.flac import FLAC
from mutagen.id3 import (
    CHAP,
    COMM,
    CTOC,
    ID3,
    TALB,
    TDRC,
    TIT2,
    TLAN,
    TPE1,
    CTOCFlags,
    Encoding,
)
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from . import ffmpeg
from .errors import FFmpegError
from .model import Chapter, Tags

TAG_FORMATS = ("mp3", "m4a", "ogg", "flac", "wav")
MAX_FIELD_CHARS = 250
MAX_ID3_CHAPTERS = 255  # CTOC stores its entry count in one byte
MAX_VORBIS_CHAPTERS = 999  # CHAPTER001 … CHAPTER999

# ISO 639-1 → ISO 639-2/T for the languages people most often produce speech in. A 3-letter code is taken
# as given; anything else is "und" (undetermined) in the fields that need a code.
_ISO639_2 = {
    "ar": "ara", "bn": "ben", "ca": "cat", "cs": "ces", "da": "dan", "de": "deu", "el": "ell", "en": "eng",
    "es": "spa", "fa": "fas", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hu": "hun", "id": "ind",
    "it": "ita", "ja": "jpn", "ko": "kor", "ms": "msa", "nb": "nob", "nl": "nld", "no": "nor", "pl": "pol",
    "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk", "sv": "swe", "sw": "swa", "ta": "tam", "th": "tha",
    "tr": "tur", "uk": "ukr", "ur": "urd", "vi": "vie", "zh": "zho",
}  # fmt: skip

_WS = re.compile(r"\s+")
_DROP = re.compile(r"[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")  # bidi controls, BOM, surrogates
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ID3_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?)?)?")


def write_tags(path: Path, fmt: str, tags: Tags, chapters: list[Chapter]) -> list[str]:
    """Write `tags` and `chapters` into the audio file at `path` (in place). Returns notes for the user."""
    if fmt not in TAG_FORMATS:
        raise ValueError(f"write_tags: unsupported format {fmt!r}")
    path = Path(path)
    notes: list[str] = []
    fields = _clean_tags(tags, notes)
    marks = _clean_chapters(chapters)
    if not any(fields.values()) and not marks:
        return notes
    writer = _WRITERS[fmt]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tagging", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(path, tmp)
        writer(tmp, fields, marks, notes)
        os.replace(tmp, path)
    except (mutagen.MutagenError, FFmpegError, OSError, ValueError, struct.error) as exc:
        notes.append(f"{fmt}: tags not written ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
    finally:
        tmp.unlink(missing_ok=True)
    return notes


# ---------------------------------------------------------------------------------------------------------
# sanitizing


def clean_text(value: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    """One line of printable text, whitespace collapsed, at most `limit` characters; None when empty."""
    if value is None:
        return None
    text = _WS.sub(" ", _CONTROL.sub(" ", _DROP.sub("", str(value)))).strip()
    return text[:limit].rstrip() or None


def language_code(language: str | None) -> str | None:
    """ISO 639-2 code for "en", "en-US", "eng"…; "und" for anything else; None when no language is given."""
    if not language or not language.strip():
        return None
    primary = re.split(r"[-_\s]", language.strip().lower(), maxsplit=1)[0]
    if len(primary) == 2 and primary in _ISO639_2:
        return _ISO639_2[primary]
    if re.fullmatch(r"[a-z]{3}", primary):
        return primary
    return "und"


def _clean_tags(tags: Tags, notes: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("title", "artist", "album", "comment", "date", "language"):
        raw = getattr(tags, name)
        value = clean_text(raw)
        if value is not None and len(clean_text(raw, limit=10**9) or "") > MAX_FIELD_CHARS:
            notes.append(f"{name}: cut to {MAX_FIELD_CHARS} characters")
        out[name] = value
    return out


def _clean_chapters(chapters: list[Chapter]) -> list[tuple[int, int, str]]:
    """(start ms, end ms, title), sorted, start ≥ 0, end ≥ start, every title non-empty and clean."""
    marks = []
    for n, ch in enumerate(sorted(chapters, key=lambda c: c.start), start=1):
        start = max(0, round(ch.start * 1000))
        end = max(start, round(ch.end * 1000))
        marks.append((start, end, clean_text(ch.title) or f"Chapter {n}"))
    return marks


# ---------------------------------------------------------------------------------------------------------
# ID3 (mp3, wav)


def _id3_frames(tags: ID3, f: dict[str, str | None], notes: list[str], fmt: str) -> None:
    for frame_id in ("TIT2", "TPE1", "TALB", "COMM", "TDRC", "TYER", "TDAT", "TIME", "TLAN", "CHAP", "CTOC"):
        tags.delall(frame_id)
    enc = Encoding.UTF8  # mutagen converts to UTF-16 when saving v2.3
    for frame, value in ((TIT2, f["title"]), (TPE1, f["artist"]), (TALB, f["album"])):
        if value:
            tags.add(frame(encoding=enc, text=[value]))
    code = language_code(f["language"])
    if f["comment"]:
        lang = "eng" if code is None else code
        tags.add(COMM(encoding=enc, lang=lang, desc="", text=[f["comment"]]))
    if f["date"]:
        if _ID3_DATE.fullmatch(f["date"]):
            tags.add(TDRC(encoding=enc, text=[f["date"]]))
        else:
            notes.append(f"{fmt}: date {f['date']!r} is not YYYY[-MM[-DD]]; not written")
    if code and code != "und":
        tags.add(TLAN(encoding=enc, text=[code]))
    elif code == "und":
        notes.append(f"{fmt}: language {f['language']!r} is not an ISO 639 code; not written")


def _write_mp3(path: Path, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str]) -> None:
    audio = MP3(path)
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    _id3_frames(tags, f, notes, "mp3")
    if len(marks) > MAX_ID3_CHAPTERS:
        notes.append(f"mp3: only the first {MAX_ID3_CHAPTERS} of {len(marks)} chapters written")
        marks = marks[:MAX_ID3_CHAPTERS]
    ids = [f"chp{i}" for i in range(len(marks))]
    for element_id, (start, end, title) in zip(ids, marks, strict=True):
        tags.add(
            CHAP(
                element_id=element_id,
                start_time=start,
                end_time=end,
                start_offset=0xFFFFFFFF,  # "use the times"
                end_offset=0xFFFFFFFF,
                sub_frames=[TIT2(encoding=Encoding.UTF8, text=[title])],
            )
        )
    if ids:
        tags.add(
            CTOC(
                element_id="toc",
                flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED,
                child_element_ids=ids,
                sub_frames=[TIT2(encoding=Encoding.UTF8, text=["Chapters"])],
            )
        )
    audio.save(v2_version=3)


def _write_wav(path: Path, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str]) -> None:
    audio = WAVE(path)
    if audio.tags is None:
        audio.add_tags()
    _id3_frames(audio.tags, f, notes, "wav")
    if marks:
        notes.append("wav: chapters not supported")
    audio.save(v2_version=3)


# ---------------------------------------------------------------------------------------------------------
# Vorbis comments (ogg, flac)


def _vorbis_time(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _vorbis(audio, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str], fmt: str) -> None:
    if audio.tags is None:
        audio.add_tags()
    tags = audio.tags
    names = {"title": "TITLE", "artist": "ARTIST", "album": "ALBUM", "comment": "COMMENT", "date": "DATE"}
    names["language"] = "LANGUAGE"
    for key in [k for k in list(tags.keys()) if re.fullmatch(r"CHAPTER\d+(NAME|URL)?", k, flags=re.I)]:
        del tags[key]
    for field, key in names.items():
        if key in tags:
            del tags[key]
        if f[field]:
            tags[key] = [f[field]]
    if len(marks) > MAX_VORBIS_CHAPTERS:
        notes.append(f"{fmt}: only the first {MAX_VORBIS_CHAPTERS} of {len(marks)} chapters written")
        marks = marks[:MAX_VORBIS_CHAPTERS]
    for n, (start, _end, title) in enumerate(marks, start=1):
        tags[f"CHAPTER{n:03d}"] = [_vorbis_time(start)]
        tags[f"CHAPTER{n:03d}NAME"] = [title]
    audio.save()


def _write_ogg(path: Path, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str]) -> None:
    try:
        audio = OggOpus(path)
    except mutagen.MutagenError:
        audio = OggVorbis(path)  # not what we encode, but an Ogg file all the same
    _vorbis(audio, f, marks, notes, "ogg")


def _write_flac(path: Path, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str]) -> None:
    _vorbis(FLAC(path), f, marks, notes, "flac")


# ---------------------------------------------------------------------------------------------------------
# MP4 (m4a)


def ffmetadata_escape(text: str) -> str:
    """Escape a value for an FFMETADATA1 file: `=`, `;`, `#`, `\\` and newlines get a backslash."""
    return re.sub(r"([=;#\\\n])", r"\\\1", text)


def _ffmetadata(marks: list[tuple[int, int, str]]) -> str:
    lines = [";FFMETADATA1"]
    for start, end, title in marks:
        lines += ["[CHAPTER]", "TIMEBASE=1/1000", f"START={start}", f"END={end}", f"title={ffmetadata_escape(title)}"]
    return "\n".join(lines) + "\n"


def _write_m4a(path: Path, f: dict[str, str | None], marks: list[tuple[int, int, str]], notes: list[str]) -> None:
    code = language_code(f["language"])
    if marks or (code and code != "und"):
        _remux_m4a(path, marks, code if code != "und" else None)
    audio = MP4(path)
    if audio.tags is None:
        audio.add_tags()
    for field, atom in (("title", "©nam"), ("artist", "©ART"), ("album", "©alb"), ("comment", "©cmt"),
                        ("date", "©day")):  # fmt: skip
        if atom in audio.tags:
            del audio.tags[atom]
        if f[field]:
            audio.tags[atom] = [f[field]]
    audio.save()


def _remux_m4a(path: Path, marks: list[tuple[int, int, str]], language: str | None) -> None:
    """Rewrite the file's chapters (QuickTime chapter track) and audio language with ffmpeg, stream-copied."""
    with path.open("rb") as fh:
        head = fh.read(12)
    muxer = "ipod" if head[4:8] == b"ftyp" and head[8:12] == b"M4A " else "mp4"
    meta = path.with_name(path.name + ".ffmeta")
    out = path.with_name(path.name + ".remux")
    try:
        meta.write_text(_ffmetadata(marks), encoding="utf-8")
        args = [*ffmpeg.input_args(path, "mp4"), *ffmpeg.input_args(meta, "ffmetadata")]
        args += ["-map", "0:a", "-map_metadata", "0", "-map_chapters", "1" if marks else "-1", "-c", "copy"]
        if language:
            args += ["-metadata:s:a:0", f"language={language}"]
        args += ["-movflags", "+faststart", "-f", muxer, ffmpeg.file_url(out)]
        ffmpeg.run(args, what="writing m4a chapters")
        os.replace(out, path)
    finally:
        meta.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


_WRITERS = {"mp3": _write_mp3, "m4a": _write_m4a, "ogg": _write_ogg, "flac": _write_flac, "wav": _write_wav}
