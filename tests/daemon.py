"""A fake Dify plugin daemon: runs the plugin exactly as a local install does and speaks its stdio protocol.

    from tests.daemon import FakeDaemon

    def tts(call):                      # one TTS backwards invocation of the plugin
        return [mp3_bytes]              # chunks, sent in order; raise to send an error event; NEVER = no answer

    with FakeDaemon(REPO, tts=tts) as daemon:        # starts `python -m main`, waits for the manifest
        run = daemon.invoke_tool({"text": "Hello.", "model": {...}})
        run.ok, run.error_message, run.files[0].data, run.jsons, run.tts_calls

Protocol (verified against dify_plugin 0.10.2: plugin.py, core/runtime.py, core/server/stdio, __base,
io_server.py; storage semantics from dify-plugin-daemon's backwards-invocation task):
- The plugin prints its manifest as one JSON line first, then JSON lines separated by blank lines:
  `{"event": "log"|"heartbeat"|"error"|"session", "session_id": S|null, "data": ...}` (SDK log records are
  single JSON lines too).
- daemon → plugin, one JSON object per line: `{"session_id": S, "event": "request", "data": {"type": "tool",
  "action": "invoke_tool", "user_id": U, "provider": P, "tool": T, "credentials": {}, "tool_parameters": {}}}`.
- A session message's data is `{"type": "stream"|"invoke"|"end"|"error", "data": ...}`. `stream` carries a
  ToolInvokeMessage (`{"type", "message", "meta"}`); blobs arrive as `blob_chunk` messages (`id`,
  `sequence`, `total_length`, base64 `blob`, `end`) of 8 KiB. `invoke` is a backwards call
  `{"type": "tts"|"storage"|..., "backwards_request_id": R, "request": {...}}`. An exception in the tool
  becomes `error` (`{"error_type", "message", "args"}`) followed by `end`.
- Backwards answers: `{"session_id": S, "event": "backwards_response", "data": {"backwards_request_id": R,
  "event": "response"|"error"|"end", "message": str, "data": dict|null}}`. TTS: one response per chunk with
  `{"result": HEX}`, then `end`. Storage: `{"data": HEX}` (get), `{"data": "ok"}` (set/del),
  `{"data": bool}` (exist); getting a missing key is an `error` event, as in the real daemon.
- The SDK waits MAX_INVOCATION_TIMEOUT seconds (env, default 250) without an answer, then raises.

Every backwards call is answered in its own thread, so handlers may sleep, stream slowly, block, or answer
calls out of order (see `HoldAndRelease`). Several tool sessions can run at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEVER = object()  # a TTS handler returning this never answers the call (the SDK times out)
DEFAULT_MODEL = {"provider": "langgenius/openai/openai", "model": "tts-1", "model_type": "tts"}
OLD_DIFY_FILE_LIMIT = 30 * 1024 * 1024  # Dify's tool-file limit before PLUGIN_MAX_FILE_SIZE existed
STDIO_MAX_LINE = 5 * 1024 * 1024  # the daemon's PLUGIN_STDIO_MAX_BUFFER_SIZE default: longer lines are dropped


@dataclass(frozen=True)
class TTSCall:
    """One TTS backwards invocation the plugin made."""

    session_id: str
    request_id: str
    number: int  # arrival order over the daemon's lifetime, from 0
    provider: str
    model: str
    voice: str
    text: str
    request: dict[str, Any]


@dataclass(frozen=True)
class StorageCall:
    session_id: str
    request_id: str
    opt: str  # get | set | del | exist
    key: str
    size: int  # bytes of the value for set, else 0


@dataclass(frozen=True)
class BlobFile:
    """A file the tool returned (reassembled from blob_chunk messages)."""

    data: bytes
    meta: dict[str, Any]

    @property
    def mime_type(self) -> str:
        return str(self.meta.get("mime_type") or "")

    @property
    def filename(self) -> str:
        return str(self.meta.get("filename") or "")


TTSHandler = Callable[[TTSCall], Any]  # → Iterable[bytes] | NEVER; raise to answer with an error event
StorageFault = Callable[[StorageCall], None]  # raise to fail that storage call


@dataclass
class ToolRun:
    """Everything one tool invocation (one session) produced."""

    session_id: str
    daemon: FakeDaemon
    messages: list[dict[str, Any]] = field(default_factory=list)  # stream messages except blob chunks
    files: list[BlobFile] = field(default_factory=list)
    error: dict[str, Any] | None = None
    tts_calls: list[TTSCall] = field(default_factory=list)
    storage_calls: list[StorageCall] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _chunks: dict[str, list[bytes]] = field(default_factory=dict)

    def wait(self, timeout: float = 180.0) -> ToolRun:
        if not self.done.wait(timeout):
            raise TimeoutError(
                f"tool session {self.session_id} did not end within {timeout:.0f} s; "
                f"plugin stderr:\n{self.daemon.stderr_tail()}"
            )
        return self

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.error is None

    @property
    def error_message(self) -> str:
        return str((self.error or {}).get("message", ""))

    @property
    def texts(self) -> list[str]:
        return [m["message"]["text"] for m in self.messages if m.get("type") == "text"]

    @property
    def jsons(self) -> list[Any]:
        return [m["message"]["json_object"] for m in self.messages if m.get("type") == "json"]

    @property
    def variables(self) -> dict[str, Any]:
        return {
            m["message"]["variable_name"]: m["message"]["variable_value"]
            for m in self.messages
            if m.get("type") == "variable"
        }

    def audio_files(self) -> list[BlobFile]:
        return [f for f in self.files if f.mime_type.startswith("audio/")]

    def describe(self) -> str:
        """For assertion messages."""
        return (
            f"error={self.error_message!r} files={[(f.filename, f.mime_type, len(f.data)) for f in self.files]} "
            f"texts={self.texts} tts_calls={len(self.tts_calls)} protocol_errors={self.protocol_errors}\n"
            f"plugin stderr:\n{self.daemon.stderr_tail()}"
        )


class FakeDaemon:
    """Runs `python -m main` in `plugin_dir` (the repo or an unpacked .difypkg) and plays the daemon's part.

    tts: handler for TTS calls. storage_fault: called before each storage call; raise to fail it.
    storage_limit: total bytes the plugin may store (the manifest's storage size; None = unlimited).
    max_invocation_timeout: the SDK's MAX_INVOCATION_TIMEOUT in seconds (lower it to test silent calls).
    max_file_size: Dify's limit for a returned file; a bigger one is recorded as a protocol error.
    """

    def __init__(
        self,
        plugin_dir: str | os.PathLike[str] = REPO,
        *,
        tts: TTSHandler | None = None,
        storage_fault: StorageFault | None = None,
        storage_limit: int | None = None,
        max_invocation_timeout: int | None = None,
        max_file_size: int = OLD_DIFY_FILE_LIMIT,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.tts = tts
        self.storage_fault = storage_fault
        self.storage_limit = storage_limit
        self.max_file_size = max_file_size
        self.start_timeout = start_timeout
        self.python = python
        self.env = dict(os.environ)
        for name in ("PYTHONPATH", "REMOTE_INSTALL_URL", "REMOTE_INSTALL_HOST", "REMOTE_INSTALL_PORT",
                     "REMOTE_INSTALL_KEY"):
            self.env.pop(name, None)
        self.env.update({"INSTALL_METHOD": "local", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        if max_invocation_timeout is not None:
            self.env["MAX_INVOCATION_TIMEOUT"] = str(max_invocation_timeout)
        self.env.update(env or {})

        self.storage: dict[str, bytes] = {}
        self.manifest: dict[str, Any] | None = None
        self.logs: list[dict[str, Any]] = []
        self.heartbeats = 0
        self.global_errors: list[dict[str, Any]] = []  # plugin-level error events and protocol violations
        self.stray_lines: list[str] = []  # stdout lines that are not protocol JSON (a print() would do it)
        self.tts_calls: list[TTSCall] = []
        self.runs: dict[str, ToolRun] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=300)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._manifest_seen = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------------

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> FakeDaemon:
        self.proc = subprocess.Popen(
            [self.python, "-m", "main"],
            cwd=self.plugin_dir,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: close() also ends its ffmpeg children
        )
        self._spawn(self._read_stdout, "stdout")
        self._spawn(self._read_stderr, "stderr")
        deadline = time.monotonic() + self.start_timeout
        while not self._manifest_seen.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(
                    f"plugin did not start (exit code {self.proc.returncode}); stderr:\n{self.stderr_tail()}"
                )
        return self

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(Exception):
                stream.close()
        for thread in self._threads:
            thread.join(timeout=2)
        for run in self.runs.values():  # nothing more will come
            if not run.done.is_set():
                run.protocol_errors.append("plugin process ended before the session ended")
                run.done.set()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 60) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    # -- tool sessions ----------------------------------------------------------------------------------

    def start_tool(
        self,
        parameters: Mapping[str, Any],
        *,
        tool: str = "tts_pipeline",
        provider: str = "tts_pipeline",
        user_id: str = "test-user",
        credentials: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> ToolRun:
        """Send an invoke_tool request and return at once; `.wait()` on the result."""
        session_id = session_id or uuid.uuid4().hex
        run = ToolRun(session_id=session_id, daemon=self)
        with self._lock:
            self.runs[session_id] = run
        self.send({
            "session_id": session_id,
            "event": "request",
            "data": {
                "type": "tool",
                "action": "invoke_tool",
                "user_id": user_id,
                "provider": provider,
                "tool": tool,
                "credentials": dict(credentials or {}),
                "tool_parameters": dict(parameters),
            },
        })
        return run

    def invoke_tool(self, parameters: Mapping[str, Any], *, timeout: float = 180.0, **kwargs: Any) -> ToolRun:
        return self.start_tool(parameters, **kwargs).wait(timeout)

    def send(self, message: Mapping[str, Any]) -> None:
        """Write one JSON line to the plugin's stdin (ignored once the plugin is gone)."""
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._write_lock:
            if self.proc is None or self.proc.stdin is None:
                return
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                self.proc.stdin.write(line)
                self.proc.stdin.flush()

    # -- reading the plugin -----------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"fake-daemon-{name}", daemon=True)
        thread.start()
        if name in ("stdout", "stderr"):
            self._threads.append(thread)

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            line = raw.strip()
            if not line:
                continue
            if len(line) > STDIO_MAX_LINE:  # the real daemon would drop it
                self.global_errors.append({"error": f"stdout line of {len(line)} bytes exceeds the daemon's buffer"})
            try:
                message = json.loads(line)
            except ValueError:
                self.stray_lines.append(line.decode("utf-8", "replace")[:500])
                continue
            if not isinstance(message, dict):
                self.stray_lines.append(line.decode("utf-8", "replace")[:500])
            elif self.manifest is None and "event" not in message:
                self.manifest = message
                self._manifest_seen.set()
            else:
                self._on_event(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "log":
            self.logs.append(message.get("data") or {})
        elif event == "heartbeat":
            self.heartbeats += 1
        elif event == "error":
            self.global_errors.append(message.get("data") or {})
        elif event == "session":
            run = self.runs.get(message.get("session_id") or "")
            if run is None:
                self.global_errors.append({"error": "session message for an unknown session", "message": message})
                return
            self._on_session(run, message.get("data") or {})
        else:
            self.stray_lines.append(json.dumps(message)[:500])

    def _on_session(self, run: ToolRun, data: dict[str, Any]) -> None:
        kind, payload = data.get("type"), data.get("data")
        if run.done.is_set():
            run.protocol_errors.append(f"{kind} message after the session ended")
        if kind == "stream":
            self._on_stream(run, payload or {})
        elif kind == "invoke":
            self._spawn(self._answer, "invoke", run, payload or {})
        elif kind == "error":
            run.error = payload or {}
        elif kind == "end":
            run.elapsed = time.monotonic() - run.started
            for blob_id in run._chunks:
                run.protocol_errors.append(f"blob {blob_id} never ended")
            run.done.set()
        else:
            run.protocol_errors.append(f"unknown session message type {kind!r}")

    def _on_stream(self, run: ToolRun, message: dict[str, Any]) -> None:
        if message.get("type") != "blob_chunk":
            if message.get("type") == "blob":
                run.protocol_errors.append("whole blob message (the SDK should have chunked it)")
            run.messages.append(message)
            return
        chunk = message.get("message") or {}
        blob_id = str(chunk.get("id"))
        parts = run._chunks.setdefault(blob_id, [])
        if chunk.get("sequence") != len(parts):
            run.protocol_errors.append(f"blob {blob_id}: chunk {chunk.get('sequence')} out of order")
        parts.append(base64.b64decode(chunk.get("blob") or ""))
        if chunk.get("end"):
            data = b"".join(run._chunks.pop(blob_id))
            if len(data) != chunk.get("total_length"):
                declared = chunk.get("total_length")
                run.protocol_errors.append(f"blob {blob_id}: {len(data)} bytes, header said {declared}")
            if len(data) > self.max_file_size:
                run.protocol_errors.append(f"blob {blob_id}: {len(data)} bytes is over Dify's file limit")
            run.files.append(BlobFile(data=data, meta=dict(message.get("meta") or {})))

    # -- answering backwards invocations ----------------------------------------------------------------

    def _reply(self, run: ToolRun, request_id: str, event: str, message: str = "", data: Any = None) -> None:
        self.send({
            "session_id": run.session_id,
            "event": "backwards_response",
            "data": {"backwards_request_id": request_id, "event": event, "message": message, "data": data},
        })

    def _answer(self, run: ToolRun, invoke: dict[str, Any]) -> None:
        kind = invoke.get("type")
        request_id = str(invoke.get("backwards_request_id"))
        request = invoke.get("request") or {}
        if kind == "tts":
            self._answer_tts(run, request_id, request)
        elif kind == "storage":
            self._answer_storage(run, request_id, request)
        else:
            self._reply(run, request_id, "error", f"unsupported invoke type: {kind}")

    def _answer_tts(self, run: ToolRun, request_id: str, request: dict[str, Any]) -> None:
        with self._lock:
            call = TTSCall(
                session_id=run.session_id,
                request_id=request_id,
                number=len(self.tts_calls),
                provider=str(request.get("provider", "")),
                model=str(request.get("model", "")),
                voice=str(request.get("voice", "")),
                text=str(request.get("content_text", "")),
                request=request,
            )
            self.tts_calls.append(call)
            run.tts_calls.append(call)
        for name in ("provider", "model", "voice"):  # the daemon's struct validation
            if not request.get(name):
                self._reply(
                    run, request_id, "error",
                    f"unmarshal invoke tool request failed: Key: 'InvokeTTSRequest.{name.capitalize()}' "
                    f"Error:Field validation for '{name.capitalize()}' failed on the 'required' tag",
                )
                return
        if self.tts is None:
            self._reply(run, request_id, "error", "invoke tts model failed: no TTS handler in this test")
            return
        sent = 0
        try:
            answer = self.tts(call)
            if answer is NEVER:
                return
            for chunk in answer:
                if chunk is NEVER:  # a generator may stall mid-stream
                    return
                self._reply(run, request_id, "response", data={"result": bytes(chunk).hex()})
                sent += 1
        except Exception as exc:  # the handler's way to make the provider fail
            stage = "read" if sent else "invoke"
            self._reply(run, request_id, "error", f"{stage} tts model failed: {exc}")
            return
        self._reply(run, request_id, "end")

    def _answer_storage(self, run: ToolRun, request_id: str, request: dict[str, Any]) -> None:
        opt, key = str(request.get("opt", "")), str(request.get("key", ""))
        value_hex = str(request.get("value") or "")
        call = StorageCall(run.session_id, request_id, opt, key, len(value_hex) // 2 if opt == "set" else 0)
        with self._lock:
            run.storage_calls.append(call)
        try:
            if self.storage_fault is not None:
                self.storage_fault(call)
            reply = self._storage_op(opt, key, value_hex)
        except Exception as exc:
            self._reply(run, request_id, "error", str(exc))
            return
        self._reply(run, request_id, "response", data=reply)
        self._reply(run, request_id, "end")

    def _storage_op(self, opt: str, key: str, value_hex: str) -> dict[str, Any]:
        with self._lock:
            if opt == "get":
                if key not in self.storage:
                    raise KeyError("load data failed, please check if the key is correct or you have not set it")
                return {"data": self.storage[key].hex()}
            if opt == "set":
                try:
                    value = bytes.fromhex(value_hex)
                except ValueError as exc:
                    raise ValueError(f"decode data failed: {exc}") from None
                used = sum(len(v) for k, v in self.storage.items() if k != key)
                if self.storage_limit is not None and used + len(value) > self.storage_limit:
                    raise ValueError("save data failed: allocated size is greater than max storage size")
                self.storage[key] = value
                return {"data": "ok"}
            if opt == "del":
                existed = self.storage.pop(key, None) is not None
                return {"data": "ok", "deleted_num": int(existed)}
            if opt == "exist":
                return {"data": key in self.storage, "exist_num": int(key in self.storage)}
        raise ValueError(f"unknown storage opt {opt!r}")


class HoldAndRelease:
    """Wrap a TTS handler: hold the first `count` calls until all of them have arrived (or `timeout` passed),
    then answer them one after another in `order` (positions in arrival order; default: reverse), each
    call's chunks fully sent before the next starts. Later calls pass straight through. The wrapped handler
    must return chunks (not NEVER) for held calls."""

    def __init__(self, handler: TTSHandler, count: int, order: list[int] | None = None, timeout: float = 30.0):
        self.handler = handler
        self.count = count
        self.order = order if order is not None else list(range(count - 1, -1, -1))
        self.timeout = timeout
        self.arrived: list[str] = []
        self.answered: list[str] = []  # request ids in the order their answers were sent
        self._cond = threading.Condition()
        self._turn = 0

    def __call__(self, call: TTSCall) -> Iterable[bytes]:
        with self._cond:
            position = len(self.arrived)
            self.arrived.append(call.request_id)
        if position >= self.count:
            return self.handler(call)
        return self._held(call, position)

    def _held(self, call: TTSCall, position: int) -> Iterable[bytes]:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while len(self.arrived) < self.count and time.monotonic() < deadline:
                self._cond.wait(0.05)
            rank = self.order.index(position) if position in self.order else len(self.order)
            while self._turn < rank and time.monotonic() < deadline:
                self._cond.wait(0.05)
        try:
            yield from self.handler(call)
        finally:
            with self._cond:
                self.answered.append(call.request_id)
                self._turn += 1
                self._cond.notify_all()


def slices(data: bytes, size: int = 1024) -> list[bytes]:
    """`data` cut into `size`-byte chunks, as openai/azure/siliconflow model plugins yield a file."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def fragments(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """`data` cut at irregular sizes (cycled), like fragments of a continuous provider stream."""
    out, i, pattern = [], 0, list(sizes)
    while i < len(data):
        size = pattern[len(out) % len(pattern)]
        out.append(data[i : i + size])
        i += size
    return out
