"""Shared pytest setup.

Importing `dify_plugin` runs `dify_plugin/_gevent.py`, which calls gevent's `monkey.patch_all()` for the whole
process. Inside pytest that would silently turn every `threading.Thread`, `time.sleep`, `subprocess` and socket
of every test module into gevent greenlets (the fake daemon's reader threads, the pipeline's thread pools),
so the result of a test would depend on which module happened to import the SDK first. The SDK's classes work
without the patch, so an empty module stands in for `dify_plugin._gevent` before any test module is imported.
The plugin itself always runs in a child process (tests/daemon.py), where the real SDK patches as in Dify.

Some test modules set the same guard themselves (so they also work when run without this conftest);
`setdefault` keeps whichever module object came first.
"""

from __future__ import annotations

import sys
import types

sys.modules.setdefault("dify_plugin._gevent", types.ModuleType("dify_plugin._gevent"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_storage_quota():
    """A storage-quota refusal pauses cache writes for the whole process (audio.cache); tests start without."""
    from audio.cache import reset_quota_pauses

    reset_quota_pauses()
    yield
    reset_quota_pauses()
