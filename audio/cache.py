"""Cache of each TTS request's raw provider chunks, so re-running an edited script only synthesizes the changes.

Key: `cache_key(namespace, voice, text)`, the sha256 of a canonical JSON of (format version, namespace =
provider/model or local engine, voice, the exact text). Nothing is normalized: any change of text, voice or
model is a different request. Value: the chunks exactly as the provider yielded them (the segments stage
cuts them into files again on a hit, so a hit goes through the same validation as a fresh call).

Entry encoding (`encode_entry`), self-describing and integrity-checked:

    b"TTSC" | version u8 | chunk count u32 | count × chunk length u32 | chunk bytes… | sha256(all before) 32 B

Anything that does not parse exactly (flipped byte, truncation, trailing garbage, other version) is a miss.

Two implementations of the `Cache` protocol; neither ever raises for storage errors (they log a warning and
behave as a miss / a skipped write — the cache is an optimization, never a reason for a job to fail):

- `KeyValueCache` over Dify's plugin storage (`self.session.storage`) or anything with its shape.
- `DiskCache`, a directory for the local runner, with atomic writes and LRU eviction under a byte budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1

_ENTRY_MAGIC = b"TTSC"
_MANIFEST_MAGIC = b"TTSM"
_DIGEST = 32
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class CacheCorrupt(ValueError):
    """A stored value is not a complete, intact cache entry."""


def cache_key(namespace: str, voice: str | None, text: str) -> str:
    """sha256 hex of the canonical JSON `[version, namespace, voice, text]` (64 characters)."""
    canonical = json.dumps([CACHE_FORMAT_VERSION, namespace, voice, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class Cache(Protocol):
    def get(self, key: str) -> list[bytes] | None:
        """The chunks stored under `key`, or None on a miss (a broken or unreadable entry is a miss)."""
        ...

    def put(self, key: str, chunks: list[bytes]) -> None:
        """Store `chunks` under `key`, replacing what was there. Never raises for storage errors."""
        ...


# ---------------------------------------------------------------------------------------------------------
# entry encoding


def _sealed(body: bytes) -> bytes:
    """`body` followed by its sha256: the layout of every value this module stores."""
    return body + hashlib.sha256(body).digest()


def _unsealed(data: bytes, magic: bytes, fixed: int, kind: str) -> bytes:
    """The body of a `_sealed` value, after checking its magic, its minimum length (`fixed` header bytes), its
    digest and the format version byte that follows the magic. Raises CacheCorrupt naming `kind`."""
    if len(data) < fixed + _DIGEST or data[: len(magic)] != magic:
        raise CacheCorrupt(f"not a cache {kind}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CacheCorrupt(f"{kind} checksum mismatch")
    if body[len(magic)] != CACHE_FORMAT_VERSION:
        raise CacheCorrupt(f"{kind} version {body[len(magic)]}")
    return body


def encode_entry(chunks: list[bytes]) -> bytes:
    """Serialize chunks (see the module docstring for the layout)."""
    head = _ENTRY_MAGIC + struct.pack(f"<BI{len(chunks)}I", CACHE_FORMAT_VERSION, len(chunks), *map(len, chunks))
    return _sealed(head + b"".join(chunks))


def decode_entry(data: bytes) -> list[bytes]:
    """Inverse of `encode_entry`. Raises CacheCorrupt unless `data` is exactly one intact entry."""
    fixed = len(_ENTRY_MAGIC) + 5
    body = _unsealed(data, _ENTRY_MAGIC, fixed, "entry")
    (count,) = struct.unpack_from("<I", body, len(_ENTRY_MAGIC) + 1)
    if fixed + 4 * count > len(body):
        raise CacheCorrupt("chunk table truncated")
    lengths = struct.unpack_from(f"<{count}I", body, fixed)
    pos = fixed + 4 * count
    if pos + sum(lengths) != len(body):
        raise CacheCorrupt("payload length mismatch")
    chunks = []
    for n in lengths:
        chunks.append(body[pos : pos + n])
        pos += n
    return chunks


def _encode_manifest(nonce: str, parts: list[bytes]) -> bytes:
    head = _MANIFEST_MAGIC + struct.pack("<B4sI", CACHE_FORMAT_VERSION, bytes.fromhex(nonce), len(parts))
    table = b"".join(struct.pack("<I", len(p)) + hashlib.sha256(p).digest() for p in parts)
    return _sealed(head + table)


def _decode_manifest(data: bytes) -> tuple[str, list[tuple[int, bytes]]]:
    """(nonce, [(part length, part sha256)]) of a manifest value. Raises CacheCorrupt."""
    fixed = len(_MANIFEST_MAGIC) + 9
    body = _unsealed(data, _MANIFEST_MAGIC, fixed, "manifest")
    nonce, count = struct.unpack_from("<4sI", body, len(_MANIFEST_MAGIC) + 1)
    if len(body) != fixed + 36 * count:
        raise CacheCorrupt("manifest length mismatch")
    table = [struct.unpack_from("<I32s", body, fixed + 36 * i) for i in range(count)]
    return nonce.hex(), table


def _storage_key(key: str) -> str:
    """Our keys are sha256 hex already; anything else is hashed so it is always a short, path-safe name."""
    return key if _HEX_KEY.fullmatch(key) else hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


# ---------------------------------------------------------------------------------------------------------
# key-value store (Dify plugin storage)


class KeyValueStore(Protocol):
    """The shape of the Dify SDK's `session.storage` (dify_plugin.invocations.storage.StorageInvocation)."""

    def get(self, key: str) -> bytes: ...  # raises when the key is missing
    def set(self, key: str, val: bytes) -> None: ...
    def exist(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


# Dify's plugin storage (dify-plugin-daemon, internal/core/persistence + backwards_invocation/task.go):
# - values live under (tenant id, plugin id "author/name", key): one namespace per workspace and plugin;
# - a key must be ≤ 256 characters and must not contain "..", "//" or "\" (it becomes an object-store path);
# - there is no per-value limit, but every value travels hex-encoded (2×) inside ONE JSON line of the plugin's
#   stdio/TCP stream, and the daemon drops lines over PLUGIN_STDIO_MAX_BUFFER_SIZE (default 5 MiB). 512 KiB
#   → a ~1 MiB line: 5× margin, and most requests' audio (≈ 30–60 s of speech) still fits in 1–2 values;
# - the sum of all values is capped by the manifest's `resource.permission.storage.size` (SDK default 1 MiB,
#   max 1 GiB) and by the daemon's PERSISTENCE_STORAGE_MAX_SIZE (default 100 MiB); past it `set` fails;
# - `set` on an existing key may keep the OLD value (the daemon's storage wrapper skips existing files), so a
#   key must be deleted before it is written again; `delete` of a missing key fails.
DIFY_MAX_VALUE_BYTES = 512 * 1024
DIFY_MAX_KEY_CHARS = 256
DEFAULT_MAX_ENTRY_BYTES = 8 * 1024 * 1024

# Storage quota. The daemon (dify-plugin-daemon internal/core/persistence) writes a value FIRST and checks the
# quota after: a refused `set` ("save data failed: allocated size is greater than max storage size") leaves
# the value on disk, uncounted. Writing on after the first refusal would fill the disk past the quota, so the
# first refusal stops writes for QUOTA_PAUSE_S in the whole process, per scope (see `KeyValueCache`).
QUOTA_PAUSE_S = 24 * 3600.0
_QUOTA_MARKERS = ("max storage size", "storage size", "storage quota", "quota exceeded")


def storage_full(exc: BaseException) -> bool:
    """True when a storage error says the plugin's storage quota is used up."""
    text = str(exc).lower()
    return any(marker in text for marker in _QUOTA_MARKERS)


class _Scope:
    """Process-wide write state of one quota scope: writes are serialized (so a quota refusal is met by
    exactly one write, even with many concurrent jobs) and paused after a refusal."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paused_until = 0.0


_SCOPES: dict[str, _Scope] = {}
_SCOPES_LOCK = threading.Lock()


def _scope(name: str) -> _Scope:
    with _SCOPES_LOCK:
        state = _SCOPES.get(name)
        if state is None:
            state = _SCOPES[name] = _Scope()
        return state


def reset_quota_pauses() -> None:
    """Tests: forget every quota refusal seen in this process."""
    with _SCOPES_LOCK:
        _SCOPES.clear()


class KeyValueCache:
    """A `Cache` over a key-value store shaped like Dify's plugin storage (get/set/exist/delete).

    Tenancy: Dify keeps one storage namespace per workspace (tenant) and plugin, so entries of different
    tenants never mix; within one workspace an entry is only reused for the same provider/model, voice and
    exact text (all in the key), which is exactly when the provider would have produced the same audio.

    Layout: an entry of at most `max_value_bytes` is stored as one value under `prefix + key`. A larger one is
    cut into parts of at most `max_value_bytes` stored under `prefix + key + "." + nonce + "." + i`, written
    first, then a manifest (part count, each part's length and sha256, its own sha256) under `prefix + key`.
    The random nonce keeps a new write from ever colliding with parts left behind by an interrupted one.
    Entries larger than `max_entry_bytes` are not cached (they would eat the workspace's storage quota).

    The store cannot list keys, so there is no eviction. Once the quota is full, the first refused write
    pauses writing for `QUOTA_PAUSE_S` (24 h) in the whole process for this cache's `scope`, and the instance
    that met it adds a note to `notes` (the job's warnings); lookups keep working. Dify counts the quota per
    workspace (tenant) and plugin, and a tool call does not learn its tenant, so the Dify tool passes the
    app id as the scope (an app belongs to one workspace): a full workspace costs one refused write per app
    and day, other workspaces served by the same process keep caching. Writes of one scope are serialized.
    After `max_errors` other storage errors the cache switches itself off for the rest of its life (one
    job), so a store that is unavailable (e.g. storage permission missing in the manifest) costs a few round
    trips, not one per request. Safe to use from several threads.
    """

    def __init__(
        self,
        store: KeyValueStore,
        *,
        max_value_bytes: int = DIFY_MAX_VALUE_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        prefix: str = "ttsp:",
        max_errors: int = 3,
        scope: str = "",
    ) -> None:
        if max_value_bytes < 256:
            raise ValueError("max_value_bytes must be at least 256")
        if not re.fullmatch(r"[A-Za-z0-9_:-]{0,64}", prefix):
            raise ValueError("prefix: up to 64 characters among letters, digits, '_', ':' and '-'")
        self._store = store
        self._max_value = max_value_bytes
        self._max_entry = max_entry_bytes
        self._prefix = prefix
        self._max_errors = max_errors
        self._errors = 0
        self._lock = threading.Lock()
        self._scope = _scope(scope)
        self.notes: list[str] = []  # for the job's warnings (e.g. the storage quota is full)

    @property
    def enabled(self) -> bool:
        return self._errors < self._max_errors

    def get(self, key: str) -> list[bytes] | None:
        if not self.enabled:
            return None
        main = self._prefix + _storage_key(key)
        try:
            if not self._store.exist(main):
                return None
            value = self._store.get(main)
        except Exception as exc:
            self._storage_error("read", exc)
            return None
        try:
            return decode_entry(self._read_parts(main, value) if value[:4] == _MANIFEST_MAGIC else value)
        except CacheCorrupt as exc:
            log.warning("cache entry %s… is unusable (%s); it will be synthesized again", key[:12], exc)
            self._remove(main, value)
            return None

    def put(self, key: str, chunks: list[bytes]) -> None:
        if not self.enabled or not chunks:
            return
        blob = encode_entry(chunks)
        if len(blob) > self._max_entry:
            log.info("cache: %d-byte entry exceeds max_entry_bytes=%d; not cached", len(blob), self._max_entry)
            return
        with self._scope.lock:
            if time.monotonic() < self._scope.paused_until:
                return  # the storage quota refused a write earlier in this process
            self._write(self._prefix + _storage_key(key), blob)

    def _write(self, main: str, blob: bytes) -> None:
        try:
            if self._store.exist(main):
                self._remove(main, self._store.get(main), strict=True)
        except Exception as exc:
            self._storage_error("replace", exc)
            return
        if len(blob) <= self._max_value:
            try:
                self._store.set(main, blob)
            except Exception as exc:
                self._write_failed(exc)
            return
        parts = [blob[i : i + self._max_value] for i in range(0, len(blob), self._max_value)]
        nonce = secrets.token_hex(4)
        manifest = _encode_manifest(nonce, parts)
        if len(manifest) > self._max_value:
            log.info("cache: %d parts do not fit one manifest value; not cached", len(parts))
            return
        written: list[str] = []
        try:
            for i, part in enumerate(parts):
                part_key = f"{main}.{nonce}.{i}"
                self._store.set(part_key, part)
                written.append(part_key)
            self._store.set(main, manifest)
        except Exception as exc:
            self._write_failed(exc)
            for part_key in written:  # counted by the daemon, so deleting them gives the space back
                self._delete_quietly(part_key)

    def _write_failed(self, exc: Exception) -> None:
        if not storage_full(exc):
            self._storage_error("write", exc)
            return
        self._scope.paused_until = time.monotonic() + QUOTA_PAUSE_S  # caller holds the scope's lock
        note = (
            "the plugin's storage is full, so the cache stores nothing more for "
            f"{QUOTA_PAUSE_S / 3600:.0f} h (cached audio is still reused); raise the storage size or clear the"
            f" plugin's storage ({_describe(exc)})"
        )
        self.notes.append(note)
        log.warning("cache: %s", note)

    # -- helpers

    def _read_parts(self, main: str, manifest: bytes) -> bytes:
        nonce, table = _decode_manifest(manifest)
        out = bytearray()
        for i, (length, digest) in enumerate(table):
            try:
                part = self._store.get(f"{main}.{nonce}.{i}")
            except Exception as exc:  # the SDK raises for a missing key: a missing part is a broken entry
                raise CacheCorrupt(f"part {i} unreadable ({_describe(exc)})") from exc
            if len(part) != length or hashlib.sha256(part).digest() != digest:
                raise CacheCorrupt(f"part {i} damaged")
            out += part
        return bytes(out)

    def _remove(self, main: str, value: bytes, *, strict: bool = False) -> None:
        """Delete the value under `main` and, if it is a readable manifest, its parts."""
        if strict:
            self._store.delete(main)  # must succeed, or a following set could keep the old value
        else:
            self._delete_quietly(main)
        with contextlib.suppress(CacheCorrupt):
            nonce, table = _decode_manifest(value)
            for i in range(len(table)):
                self._delete_quietly(f"{main}.{nonce}.{i}")

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(Exception):
            if self._store.exist(key):
                self._store.delete(key)

    def _storage_error(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._errors += 1
            off = self._errors == self._max_errors
        log.warning("cache: storage %s failed (%s)%s", what, _describe(exc), "; cache disabled" if off else "")


# ---------------------------------------------------------------------------------------------------------
# directory


class DiskCache:
    """A `Cache` in a directory (local runner). One file per entry: `<dir>/<key[:2]>/<key>.ttsc`.

    Writes are atomic (temporary file in the same directory, then `os.replace`), so concurrent readers and
    writers — threads or processes — only ever see whole entries; a file damaged anyway is detected by the
    entry checksum, counted as a miss and deleted. A hit refreshes the file's mtime; when the directory grows
    past `max_bytes`, the least recently used entries are deleted down to 90 % of it. Entries larger than
    `max_bytes` are not cached.
    """

    SUFFIX = ".ttsc"

    def __init__(self, directory: Path | str, *, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None  # running estimate of the directory's size; None = not scanned yet

    def _path(self, key: str) -> Path:
        k = _storage_key(key)
        return self.directory / k[:2] / (k + self.SUFFIX)

    def get(self, key: str) -> list[bytes] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache: cannot read %s (%s)", path, _describe(exc))
            return None
        try:
            chunks = decode_entry(data)
        except CacheCorrupt as exc:
            log.warning("cache entry %s is unusable (%s); deleting it", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return chunks

    def put(self, key: str, chunks: list[bytes]) -> None:
        if not chunks:
            return
        blob = encode_entry(chunks)
        if len(blob) > self.max_bytes:
            log.info("cache: %d-byte entry exceeds max_bytes=%d; not cached", len(blob), self.max_bytes)
            return
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                old = path.stat().st_size
            except FileNotFoundError:
                old = 0
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            log.warning("cache: cannot write %s (%s)", path, _describe(exc))
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        with self._lock:
            if self._size is not None:
                self._size += len(blob) - old
            if self._size is None or self._size > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Rescan the directory; delete least recently used entries while over budget (called under lock)."""
        files: list[tuple[float, int, Path]] = []
        now = time.time()
        try:
            for sub in self.directory.iterdir():
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub):
                    with contextlib.suppress(OSError):
                        st = entry.stat()
                        # leftovers of interrupted writes count (and go) once they are an hour old
                        stale_tmp = entry.name.startswith(".tmp-") and st.st_mtime < now - 3600
                        if entry.name.endswith(self.SUFFIX) or stale_tmp:
                            files.append((st.st_mtime, st.st_size, Path(entry.path)))
        except OSError as exc:
            log.warning("cache: cannot scan %s (%s)", self.directory, _describe(exc))
            return
        total = sum(size for _, size, _ in files)
        if total > self.max_bytes:
            target = self.max_bytes * 9 // 10
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= target:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size
        self._size = total
