"""Write a short, royalty-free music bed for `make demo`: two soft seventh chords made with ffmpeg's lavfi.

    python scripts/make_pad.py pad.flac [seconds]

Cmaj7 blends into Am7 and back over 8 s (a cosine crossfade, so the pad loops on its own), each note a
sine with a quieter octave, a slow tremolo, then a low-pass: a warm pad that stays out of the voice's way.
Nothing is downloaded; the file is made in ~0.1 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import ffmpeg

CHORD_A = (130.81, 164.81, 196.00, 246.94)  # Cmaj7
CHORD_B = (110.00, 130.81, 164.81, 196.00)  # Am7
PERIOD_S = 8.0


def _chord(notes: tuple[float, ...]) -> str:
    return "+".join(f"sin(2*PI*{f:g}*t)+0.25*sin(2*PI*{2 * f:g}*t+0.5)" for f in notes)


def pad_expression() -> str:
    blend = f"(0.5+0.5*cos(2*PI*t/{PERIOD_S:g}))"
    tremolo = f"(0.85+0.15*sin(2*PI*t*{4 / PERIOD_S:g}))"
    return f"0.06*{tremolo}*({blend}*({_chord(CHORD_A)})+(1-{blend})*({_chord(CHORD_B)}))"


def make_pad(out: Path, seconds: float = 16.0, rate: int = 44100) -> Path:
    ffmpeg.run(
        ["-f", "lavfi", "-i", f"aevalsrc={pad_expression()}:s={rate}:d={seconds:g}",
         "-af", "lowpass=f=1400,afade=t=in:d=0.5", "-c:a", "flac", "-f", "flac", ffmpeg.file_url(out)],
        what="making the demo pad",
    )  # fmt: skip
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/make_pad.py OUT.flac [seconds]")
    make_pad(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 16.0)
