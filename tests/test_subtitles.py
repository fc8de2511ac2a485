"""SRT/WebVTT rendering: format validity (parsed back here), timing, wrapping, ordering, escaping, voices."""

from __future__ import annotations

import html
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.errors import InvalidInput
from audio.model import TimelineEntry
from audio.subtitles import MAX_LINE_CHARS, filename_for, render, to_srt, to_vtt, wrap

SRT_TIME = r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})"
VTT_TIME = r"(\d{2,}):(\d{2}):(\d{2})\.(\d{3})"


def _ms(h, m, s, ms):
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_srt(text: str) -> list[tuple[int, int, list[str]]]:
    """Strict little SRT parser: numbered blocks 1..n, a timing line, ≥ 1 non-empty text line."""
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    cues = []
    for n, block in enumerate(text.strip("\n").split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(n), block
        m = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, lines[1])
        assert m, lines[1]
        assert len(lines) >= 3 and all(line.strip() for line in lines[2:]), block
        cues.append((_ms(*m.groups()[:4]), _ms(*m.groups()[4:]), lines[2:]))
    return cues


def parse_vtt(text: str) -> list[tuple[int, int, list[str]]]:
    """Strict little WebVTT parser: `WEBVTT` header, blank-line separated cues, no `-->` in payloads."""
    blocks = text.strip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = []
    for block in blocks[1:]:
        lines = block.split("\n")
        m = re.fullmatch(VTT_TIME + " --> " + VTT_TIME, lines[0])
        assert m, lines[0]
        payload = lines[1:]
        assert payload and all(line.strip() and "-->" not in line for line in payload), block
        cues.append((_ms(*m.groups()[:4]), _ms(*m.groups()[4:]), payload))
    return cues


def vtt_plain(lines: list[str]) -> tuple[str | None, list[str]]:
    """Strip one `<v Name>…</v>` span and unescape; returns (voice, visible lines)."""
    text = "\n".join(lines)
    voice = None
    m = re.fullmatch(r"<v ([^>]*)>(.*)</v>", text, flags=re.S)
    if m:
        voice, text = html.unescape(m.group(1)), m.group(2)
    assert "<" not in text and ">" not in text
    return voice, html.unescape(text).split("\n")


LONG = (
    "Subtitles are wrapped at word boundaries so that no line is longer than forty-two characters, "
    "and a cue never shows more than two lines at once, so this sentence needs several cues."
)


def entries() -> list[TimelineEntry]:
    return [
        TimelineEntry(0, 0.0, 1.2346, "Hello and welcome.", speaker="Ann"),
        TimelineEntry(1, 1.5, 9.8766, LONG, speaker="Bob"),
        TimelineEntry(2, 10.0, 3723.4568, "A very long pause & then <this>.", speaker="Ann"),
    ]


def test_srt_is_valid_and_times_match_entries():
    cues = parse_srt(to_srt(entries()))
    assert cues[0][:2] == (0, 1235)  # 1.2346 s → 1235 ms: within 1 ms of the entry
    assert cues[1][0] == 1500
    assert [c for c in cues if c[1] == 9877], "the long entry ends exactly at its end"
    assert cues[-1][:2] == (10000, 3723457)  # hours are rendered, not wrapped around
    assert "01:02:03,457" in to_srt(entries())


def test_vtt_is_valid_and_times_match_entries():
    cues = parse_vtt(to_vtt(entries()))
    assert cues[0][:2] == (0, 1235)
    assert cues[-1][:2] == (10000, 3723457)
    assert to_vtt(entries()).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.235\n")


@pytest.mark.parametrize("render_fn,parse", [(to_srt, parse_srt), (to_vtt, parse_vtt)])
def test_long_entry_is_split_into_wrapped_ordered_cues(render_fn, parse):
    entry = TimelineEntry(0, 2.0, 12.0, LONG)
    cues = parse(render_fn([entry]))
    assert len(cues) >= 3
    assert cues[0][0] == 2000 and cues[-1][1] == 12000
    for (s, e, lines), nxt in zip(cues, [*cues[1:], None], strict=True):
        assert s < e
        assert 1 <= len(lines) <= 2
        assert all(len(line) <= MAX_LINE_CHARS for line in lines)
        if nxt:
            assert nxt[0] == e  # consecutive, no overlap, no gap inside one entry
    words = " ".join(" ".join(lines) for _, _, lines in cues).split()
    assert words == LONG.split()


def test_sub_cue_timing_is_proportional_to_characters():
    text = ("a" * 40 + " ") * 2 + "b" * 40  # 3 lines → 2 cues: 80 chars (2 lines) then 40 chars
    cues = parse_srt(to_srt([TimelineEntry(0, 0.0, 3.0, text)]))
    assert [(s, e) for s, e, _ in cues] == [(0, 2000), (2000, 3000)]


def test_wrap_cuts_words_longer_than_a_line():
    lines = wrap("x" * 100 + " tail")
    assert lines == ["x" * 42, "x" * 42, "x" * 16 + " tail"]
    assert wrap("  spaced\n\tout\x00text  ") == ["spaced out text"]


def test_overlapping_and_unordered_entries_never_overlap():
    es = [
        TimelineEntry(1, 2.0, 5.0, "second"),
        TimelineEntry(0, 0.0, 3.0, "first overlaps the second"),
        TimelineEntry(2, 4.0, 4.5, "inside the second"),
        TimelineEntry(3, 6.0, 6.0, "zero length"),
        TimelineEntry(4, 7.0, 8.0, "   "),
    ]
    cues = parse_srt(to_srt(es))
    assert [c[2][0] for c in cues] == ["first overlaps the second", "second", "inside the second"]
    for a, b in itertools.pairwise(cues):
        assert a[1] <= b[0]
    assert cues[0][:2] == (0, 2000)  # ended where the next entry starts


def test_srt_speaker_prefix_only_with_two_or_more_speakers():
    one = [TimelineEntry(0, 0, 1, "Hi.", speaker="Ann"), TimelineEntry(1, 1, 2, "Bye.", speaker="Ann")]
    assert [c[2] for c in parse_srt(to_srt(one))] == [["Hi."], ["Bye."]]
    two = [*one, TimelineEntry(2, 2, 3, "Me too.", speaker="Bob")]
    assert [c[2] for c in parse_srt(to_srt(two))] == [["[Ann] Hi."], ["[Ann] Bye."], ["[Bob] Me too."]]


def test_vtt_voices_and_escaping():
    es = [
        TimelineEntry(0, 0, 1, "a < b && c > d --> e", speaker="Dr. <Evil> & Co"),
        TimelineEntry(1, 1, 2, "no speaker"),
    ]
    text = to_vtt(es)
    assert "<v Dr. &lt;Evil&gt; &amp; Co>" in text
    cues = parse_vtt(text)
    assert vtt_plain(cues[0][2]) == ("Dr. <Evil> & Co", ["a < b && c > d --> e"])
    assert vtt_plain(cues[1][2]) == (None, ["no speaker"])


def test_empty_timeline():
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"


def test_render_and_filename_for():
    assert render(entries(), "srt") == to_srt(entries())
    assert render(entries(), "vtt") == to_vtt(entries())
    with pytest.raises(InvalidInput):
        render(entries(), "ass")
    assert filename_for("episode 1.mp3", "srt") == "episode 1.srt"
    assert filename_for("show.v2", "vtt") == "show.v2.vtt"
    assert filename_for("../../etc/passwd", "vtt") == "passwd.vtt"
    assert filename_for("a/b\\c:d*?", "srt") == "c_d.srt"
    assert filename_for("", "srt") == "subtitles.srt"
    assert filename_for("...", "vtt") == "subtitles.vtt"
    with pytest.raises(InvalidInput):
        filename_for("x", "txt")


_text = st.lists(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60),
    min_size=1,
    max_size=8,
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20_000), st.integers(0, 20_000), _text, st.sampled_from([None, "A", "B<&>"])),
        max_size=8,
    )
)
def test_property_cues_are_valid_ordered_and_wrapped(raw):
    es = [TimelineEntry(i, s / 1000, (s + d) / 1000, t, speaker=sp) for i, (s, d, t, sp) in enumerate(raw)]
    srt = to_srt(es)
    srt_cues = parse_srt(srt) if srt else []
    vtt_cues = [(s, e, vtt_plain(lines)[1]) for s, e, lines in parse_vtt(to_vtt(es))]
    for cues in (srt_cues, vtt_cues):
        for s, e, lines in cues:
            assert s < e
            # > 2 lines only for a degenerate entry without 1 ms per two-line piece
            assert len(lines) <= 2 or e - s < -(-len(lines) // 2)
            assert all(len(line) <= MAX_LINE_CHARS for line in lines)
        for a, b in itertools.pairwise(cues):
            assert a[1] <= b[0]
