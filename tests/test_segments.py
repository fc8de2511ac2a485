"""segments.split_call / sniff: every chunk shape providers produce, bad and hostile payloads, properties."""

from __future__ import annotations

import base64
import itertools
import random
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio.errors import InvalidAudio
from audio.model import AUDIO_FORMATS
from audio.segments import sniff, split_call
from tests import audiogen as gen

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def datas(files) -> list[bytes]:
    return [f.data for f in files]


def shape(files) -> list[tuple]:
    return [(f.fmt, f.sample_rate, f.channels) for f in files]


def assert_plain(files, call: int = 0) -> None:
    """Indexes set, nothing truncated, no notes."""
    assert [f.file_index for f in files] == list(range(len(files)))
    assert all(f.call_index == call and not f.truncated and not f.note for f in files), files


def sentence_mp3s(n: int = 4) -> list[bytes]:
    """What openai/azure/siliconflow send per sentence: ID3v2 tag + Xing/Info/LAME header frame + frames."""
    return [gen.mp3(0.6 + 0.1 * i, freq=300 + 70 * i, id3=True, xing=True) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# mp3


def test_fixtures_have_the_headers_the_tests_rely_on():
    with_both = gen.mp3(0.5, id3=True, xing=True)
    assert with_both.startswith(b"ID3") and b"Info" in with_both[:200] and b"Lavc" in with_both[:400]
    bare = gen.mp3(0.5, id3=False, xing=False)
    assert bare[:2] == b"\xff\xf3" and b"Info" not in bare[:400] and b"Xing" not in bare[:400]
    assert gen.wav(0.2, sample_fmt="s24")[20:22] == b"\xfe\xff"  # WAVE_FORMAT_EXTENSIBLE
    assert gen.wav(0.2, streamed=True)[4:8] == b"\xff\xff\xff\xff"


def test_one_complete_mp3_per_chunk_tongyi_style():
    files = sentence_mp3s(3)
    out = split_call(files, 5)
    assert datas(out) == files
    assert shape(out) == [("mp3", 24000, 1)] * 3
    assert_plain(out, call=5)


def test_per_sentence_mp3_files_in_1024_byte_slices_come_back_whole():
    files = sentence_mp3s(4)
    out = split_call(gen.slices(b"".join(files), 1024), 0)
    assert datas(out) == files
    assert_plain(out)
    # each decodes on its own without errors, gapless (LAME delay/padding trimmed) ...
    for f, original in zip(out, files, strict=True):
        pcm = gen.pcm_f32(f.data, f.fmt, 24000, 1)
        assert np.array_equal(pcm, gen.pcm_f32(original, "mp3", 24000, 1))
    for i, f in enumerate(out):
        assert len(gen.pcm_f32(f.data, "mp3", 24000, 1)) == round((0.6 + 0.1 * i) * 24000)
    # ... which the naive join does not do: decoder errors and extra samples at the seams
    joined, errors = gen.decode(b"".join(files), "mp3", 24000, 1)
    assert errors and len(joined) > sum(len(gen.pcm_f32(f.data, "mp3", 24000, 1)) for f in out)


@pytest.mark.parametrize("seed", range(5))
def test_random_fragments_of_one_continuous_stream_are_one_file(seed):
    stream = gen.mp3(2.0, id3=False, xing=False)
    out = split_call(gen.random_slices(stream, random.Random(seed)), 1)
    assert datas(out) == [stream]
    assert shape(out) == [("mp3", 24000, 1)]
    assert_plain(out, call=1)


def test_a_change_of_rate_or_channels_without_a_header_stays_one_stream():
    """No new file header: one stream to a decoder (ffmpeg follows the change), so one file to the timeline."""
    a = gen.mp3(0.7, rate=24000, channels=1, xing=False)
    b = gen.mp3(0.7, rate=22050, channels=2, freq=500, xing=False)
    c = gen.mp3(0.5, rate=24000, channels=1, freq=600, xing=False)
    out = split_call(gen.slices(a + b + c, 1024), 0)
    assert datas(out) == [a + b + c]
    assert shape(out) == [("mp3", 24000, 2)] and out[0].reconfigures  # the highest rate and layout in it
    assert_plain(out)


def test_bare_files_with_the_same_parameters_cannot_be_told_apart_and_stay_one_stream():
    a, b = gen.mp3(0.5, xing=False), gen.mp3(0.5, freq=600, xing=False)
    assert datas(split_call([a, b], 0)) == [a + b]


def test_xing_header_alone_starts_a_new_file():
    files = [gen.mp3(0.5, freq=300 + 100 * i, xing=True) for i in range(3)]
    assert datas(split_call(gen.slices(b"".join(files), 700), 0)) == files


def test_mpeg1_stereo_and_mpeg25():
    a = gen.mp3(0.5, rate=44100, channels=2, bitrate="96k")
    b = gen.mp3(0.5, rate=8000, channels=1, bitrate="16k", freq=300)
    out = split_call([a + b], 0)
    assert datas(out) == [a, b]
    assert shape(out) == [("mp3", 44100, 2), ("mp3", 8000, 1)]


def syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def test_id3v24_footer_id3v1_and_ape_trailers_end_their_file_and_are_left_out():
    body = b"TIT2" + struct.pack(">I", 300) + b"\x00\x00\x03" + b"t" * 299  # > 127 bytes: syncsafe matters
    id3v24 = b"ID3\x04\x00\x10" + syncsafe(len(body)) + body + b"3DI\x04\x00\x10" + syncsafe(len(body))
    ape_items = struct.pack("<II", 5, 0) + b"Title\x00hello"
    ape_size = len(ape_items) + 32
    ape_header = b"APETAGEX" + struct.pack("<IIII", 2000, ape_size, 1, 0xA0000000) + bytes(8)
    ape_footer = b"APETAGEX" + struct.pack("<IIII", 2000, ape_size, 1, 0x80000000) + bytes(8)
    id3v1 = b"TAG" + b"title".ljust(125, b"\x00")
    bare = gen.mp3(0.5, xing=False)
    first = id3v24 + bare + ape_header + ape_items + ape_footer + id3v1
    second = gen.mp3(0.5, freq=600, xing=False) + id3v1  # same parameters: only the trailer marks the boundary
    out = split_call(gen.slices(first + second, 1024), 0)
    assert datas(out) == [id3v24 + bare, second[: -len(id3v1)]]  # trailing tags carry no speech
    assert_plain(out)
    pcm = gen.pcm_f32(out[0].data, "mp3", 24000, 1)
    assert np.array_equal(pcm, gen.pcm_f32(bare, "mp3", 24000, 1))


def test_id3v2_tag_at_the_very_end_is_accepted_and_left_out():
    f = gen.mp3(0.5, xing=False)
    tag = b"ID3\x03\x00\x00" + syncsafe(20) + bytes(20)
    assert gen.decode(f + tag, "mp3", 24000, 1)[1]  # ffmpeg's decoder reports an appended ID3v2 tag as an error
    out = split_call([f, tag], 0)
    assert datas(out) == [f]
    assert_plain(out)


def test_partial_final_frame_is_dropped_and_reported():
    f = gen.mp3(1.0, id3=True)
    cut = f[: len(f) - 100]
    (out,) = split_call(gen.slices(cut, 1024), 2)
    assert out.truncated and f.startswith(out.data)
    dropped = len(cut) - len(out.data)
    assert 0 < dropped < 200
    assert out.note == f"dropped {dropped} bytes of a partial final frame"
    gen.pcm_f32(out.data, "mp3", 24000, 1)  # the good part decodes without errors


@pytest.mark.parametrize("keep", [1, 3, 10])
def test_a_few_bytes_of_a_next_file_header_at_the_end(keep):
    files = sentence_mp3s(2)
    nxt = gen.mp3(0.5, freq=800, xing=False)
    out = split_call([*files, nxt[:keep]], 0)
    assert datas(out)[:1] == files[:1] and out[1].data == files[1]
    assert out[1].truncated and f"dropped {keep} bytes" in out[1].note


def test_next_file_cut_right_after_its_id3_tag_and_xing_frame():
    files = sentence_mp3s(3)
    third = files[2]
    xing_end = third.index(b"\xff\xf3", 20) + 200  # ID3 + part of the Info frame
    out = split_call([files[0], files[1], third[:xing_end]], 0)
    assert datas(out) == files[:2]
    assert out[1].truncated and f"dropped {xing_end} bytes" in out[1].note


def test_free_format_mp3_is_rejected_clearly():
    header = bytes([0xFF, 0xFB, 0x04, 0xC0])  # MPEG-1 Layer III, bitrate index 0 (free format), 44.1 kHz
    with pytest.raises(InvalidAudio, match="free-format"):
        split_call([header + bytes(400)], 0)


# ---------------------------------------------------------------------------------------------------------
# WAV


def riff_ok(data: bytes) -> None:
    """The header of a WAV we return: exact sizes, fmt then data, nothing else."""
    chunks = gen.wav_chunks(data)
    assert list(chunks) == ["RIFF", "fmt ", "data"]
    data_offset, data_size = chunks["data"]
    assert chunks["RIFF"][1] == len(data) - 8
    assert data_offset + data_size + (data_size & 1) == len(data)


@pytest.mark.parametrize(
    ("rate", "channels", "sample_fmt"),
    [(24000, 1, "s16"), (16000, 2, "s24"), (22050, 1, "s32"), (44100, 2, "f32"), (8000, 1, "u8")],
)
def test_wav_sample_formats(rate, channels, sample_fmt):
    original = gen.wav(0.4, rate, channels, sample_fmt)
    (out,) = split_call(gen.random_slices(original, random.Random(rate)), 0)
    assert shape([out]) == [("wav", rate, channels)]
    assert_plain([out])
    riff_ok(out.data)
    assert gen.wav_chunks(out.data)["data"][1] == gen.wav_chunks(original)["data"][1]
    np.testing.assert_array_equal(
        gen.pcm_f32(out.data, "wav", rate, channels), gen.pcm_f32(original, "wav", rate, channels)
    )


@pytest.mark.parametrize("sizes", [(0xFFFFFFFF, 0xFFFFFFFF), (0, 0), (36, 0), (0x7FFFFFFF, 0x7FFFFFDB)])
def test_streamed_wav_sizes(sizes):
    original = gen.wav(0.5, 24000, 2)
    streamed = gen.patch_wav_sizes(original, *sizes)
    (out,) = split_call(gen.slices(streamed, 1024), 0)
    assert_plain([out])
    riff_ok(out.data)
    assert gen.wav_chunks(out.data)["data"][1] == 0.5 * 24000 * 4
    np.testing.assert_array_equal(gen.pcm_f32(out.data, "wav", 24000, 2), gen.pcm_f32(original, "wav", 24000, 2))


@pytest.mark.parametrize("streamed", [(False, False), (True, True), (False, True), (True, False)])
def test_two_wavs_in_one_call(streamed):
    a = gen.wav(0.5, 24000, 1, streamed=streamed[0])
    b = gen.wav(0.3, 16000, 2, "s24", streamed=streamed[1], freq=300)
    out = split_call(gen.random_slices(a + b, random.Random(7)), 0)
    assert shape(out) == [("wav", 24000, 1), ("wav", 16000, 2)]
    assert_plain(out)
    for f, original in zip(out, [a, b], strict=True):
        riff_ok(f.data)
        np.testing.assert_array_equal(
            gen.pcm_f32(f.data, "wav", f.sample_rate, f.channels),
            gen.pcm_f32(original, "wav", f.sample_rate, f.channels),
        )


def test_wav_headers_are_never_played_as_samples():
    a, b = gen.wav(0.5, streamed=True), gen.wav(0.5, streamed=True, freq=300)
    naive, _ = gen.decode(a + b, "wav", 24000, 1)
    assert len(naive) > 24000  # joined: the second header (and its LIST chunk) played as samples
    out = split_call([a + b], 0)
    assert [len(gen.pcm_f32(f.data, "wav", 24000, 1)) for f in out] == [12000, 12000]


def test_one_complete_wav_per_chunk():
    files = [gen.wav(0.3, 24000, 1, freq=300 + 100 * i) for i in range(3)]
    assert b"LIST" in files[0]  # ffmpeg's INFO chunk before the data: skipped
    out = split_call(files, 0)
    assert len(out) == 3
    for f, original in zip(out, files, strict=True):
        riff_ok(f.data)
        np.testing.assert_array_equal(gen.pcm_f32(f.data, "wav", 24000, 1), gen.pcm_f32(original, "wav", 24000, 1))


def test_wav_partial_final_sample_frame_is_dropped():
    streamed = gen.wav(0.5, 24000, 2, streamed=True)  # block align 4
    (out,) = split_call([streamed[:-1]], 0)
    assert out.truncated and out.note == "dropped 3 bytes of a partial final sample frame"
    assert gen.wav_chunks(out.data)["data"][1] == 0.5 * 24000 * 4 - 4


def test_wav_cut_short_reports_what_its_header_announced():
    original = gen.wav(0.5, 24000, 1)
    (out,) = split_call([original[:-1001]], 0)
    assert out.truncated
    assert "declares 24000 bytes of samples but only" in out.note and "dropped 1 bytes" in out.note
    assert gen.wav_chunks(out.data)["data"][1] == 24000 - 1002


def test_wav_data_chunk_followed_by_metadata_chunks_and_the_next_file():
    pcm = np.arange(-300, 300, dtype="<i2").tobytes()
    a = wav_file(pcm, 8000, 1, extra=b"LIST" + struct.pack("<I", 5) + b"INFO\x00\x00")  # odd chunk + pad
    b = wav_file(pcm[::-1], 8000, 1)
    out = split_call(gen.slices(a + b, 100), 0)
    assert [f.data[44:] for f in out] == [pcm, pcm[::-1]]


def wav_file(pcm: bytes, rate: int, channels: int, tag: int = 1, bits: int = 16, extra: bytes = b"") -> bytes:
    """A hand-made WAV: fmt (optionally WAVE_FORMAT_EXTENSIBLE), data, then `extra` chunks."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if tag == 0xFFFE:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<I", 3) + bytes.fromhex("000010008000 00aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    body += b"\0" * (len(pcm) & 1) + extra
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("tag", [3, 0xFFFE])
def test_float_wav_plain_and_extensible(tag):
    x = (0.5 * np.sin(np.arange(4000) * 0.05)).astype("<f4")
    original = wav_file(x.tobytes(), 16000, 1, tag=tag, bits=32)
    (out,) = split_call([original], 0)
    np.testing.assert_array_equal(gen.pcm_f32(out.data, "wav", 16000, 1)[:, 0], x)


def test_rf64_with_ds64():
    pcm = np.arange(1000, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    ds64 = struct.pack("<QQQI", 0, len(pcm), len(pcm) // 2, 0)
    chunks = [b"ds64", struct.pack("<I", len(ds64)), ds64, b"fmt ", struct.pack("<I", 16), fmt, b"data", b"\xff" * 4]
    rf64 = b"".join([b"RF64", b"\xff" * 4, b"WAVE", *chunks, pcm])
    (out,) = split_call([rf64], 0)
    riff_ok(out.data)
    assert out.data[44:] == pcm


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (struct.pack("<HHIIHH", 2, 1, 8000, 4000, 256, 4), "codec 0x0002 is not supported"),
        (struct.pack("<HHIIHH", 1, 2, 8000, 32000, 2, 16), "inconsistent"),
        (struct.pack("<HHIIHH", 1, 0, 8000, 0, 0, 16), "invalid"),
    ],
)
def test_unsupported_or_inconsistent_wav_is_rejected(fmt, message):
    data = b"RIFF" + b"\xff" * 4 + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + b"\xff" * 4 + bytes(64)
    with pytest.raises(InvalidAudio, match=message):
        split_call([data], 0)


# ---------------------------------------------------------------------------------------------------------
# Ogg, FLAC, ADTS


@pytest.mark.parametrize(
    ("make", "rate", "channels"),
    [
        (lambda: gen.ogg_opus(0.7, 2), 48000, 2),
        (lambda: gen.ogg_opus(0.7, 1), 48000, 1),
        (lambda: gen.ogg_vorbis(0.7, 22050, 1), 22050, 1),
        (lambda: gen.ogg_vorbis(0.7, 44100, 2), 44100, 2),
    ],
)
def test_ogg(make, rate, channels):
    data = make()
    out = split_call(gen.random_slices(data, random.Random(3), max_size=500), 0)
    assert datas(out) == [data] and shape(out) == [("ogg", rate, channels)]
    assert_plain(out)


def test_chained_ogg_streams_are_separate_files():
    files = [gen.ogg_opus(0.5), gen.ogg_vorbis(0.5, 16000, 2), gen.ogg_opus(0.4, 2, freq=700)]
    out = split_call(gen.slices(b"".join(files), 1024), 0)
    assert datas(out) == files
    assert shape(out) == [("ogg", 48000, 1), ("ogg", 16000, 2), ("ogg", 48000, 2)]
    for f in out:
        gen.pcm_f32(f.data, "ogg", 48000, 1)


def ogg_page_starts(data: bytes) -> list[int]:
    starts, p = [], 0
    while p < len(data):
        starts.append(p)
        nseg = data[p + 26]
        p += 27 + nseg + sum(data[p + 27 : p + 27 + nseg])
    return starts


def test_ogg_truncated_last_page_is_dropped():
    data = gen.ogg_opus(1.5)
    last = ogg_page_starts(data)[-1]
    (out,) = split_call([data[: last + 40]], 0)
    assert out.data == data[:last] and out.truncated
    assert out.note == "dropped 40 bytes of a partial final Ogg page"
    gen.pcm_f32(out.data, "ogg", 48000, 1)


@pytest.mark.parametrize("streamed", [False, True])
def test_flac(streamed):
    data = gen.flac(0.8, 24000, 2, streamed=streamed)
    out = split_call(gen.random_slices(data, random.Random(5)), 0)
    assert datas(out) == [data] and shape(out) == [("flac", 24000, 2)]
    assert_plain(out)


def test_two_flacs_in_one_call():
    files = [gen.flac(0.5, 16000, 1), gen.flac(0.4, 44100, 2, freq=300, streamed=True)]
    out = split_call(gen.slices(b"".join(files), 1024), 0)
    assert datas(out) == files and shape(out) == [("flac", 16000, 1), ("flac", 44100, 2)]


def test_flac_cut_short_then_the_next_flac():
    a, b = gen.flac(0.6), gen.flac(0.4, 16000, freq=300)
    out = split_call(gen.slices(a[:-200] + b, 1024), 0)
    assert out[0].truncated and "partial final frame" in out[0].note and a.startswith(out[0].data)
    assert out[1].data == b and shape(out) == [("flac", 24000, 1), ("flac", 16000, 1)]


@pytest.mark.parametrize("streamed", [False, True])
def test_flac_cut_short(streamed):
    data = gen.flac(1.0, streamed=streamed)
    (out,) = split_call([data[:-300]], 0)
    assert out.truncated and "partial final frame" in out.note
    assert data.startswith(out.data)
    pcm = gen.pcm_f32(out.data, "flac", 24000, 1)
    assert 0.8 * 24000 < len(pcm) < 24000


def test_adts():
    data = gen.adts(0.8)
    out = split_call(gen.slices(data, 1024), 0)
    assert datas(out) == [data] and shape(out) == [("aac", 24000, 1)]
    with_id3 = gen.adts(0.8, id3=True)
    assert with_id3.startswith(b"ID3")
    assert datas(split_call(gen.slices(with_id3, 100), 0)) == [with_id3]


def test_adts_rate_change_and_partial_frame():
    a, b = gen.adts(0.5), gen.adts(0.5, 16000, 2, freq=300)
    (out,) = split_call([a + b[:-50]], 0)
    assert shape([out]) == [("aac", 24000, 2)] and out.reconfigures
    assert (a + b).startswith(out.data) and len(out.data) > len(a)
    assert out.truncated and "partial final frame" in out.note


def test_different_formats_back_to_back():
    files = [
        gen.mp3(0.4, id3=True),
        gen.mp3(0.4, freq=500),
        gen.wav(0.3, 16000),
        gen.ogg_opus(0.3),
        gen.flac(0.3),
        gen.adts(0.3),
        gen.mp3(0.3, 22050, 2, xing=False),
    ]
    out = split_call(gen.slices(b"".join(files), 1024), 4)
    assert [f.fmt for f in out] == ["mp3", "mp3", "wav", "ogg", "flac", "aac", "mp3"]
    assert [f.data for i, f in enumerate(out) if i != 2] == [f for i, f in enumerate(files) if i != 2]
    assert_plain(out, call=4)


def test_empty_chunks_are_ignored():
    a, b = sentence_mp3s(2)
    out = split_call([b"", a[:10], b"", b"", a[10:], b"", b, b""], 0)
    assert datas(out) == [a, b]


def test_bytearray_chunks_and_a_single_blob_are_accepted():
    a, b = sentence_mp3s(2)
    assert datas(split_call([bytearray(a), memoryview(b)], 0)) == [a, b]
    assert datas(split_call(a + b, 0)) == [a, b]  # type: ignore[arg-type]  # one blob, not a list of chunks


# ---------------------------------------------------------------------------------------------------------
# Not audio


JSON_ERROR = b'{"error": {"message": "Incorrect API key provided: sk-abc", "type": "invalid_request_error"}}'
HTML = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
RANDOM = bytes([0x13]) + random.Random(1).randbytes(3000)


@pytest.mark.parametrize(
    ("chunks", "kind", "says", "preview"),
    [
        ([JSON_ERROR[:30], JSON_ERROR[30:]], "JSON error body", "JSON error body instead of audio", "Incorrect API"),
        ([b'{"base_resp": {"status_code": 1004, "status_msg": "login fail"}}'], "JSON error body", "JSON", "login"),
        ([HTML], "HTML page", "HTML page", "502 Bad Gateway"),
        ([b"Internal Server Error"], "plain text", "text instead of audio", "Internal Server Error"),
        ([], "empty", "no audio at all", ""),
        ([b"", b""], "empty", "zero bytes", ""),
        ([RANDOM], "unknown binary", "not audio in a supported format", ""),
        ([b"\x00\x00\x00\x20ftypisom" + bytes(100)], "mp4", "MP4", ""),
        ([gen.mp3(0.3, id3=True).hex().encode()], "hex-encoded mp3", "hex text", "494433"),
        ([base64.b64encode(gen.wav(0.1))], "base64-encoded wav", "must decode it", "UklGR"),
        ([b"ID3\x03\x00\x00\x00\x00\x01\x00" + bytes(50)], "ID3 tag without audio", "no audio frames", "ID3"),
    ],
)
def test_payloads_that_are_not_audio(chunks, kind, says, preview):
    with pytest.raises(InvalidAudio) as err:
        split_call(chunks, 2)
    e = err.value
    assert (e.call_index, e.sniffed) == (2, kind)
    assert str(e).startswith("TTS call #3: ") and says in str(e) and f"(looks like: {kind})" in str(e)
    assert preview in e.preview and (not e.preview or repr(e.preview) in str(e))


@pytest.mark.parametrize(
    ("audio", "garbage", "kind"),
    [
        (lambda: gen.mp3(0.5, id3=True), JSON_ERROR, "JSON error body"),
        (lambda: gen.mp3(0.5, xing=False), HTML, "HTML page"),
        (lambda: gen.mp3(0.5), RANDOM, "unknown binary"),
        (lambda: gen.mp3(0.5)[:-77], JSON_ERROR, "JSON error body"),  # an error body after a cut-off frame
        (lambda: gen.mp3(0.5), b"Internal Server Error", "plain text"),
        (lambda: gen.wav(0.3), JSON_ERROR, "JSON error body"),
        (lambda: gen.wav(0.3, streamed=True), JSON_ERROR, "JSON error body"),
        (lambda: gen.wav(0.3, streamed=True), HTML, "HTML page"),
        (lambda: gen.ogg_opus(0.3), b"upstream timed out", "plain text"),
        (lambda: gen.ogg_vorbis(0.3), RANDOM, "unknown binary"),
        (lambda: gen.flac(0.3), JSON_ERROR, "JSON error body"),
        (lambda: gen.flac(0.3), RANDOM, "unknown binary"),
        (lambda: gen.flac(0.3, streamed=True), RANDOM, "unknown binary"),
        (lambda: gen.flac(0.5)[:-200], HTML, "HTML page"),
        (lambda: gen.adts(0.3), RANDOM, "unknown binary"),
        (lambda: gen.adts(0.3), JSON_ERROR, "JSON error body"),
        (lambda: b"".join(sentence_mp3s(2)), b"\x00" * 64, "unknown binary"),
    ],
)
def test_audio_followed_by_garbage_is_rejected_not_cut(audio, garbage, kind):
    data = audio()
    with pytest.raises(InvalidAudio) as err:
        split_call(gen.slices(data + garbage, 1024), 0)
    e = err.value
    assert e.call_index == 0 and "followed by" in str(e) and "not audio" in str(e)
    if kind != "unknown binary":
        assert e.sniffed == kind and repr(e.preview) in str(e)
        assert e.preview.startswith(garbage.decode()[:10])


def test_binary_junk_between_files_is_skipped_with_a_note_text_is_not():
    a, b = sentence_mp3s(2)
    out = split_call([a, b"\x00\x01junk", b], 0)
    assert datas(out) == [a, b] and not out[0].truncated
    assert (
        out[0].note
        == f"skipped 6 bytes that are not audio at bytes {len(a)}-{len(a) + 5} of the call (before the next file)"
    )
    with pytest.raises(InvalidAudio, match="interrupted by 14 bytes that are not audio") as err:
        split_call([a, b"quota exceeded", b], 0)
    assert err.value.preview == "quota exceeded"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n", "HLS playlist"),
        (b"ffconcat version 1.0\nfile /etc/passwd\n", "ffconcat list"),
        (b"file:/etc/passwd", "URL"),
        (b"https://evil.example/a.mp3", "URL"),
        (b"concat:/etc/passwd|/etc/shadow", "plain text"),
    ],
)
def test_hostile_payloads_are_rejected(payload, kind):
    with pytest.raises(InvalidAudio) as err:
        split_call([payload], 0)
    assert err.value.sniffed == kind
    assert " ".join(payload.decode().split()) in str(err.value)  # the preview shows it
    with pytest.raises(InvalidAudio, match="not audio"):  # also when disguised as a chunk after real audio
        split_call([gen.mp3(0.3), payload], 0)


def test_a_chunk_that_is_not_bytes_is_rejected():
    with pytest.raises(InvalidAudio, match="chunk #2 is a str"):
        split_call([gen.mp3(0.3), "SUQz"], 0)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (gen.mp3(0.2, id3=True), "mp3"),
        (gen.mp3(0.2, xing=False), "mp3"),
        (gen.wav(0.1), "wav"),
        (gen.ogg_opus(0.2), "ogg"),
        (gen.flac(0.2), "flac"),
        (gen.adts(0.2), "aac"),
        (gen.adts(0.2, id3=True), "aac"),
        (b"  \n", "blank text"),
        (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "XML document"),
        (b'[{"a": 1}]', "JSON document"),
        (b"\x1a\x45\xdf\xa3" + bytes(40), "webm"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "RIFF file (not WAVE)"),
        ("Ошибка: неверный ключ".encode(), "plain text"),
    ],
)
def test_sniff(data, kind):
    assert sniff(data) == kind


# ---------------------------------------------------------------------------------------------------------
# Properties


# (id3, xing, rate, channels, freq): the bare ones (no header) continue the stream before them
POOL = [
    (True, True, 24000, 1, 300),
    (False, True, 24000, 1, 350),
    (True, False, 24000, 1, 400),
    (False, False, 24000, 1, 450),
    (False, False, 22050, 2, 500),
    (True, True, 16000, 1, 550),
    (False, False, 16000, 1, 600),
]


def pool_file(i: int) -> bytes:
    id3, xing, rate, channels, freq = POOL[i]
    return gen.mp3(0.3 + 0.02 * i, rate, channels, freq, id3=id3, xing=xing)


def expected_files(picks: list[int]) -> list[bytes]:
    """Files as split_call must find them: a bare file continues the stream before it, whatever its rate."""
    out: list[bytes] = []
    for i in picks:
        id3, xing, _, _, _ = POOL[i]
        if out and not id3 and not xing:
            out[-1] += pool_file(i)
        else:
            out.append(pool_file(i))
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]  # repeated points give empty chunks


@SETTINGS
@given(
    picks=st.lists(st.integers(0, len(POOL) - 1), min_size=3, max_size=5, unique=True),
    points=st.lists(st.integers(0, 1 << 20), max_size=40),
)
def test_any_reslicing_gives_the_same_files(picks, points):
    data = b"".join(pool_file(i) for i in picks)
    expected = expected_files(picks)
    out = split_call(cut(data, points), 0)
    assert datas(out) == expected
    assert_plain(out)
    for f, original in zip(out, expected, strict=True):
        rate, channels = f.sample_rate, f.channels
        np.testing.assert_array_equal(
            gen.pcm_f32(f.data, "mp3", rate, channels), gen.pcm_f32(original, "mp3", rate, channels)
        )


def test_property_pool_decodes_cleanly_file_by_file():
    """The property above compares with the originals; here the originals themselves decode without errors."""
    for i, (_, _, rate, channels, _) in enumerate(POOL):
        assert len(gen.pcm_f32(pool_file(i), "mp3", rate, channels)) > 0.25 * rate


SEEDS = {
    "mp3s": lambda: b"".join(sentence_mp3s(2)),
    "stream": lambda: gen.mp3(0.4, xing=False),
    "wav": lambda: gen.wav(0.1, 8000, 2),
    "wav_streamed": lambda: gen.wav(0.1, 8000, 1, streamed=True),
    "ogg": lambda: gen.ogg_opus(0.3),
    "vorbis": lambda: gen.ogg_vorbis(0.3),
    "flac": lambda: gen.flac(0.2),
    "adts": lambda: gen.adts(0.3, id3=True),
    "mixed": lambda: gen.mp3(0.2) + gen.wav(0.05, 8000) + gen.flac(0.1),
}


def check_fuzz_result(data: bytes, chunks: list[bytes]) -> None:
    start = time.perf_counter()
    try:
        files = split_call(chunks, 1)
    except InvalidAudio as e:
        assert e.call_index == 1 and str(e).startswith("TTS call #2")
    else:
        assert files and all(f.data and f.fmt in AUDIO_FORMATS for f in files)
        assert [f.file_index for f in files] == list(range(len(files)))
        assert sum(len(f.data) for f in files) <= len(data) + 128 * len(files)  # + rewritten WAV headers
    assert time.perf_counter() - start < 2.0


@SETTINGS
@given(data=st.binary(max_size=3000), points=st.lists(st.integers(0, 4000), max_size=5))
def test_fuzz_arbitrary_bytes(data, points):
    check_fuzz_result(data, cut(data, points))


SPLICES = [
    b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
    b"RIFF\xff\xff\xff\xffWAVE",
    b"OggS\x00\x02",
    b"fLaC\x00\x00\x00\x22",
    b"\xff\xf3\x64\xc4",
    b"\xff\xf1\x58\x40",
    b"TAG",
    b"APETAGEX",
]


@st.composite
def mutated(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))]())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "splice"]))
        p = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[p] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[p] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "delete":
            del data[p : p + draw(st.integers(1, 300))]
        elif op == "insert":
            data[p:p] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[p:]
        elif op == "splice":  # a header-like sequence where it does not belong
            data[p:p] = draw(st.sampled_from(SPLICES))
    return bytes(data)


@SETTINGS
@given(data=mutated(), points=st.lists(st.integers(0, 1 << 20), max_size=8))
def test_fuzz_mutated_streams(data, points):
    check_fuzz_result(data, cut(data, points))


# ---------------------------------------------------------------------------------------------------------
# Bounded work


def test_large_call_is_linear_and_copies_little():
    one_call = b"".join(sentence_mp3s(4))
    data = one_call * (8_000_000 // len(one_call))  # ~8 MB of per-sentence files
    chunks = gen.slices(data, 1024)
    del data
    tracemalloc.start()
    start = time.perf_counter()
    try:
        out = split_call(chunks, 0)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(len(c) for c in chunks)
    assert len(out) == 4 * (total // len(one_call))
    assert peak < 2.5 * total  # the joined input plus the files: two copies
    assert elapsed < 20  # ~1 s here; generous for a loaded machine


def test_large_streamed_wav_is_fast():
    header = gen.wav(0.01, 24000, 1, streamed=True)[:-480]
    data = header + np.tile(np.arange(-20000, 20000, 7, dtype="<i2"), 2000).tobytes()  # ~11 MB
    start = time.perf_counter()
    (out,) = split_call(gen.slices(data, 65536), 0)
    assert time.perf_counter() - start < 5
    assert len(out.data) == len(data) - len(header) + 44
