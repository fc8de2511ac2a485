"""End to end, what older Dify versions require of the messages (see README, "Where it runs").

- Dify before langgenius/dify PR #30082 refuses a variable message whose value is None: no variable message
  may carry one, for lossless output (no bitrate) and for unnormalized or unmeasurable audio.
- Daemons 0.0.8–0.1.2 can drop blob chunks: the stats carry `size_bytes` and `sha256` of the file as sent,
  checked here against the blob the fake daemon reassembled from the plugin's blob_chunk messages.
- A placeholder voice the provider refuses fails the job after ONE call, with what to do.
- A full plugin storage is met by one write per process, and the jobs go on.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.daemon import DEFAULT_MODEL, FakeDaemon
from tests.test_e2e_plugin import (  # noqa: F401 (fixtures)
    base_params,
    daemon,
    plugin_dir,
    shared_daemon,
    tone_handler,
)

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
    production = {"intro_s", "outro_s", "music_level_lu", "speech_loudness_lufs"}  # no intro, outro or music
    assert {name for name, value in stats.items() if value is None} == unset | production  # JSON keeps nulls
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


# --- voices: the placeholder refused -------------------------------------------------------------------------

OPENAI_REFUSAL = (
    "[models] Bad Request Error, {\"error\": {\"message\": \"Invalid value: 'default'. Supported values are: "
    "'alloy', 'echo', 'fable', 'onyx', 'nova', 'shimmer'.\", \"type\": \"invalid_request_error\", "
    "\"param\": \"voice\", \"code\": \"invalid_value\"}}"
)


def test_a_refused_placeholder_voice_fails_after_one_call_and_says_to_pick_a_voice(daemon):  # noqa: F811
    """openai_api_compatible / minimax / gitee_ai pass the placeholder on; the provider refuses it."""
    tones = daemon.tts

    def refuses_placeholder(call):
        if call.voice == "default":
            raise RuntimeError(OPENAI_REFUSAL)
        return tones(call)

    daemon.tts = refuses_placeholder
    model = {**DEFAULT_MODEL, "provider": "langgenius/openai_api_compatible/openai_api_compatible"}
    run = daemon.invoke_tool(base_params(model=model, concurrency=4))  # six requests
    assert run.error is not None, run.describe()
    assert len(run.tts_calls) == 1, [c.text for c in run.tts_calls]
    assert "failed after 1 attempt(s)" in run.error_message and "Invalid value: 'default'" in run.error_message
    assert "Pick a voice in the model selector" in run.error_message and "`voice` parameter" in run.error_message
    assert run.files == [] and run.jsons == []
    # with a voice picked, the same model works and all six requests are made
    ok = daemon.invoke_tool(base_params(model={**model, "voice": "nova"}, concurrency=4))
    assert ok.ok, ok.describe()
    assert len(ok.tts_calls) == 6 and {c.voice for c in ok.tts_calls} == {"nova"}


# --- storage quota ---------------------------------------------------------------------------------------------


def test_a_full_storage_is_written_once_per_process_and_jobs_still_succeed(plugin_dir):  # noqa: F811
    # its own plugin process: the pause lasts for the process (24 h), it must not leak into other tests
    with FakeDaemon(plugin_dir, tts=tone_handler(), storage_limit=0) as own:
        runs = [
            own.invoke_tool(base_params(text=f"Alpha job {n} speaks. Bravo answers it. Charlie ends.", cache=True))
            for n in range(3)
        ]
    for run in runs:
        assert run.ok, run.describe()
        assert len(run.audio_files()) == 1
        assert len(run.tts_calls) == run.jsons[0]["requests"] == run.jsons[0]["cache_misses"] >= 2
    sets = [call for run in runs for call in run.storage_calls if call.opt == "set"]
    assert len(sets) == 1, [(c.session_id, c.key) for c in sets]  # one cache write per request wanted
    first, *later = (run.jsons[0]["warnings"] for run in runs)
    assert any("storage is full" in w for w in first), first
    assert all(not any("storage is full" in w for w in warnings) for warnings in later)
