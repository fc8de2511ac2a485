"""Script stage: text (plain, markdown, speaker script, or a mix) → a `Plan` of TTS requests.

Every request text is exactly what the TTS model reads: no labels, markup symbols, code or URLs.

Rules (the public contract of `plan`)
-------------------------------------
Speaker labels (only at the start of a line, after an optional blockquote `>`):
  * `[Name] text` (also `[Name]: text`, or `[Name]` alone with the text on the next lines) is always a label.
  * `Name: text`, `**Name:** text`, `**Name**: text` is a label when Name is short (≤ 32 characters, ≤ 3 words,
    starts with a letter, no sentence punctuation; the colon must be followed by whitespace or end of line) and
      - Name is a key of the `speakers` mapping (case-insensitive), or
      - the text reads as a colon script: at least 2 such lines with at least 2 different names, and those lines
        start at least half of the text's paragraphs (this keeps "Note: …" or "**Pros:** …" in an ordinary
        document from being taken for speakers). Then every such line is a label. A `Name:` line that is not a
        label is read as written, as its own sentence (a "." is added if it ends without punctuation).
  * Lines after a label without one continue the turn, across blank lines, until the next label or a heading.
  * A turn with no words in it (e.g. a `[Music]` cue) is ignored.
Voices: a labelled turn uses speakers[name] → speakers["*"] → if a mapping was given, `InvalidInput("speakers")`
naming the speakers found and the ones mapped; with no mapping every turn uses `voice`. Unlabelled text and
headings use `voice` (or speakers["*"] when `voice` is None). A mapping entry also carries the turn's model
(1-3) and speed into its requests; an entry without a voice gets its model's default voice (`model_voices`).

Markdown: ATX and setext (single-line) headings start sections and are read as their own request; emphasis,
strikethrough, list bullets, task boxes, blockquote markers, HTML/SSML tags, comments, footnote marks and
horizontal rules are removed; `code` keeps its text; ordered-list numbers are kept ("1. Mix" reads "one, mix")
and a list item without final punctuation gets a "." so items are not run together. `[text](url)` → text.
Images are dropped (alt text is usually a file name) and counted in skipped["images"]. A bare URL (or <url>)
is read as its host name: "https://www.example.com/a?b" → "example.com", which is what a narrator says.
Fenced/indented code blocks and tables are skipped and counted ("code_blocks", "tables"). If every line of the
text is indented, the common indent is removed first (pasted text is not code).

Pauses: `[pause 1.5s]`, `[pause 500ms]`, `[pause 2]` (seconds), `[pause]` (= paragraph pause) and SSML
`<break time="750ms"/>` (`<break/>` = pause_ms, strength strong/x-strong = paragraph pause, none = 0) end the
current request and add to the next request's pause_before_ms. One tag above max_pause_ms → InvalidInput("text");
the total before one request is capped at max_pause_ms. Pauses before the first or after the last request are
dropped (the first request always has 0).
pause_before_ms: pause_ms within a paragraph (list items of one list are one paragraph), paragraph_pause_ms at
blank lines, skipped code blocks/tables, horizontal rules and speaker labels, 2 × paragraph_pause_ms before a
heading (all capped at max_pause_ms).

Whitespace: a single newline joins lines (markdown soft break); any run of whitespace becomes one space.

Splitting: hand-written rules, one linear regex pass per paragraph. Sentences end at . ! ? … (+ Devanagari and
Arabic full stops) followed by a space, or at CJK 。！？；; closing quotes/brackets stay with the sentence. Not an
end: titles and Latin abbreviations (Dr., e.g., vs.), "No./Fig./Jan." before a number, single-letter initials,
dotted acronyms (U.S.), a list number at the start of a sentence, decimals, and any end followed by a lowercase
word (so '"Really?" she asked' stays one sentence). Sentences are packed greedily into requests of ≤ max_chars;
a longer sentence is cut at the last clause mark (, ; : — – ，、；：) in the last two thirds of the window,
else at the last space, else between two graphemes that are not inside a word (CJK, Thai, … have no spaces),
else (one "word" longer than max_chars) between two graphemes. Grapheme rules: never before a combining mark,
variation selector, ZWJ, skin-tone modifier, emoji tag or Hangul jamo V/T, never after a ZWJ or virama, never
inside a regional-indicator (flag) pair. Requests with no letter, digit or emoji are dropped.

Why no library: pysbd (last release 2021) took ~0.5 s per 100k characters, split "2023... Then" inside the
ellipsis and has no CJK-without-spaces chunking; sentencex ≥ 1.0 is a compiled Rust wheel (not pure Python,
4 MB .so, and platforms without a wheel fall back to the pure-Python 0.6 line, which behaves differently: it
kept '"It was great." The U.S.' as one sentence). Neither chunks long sentences grapheme-safely, which we need
anyway. These rules plan 100k characters in tens of milliseconds.

Cooperative: `plan` calls audio.cooperate.cooperate() between paragraphs (a hub cycle every ≥10 ms): it lets
other greenlets run under gevent and costs nothing measurable otherwise.
"""

from __future__ import annotations

import html
import re
import textwrap
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .cooperate import cooperate
from .errors import InvalidInput
from .model import Plan, Request, SpeakerVoice

__all__ = ["plan"]

# --------------------------------------------------------------------------------------------------------------
# Character classes

_ZWJ = "\u200d"
# Internal sentinels live in planes 15/16 (private use), which are removed from the input first.
_PAUSE = "\U0010fffd"
_PH_BASE = 0xF0000
_PH_MAX = 0xFFFFD - _PH_BASE
_PRIVATE_RE = re.compile("[\U000f0000-\U0010ffff]")
_PH_RE = re.compile("[\U000f0000-\U000ffffd]")
# Control characters (except \n and \t), zero-width space, BOM, lone surrogates.
_JUNK_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f\u200b\u2060\ufeff\ud800-\udfff]")

_CJK_CLASS = "\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_CLOSERS = "\"'”’»›)\\]}）」』】〕〉》〗"
_SPEAKABLE_RE = re.compile(r"[^\W_]|[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]")


def _continuous_script(cp: int) -> bool:
    """Scripts written without spaces between words: a line may break between any two graphemes."""
    return (
        0x0E00 <= cp <= 0x0EFF  # Thai, Lao
        or 0x1000 <= cp <= 0x109F  # Myanmar
        or 0x1780 <= cp <= 0x17FF  # Khmer
        or 0x2E80 <= cp <= 0x31FF  # CJK radicals, punctuation, kana, bopomofo
        or 0x3400 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xA000 <= cp <= 0xA4CF  # Yi
        or 0xAC00 <= cp <= 0xD7AF  # Hangul syllables
        or 0xF900 <= cp <= 0xFAFF
        or 0xFF00 <= cp <= 0xFFEF  # full/half-width forms
        or 0x20000 <= cp <= 0x3FFFF
    )


def _extends(ch: str) -> bool:
    """True if `ch` belongs to the grapheme cluster of the character before it."""
    cp = ord(ch)
    if ch == _ZWJ or 0xFE00 <= cp <= 0xFE0F or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F:
        return True
    if 0x1160 <= cp <= 0x11FF or 0xD7B0 <= cp <= 0xD7FF or 0xE0100 <= cp <= 0xE01EF:
        return True
    return unicodedata.category(ch) in ("Mn", "Me", "Mc")


def _is_ri(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _grapheme_break(s: str, i: int, floor: int = 0) -> bool:
    """May `s` be cut before index i? `floor` is a known boundary (limits the regional-indicator look-back)."""
    if i <= 0 or i >= len(s):
        return True
    a, b = s[i - 1], s[i]
    if _extends(b) or a == _ZWJ or unicodedata.combining(a) == 9:  # 9 = virama
        return False
    if 0x1100 <= ord(a) <= 0x115F and 0x1100 <= ord(b) <= 0x115F:  # Hangul leading jamo run
        return False
    if _is_ri(a) and _is_ri(b):
        run, j = 0, i - 1
        while j >= floor and _is_ri(s[j]):
            run += 1
            j -= 1
        return run % 2 == 0
    return True


def _inside_word(s: str, i: int) -> bool:
    """Is index i between two characters of one word of a script that separates words with spaces?"""
    a, b = s[i - 1], s[i]
    if _continuous_script(ord(a)) or _continuous_script(ord(b)):
        return False
    return (a.isalnum() or _extends(a)) and (b.isalnum() or _extends(b))


def _speakable(text: str) -> bool:
    return _SPEAKABLE_RE.search(text) is not None


# --------------------------------------------------------------------------------------------------------------
# Inline markup


_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~\"'])")
_BLANKS_RE = re.compile(r"[ \t]{2,}")
_CODE_SPAN_RE = re.compile(r"(`{1,3})(?!`)([^\n]{1,500}?)(?<!`)\1(?!`)")
_PAUSE_TAG_RE = re.compile(
    r"\[[ \t]*pause(?:[ \t]*[:=]?[ \t]*(\d+(?:\.\d+)?)[ \t]*"
    r"(ms|milliseconds?|s|secs?|seconds?)?)?[ \t]*\]",
    re.IGNORECASE,
)
_BREAK_TAG_RE = re.compile(r"<[ \t]*break\b([^<>]{0,500})>(?:[ \t]*</[ \t]*break[ \t]*>)?", re.IGNORECASE)
_BREAK_TIME_RE = re.compile(r"""time[ \t]*=[ \t]*["']?[ \t]*(\d+(?:\.\d+)?)[ \t]*(ms|s)?[ \t]*["']?""", re.IGNORECASE)
_BREAK_STRENGTH_RE = re.compile(r"""strength[ \t]*=[ \t]*["']?([a-z-]+)""", re.IGNORECASE)
_IMAGE_RE = re.compile(
    r"!\[[^\[\]\n]{0,1000}\](?:\([ \t]*(?:<[^<>\n]{0,2000}>|[^()\s]{0,2000})"
    r"(?:[ \t]+(?:\"[^\"\n]{0,500}\"|'[^'\n]{0,500}'))?[ \t]*\)|\[[^\[\]\n]{0,200}\])"
)
_LINK_RE = re.compile(
    r"\[([^\[\]\n]{0,1000})\](?:\([ \t]*(?:<[^<>\n]{0,2000}>|[^()\s]{0,2000})"
    r"(?:[ \t]+(?:\"[^\"\n]{0,500}\"|'[^'\n]{0,500}'))?[ \t]*\)|\[[^\[\]\n]{0,200}\])"
)
_FOOTNOTE_RE = re.compile(r"\[\^[^\[\]\s]{1,100}\]")
_AUTOLINK_RE = re.compile(r"<((?:https?|ftp)://[^<>\s]{1,2000}|mailto:[^<>\s]{1,500}|[^<>\s@]{1,200}@[^<>\s@]{1,200})>")
_URL_RE = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]{0,2000}[^\s<>\"'`.,;:!?)\]}]", re.IGNORECASE)
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]{0,40}(?:\s[^<>]{0,1000})?/?>")
_BLOCK_TAGS = frozenset(
    re.split(
        r"\s+",
        "br p div li ul ol tr td th table h1 h2 h3 h4 h5 h6 section article header footer blockquote hr s "
        "speak paragraph sentence",
    )
)
_ENTITY_RE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_STARS_RE = re.compile(r"\*+")
_UNDERSCORES_RE = re.compile(r"_+")
_TILDES_RE = re.compile(r"~~+|==+(?=\S)|(?<=\S)==+")
_GH_ALERT_RE = re.compile(r"\[![A-Za-z]{1,20}\]")
_CHECKBOX_RE = re.compile(r"^\[[ xX]\][ \t]+")


def _host(url: str) -> str:
    if url.lower().startswith("www."):
        url = "http://" + url
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return host.removeprefix("www.")


class _Protect:
    """Swaps text that later markup rules must not touch (code spans, escapes) for private-use placeholders."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def put(self, text: str) -> str:
        if len(self.items) >= _PH_MAX:
            return text
        self.items.append(text)
        return chr(_PH_BASE + len(self.items) - 1)

    def restore(self, text: str) -> str:
        if not self.items:
            return text
        for _ in range(3):  # a protected URL may itself hold a protected escape
            if not _PH_RE.search(text):
                break
            text = _PH_RE.sub(lambda m: self.items[ord(m[0]) - _PH_BASE], text)
        return _PH_RE.sub("", text)


def _star_run(m: re.Match[str]) -> str:
    s, a, b = m.string, m.start(), m.end()
    prev = s[a - 1] if a else " "
    nxt = s[b] if b < len(s) else " "
    if (prev.isspace() and nxt.isspace()) or (prev.isdigit() and nxt.isdigit()):
        return m[0]  # "2 * 3", "2*3"
    return ""


def _underscore_run(m: re.Match[str]) -> str:
    s, a, b = m.string, m.start(), m.end()
    prev = s[a - 1] if a else " "
    nxt = s[b] if b < len(s) else " "
    if prev.isalnum() and nxt.isalnum():
        return m[0]  # snake_case
    return ""


def _entity(m: re.Match[str]) -> str:
    out = html.unescape(m[0])
    if out == m[0]:
        return out
    return "".join(ch for ch in out if ch.isprintable() and not _PRIVATE_RE.match(ch)) or " "


@dataclass
class _Pause:
    ms: int


class _Inline:
    """Cleans one paragraph unit; returns text pieces and _Pause markers (validated against max_pause_ms)."""

    def __init__(self, pause_ms: int, paragraph_pause_ms: int, max_pause_ms: int, skipped: dict[str, int]):
        self.pause_ms = pause_ms
        self.paragraph_pause_ms = paragraph_pause_ms
        self.max_pause_ms = max_pause_ms
        self.skipped = skipped

    def _pause_value(self, tag: str, ms: float) -> int:
        value = round(ms)
        if value > self.max_pause_ms:
            raise InvalidInput(
                "text",
                f"the pause tag {tag.strip()!r} asks for {value} ms; the longest allowed pause is "
                f"{self.max_pause_ms} ms",
            )
        return value

    def _pause_tag(self, m: re.Match[str]) -> str:
        number, unit = m[1], (m[2] or "s").lower()
        if number is None:
            ms: float = self.paragraph_pause_ms
        else:
            ms = float(number) * (1 if unit.startswith("m") else 1000)
        return f"{_PAUSE}{self._pause_value(m[0], ms)}{_PAUSE}"

    def _break_tag(self, m: re.Match[str]) -> str:
        attrs = m[1]
        t = _BREAK_TIME_RE.search(attrs)
        if t:
            ms: float = float(t[1]) * (1 if (t[2] or "ms").lower() == "ms" else 1000)
        else:
            strength = _BREAK_STRENGTH_RE.search(attrs)
            level = strength[1].lower() if strength else "medium"
            ms = 0 if level == "none" else self.paragraph_pause_ms if level in ("strong", "x-strong") else self.pause_ms
        return f"{_PAUSE}{self._pause_value(m[0], ms)}{_PAUSE}"

    @staticmethod
    def _autolink(m: re.Match[str]) -> str:
        target = m[1]
        return _host(target) if "://" in target else target.removeprefix("mailto:")

    def _image(self, m: re.Match[str]) -> str:
        self.skipped["images"] = self.skipped.get("images", 0) + 1
        return " "

    def clean(self, raw: str) -> list[str | _Pause]:
        prot = _Protect()
        text = _ESCAPE_RE.sub(lambda m: prot.put(m[1]), _BLANKS_RE.sub(" ", raw))
        text = _CODE_SPAN_RE.sub(lambda m: prot.put(m[2].strip()), text)
        text = _PAUSE_TAG_RE.sub(self._pause_tag, text)
        text = _BREAK_TAG_RE.sub(self._break_tag, text)
        text = _GH_ALERT_RE.sub(" ", text)
        text = _IMAGE_RE.sub(self._image, text)
        text = _FOOTNOTE_RE.sub("", text)
        text = _LINK_RE.sub(lambda m: m[1], text)
        text = _AUTOLINK_RE.sub(self._autolink, text)
        text = _URL_RE.sub(lambda m: prot.put(_host(m[0])), text)
        text = _TAG_RE.sub(lambda m: " " if _tag_name(m[0]) in _BLOCK_TAGS else "", text)
        text = _ENTITY_RE.sub(_entity, text)
        text = _STARS_RE.sub(_star_run, text)
        text = _UNDERSCORES_RE.sub(_underscore_run, text)
        text = _TILDES_RE.sub("", text)
        text = text.replace("`", "")
        text = prot.restore(text)
        out: list[str | _Pause] = []
        for k, part in enumerate(text.split(_PAUSE)):
            if k % 2:
                out.append(_Pause(int(part)))
            else:
                norm = " ".join(part.split())
                if norm:
                    out.append(norm)
        return out


def _tag_name(tag: str) -> str:
    m = re.match(r"</?([A-Za-z][A-Za-z0-9:-]*)", tag)
    return m[1].lower() if m else ""


# --------------------------------------------------------------------------------------------------------------
# Sentences and chunks

# Possessive runs and a look-behind keep these linear on long runs of dots or quotes.
_TERM_RE = re.compile(
    rf"(?<![.!?…‼⁇⁈⁉।॥؟۔])[.!?…‼⁇⁈⁉।॥؟۔]++[{_CLOSERS}]*+(?=\s|$|[{_CJK_CLASS}])"
    rf"|(?<![。！？；｡])[。！？；｡]++[{_CLOSERS}]*+"
)
_CLAUSE_RE = re.compile(rf"[,;:][{_CLOSERS}]*+(?=\s)|[—–]|[，、；：][{_CLOSERS}]*+")
_OPENERS = "\"'“‘«‹([{¿¡"
# Never a sentence end.
_TITLES = frozenset(
    re.split(
        r"\s+",
        "mr mrs ms mx dr prof sr jr st mt ft gen col capt cpt lt sgt maj adm rev hon sen rep gov pres supt insp "
        "vs v e.g eg i.e ie cf viz al approx ca c est dept univ assn bros messrs mme mlle",
    )
)
# Not an end when a number follows: "No. 5", "Fig. 3", "Jan. 5".
_BEFORE_NUMBER = frozenset(
    re.split(
        r"\s+",
        "no nos nr fig figs vol vols p pp art ch chap sec sect eq op para pt "
        "jan feb mar apr jun jul aug sep sept oct nov dec",
    )
)
_ROMAN_RE = re.compile(r"[ivxlcdm]{1,6}|[IVXLCDM]{1,6}")


def _is_sentence_end(s: str, sent_start: int, m: re.Match[str]) -> bool:
    run = m[0].rstrip(_CLOSERS)
    if run[0] in "。！？；｡":
        return True
    after = m.end()
    while after < len(s) and s[after] == " ":
        after += 1
    nxt = s[after] if after < len(s) else ""
    if not nxt:
        return True
    if nxt.islower():
        return False
    if run != ".":
        return True  # ! ? ... …  (followed by something that is not lowercase)
    # a single period
    lo = max(sent_start, m.start() - 40)
    tok_start = s.rfind(" ", lo, m.start()) + 1
    if tok_start == 0 and lo > 0 and lo != sent_start:
        return True  # a token longer than any abbreviation
    token = s[max(tok_start, lo) : m.start()].lstrip(_OPENERS)
    if not token:
        return True
    low = token.lower()
    if low in _TITLES:
        return False
    if low in _BEFORE_NUMBER and nxt.isdigit():
        return False
    if len(token) == 1 and token.isalpha():
        return False  # an initial: "J. R. R. Tolkien"
    if "." in token and all(len(part) == 1 and part.isalpha() for part in token.split(".")):
        # dotted abbreviation: "U.S." never ends a sentence; "a.m."/"p.m." does before a capital
        return low in ("a.m", "p.m")
    if m.start() - sent_start > 12:
        return True
    head = s[sent_start : m.start()].strip().lstrip(_OPENERS)
    return not (head and len(head) <= 6 and (head.isdigit() or _ROMAN_RE.fullmatch(head)))  # "1. First"


def _sentences(s: str) -> list[tuple[int, int]]:
    """Spans of the sentences of a whitespace-normalized string (spaces between them excluded)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _TERM_RE.finditer(s):
        if m.end() <= start or not _is_sentence_end(s, start, m):
            continue
        spans.append((start, m.end()))
        start = m.end()
        while start < len(s) and s[start] == " ":
            start += 1
    if start < len(s):
        spans.append((start, len(s)))
    return spans


def _char_cut(s: str, start: int, limit: int) -> int:
    for i in range(limit, start, -1):
        if _grapheme_break(s, i, start) and not _inside_word(s, i):
            return i
    for i in range(limit, start, -1):
        if _grapheme_break(s, i, start):
            return i
    return limit  # a single grapheme longer than max_chars: nothing else fits


def _chunks(s: str, max_chars: int) -> list[tuple[str, bool]]:
    """Cut one over-long sentence into pieces of ≤ max_chars; (piece, space before it) pairs."""
    clauses = [m.end() for m in _CLAUSE_RE.finditer(s)]
    spaces = [i for i, ch in enumerate(s) if ch == " "]
    out: list[tuple[str, bool]] = []
    start, space_before = 0, False
    while len(s) - start > max_chars:
        limit = start + max_chars
        i = bisect_right(clauses, limit) - 1
        if i >= 0 and clauses[i] > start + max_chars // 3 and _grapheme_break(s, clauses[i], start):
            cut = clauses[i]
        else:
            j = bisect_right(spaces, limit) - 1
            cut = spaces[j] if j >= 0 and spaces[j] > start else _char_cut(s, start, limit)
        piece = s[start:cut].rstrip(" ")
        if piece:
            out.append((piece, space_before))
        space_before = cut < len(s) and s[cut] == " "
        start = cut
        while start < len(s) and s[start] == " ":
            start += 1
    if start < len(s):
        out.append((s[start:], space_before))
    return out


def _items(s: str, max_chars: int) -> list[tuple[str, bool]]:
    """Sentences (or pieces of over-long ones) of a normalized string, with 'space before' flags."""
    out: list[tuple[str, bool]] = []
    for k, (a, b) in enumerate(_sentences(s)):
        sentence = s[a:b]
        space = k > 0 and s[a - 1] == " "
        if len(sentence) <= max_chars:
            out.append((sentence, space))
        else:
            pieces = _chunks(sentence, max_chars)
            if pieces:
                pieces[0] = (pieces[0][0], space)
            out.extend(pieces)
    return out


# --------------------------------------------------------------------------------------------------------------
# Blocks and lines

_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*))?$")
_HR_RE = re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})$")
_SETEXT_RE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_TABLE_DELIM_RE = re.compile(r"^\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?$")  # on a stripped line
_QUOTE_RE = re.compile(r"^(?:[ \t]{0,3}>[ \t]?)+")
_LIST_RE = re.compile(r"^[ \t]*(?:([-*+•])|(\d{1,9}[.)]))(?:[ \t]+|$)")
_LINK_DEF_RE = re.compile(
    r"^ {0,3}\[[^\[\]]{1,200}\]:[ \t]*(?:<[^<>]*>|(?:https?://|ftp://|mailto:|www\.|/|\./|#)\S*"
    r"|[\w-]+(?:\.[\w-]+)+(?:/\S*)?)(?:[ \t]+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?[ \t]*$"
)
_FOOTNOTE_DEF_RE = re.compile(r"^ {0,3}\[\^[^\[\]\s]{1,100}\]:[ \t]*")
_COLON_LABEL_RE = re.compile(r"^(\*{0,2}|_{0,2})[ \t]*([^\W\d_][\w'’ &-]{0,40}?)[ \t]*(?:\1[ \t]*:|:[ \t]*\1)(?=\s|$)")
_BRACKET_LABEL_RE = re.compile(r"^(\*{0,2})\[[ \t]*([^\[\]\n]{1,40}?)[ \t]*\]\1(?![(\[])[ \t]*:?(?=\s|$)")
_NAME_BAD_RE = re.compile(r"[.!?;:,\"“”()\[\]{}<>/\\|#=@*_`~^]")
_PAUSE_NAME_RE = re.compile(r"^pause\b", re.IGNORECASE)


def _valid_name(name: str) -> bool:
    return (
        0 < len(name) <= 32
        and len(name.split()) <= 3
        and name[0].isalpha()
        and not _NAME_BAD_RE.search(name)
        and not _PAUSE_NAME_RE.match(name)
    )


def _indent(line: str) -> int:
    n = 0
    for ch in line:
        if ch == " ":
            n += 1
        elif ch == "\t":
            n += 4 - n % 4
        else:
            break
    return n


@dataclass
class _Ev:
    kind: str  # "break" | "heading" | "text" | "label"
    text: str = ""
    item: bool = False  # text: starts a new list item
    start: bool = False  # starts a paragraph
    style: str = ""  # label: "bracket" | "colon"
    name: str = ""  # label: speaker name as written
    line: str = ""  # label: the whole line, read as text if the label is not accepted


@dataclass
class _Blocks:
    events: list[_Ev] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _strip_html_blocks(text: str) -> str:
    """Remove <!-- comments --> and <script>/<style> elements, linearly (str.find, no regex backtracking)."""
    if "<" not in text:
        return text
    lower = text.lower()
    out: list[str] = []
    pos = 0
    openers = (("<!--", "-->"), ("<script", "</script>"), ("<style", "</style>"))
    while True:
        best = -1
        pair = openers[0]
        for op, cl in openers:
            i = lower.find(op, pos)
            if i != -1 and (best == -1 or i < best):
                best, pair = i, (op, cl)
        if best == -1:
            out.append(text[pos:])
            break
        out.append(text[pos:best])
        end = lower.find(pair[1], best + len(pair[0]))
        if end == -1:
            out.append(" ")
            pos = best + len(pair[0])  # unclosed: drop only the opener
        else:
            pos = end + len(pair[1])
            if text.count("\n", best, pos):
                out.append("\n")
    return "".join(out)


def _parse_blocks(text: str, tick: Callable[[], None]) -> _Blocks:
    blocks = _Blocks()
    events = blocks.events
    lines = text.split("\n")
    n = len(lines)
    i = 0
    para_open = False  # the previous line was paragraph text (so an indented line continues it)
    in_list = False
    while i < n:
        if i % 512 == 0:
            tick()
        raw = lines[i]
        fence = _FENCE_RE.match(raw)
        if fence and not (fence[1][0] == "`" and "`" in fence[2]):
            mark = fence[1]
            close = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
            j = i + 1
            while j < n and not close.match(lines[j]):
                j += 1
            blocks.skipped["code_blocks"] = blocks.skipped.get("code_blocks", 0) + 1
            events.append(_Ev("break"))
            i, para_open, in_list = j + 1, False, False
            continue
        if not raw.strip():
            events.append(_Ev("break"))
            i, para_open = i + 1, False
            continue
        if _indent(raw) >= 4 and not para_open and not in_list:
            j = i + 1
            while j < n and (not lines[j].strip() or _indent(lines[j]) >= 4):
                j += 1
            blocks.skipped["code_blocks"] = blocks.skipped.get("code_blocks", 0) + 1
            events.append(_Ev("break"))
            i = j
            continue
        line = raw
        quoted = _QUOTE_RE.match(line)
        if quoted:
            line = line[quoted.end() :]
            if not line.strip():
                events.append(_Ev("break"))
                i, para_open = i + 1, False
                continue
        if "|" in line and i + 1 < n and "-" in lines[i + 1] and _is_table_delim(lines[i + 1]):
            j = i + 2
            while j < n and lines[j].strip() and "|" in lines[j]:
                j += 1
            blocks.skipped["tables"] = blocks.skipped.get("tables", 0) + 1
            events.append(_Ev("break"))
            i, para_open, in_list = j, False, False
            continue
        atx = _ATX_RE.match(line)
        if atx:
            title = _atx_title(atx[2] or "")
            events.append(_Ev("heading", title) if title.strip() else _Ev("break"))
            i, para_open, in_list = i + 1, False, False
            continue
        if _SETEXT_RE.match(line) and para_open:
            prev = events[-1] if events else None
            if prev and prev.kind == "text" and prev.start and not prev.item:
                events[-1] = _Ev("heading", prev.text)
                i, para_open, in_list = i + 1, False, False
                continue
        if _HR_RE.match(line) or _SETEXT_RE.match(line):
            events.append(_Ev("break"))
            i, para_open, in_list = i + 1, False, False
            continue
        if _LINK_DEF_RE.match(line):
            i += 1
            continue
        start = not para_open
        footnote = _FOOTNOTE_DEF_RE.match(line)
        if footnote:
            line, start = line[footnote.end() :], True
        lst = _LIST_RE.match(line)
        if lst:
            rest = _CHECKBOX_RE.sub("", line[lst.end() :])
            text_ = f"{lst[2]} {rest}" if lst[2] else rest
            events.append(_Ev("text", text_, item=True, start=True))
            i, para_open, in_list = i + 1, True, True
            continue
        if _indent(raw) == 0 or not in_list:
            in_list = False
        label = _label(line)
        if label:
            style, name, rest = label
            events.append(_Ev("label", rest, start=True, style=style, name=name, line=line))
        else:
            events.append(_Ev("text", line.strip(), start=start))
        i, para_open = i + 1, True
    return blocks


def _is_table_delim(line: str) -> bool:
    return _TABLE_DELIM_RE.match(_QUOTE_RE.sub("", line).strip()) is not None


def _atx_title(text: str) -> str:
    """Heading text without an optional closing run of #s (which must follow a space)."""
    text = text.strip()
    bare = text.rstrip("#")
    if bare != text and (not bare or bare[-1] in " \t"):
        text = bare.strip()
    return text


def _label(line: str) -> tuple[str, str, str] | None:
    stripped = line.lstrip(" \t")
    if stripped.startswith(("[", "*[", "**[")):
        m = _BRACKET_LABEL_RE.match(stripped)
        if m:
            name = " ".join(m[2].split())
            if _valid_name(name) and name.lower() != "x":
                return "bracket", name, stripped[m.end() :].strip()
        return None
    m = _COLON_LABEL_RE.match(stripped)
    if m:
        name = " ".join(m[2].split())
        if _valid_name(name):
            return "colon", name, stripped[m.end() :].strip()
    return None


# --------------------------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Out:
    text: str
    speaker: str | None
    section: str | None
    pause: int


class _Builder:
    def __init__(
        self,
        *,
        max_chars: int,
        pause_ms: int,
        paragraph_pause_ms: int,
        sentence_per_request: bool,
        max_pause_ms: int,
        max_requests: int,
        inline: _Inline,
        tick: Callable[[], None],
    ) -> None:
        self.max_chars = max_chars
        self.gaps = (pause_ms, paragraph_pause_ms, 2 * paragraph_pause_ms)
        self.sentence_per_request = sentence_per_request
        self.max_pause_ms = max_pause_ms
        self.max_requests = max_requests
        self.inline = inline
        self.tick = tick
        self.out: list[_Out] = []
        self.gap = 0  # strongest boundary since the last request: 0 sentence, 1 paragraph, 2 heading
        self.extra = 0  # pause-tag milliseconds since the last request
        self.section: str | None = None
        self.sections: list[str] = []
        self.speaker: str | None = None

    def boundary(self, level: int) -> None:
        self.gap = max(self.gap, level)

    def emit(self, text: str) -> bool:
        if not _speakable(text):
            return False
        pause = 0 if not self.out else min(self.gaps[self.gap] + self.extra, self.max_pause_ms)
        self.out.append(_Out(text, self.speaker, self.section, pause))
        self.gap, self.extra = 0, 0
        if len(self.out) > self.max_requests:
            raise InvalidInput(
                "max_chars_per_request",
                f"the text needs more than {self.max_requests} TTS requests at {self.max_chars} characters per "
                f"request; use a larger max_chars_per_request (or shorten the text)",
            )
        return True

    def paragraph(self, units: list[tuple[list[str | _Pause], bool]]) -> bool:
        """Split, pack and emit one paragraph; units are (cleaned parts, is list item). True if it spoke."""
        items: list[tuple[str, bool] | _Pause] = []
        for parts, is_item in units:
            if is_item:
                last = max((k for k, p in enumerate(parts) if isinstance(p, str)), default=-1)
                if last >= 0:
                    piece = parts[last]
                    assert isinstance(piece, str)
                    if piece[-1].isalnum():
                        parts[last] = piece + ("。" if _continuous_script(ord(piece[-1])) else ".")
            first = True
            for part in parts:
                if isinstance(part, _Pause):
                    items.append(part)
                    continue
                for k, (sentence, space) in enumerate(_items(part, self.max_chars)):
                    items.append((sentence, True if (first and k == 0) else space))
                first = False
        spoke = False
        buf: list[str] = []
        size = 0

        def flush() -> None:
            nonlocal buf, size, spoke
            if buf:
                spoke = self.emit("".join(buf).strip()) or spoke
            buf, size = [], 0

        for item in items:
            if isinstance(item, _Pause):
                flush()
                if self.out:
                    self.extra += item.ms
                continue
            text, space = item
            if space and buf and _continuous_script(ord(buf[-1][-1])) and _continuous_script(ord(text[0])):
                space = False  # CJK list items / lines: no space between them
            add = len(text) + (1 if space and buf else 0)
            if buf and (self.sentence_per_request or size + add > self.max_chars):
                flush()
                add = len(text)
            buf.append((" " if space and buf else "") + text)
            size += add
            if len(self.out) % 256 == 255:
                self.tick()
        flush()
        self.tick()
        return spoke


def plan(
    text: str,
    *,
    voice: str | None = None,
    speakers: Mapping[str, str | SpeakerVoice] | None = None,
    model_voices: Mapping[int, str | None] | None = None,
    max_chars: int = 600,
    pause_ms: int = 300,
    paragraph_pause_ms: int = 700,
    sentence_per_request: bool = False,
    max_pause_ms: int = 10_000,
    max_requests: int = 5_000,
) -> Plan:
    """Turn text into TTS requests. See the module docstring for the rules. Raises InvalidInput.

    `speakers` values are SpeakerVoice (model, voice, speed; see audio.options.speakers) or plain voice names
    (model 1). `model_voices`: the default voice of each model, for a speaker mapped without a voice
    (`Guest=2:`); model 1's default is `voice`.
    """
    if not isinstance(text, str):
        raise InvalidInput("text", "must be a string")
    if max_chars < 1:
        raise InvalidInput("max_chars_per_request", f"{max_chars} is too small")
    for name, value in (
        ("pause_ms", pause_ms),
        ("paragraph_pause_ms", paragraph_pause_ms),
        ("max_pause_ms", max_pause_ms),
    ):
        if value < 0:
            raise InvalidInput(name, f"{value} must not be negative")
    mapping = {
        str(k).strip().lower(): v if isinstance(v, SpeakerVoice) else SpeakerVoice(v)
        for k, v in (speakers or {}).items()
    }
    tick = cooperate

    text = "\n".join(text.splitlines())
    text = _PRIVATE_RE.sub("", _JUNK_RE.sub("", text))
    if not text.strip():
        raise InvalidInput("text", "is empty: there is nothing to read aloud")
    text = _strip_html_blocks(text)
    if all(_indent(line) >= 4 for line in text.split("\n") if line.strip()):
        text = textwrap.dedent(text.expandtabs(4))
    blocks = _parse_blocks(text, tick)
    accepted = _accepted_colon_names(blocks.events, mapping)

    skipped = dict(blocks.skipped)
    builder = _Builder(
        max_chars=max_chars,
        pause_ms=pause_ms,
        paragraph_pause_ms=paragraph_pause_ms,
        sentence_per_request=sentence_per_request,
        max_pause_ms=max_pause_ms,
        max_requests=max_requests,
        inline=_Inline(pause_ms, paragraph_pause_ms, max_pause_ms, skipped),
        tick=tick,
    )
    display: dict[str, str] = {}  # lower-cased name → first spelling
    spoken_by: list[str] = []
    units: list[tuple[str, bool]] = []

    def flush() -> None:
        if units:
            builder.boundary(1)
            cleaned = [(builder.inline.clean(raw), is_item) for raw, is_item in units]
            if builder.paragraph(cleaned) and builder.speaker is not None and builder.speaker not in spoken_by:
                spoken_by.append(builder.speaker)
            units.clear()

    for ev in blocks.events:
        if ev.kind == "break":
            flush()
        elif ev.kind == "heading":
            flush()
            builder.speaker = None
            title = " ".join(part for part in builder.inline.clean(ev.text) if isinstance(part, str))
            if _speakable(title):
                builder.section = title
                builder.sections.append(title)
                builder.boundary(2)
                builder.paragraph([([title], False)])
                builder.boundary(1)
        elif ev.kind == "label" and (ev.style == "bracket" or ev.name.lower() in accepted):
            flush()
            key = ev.name.lower()
            builder.speaker = display.setdefault(key, ev.name)
            if ev.text:
                units.append((ev.text, False))
        else:
            if ev.kind == "label":  # a `Name:` line that is not a label: its own unit, like a list item
                units.append((ev.line, True))
            elif ev.item or not units:
                units.append((ev.text, ev.item))
            else:
                raw, is_item = units[-1]
                units[-1] = (f"{raw} {ev.text}", is_item)
    flush()

    if not builder.out:
        what = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items())
        raise InvalidInput("text", "there is nothing to read aloud" + (f" (skipped: {what})" if what else ""))

    defaults = {**(model_voices or {}), 1: voice}
    voices = [
        SpeakerVoice(sv.voice if sv.voice is not None else defaults.get(sv.model), sv.model, sv.speed)
        for sv in _voices(builder.out, spoken_by, mapping, voice)
    ]
    requests = [
        Request(
            index=k,
            text=o.text,
            voice=voices[k].voice,
            speaker=o.speaker,
            section=o.section,
            pause_before_ms=o.pause,
            model=voices[k].model,
            speed=voices[k].speed,
        )
        for k, o in enumerate(builder.out)
    ]
    return Plan(requests=requests, sections=builder.sections, speakers=spoken_by, skipped=skipped)


def _accepted_colon_names(events: list[_Ev], mapping: dict[str, str]) -> set[str]:
    """Lower-cased names whose `Name:` lines are speaker labels (see the module docstring)."""
    colon = [ev.name.lower() for ev in events if ev.kind == "label" and ev.style == "colon"]
    accepted = {name for name in colon if name in mapping and name != "*"}
    starts = sum(1 for ev in events if ev.start and ev.kind in ("text", "label"))
    if len(colon) >= 2 and len(set(colon)) >= 2 and 2 * len(colon) >= starts:
        accepted.update(colon)
    return accepted


def _voices(
    out: list[_Out], spoken_by: list[str], mapping: dict[str, SpeakerVoice], voice: str | None
) -> list[SpeakerVoice]:
    """Model, voice and speed of each request (voice None = its model's default)."""
    default = SpeakerVoice(voice) if voice is not None else mapping.get("*", SpeakerVoice())
    if not mapping:
        return [default] * len(out)
    missing = [name for name in spoken_by if name.lower() not in mapping and "*" not in mapping]
    if missing:
        mapped = ", ".join(k for k in mapping if k != "*") or "none"
        raise InvalidInput(
            "speakers",
            f"no voice for {', '.join(missing)}; speakers in the text: {', '.join(spoken_by)}; mapped: {mapped}. "
            "Add the missing names (Name=voice) or a fallback '*=voice'.",
        )
    fallback = mapping.get("*", SpeakerVoice())
    return [default if o.speaker is None else mapping.get(o.speaker.lower(), fallback) for o in out]
