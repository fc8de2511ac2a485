"""`python -m audio`: the local runner. Same pipeline as the Dify tool, with the embedded eSpeak NG engine.

    python -m audio narrate INPUT -o OUT [options]   text / markdown / speaker script → one audio file
    python -m audio voices [--json]                   the embedded voices
    python -m audio inspect FILE [--json]             what the pipeline measures on any audio file

Options carry the Dify tool's parameter names and defaults and are validated by audio.options, so both
front ends give the same answers. Errors are one line on stderr (`error: --flag: what is wrong`): exit 2 for
bad input, 1 for other pipeline failures, 130 on Ctrl-C.

Speakers: when the script has speakers and --speakers does not name a voice for some of them, the CLI hands
them embedded voices in the fixed order of audio.engine.SPEAKER_VOICE_ORDER (first the --voice, if given),
skipping voices already used, and prints the mapping on stderr. `--speakers "Host=en-us; Guest=2:en-gb+f3"`
sends Guest to the second embedded model (audio.engine.embedded_models: a whole WAV per sentence, quieter),
as `Guest=2:nova` sends a guest to `model_2` in the Dify tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import options
from .errors import InvalidInput, PipelineError
from .model import SpeakerVoice

# Parameter names used in audio.options / the pipeline → what the CLI user typed.
PARAM_FLAGS = {
    "text": "INPUT",
    "voice": "--voice",
    "speakers": "--speakers",
    "output_format": "--format",
    "bitrate": "--bitrate",
    "sample_rate": "--sample-rate",
    "channels": "--channels",
    "loudness": "--loudness",
    "pause_ms": "--pause-ms",
    "paragraph_pause_ms": "--paragraph-pause-ms",
    "max_chars_per_request": "--max-chars-per-request",
    "concurrency": "--concurrency",
    "subtitles": "--subtitles",
    "chapters": "--chapters",
    "max_output_mb": "--max-output-mb",
    "intro": "--intro",
    "outro": "--outro",
    "music": "--music",
    "music_level": "--music-level",
    "intro_overlap_ms": "--intro-overlap-ms",
    "speed": "--speed",
    "lexicon": "--lexicon",
    "output": "-o/--output",
    "file": "FILE",
}

EXTENSION_FORMATS = {".mp3": "mp3", ".m4a": "m4a", ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg",
                     ".flac": "flac", ".wav": "wav"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...`), like the rest of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tts-pipeline"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m audio", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    n = sub.add_parser("narrate", help="turn a text, markdown or speaker-script file into one audio file",
                       description="Narrate INPUT (a file, or - for stdin) into OUT with the embedded engine.")
    n.add_argument("input", metavar="INPUT", help="text, markdown or speaker script file; - reads stdin")
    n.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (- writes to stdout)")
    n.add_argument("--voice", help="default voice (see `python -m audio voices`); default en-us")
    n.add_argument("--speakers", help='speaker → [model:]voice[@speed], e.g. "Host=en-us; Guest=2:en-gb+f3" '
                                      "(Guest on the second embedded model) or a JSON object")
    n.add_argument("--format", dest="output_format", metavar="FORMAT",
                   help="mp3|m4a|ogg|flac|wav (default: from OUT's extension, else mp3)")
    n.add_argument("--bitrate", help="auto or kbit/s: 24|32|48|64|96|128|160|192|256|320 (default auto)")
    n.add_argument("--sample-rate", help="auto or Hz: 8000|16000|22050|24000|32000|44100|48000 (default auto)")
    n.add_argument("--channels", help="mono|stereo (default mono)")
    n.add_argument("--loudness", help="podcast|streaming|mono_podcast|broadcast|audiobook|off or LUFS (default "
                                      "podcast = -16)")
    n.add_argument("--pause-ms", help="pause between sentences/requests (default 300)")
    n.add_argument("--paragraph-pause-ms", help="pause at blank lines and speaker changes (default 700)")
    n.add_argument("--max-chars-per-request", help="longest TTS request in characters (default 600)")
    n.add_argument("--concurrency", help="parallel TTS calls, 1-16 (default 4)")
    n.add_argument("--subtitles", help="none|srt|vtt: also write OUT with a .srt/.vtt suffix (default none)")
    n.add_argument("--chapters", action=argparse.BooleanOptionalAction, default=None,
                   help="chapters from markdown headings (default: on when the text has headings)")
    n.add_argument("--title")
    n.add_argument("--artist")
    n.add_argument("--album")
    n.add_argument("--max-output-mb", help="size limit of the file in MiB (default 30)")
    n.add_argument("--intro", metavar="FILE", help="audio played before the narration, matched to its loudness")
    n.add_argument("--outro", metavar="FILE", help="audio played after the narration")
    n.add_argument("--music", metavar="FILE", help="music bed under the narration: looped, faded, ducked under speech")
    n.add_argument("--music-level", metavar="LU",
                   help="level of the bed while someone speaks, in LU relative to the speech, -40 to -6 (default -20)")
    n.add_argument("--intro-overlap-ms", metavar="MS",
                   help="how far the intro's tail runs under the first words, 0-5000 (default 500)")
    n.add_argument("--speed", help="speech rate 0.5-2.0, pitch kept, pauses unchanged (default 1)")
    n.add_argument("--lexicon", help='respellings sent to the voice, e.g. "Dify=Dee-fy; SQL=sequel" or a JSON '
                   "object; @FILE reads them from a file")
    cache = n.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, help=f"TTS cache directory (default {default_cache_dir()})")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the TTS cache")
    n.add_argument("--stats", action="store_true", help="print the JSON stats on stdout")
    n.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notes or summary on stderr")
    n.set_defaults(func=cmd_narrate)

    v = sub.add_parser("voices", help="list the embedded voices")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_voices)

    i = sub.add_parser("inspect", help="measure an audio file like the pipeline does")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)
    return parser


# ------------------------------------------------------------------------------------------------ progress


class ProgressBar:
    """`progress(stage, done, total)` drawn as one self-overwriting line per stage on a terminal."""

    WIDTH = 28

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.stage: str | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()  # the pipeline may report from worker threads

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            if stage != self.stage:
                if self.stage is not None:
                    self.stream.write("\n")
                self.stage = stage
                self.started = time.monotonic()
            frac = min(1.0, done / total) if total > 0 else 0.0
            filled = int(frac * self.WIDTH)
            bar = "█" * filled + "·" * (self.WIDTH - filled)
            elapsed = time.monotonic() - self.started
            self.stream.write(f"\r{stage:<10} {bar} {done}/{total}  {elapsed:5.1f}s\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.stage is not None:
                self.stream.write("\n")
                self.stream.flush()
                self.stage = None


# ----------------------------------------------------------------------------------------------- narrate


def read_input(source: str) -> str:
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        path = Path(source)
        if not path.exists():
            raise InvalidInput("text", f"no such file: {source}")
        if path.is_dir():
            raise InvalidInput("text", f"{source} is a directory, not a text file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput("text", f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("text", f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not text.strip():
        raise InvalidInput("text", "is empty; give the text to read aloud")
    return text


def read_lexicon(value: str | None) -> str | None:
    """--lexicon's value, or the content of the file it names as @FILE (InvalidInput naming `lexicon`)."""
    if not value or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("lexicon", f"cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None


def assign_speakers(
    found: Sequence[str], given: Mapping[str, SpeakerVoice], voice: str | None, order: Sequence[str]
) -> dict[str, SpeakerVoice]:
    """Voices for the script's speakers that `given` does not map, or maps without a voice (`Guest=2:`): the
    embedded voices in `order` (starting with `voice` if set), skipping ones already used. Returns only the
    new or completed entries (lower-cased names); a completed entry keeps its model and speed."""
    fallback = given.get("*")
    if fallback is not None and fallback.voice is not None:
        return {}
    used = {entry.voice for entry in given.values() if entry.voice}
    pool = [v for v in ([voice] if voice else []) + [v for v in order if v != voice] if v not in used]
    if not pool:
        pool = list(order)
    assigned: dict[str, SpeakerVoice] = {}
    for name in found:
        key = name.strip().lower()
        entry = given.get(key) or fallback
        if not key or key in assigned or (entry is not None and entry.voice is not None):
            continue
        template = entry or SpeakerVoice()
        assigned[key] = SpeakerVoice(pool[len(assigned) % len(pool)], template.model, template.speed)
    return assigned


def script_speakers(text: str, voice: str | None, max_chars: int) -> list[str]:
    """The speakers the pipeline's script stage finds in `text`, in order of appearance."""
    from . import script

    return list(script.plan(text, voice=voice, speakers=None, max_chars=max_chars).speakers)


# Defaults of the numeric options: the same as audio.pipeline.Job's (a test keeps them in step). Kept here so
# that option errors are reported without importing the pipeline.
DEFAULTS = {"pause_ms": 300, "paragraph_pause_ms": 700, "max_chars_per_request": 600, "concurrency": 4,
            "max_output_mb": 30}


def cmd_narrate(args: argparse.Namespace) -> int:
    from .engine import SPEAKER_VOICE_ORDER, EspeakEngine, embedded_models
    from .model import EncodeOptions, Tags

    err = sys.stderr
    out_arg: str = args.output
    to_stdout = out_arg == "-"
    out_path = None if to_stdout else Path(out_arg)

    # --- validate every option before any work (messages name the option) -------------------------------
    ext_fmt = EXTENSION_FORMATS.get(out_path.suffix.lower()) if out_path else None
    fmt = options.output_format(args.output_format if args.output_format else ext_fmt)
    bitrate = options.bitrate(args.bitrate)
    rate = options.sample_rate(args.sample_rate)
    channels = options.channels(args.channels)
    loudness = options.loudness(args.loudness)
    pause_ms = int(options.number("pause_ms", args.pause_ms, DEFAULTS["pause_ms"]))
    paragraph_pause_ms = int(
        options.number("paragraph_pause_ms", args.paragraph_pause_ms, DEFAULTS["paragraph_pause_ms"])
    )
    max_chars = int(
        options.number("max_chars_per_request", args.max_chars_per_request, DEFAULTS["max_chars_per_request"])
    )
    concurrency = int(options.number("concurrency", args.concurrency, DEFAULTS["concurrency"]))
    subs = options.subtitles(args.subtitles)
    max_mb = options.number("max_output_mb", args.max_output_mb, DEFAULTS["max_output_mb"], integer=False)
    speakers = options.speakers(args.speakers)
    intro = options.local_file("intro", args.intro)
    outro = options.local_file("outro", args.outro)
    music = options.local_file("music", args.music)
    music_level = options.music_level(args.music_level)
    intro_overlap_ms = options.intro_overlap_ms(args.intro_overlap_ms)
    speed = options.speed(args.speed)
    lexicon = options.lexicon(read_lexicon(args.lexicon))

    engines = embedded_models()
    voice = EspeakEngine.resolve_voice(args.voice)  # the default voice by name, so stats and timeline show it
    for name, entry in speakers.items():
        if entry.model not in engines:
            raise InvalidInput(
                "speakers",
                f"{name}: there is no embedded model {entry.model}; the local runner has "
                + ", ".join(f"{i} ({e.cache_namespace})" for i, e in engines.items()),
            )
        try:
            resolved = EspeakEngine.resolve_voice(entry.voice) if entry.voice is not None else None
        except InvalidInput as exc:
            raise InvalidInput("speakers", f"{name}: {str(exc).removeprefix('voice: ')}") from None
        speakers[name] = dataclasses.replace(entry, voice=resolved)

    if to_stdout and subs != "none":
        raise InvalidInput("output", "--subtitles needs a file name for -o (not -)")
    if out_path is not None:
        if out_path.is_dir():
            raise InvalidInput("output", f"{out_arg} is a directory")
        if not out_path.parent.is_dir():
            raise InvalidInput("output", f"directory {str(out_path.parent)!r} does not exist")
    if ext_fmt and args.output_format and ext_fmt != fmt and not args.quiet:
        print(f"note: writing {fmt} data to {out_arg}", file=err)

    text = read_input(args.input)
    # after validation: option errors never wait for the pipeline's imports
    from .pipeline import Job, narrate, replace_atomically

    found = script_speakers(text, voice, max_chars)
    auto = assign_speakers(found, speakers, voice, SPEAKER_VOICE_ORDER)
    if auto and not args.quiet:
        shown = {name: auto.get(name.lower(), speakers.get(name.lower())) for name in found}
        pairs = "; ".join(f"{name}={options.speaker_spec(v)}" for name, v in shown.items() if v)
        print(f"speakers: {pairs}   (choose with --speakers)", file=err)
    speakers = {**speakers, **auto}

    job = Job(
        text=text,
        voice=voice,
        speakers=speakers,
        encode=EncodeOptions(
            fmt=fmt, bitrate_kbps=bitrate, sample_rate=rate, channels=channels, max_bytes=int(max_mb * 2**20)
        ),
        loudness=loudness,
        pause_ms=pause_ms,
        paragraph_pause_ms=paragraph_pause_ms,
        max_chars_per_request=max_chars,
        concurrency=concurrency,
        tags=Tags(title=args.title or None, artist=args.artist or None, album=args.album or None),
        subtitles=subs,
        chapters=args.chapters,
        cache_namespace=engines[1].cache_namespace,
        models={index: e.cache_namespace for index, e in engines.items()},
        intro=intro,
        outro=outro,
        music=music,
        music_level=music_level,
        intro_overlap_ms=intro_overlap_ms,
        speed=speed,
        lexicon=lexicon,
    )

    cache = None
    if not args.no_cache:
        from .cache import DiskCache

        cache = DiskCache(args.cache_dir or default_cache_dir())

    bar = ProgressBar(err) if (err.isatty() and not args.quiet) else None
    started = time.monotonic()
    try:
        result = narrate(job, engines, cache=cache, progress=bar, output=None if to_stdout else out_path)
    finally:
        if bar:
            bar.close()
    elapsed = time.monotonic() - started

    subs_path = None
    if to_stdout:
        sys.stdout.buffer.write(result.data)
        sys.stdout.buffer.flush()
    else:
        assert out_path is not None  # narrate wrote the audio there
        if result.subtitles is not None:
            subs_path = out_path.with_suffix("." + (result.subtitles_format or subs))
            text = result.subtitles
            replace_atomically(subs_path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")))

    if not args.quiet:
        for warning in result.stats.warnings:
            print(f"warning: {warning}", file=err)
        print(summary("<stdout>" if to_stdout else out_arg, result, elapsed, subs_path), file=err)
    if args.stats:
        specs = {name: options.speaker_spec(entry) for name, entry in speakers.items()}
        stats = stats_json(result, elapsed, out_arg, subs_path, specs)
        print(json.dumps(stats, indent=2, ensure_ascii=False), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


def summary(out: str, result: Any, elapsed: float, subs_path: Path | None) -> str:
    parts = [f"{_clock(result.duration_s)}", f"{result.size_bytes / 1024:,.0f} KiB", result.fmt]
    if result.bitrate_kbps:
        parts.append(f"{result.bitrate_kbps} kbit/s")
    parts.append(f"{result.sample_rate} Hz {'mono' if result.channels == 1 else f'{result.channels} ch'}")
    if result.loudness_lufs is not None:
        parts.append(f"{result.loudness_lufs:.1f} LUFS")
    if result.true_peak_dbtp is not None:
        parts.append(f"{result.true_peak_dbtp:.1f} dBTP")
    st = result.stats
    line = f"wrote {out}: {', '.join(parts)} ({st.requests} requests, {st.cache_hits} cached) in {elapsed:.1f} s"
    if subs_path:
        line += f"; subtitles: {subs_path}"
    if st.music_level_lu is not None:
        line += f"; music bed {st.music_level_lu:.1f} LU under the speech"
    return line


def stats_json(result: Any, elapsed: float, out: str, subs_path: Path | None, speakers: dict[str, str]) -> dict:
    return {
        "output": out,
        "format": result.fmt,
        "mime_type": result.mime_type,
        "extension": result.extension,
        "duration_s": round(result.duration_s, 3),
        "sample_rate": result.sample_rate,
        "channels": result.channels,
        "bitrate_kbps": result.bitrate_kbps,
        "size_bytes": result.size_bytes,
        "loudness_lufs": result.loudness_lufs,
        "true_peak_dbtp": result.true_peak_dbtp,
        "target": dataclasses.asdict(result.target),
        **dataclasses.asdict(result.stats),
        "speakers": speakers,
        "chapters": [dataclasses.asdict(c) for c in result.chapters],
        "timeline": [dataclasses.asdict(t) for t in result.timeline],
        "subtitles": str(subs_path) if subs_path else None,
        "elapsed_s": round(elapsed, 3),
    }


# ------------------------------------------------------------------------------------------------ voices


def cmd_voices(args: argparse.Namespace) -> int:
    from .engine import DEFAULT_VOICE, EspeakEngine

    voices = EspeakEngine.voices()
    if args.json:
        print(json.dumps([{**dataclasses.asdict(v), "default": v.name == DEFAULT_VOICE} for v in voices], indent=2))
        return 0
    width = max(len(v.name) for v in voices)
    for v in voices:
        mark = "  (default)" if v.name == DEFAULT_VOICE else ""
        print(f"{v.name:<{width}}  {v.language:<6}  {v.description}{mark}")
    return 0


# ----------------------------------------------------------------------------------------------- inspect


def header_info(path: Path) -> tuple[str | None, float | None, dict[str, str]]:
    """(container name, duration from the file's headers, title/artist/album tags) according to mutagen."""
    import mutagen

    try:
        f = mutagen.File(path, easy=True)
    except Exception:  # mutagen raises many types for damaged files; the header is then simply unknown
        return None, None, {}
    if f is None:
        return None, None, {}
    length = getattr(f.info, "length", None)
    tags: dict[str, str] = {}
    for key in ("title", "artist", "album"):
        try:
            value = (f.tags or {}).get(key)
        except Exception:  # tag formats without easy keys
            value = None
        if value:
            tags[key] = value[0] if isinstance(value, list) else str(value)
    return type(f).__name__.removeprefix("Easy"), (float(length) if length else None), tags


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise InvalidInput("file", f"no such file: {args.file}")
    from .loudness import measure_file

    m = measure_file(path)
    container, header_s, tags = header_info(path)
    data = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "container": container,
        "header_duration_s": header_s,
        **dataclasses.asdict(m),
        "tags": tags,
    }
    if args.json:
        data["error_lines"] = list(data.get("error_lines", ()))
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0

    def num(value: Any, unit: str, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:.{digits}f} {unit}"

    rows = [
        ("file", f"{path} ({data['size_bytes']:,} bytes, {container or 'unknown container'})"),
        ("duration", num(data.get("duration_s"), "s (decoded)", 3)),
        ("header duration", num(header_s, "s", 3)),
        ("sample rate", f"{data.get('sample_rate')} Hz"),
        ("channels", str(data.get("channels"))),
        ("loudness", num(data.get("integrated_lufs"), "LUFS integrated")),
        ("true peak", num(data.get("true_peak_dbtp"), "dBTP")),
        ("loudness range", num(data.get("loudness_range_lu"), "LU")),
        ("rms", num(data.get("rms_db"), "dB")),
        ("decoder errors", str(data.get("decode_errors"))),
    ]
    rows += [(key, value) for key, value in tags.items()]
    for name, value in rows:
        print(f"{name + ':':<17}{value}")
    for line in data.get("error_lines") or ():
        print(f"  {line}")
    return 0


# -------------------------------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        flag = PARAM_FLAGS.get(exc.param, exc.param)
        message = f"{flag}: {str(exc).removeprefix(exc.param + ': ')}"
    else:
        message = str(exc)
    return " | ".join(line.strip() for line in message.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except InvalidInput as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m audio voices | head -1`: stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
