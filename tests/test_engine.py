"""The embedded eSpeak NG engine: provider-like output (one mp3 file per sentence, 1024-byte slices)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import wave

import numpy as np
import pytest

from audio import ffmpeg
from audio.engine import DEFAULT_VOICE, EspeakEngine, VoiceInfo, split_sentences
from audio.errors import InvalidInput

TWO_SENTENCES = "The quick brown fox jumps over the lazy dog. It was a bright and windy afternoon!"
RATE = 22050


def split_id3_files(data: bytes) -> list[bytes]:
    """Cut a concatenation of mp3 files at their ID3v2 headers (independent of audio.segments)."""
    starts = []
    pos = data.find(b"ID3")
    while pos != -1:
        header = data[pos : pos + 10]
        if len(header) == 10 and header[3] in (3, 4) and all(b < 0x80 for b in header[6:10]):
            starts.append(pos)
        pos = data.find(b"ID3", pos + 10)
    assert starts and starts[0] == 0, "the stream must start with an ID3v2 tag"
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


def decode_mp3(data: bytes) -> tuple[np.ndarray, str]:
    res = ffmpeg.run([*ffmpeg.input_args("pipe:0", "mp3"), "-f", "f32le", "-ac", "1", "-"], stdin=data, check=True)
    return np.frombuffer(res.stdout, dtype=np.float32), res.stderr


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def test_import_does_not_load_the_library():
    code = "import sys, audio.engine as e; sys.exit(e._lib is not None or 'espeakng_loader' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_voices_are_a_curated_distinct_set(engine):
    voices = engine.voices()
    assert len(voices) >= 6
    assert all(isinstance(v, VoiceInfo) and v.language and v.description for v in voices)
    names = [v.name for v in voices]
    assert len(set(names)) == len(names)
    assert DEFAULT_VOICE in names
    assert {"en-us", "en-gb", "en-us+f3", "en-gb+f3", "de", "fr", "es"} <= set(names)


@pytest.mark.parametrize("voice", [v.name for v in EspeakEngine.voices()])
def test_each_voice_yields_one_clean_mp3_file_per_sentence(engine, voice):
    chunks = list(engine(TWO_SENTENCES, voice))
    assert all(isinstance(c, bytes) for c in chunks)
    assert all(len(c) == 1024 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 1024
    files = split_id3_files(b"".join(chunks))
    assert len(files) == 2  # one complete file per sentence, like a provider's per-sentence responses
    total = 0.0
    for f in files:
        assert b"Info" in f[:2048] or b"Xing" in f[:2048], "each file carries a Xing/Info header"
        samples, stderr = decode_mp3(f)
        assert "error" not in stderr.lower(), stderr
        assert rms(samples) > 0.02, "audible speech, not silence"
        total += len(samples) / RATE
    assert 2.5 < total < 12.0, f"{total:.2f} s for two short sentences"


def test_default_voice_and_case_insensitive_names(engine):
    assert engine.resolve_voice(None) == engine.resolve_voice("") == DEFAULT_VOICE
    assert engine.resolve_voice("EN-GB+F3") == "en-gb+f3"
    assert engine.resolve_voice(" en_us ") == "en-us"


def test_chunk_size_option_and_wav_format():
    eng = EspeakEngine(fmt="wav", chunk_size=300)
    chunks = list(eng("One short line. And another one.", None))
    assert all(len(c) == 300 for c in chunks[:-1])
    data = b"".join(chunks)
    assert data.count(b"RIFF") == 2 and data.startswith(b"RIFF")
    first = data[: 8 + int.from_bytes(data[4:8], "little")]
    assert rms(wav_samples(first)) > 0.02


def test_different_voices_sound_different():
    eng = EspeakEngine(fmt="wav")
    text = "The quick brown fox jumps over the lazy dog near the riverbank."

    def spectrum(voice: str) -> np.ndarray:
        x = wav_samples(b"".join(eng(text, voice)))
        frames = x[: len(x) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
        mag = np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)
        return np.log(np.add.reduceat(mag, np.arange(0, 512, 16)) + 1e-9)

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    names = [v.name for v in eng.voices()]
    spectra = {n: spectrum(n) for n in names}
    same = dist(spectra["en-us"], spectrum("en-us"))  # eSpeak adds a little randomness per run
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = dist(spectra[a], spectra[b])
            assert d > max(0.05, 4 * same), f"{a} and {b} sound alike ({d:.3f} vs same-voice {same:.3f})"


def test_unknown_voice_names_the_parameter_and_lists_voices(engine):
    with pytest.raises(InvalidInput) as exc:
        engine("Hello.", "alloy")
    assert exc.value.param == "voice"
    msg = str(exc.value)
    assert msg.startswith("voice:") and "'alloy'" in msg
    assert all(v.name in msg for v in engine.voices())


def test_empty_text_is_invalid_input(engine):
    with pytest.raises(InvalidInput) as exc:
        engine(" \n\t ", None)
    assert exc.value.param == "text"


def test_punctuation_only_sentence_still_gives_a_file(engine):
    files = split_id3_files(b"".join(engine("...", None)))
    assert len(files) == 1
    samples, _ = decode_mp3(files[0])
    assert len(samples) > 0


def test_split_sentences():
    assert split_sentences("Hi there. How are you?  Fine!\n\nNew paragraph") == [
        "Hi there.",
        "How are you?",
        "Fine!",
        "New paragraph",
    ]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    assert split_sentences("  ") == []
    assert split_sentences("No end punctuation\nacross lines") == ["No end punctuation across lines"]
    assert split_sentences("Wait... what?! Yes.") == ["Wait...", "what?!", "Yes."]


def test_concurrent_calls_are_serialised_and_do_not_mix_audio():
    eng = EspeakEngine(fmt="wav")
    texts = {v: f"Thread test for voice {i}. A second sentence follows." for i, v in enumerate(["en-us", "de", "fr"])}

    def n_samples(data: bytes) -> int:
        return sum(len(wav_samples(b"RIFF" + f)) for f in data.split(b"RIFF")[1:])

    reference = {v: n_samples(b"".join(eng(t, v))) for v, t in texts.items()}
    results: dict[tuple[str, int], int] = {}
    errors: list[BaseException] = []

    def work(voice: str, n: int) -> None:
        try:
            data = b"".join(eng(texts[voice], voice))
            results[(voice, n)] = n_samples(data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(v, n)) for n in range(3) for v in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == len(threads)
    for (voice, _), count in results.items():
        # eSpeak's per-run randomness changes lengths by a few samples, mixing would change them by seconds
        assert abs(count - reference[voice]) < 0.05 * RATE, voice


def test_the_second_embedded_model_answers_in_another_shape_and_level():
    """embedded_models()[2] (the CLI's `Guest=2:`): whole WAV files per sentence at 22.05 kHz, 10 dB quieter than
    the same speech from model 1's engine."""
    from audio.engine import embedded_models

    models = embedded_models()
    assert set(models) == {1, 2} and models[1].fmt == "mp3" and models[2].fmt == "wav"
    assert models[1].cache_namespace != models[2].cache_namespace
    text = "One sentence here. And a second one."
    data = b"".join(models[2](text, "en-gb"))
    assert data.count(b"RIFF") == 2 and data.count(b"WAVE") == 2  # one WAV per sentence
    loud = b"".join(EspeakEngine(fmt="wav")(text, "en-gb"))

    def rms_db(wav_bytes: bytes) -> float:
        first = wav_bytes[: wav_bytes.index(b"RIFF", 4)]
        with wave.open(io.BytesIO(first)) as w:
            assert w.getframerate() == 22050
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return 20 * np.log10(np.sqrt(np.mean(pcm**2)))

    assert rms_db(data) - rms_db(loud) == pytest.approx(-10.0, abs=0.1)
    with pytest.raises(ValueError):
        EspeakEngine(gain_db=6.0)
