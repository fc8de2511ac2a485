"""Embedded speech engine for local runs: eSpeak NG loaded with ctypes from the `espeakng-loader` wheel.

No system package and no network: the wheel ships `libespeak-ng.so` and `espeak-ng-data`. The engine is a
`Synthesize` (see audio.model) that behaves like a real Dify TTS provider, so a local run exercises the same
reassembly path as production: the text is split into sentences, every sentence becomes its own complete
mp3 FILE (libmp3lame 48 kbit/s, ID3v2 tag, Xing/Info header — like OpenAI's responses) and the call yields
the concatenation of these files in 1024-byte slices, as the openai plugin does.

eSpeak NG keeps global state and is not thread-safe, so every synthesis holds one module-level lock; the
library is loaded and initialised lazily on first use (importing this module loads nothing). Encoding with
ffmpeg happens outside the lock, so concurrent calls still overlap.
"""

from __future__ import annotations

import ctypes
import io
import re
import tempfile
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import ffmpeg
from .errors import InvalidInput, PipelineError

# espeak_AUDIO_OUTPUT / flags / parameters from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_RATE, _PITCH, _RANGE = 1, 3, 4
_BUFFER_MS = 500

DEFAULT_VOICE = "en-us"
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_BITRATE_KBPS = 48
MAX_OUTPUTS_PER_FFMPEG = 64  # sentences encoded by one ffmpeg process
SILENT_SENTENCE_S = 0.1  # what a sentence that produced no samples (e.g. "...") becomes


@dataclass(frozen=True)
class VoiceInfo:
    name: str  # what users pass as `voice` / in `speakers`
    language: str  # BCP 47-ish language tag
    description: str


@dataclass(frozen=True)
class _Voice:
    info: VoiceInfo
    espeak_name: str  # argument of espeak_SetVoiceByName
    rate: int  # words per minute (espeak default 175)
    pitch: int  # 0..100 (default 50)
    pitch_range: int  # 0..100 (default 50)


# A curated set: voices that exist in the shipped espeak-ng-data and sound clearly distinct from each other.
# (eSpeak's `en-gb` language is the voice file `en`; `+f3`/`+m3` are its variant files.)
_VOICES: tuple[_Voice, ...] = (
    _Voice(VoiceInfo("en-us", "en-US", "English (US), male"), "en-us", 170, 45, 50),
    _Voice(VoiceInfo("en-gb+f3", "en-GB", "English (UK), female"), "en+f3", 160, 60, 60),
    _Voice(VoiceInfo("en-us+f3", "en-US", "English (US), female, brighter"), "en-us+f3", 180, 70, 55),
    _Voice(VoiceInfo("en-gb", "en-GB", "English (UK), male"), "en", 160, 40, 45),
    _Voice(VoiceInfo("en-us+m3", "en-US", "English (US), deep male, slower"), "en-us+m3", 150, 25, 40),
    _Voice(VoiceInfo("de", "de-DE", "German, male"), "de", 160, 45, 50),
    _Voice(VoiceInfo("fr", "fr-FR", "French, male"), "fr", 165, 50, 50),
    _Voice(VoiceInfo("es", "es-ES", "Spanish, male"), "es", 165, 50, 50),
)
_BY_NAME = {v.info.name: v for v in _VOICES}

# Order in which the CLI hands embedded voices to the speakers of a script when --speakers is not given:
# alternating accent/gender so that consecutive speakers are easy to tell apart.
SPEAKER_VOICE_ORDER: tuple[str, ...] = ("en-us", "en-gb+f3", "en-us+m3", "en-us+f3", "en-gb")

# --- the library (lazy, process-wide, guarded by _lock) ------------------------------------------------------

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_sample_rate = 0
_version = ""
_collected: list[bytes] = []  # filled by the callback while _lock is held
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _on_samples(wav, numsamples, _events):  # called by espeak_Synth, in the synthesizing thread
    if numsamples > 0 and wav:
        _collected.append(ctypes.string_at(wav, numsamples * 2))
    return 0  # 0 = continue


_callback = _CALLBACK_TYPE(_on_samples)  # module-level: must outlive every synthesis


def _load() -> ctypes.CDLL:
    """Load and initialise eSpeak NG once. Caller holds _lock."""
    global _lib, _sample_rate, _version
    if _lib is not None:
        return _lib
    try:
        import espeakng_loader
    except ImportError as exc:
        raise PipelineError(
            "embedded speech engine unavailable: pip install espeakng-loader (see requirements-local.txt)"
        ) from exc
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
    except (OSError, RuntimeError) as exc:
        raise PipelineError(f"embedded speech engine unavailable: cannot load eSpeak NG: {exc}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path.encode(), _INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise PipelineError(f"embedded speech engine: espeak_Initialize failed ({rate}) with data at {data_path}")
    lib.espeak_SetSynthCallback(_callback)
    _version = (lib.espeak_Info(None) or b"").decode("ascii", "replace")
    _sample_rate = rate
    _lib = lib
    return lib


def sample_rate() -> int:
    """Output sample rate of the engine (22050 Hz for eSpeak NG); loads the library if needed."""
    with _lock:
        _load()
        return _sample_rate


def engine_version() -> str:
    with _lock:
        _load()
        return _version


def _synth_pcm(text: str, voice: _Voice) -> bytes:
    """Mono s16le PCM of one piece of text. Serialised: eSpeak is one global synthesizer."""
    data = text.replace("\x00", " ").encode("utf-8") + b"\x00"
    with _lock:
        lib = _load()
        if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != _EE_OK:
            raise PipelineError(f"embedded speech engine: eSpeak NG has no voice {voice.espeak_name!r}")
        # Set every time: parameters are global and persist across calls with other voices.
        lib.espeak_SetParameter(_RATE, voice.rate, 0)
        lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
        lib.espeak_SetParameter(_RANGE, voice.pitch_range, 0)
        _collected.clear()
        try:
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            pcm = b"".join(_collected)
        finally:
            _collected.clear()
    if err != _EE_OK:
        raise PipelineError(f"embedded speech engine: espeak_Synth failed ({err})")
    return pcm


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"\S.*?(?:[.!?…]+[\"'”’)\]]*(?=\s)|$)", re.DOTALL)


def split_sentences(text: str) -> list[str]:
    """Simple sentence split (end punctuation + whitespace, or a blank line); empty pieces dropped."""
    out = []
    for paragraph in _PARAGRAPH.split(text):
        out += [" ".join(m.group().split()) for m in _SENTENCE.finditer(paragraph.strip())]
    return [s for s in out if s]


def _scaled(pcm: bytes, gain_db: float) -> bytes:
    """s16le PCM attenuated by gain_db (≤ 0, so no clipping)."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(10 ** (gain_db / 20))
    return np.round(samples).astype("<i2").tobytes()


def _wav_file(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _mp3_files(pcms: list[bytes], rate: int, bitrate_kbps: int) -> list[bytes]:
    """Each PCM piece → its own complete mp3 file (ID3v2 + Xing/Info header), one ffmpeg run per batch."""
    files: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="tts-espeak-") as tmp:
        for start in range(0, len(pcms), MAX_OUTPUTS_PER_FFMPEG):
            batch = pcms[start : start + MAX_OUTPUTS_PER_FFMPEG]
            args: list[str] = []
            outs: list[Path] = []
            for i, pcm in enumerate(batch):
                raw = Path(tmp, f"{start + i}.raw")
                raw.write_bytes(pcm)
                args += ffmpeg.raw_input_args(raw, rate, 1, "s16le")
            for i in range(len(batch)):
                out = Path(tmp, f"{start + i}.mp3")  # a seekable file: the muxer writes the Xing/Info frame
                outs.append(out)
                args += [
                    "-map", f"{i}:a", "-c:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k",
                    "-id3v2_version", "4", "-write_xing", "1", "-f", "mp3", ffmpeg.file_url(out),
                ]
            ffmpeg.run(args, what="embedded speech engine: mp3 encoding")
            files.extend(out.read_bytes() for out in outs)
    return files


class EspeakEngine:
    """`Synthesize` for local runs: `engine(text, voice)` → iterator of provider-like chunks.

    fmt "mp3" (default) yields one mp3 file per sentence, concatenated; "wav" one WAV file per sentence.
    chunk_size is the slice length of the yielded stream (the openai plugin uses 1024). gain_db changes the
    level of the speech, so a second engine can sound like another provider that delivers quieter audio.
    """

    def __init__(
        self,
        *,
        fmt: str = "mp3",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        bitrate_kbps: int = DEFAULT_BITRATE_KBPS,
        gain_db: float = 0.0,
    ) -> None:
        if fmt not in ("mp3", "wav"):
            raise ValueError(f"fmt must be 'mp3' or 'wav', not {fmt!r}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if not -40.0 <= gain_db <= 0.0:
            raise ValueError("gain_db must be between -40 and 0 (the engine's output peaks near full scale)")
        self.fmt = fmt
        self.chunk_size = chunk_size
        self.bitrate_kbps = bitrate_kbps
        self.gain_db = gain_db

    @property
    def cache_namespace(self) -> str:
        """Identifies this engine's output for cache keys (Job.cache_namespace)."""
        level = f"/{self.gain_db:g}dB" if self.gain_db else ""
        return f"espeak-ng-embedded/{self.fmt}/{self.bitrate_kbps}k{level}"

    @staticmethod
    def voices() -> list[VoiceInfo]:
        return [v.info for v in _VOICES]

    @staticmethod
    def resolve_voice(voice: str | None) -> str:
        """The canonical voice name for `voice` (None/blank = default); InvalidInput naming `voice` if unknown."""
        return _resolve(voice).info.name

    def __call__(self, text: str, voice: str | None = None) -> Iterator[bytes]:
        v = _resolve(voice)  # validated eagerly: a bad voice fails at the call, not at the first chunk
        sentences = split_sentences(text or "")
        if not sentences:
            raise InvalidInput("text", "nothing to speak (the text is empty)")
        return self._stream(sentences, v)

    def _stream(self, sentences: list[str], voice: _Voice) -> Iterator[bytes]:
        rate = sample_rate()
        pcms = []
        for sentence in sentences:
            pcm = _synth_pcm(sentence, voice)
            if pcm and self.gain_db:
                pcm = _scaled(pcm, self.gain_db)
            pcms.append(pcm or bytes(2 * int(rate * SILENT_SENTENCE_S)))
        if self.fmt == "wav":
            files = [_wav_file(pcm, rate) for pcm in pcms]
        else:
            files = _mp3_files(pcms, rate, self.bitrate_kbps)
        data = b"".join(files)
        for pos in range(0, len(data), self.chunk_size):
            yield data[pos : pos + self.chunk_size]


def embedded_models() -> dict[int, EspeakEngine]:
    """The local runner's TTS models, by the index `--speakers "Guest=2:voice"` picks (model, model_2 in the
    Dify tool). 1 answers like OpenAI (an mp3 per sentence in 1024-byte slices); 2 like a provider that sends
    a whole WAV per sentence at the engine's 22.05 kHz, 10 dB quieter: two providers joined without a network.
    """
    return {1: EspeakEngine(), 2: EspeakEngine(fmt="wav", chunk_size=4096, gain_db=-10.0)}


def _resolve(voice: str | None) -> _Voice:
    if voice is None or not str(voice).strip():
        return _BY_NAME[DEFAULT_VOICE]
    key = str(voice).strip().lower().replace("_", "-")
    found = _BY_NAME.get(key)
    if found is None:
        raise InvalidInput("voice", f"unknown voice {voice!r}; available: {', '.join(_BY_NAME)}")
    return found
