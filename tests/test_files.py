"""File parameters from Dify (intro, outro, music): declared type and size, URL form, download with the cap
enforced while reading, content sniffing; every failure names the parameter and no TTS call is made.

Files are served by a tiny http.server on 127.0.0.1 in a thread."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import types
from pathlib import Path
from typing import ClassVar

import pytest

# as in test_tool_params: the SDK's classes without gevent's monkey.patch_all() of this pytest process
sys.modules.setdefault("dify_plugin._gevent", types.ModuleType("dify_plugin._gevent"))

from dify_plugin.file.entities import FileType  # noqa: E402
from dify_plugin.file.file import File  # noqa: E402

from audio import fetch, ffmpeg  # noqa: E402
from audio.errors import InvalidInput  # noqa: E402
from tests.test_tool_params import make_tool, params  # noqa: E402
from tools import tts_pipeline as tool_module  # noqa: E402

BIG = 3 * 2**20  # served bodies over the (patched) 2 MB cap


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[bytes, str, bool]]] = {}  # path → (body, content type, send Content-Length)

    def do_GET(self) -> None:  # http.server's name
        path = self.path.split("?", 1)[0]
        if path not in self.files:
            self.send_error(404)
            return
        body, ctype, with_length = self.files[path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if with_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 65536):
                self.wfile.write(body[i : i + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at the cap

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    mp3 = d / "jingle.mp3"
    ffmpeg.run(["-f", "lavfi", "-i", "sine=f=440:d=1.5", "-c:a", "libmp3lame", "-f", "mp3", ffmpeg.file_url(mp3)])
    _Handler.files = {
        "/jingle.mp3": (mp3.read_bytes(), "audio/mpeg", True),
        "/notes.mp3": (b"<html><body>These are show notes, not audio.</body></html>" * 20, "audio/mpeg", True),
        "/big.mp3": (b"\xff\xfb\x90\x00" * (BIG // 4), "audio/mpeg", True),
        "/big-no-length.mp3": (b"\xff\xfb\x90\x00" * (BIG // 4), "audio/mpeg", False),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def small_cap(monkeypatch):
    monkeypatch.setattr(fetch, "MAX_FILE_MB", 2)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file(url: str, **kw) -> File:
    return File(url=url, type=FileType.AUDIO, mime_type=kw.pop("mime_type", "audio/mpeg"),
                filename=kw.pop("filename", "jingle.mp3"), **kw)


def invoke(parameters) -> tuple[Exception | None, object, dict]:
    """Run the tool with the real pipeline; returns (error, session, what narrate got if it was reached)."""
    tool, session = make_tool()
    seen: dict = {}
    try:
        list(tool._invoke(parameters))
    except Exception as exc:  # the test inspects it
        return exc, session, seen
    return None, session, seen


@pytest.mark.parametrize(("param", "make_url", "expected"), [
    ("intro", lambda base: f"http://127.0.0.1:{closed_port()}/files/x/file-preview?sign=secret", "INTERNAL_FILES_URL"),
    ("music", lambda base: "/files/x/file-preview?timestamp=1&sign=secret", "FILES_URL"),
    ("outro", lambda base: f"{base}/notes.mp3", "not an audio file"),
    ("music", lambda base: f"{base}/big.mp3", "limit is 2 MB"),
    ("music", lambda base: f"{base}/big-no-length.mp3", "over the 2 MB limit"),
    ("intro", lambda base: f"{base}/missing.mp3", "HTTP 404"),
])  # fmt: skip
def test_a_bad_file_fails_naming_the_parameter_with_no_tts_call(server, param, make_url, expected):
    err, session, _ = invoke(params(**{param: file(make_url(server), size=1000)}))
    assert isinstance(err, InvalidInput), err
    assert err.param == param and str(err).startswith(f"{param}: ") and expected in str(err), str(err)
    assert "secret" not in str(err)  # the signed query stays out of messages
    assert session.model.tts.calls == []


def test_declared_size_and_type_are_checked_before_downloading(server, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(fetch, "download", no_download)
    for f, expected in [
        (file(f"{server}/jingle.mp3", size=BIG), "is 3.0 MB; the limit is 2 MB"),
        (file(f"{server}/jingle.mp3", mime_type="application/pdf", filename="notes.pdf"), "application/pdf, not audio"),
    ]:
        err, session, _ = invoke(params(music=f))
        assert isinstance(err, InvalidInput) and err.param == "music" and expected in str(err), str(err)
        assert session.model.tts.calls == []


def test_a_good_file_is_downloaded_into_the_job_and_removed_afterwards(server, monkeypatch):
    seen = {}

    def fake_narrate(job, synthesize, *, cache=None, progress=None, workdir=None):
        seen["bytes"] = Path(job.intro).read_bytes()
        seen["path"] = Path(job.intro)
        seen["level"] = job.music_level
        raise InvalidInput("text", "stop here")

    monkeypatch.setattr(tool_module, "narrate", fake_narrate)
    # the dict form the daemon sends is turned into File by the SDK; a one-element list (type `files`) works too
    err, _, _ = invoke(params(intro=[file(f"{server}/jingle.mp3?sign=abc", size=None)], music_level=-25))
    assert isinstance(err, InvalidInput) and err.param == "text"
    assert seen["bytes"] == _Handler.files["/jingle.mp3"][0] and seen["level"] == -25
    assert not seen["path"].exists()  # the download directory is removed


def test_music_level_and_overlap_are_validated():
    for name, value in (("music_level", -3), ("music_level", "loud"), ("intro_overlap_ms", 6000)):
        err, _, _ = invoke(params(**{name: value}))
        assert isinstance(err, InvalidInput) and err.param == name, err


@pytest.mark.parametrize("unset", [None, "", {}, []])
def test_an_unset_file_parameter_is_no_file(unset):
    assert tool_module.remote_file("music", unset) is None
    assert tool_module.parse_parameters(params(music=unset, intro=unset)).files == {}
