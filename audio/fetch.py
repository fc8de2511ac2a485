"""Download a file a Dify workflow passed to a `file` parameter (intro, outro, music) into the job directory.

The SDK's `File.blob` is one `httpx.get` with a 5-second timeout, no size cap, the whole body in memory, and
raw httpx errors; a relative URL (Dify's FILES_URL not set) raises a ValueError about `.env`. A music file of
tens of MB needs more time, a cap enforced while reading, and errors that say which parameter and which Dify
setting to fix. This module does that with plain values (url, declared size and MIME type), so it has no
Dify import and is tested against a local HTTP server.

Order of checks, cheapest first, all before any TTS call: declared MIME type and size → URL form →
Content-Length → bytes actually read (the cap holds even when the server lies or sends no length).
The content is then sniffed by audio.media (never trusting the name or the MIME type).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import InvalidInput

MAX_FILE_MB = 50  # per file; Dify's own upload limit for audio is 50 MB by default
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # between two pieces of the body
TOTAL_TIMEOUT_S = 180.0  # for the whole file
_CHUNK = 64 * 1024

# MIME types that are certainly not audio (a Dify `file` parameter can be given any uploaded file)
_NOT_AUDIO_PREFIXES = ("text/", "image/", "application/pdf", "application/json", "application/zip",
                       "application/msword", "application/vnd.", "application/x-zip")  # fmt: skip
FILES_URL_HINT = (
    "The plugin downloads files from Dify's file URL: set FILES_URL (or INTERNAL_FILES_URL, the address the "
    "plugin daemon uses) in Dify's .env to an address the plugin can reach, e.g. http://api:5001, and restart Dify."
)


@dataclass(frozen=True)
class RemoteFile:
    """What Dify says about a file (the SDK's File, without the SDK)."""

    url: str
    filename: str | None = None
    mime_type: str | None = None
    size: int | None = None


def check_declared(param: str, f: RemoteFile, max_bytes: int | None = None) -> None:
    """Refuse a file by what Dify declares about it, before downloading anything."""
    max_bytes = max_bytes or MAX_FILE_MB * 2**20
    name = f" ({f.filename})" if f.filename else ""
    mime = (f.mime_type or "").lower()
    if mime.startswith(_NOT_AUDIO_PREFIXES):
        raise InvalidInput(param, f"the file{name} is {f.mime_type}, not audio; give mp3, wav, ogg/opus, flac or m4a")
    if f.size is not None and f.size > max_bytes:
        raise InvalidInput(
            param, f"the file{name} is {f.size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB per file"
        )
    parts = urlsplit(f.url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(
            param, f"the file's URL {_safe(f.url)!r} is not an absolute http(s) URL, so it cannot be downloaded. "
            + FILES_URL_HINT,
        )


def download(param: str, f: RemoteFile, dest: Path, *, max_bytes: int | None = None) -> Path:
    """Stream the file to `dest` with the size cap enforced while reading. Raises InvalidInput naming `param`."""
    import httpx  # the Dify runtime has it (a dependency of dify_plugin); the CLI never downloads

    max_bytes = max_bytes or MAX_FILE_MB * 2**20
    check_declared(param, f, max_bytes)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    started = time.monotonic()
    where = _safe(f.url)
    try:
        with httpx.stream("GET", f.url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code >= 400:
                hint = " (the file link may have expired: run the workflow again)" if response.status_code in (
                    401, 403) else ""
                raise InvalidInput(param, f"downloading {where} failed with HTTP {response.status_code}{hint}")
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise InvalidInput(param, _too_big(int(length), max_bytes))
            got = 0
            with open(dest, "wb") as out:
                for piece in response.iter_bytes(_CHUNK):
                    got += len(piece)
                    if got > max_bytes:
                        raise InvalidInput(param, _too_big(got, max_bytes, more=True))
                    if time.monotonic() - started > TOTAL_TIMEOUT_S:
                        raise InvalidInput(param, f"downloading {where} took longer than {TOTAL_TIMEOUT_S:.0f} s")
                    out.write(piece)
    except InvalidInput:
        dest.unlink(missing_ok=True)
        raise
    except httpx.TimeoutException as exc:
        dest.unlink(missing_ok=True)
        raise InvalidInput(param, f"downloading {where} timed out ({type(exc).__name__}). {FILES_URL_HINT}") from None
    except (httpx.HTTPError, OSError) as exc:
        dest.unlink(missing_ok=True)
        reason = str(exc) or type(exc).__name__
        raise InvalidInput(param, f"could not download {where}: {reason}. {FILES_URL_HINT}") from None
    if got == 0:
        dest.unlink(missing_ok=True)
        raise InvalidInput(param, f"{where} returned an empty file")
    return dest


def _too_big(size: int, limit: int, more: bool = False) -> str:
    if more:  # the server sent more than it declared (or declared nothing): we stopped reading
        return f"the file is over the {limit / 2**20:.0f} MB limit per file; the download was stopped"
    return f"the file is {size / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB per file"


def _safe(url: str | None) -> str:
    """The URL without its query (Dify's file URLs carry a signature there) for messages and logs."""
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.scheme:
        return url.split("?", 1)[0]
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
