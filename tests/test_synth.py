"""synth.run: concurrency bound, order, retries with backoff, failure naming, cancellation, stalls, cache."""

from __future__ import annotations

import threading
import time

import pytest

from audio import synth
from audio.cache import DiskCache
from audio.errors import InvalidAudio, InvalidInput, SynthesisFailed
from audio.model import Request, Stats
from tests import audiogen


def _requests(n: int) -> list[Request]:
    return [Request(index=i, text=f"Sentence number {i} is here.", voice="v") for i in range(n)]


class Engine:
    """A fake provider: per-request behaviour, records calls and the peak number of concurrent calls."""

    def __init__(self, fail_times: dict[int, int] | None = None, delay: float = 0.0, body: bytes | None = None):
        self.fail_times = dict(fail_times or {})
        self.delay = delay
        self.body = body
        self.calls: list[str] = []
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: str | None):
        idx = int(text.split()[2])
        with self.lock:
            self.calls.append(text)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay * (1 + (idx % 3)))  # finish out of order
            if self.fail_times.get(idx, 0) > 0:
                self.fail_times[idx] -= 1
                raise Exception(f"rate limited (429) on {idx}")
            if self.body is not None:
                yield self.body
                return
            data = audiogen.mp3(0.3, freq=200 + 50 * idx)
            for i in range(0, len(data), 1024):
                yield data[i : i + 1024]
        finally:
            with self.lock:
                self.active -= 1


def test_results_keep_request_order_and_concurrency_bound():
    engine = Engine(delay=0.02)
    results = synth.run(_requests(9), engine, concurrency=3, backoff_s=0)
    assert [r.request.index for r in results] == list(range(9))
    assert engine.peak == 3
    assert all(r.files and r.files[0].fmt == "mp3" for r in results)


def test_failed_call_is_retried_and_counted():
    engine = Engine(fail_times={2: 2})
    stats = Stats()
    results = synth.run(_requests(4), engine, concurrency=2, attempts=3, backoff_s=0.01, stats=stats)
    assert len(results) == 4
    assert results[2].attempts == 3
    assert stats.retries == 2


def test_call_that_always_fails_names_request_and_provider_message():
    engine = Engine(fail_times={1: 99})
    with pytest.raises(SynthesisFailed) as err:
        synth.run(_requests(3), engine, concurrency=1, attempts=2, backoff_s=0)
    text = str(err.value)
    assert "#2" in text and "Sentence number 1" in text and "rate limited (429) on 1" in text
    assert "2 attempt" in text


def test_failure_stops_remaining_requests():
    engine = Engine(fail_times={0: 99})
    with pytest.raises(SynthesisFailed):
        synth.run(_requests(30), engine, concurrency=1, attempts=1, backoff_s=0)
    assert len(engine.calls) < 30


def test_json_error_body_is_retried_then_reported_as_invalid_audio():
    engine = Engine(body=b'{"error": {"message": "quota exceeded", "code": 429}}')
    stats = Stats()
    with pytest.raises(InvalidAudio) as err:
        synth.run(_requests(1), engine, attempts=2, backoff_s=0, stats=stats)
    assert "quota exceeded" in str(err.value) and "#1" in str(err.value)
    assert stats.retries == 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x00\x00\x00\x20ftypM4A " + bytes(200), "mp4"),  # well-formed, but a container we cannot cut
        (b"https://cdn.example/a.mp3", "URL"),
        (bytes([0xFF, 0xFB, 0x04, 0xC0]) + bytes(400), "mp3"),  # free-format mp3: not supported
    ],
)
def test_a_well_formed_answer_in_an_unusable_format_is_not_paid_for_twice(body, kind):
    engine = Engine(body=body)
    stats = Stats()
    with pytest.raises(InvalidAudio) as err:
        synth.run(_requests(1), engine, attempts=3, backoff_s=0, stats=stats)
    assert err.value.sniffed == kind and not err.value.retryable
    assert len(engine.calls) == 1 and stats.retries == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty answer
        b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",  # error body
        audiogen.mp3(0.3, id3=True)[:300],  # cut off before its first complete frame
    ],
)
def test_empty_error_and_cut_off_answers_are_retried(body):
    engine = Engine(body=body)
    with pytest.raises(InvalidAudio) as err:
        synth.run(_requests(1), engine, attempts=3, backoff_s=0)
    assert err.value.retryable and len(engine.calls) == 3


def test_engine_input_errors_are_not_retried():
    calls = []

    def engine(text, voice):
        calls.append(text)
        raise InvalidInput("voice", "unknown voice 'x'")

    with pytest.raises(InvalidInput, match="voice"):
        synth.run(_requests(1), engine, attempts=3, backoff_s=0)
    assert len(calls) == 1


def test_stalled_call_fails_within_the_stall_timeout():
    release = threading.Event()

    def engine(text, voice):
        yield audiogen.mp3(0.2)[:1024]
        release.wait(30)  # never sends the rest
        yield b""

    t0 = time.monotonic()
    with pytest.raises(SynthesisFailed, match="stalled"):
        synth.run(_requests(1), engine, stall_timeout_s=0.6, attempts=1)
    assert time.monotonic() - t0 < 10
    release.set()


def test_non_bytes_chunk_is_an_error():
    def engine(text, voice):
        yield "not bytes"

    with pytest.raises(SynthesisFailed, match="expected bytes"):
        synth.run(_requests(1), engine, attempts=1)


def test_cache_hits_skip_synthesis_and_keep_audio(tmp_path):
    cache = DiskCache(tmp_path / "cache")
    first = Engine()
    stats1 = Stats()
    r1 = synth.run(_requests(3), first, cache=cache, namespace="eng/model", stats=stats1)
    assert stats1.cache_misses == 3 and stats1.cache_hits == 0
    second = Engine()
    stats2 = Stats()
    r2 = synth.run(_requests(3), second, cache=cache, namespace="eng/model", stats=stats2)
    assert second.calls == []
    assert stats2.cache_hits == 3
    assert [f.data for r in r1 for f in r.files] == [f.data for r in r2 for f in r.files]
    third = Engine()
    synth.run(_requests(3), third, cache=cache, namespace="other/model")
    assert len(third.calls) == 3


def test_spooled_calls_keep_their_audio_on_disk_not_in_memory(tmp_path):
    reqs = _requests(4)
    in_memory = synth.run(reqs, Engine(), concurrency=2, backoff_s=0)
    spooled = synth.run(reqs, Engine(), concurrency=2, backoff_s=0, spool=tmp_path)
    for kept, spilled in zip(in_memory, spooled, strict=True):
        assert len(kept.files) == len(spilled.files) >= 1
        for a, b in zip(kept.files, spilled.files, strict=True):
            assert b.data == b"" and b.path is not None and b.path.parent == tmp_path
            assert b.path.read_bytes() == a.data and b.size == a.size == len(a.data)
            assert (b.fmt, b.sample_rate, b.call_index, b.file_index) == (a.fmt, a.sample_rate, a.call_index,
                                                                          a.file_index)


# --- several models -------------------------------------------------------------------------------------------


def _two_model_requests(n: int) -> list[Request]:
    """Even requests for model 1, odd ones for model 2."""
    return [Request(index=i, text=f"Sentence number {i} is here.", voice="v", model=1 + i % 2) for i in range(n)]


def test_each_request_goes_to_its_model_and_concurrency_is_bounded_per_model():
    one, two = Engine(delay=0.02), Engine(delay=0.02)
    results = synth.run(_two_model_requests(12), {1: one, 2: two}, concurrency=2, backoff_s=0)
    assert [r.request.index for r in results] == list(range(12))
    assert sorted(int(t.split()[2]) for t in one.calls) == [0, 2, 4, 6, 8, 10]
    assert sorted(int(t.split()[2]) for t in two.calls) == [1, 3, 5, 7, 9, 11]
    assert one.peak == 2 and two.peak == 2  # the bound holds for each model, and each model reaches it


def test_a_model_held_by_its_rate_limit_does_not_hold_up_the_other():
    """Model 1's calls all wait until model 2 has finished every one of its calls: with one shared bound, model 2's
    calls would queue behind model 1's held ones and model 1 would time out waiting."""
    model_2_done = threading.Event()
    two = Engine()
    finished_2 = []

    def held(text, voice):
        assert model_2_done.wait(20), "model 2 was held up by model 1"
        yield audiogen.mp3(0.3)

    def fast(text, voice):
        yield from two(text, voice)
        finished_2.append(text)
        if len(finished_2) == 6:
            model_2_done.set()

    results = synth.run(_two_model_requests(12), {1: held, 2: fast}, concurrency=2, backoff_s=0)
    assert len(results) == 12 and model_2_done.is_set()
    assert two.peak <= 2


def test_retries_and_errors_name_the_model(caplog):
    one, two = Engine(), Engine(fail_times={3: 99})
    with pytest.raises(SynthesisFailed) as err:
        synth.run(_two_model_requests(6), {1: one, 2: two}, concurrency=1, attempts=2, backoff_s=0,
                  models={1: "langgenius/openai/openai/tts-1", 2: "minimax/speech-01"})
    assert str(err.value).startswith('TTS request #4 (model_2 minimax/speech-01, "Sentence number 3')
    assert err.value.model == "model_2 minimax/speech-01"
    assert "rate limited (429) on 3" in str(err.value)
    assert any("request #4 (model_2 minimax/speech-01) attempt 1 failed" in r.getMessage() for r in caplog.records)


def test_invalid_audio_names_the_model():
    one = Engine()
    two = Engine(body=b'{"error": {"message": "quota exceeded", "code": 429}}')
    with pytest.raises(InvalidAudio) as err:
        synth.run(_two_model_requests(2), {1: one, 2: two}, attempts=1, backoff_s=0, models={2: "minimax/speech-01"})
    assert str(err.value).startswith("TTS call #2 (model_2 minimax/speech-01): ") and "quota exceeded" in str(err.value)


def test_a_request_for_a_model_without_engine_fails_before_any_call():
    one = Engine()
    reqs = [Request(0, "Sentence number 0 here.", speaker="Host"), Request(1, "Sentence number 1.", speaker="Guest",
                                                                          model=3)]
    with pytest.raises(InvalidInput) as err:
        synth.run(reqs, one)
    assert err.value.param == "speakers" and "Guest" in str(err.value) and "model_3" in str(err.value)
    assert one.calls == []


def test_cache_entries_are_per_model(tmp_path):
    cache = DiskCache(tmp_path / "cache")
    same = [Request(0, "Sentence number 0 is here.", voice="v"), Request(1, "Sentence number 0 is here.", voice="v",
                                                                         model=2)]
    one, two = Engine(), Engine()
    synth.run(same, {1: one, 2: two}, cache=cache, namespace="p1/m1", models={2: "p2/m2"})
    assert len(one.calls) == len(two.calls) == 1  # same text and voice, different models: both synthesized
    again_1, again_2 = Engine(), Engine()
    stats = Stats()
    synth.run(same, {1: again_1, 2: again_2}, cache=cache, namespace="p1/m1", models={2: "p2/m2"}, stats=stats)
    assert again_1.calls == again_2.calls == [] and stats.cache_hits == 2
    other = Engine()
    synth.run(same[1:], {2: other}, cache=cache, namespace="p1/m1", models={2: "p3/m3"})
    assert len(other.calls) == 1  # another model behind model_2: not served from the cache


def test_the_time_budget_counts_each_models_calls_against_its_own_concurrency():
    from audio.pipeline import MIN_CALL_S, Job, check_budget

    one_model = [Request(i, "x") for i in range(40)]
    split = [Request(i, "x", model=1 + i % 2) for i in range(40)]
    budget = 40 * MIN_CALL_S / 2 * 0.75  # 40 calls at concurrency 2 do not fit; 20 per model do
    job = Job(text="x", concurrency=2, time_budget_s=budget)
    with pytest.raises(InvalidInput, match="time limit"):
        check_budget(one_model, job)
    check_budget(split, job)
