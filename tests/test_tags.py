"""write_tags: mutagen round trips per format, chapters, mp3 integrity after tagging, hostile values."""

from __future__ import annotations

import shutil
from pathlib import Path

import mutagen
import pytest
from mutagen.id3 import CTOCFlags
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4

from audio import ffmpeg
from audio.model import Chapter, Tags
from audio.tags import MAX_FIELD_CHARS, clean_text, ffmetadata_escape, language_code, write_tags

CODECS = {"mp3": "libmp3lame", "m4a": "aac", "ogg": "libopus", "flac": "flac", "wav": "pcm_s16le"}
DEMUXER = {"mp3": "mp3", "m4a": "mp4", "ogg": "ogg", "flac": "flac", "wav": "wav"}

TAGS = Tags(title="Épisode 1", artist="Ann & Bob", album="Talks", comment="Made with tts-pipeline", date="2024-05-06",
            language="en-US")  # fmt: skip
CHAPTERS = [Chapter("Intro", 0.0, 1.2), Chapter("Middle part", 1.2, 2.5), Chapter("End", 2.5, 3.0)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    out = {}
    for fmt, codec in CODECS.items():
        p = d / f"src.{fmt}"
        ffmpeg.run(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=24000:duration=3", "-c:a", codec,
                    *(["-b:a", "48k"] if fmt in ("mp3", "m4a", "ogg") else []), str(p)])  # fmt: skip
        out[fmt] = p
    return out


@pytest.fixture
def copy(sources, tmp_path):
    def make(fmt: str) -> Path:
        p = tmp_path / f"out.{fmt}"
        shutil.copyfile(sources[fmt], p)
        return p

    return make


def decoded_bytes(path: Path, fmt: str) -> int:
    return len(ffmpeg.run([*ffmpeg.input_args(path, DEMUXER[fmt]), "-f", "s16le", "-ac", "1", "-"]).stdout)


def id3_size(data: bytes) -> int:
    assert data[:3] == b"ID3"
    size = 0
    for b in data[6:10]:
        size = size << 7 | b
    return 10 + size + (10 if data[5] & 0x10 else 0)


def vorbis_chapters(tags) -> list[tuple[str, str]]:
    keys = sorted(k.upper() for k in list(tags.keys()) if k.upper().startswith("CHAPTER"))
    starts = [k for k in keys if k[7:].isdigit()]
    return [(tags[k][0], tags[k + "NAME"][0]) for k in starts]


def test_mp3_round_trip_with_chap_ctoc(copy):
    p = copy("mp3")
    assert write_tags(p, "mp3", TAGS, CHAPTERS) == []
    audio = MP3(p)
    t = audio.tags
    assert t.version == (2, 3, 0)
    assert t["TIT2"].text == ["Épisode 1"] and t["TPE1"].text == ["Ann & Bob"] and t["TALB"].text == ["Talks"]
    (comm,) = t.getall("COMM")
    assert comm.text == ["Made with tts-pipeline"] and comm.lang == "eng"
    assert str(t["TDRC"].text[0]) == "2024-05-06" and t["TLAN"].text == ["eng"]
    chaps = sorted(t.getall("CHAP"), key=lambda c: c.start_time)
    assert [(c.element_id, c.start_time, c.end_time, c.sub_frames["TIT2"].text[0]) for c in chaps] == [
        ("chp0", 0, 1200, "Intro"),
        ("chp1", 1200, 2500, "Middle part"),
        ("chp2", 2500, 3000, "End"),
    ]
    (toc,) = t.getall("CTOC")
    assert toc.child_element_ids == ["chp0", "chp1", "chp2"]
    assert toc.flags & CTOCFlags.TOP_LEVEL and toc.flags & CTOCFlags.ORDERED


def test_mp3_stays_intact_after_tagging(sources, copy):
    p = copy("mp3")
    before = sources["mp3"].read_bytes()
    write_tags(p, "mp3", TAGS, CHAPTERS)
    after = p.read_bytes()
    # everything after the ID3 tag — Xing/Info + LAME header (delay/padding) and every frame — is untouched
    assert after[id3_size(after) :] == before[id3_size(before) :]
    first_frame = after[id3_size(after) :][:200]
    assert b"Info" in first_frame or b"Xing" in first_frame
    assert decoded_bytes(p, "mp3") == decoded_bytes(sources["mp3"], "mp3") == 72000 * 2  # 3 s at 24 kHz, gapless
    assert MP3(p).info.length == pytest.approx(MP3(sources["mp3"]).info.length, abs=1e-9)


def test_m4a_round_trip_with_chapters(sources, copy):
    p = copy("m4a")
    assert write_tags(p, "m4a", TAGS, CHAPTERS) == []
    audio = MP4(p)
    t = audio.tags
    assert t["©nam"] == ["Épisode 1"] and t["©ART"] == ["Ann & Bob"] and t["©alb"] == ["Talks"]
    assert t["©cmt"] == ["Made with tts-pipeline"] and t["©day"] == ["2024-05-06"]
    assert [(round(c.start, 3), c.title) for c in audio.chapters] == [(0.0, "Intro"), (1.2, "Middle part"),
                                                                      (2.5, "End")]  # fmt: skip
    assert decoded_bytes(p, "m4a") == decoded_bytes(sources["m4a"], "m4a")
    data = p.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "still faststart after the remux and mutagen"
    # tagging again replaces (not appends) the chapters
    write_tags(p, "m4a", Tags(title="Again"), CHAPTERS[:1])
    again = MP4(p)
    assert [c.title for c in again.chapters] == ["Intro"] and again.tags["©nam"] == ["Again"]


@pytest.mark.parametrize("fmt", ["ogg", "flac"])
def test_vorbis_comment_round_trip_with_chapters(sources, copy, fmt):
    p = copy(fmt)
    assert write_tags(p, fmt, TAGS, CHAPTERS) == []
    t = mutagen.File(p).tags
    assert t["TITLE"] == ["Épisode 1"] and t["ARTIST"] == ["Ann & Bob"] and t["ALBUM"] == ["Talks"]
    assert t["COMMENT"] == ["Made with tts-pipeline"] and t["DATE"] == ["2024-05-06"] and t["LANGUAGE"] == ["en-US"]
    assert vorbis_chapters(t) == [("00:00:00.000", "Intro"), ("00:00:01.200", "Middle part"), ("00:00:02.500", "End")]
    assert decoded_bytes(p, fmt) == decoded_bytes(sources[fmt], fmt)
    # a second tagging replaces the chapters instead of leaving stale CHAPTERxxx fields
    write_tags(p, fmt, TAGS, CHAPTERS[1:2])
    assert vorbis_chapters(mutagen.File(p).tags) == [("00:00:01.200", "Middle part")]


def test_wav_id3_round_trip_and_chapter_note(sources, copy):
    p = copy("wav")
    notes = write_tags(p, "wav", TAGS, CHAPTERS)
    assert notes == ["wav: chapters not supported"]
    t = mutagen.File(p).tags
    assert t["TIT2"].text == ["Épisode 1"] and t["TPE1"].text == ["Ann & Bob"] and t["TALB"].text == ["Talks"]
    assert not t.getall("CHAP")
    assert decoded_bytes(p, "wav") == decoded_bytes(sources["wav"], "wav")


HOSTILE = Tags(
    title="Line one\nTITLE=injected\r\nARTIST=evil\x00\x1b[31m",
    artist="\u202eevil\u202c  name\t\t",
    album="A" * 10_000,
    comment="a=b;c#d\\e\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=5\ntitle=injected",
    date="2024",
    language="en",
)
HOSTILE_CHAPTERS = [
    Chapter("Intro\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=100\nEND=200\ntitle=injected", 0.0, 1.5),
    Chapter("a=b;c#d\\e", 1.5, 3.0),
]
CLEAN_TITLE = "Line one TITLE=injected ARTIST=evil [31m"
CLEAN_CH0 = "Intro [CHAPTER] TIMEBASE=1/1000 START=100 END=200 title=injected"


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "ogg", "flac", "wav"])
def test_hostile_values_are_sanitized_and_add_no_fields_or_chapters(copy, fmt):
    p = copy(fmt)
    notes = write_tags(p, fmt, HOSTILE, HOSTILE_CHAPTERS)
    assert f"album: cut to {MAX_FIELD_CHARS} characters" in notes
    audio = mutagen.File(p)
    t = audio.tags
    if fmt in ("mp3", "wav"):
        assert t["TIT2"].text == [CLEAN_TITLE] and t["TPE1"].text == ["evil name"]
        assert t["TALB"].text == ["A" * MAX_FIELD_CHARS]
        assert set(t.keys()) <= {"TIT2", "TPE1", "TALB", "COMM::eng", "TDRC", "TLAN", "TSSE", "CTOC:toc",
                                 "CHAP:chp0", "CHAP:chp1"}  # fmt: skip
        if fmt == "mp3":
            chaps = sorted(t.getall("CHAP"), key=lambda c: c.start_time)
            assert [c.sub_frames["TIT2"].text[0] for c in chaps] == [CLEAN_CH0, "a=b;c#d\\e"]
    elif fmt == "m4a":
        assert t["©nam"] == [CLEAN_TITLE] and t["©ART"] == ["evil name"] and t["©alb"] == ["A" * MAX_FIELD_CHARS]
        assert [(c.start, c.title) for c in audio.chapters] == [(0.0, CLEAN_CH0), (1.5, "a=b;c#d\\e")]
        assert set(t.keys()) == {"©nam", "©ART", "©alb", "©cmt", "©day", "©too"}
        # what ffmpeg itself reads back: exactly two chapters, no injected metadata keys
        meta = ffmpeg.run([*ffmpeg.input_args(p, "mp4"), "-f", "ffmetadata", "-"]).stdout.decode()
        assert meta.count("[CHAPTER]\n") == 2 and "\ntitle=injected" not in meta
    else:
        assert t["TITLE"] == [CLEAN_TITLE] and t["ARTIST"] == ["evil name"] and t["ALBUM"] == ["A" * MAX_FIELD_CHARS]
        assert {k.upper() for k in list(t.keys())} <= {"TITLE", "ARTIST", "ALBUM", "COMMENT", "DATE", "LANGUAGE",
                                                 "ENCODER", "CHAPTER001", "CHAPTER001NAME", "CHAPTER002",
                                                 "CHAPTER002NAME"}  # fmt: skip
        assert vorbis_chapters(t) == [("00:00:00.000", CLEAN_CH0), ("00:00:01.500", "a=b;c#d\\e")]


def test_invalid_date_and_language_are_noted_for_id3(copy):
    p = copy("mp3")
    notes = write_tags(p, "mp3", Tags(title="T", date="last Tuesday", language="Klingon"), [])
    assert any("date 'last Tuesday'" in n for n in notes) and any("language 'Klingon'" in n for n in notes)
    t = MP3(p).tags
    assert "TDRC" not in t and "TLAN" not in t and t["TIT2"].text == ["T"]


def test_too_many_chapters_for_a_ctoc(copy):
    p = copy("mp3")
    many = [Chapter(f"c{i}", i * 0.01, (i + 1) * 0.01) for i in range(300)]
    notes = write_tags(p, "mp3", Tags(), many)
    assert notes == ["mp3: only the first 255 of 300 chapters written"]
    assert len(MP3(p).tags.getall("CTOC")[0].child_element_ids) == 255


def test_broken_file_is_left_untouched_with_a_note(tmp_path):
    p = tmp_path / "broken.m4a"
    p.write_bytes(b"this is not an mp4 file at all" * 10)
    notes = write_tags(p, "m4a", TAGS, CHAPTERS)
    assert len(notes) == 1 and notes[0].startswith("m4a: tags not written")
    assert p.read_bytes() == b"this is not an mp4 file at all" * 10
    assert [q.name for q in tmp_path.iterdir()] == ["broken.m4a"], "no temporary files left behind"
    q = tmp_path / "broken.mp3"
    q.write_bytes(b"\x00" * 100)
    assert write_tags(q, "mp3", TAGS, [])[0].startswith("mp3: tags not written")


def test_nothing_to_write_leaves_the_file_alone(sources, copy):
    p = copy("flac")
    assert write_tags(p, "flac", Tags(title=" \n\t "), []) == []
    assert p.read_bytes() == sources["flac"].read_bytes()
    with pytest.raises(ValueError):
        write_tags(p, "aac", TAGS, [])


def test_helpers():
    assert clean_text("  a\n\tb\x00c\u202e ") == "a b c"
    assert clean_text("\n\r") is None and clean_text(None) is None
    assert clean_text("x" * 300) == "x" * MAX_FIELD_CHARS
    assert ffmetadata_escape("a=b;c#d\\e\nf") == "a\\=b\\;c\\#d\\\\e\\\nf"
    assert [language_code(x) for x in ("en", "en-US", "pt_BR", "DE", "eng", "fil", "english", "", None)] == [
        "eng", "eng", "por", "deu", "eng", "fil", "und", None, None,
    ]  # fmt: skip
