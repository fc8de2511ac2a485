"""audio.voices: which error messages mean "the voice was refused", and synth stopping after ONE such call."""

from __future__ import annotations

import threading

import pytest

from audio import synth, voices
from audio.errors import SynthesisFailed, VoiceRefused
from audio.model import Request
from tests import audiogen

# Real texts (sources in the comments); each says the voice is missing, unknown or not allowed.
REFUSALS = [
    # the plugin daemon validating an empty voice (langgenius/dify#15501, dify-official-plugins#819)
    "plugin daemon: {\"message\":\"Key: 'InvokePluginRequest[github.com/langgenius/dify-plugin-daemon/pkg/entities/"
    "requests.RequestInvokeTTS].Data.InvokeTTSSchema.Voice' Error:Field validation for 'Voice' failed on the "
    "'required' tag\",\"error_type\":\"PluginDaemonBadRequestError\",\"args\":null}, code: -400",
    # OpenAI's error body, passed on verbatim by the OpenAI-compatible model plugin (InvokeBadRequestError(text))
    "invoke tts model failed: [models] Bad Request Error, {\"error\": {\"message\": \"Invalid value: 'default'. "
    "Supported values are: 'alloy', 'echo', 'fable', 'onyx', 'nova', 'shimmer', 'coral', 'verse', 'ballad', "
    "'ash', and 'sage'.\", \"type\": \"invalid_request_error\", \"param\": \"voice\", \"code\": \"invalid_value\"}}",
    # edge-tts behind an OpenAI-compatible server (jianchang512/pyvideotrans#136)
    "invoke tts model failed: Invalid voice 'alloy'.",
    # MiniMax's status_msg for an unknown voice_id (Kochava-Studios/witsy#478)
    "read tts model failed: {\"base_resp\": {\"status_code\": 2054, \"status_msg\": \"voice id not exist\"}}",
    "Voice 'default' not found. Available voices: af_bella, af_sky",
    "voice is required",
    "音色不存在",
]
OTHER_ERRORS = [
    "[openai] Rate Limit Error, Rate limit reached for tts-1 in organization org-x on requests per min",
    "[openai] Server Unavailable Error, 503 service unavailable",
    "invoke tts model failed: Incorrect API key provided: sk-abc***",
    "invocation exited without response after 250 seconds",
    "TTS voice synthesis failed: invalid API key",
    "voice synthesis quota exceeded for this month",
    "Input text too long: the maximum is 4096 characters",
    "400 Bad Request: Unsupported instruct items found in calm documentary",
    "save data failed: allocated size is greater than max storage size",
]


@pytest.mark.parametrize("message", REFUSALS)
def test_voice_refusals_are_recognised(message):
    assert voices.voice_refused(message)


@pytest.mark.parametrize("message", OTHER_ERRORS)
def test_other_errors_are_not_voice_refusals(message):
    assert not voices.voice_refused(message)


class RefusingProvider:
    """Like MiniMax/openai_api_compatible: refuses the placeholder voice (None here), speaks any other."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: str | None):
        with self.lock:
            self.calls.append((text, voice))
        if voice is None:
            raise Exception(REFUSALS[1])
        data = audiogen.mp3(0.3, freq=300)
        yield from (data[i : i + 1024] for i in range(0, len(data), 1024))


def requests(n: int, voice: str | None) -> list[Request]:
    return [Request(index=i, text=f"Sentence number {i} is here.", voice=voice) for i in range(n)]


@pytest.fixture(autouse=True)
def fresh_process():
    voices.forget_proven()
    yield
    voices.forget_proven()


@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_a_refused_voice_stops_the_job_after_one_call(concurrency):
    provider = RefusingProvider()
    with pytest.raises(VoiceRefused) as info:
        synth.run(requests(12, None), provider, concurrency=concurrency, attempts=3, backoff_s=0, namespace="p/m")
    assert len(provider.calls) == 1  # not retried, no other request started
    assert isinstance(info.value, SynthesisFailed) and info.value.attempts == 1 and info.value.voice is None
    assert "failed after 1 attempt(s)" in str(info.value) and "'param': 'voice'" not in str(info.value)
    assert '"param": "voice"' in info.value.provider_message


def test_other_voices_run_concurrently_and_a_proven_voice_is_not_probed_again():
    provider = RefusingProvider()
    results = synth.run(requests(8, "nova"), provider, concurrency=4, backoff_s=0, namespace="p/m")
    assert len(results) == 8 and len(provider.calls) == 8
    # the next job with the same model and voice starts all its calls at once (nothing to wait for)
    gate = voices.VoiceGate("p/m")
    assert gate.turn("nova", threading.Event(), RuntimeError) is False
    assert voices.VoiceGate("other/model").turn("nova", threading.Event(), RuntimeError) is True


def test_a_failed_probe_that_is_not_about_the_voice_lets_the_next_call_try():
    calls: list[str] = []
    data = audiogen.mp3(0.3, freq=300)

    def flaky(text: str, voice: str | None):
        calls.append(text)
        if len(calls) == 1:
            raise Exception("[openai] Server Unavailable Error, 503 service unavailable")
        yield data

    results = synth.run(requests(5, "nova"), flaky, concurrency=4, backoff_s=0, namespace="p/m")
    assert len(results) == 5 and len(calls) == 6  # one retry, no refusal


def test_no_audio_for_an_unproven_voice_costs_one_request_not_the_whole_first_wave():
    """MiniMax drops its JSON error for an unknown voice and yields nothing: not recognisable as a refusal, so
    the request is retried, but the job's other requests with that voice never start."""
    from audio.errors import InvalidAudio

    calls: list[str] = []

    def silent(text: str, voice: str | None):
        calls.append(text)
        return iter(())

    with pytest.raises(InvalidAudio):
        synth.run(requests(12, None), silent, concurrency=4, attempts=3, backoff_s=0, namespace="p/m")
    assert len(calls) == 3  # one request, three attempts (the first wave alone would have been 4 × 3)


def test_a_voice_proven_on_one_model_is_probed_again_on_another():
    """Model 1 speaks "nova"; model 2 refuses it. The refusal must cost model 2 one call, even though "nova"
    is already proven for model 1 in this process."""
    speaking = RefusingProvider()
    refusing_calls: list[str] = []

    def refusing(text: str, voice: str | None):
        refusing_calls.append(text)
        raise Exception(f"Invalid voice '{voice}'.")

    job = requests(6, "nova")
    synth.run(job, speaking, concurrency=4, backoff_s=0, models={1: "p/one"})  # proves nova on model 1
    mixed = [Request(index=r.index, text=r.text, voice="nova", model=1 + r.index % 2) for r in job]
    with pytest.raises(VoiceRefused) as info:
        synth.run(
            mixed, {1: speaking, 2: refusing}, concurrency=4, attempts=3, backoff_s=0,
            models={1: "p/one", 2: "p/two"},
        )
    assert len(refusing_calls) == 1
    assert info.value.model.startswith("model_2") and info.value.voice == "nova"
