"""One small exception hierarchy for the audio core.

The Dify adapter and the CLI turn these into the one message a user reads, so every error carries enough
context (which parameter, which call, what the provider sent) to act on without a traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class InvalidInput(PipelineError):
    """A job parameter or the text is unusable. `param` names the parameter the user must change."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class InvalidAudio(PipelineError):
    """What a TTS call returned is not (entirely) audio we can use.

    `call_index` is the 0-based request index, `sniffed` what the bytes looked like, `preview` the first
    ~200 printable characters (a provider's JSON/HTML error body is usually the explanation). `retryable` is
    False when the answer is well-formed audio (or a link, a playlist, encoded text) in a form the pipeline
    cannot use: the same request would get the same answer, so it is not asked again.
    """

    def __init__(
        self,
        call_index: int | None,
        message: str,
        *,
        sniffed: str = "",
        preview: str = "",
        model: str = "",
        retryable: bool = True,
    ) -> None:
        where = f"TTS call #{call_index + 1}" if call_index is not None else "audio"
        if model:
            where += f" ({model})"
        text = f"{where}: {message}"
        if sniffed:
            text += f" (looks like: {sniffed})"
        if preview:
            text += f"; it starts with: {preview!r}"
        super().__init__(text)
        self.call_index = call_index
        self.message = message
        self.sniffed = sniffed
        self.preview = preview
        self.model = model  # which model answered, e.g. "model_2 minimax/speech-01" ("" = not known here)
        self.retryable = retryable  # False: a well-formed answer in a format we cannot use; asking again pays twice


class SynthesisFailed(PipelineError):
    """A TTS request still failed after its retries. Names the request and the provider's message."""

    def __init__(
        self, index: int, text: str, provider_message: str, attempts: int, model: str = "", model_index: int = 1
    ) -> None:
        first_words = " ".join(text.split()[:8])
        which = f"{model}, " if model else ""
        super().__init__(
            f"TTS request #{index + 1} ({which}\"{first_words}…\") failed after {attempts} attempt(s): "
            f"{provider_message}"
        )
        self.index = index
        self.provider_message = provider_message
        self.attempts = attempts
        self.model = model  # e.g. "model_2 minimax/speech-01"
        self.model_index = model_index  # the request's model: 1 = `model`, 2 = `model_2`, 3 = `model_3`


class VoiceRefused(SynthesisFailed):
    """The provider (or the daemon) refused the voice: not retried, and the job stops after that one call.
    `voice` is the voice the request asked for (None = the provider's default, i.e. the tool's placeholder)."""

    def __init__(
        self,
        index: int,
        text: str,
        provider_message: str,
        attempts: int,
        voice: str | None,
        model: str = "",
        model_index: int = 1,
    ) -> None:
        super().__init__(index, text, provider_message, attempts, model=model, model_index=model_index)
        self.voice = voice


class OutputTooLarge(PipelineError):
    """No allowed encoding of the programme fits the output size limit."""


class FFmpegError(PipelineError):
    """ffmpeg is missing, timed out or failed. `stderr` keeps its last lines for the message."""

    def __init__(self, message: str, stderr: str = "") -> None:
        tail = "\n".join(stderr.strip().splitlines()[-6:])
        super().__init__(f"{message}" + (f"\nffmpeg said:\n{tail}" if tail else ""))
        self.stderr = stderr


def printable_preview(data: bytes, limit: int = 200) -> str:
    """The first `limit` printable characters of a payload, for error messages about non-audio bodies."""
    text = data[: limit * 4].decode("utf-8", errors="replace")
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(kept.split())[:limit]
