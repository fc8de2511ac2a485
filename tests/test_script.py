"""audio.script.plan: speaker scripts, markdown, pauses, sentence splitting and packing."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio.errors import InvalidInput
from audio.script import plan

WORD_RE = re.compile(r"\w+")


def texts(p) -> list[str]:
    return [r.text for r in p.requests]


def check_invariants(p, *, max_chars: int = 600, max_pause_ms: int = 10_000) -> None:
    assert p.requests
    for k, r in enumerate(p.requests):
        assert r.index == k
        assert r.text == r.text.strip() and r.text
        assert len(r.text) <= max_chars
        assert "\n" not in r.text
        assert "  " not in r.text
        assert re.search(r"[^\W_]|[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]", r.text), r.text
        assert not re.search("[\U000f0000-\U0010ffff]", r.text)
        assert 0 <= r.pause_before_ms <= max_pause_ms
    assert p.requests[0].pause_before_ms == 0


# ---------------------------------------------------------------------------------------------------------- speakers


def test_colon_script_without_mapping_uses_voice_and_records_speakers():
    p = plan("Host: Welcome back.\nGuest: Thanks for having me!\nHost: Let's start.", voice="alloy")
    assert texts(p) == ["Welcome back.", "Thanks for having me!", "Let's start."]
    assert [r.speaker for r in p.requests] == ["Host", "Guest", "Host"]
    assert [r.voice for r in p.requests] == ["alloy"] * 3
    assert p.speakers == ["Host", "Guest"]


def test_bracket_and_bold_labels():
    text = "[Host] Hi there.\n**Guest:** Hello.\n**Host**: Good.\n__Guest:__ Fine.\n[Guest]: Bye."
    p = plan(text, speakers={"host": "alloy", "guest": "nova"})
    assert texts(p) == ["Hi there.", "Hello.", "Good.", "Fine.", "Bye."]
    assert [r.voice for r in p.requests] == ["alloy", "nova", "alloy", "nova", "nova"]
    assert all("Host" not in t and "Guest" not in t and "*" not in t for t in texts(p))


def test_label_alone_on_its_line_and_continuation_lines():
    text = "[Guest]\nThanks for having me.\nIt is great to be here.\n\nAnd a second paragraph.\n\n[Host] Welcome."
    p = plan(text, sentence_per_request=True)
    assert texts(p) == ["Thanks for having me.", "It is great to be here.", "And a second paragraph.", "Welcome."]
    assert [r.speaker for r in p.requests] == ["Guest", "Guest", "Guest", "Host"]
    assert [r.pause_before_ms for r in p.requests] == [0, 300, 700, 700]


def test_mapping_is_case_insensitive_and_keeps_first_spelling():
    p = plan("HOST: one.\nguest: two.\nHost: three.", speakers={"host": "alloy", "guest": "nova"})
    assert [r.voice for r in p.requests] == ["alloy", "nova", "alloy"]
    assert [r.speaker for r in p.requests] == ["HOST", "guest", "HOST"]
    assert p.speakers == ["HOST", "guest"]


def test_star_fallback_voice():
    p = plan("Host: Hi.\nGuest: Hello.\nExpert: Facts.", speakers={"host": "alloy", "*": "echo"})
    assert [r.voice for r in p.requests] == ["alloy", "echo", "echo"]


def test_missing_mapping_lists_found_and_mapped_speakers():
    with pytest.raises(InvalidInput) as err:
        plan("Host: Hi.\nGuest: Hello.\n[Expert] Facts.", speakers={"host": "alloy"})
    assert err.value.param == "speakers"
    message = str(err.value)
    assert "no voice for Guest, Expert" in message
    assert "speakers in the text: Host, Guest, Expert" in message
    assert "mapped: host" in message


def test_single_colon_line_is_not_a_label_without_mapping():
    p = plan("Note: the value is 3.\n\nThe rest of the text follows here.")
    assert texts(p) == ["Note: the value is 3.", "The rest of the text follows here."]
    assert p.speakers == [] and p.requests[0].speaker is None


def test_mapped_name_is_a_label_even_once():
    p = plan("Intro text here.\n\nNarrator: Once upon a time.", speakers={"narrator": "fable"}, voice="alloy")
    assert texts(p) == ["Intro text here.", "Once upon a time."]
    assert [(r.speaker, r.voice) for r in p.requests] == [(None, "alloy"), ("Narrator", "fable")]


def test_colon_lines_in_an_ordinary_document_are_not_speakers():
    text = "Pros: fast\nCons: slow\n\nA first paragraph.\n\nA second paragraph.\n\nA third one."
    p = plan(text)
    assert p.speakers == []
    assert texts(p)[0] == "Pros: fast. Cons: slow."


def test_colon_needs_short_name_and_a_space():
    text = "The very long name of someone: hello.\nDr. Who: hi.\nTime 10:30 is late.\nhttp://example.com: no"
    p = plan(text)
    assert p.speakers == []


def test_unlabelled_text_uses_voice_or_star_when_voice_is_none():
    p = plan("# Title\n\nHost: Hi.", speakers={"host": "alloy", "*": "echo"}, voice=None)
    assert [(r.speaker, r.voice) for r in p.requests] == [(None, "echo"), ("Host", "alloy")]
    p = plan("# Title\n\nHost: Hi.", speakers={"host": "alloy", "*": "echo"}, voice="nova")
    assert [r.voice for r in p.requests] == ["nova", "alloy"]


def test_heading_ends_a_turn():
    p = plan("Host: Hi.\n\n## Part two\n\nNarration here.", speakers={"host": "alloy"}, voice="v")
    assert [(r.speaker, r.voice) for r in p.requests] == [("Host", "alloy"), (None, "v"), (None, "v")]


def test_turn_without_words_is_ignored():
    p = plan("[Music]\n\n[Host] Welcome.", speakers={"host": "alloy"})
    assert p.speakers == ["Host"] and texts(p) == ["Welcome."]


def test_pause_tag_and_link_at_line_start_are_not_labels():
    p = plan("Start here.\n[pause 1s]\n[Docs](http://x.org) are good.")
    assert p.speakers == []
    assert texts(p) == ["Start here.", "Docs are good."]


# ---------------------------------------------------------------------------------------------------------- markdown


def test_headings_become_sections_and_are_read():
    text = "Intro line.\n\n# Chapter One\n\nFirst text.\n\n## Part *Two* ##\n\nSecond text."
    p = plan(text)
    assert texts(p) == ["Intro line.", "Chapter One", "First text.", "Part Two", "Second text."]
    assert [r.section for r in p.requests] == [None, "Chapter One", "Chapter One", "Part Two", "Part Two"]
    assert p.sections == ["Chapter One", "Part Two"]
    assert [r.pause_before_ms for r in p.requests] == [0, 1400, 700, 1400, 700]


def test_heading_at_start_has_no_pause_and_setext_headings():
    p = plan("Title\n=====\nBody text.\n\nSub\n---\nMore.")
    assert texts(p) == ["Title", "Body text.", "Sub", "More."]
    assert p.sections == ["Title", "Sub"]
    assert p.requests[0].pause_before_ms == 0


def test_hashtag_is_not_a_heading():
    p = plan("#hashtag trending now.")
    assert p.sections == [] and texts(p) == ["#hashtag trending now."]


def test_inline_markup_is_cleaned():
    text = (
        "Some *emphasis*, **bold**, ***both***, _under_, ~~gone~~ and `inline code` with a [link](https://x.org "
        '"title") here.\n\n> Quoted <b>html</b> &amp; entity.\n\n---\n\n- apples\n* bananas\n+ cherries\n'
        "- [x] done task\n\n1. First step\n2) Second step"
    )
    p = plan(text, sentence_per_request=True)
    assert texts(p) == [
        "Some emphasis, bold, both, under, gone and inline code with a link here.",
        "Quoted html & entity.",
        "apples.",
        "bananas.",
        "cherries.",
        "done task.",
        "1. First step.",
        "2) Second step.",
    ]


def test_snake_case_math_and_escapes_survive():
    p = plan(r"Use snake_case and 2 * 3 or 4*5, and a literal \*star\*.")
    assert texts(p) == ["Use snake_case and 2 * 3 or 4*5, and a literal *star*."]


def test_urls_are_read_as_host_and_images_dropped():
    text = "Visit https://www.example.com/path?q=1 or <https://docs.example.org/a>. ![a chart](c.png) Done."
    p = plan(text)
    assert texts(p) == ["Visit example.com or docs.example.org. Done."]
    assert p.skipped == {"images": 1}


def test_code_blocks_and_tables_are_skipped_and_counted():
    text = (
        "Before.\n\n```python\nprint('Host: hi')\n```\n\n~~~\nmore code\n~~~\n\n    indented code\n\n"
        "| a | b |\n|---|:-:|\n| 1 | 2 |\n\nAfter."
    )
    p = plan(text)
    assert texts(p) == ["Before.", "After."]
    assert p.skipped == {"code_blocks": 3, "tables": 1}
    assert p.requests[1].pause_before_ms == 700


def test_all_indented_text_is_not_code():
    p = plan("    Pasted text, all indented.\n    Second line.")
    assert texts(p) == ["Pasted text, all indented. Second line."]


def test_html_comments_and_ssml_tags_are_stripped():
    text = "<speak>Hello <!-- hidden\nnote --> <prosody rate='slow'>there</prosody><br/>friend.</speak>"
    assert texts(plan(text)) == ["Hello there friend."]


def test_footnotes_and_reference_links():
    p = plan("Term[^1] here and [the docs][ref].\n\n[ref]: https://example.com\n\n[^1]: A footnote.")
    assert texts(p) == ["Term here and the docs.", "A footnote."]


@pytest.mark.parametrize("text", ["", "   \n\t  ", "```\ncode only\n```", "| a |\n|---|\n| b |", "---\n***", "<br/>"])
def test_nothing_to_read_is_invalid_input(text):
    with pytest.raises(InvalidInput) as err:
        plan(text)
    assert err.value.param == "text"


def test_only_code_error_mentions_what_was_skipped():
    with pytest.raises(InvalidInput, match="1 code blocks"):
        plan("```\nx\n```")


# ---------------------------------------------------------------------------------------------------------- pauses


def test_pause_tags_end_the_request_and_add_silence():
    p = plan(
        'One [pause 1.5s] two [pause 500ms] three [pause 2] four <break time="750ms"/> five <break time="1s"/> six.'
    )
    assert texts(p) == ["One", "two", "three", "four", "five", "six."]
    assert [r.pause_before_ms for r in p.requests] == [0, 1800, 800, 2300, 1050, 1300]


def test_pause_tag_between_paragraphs_adds_to_paragraph_pause():
    p = plan("First.\n\n[pause 2s]\n\nSecond.")
    assert [r.pause_before_ms for r in p.requests] == [0, 2700]


def test_pause_at_start_and_end_is_dropped():
    p = plan("[pause 3s] Hello. [PAUSE 2S]")
    assert texts(p) == ["Hello."] and p.requests[0].pause_before_ms == 0


def test_pause_above_the_bound_names_the_tag():
    with pytest.raises(InvalidInput) as err:
        plan("Hi [pause 20s] there.")
    assert err.value.param == "text" and "[pause 20s]" in str(err.value)
    with pytest.raises(InvalidInput, match="break"):
        plan('Hi <break time="11s"/> there.', max_pause_ms=10_000)


def test_total_pause_is_capped_at_max_pause():
    p = plan("Hi. [pause 4s] [pause 4s] [pause 4s] there.", max_pause_ms=5000)
    assert [r.pause_before_ms for r in p.requests] == [0, 5000]


def test_other_ssml_is_not_read_and_break_without_time_uses_defaults():
    p = plan('A <emphasis level="strong">b</emphasis> <break/> c <break strength="strong"/> d.')
    assert texts(p) == ["A b", "c", "d."]
    assert [r.pause_before_ms for r in p.requests] == [0, 600, 1000]


def test_pause_inside_code_span_is_literal():
    assert texts(plan("Type `[pause 1s]` to pause.")) == ["Type [pause 1s] to pause."]


# ---------------------------------------------------------------------------------------------------------- gaps


def test_pause_before_values_sentence_paragraph_turn_heading():
    text = "# Head\nOne. Two.\nThree.\n\nFour.\nHost: Five.\nGuest: Six."
    p = plan(text, sentence_per_request=True, pause_ms=111, paragraph_pause_ms=222)
    assert texts(p) == ["Head", "One.", "Two.", "Three.", "Four.", "Five.", "Six."]
    assert [r.pause_before_ms for r in p.requests] == [0, 222, 111, 111, 222, 222, 222]


def test_heading_pause_is_capped():
    p = plan("Intro.\n\n# Head", paragraph_pause_ms=6000, max_pause_ms=10_000)
    assert p.requests[1].pause_before_ms == 10_000


# ---------------------------------------------------------------------------------------------------------- splitting


def split(text: str) -> list[str]:
    return texts(plan(text, sentence_per_request=True))


def test_abbreviations_decimals_and_initials_do_not_split():
    assert split("Dr. Smith paid 3.14 dollars, e.g. a lot. Mr. J. R. R. Tolkien came. The U.S. economy grew.") == [
        "Dr. Smith paid 3.14 dollars, e.g. a lot.",
        "Mr. J. R. R. Tolkien came.",
        "The U.S. economy grew.",
    ]


def test_numbers_and_list_numbers_do_not_split():
    assert split("See No. 5 and Fig. 3 on Jan. 5 today. Version 2. Next one.") == [
        "See No. 5 and Fig. 3 on Jan. 5 today.",
        "Version 2.",
        "Next one.",
    ]
    assert split("1. Preheat the oven.\n2. Mix it.") == ["1. Preheat the oven.", "2. Mix it."]


def test_ellipses():
    assert split("Wait... what? He left… Then it rained.") == ["Wait... what?", "He left…", "Then it rained."]


def test_quotes_stay_with_their_sentence():
    assert split('"Stop!" she said. "Go." Then (quietly.) Nothing. He said \u201cyes.\u201d Fine?! Yes.') == [
        '"Stop!" she said.',
        '"Go."',
        "Then (quietly.)",
        "Nothing.",
        "He said \u201cyes.\u201d",
        "Fine?!",
        "Yes.",
    ]


def test_cjk_sentences():
    assert split("你好。我很好！你呢？「是的。」他说；好的") == [
        "你好。",
        "我很好！",
        "你呢？",
        "「是的。」",
        "他说；",
        "好的",
    ]


def test_cjk_packing_keeps_no_spaces():
    assert texts(plan("你好。我很好！你呢？")) == ["你好。我很好！你呢？"]
    assert texts(plan("- 项目一\n- 项目二")) == ["项目一。项目二。"]


def test_greedy_packing_respects_max_chars():
    text = "Alpha beta gamma. Delta epsilon. Zeta eta theta iota. Kappa."
    p = plan(text, max_chars=35)
    assert texts(p) == ["Alpha beta gamma. Delta epsilon.", "Zeta eta theta iota. Kappa."]
    assert [r.pause_before_ms for r in p.requests] == [0, 300]


def test_long_sentence_splits_at_clause_boundary():
    sentence = "This opening clause is fairly long, and this second clause is also long; the third ends it."
    p = plan(sentence, max_chars=50)
    assert texts(p) == [
        "This opening clause is fairly long,",
        "and this second clause is also long;",
        "the third ends it.",
    ]


def test_long_sentence_without_clauses_splits_at_a_space():
    words = [f"word{k}" for k in range(60)]
    p = plan(" ".join(words), max_chars=50)
    check_invariants(p, max_chars=50)
    assert " ".join(texts(p)).split() == words
    assert all(len(t) > 40 for t in texts(p)[:-1])


def test_cjk_without_spaces_splits_between_characters():
    text = "这是一个没有任何标点符号的很长的中文句子" * 10
    p = plan(text, max_chars=50)
    check_invariants(p, max_chars=50)
    assert "".join(texts(p)) == text


def test_latin_word_inside_cjk_is_not_cut():
    text = "中文" * 20 + "Internationalization" + "中文" * 20
    p = plan(text, max_chars=50)
    assert "".join(texts(p)) == text
    assert any("Internationalization" in t for t in texts(p))


def test_word_longer_than_max_chars_is_cut_as_a_last_resort():
    p = plan("a" * 130, max_chars=50)
    assert texts(p) == ["a" * 50, "a" * 50, "a" * 30]


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
THUMBS = "\U0001f44d\U0001f3fd"
FLAG = "\U0001f1fa\U0001f1f8"


def test_emoji_zwj_sequences_and_skin_tones_stay_whole():
    text = (FAMILY + THUMBS + FLAG) * 10
    p = plan(text, max_chars=20)
    check_invariants(p, max_chars=20)
    assert "".join(texts(p)) == text
    for t in texts(p):
        assert not t.startswith(("\u200d", "\U0001f3fd")) and not t.endswith("\u200d")
        assert t.count(FAMILY) * len(FAMILY) + t.count(THUMBS) * len(THUMBS) + t.count(FLAG) * len(FLAG) == len(t)


def test_combining_marks_stay_with_their_base():
    text = "e\u0301" * 30 + " " + "ne\u0308" * 20
    p = plan(text, max_chars=15)
    for t in texts(p):
        assert unicodedata.category(t[0]) != "Mn"


def test_punctuation_only_pieces_are_dropped_but_words_kept():
    p = plan("Hello. ...\n\n!!! Goodbye.", sentence_per_request=True)
    assert texts(p) == ["Hello.", "Goodbye."]
    p = plan("First paragraph.\n\n...\n\n—\n\nSecond paragraph.")
    assert texts(p) == ["First paragraph.", "Second paragraph."]
    assert p.requests[1].pause_before_ms == 700


def test_whitespace_is_normalized():
    assert texts(plan("Hello\t  there,\u00a0 my\n   friend.")) == ["Hello there, my friend."]


def test_emoji_only_text_is_kept():
    assert texts(plan("\U0001f389")) == ["\U0001f389"]


def test_too_many_requests():
    with pytest.raises(InvalidInput) as err:
        plan("Hello world. " * 30, max_chars=20, max_requests=10)
    assert err.value.param == "max_chars_per_request"
    assert "larger max_chars_per_request" in str(err.value)


def test_bad_numbers_are_invalid_input():
    with pytest.raises(InvalidInput):
        plan("Hi.", max_chars=0)
    with pytest.raises(InvalidInput):
        plan("Hi.", pause_ms=-1)


def test_plan_yields_between_paragraphs(monkeypatch):
    from audio import cooperate

    calls: list[float] = []
    monkeypatch.setattr(cooperate, "YIELD_EVERY_S", 0.0)
    monkeypatch.setattr(cooperate.time, "sleep", lambda s: calls.append(s))
    plan("\n\n".join(f"Paragraph number {k}." for k in range(50)))
    assert len(calls) >= 50 and set(calls) == {0.0001}  # a real (gevent: full hub cycle) sleep, not sleep(0)


# ---------------------------------------------------------------------------------------------------------- properties

LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüßñçøåæœ0123456789"
words_st = st.text(alphabet=LATIN, min_size=1, max_size=15)
punct_st = st.sampled_from(["", "", "", ".", ",", "!", "?", ";", "...", "…", '."', "?)", ".'"])
token_st = st.tuples(st.sampled_from(["", "", "", '"', "("]), words_st, punct_st).map("".join)
sep_st = st.sampled_from([" ", " ", " ", " ", "  ", "\n", "\n\n", "\t"])


@st.composite
def prose(draw) -> str:
    tokens = draw(st.lists(token_st, min_size=1, max_size=120))
    seps = draw(st.lists(sep_st, min_size=len(tokens), max_size=len(tokens)))
    return "".join(t + s for t, s in zip(tokens, seps, strict=True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prose(), st.integers(min_value=30, max_value=300), st.booleans())
def test_property_prose_keeps_every_word_and_bounds(text, max_chars, per_sentence):
    p = plan(text, max_chars=max_chars, sentence_per_request=per_sentence)
    check_invariants(p, max_chars=max_chars)
    assert WORD_RE.findall(" ".join(texts(p))) == WORD_RE.findall(text)


CLUSTERS = [FAMILY, THUMBS, FLAG, "e\u0301", "\u0915\u094d\u0937", "\u4f60", "a", "\u0e01\u0e34", "\u1100\u1161"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CLUSTERS), min_size=1, max_size=80), st.integers(min_value=8, max_value=40))
def test_property_cuts_only_at_grapheme_boundaries(clusters, max_chars):
    text = "".join(clusters)
    boundaries = {0}
    pos = 0
    for c in clusters:
        pos += len(c)
        boundaries.add(pos)
    p = plan(text, max_chars=max_chars)
    check_invariants(p, max_chars=max_chars)
    assert "".join(texts(p)) == text
    pos = 0
    for t in texts(p):
        pos += len(t)
        assert pos in boundaries


FRAGMENTS = [
    "Host: ",
    "[Guest] ",
    "**Host:** ",
    "# ",
    "## Title\n",
    "\n",
    "\n\n",
    "```",
    "~~~",
    "    ",
    "> ",
    "- ",
    "1. ",
    "|",
    "|---|",
    "*",
    "**",
    "_",
    "~~",
    "`",
    "[",
    "]",
    "(",
    ")",
    "[link](http://a.b)",
    "![img](x.png)",
    "https://example.com/x",
    "<b>",
    "</b>",
    '<break time="300ms"/>',
    "[pause 1s]",
    "[pause 2]",
    "<!--",
    "-->",
    "&amp;",
    "&#0;",
    "\u200d",
    "\u0301",
    FAMILY,
    FLAG,
    "。",
    "你好",
    "...",
    "Dr.",
    " e.g. ",
    "3.14",
    "\\",
    "---",
    "===",
    "<speak>",
    "[^1]",
    "[x]: http://y.z",
    "\r\n",
    "\x00",
    "\ud800",
    "\U000f0001",
    "\U0010fffd",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.text(max_size=25), st.sampled_from(FRAGMENTS)), max_size=40).map("".join),
    st.integers(min_value=1, max_value=200),
    st.sampled_from([None, {}, {"host": "alloy"}, {"*": "echo"}, {"host": "alloy", "guest": "nova"}]),
    st.booleans(),
)
def test_property_fuzz_only_invalid_input(text, max_chars, speakers, per_sentence):
    try:
        p = plan(text, max_chars=max_chars, speakers=speakers, sentence_per_request=per_sentence)
    except InvalidInput:
        return
    check_invariants(p, max_chars=max_chars)
    assert set(p.sections) == {r.section for r in p.requests} - {None}
    assert set(p.speakers) == {r.speaker for r in p.requests} - {None}


def test_hundred_thousand_characters():
    sentence = "Dr. Smith measured 3.14 units, e.g. in the U.S. lab; results were fine! Was it good? Yes. "
    paragraph = sentence * 5
    text = ("\n\n".join([paragraph] * 230))[:100_000]
    start = time.perf_counter()
    p = plan(text)
    elapsed = time.perf_counter() - start
    print(f"\nplan(100k chars): {elapsed * 1000:.1f} ms, {len(p.requests)} requests")
    check_invariants(p)
    assert WORD_RE.findall(" ".join(texts(p))) == WORD_RE.findall(text)
    single = " ".join(["word"] * 25_000)
    p = plan(single, max_chars=600)
    check_invariants(p)
    assert " ".join(texts(p)).split() == single.split()
