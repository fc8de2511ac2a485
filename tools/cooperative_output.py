"""Make the SDK's message writer give the gevent hub a turn before each message.

dify_plugin 0.10 delivers a blob message by cutting it into 8 KiB `blob_chunk` messages and serializing and
writing all of them in one loop without yielding (plugin.py, `_execute_request`). A 15-minute narration is
~7 MB, ~900 messages: ~100 ms during which no other greenlet of the plugin process (heartbeats, other
invocations' backwards calls) can run (tests/test_reliability.py measures it). Wrapping
`ResponseWriter.put` so it calls `audio.cooperate.cooperate()` first bounds that to ~10 ms slices.

Safety: the yield happens before a message is started, never between `put`'s two writes (the JSON and its
"\\n\\n" terminator), so messages of concurrent sessions may interleave but never mix; the order of one
session's messages is unchanged (one greenlet writes them in sequence).
"""

from __future__ import annotations

import functools
from typing import Any

import gevent

from audio.cooperate import cooperate

_MARK = "_tts_pipeline_cooperative"


def in_hub() -> bool:
    """True when running in gevent's hub itself (a loop callback), where a sleep must not switch."""
    return gevent.getcurrent() is gevent.get_hub()


def make_output_cooperative() -> bool:
    """Patch `ResponseWriter.put` once; returns False (and changes nothing) if this SDK has no such method."""
    try:
        from dify_plugin.core.server.__base.response_writer import ResponseWriter
    except ImportError:  # another SDK layout: keep its behaviour rather than guess
        return False
    original = getattr(ResponseWriter, "put", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def put(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not in_hub():
            cooperate()
        return original(self, *args, **kwargs)

    setattr(put, _MARK, True)
    ResponseWriter.put = put  # type: ignore[method-assign]
    return True
