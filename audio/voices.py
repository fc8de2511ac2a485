"""Voices the provider refuses: recognise the refusal, and find it out with one call instead of many.

Dify's model selector sends no voice unless the user picks one, and the tool then sends a placeholder.
OpenAI, Azure OpenAI, Tongyi and SiliconFlow map an unknown voice to their default; MiniMax, Gitee AI and
OpenAI-compatible servers pass it on and the provider refuses it. Retrying such a call, or starting the
other requests of the job with the same voice, only repeats the refusal (and may be billed). So:

- `voice_refused(message)` says whether a provider/daemon error message is about the voice. It is tested on
  real texts (tests/test_voices.py): the daemon's struct validation of an empty voice, OpenAI's
  `"param": "voice"` error body, edge-tts' "Invalid voice 'alloy'", MiniMax's "voice id not exist".
- `VoiceGate`: the first call of a voice not yet heard to work in this process runs alone; the job's other
  requests with that voice wait for it. If it is refused, the job stops after that one call. Once a voice
  has worked for a provider/model, later jobs in the process start all their calls at once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

_RULES = (
    # the plugin daemon's struct validation: an empty voice ("...InvokeTTSSchema.Voice' Error:Field validation
    # for 'Voice' failed on the 'required' tag")
    re.compile(r"field validation for 'voice'"),
    # OpenAI and compatible servers: {"error": {"message": "Invalid value: 'x'. ...", "param": "voice", ...}}
    re.compile(r"""["']param["']\s*:\s*["']voice"""),
    # "Invalid voice 'alloy'." (edge-tts), "unknown voice", "unsupported voice_id"
    re.compile(r"\b(?:invalid|unknown|unsupported|bad)\s+(?:value\s+for\s+)?[\"'`]?voice"),
    # Chinese provider messages: 音色不存在 / 音色无效 / 不支持该音色
    re.compile(r"音色.{0,12}?(?:不存在|无效|不支持|错误)|不支持.{0,6}?音色"),
)
# "voice id not exist" (MiniMax), "Voice 'x' not found", "voice is required"; the words between may not
# name another cause (an API key, a quota, …) nor end the sentence.
_VOICE_THEN_VERDICT = re.compile(
    r"\bvoice(?:[ _-]?(?:id|name))?\b(?P<gap>.{0,40}?)"
    r"(?:not exists?|not found|not supported|not available|not valid|not allowed|does ?n[o']t exist"
    r"|\binvalid\b|\bunknown\b|\bunsupported\b|\bis required\b)"
)
_OTHER_CAUSE = re.compile(r"key|token|auth|quota|rate|credit|balance|model|fail|error|[.;:!?](?:\s|$)|\n")


def voice_refused(message: str) -> bool:
    """True when an error message clearly says the voice is missing, unknown or not allowed."""
    text = message.lower()
    if any(rule.search(text) for rule in _RULES):
        return True
    return any(not _OTHER_CAUSE.search(m.group("gap")) for m in _VOICE_THEN_VERDICT.finditer(text))


# (namespace, voice) pairs that produced audio in this process; only decides whether a first call runs alone.
_PROVEN: set[tuple[str, str | None]] = set()
_PROVEN_MAX = 4096


class VoiceGate:
    """Per job: the first call of each voice not yet proven runs alone; the others of that voice wait.

    `turn(voice, cancelled, stop)` returns True for the caller that must report back with `done(voice, ok)`;
    waiting callers return False as soon as the voice is proven, and raise `stop()` once the job is
    cancelled. A request that fails fails the whole job, so after a failed probe (refused voice, or any
    other error after its retries) no waiting call starts: they wait for the job to be cancelled.
    """

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._probes: dict[str | None, threading.Event] = {}
        self._failed: set[str | None] = set()

    def turn(self, voice: str | None, cancelled: threading.Event, stop: Callable[[], BaseException]) -> bool:
        key = (self._namespace, voice)
        while True:
            with self._lock:
                if key in _PROVEN:
                    return False
                probe = self._probes.get(voice)
                if probe is None and voice not in self._failed:
                    self._probes[voice] = threading.Event()
                    return True
            if probe is not None:
                probe.wait(0.2)
            else:  # the probe failed: the job is being stopped; never start another call with this voice
                cancelled.wait(0.2)
            if cancelled.is_set():
                raise stop()

    def done(self, voice: str | None, *, ok: bool) -> None:
        """The probe of `voice` finished: the voice is proven if `ok`, else no call with it starts any more."""
        with self._lock:
            if ok:
                if len(_PROVEN) >= _PROVEN_MAX:
                    _PROVEN.clear()
                _PROVEN.add((self._namespace, voice))
            else:
                self._failed.add(voice)
            probe = self._probes.pop(voice, None)
        if probe is not None:
            probe.set()


def forget_proven() -> None:
    """Tests: start from a process that has heard no voice yet."""
    _PROVEN.clear()
