"""decode.decode_all: batches, mixed formats and rates, gapless mp3, decoder errors named, expansion cap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audio import decode
from audio.errors import InvalidAudio
from audio.model import AudioFile
from audio.segments import split_call
from tests import audiogen


def _file(data: bytes, call: int = 0) -> AudioFile:
    (f,) = split_call([data], call)
    return f


def test_mixed_formats_rates_and_layouts_decode_to_one_layout(tmp_path):
    files = [
        _file(audiogen.mp3(1.0, rate=24000), 0),
        _file(audiogen.wav(0.5, rate=16000, channels=2), 1),
        _file(audiogen.ogg_opus(0.7), 2),
        _file(audiogen.flac(0.4, rate=44100), 3),
    ]
    rate = decode.programme_rate(files, None)
    assert rate == 48000  # opus reports 48 kHz, the highest ≤ 48 kHz
    out = decode.decode_all(files, tmp_path, sample_rate=22050, channels=1, max_seconds_per_file=60)
    assert [d.source.call_index for d in out] == [0, 1, 2, 3]
    for d, expected in zip(out, [1.0, 0.5, 0.7, 0.4], strict=True):
        assert d.sample_rate == 22050 and d.channels == 1
        assert d.duration_s == pytest.approx(expected, abs=0.03)  # mp3 LAME delay/padding trimmed
        assert d.path.stat().st_size == d.frames * 4


def test_many_files_span_several_batches_in_order(tmp_path):
    freqs = [200 + 10 * i for i in range(decode.BATCH_SIZE + 5)]
    files = [_file(audiogen.mp3(0.2, freq=f), i) for i, f in enumerate(freqs)]
    out = decode.decode_all(files, tmp_path, sample_rate=24000, channels=1, max_seconds_per_file=60)
    assert len(out) == len(files)
    for d, f in zip(out, freqs, strict=True):
        x = np.fromfile(d.path, dtype="<f4")
        crossings = np.count_nonzero(np.diff(np.signbit(x[2000:-2000]))) / 2
        assert crossings / ((len(x) - 4000) / 24000) == pytest.approx(f, rel=0.05)


def test_corrupt_file_is_named(tmp_path):
    good = _file(audiogen.mp3(0.5), 0)
    data = bytearray(audiogen.mp3(0.5, freq=300))
    # damage frame payloads in the middle (headers intact, so the frame walk accepts it)
    for pos in range(2000, 2600):
        data[pos] ^= 0x5A
    bad = AudioFile(bytes(data), "mp3", 24000, 1, call_index=1)
    with pytest.raises(InvalidAudio) as err:
        decode.decode_all([good, bad], tmp_path, sample_rate=24000, channels=1, max_seconds_per_file=60)
    assert "TTS call #2" in str(err.value)


def test_expansion_is_capped(tmp_path):
    f = _file(audiogen.wav(3.0, rate=8000), 0)
    with pytest.raises(InvalidAudio, match="more than 2 s"):
        decode.decode_all([f], tmp_path, sample_rate=8000, channels=1, max_seconds_per_file=2)


@given(st.integers(min_value=0, max_value=500), st.integers(min_value=1, max_value=4))
def test_batches_cover_every_file_in_order_and_keep_all_workers_busy(count, workers):
    from audio.decode import BATCH_SIZE, _batches

    batches = _batches(count, workers)
    assert [i for b in batches for i in b] == list(range(count))
    assert all(0 < len(b) <= BATCH_SIZE for b in batches)
    if batches:
        assert max(map(len, batches)) - min(map(len, batches)) <= 1
    if count >= workers:  # no round where a worker waits for the last, lonely batch
        assert len(batches) % workers == 0
