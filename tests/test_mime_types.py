"""The extension Dify gives our files: `mimetypes.guess_extension(mime_type) or ".bin"` (tool_file_manager).

Dify's API may run without /etc/mime.types (python:3.12-slim lacks it unless `media-types` is installed; the
official API image installs it), so the choice is tested against Python's built-in table only:
`mimetypes.MimeTypes(filenames=())` reads no system file.
"""

from __future__ import annotations

import mimetypes

import pytest

from audio import master, subtitles

BUILTIN = mimetypes.MimeTypes(filenames=())

# format → (MIME type we send, extension a Dify without /etc/mime.types stores it under). README, "File types".
EXPECTED = {
    "mp3": ("audio/mpeg", ".mp3"),
    "m4a": ("audio/mp4", ".bin"),  # .m4a only with /etc/mime.types; no built-in type maps to .m4a
    "ogg": ("audio/opus", ".opus"),  # audio/ogg would be .oga (or .bin)
    "flac": ("audio/flac", ".bin"),  # .flac only with /etc/mime.types; no built-in type maps to .flac
    "wav": ("audio/x-wav", ".wav"),  # audio/wav would be .bin
}
SUBTITLES = {"srt": ("text/plain", ".txt"), "vtt": ("text/vtt", ".vtt")}


def dify_extension(mime_type: str) -> str:
    return BUILTIN.guess_extension(mime_type) or ".bin"


@pytest.mark.parametrize("fmt", list(EXPECTED))
def test_audio_mime_types_and_the_extension_dify_stores(fmt):
    spec = master.FORMATS[fmt]
    assert (spec.mime_type, dify_extension(spec.mime_type)) == EXPECTED[fmt]


@pytest.mark.parametrize("fmt", list(SUBTITLES))
def test_subtitle_mime_types_and_the_extension_dify_stores(fmt):
    mime = subtitles.MIME_TYPES[fmt]
    assert (mime, dify_extension(mime)) == SUBTITLES[fmt]


def test_no_better_choice_exists_in_the_builtin_table():
    """Where we get .bin, no MIME type of the right kind would do better without /etc/mime.types; where we get
    the right extension, the obvious alternatives would not."""
    assert BUILTIN.guess_extension("application/x-subrip") is None  # the "proper" SRT type → .bin
    assert BUILTIN.guess_type("x.srt")[0] == "text/plain"  # Python itself calls SRT text/plain
    for mp4_audio in ("audio/mp4", "audio/x-m4a", "audio/m4a", "audio/aac-mp4"):
        assert BUILTIN.guess_extension(mp4_audio) is None
    assert BUILTIN.guess_extension("audio/aac") == ".aac"  # raw ADTS, not our MP4 container: would mislead
    for flac in ("audio/flac", "audio/x-flac"):
        assert BUILTIN.guess_extension(flac) is None
    assert dify_extension("audio/wav") == ".bin" and dify_extension("audio/ogg") in (".bin", ".oga")
