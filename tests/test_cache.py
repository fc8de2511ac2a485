"""Chunk cache: keys, entry integrity, DiskCache and KeyValueCache over a store that behaves like Dify's."""

from __future__ import annotations

import ast
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio import cache as cache_mod
from audio.cache import (
    CacheCorrupt,
    DiskCache,
    KeyValueCache,
    cache_key,
    decode_entry,
    encode_entry,
)


class DifyLikeStore:
    """In-memory stand-in for the SDK's `session.storage`, with the daemon's observable behaviour:
    `get`/`delete` of a missing key raise, `set` of an existing key silently keeps the old value, keys are
    ≤ 256 characters, and (our own test limit) every value must be ≤ `max_value` bytes."""

    def __init__(self, max_value: int = 1024, quota: int | None = None) -> None:
        self.data: dict[str, bytes] = {}
        self.max_value = max_value
        self.quota = quota
        self.calls = 0
        self.fail = False

    def _op(self, key: str) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("daemon went away")
        if len(key) > 256 or ".." in key or "//" in key or "\\" in key:
            raise ValueError(f"invalid key {key!r}")

    def get(self, key: str) -> bytes:
        self._op(key)
        if key not in self.data:
            raise Exception("load data failed, please check if the key is correct or you have not set it")
        return self.data[key]

    def set(self, key: str, val: bytes) -> None:
        self._op(key)
        if not isinstance(val, bytes) or len(val) > self.max_value:
            raise ValueError(f"value of {len(val)} bytes over the limit")
        if self.quota is not None and sum(map(len, self.data.values())) + len(val) > self.quota:
            raise Exception("save data failed: allocated size is greater than max storage size")
        self.data.setdefault(key, val)  # the daemon keeps an existing file

    def exist(self, key: str) -> bool:
        self._op(key)
        return key in self.data

    def delete(self, key: str) -> None:
        self._op(key)
        if key not in self.data:
            raise Exception("delete data failed")
        del self.data[key]


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x40]) + data[pos + 1 :]


KEY = cache_key("langgenius/openai/openai:tts-1", "alloy", "Hello there.")
SMALL = [b"ID3\x04" + b"a" * 100, b"\xff\xfb" + b"b" * 200, b""]
LARGE = [os.urandom(1500), os.urandom(10), os.urandom(2600)]  # ≈ 4 KiB: 5 parts at 1 KiB


# --- keys -------------------------------------------------------------------------------------------------


def test_key_is_stable_hex_and_changes_with_each_component(monkeypatch):
    base = cache_key("openai:tts-1", "alloy", "Hello.")
    assert base == cache_key("openai:tts-1", "alloy", "Hello.")
    assert len(base) == 64 and int(base, 16) >= 0
    variants = {
        cache_key("openai:tts-1-hd", "alloy", "Hello."),
        cache_key("openai:tts-1", "nova", "Hello."),
        cache_key("openai:tts-1", None, "Hello."),
        cache_key("openai:tts-1", "", "Hello."),
        cache_key("openai:tts-1", "alloy", "Hello. "),
        cache_key("openai:tts-1", "alloy", "hello."),
        cache_key("openai:tts-1", "alloy", "Cafe\u0301."),
        cache_key("openai:tts-1", "alloy", "Café."),
    }
    assert base not in variants and len(variants) == 8
    # the canonical JSON keeps component boundaries: no concatenation ambiguity
    assert cache_key("a", "b", "c d") != cache_key("a", "b c", "d") != cache_key("a b", "c", "d")
    monkeypatch.setattr(cache_mod, "CACHE_FORMAT_VERSION", 2)
    assert cache_key("openai:tts-1", "alloy", "Hello.") != base


# --- entry encoding ---------------------------------------------------------------------------------------


def test_entry_round_trip_and_every_damage_is_detected():
    blob = encode_entry(SMALL)
    assert decode_entry(blob) == SMALL
    assert decode_entry(encode_entry([])) == []
    damaged = [blob[:-1], blob[:10], blob + b"\x00", b"", b"TTSC", flip(blob, 0), flip(blob, 6), flip(blob, 50)]
    damaged += [flip(blob, len(blob) - 1)]
    for bad in damaged:
        with pytest.raises(CacheCorrupt):
            decode_entry(bad)


# --- DiskCache --------------------------------------------------------------------------------------------


def test_disk_round_trip_miss_and_overwrite(tmp_path):
    c = DiskCache(tmp_path / "c")
    assert c.get(KEY) is None
    c.put(KEY, SMALL)
    assert c.get(KEY) == SMALL
    c.put(KEY, [b"new"])
    assert c.get(KEY) == [b"new"]
    assert DiskCache(tmp_path / "c").get(KEY) == [b"new"]  # persistent across instances
    assert not list((tmp_path / "c").rglob(".tmp-*")), "no temporary files left behind"


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "empty"])
def test_disk_corrupted_entry_is_a_miss_then_put_overwrites(tmp_path, damage):
    c = DiskCache(tmp_path)
    c.put(KEY, SMALL)
    (path,) = tmp_path.rglob("*.ttsc")
    data = path.read_bytes()
    path.write_bytes(
        {"flip": flip(data, len(data) // 2), "truncate": data[:-7], "append": data + b"x", "empty": b""}[damage]
    )
    assert c.get(KEY) is None
    assert not path.exists(), "a broken entry is deleted"
    c.put(KEY, SMALL)
    assert c.get(KEY) == SMALL


def test_disk_storage_errors_never_raise(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    c = DiskCache(blocker / "cache")
    c.put(KEY, SMALL)  # cannot create the directory: logged, not raised
    assert c.get(KEY) is None
    c2 = DiskCache(tmp_path / "ok")
    c2._path(KEY).mkdir(parents=True)  # the entry's path is a directory: unreadable and unwritable
    assert c2.get(KEY) is None
    c2.put(KEY, SMALL)
    assert c2.get(KEY) is None


def test_disk_evicts_least_recently_used(tmp_path):
    entry = [os.urandom(1000)]
    size = len(encode_entry(entry))
    c = DiskCache(tmp_path, max_bytes=size * 3 + 10)
    keys = [cache_key("ns", None, str(i)) for i in range(4)]
    for i, k in enumerate(keys[:3]):
        c.put(k, entry)
        os.utime(c._path(k), (1000 + i, 1000 + i))
    assert c.get(keys[0]) == entry  # touched: now the most recently used
    c.put(keys[3], entry)  # over budget: evicts down to 90 % → the two least recently used go
    present = [c.get(k) is not None for k in keys]
    assert present == [True, False, False, True]
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.ttsc")) <= c.max_bytes
    big = DiskCache(tmp_path / "small", max_bytes=100)
    big.put(KEY, entry)  # larger than the whole budget: skipped
    assert big.get(KEY) is None


def test_non_hex_keys_are_hashed_to_safe_names(tmp_path):
    c = DiskCache(tmp_path)
    c.put("../../etc/passwd", [b"x"])
    assert c.get("../../etc/passwd") == [b"x"]
    assert all(p.is_relative_to(tmp_path) for p in tmp_path.rglob("*"))
    s = DifyLikeStore()
    KeyValueCache(s).put("x" * 1000, [b"y"])
    assert all(len(k) <= 80 for k in s.data)


# --- KeyValueCache ----------------------------------------------------------------------------------------


def test_sdk_storage_has_the_expected_shape():
    # read the SDK's source instead of importing it: importing dify_plugin monkey-patches the process (gevent)
    spec = importlib.util.find_spec("dify_plugin")
    source = (Path(spec.origin).parent / "invocations" / "storage.py").read_text()
    (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "StorageInvocation"]
    methods = {f.name: [a.arg for a in f.args.args] for f in cls.body if isinstance(f, ast.FunctionDef)}
    assert methods["get"] == ["self", "key"] and methods["exist"] == ["self", "key"]
    assert methods["set"] == ["self", "key", "val"] and methods["delete"] == ["self", "key"]


def test_kv_round_trip_single_value():
    s = DifyLikeStore()
    c = KeyValueCache(s, max_value_bytes=1024)
    assert c.get(KEY) is None
    c.put(KEY, SMALL)
    assert list(s.data) == ["ttsp:" + KEY]
    assert c.get(KEY) == SMALL


def test_kv_large_entry_is_split_under_the_value_limit():
    s = DifyLikeStore(max_value=1024)
    c = KeyValueCache(s, max_value_bytes=1024)
    c.put(KEY, LARGE)
    assert len(s.data) == 1 + 5  # manifest + parts; the store itself refuses any value over 1 KiB
    assert all(len(k) <= 256 for k in s.data)
    assert c.get(KEY) == LARGE
    assert KeyValueCache(s, max_value_bytes=1024).get(KEY) == LARGE  # a new job reads it back


def test_kv_put_replaces_although_the_store_does_not_overwrite():
    s = DifyLikeStore()
    c = KeyValueCache(s, max_value_bytes=1024)
    c.put(KEY, LARGE)
    c.put(KEY, SMALL)
    assert c.get(KEY) == SMALL
    assert len(s.data) == 1, "the old entry's parts were deleted"
    c.put(KEY, LARGE)
    assert c.get(KEY) == LARGE and len(s.data) == 6


def _damage_single(s, main):
    s.data[main] = flip(s.data[main], 40)


def _damage_manifest(s, main):
    s.data[main] = s.data[main][:-3]


def _damage_part(s, main):
    part = sorted(k for k in s.data if k != main)[2]
    s.data[part] = flip(s.data[part], 100)


def _truncate_part(s, main):
    part = sorted(k for k in s.data if k != main)[-1]
    s.data[part] = s.data[part][:-1]


def _missing_part(s, main):
    del s.data[sorted(k for k in s.data if k != main)[1]]


@pytest.mark.parametrize(
    "chunks,damage",
    [
        (SMALL, _damage_single),
        (LARGE, _damage_manifest),
        (LARGE, _damage_part),
        (LARGE, _truncate_part),
        (LARGE, _missing_part),
    ],
)
def test_kv_corrupted_entry_is_a_miss_then_put_overwrites(chunks, damage):
    s = DifyLikeStore()
    c = KeyValueCache(s, max_value_bytes=1024)
    c.put(KEY, chunks)
    main = "ttsp:" + KEY
    damage(s, main)
    assert c.get(KEY) is None
    assert main not in s.data, "the broken entry was removed"
    c.put(KEY, chunks)
    assert c.get(KEY) == chunks
    assert c.enabled


def test_kv_storage_errors_never_raise_and_switch_the_cache_off():
    s = DifyLikeStore()
    c = KeyValueCache(s, max_value_bytes=1024, max_errors=3)
    c.put(KEY, SMALL)
    s.fail = True
    assert c.get(KEY) is None
    c.put(KEY, SMALL)
    assert c.get(KEY) is None
    assert not c.enabled
    calls = s.calls
    s.fail = False
    assert c.get(KEY) is None and c.put(KEY, SMALL) is None
    assert s.calls == calls, "a disabled cache does not touch the store"


def test_kv_quota_exhausted_mid_write_leaves_no_parts_and_no_entry():
    s = DifyLikeStore(quota=2500)
    c = KeyValueCache(s, max_value_bytes=1024)
    c.put(KEY, LARGE)  # the third part exceeds the quota
    assert s.data == {}
    assert c.get(KEY) is None


def test_kv_entries_over_max_entry_bytes_are_not_cached():
    s = DifyLikeStore()
    c = KeyValueCache(s, max_value_bytes=1024, max_entry_bytes=2048)
    c.put(KEY, LARGE)
    assert s.data == {} and s.calls == 0
    c.put(KEY, [])  # an empty result is never cached
    assert s.data == {}


def test_kv_rejects_unsafe_prefix():
    with pytest.raises(ValueError):
        KeyValueCache(DifyLikeStore(), prefix="../x")
    with pytest.raises(ValueError):
        KeyValueCache(DifyLikeStore(), max_value_bytes=10)


# --- property ---------------------------------------------------------------------------------------------

_chunks = st.lists(st.binary(max_size=700), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(_chunks, st.text(max_size=30), st.integers(256, 2048))
def test_property_round_trip_kv(chunks, text, limit):
    s = DifyLikeStore(max_value=limit)
    c = KeyValueCache(s, max_value_bytes=limit)
    key = cache_key("ns", None, text)
    c.put(key, chunks)
    assert c.get(key) == chunks
    assert all(len(v) <= limit for v in s.data.values())


@settings(max_examples=30, deadline=None)
@given(_chunks)
def test_property_round_trip_disk(chunks):
    with tempfile.TemporaryDirectory() as d:
        c = DiskCache(Path(d))
        c.put(KEY, chunks)
        assert c.get(KEY) == chunks
