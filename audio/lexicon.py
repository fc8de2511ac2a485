"""Pronunciation lexicon (`lexicon`): respellings applied to the text sent to the TTS model, and only there.

TTS models mispronounce names, acronyms and jargon ("Dify", "SQL", "nginx"). A lexicon maps a written word to
a spelling the model reads right. It changes what each request sends (Request.spoken) and therefore the cache
key; subtitles, the timeline and stats keep what the author wrote (Request.text).

Syntax (both forms give the same result):
    text   `Dify=Dee-fy; SQL=sequel`   entries separated by `;` or newlines, key and respelling split at the
           first `=`; commas belong to the respelling (a comma is a pause hint to most models)
    JSON   `{"Dify": "Dee-fy", "SQL": "sequel"}`   (for keys containing `=` or `;`)

Matching rules:
- Whole words: a key matches only where it is not glued to more letters or digits of a spaced script, so
  `SQL` changes "SQL" and "SQL's" but not "SQLite" or "MySQL". The check is Unicode-aware (Python's `\\w`
  plus combining marks: `cafe` does not match the start of "café" written with a combining accent).
- CJK: Chinese and Japanese have no spaces between words and Korean attaches particles to words, so
  Han, kana and Hangul characters never count as "more of the word": `数据库` matches inside "我的数据库很快"
  and `Dify` matches in "Difyを使う" and "Dify는". (A CJK key can therefore match inside a longer CJK word;
  longest-first lets a longer key take precedence.)
- Longest first: at any position the longest key that matches wins (`New York City` before `New York`);
  the text is scanned once, so a respelling is never respelled again.
- Case: keys are case-sensitive, except that a key written entirely in lower case matches any case
  (`nginx=engine x` also changes "Nginx" and "NGINX"; `SQL=sequel` changes only "SQL"). When both an exact
  and a lower-case key match, the exact one wins.
- Whitespace inside a key matches any run of whitespace in the text (`New York` matches "New\nYork").

Caps (a typo must not produce a pathological pattern): MAX_ENTRIES entries, keys up to MAX_KEY_CHARS,
respellings up to MAX_VALUE_CHARS, the whole parameter up to MAX_INPUT_CHARS characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput

PARAM = "lexicon"
MAX_ENTRIES = 500
MAX_KEY_CHARS = 100
MAX_VALUE_CHARS = 200
MAX_INPUT_CHARS = 50_000

# Scripts written without spaces between words (or with particles glued on): never a word continuation.
_UNSPACED = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi
    "\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303c"  # iteration marks, Hangzhou numerals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (+ extension A)
    "\ua960-\ua97f\uac00-\ud7ff"  # Hangul
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f\uffa0-\uffdc"  # half-width Katakana, Hangul
    "\U00020000-\U0003ffff"  # CJK extensions B…
)
# One character that continues a word of a spaced script: a word character outside the scripts above, or a
# combining mark (U+0300–U+036F, the combining diacritics of Latin, Greek and Cyrillic text).
_WORD = rf"(?:[^\W{_UNSPACED}]|[\u0300-\u036f])"
_WORD_CHAR = re.compile(_WORD)


@dataclass(frozen=True)
class Lexicon:
    """Parsed entries (key → respelling, in the order given) and the matcher that applies them.

    Matching is two-level so its cost does not explode with the number of entries: one alternation of all
    keys (longest first, no groups, no boundary checks; compiled once) finds where a key starts, and the
    matched text names the key; its word boundaries are then checked in Python, and only when they fail
    are the later keys with the same first letter tried there. Putting the Unicode boundary lookarounds
    into every alternative instead made compiling 500 entries take 3.5 s.
    """

    entries: tuple[tuple[str, str], ...]
    _finder: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _exact: dict[str, _Key] = field(init=False, repr=False, compare=False)
    _folded: dict[str, _Key] = field(init=False, repr=False, compare=False)
    _by_first: dict[str, tuple[_Key, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Longest first; for equal lengths the exact (case-sensitive) key first, then the given order.
        ordered = sorted(self.entries, key=lambda kv: (-len(kv[0]), _any_case(kv[0])))
        keys = [_Key.of(k, v, rank) for rank, (k, v) in enumerate(ordered)]
        by_first: dict[str, list[_Key]] = {}
        for key in keys:  # bucketed by lower-cased first character, each bucket still longest first
            by_first.setdefault(key.first, []).append(key)
        object.__setattr__(self, "_exact", {k.text: k for k in keys if not k.any_case})
        object.__setattr__(self, "_folded", {k.text.casefold(): k for k in keys if k.any_case})
        object.__setattr__(self, "_by_first", {c: tuple(b) for c, b in by_first.items()})
        # No capturing groups: with one group per key, sre's search was 200× slower (measured, 500 keys).
        object.__setattr__(self, "_finder", re.compile("|".join(k.body for k in keys)))

    def apply(self, text: str) -> tuple[str, int]:
        """(`text` with every match respelled, number of replacements)."""
        out: list[str] = []
        done = pos = count = 0
        while (m := self._finder.search(text, pos)) is not None:
            start = m.start()
            hit = self._match_at(text, start, self._key_of(m.group()))
            if hit is None:
                pos = start + 1
                continue
            end, respelling = hit
            out += [text[done:start], respelling]
            done = pos = end
            count += 1
        if not count:
            return text, 0
        out.append(text[done:])
        return "".join(out), count

    def _key_of(self, matched: str) -> _Key:
        """The key the finder matched: the first in order whose text equals `matched` (an exact key comes
        before a lower-case key of the same length, so it is looked up first)."""
        squashed = _squash(matched)
        key = self._exact.get(squashed) or self._folded.get(squashed.casefold())
        if key is None:  # a character that matches case-insensitively but folds differently (e.g. "ſ")
            key = next(k for k in self._by_first.get(matched[0].lower(), ()) if k.pattern.fullmatch(matched))
        return key

    def _match_at(self, text: str, start: int, found: _Key) -> tuple[int, str] | None:
        """(end, respelling) of the longest key that matches at `start` with its boundaries, or None.

        `found` is the finder's pick: the first key in order whose text matches here. When its boundaries
        hold it is the answer; otherwise the keys after it (same first letter) are tried."""
        glued_before = start > 0 and _WORD_CHAR.fullmatch(text[start - 1]) is not None
        for key in (found, *self._by_first.get(text[start].lower(), ())):
            if key is not found and key.rank <= found.rank:
                continue
            if glued_before and key.word_start:
                continue
            m = key.pattern.match(text, start)
            if m is None:
                continue
            end = m.end()
            if key.word_end and end < len(text) and _WORD_CHAR.fullmatch(text[end]):
                continue
            return end, key.respelling
        return None


@dataclass(frozen=True)
class _Key:
    body: str  # regex of the key's text: escaped, whitespace runs flexible, case-insensitive if all lower case
    pattern: re.Pattern[str]
    word_start: bool  # the key starts with a word character: the text before it must not continue the word
    word_end: bool
    respelling: str
    first: str  # the key's first character, lower-cased (the bucket it is tried from)
    rank: int  # position in the longest-first order
    text: str  # the key as written, whitespace runs squashed to one space
    any_case: bool

    @classmethod
    def of(cls, key: str, respelling: str, rank: int) -> _Key:
        body = r"\s+".join(re.escape(part) for part in key.split())
        body = f"(?i:{body})" if _any_case(key) else f"(?:{body})"
        return cls(body, re.compile(body), bool(_WORD_CHAR.fullmatch(key[0])),
                   bool(_WORD_CHAR.fullmatch(key[-1])), respelling, key[0].lower(), rank, _squash(key), _any_case(key))


def _any_case(key: str) -> bool:
    """A key written entirely in lower case (and having letters with case) matches any case."""
    return key == key.lower() and key != key.upper()


def _squash(text: str) -> str:
    return " ".join(text.split())


def parse(value: Any) -> Lexicon | None:
    """The `lexicon` parameter (text form, JSON object text, or a dict) → Lexicon; blank → None.

    Raises InvalidInput naming `lexicon` for malformed input, empty keys or respellings, duplicate keys and
    anything over the caps.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        text = str(value)
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidInput(PARAM, f"is {len(text):,} characters long; the limit is {MAX_INPUT_CHARS:,}")
        text = text.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                where = f"line {exc.lineno} column {exc.colno}"
                raise InvalidInput(PARAM, f"invalid JSON object: {exc.msg} ({where})") from None
            if not isinstance(obj, dict):
                raise InvalidInput(PARAM, 'the JSON value must be an object of "word": "respelling"')
            pairs = list(obj.items())
        else:
            pairs = []
            for part in text.replace("\r", "\n").replace("\n", ";").split(";"):
                if not part.strip():
                    continue
                key, sep, respelling = part.partition("=")
                if not sep:
                    raise InvalidInput(PARAM, f"{part.strip()!r} is not of the form word=respelling")
                pairs.append((key, respelling))
    if len(pairs) > MAX_ENTRIES:
        raise InvalidInput(PARAM, f"has {len(pairs)} entries; the limit is {MAX_ENTRIES}")
    entries: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        if not isinstance(raw_value, str):
            raise InvalidInput(PARAM, f"the respelling of {raw_key!r} must be a string, not {type(raw_value).__name__}")
        key, respelling = _squash(str(raw_key)), _squash(raw_value)
        if not key:
            raise InvalidInput(PARAM, f"an entry has an empty word (respelling {respelling!r})")
        if not respelling:
            raise InvalidInput(PARAM, f"the respelling of {key!r} is empty")
        if len(key) > MAX_KEY_CHARS:
            raise InvalidInput(PARAM, f"the word {key[:20]!r}… is longer than {MAX_KEY_CHARS} characters")
        if len(respelling) > MAX_VALUE_CHARS:
            raise InvalidInput(PARAM, f"the respelling of {key!r} is longer than {MAX_VALUE_CHARS} characters")
        if key in entries:
            raise InvalidInput(PARAM, f"{key!r} is given twice")
        entries[key] = respelling
    folded: dict[str, str] = {}
    for key in entries:
        if _any_case(key):
            if key.casefold() in folded:
                raise InvalidInput(PARAM, f"{key!r} and {folded[key.casefold()]!r} are the same word")
            folded[key.casefold()] = key
    return Lexicon(tuple(entries.items())) if entries else None
