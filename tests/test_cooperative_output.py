"""tools/cooperative_output.py: the SDK's writer yields before each message, never inside one."""

from __future__ import annotations

import pytest
from dify_plugin.core.server.__base.response_writer import ResponseWriter
from dify_plugin.core.server.stdio.response_writer import StdioResponseWriter

from audio import cooperate
from tools import cooperative_output


class Recorder(StdioResponseWriter):
    """The stdio writer the daemon talks to, writing into a list in order with the yields."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def write(self, data: str) -> None:
        self.log.append(data)


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(ResponseWriter, "put", ResponseWriter.put)  # restored after the test
    log: list[str] = []
    monkeypatch.setattr(cooperate, "YIELD_EVERY_S", 0.0)
    monkeypatch.setattr(cooperate.time, "sleep", lambda s: log.append(f"<yield {s}>"))
    assert cooperative_output.make_output_cooperative()
    return log


def test_each_message_starts_after_a_yield_and_is_written_whole(patched):
    writer = Recorder(patched)
    for n in range(3):
        writer.session_message(session_id="s1", data={"n": n})
    assert len(patched) == 9
    for n in range(3):
        yielded, body, end = patched[3 * n : 3 * n + 3]
        assert yielded == "<yield 0.0001>"
        assert f'"n":{n}' in body and body.startswith("{") and '"session_id":"s1"' in body
        assert end == "\n\n"  # the terminator follows its message: no other greenlet can get in between


def test_patching_twice_wraps_once(patched):
    assert cooperative_output.make_output_cooperative()
    Recorder(patched).heartbeat()
    assert [entry for entry in patched if entry.startswith("<yield")] == ["<yield 0.0001>"]


def test_an_sdk_without_put_is_left_alone(monkeypatch):
    monkeypatch.delattr(ResponseWriter, "put")
    assert cooperative_output.make_output_cooperative() is False
    assert not hasattr(ResponseWriter, "put")


def test_the_hub_itself_never_yields():
    """A message written from a hub callback must not try to switch (gevent raises BlockingSwitchOutError)."""
    import gevent

    seen: list[bool] = []
    gevent.get_hub().loop.run_callback(lambda: seen.append(cooperative_output.in_hub()))
    gevent.spawn(lambda: seen.append(cooperative_output.in_hub())).join()
    gevent.sleep(0)
    assert sorted(seen) == [False, True]
