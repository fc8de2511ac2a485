"""The finished episode: intro, the levelled speech, a ducked music bed and an outro, mixed into one programme.

    intro ──────────╮ (its last `intro_overlap` fades out under what follows)
                    bed: fade in · open ──╮ duck ─ speech ─ ... ─ [pause ≥ 1.5 s: up to open] ─ ... ╭ open · fade out
                                          └ first words (after BED_LEAD_S of bed)      last words ┘
                                                                           outro (after OUTRO_PAUSE_S) ───────────

Levels are set relative to the SPEECH, which assemble has already levelled: the intro and outro are matched
to the speech's integrated loudness, the bed sits `music_level` LU below it while someone speaks and
`open_level` (music_level + 10, at most −4 LU) in long pauses, before the first and after the last words.
Mastering then aims the mix so that the speech, not the mix, lands on the loudness target (pipeline.py).

Ducking comes from the timeline, not from a detector: assemble knows where every request's speech starts and
ends, so the bed starts down DUCK_LOOKAHEAD_S before the first syllable (a side-chain compressor reacts after
it, and pumps on every syllable). Spans of speech closer than OPEN_GAP_S are one span, so the bed stays down
through ordinary sentence pauses and only comes back up in a real pause (`[pause 3s]`, a heading, a speaker
change with a long pause). The envelope is a list of breakpoints in dB, interpolated per sample with numpy
for each block as it is written: exact to the sample, testable, and cheap (an ffmpeg `volume` expression with
hundreds of breakpoints is re-parsed per frame and only as precise as its frame size; `sendcmd` steps).

The bed loops seamlessly: silence at its ends is trimmed, and each repetition starts with a crossfade from the
music's last LOOP_XFADE_S into its first, whose gains keep the power constant for the correlation the two
pieces actually have (equal-power for unrelated material, equal-gain for a steady tone), so neither a click
nor a dip or swell marks the seam.

Memory stays flat: every source is a float32 file read through np.memmap, and the mix is written block by
block (BLOCK_S) while streaming meters measure it.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.signal import sosfilt

from . import media
from .assemble import Programme
from .cooperate import cooperate
from .errors import InvalidAudio, InvalidInput
from .loudness import LoudnessMeter, channel_weights, k_weighting_sos, meter_raw_file
from .model import TimelineEntry

MUSIC_LEVEL_DEFAULT_LU = -20.0
MUSIC_LEVEL_RANGE_LU = (-40.0, -6.0)
INTRO_OVERLAP_DEFAULT_MS = 500
INTRO_OVERLAP_RANGE_MS = (0, 5000)
MAX_JINGLE_S = 120.0  # longest intro/outro accepted

BED_LEAD_S = 1.5  # bed alone, open, before the first words
BED_FADE_IN_S = 1.0
BED_TAIL_S = 3.0  # without an outro: bed after the last words, ending in BED_FADE_OUT_S
BED_FADE_OUT_S = 2.5
OUTRO_PAUSE_S = 0.6  # last words → outro
BED_UNDER_OUTRO_S = 1.5  # with an outro the bed fades out over 2 s, ending this far into the outro
DUCK_LOOKAHEAD_S = 0.3  # the bed is down when the first syllable starts
DUCK_HOLD_S = 0.15  # stays down this long after the last syllable…
DUCK_RELEASE_S = 0.6  # …then comes back up over this
OPEN_GAP_S = 1.5  # pauses at least this long let the bed come up
OPEN_ABOVE_DUCK_DB = 10.0
OPEN_MAX_LU = -4.0  # the bed never comes closer to the speech's loudness than this
LOOP_XFADE_S = 1.0
EDGE_FADE_S = 0.010  # intro/outro ends without an overlap get this fade (no click)
TRIM_BELOW_DBFS = -50.0  # silence trimmed from both ends of the music before looping
BLOCK_S = 2.0


@dataclass(frozen=True)
class Produced:
    """The mixed programme (float32le on disk) and what was measured while writing it."""

    path: Path
    frames: int
    timeline: list[TimelineEntry]  # shifted to where the speech now is
    mix_lufs: float | None
    mix_rms_db: float | None
    speech_lufs: float
    intro_s: float | None
    outro_s: float | None
    music_level_lu: float | None  # the bed's loudness under speech, relative to the speech (measured)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Where everything goes in the mix, in frames."""

    intro: int  # intro length (0: none); it starts at 0
    overlap: int  # its last `overlap` frames fade out under what follows
    speech0: int  # the speech programme starts here…
    speech1: int  # …and ends here
    outro0: int  # the outro starts here (speech1 when there is none)
    outro: int  # outro length (0: none)
    bed0: int  # the bed fades in from here… (bed0 == bed1: no bed)
    bed1: int  # …and has faded out here
    bed_fade_out: int
    end: int  # total length


def layout(rate: int, speech: int, intro: int, outro: int, music: bool, intro_overlap_s: float) -> Layout:
    """intro → (bed lead-in) → speech → pause → outro; the bed runs from the end of the intro's overlap to
    BED_TAIL_S after the last words, or with an outro, BED_UNDER_OUTRO_S into it."""
    overlap = min(round(intro_overlap_s * rate), intro // 2) if intro else 0
    body = intro - overlap
    speech0 = body + (round(BED_LEAD_S * rate) if music else 0)
    speech1 = speech0 + speech
    outro0 = speech1 + round(OUTRO_PAUSE_S * rate) if outro else speech1
    end = outro0 + outro
    bed0 = bed1 = fade_out = 0
    if music:
        bed0 = body
        if outro:
            bed1, fade_out = outro0 + round(BED_UNDER_OUTRO_S * rate), round(2.0 * rate)
        else:
            bed1, fade_out = speech1 + round(BED_TAIL_S * rate), round(BED_FADE_OUT_S * rate)
        end = max(end, bed1)
    return Layout(intro, overlap, speech0, speech1, outro0, outro, bed0, bed1, fade_out, end)


def open_level(music_level_lu: float) -> float:
    """The bed's level in long pauses, relative to the speech."""
    return min(music_level_lu + OPEN_ABOVE_DUCK_DB, OPEN_MAX_LU)


def produce(
    speech: Programme,
    workdir: Path,
    out_path: Path,
    *,
    intro: Path | None = None,
    outro: Path | None = None,
    music: Path | None = None,
    music_level_lu: float = MUSIC_LEVEL_DEFAULT_LU,
    intro_overlap_s: float = INTRO_OVERLAP_DEFAULT_MS / 1000,
) -> Produced:
    """Decode the user's files at the programme's rate and mix the episode into `out_path`."""
    rate, ch = speech.sample_rate, speech.channels
    warnings: list[str] = []
    speech_lufs = speech.integrated_lufs
    if speech_lufs is None:
        speech_lufs = meter_raw_file(speech.path, rate, ch).ungated()
    if speech_lufs is None:
        raise InvalidAudio(None, "the speech is silent; nothing to put music under")

    def jingle(param: str, path: Path | None) -> tuple[np.ndarray | None, float]:
        if path is None:
            return None, 0.0
        dec = workdir / f"{param}.f32"
        frames, notes = media.decode(param, path, dec, rate, ch, max_seconds=MAX_JINGLE_S + 0.5)
        warnings.extend(notes)
        if frames > MAX_JINGLE_S * rate:
            raise InvalidInput(param, f"is longer than {MAX_JINGLE_S:.0f} s; give a shorter {param}")
        mm = _memmap(dec, ch)
        meter = LoudnessMeter(rate, ch)
        meter.add(mm)
        loud = meter.integrated() or meter.ungated()
        if loud is None:
            warnings.append(f"{param} is silent")
            return mm, 0.0
        return mm, float(np.clip(speech_lufs - loud, -30.0, 30.0))

    intro_pcm, intro_gain_db = jingle("intro", intro)
    outro_pcm, outro_gain_db = jingle("outro", outro)

    lay = layout(
        rate, speech.frames, len(intro_pcm) if intro_pcm is not None else 0,
        len(outro_pcm) if outro_pcm is not None else 0, music is not None, intro_overlap_s,
    )
    n_intro, n_outro, sp0, sp1, outro0, end = lay.intro, lay.outro, lay.speech0, lay.speech1, lay.outro0, lay.end
    bed0, bed1, fade_out = lay.bed0, lay.bed1, lay.bed_fade_out
    overlap = lay.overlap

    bed = None
    spans = _speech_spans(speech.timeline, sp0, rate)
    if music is not None:
        bed = _Bed.load(music, workdir, rate, ch, bed1 - bed0, warnings)
        base_db = speech_lufs - bed.lufs
        times, levels = duck_envelope(spans, rate, music_level_lu)
        bed_meter = MaskedLoudness(rate, ch)
        fade_in = round(BED_FADE_IN_S * rate)

    intro_gain = np.float32(10 ** (intro_gain_db / 20))
    outro_gain = np.float32(10 ** (outro_gain_db / 20))
    intro_tail = _fade(overlap or round(EDGE_FADE_S * rate), out=True) if n_intro else None
    outro_head = _fade(round(EDGE_FADE_S * rate), out=False) if n_outro else None
    outro_tail = _fade(round(EDGE_FADE_S * rate), out=True) if n_outro else None
    mix_meter = LoudnessMeter(rate, ch)
    block = max(1, round(BLOCK_S * rate))
    starts = np.array([a for a, _ in spans], dtype=np.int64)
    ends = np.array([b for _, b in spans], dtype=np.int64)
    with open(out_path, "wb") as fh, closing(_Reader(speech.path, ch)) as speech_pcm:
        for n0 in range(0, end, block):
            n1 = min(end, n0 + block)
            out = np.zeros((n1 - n0, ch), dtype=np.float32)
            if intro_pcm is not None and n0 < n_intro:
                a, b = n0, min(n1, n_intro)
                piece = intro_pcm[a:b] * intro_gain
                _apply_tail(piece, a, n_intro, intro_tail)
                out[: b - a] += piece
            a, b = max(n0, sp0), min(n1, sp1)
            if a < b:
                out[a - n0 : b - n0] += speech_pcm.read(a - sp0, b - a)
            if outro_pcm is not None:
                a, b = max(n0, outro0), min(n1, end, outro0 + n_outro)
                if a < b:
                    piece = outro_pcm[a - outro0 : b - outro0] * outro_gain
                    k = a - outro0
                    _apply_tail(piece, k, n_outro, outro_tail)
                    if outro_head is not None and k < len(outro_head):
                        m = min(len(piece), len(outro_head) - k)
                        piece[:m] *= outro_head[k : k + m, None]
                    out[a - n0 : b - n0] += piece
            if bed is not None:
                a, b = max(n0, bed0), min(n1, bed1)
                if a < b:
                    idx = np.arange(a, b, dtype=np.int64)
                    gain = _bed_gain(idx, base_db, times, levels, bed0, bed1, fade_in, fade_out)
                    piece = bed.samples(a - bed0, b - a) * gain[:, None]
                    out[a - n0 : b - n0] += piece
                    bed_meter.add(piece, _inside(a, b, starts, ends))
            mix_meter.add(out)
            out.astype("<f4", copy=False).tofile(fh)
            cooperate()

    shift = sp0 / rate
    # replace(), not a new entry: every field but the times (speaker, voice, section, model, …) is kept
    timeline = [replace(e, start=e.start + shift, end=e.end + shift) for e in speech.timeline]
    under_lu = None
    if bed is not None:
        bed_lufs = bed_meter.loudness()
        under_lu = None if bed_lufs is None else round(bed_lufs - speech_lufs, 2)
    return Produced(
        path=out_path,
        frames=end,
        timeline=timeline,
        mix_lufs=mix_meter.integrated(),
        mix_rms_db=mix_meter.rms_db(),
        speech_lufs=speech_lufs,
        intro_s=n_intro / rate if n_intro else None,
        outro_s=n_outro / rate if n_outro else None,
        music_level_lu=under_lu,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------ envelope


def _speech_spans(timeline: list[TimelineEntry], offset: int, rate: int) -> list[tuple[int, int]]:
    """Sample spans of speech in the mix, from the timeline (one per request)."""
    return [
        (offset + round(e.start * rate), offset + round(e.end * rate)) for e in timeline if e.end > e.start
    ]


def duck_envelope(spans: list[tuple[int, int]], rate: int, music_level_lu: float) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (sample positions, dB relative to the speech) of the bed's level.

    Spans closer than OPEN_GAP_S merge; each merged span is preceded by a DUCK_LOOKAHEAD_S ramp down and
    followed by DUCK_HOLD_S then a DUCK_RELEASE_S ramp back up. Ramps are linear in dB (exponential in
    amplitude), which the ear hears as an even fade. Outside the breakpoints np.interp holds the end values:
    the open level.
    """
    duck, opened = music_level_lu, open_level(music_level_lu)
    gap = OPEN_GAP_S * rate
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a - merged[-1][1] < gap:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    times: list[float] = []
    levels: list[float] = []
    look, hold, release = DUCK_LOOKAHEAD_S * rate, DUCK_HOLD_S * rate, DUCK_RELEASE_S * rate
    for a, b in merged:
        for t, v in ((a - look, opened), (a, duck), (b + hold, duck), (b + hold + release, opened)):
            if times and t <= times[-1]:
                t = times[-1] + 1.0
            times.append(t)
            levels.append(v)
    if not times:
        return np.array([0.0]), np.array([opened])
    return np.asarray(times), np.asarray(levels)


def _inside(a: int, b: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which positions a…b-1 lie inside one of the (sorted, disjoint) spans."""
    mask = np.zeros(b - a, dtype=bool)
    first = max(0, int(np.searchsorted(ends, a, side="right")))
    for k in range(first, len(starts)):
        if starts[k] >= b:
            break
        mask[max(0, starts[k] - a) : max(0, min(b, ends[k]) - a)] = True
    return mask


CONTROL = 32  # the bed's gain is computed every CONTROL samples and interpolated linearly in between


def _bed_gain(
    idx: np.ndarray, base_db: float, times: np.ndarray, levels: np.ndarray, bed0: int, bed1: int,
    fade_in: int, fade_out: int,
) -> np.ndarray:
    """Linear gain of the bed at positions idx: the ducking envelope (dB, breakpoints) and the fades.

    Evaluated at a control rate (every CONTROL samples, < 1.5 ms: the shortest ramp is 300 ms) and
    interpolated, so the per-sample cost is one np.interp instead of a power and two cosines.
    """
    ctrl = np.arange(idx[0], idx[-1] + CONTROL, CONTROL, dtype=np.int64)
    g = np.power(10.0, (base_db + np.interp(ctrl, times, levels)) / 20.0)
    g *= _edge_gain(ctrl - bed0, bed1 - bed0, fade_in, fade_out)
    return np.interp(idx, ctrl, g).astype(np.float32)


def _fade(n: int, *, out: bool) -> np.ndarray:
    """Raised-cosine fade of n samples (1 → 0 when `out`)."""
    n = max(1, n)
    up = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    return up[::-1].copy() if out else up


def _apply_tail(piece: np.ndarray, start: int, total: int, tail: np.ndarray | None) -> None:
    """Multiply the part of `piece` (frames start… of a source of `total` frames) that falls in its last
    len(tail) frames by the fade-out `tail`."""
    if tail is None:
        return
    t0 = total - len(tail)
    a = max(start, t0)
    b = start + len(piece)
    if a < b:
        piece[a - start : b - start] *= tail[a - t0 : b - t0, None]


def _edge_gain(k: np.ndarray, length: int, fade_in: int, fade_out: int) -> np.ndarray:
    """Raised-cosine fade-in over the bed's first `fade_in` and fade-out over its last `fade_out` samples."""
    g = np.ones(k.shape, dtype=np.float64)
    if fade_in > 0:
        x = np.clip((k + 0.5) / fade_in, 0.0, 1.0)
        g *= 0.5 - 0.5 * np.cos(np.pi * x)
    if fade_out > 0:
        x = np.clip((length - k - 0.5) / fade_out, 0.0, 1.0)
        g *= 0.5 - 0.5 * np.cos(np.pi * x)
    return g


class MaskedLoudness:
    """K-weighted loudness (ungated) of the samples a mask selects, the filter running over all samples.

    The bed's level "while someone speaks" is this over the speech spans: gating 400 ms blocks would count
    blocks half outside a span (a bed ramping up) and read low by up to ~1 dB on short sentences.
    """

    def __init__(self, rate: int, channels: int) -> None:
        self._sos = k_weighting_sos(rate)
        self._zi = np.zeros((2, 2, channels))
        self._weights = channel_weights(channels)
        self._energy = 0.0
        self._count = 0

    def add(self, samples: np.ndarray, mask: np.ndarray) -> None:
        if not mask.any():  # nothing to count: skip the filter (its memory is a few ms)
            self._zi[:] = 0.0
            return
        y, self._zi = sosfilt(self._sos, samples, axis=0, zi=self._zi)
        energy = np.einsum("ij,j->i", np.square(y, out=y), self._weights)
        self._energy += float(energy[mask].sum())  # (np.dot with a bool mask takes a slow generic loop)
        self._count += int(np.count_nonzero(mask))

    def loudness(self) -> float | None:
        if self._count == 0 or self._energy <= 0:
            return None
        return -0.691 + 10 * math.log10(self._energy / self._count)


# ------------------------------------------------------------------------------------------ the bed


class _Reader:
    """Sequential reads of a float32le file (the speech: read once, front to back). Plain reads rather than a
    memmap, so the pages read do not stay in the process's resident memory (230 MB per 10 min at 48 kHz
    stereo)."""

    def __init__(self, path: Path, channels: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._channels = channels
        self._pos = 0

    def read(self, start: int, n: int) -> np.ndarray:
        if start != self._pos:
            self._fh.seek(start * 4 * self._channels)
        data = np.fromfile(self._fh, dtype="<f4", count=n * self._channels).reshape(-1, self._channels)
        self._pos = start + len(data)
        return data

    def close(self) -> None:
        self._fh.close()


def _memmap(path: Path, channels: int) -> np.ndarray:
    return np.memmap(path, dtype="<f4", mode="r").reshape(-1, channels)


@dataclass
class _Bed:
    """The music, trimmed of silence at its ends, readable at any position of an endless seamless loop."""

    pcm: np.ndarray  # memmap, trimmed
    lufs: float
    period: int  # frames per repetition after the first (length − crossfade)
    xfade: np.ndarray | None  # the first `len(xfade)` frames of every repetition after the first
    loops: bool

    @classmethod
    def load(cls, path: Path, workdir: Path, rate: int, ch: int, needed: int, warnings: list[str]) -> _Bed:
        dec = workdir / "music.f32"
        _, notes = media.decode("music", path, dec, rate, ch, max_seconds=needed / rate + 10.0)
        warnings.extend(notes)
        full = _memmap(dec, ch)
        a, b = _trim(full, rate)
        if b - a < rate:
            raise InvalidInput("music", f"has only {(b - a) / rate:.2f} s of sound; give at least 1 s to loop")
        pcm = full[a:b]
        meter = LoudnessMeter(rate, ch)
        meter.add(pcm)
        lufs = meter.integrated() or meter.ungated()
        if lufs is None:
            raise InvalidInput("music", "is silent")
        length = len(pcm)
        if length >= needed:
            return cls(pcm, lufs, length, None, False)
        c = min(round(LOOP_XFADE_S * rate), length // 4)
        period = length - c
        tail = np.asarray(pcm[period:length], dtype=np.float64)
        head = np.asarray(pcm[:c], dtype=np.float64)
        xfade = loop_crossfade(tail, head).astype(np.float32)
        return cls(pcm, lufs, period, xfade, True)

    def samples(self, start: int, n: int) -> np.ndarray:
        """`n` frames from bed position `start` on (contiguous slices of the memmap: no per-sample gather)."""
        out = np.empty((n, self.pcm.shape[1]), dtype=np.float32)
        pos, k = 0, start
        while pos < n:
            if not self.loops or k < self.period:  # the first pass plays the music as it is
                j, stop = k, (len(self.pcm) if not self.loops else self.period)
            else:
                j = (k - self.period) % self.period
                stop = self.period
            assert self.loops or j < len(self.pcm), "the bed was decoded shorter than needed"
            if self.xfade is not None and k >= self.period and j < len(self.xfade):
                src, stop = self.xfade, len(self.xfade)  # the seam: tail crossfaded into head
            else:
                src = self.pcm
            m = min(n - pos, stop - j)
            out[pos : pos + m] = src[j : j + m]
            pos += m
            k += m
        return out


def loop_crossfade(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Crossfade from `tail` (the music's end) into `head` (its start), constant in power.

    With raised-cosine shapes a (out) and b (in), the sum's power is a² + b² + 2ab·r for pieces of equal
    power with correlation r; dividing by its square root keeps it at 1 whatever r is (r = 0: equal-power
    fade; r = 1, e.g. a steady tone: equal-gain, no swell). r is measured, clipped to [0, 1].
    """
    n = len(tail)
    denom = math.sqrt(float(np.sum(tail * tail)) * float(np.sum(head * head)))
    r = float(np.clip(np.sum(tail * head) / denom, 0.0, 1.0)) if denom > 0 else 0.0
    b = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    a = 1.0 - b
    norm = np.sqrt(a * a + b * b + 2 * a * b * r)
    return (tail * (a / norm)[:, None] + head * (b / norm)[:, None]) if tail.ndim == 2 else (tail * a + head * b) / norm


def _trim(pcm: np.ndarray, rate: int) -> tuple[int, int]:
    """(first, end) frames of sound: silence below TRIM_BELOW_DBFS at both ends dropped (scanned in 1 s
    pieces from each end, so a long file is not read twice)."""
    threshold = 10 ** (TRIM_BELOW_DBFS / 20)
    n, step = len(pcm), rate
    first = None
    for s in range(0, n, step):
        cooperate()
        loud = np.flatnonzero(np.abs(pcm[s : s + step]).max(axis=1) > threshold)
        if loud.size:
            first = s + int(loud[0])
            break
    if first is None:
        return 0, 0
    for e in range(n, first, -step):
        s = max(first, e - step)
        cooperate()
        loud = np.flatnonzero(np.abs(pcm[s:e]).max(axis=1) > threshold)
        if loud.size:
            return first, s + int(loud[-1]) + 1
    return first, first + 1
