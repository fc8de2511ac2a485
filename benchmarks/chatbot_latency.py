"""How much time the plugin adds to a chatbot reply (run by hand, not in CI).

The plugin runs exactly as Dify runs it (`python -m main` under the fake daemon of tests/daemon.py) and the
TTS model answers instantly with pre-made speech (the embedded engine's mp3, per sentence, 1024-byte
slices), so everything measured is the plugin's own work: parameter checks, reverse-invocation round trips,
reassembly, decode, mastering, encode, tagging, blob transfer.

Baseline, measured in the same run: one ffmpeg process that just re-encodes the same audio to mp3 (what any
tool that returns a re-encoded file pays at the least). Prints the median over the runs and the ratio.

    .venv/bin/python benchmarks/chatbot_latency.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPLY = (
    "Your order has shipped and should arrive on Thursday between nine and noon. "
    "If you need to change the delivery address, just reply to this message before Wednesday evening."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from audio import ffmpeg
    from audio.engine import EspeakEngine
    from tests.daemon import DEFAULT_MODEL, FakeDaemon

    audio = b"".join(EspeakEngine()(REPLY, None))  # two per-sentence mp3 files, as a provider sends them
    chunks = [audio[i : i + 1024] for i in range(0, len(audio), 1024)]

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "reply.mp3"
        src.write_bytes(audio)
        baseline = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            ffmpeg.run([*ffmpeg.input_args(src, "mp3"), "-c:a", "libmp3lame", "-b:a", "64k", str(Path(tmp) / "o.mp3")])
            baseline.append(time.perf_counter() - t0)

    params = {"text": REPLY, "model": dict(DEFAULT_MODEL), "cache": False}
    timings = []
    with FakeDaemon(ROOT, tts=lambda call: chunks) as daemon:
        daemon.invoke_tool(params)  # warm-up: first-call imports
        for _ in range(args.runs):
            t0 = time.perf_counter()
            run = daemon.invoke_tool(params)
            timings.append(time.perf_counter() - t0)
            if not run.ok:
                raise SystemExit(f"tool failed: {run.error_message}")
        calls = len(run.tts_calls)
    med, base = statistics.median(timings), statistics.median(baseline)
    print(f"two-sentence reply, {calls} TTS call(s), instant model, {args.runs} runs")
    print(f"plugin (request → last message): median {med * 1000:.0f} ms  (min {min(timings) * 1000:.0f}, "
          f"max {max(timings) * 1000:.0f})")
    print(f"baseline (one ffmpeg re-encode):  median {base * 1000:.0f} ms")
    print(f"ratio plugin / baseline = {med / base:.1f}")


if __name__ == "__main__":
    main()
