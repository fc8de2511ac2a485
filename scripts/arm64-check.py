#!/usr/bin/env python3
"""Run the pipeline with the aarch64 ffmpeg that pip/uv install on arm64 hosts, under qemu-user.

    .venv/bin/python scripts/arm64-check.py [INPUT] [--formats mp3 m4a ogg] [--keep DIR]

The manifest declares arm64 (Dify on Apple-silicon Docker, Graviton). There the plugin runs the aarch64
binary of the `imageio-ffmpeg` wheel that requirements.txt allows, which is not the x86_64 build CI runs:

- `manylinux_2_28`: what a glibc >= 2.28 host installs (the daemon image is Ubuntu 24.04, glibc 2.39);
- `manylinux2014`: what an older glibc (2.17-2.27) falls back to.

For each, this script downloads the wheel (`pip download --only-binary=:all: --platform ... --no-deps`),
extracts its ffmpeg, and writes a wrapper that execs `qemu-aarch64-static [-L sysroot] <binary> "$@"`
(binfmt need not be registered; stdin, stdout, stderr and the exit code pass through, so a capability
probe sees the aarch64 build's real answers). Then, with FFMPEG_BINARY pointing at the wrapper, it runs
`python -m audio narrate INPUT -o out.<fmt>` for each lossy format and checks every output with the host's
own (x86_64) ffmpeg through `python -m audio inspect`: zero decode errors, loudness, true peak.

Needs: qemu-user-static (`apt-get install -y qemu-user-static`); for dynamically linked builds (0.8.x) an
aarch64 glibc (`apt-get install -y libc6-arm64-cross libgcc-s1-arm64-cross`, used as the qemu sysroot);
the local venv (requirements-local.txt: `bash scripts/dev.sh demo` creates it). Exits 1 if a job fails,
an output has decode errors, or its loudness misses -16 LUFS by more than 1 LU or its true peak is over
-1 dBTP (+0.3 dB measurement tolerance).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # name → pip --platform tags, best first
    "manylinux_2_28": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"],
    "manylinux2014": ["manylinux_2_17_aarch64", "manylinux2014_aarch64"],
}
SYSROOTS = ("/usr/aarch64-linux-gnu",)  # Debian/Ubuntu's libc6-arm64-cross
TARGET_LUFS, TARGET_TP, TOLERANCE_LU, TP_TOLERANCE_DB = -16.0, -1.0, 1.0, 0.3


def fail(message: str) -> None:
    print(f"arm64-check: {message}", file=sys.stderr)
    sys.exit(2)


def requirement() -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split("#")[0].strip()
        if re.match(r"imageio[-_]ffmpeg\b", spec, re.IGNORECASE):
            return spec
    fail("requirements.txt has no imageio-ffmpeg line")
    raise AssertionError


def download(spec: str, platforms: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", "3.12", "--no-deps", "-d", str(dest)]
    for tag in platforms:
        argv += ["--platform", tag]
    subprocess.run([*argv, spec], check=True)  # noqa: S603 - argument list, no shell
    wheels = sorted(dest.glob("imageio_ffmpeg-*.whl"))
    if len(wheels) != 1:
        fail(f"expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def extract_ffmpeg(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        [name] = [n for n in zf.namelist() if re.search(r"binaries/ffmpeg-linux-aarch64", n)]
        target = dest / Path(name).name
        with zf.open(name) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return target


def is_dynamic(binary: Path) -> bool:
    """True if the ELF has a PT_INTERP program header (needs an aarch64 dynamic loader)."""
    data = binary.read_bytes()[:65536]
    phoff = int.from_bytes(data[32:40], "little")
    phentsize, phnum = int.from_bytes(data[54:56], "little"), int.from_bytes(data[56:58], "little")
    return any(int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little") == 3
               for i in range(phnum))


def wrapper(qemu: str, binary: Path, sysroot: str | None, dest: Path) -> Path:
    script = dest / "ffmpeg"
    ld = f'-L "{sysroot}" ' if sysroot else ""
    script.write_text(f'#!/bin/sh\nexec "{qemu}" {ld}"{binary}" "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    return script


def run_json(argv: list[str], env: dict[str, str]) -> dict:
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:4])} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout)


def _output(ffmpeg: Path, *args: str) -> str:
    res = subprocess.run([str(ffmpeg), "-hide_banner", *args], capture_output=True, text=True, check=False)  # noqa: S603
    return res.stdout + res.stderr


def features(ffmpeg: Path) -> str:
    """What this build has of the pipeline's needs (the -version configuration and the -encoders/-filters)."""
    encoders, filters = _output(ffmpeg, "-encoders"), _output(ffmpeg, "-filters")
    have = [name for name in ("libmp3lame", "aac", "libopus", "flac") if re.search(rf"\s{name}\s", encoders)]
    have += [name for name in ("alimiter", "ebur128", "astats", "aresample") if re.search(rf"\s{name}\s", filters)]
    have += ["soxr"] if "--enable-libsoxr" in _output(ffmpeg, "-version") else []
    # ffmpeg < 7 rejects the option itself; 7+ parses it and complains about the (missing) output file index
    have += [] if "Unrecognized option 'dec'" in _output(ffmpeg, "-dec", "0:0") else ["-dec (loopback decoder)"]
    return ", ".join(have)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", default="examples/chatbot_reply.txt")
    parser.add_argument("--formats", nargs="+", default=["mp3", "m4a", "ogg"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()

    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not qemu:
        fail("no qemu-aarch64-static: apt-get install -y qemu-user-static")
    host_ffmpeg = subprocess.run(
        [sys.executable, "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    spec = requirement()
    work = args.keep or Path(tempfile.mkdtemp(prefix="arm64-check-"))
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    try:
        print(f"requirement {spec}; qemu {qemu}; input {args.input}; host ffmpeg for checks: {host_ffmpeg}")
        for variant in args.variants:
            vdir = work / variant
            wheel = download(spec, VARIANTS[variant], vdir / "wheel")
            binary = extract_ffmpeg(wheel, vdir)
            sysroot = None
            if is_dynamic(binary):
                sysroot = next((s for s in SYSROOTS if Path(s, "lib", "ld-linux-aarch64.so.1").exists()), None)
                if sysroot is None:
                    fail(f"{binary.name} is dynamically linked: apt-get install -y libc6-arm64-cross "
                         "libgcc-s1-arm64-cross (the aarch64 glibc qemu loads it with)")
            ffmpeg = wrapper(qemu, binary, sysroot, vdir)
            version = _output(ffmpeg, "-version").split("\n")[0]
            print(f"\n[{variant}] {wheel.name}\n  {version}\n  linked: "
                  f"{'dynamically (sysroot ' + str(sysroot) + ')' if sysroot else 'statically'}\n"
                  f"  has: {features(ffmpeg)}")
            for fmt in args.formats:
                out = vdir / f"out.{fmt}"
                env = {**os.environ, "FFMPEG_BINARY": str(ffmpeg)}
                started = time.monotonic()
                try:
                    stats = run_json([sys.executable, "-m", "audio", "narrate", args.input, "-o", str(out),
                                      "--stats"], env)
                except RuntimeError as exc:
                    failures.append(f"{variant} {fmt}: {exc}")
                    print(f"  {fmt}: FAILED: {exc}")
                    continue
                elapsed = time.monotonic() - started
                check = run_json([sys.executable, "-m", "audio", "inspect", str(out), "--json"],
                                 {**os.environ, "FFMPEG_BINARY": host_ffmpeg})
                lufs, tp = check["integrated_lufs"], check["true_peak_dbtp"]
                print(f"  {fmt}: job {elapsed:.1f} s under qemu; {check['duration_s']:.2f} s, "
                      f"{check['size_bytes']} bytes, {stats.get('bitrate_kbps')} kbit/s; host check: "
                      f"{lufs:.1f} LUFS, {tp:.1f} dBTP, {check['decode_errors']} decode errors")
                if check["decode_errors"]:
                    failures.append(f"{variant} {fmt}: {check['decode_errors']} decode errors {check['error_lines']}")
                if abs(lufs - TARGET_LUFS) > TOLERANCE_LU or tp > TARGET_TP + TP_TOLERANCE_DB:
                    failures.append(f"{variant} {fmt}: {lufs} LUFS / {tp} dBTP misses the target")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = "all jobs passed" if not failures else "FAILED\n  " + "\n  ".join(failures)
    print(f"\narm64-check: {summary}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
