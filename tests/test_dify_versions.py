"""End to end, what older Dify versions require of the messages (see README, "Where it runs").

- Dify before langgenius/dify PR #30082 refuses a variable message whose value is None: no variable message
  may carry one, for lossless output (no bitrate) and for unnormalized or unmeasurable audio.
- Daemons 0.0.8–0.1.2 can drop blob chunks: the stats carry `size_bytes` and `sha256` of the file as sent,
  checked here against the blob the fake daemon reassembled from the plugin's blob_chunk messages.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.daemon import DEFAULT_MODEL
from tests.test_e2e_plugin import base_params, daemon, plugin_dir, shared_daemon  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

ONE = "Alpha is the only sentence here."


def variable_messages(run) -> list[tuple[str, object]]:
    return [
        (m["message"]["variable_name"], m["message"]["variable_value"])
        for m in run.messages
        if m.get("type") == "variable"
    ]


@pytest.mark.parametrize(
    ("overrides", "mime", "unset"),
    [
        ({"output_format": "wav"}, "audio/x-wav", {"bitrate_kbps"}),
        ({"output_format": "flac"}, "audio/flac", {"bitrate_kbps"}),
        ({"loudness": "off"}, "audio/mpeg", set()),
        ({"output_format": "flac", "loudness": "off"}, "audio/flac", {"bitrate_kbps"}),
    ],
)
def test_no_variable_message_carries_none(daemon, overrides, mime, unset):  # noqa: F811
    run = daemon.invoke_tool(base_params(text=ONE, model=dict(DEFAULT_MODEL), **overrides))
    assert run.ok, run.describe()
    assert not run.protocol_errors, run.protocol_errors
    pairs = variable_messages(run)
    assert pairs, "no variable messages at all"
    assert [name for name, value in pairs if value is None] == []
    stats = run.jsons[0]
    assert {name for name, value in stats.items() if value is None} == unset  # the JSON keeps its nulls
    assert dict(pairs) == {name: value for name, value in stats.items() if value is not None}
    (audio,) = run.audio_files()
    assert audio.mime_type == mime


@pytest.mark.parametrize("fmt", ["mp3", "m4a", "ogg", "flac", "wav"])
def test_size_and_sha256_match_the_blob_as_received(daemon, fmt):  # noqa: F811
    run = daemon.invoke_tool(base_params(output_format=fmt))
    assert run.ok, run.describe()
    assert not run.protocol_errors, run.protocol_errors
    (audio,) = run.audio_files()
    stats = run.jsons[0]
    assert stats["size_bytes"] == len(audio.data) > 8192  # several blob chunks
    assert stats["sha256"] == hashlib.sha256(audio.data).hexdigest()
    assert run.variables["sha256"] == stats["sha256"] and run.variables["size_bytes"] == stats["size_bytes"]
    # a file cut short on the way no longer matches
    assert hashlib.sha256(audio.data[:-8192]).hexdigest() != stats["sha256"]
