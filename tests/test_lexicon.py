"""`lexicon`: the parser's rules (whole words, longest first, case rule, CJK, errors) and, through the whole
pipeline, that the TTS model receives the respellings while subtitles, timeline and stats keep the original
words, and that the cache key follows the text actually sent."""

from __future__ import annotations

import threading

import pytest

from audio import lexicon, options
from audio.cache import cache_key
from audio.errors import InvalidInput
from audio.pipeline import Job, narrate
from tests import audiogen


def apply(spec, text: str) -> str:
    lex = lexicon.parse(spec)
    assert lex is not None
    return lex.apply(text)[0]


# --- parser --------------------------------------------------------------------------------------------------


def test_text_json_and_dict_forms_are_the_same():
    a = lexicon.parse("Dify=Dee-fy; SQL=sequel")
    b = lexicon.parse('{"Dify": "Dee-fy", "SQL": "sequel"}')
    c = lexicon.parse({"Dify": "Dee-fy", "SQL": "sequel"})
    d = lexicon.parse("Dify = Dee-fy\nSQL=sequel;\n")
    assert a == b == c == d
    assert a.entries == (("Dify", "Dee-fy"), ("SQL", "sequel"))
    assert options.lexicon("Dify=Dee-fy") == lexicon.parse("Dify=Dee-fy")


def test_blank_is_no_lexicon():
    for blank in (None, "", "  \n ", "{}"):
        assert lexicon.parse(blank) is None


def test_commas_belong_to_the_respelling():
    assert apply("Dify=Dee, fy", "Use Dify.") == "Use Dee, fy."


def test_whole_words_only():
    spec = "SQL=sequel"
    assert apply(spec, "SQL, SQL's (SQL) and SQL.") == "sequel, sequel's (sequel) and sequel."
    assert apply(spec, "SQLite and MySQL and SQL2 and _SQL") == "SQLite and MySQL and SQL2 and _SQL"
    assert apply("Dify=Dee-fy", "Dify-based, Dify/Langflow") == "Dee-fy-based, Dee-fy/Langflow"


def test_longest_first_and_never_respelled_twice():
    spec = "New York=Noo York; New York City=the Big Apple"
    assert apply(spec, "New York City is in New York.") == "the Big Apple is in Noo York."
    assert apply("A=B; B=C", "A B") == "B C"  # one scan: the B that A became stays B


def test_case_sensitive_unless_the_key_is_lower_case():
    assert apply("SQL=sequel", "SQL sql Sql") == "sequel sql Sql"
    assert apply("nginx=engine x", "nginx Nginx NGINX") == "engine x engine x engine x"
    both = "US=you ess; us=uhs"  # an exact key beats the case-insensitive one
    assert apply(both, "US us Us") == "you ess uhs uhs"


def test_keys_with_symbols_and_spaces():
    assert apply("C++=see plus plus", "I like C++ a lot; C++11") == "I like see plus plus a lot; see plus plus11"
    assert apply("New York=Noo York", "New\nYork and New  York") == "Noo York and Noo York"
    assert apply("Node.js=node jay ess", "Node.js and Nodexjs") == "node jay ess and Nodexjs"


def test_unicode_words_and_combining_marks():
    assert apply("Zürich=Tsoorikh", "Zürich, Zürichsee") == "Tsoorikh, Zürichsee"
    assert apply("cafe=kaff", "cafe and cafe\u0301") == "kaff and cafe\u0301"  # é written as e + accent
    assert apply("Москва=Moskva", "Москва и Москвы") == "Moskva и Москвы"


def test_cjk_has_no_word_boundaries():
    assert apply("数据库=shùjùkù", "我的数据库很快") == "我的shùjùkù很快"
    assert apply("Dify=ディファイ", "Difyを使う") == "ディファイを使う"
    assert apply("Dify=디파이", "Dify는 좋다") == "디파이는 좋다"
    assert apply("数据=A; 数据库=B", "数据库和数据") == "B和A"  # longest first decides inside CJK text


def test_count_of_replacements():
    lex = lexicon.parse("SQL=sequel; Dify=Dee-fy")
    assert lex.apply("SQL and SQL on Dify, not SQLite") == ("sequel and sequel on Dee-fy, not SQLite", 3)
    assert lex.apply("nothing here") == ("nothing here", 0)


def test_a_full_lexicon_over_a_long_text():
    """MAX_ENTRIES keys, some prefixes of others, over ~100,000 characters: every whole-word occurrence replaced,
    none inside longer words (the two-level matcher keeps this to a fraction of a second)."""
    keys = [f"Name{i}" for i in range(lexicon.MAX_ENTRIES - 1)] + ["name1 extra"]
    lex = lexicon.parse({k: f"<{k}>" for k in keys})
    words = [f"Name{i}" for i in range(0, 600, 7)] + ["Name12x", "xName3", "NAME1 EXTRA", "plain"]
    text = " ".join(words * 200)
    out, count = lex.apply(text)
    replaced = sum(1 for w in words if w in keys[:-1]) * 200 + 200  # + "NAME1 EXTRA" via the lower-case key
    assert count == replaced
    assert "Name12x" in out and "xName3" in out and "<name1 extra>" in out and "<Name7>" in out


BAD = [
    ('{"Dify": "Dee-fy"', "invalid JSON"),
    ('["Dify", "Dee-fy"]', "word=respelling"),  # only an object is JSON; this is a text entry without "="
    ('{"Dify": 3}', "must be a string"),
    ("=Dee-fy", "empty word"),
    ("Dify=", "is empty"),
    ("Dify Dee-fy", "word=respelling"),
    ("Dify=a; Dify=b", "given twice"),
    ("straße=a; strasse=b", "same word"),
    ("; ".join(f"w{i}=x" for i in range(lexicon.MAX_ENTRIES + 1)), f"limit is {lexicon.MAX_ENTRIES}"),
    ("x" * (lexicon.MAX_KEY_CHARS + 1) + "=y", f"longer than {lexicon.MAX_KEY_CHARS}"),
    ("x=" + "y" * (lexicon.MAX_VALUE_CHARS + 1), f"longer than {lexicon.MAX_VALUE_CHARS}"),
    ("x=y;" * (lexicon.MAX_INPUT_CHARS // 4 + 1), "characters long"),
]


@pytest.mark.parametrize(("value", "hint"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_errors_name_the_parameter(value, hint):
    with pytest.raises(InvalidInput) as info:
        lexicon.parse(value)
    assert info.value.param == "lexicon" and str(info.value).startswith("lexicon: ")
    assert hint in str(info.value)


# --- through the pipeline -------------------------------------------------------------------------------------


class Recorder:
    """A fake provider answering every call with a short tone; records what it was asked to read."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.lock = threading.Lock()
        self.answer = audiogen.mp3(0.8, freq=220)

    def __call__(self, text: str, voice: str | None):
        with self.lock:
            self.texts.append(text)
        return [self.answer[i : i + 1024] for i in range(0, len(self.answer), 1024)]


class MemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, list[bytes]] = {}
        self.gets: list[str] = []

    def get(self, key: str) -> list[bytes] | None:
        self.gets.append(key)
        return self.data.get(key)

    def put(self, key: str, chunks: list[bytes]) -> None:
        self.data[key] = chunks


TEXT = "Dify talks to SQL databases. SQLite is fine too.\n\nDify is open source."


def _job(lex: str | None, **kw) -> Job:
    return Job(text=TEXT, lexicon=lexicon.parse(lex), subtitles="vtt", backoff_s=0, cache_namespace="ns", **kw)


def test_the_model_hears_respellings_and_everything_else_keeps_the_words():
    from tools.tts_pipeline import stats_json

    provider = Recorder()
    result = narrate(_job("Dify=Dee-fy; SQL=sequel"), provider)
    assert sorted(provider.texts) == sorted([
        "Dee-fy talks to sequel databases.", "SQLite is fine too.", "Dee-fy is open source.",
    ])  # fmt: skip
    assert [e.text for e in result.timeline] == [
        "Dify talks to SQL databases.", "SQLite is fine too.", "Dify is open source.",
    ]  # fmt: skip
    assert "Dify talks to SQL databases." in result.subtitles and "Dee-fy" not in result.subtitles
    assert "sequel" not in result.subtitles
    stats = stats_json(result)
    assert [e["text"] for e in stats["timeline"]] == [e.text for e in result.timeline]
    assert stats["respellings"] == 3 and result.stats.respellings == 3


def test_the_cache_key_follows_the_text_sent():
    cache = MemoryCache()
    plain = Recorder()
    narrate(_job(None), plain, cache=cache)
    keys_plain = sorted(cache.gets)
    assert keys_plain == sorted(cache_key("ns", None, t) for t in ["Dify talks to SQL databases.",
                                                                   "SQLite is fine too.", "Dify is open source."])

    # a lexicon that changes nothing in this text: the same keys, every request a cache hit
    cache.gets.clear()
    untouched = Recorder()
    result = narrate(_job("Langflow=Lang-flow; SQLITE=sequel light; Difyy=x"), untouched, cache=cache)
    assert untouched.texts == [] and result.stats.cache_hits == 3 and sorted(cache.gets) == keys_plain
    assert result.stats.respellings == 0

    # a lexicon that changes two requests: their keys are those of the respelled text, the third still hits
    cache.gets.clear()
    changed = Recorder()
    result = narrate(_job("Dify=Dee-fy"), changed, cache=cache)
    assert sorted(cache.gets) == sorted([cache_key("ns", None, "Dee-fy talks to SQL databases."),
                                         cache_key("ns", None, "SQLite is fine too."),
                                         cache_key("ns", None, "Dee-fy is open source.")])
    assert result.stats.cache_hits == 1 and result.stats.cache_misses == 2
    assert sorted(changed.texts) == ["Dee-fy is open source.", "Dee-fy talks to SQL databases."]
