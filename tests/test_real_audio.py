"""Audio as encoders and taggers nobody here controls write it (issue 12): tolerant with bytes that carry no
speech, never silent about bytes that may mean lost speech.

Every fixture is real audio made by ffmpeg, modified at the byte level, and delivered whole and in 1024-byte
slices. What is expected is decided by ffmpeg's decoder on the same bytes (samples it decodes, errors it
reports with `-v error`), never by the pipeline: where ffmpeg plays all the speech, the pipeline must return
exactly that speech (decoding without errors, with a warning for skipped junk); where the extra bytes read
like a provider's error, the pipeline must fail quoting them.
"""

from __future__ import annotations

import itertools
import random
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from audio import decode, pipeline
from audio.errors import InvalidAudio
from audio.segments import split_call
from tests import audiogen as gen

DELIVERIES = {"whole": lambda data: [data], "sliced": lambda data: gen.slices(data, 1024)}
JSON_ERROR = b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}}'
HTML = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1></body></html>\n"


@pytest.fixture(params=sorted(DELIVERIES))
def deliver(request):
    return DELIVERIES[request.param]


def ffmpeg_reads(data: bytes, fmt: str = "mp3", rate: int = 24000, channels: int = 1) -> tuple[np.ndarray, str]:
    """What ffmpeg's decoder makes of the bytes: the samples and the errors it reports."""
    return gen.decode(data, fmt, rate, channels)


def clean_pcm(data: bytes, fmt: str = "mp3", rate: int = 24000, channels: int = 1) -> np.ndarray:
    return gen.pcm_f32(data, fmt, rate, channels)


def mpeg_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the MPEG-2 Layer III frames after the ID3v2 tag of a CBR file made by `gen.mp3`
    (a walker independent of audio.containers: length = 72 × bitrate / rate + padding)."""
    p = 10 + int.from_bytes(bytes(b & 0x7F for b in data[6:10]), "big") if data.startswith(b"ID3") else 0
    kbps = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    rates = (22050, 24000, 16000)
    out = []
    while p + 4 <= len(data):
        h = int.from_bytes(data[p : p + 4], "big")
        assert h >> 21 == 0x7FF and (h >> 19) & 3 == 2, f"not an MPEG-2 frame at {p}"
        length = 72 * kbps[(h >> 12) & 15] * 1000 // rates[(h >> 10) & 3] + ((h >> 9) & 1)
        out.append((p, length))
        p += length
    assert p == len(data)
    return out


def assert_decodes_to(files, expected: list[np.ndarray], fmt: str = "mp3", rate: int = 24000) -> None:
    """Each returned file decodes without a decoder error to exactly the expected samples."""
    assert len(files) == len(expected)
    for f, pcm in zip(files, expected, strict=True):
        got, errors = ffmpeg_reads(f.data, fmt, rate)
        assert not errors, errors
        np.testing.assert_array_equal(got, pcm)


# ---------------------------------------------------------------------------------------------------------
# Junk before the first frame, a stream that starts mid-frame, junk between frames


def test_junk_before_the_first_frame_is_skipped_after_a_resync_and_reported(deliver):
    clean = gen.mp3(1.0, xing=True)
    junk = random.Random(7).randbytes(300)
    heard, _ = ffmpeg_reads(junk + clean)
    assert len(heard) >= len(clean_pcm(clean))  # ffmpeg plays all the speech in these bytes
    out = split_call(deliver(junk + clean), 3)
    assert [f.data for f in out] == [clean] and not out[0].truncated
    assert out[0].note == "skipped 300 bytes that are not audio at bytes 0-299 of the call (before the first file)"
    assert_decodes_to(out, [clean_pcm(clean)])


def test_a_stream_that_starts_in_the_middle_of_a_frame(deliver):
    stream = gen.mp3(1.0, xing=False)
    (_, first), (second, _) = mpeg_frames(stream)[:2]
    data = stream[first // 2 :]  # cut at an arbitrary byte of the first frame
    heard, _ = ffmpeg_reads(data)
    rest = clean_pcm(stream[second:])
    assert abs(len(heard) - len(rest)) <= 1152  # ffmpeg resyncs on the next frame too
    out = split_call(deliver(data), 0)
    assert [f.data for f in out] == [stream[second:]]
    assert f"skipped {second - first // 2} bytes that are not audio at bytes 0-" in out[0].note
    assert_decodes_to(out, [rest])


def test_junk_between_frames_is_left_out_of_the_file_with_a_warning(deliver):
    clean = gen.mp3(2.0, id3=True, xing=True)
    frames = mpeg_frames(clean)
    at = frames[len(frames) // 2][0]
    junk = random.Random(3).randbytes(400)
    data = clean[:at] + junk + clean[at:]
    heard, errors = ffmpeg_reads(data)
    assert "Header missing" in errors and len(heard) >= len(clean_pcm(clean)) - 1152  # ffmpeg resyncs, says so
    out = split_call(deliver(data), 0)
    assert [f.data for f in out] == [clean]  # one file: no pause, no seam in the middle of the speech
    assert out[0].note == (
        f"skipped 400 bytes that are not audio at bytes {at}-{at + 399} of the call (between the frames of one stream)"
    )
    assert_decodes_to(out, [clean_pcm(clean)])


def test_many_gaps_are_all_left_out_and_summarised_in_one_warning():
    clean = gen.mp3(12.0, xing=False)
    frames = mpeg_frames(clean)
    cuts = [frames[k][0] for k in range(10, len(frames), 10)]
    data = b"".join(clean[a:b] + b"\x00\x01\x02" for a, b in zip([0, *cuts], cuts, strict=False)) + clean[cuts[-1] :]
    (out,) = split_call(gen.slices(data, 1024), 0)
    assert out.data == clean
    notes = out.note.split("; ")
    more = len(cuts) - 3
    assert len(notes) == 4 and notes[-1] == f"skipped {3 * more} bytes that are not audio in {more} more gaps"


# ---------------------------------------------------------------------------------------------------------
# Tags where taggers put them


def syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def ape(header: bool) -> bytes:
    items = struct.pack("<II", 5, 0) + b"Title\x00hello" + struct.pack("<II", 6, 0) + b"Artist\x00world!"
    size = len(items) + 32
    head = b"APETAGEX" + struct.pack("<IIII", 2000, size, 2, 0xA0000000) + bytes(8)
    foot = b"APETAGEX" + struct.pack("<IIII", 2000, size, 2, 0x80000000) + bytes(8)
    return (head if header else b"") + items + foot


def lyrics3v2() -> bytes:
    body = b"LYRICSBEGIN" + b"IND00003110" + b"LYR00026[00:01]hello world!\r\n"
    return body + str(len(body)).zfill(6).encode() + b"LYRICS200"


def id3v2(footer: bool) -> bytes:
    frame = b"TIT2" + struct.pack(">I", 6) + b"\x00\x00\x03" + b"hello"
    if footer:
        return b"ID3\x04\x00\x10" + syncsafe(len(frame)) + frame + b"3DI\x04\x00\x10" + syncsafe(len(frame))
    return b"ID3\x03\x00\x00" + syncsafe(len(frame)) + frame


ID3V1 = b"TAG" + b"title".ljust(30, b"\x00") + b"artist".ljust(30, b"\x00") + bytes(65)
TAGS = {
    "ID3v1": ID3V1,
    "ID3v2.3 appended": id3v2(False),
    "ID3v2.4 appended with footer": id3v2(True),
    "APEv2 footer only": ape(False),
    "APEv2 header and footer": ape(True),
    "Lyrics3v1": b"LYRICSBEGIN" + b"hello world\r\n" + b"LYRICSEND",
    "Lyrics3v2": lyrics3v2(),
    "APEv2 + Lyrics3v2 + ID3v1": ape(False) + lyrics3v2() + ID3V1,
    "ID3v2 + ID3v1": id3v2(False) + ID3V1,
}


@pytest.mark.parametrize("tag", sorted(TAGS))
@pytest.mark.parametrize("where", ["between two files", "at the end"])
def test_appended_tags_of_every_kind_are_accepted_silently(tag, where, deliver):
    first, second = gen.mp3(0.8, id3=True, freq=330), gen.mp3(0.6, id3=True, freq=550)
    heard, _ = ffmpeg_reads(first + TAGS[tag])
    assert len(heard) == len(clean_pcm(first))  # the tag holds no audio (ffmpeg may still print an error)
    files = [first, second] if where == "between two files" else [first]
    data = first + TAGS[tag] + (second if len(files) == 2 else b"")
    out = split_call(deliver(data), 0)
    assert all(not f.note and not f.truncated for f in out)
    assert_decodes_to(out, [clean_pcm(f) for f in files])


# ---------------------------------------------------------------------------------------------------------
# A rate change inside one stream


def rate_switch() -> tuple[bytes, bytes, bytes]:
    """24 kHz LAME file (ID3, Info frame) continued by the raw frames of a 16 kHz encode, without its header."""
    a = gen.mp3(1.0, 24000, id3=True, xing=True)
    b = gen.mp3(1.0, 16000, freq=600, xing=True)
    info_end = sum(mpeg_frames(b)[0])
    return a, b[info_end:], a + b[info_end:]


def test_a_rate_change_without_a_header_is_one_file_decoded_as_ffmpeg_does(deliver, tmp_path):
    a, _, data = rate_switch()
    (out,) = split_call(deliver(data), 0)
    assert out.data == data and out.reconfigures and (out.sample_rate, out.channels) == (24000, 1)
    assert not out.note  # nothing was dropped: a rate change is not an error
    for rate in (16000, 24000, 48000):
        heard, errors = ffmpeg_reads(data, rate=rate)  # ffmpeg follows the change without an error
        assert not errors
        (dec,) = decode.decode_all([out], tmp_path, sample_rate=rate, channels=1, max_seconds_per_file=60)
        assert abs(dec.frames - len(heard)) <= 0.005 * rate, (rate, dec.frames, len(heard))  # ≤ 5 ms lost
        assert dec.frames >= len(clean_pcm(a, rate=rate)) + 0.95 * rate  # both halves are there


def test_an_adts_stream_changing_rate_and_layout_is_one_file_of_the_right_length(deliver, tmp_path):
    data = gen.adts(0.7) + gen.adts(0.7, 16000, 2, freq=300) + gen.adts(0.5, 22050, 1, freq=500)
    (out,) = split_call(deliver(data), 0)
    assert out.data == data and out.reconfigures and (out.sample_rate, out.channels) == (24000, 2)
    heard, errors = ffmpeg_reads(data, "aac", 24000)
    assert not errors
    (dec,) = decode.decode_all([out], tmp_path, sample_rate=24000, channels=1, max_seconds_per_file=60)
    assert abs(dec.frames - len(heard)) <= 0.005 * 24000


def test_the_rate_change_reaches_the_programme_without_a_pause_and_junk_with_a_warning(tmp_path):
    a, _, data = rate_switch()
    frames = mpeg_frames(a)
    at = frames[len(frames) // 2][0]
    junk = random.Random(5).randbytes(250)
    answer = data[:at] + junk + data[at:]
    job = pipeline.Job(text="One sentence is read here.", backoff_s=0)
    result = pipeline.narrate(job, lambda text, voice: gen.slices(answer, 1024), workdir=tmp_path)
    heard, _ = ffmpeg_reads(data)
    assert result.duration_s == pytest.approx(len(heard) / 24000, abs=0.15)  # both halves, no pause added
    assert any("skipped 250 bytes that are not audio" in w for w in result.stats.warnings), result.stats.warnings


# ---------------------------------------------------------------------------------------------------------
# WAV


def wav_file(pcm: bytes, rate: int, channels: int, bits: int, container: int, extensible: bool = False) -> bytes:
    align = channels * container // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 1, channels, rate, rate * align, align, bits)
    if extensible:
        fmt = fmt[:14] + struct.pack("<H", container) + struct.pack("<HHI", 22, bits, 0)
        fmt += struct.pack("<I", 1) + bytes.fromhex("000010008000 00aa00389b71")
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body) + (len(pcm) & 1)) + body + b"\0" * (len(pcm) & 1)


def odd_depth_wavs() -> dict[str, bytes]:
    t = np.arange(6000)
    s12 = ((0.5 * np.sin(t * 0.05) * 32767).astype("<i2") & ~0xF).astype("<i2")  # 12 valid bits, left-justified
    s20 = (0.5 * np.sin(t * 0.03) * 2**23).astype("<i4") & ~0xF
    b20 = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in s20)
    return {
        "12-bit in 16": wav_file(s12.tobytes(), 8000, 1, 12, 16),
        "20-bit in 24": wav_file(b20, 8000, 1, 20, 24),
        "20-bit in 24, extensible": wav_file(b20, 8000, 1, 20, 24, extensible=True),
        "12-bit stereo": wav_file(np.repeat(s12, 2).tobytes(), 8000, 2, 12, 16),
    }


@pytest.mark.parametrize("kind", sorted(odd_depth_wavs()))
def test_any_pcm_bit_depth_riff_allows(kind, deliver):
    original = odd_depth_wavs()[kind]
    channels = struct.unpack_from("<H", original, 22)[0]
    heard, errors = ffmpeg_reads(original, "wav", 8000, channels)
    assert not errors and len(heard) == 6000
    (out,) = split_call(deliver(original), 0)
    assert (out.fmt, out.sample_rate, out.channels, out.note) == ("wav", 8000, channels, "")
    assert struct.unpack_from("<H", out.data, 34)[0] % 8 == 0  # the container depth, in whole bytes
    got, errors = ffmpeg_reads(out.data, "wav", 8000, channels)
    assert not errors
    np.testing.assert_array_equal(got, heard)


@pytest.mark.parametrize(
    ("stray", "riff_delta"),
    [(b"encoder=Lavf58.76.100", 0), (b"\x00\x00\x00\x00\x00", 0), (b"", 3), (b"", -3), (b"id3 \x00\x00", -2)],
)
def test_a_complete_riff_with_stray_bytes_or_a_size_off_by_a_few(stray, riff_delta, deliver):
    original = gen.wav(0.5, 16000)
    data = bytearray(original + stray)
    data[4:8] = struct.pack("<I", struct.unpack_from("<I", data, 4)[0] + riff_delta)
    heard, _ = ffmpeg_reads(bytes(data), "wav", 16000)
    expected = clean_pcm(original, "wav", 16000)
    np.testing.assert_array_equal(heard, expected)  # the stray bytes hold no audio for ffmpeg
    (out,) = split_call(deliver(bytes(data)), 0)
    assert not out.truncated
    assert out.note == (
        f"skipped {len(stray)} bytes that are not audio at bytes {len(original)}-"
        f"{len(original) + len(stray) - 1} of the call (after the WAV file)"
        if stray
        else ""
    )
    got, errors = ffmpeg_reads(out.data, "wav", 16000)
    assert not errors
    np.testing.assert_array_equal(got, expected)


def riff_chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


@pytest.mark.parametrize(
    "after",
    [
        [riff_chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 14) + b"Lavf58.76.100\0")],
        [riff_chunk(b"id3 ", id3v2(False))],
        [riff_chunk(b"LIST", b"INFOINAM" + struct.pack("<I", 5) + b"hello\0"), riff_chunk(b"id3 ", id3v2(True))],
    ],
)
def test_riff_chunks_after_the_samples_are_accepted_silently(after, deliver):
    original = gen.wav(0.5, 16000)
    data = bytearray(original + b"".join(after))
    data[4:8] = struct.pack("<I", len(data) - 8)
    heard, errors = ffmpeg_reads(bytes(data), "wav", 16000)
    assert not errors
    (out,) = split_call(deliver(bytes(data)), 0)
    assert not out.note and not out.truncated
    got, errors = ffmpeg_reads(out.data, "wav", 16000)
    assert not errors
    np.testing.assert_array_equal(got, heard)


# ---------------------------------------------------------------------------------------------------------
# What may be lost speech: never skipped


@pytest.mark.parametrize(
    ("audio", "fmt"),
    [(lambda: gen.mp3(0.8, id3=True), "mp3"), (lambda: gen.mp3(0.8, xing=False), "mp3"), (lambda: gen.wav(0.4), "wav")],
)
@pytest.mark.parametrize("body", [JSON_ERROR, b"quota exceeded", HTML])
def test_an_error_body_after_valid_audio_is_an_error_quoting_it(audio, fmt, body, deliver):
    data = audio()
    heard, _ = ffmpeg_reads(data + body, fmt)
    np.testing.assert_array_equal(heard, clean_pcm(data, fmt))  # the body holds no audio: speech stopped here
    with pytest.raises(InvalidAudio) as err:
        split_call(deliver(data + body), 1)
    e = err.value
    assert str(e).startswith("TTS call #2: the audio is followed by") and e.retryable
    assert e.preview == " ".join(body.decode().split())[:200]


@pytest.mark.parametrize("body", [HTML, JSON_ERROR, b"upstream request timeout"])
def test_an_error_page_between_two_files_is_an_error_quoting_it(body, deliver):
    first, second = gen.mp3(0.6, id3=True), gen.mp3(0.6, id3=True, freq=600)
    _, errors = ffmpeg_reads(first + body + second)
    assert errors  # ffmpeg stumbles over it
    with pytest.raises(InvalidAudio) as err:
        split_call(deliver(first + body + second), 0)
    e = err.value
    assert f"interrupted by {len(body)} bytes that are not audio" in str(e)
    assert e.preview == " ".join(body.decode().split())[:200] and e.preview in str(e)


def test_junk_is_skipped_only_after_a_confident_resync():
    """Two isolated frame headers after junk are not enough (a decoder would not trust them either)."""
    clean = gen.mp3(0.5, xing=False)
    (p0, _), (p1, l1) = mpeg_frames(clean)[:2]
    junk = random.Random(9).randbytes(200).replace(b"\xff", b"\x00")
    lonely = clean[p0 : p1 + l1] + junk  # two frames of a stream, then nothing valid
    with pytest.raises(InvalidAudio, match="followed by"):
        split_call([clean + junk + lonely], 0)


# ---------------------------------------------------------------------------------------------------------
# Property: random cuts and random junk


SENTENCES = [gen.mp3(0.3 + 0.05 * i, id3=True, freq=300 + 60 * i) for i in range(4)]
_ACCOUNTED = re.compile(r"(?:skipped|dropped) (\d+) bytes")
_TAG_MAGIC = (b"ID3", b"TAG", b"APETAGEX", b"LYRICSBEGIN", b"RIFF", b"RF64", b"OggS", b"fLaC", b"\xff")


@st.composite
def damaged_calls(draw):
    """Sentence files joined, then damaged at random byte positions: junk inserted (never a known tag or
    header), byte ranges cut out, the end cut off."""
    picks = draw(st.lists(st.integers(0, len(SENTENCES) - 1), min_size=2, max_size=4))
    data = b"".join(SENTENCES[i] for i in picks)
    bounds = [0, *itertools.accumulate(len(SENTENCES[i]) for i in picks)]
    insert = st.tuples(st.integers(0, len(data)), st.binary(min_size=1, max_size=300), st.just(0))
    delete = st.tuples(st.integers(0, len(data) - 1), st.just(b""), st.integers(1, 2000))
    ops = draw(st.lists(st.one_of(insert, insert, delete), max_size=3))
    for _, junk, _ in ops:
        assume(not junk.startswith(_TAG_MAGIC))
    out, damaged, last = b"", set(), 0
    for pos, junk, cut in sorted(ops):
        if pos < last:
            continue  # inside a range already cut out
        end = min(pos + cut, len(data))
        out += data[last:pos] + junk
        last = end
        damaged.update(k for k in range(len(picks)) if bounds[k] < max(pos, end) and min(pos, end) < bounds[k + 1])
    out += data[last:]
    intact = [SENTENCES[picks[k]] for k in range(len(picks)) if k not in damaged]
    cuts = sorted(draw(st.lists(st.integers(0, len(out)), max_size=12)))
    chunks = [out[a:b] for a, b in zip([0, *cuts], [*cuts, len(out)], strict=True)]
    return out, chunks, intact


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(call=damaged_calls())
def test_property_cut_and_junked_streams_keep_every_intact_sentence_or_fail_clearly(call):
    data, chunks, intact = call
    try:
        files = split_call(chunks, 0)
    except InvalidAudio as e:
        assert str(e).startswith("TTS call #1: ")  # a clear error, never a crash
        event("clear error")
    else:
        event("audio" + (" with a warning" if any(f.note for f in files) else ""))
        for sentence in intact:  # every sentence whose frames are intact is there, whole
            assert any(sentence[10 + syncsafe_len(sentence) :] in f.data for f in files)
        # nothing is lost silently: every byte is in a file or in a warning that says how many were dropped
        accounted = sum(int(m) for f in files for m in _ACCOUNTED.findall(f.note))
        assert sum(len(f.data) for f in files) + accounted == len(data)


def syncsafe_len(data: bytes) -> int:
    return int.from_bytes(bytes(b & 0x7F for b in data[6:10]), "big")


def test_property_sentences_decode_cleanly():
    """The property test compares bytes; here the sentences themselves decode without errors."""
    with tempfile.TemporaryDirectory() as tmp:
        for s in SENTENCES:
            Path(tmp, "s.mp3").write_bytes(s)
            assert len(clean_pcm(s)) > 0.25 * 24000
