"""The request cache end to end: the plugin under the fake daemon, with the daemon's storage semantics.

People iterate on scripts; a rerun must synthesize only what changed, give the same audio, and survive a
broken entry. Reuses the end-to-end module's fixtures (packaged plugin, tone-per-sentence provider).
"""

from __future__ import annotations

import pytest

from tests.test_e2e_plugin import TEXT, base_params, check_narration, daemon, plugin_dir, shared_daemon  # noqa: F401

pytestmark = pytest.mark.slow


def _run(daemon, **overrides):  # noqa: F811 - the fixture is passed in
    run = daemon.invoke_tool(base_params(cache=True, **overrides))
    assert run.ok, run.describe()
    return run


def test_same_script_twice_makes_no_call_and_gives_identical_audio(daemon):  # noqa: F811
    first = _run(daemon)
    second = _run(daemon)
    assert len(first.tts_calls) == 6 and second.tts_calls == []
    assert second.jsons[0]["cache_hits"] == 6 and second.jsons[0]["cache_misses"] == 0
    assert second.audio_files()[0].data == first.audio_files()[0].data
    check_narration(second, audio_s=6.0)


def test_editing_one_line_makes_exactly_one_call(daemon):  # noqa: F811
    _run(daemon)
    edited = TEXT.replace("Bravo follows with a second line.", "Bravo follows with another line.")
    run = _run(daemon, text=edited)
    assert [c.text for c in run.tts_calls] == ["Bravo follows with another line."]
    assert run.jsons[0]["cache_hits"] == 5 and run.jsons[0]["cache_misses"] == 1


def test_changing_mastering_options_makes_no_call(daemon):  # noqa: F811
    _run(daemon)
    run = _run(daemon, loudness="broadcast", output_format="ogg", pause_ms=500)
    assert run.tts_calls == []
    assert run.jsons[0]["loudness_lufs"] == pytest.approx(-23.0, abs=1.0)


def test_another_voice_is_not_served_from_the_cache(daemon):  # noqa: F811
    _run(daemon)
    run = _run(daemon, voice="nova")
    assert len(run.tts_calls) == 6


def test_a_corrupted_entry_is_synthesized_again_and_repaired(daemon):  # noqa: F811
    first = _run(daemon)
    assert daemon.storage
    for key in daemon.storage:  # flip a byte in every stored value: every entry (or its part) is broken
        value = bytearray(daemon.storage[key])
        value[len(value) // 2] ^= 0xFF
        daemon.storage[key] = bytes(value)
    second = _run(daemon)
    assert len(second.tts_calls) == 6  # nothing broken was used
    assert second.audio_files()[0].data == first.audio_files()[0].data
    third = _run(daemon)
    assert third.tts_calls == []  # the entries were rewritten
