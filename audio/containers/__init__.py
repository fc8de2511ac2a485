"""One module per audio container, the way mutagen keeps one module per format.

Each container module (mp3, adts, riff, ogg, flac) offers `starts(buf, p)` and `walk(w, start, body)`
(see `base`); `sniff` picks the one whose file starts at a position, `audio.segments` runs the walk over a
call's chunks. `metadata` reads the tags taggers put around frames.
"""

from __future__ import annotations

from .sniff import CONTAINERS

__all__ = ["CONTAINERS"]
