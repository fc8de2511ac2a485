"""KeyValueCache and Dify's storage quota: after the first refused write, no more writes (process-wide, per scope).

The daemon writes a value first and checks the quota after, so every refused `set` still leaves its value on
disk, uncounted (dify-plugin-daemon internal/core/persistence, `Save`). `DaemonLikeStore` does the same.
"""

from __future__ import annotations

import threading

import pytest

from audio import cache as cache_module
from audio.cache import QUOTA_PAUSE_S, KeyValueCache, cache_key, storage_full

QUOTA_MESSAGE = "save data failed: allocated size is greater than max storage size"


class DaemonLikeStore:
    """get/set/exist/delete like Dify's plugin storage, with the daemon's order: save, then check the quota."""

    def __init__(self, quota: int) -> None:
        self.quota = quota
        self.counted = 0  # what the daemon's tenant_storage row says
        self.disk: dict[str, bytes] = {}  # what really is on disk
        self.set_attempts = 0
        self.lock = threading.Lock()

    def get(self, key: str) -> bytes:
        if key not in self.disk:
            raise Exception("load data failed, please check if the key is correct or you have not set it")
        return self.disk[key]

    def exist(self, key: str) -> bool:
        return key in self.disk

    def delete(self, key: str) -> None:
        self.counted -= len(self.disk.pop(key))

    def set(self, key: str, val: bytes) -> None:
        with self.lock:
            self.set_attempts += 1
            self.disk[key] = val  # written first …
            if self.counted + len(val) > self.quota:  # … checked after: the value stays, uncounted
                raise Exception(QUOTA_MESSAGE)
            self.counted += len(val)


def put_many(cache: KeyValueCache, texts: list[str], threads: int = 4) -> None:
    """One job's cache writes, from several worker threads at once (as synth.run does)."""
    todo = list(texts)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                text = todo.pop()
            cache.put(cache_key("p/m", "nova", text), [text.encode() * 200])

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_quota_messages_are_recognised():
    assert storage_full(Exception(QUOTA_MESSAGE))
    assert not storage_full(Exception("persistence not found"))
    assert not storage_full(ConnectionError("daemon went away"))


def test_one_refused_write_stops_writes_for_every_later_job_and_reads_go_on():
    store = DaemonLikeStore(quota=3000)
    first = KeyValueCache(store, scope="app-1")
    put_many(first, [f"text {i}" for i in range(2)])  # 2 × ~1.2 kB fit
    assert store.set_attempts == 2 and first.notes == []
    put_many(first, [f"more {i}" for i in range(6)])
    assert store.set_attempts == 3  # the third write was refused; no write after it
    assert len(first.notes) == 1 and "storage is full" in first.notes[0] and QUOTA_MESSAGE in first.notes[0]
    for job in range(5):  # later jobs (new cache objects, same workspace) do not write at all
        later = KeyValueCache(store, scope="app-1")
        put_many(later, [f"job {job} text {i}" for i in range(6)])
        assert later.notes == []
    assert store.set_attempts == 3
    assert len(store.disk) == 3 and store.counted < sum(map(len, store.disk.values()))  # the daemon's leak
    reader = KeyValueCache(store, scope="app-1")
    assert reader.get(cache_key("p/m", "nova", "text 0")) == [b"text 0" * 200]  # reads keep working


def test_concurrent_writers_meet_the_quota_once():
    store = DaemonLikeStore(quota=0)
    caches = [KeyValueCache(store, scope="app-1") for _ in range(4)]
    jobs = [threading.Thread(target=put_many, args=(c, [f"c{n} t{i}" for i in range(8)])) for n, c in
            enumerate(caches)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    assert store.set_attempts == 1
    assert sum(len(c.notes) for c in caches) == 1


def test_other_scopes_keep_writing_and_the_pause_ends(monkeypatch):
    store = DaemonLikeStore(quota=0)
    put_many(KeyValueCache(store, scope="app-1"), ["a", "b"])
    assert store.set_attempts == 1
    other_store = DaemonLikeStore(quota=10**6)
    put_many(KeyValueCache(other_store, scope="app-2"), ["a", "b"])
    assert other_store.set_attempts == 2  # another workspace's app is not paused
    now = cache_module.time.monotonic()
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: now + QUOTA_PAUSE_S + 1)
    store.quota = 10**6
    put_many(KeyValueCache(store, scope="app-1"), ["c"])
    assert store.set_attempts == 2  # after the pause, writing is tried again


@pytest.mark.parametrize("error", [ConnectionError("daemon went away"), Exception("persistence not found")])
def test_other_write_errors_do_not_pause_the_process(error):
    class Broken(DaemonLikeStore):
        def set(self, key, val):
            self.set_attempts += 1
            raise error

    store = Broken(quota=10**6)
    put_many(KeyValueCache(store, scope="app-1"), ["a", "b"], threads=1)
    assert store.set_attempts == 2
    put_many(KeyValueCache(store, scope="app-1"), ["c"], threads=1)
    assert store.set_attempts == 3
