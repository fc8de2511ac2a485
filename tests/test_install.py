"""Install test: the plugin installed and started the way Dify's daemon does it, then one job per format.

What dify-plugin-daemon does for a local install (internal/core/local_runtime/setup_python_environment.go):
unpack the .difypkg, `uv venv .venv --python 3.12`, `uv pip install --prerelease=allow -r requirements.txt`
(with VIRTUAL_ENV set; no pyproject.toml ships), `python -m compileall`, then start `.venv/bin/python -m main`
in the plugin directory with the daemon's own environment. This test does the same with a fresh Python 3.12
venv and uv from PyPI (requirements-dev.txt), runs the plugin under the fake daemon (tests/daemon.py) and
narrates one job in each output format, each checked by decoding it (zero decoder errors, the expected
duration). FFMPEG_BINARY is removed from the plugin's environment: the plugin must find its ffmpeg itself.

Two PATHs for the plugin process:
- `no-ffmpeg-on-path`: an empty directory; the plugin must use the imageio-ffmpeg binary uv installed.
- `distro-ffmpeg-on-path`: the daemon image's PATH with the distribution's ffmpeg (/usr/bin/ffmpeg: Debian
  5.1, Ubuntu 24.04's 6.1, neither with the loopback decoder `-dec`). Skipped when there is none (install it
  with `apt-get install -y ffmpeg`). The plugin must pass it over (audio/ffmpeg.py chooses by capability) and
  narrate with the bundled binary; before that choice existed every job here failed with "Unrecognized
  option 'dec'".

Skipped only when uv or a Python 3.12 cannot be found; an install that fails (e.g. PyPI unreachable) fails.
Measured here: `uv pip install` 6.8 s with an empty uv cache, 1.9 s with a warm one; the module ~30 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tests import audiogen
from tests.daemon import DEFAULT_MODEL, FakeDaemon, TTSCall, slices
from tests.test_plugin_package import packager

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("mp3", "m4a", "ogg", "flac", "wav")
DEMUXER = {"mp3": "mp3", "m4a": "mov", "ogg": "ogg", "flac": "flac", "wav": "wav"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the daemon image's PATH
INSTALL_TIMEOUT_S = 600  # the daemon's own limit for installing dependencies is 10 minutes
RATE = 24000

# Three sentences → three TTS calls at max_chars_per_request=50, each answered with 1.0 s of mp3.
TEXT = "Alpha opens the show with a few words. Bravo follows with a second line. Charlie adds a third thought."
EXPECTED_S = 3 * 1.0 + 2 * 0.3  # three answers and two default sentence pauses


def tone(call: TTSCall) -> list[bytes]:
    freq = {"Alpha": 220.0, "Bravo": 330.0, "Charlie": 495.0}[call.text.split()[0]]
    return slices(audiogen.mp3(1.0, freq=freq), 1024)


def _uv() -> str:
    try:
        from uv import find_uv_bin  # the `uv` wheel from PyPI (requirements-dev.txt), as the daemon finds it

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            pytest.skip("uv is not installed: pip install -r requirements-dev.txt (or pip install uv)")
        return found


def _python312() -> str:
    res = subprocess.run(["bash", str(REPO / "scripts" / "find-python.sh")], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0 or not res.stdout.strip():
        pytest.skip(f"no Python 3.12 to create the plugin's venv with: {res.stderr.strip()}")
    return res.stdout.strip()


def _run(argv: list[str], cwd: Path, env: dict[str, str], what: str) -> float:
    started = time.monotonic()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                         check=False)
    if res.returncode != 0:
        pytest.fail(f"{what} failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The unpacked package with its .venv, installed as the daemon installs it. Returns the plugin dir."""
    uv, python = _uv(), _python312()
    package = packager.build(REPO, tmp_path_factory.mktemp("dist"))
    plugin = tmp_path_factory.mktemp("plugin")
    with zipfile.ZipFile(package) as zf:
        zf.extractall(plugin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "UV_"))}
    env.update({"UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(plugin / ".venv")})
    venv_s = _run([uv, "venv", ".venv", "--python", python], plugin, env, "uv venv")
    install_s = _run([uv, "pip", "install", "--prerelease=allow", "-r", "requirements.txt"], plugin, env,
                     "uv pip install -r requirements.txt")
    compile_s = _run([str(plugin / ".venv" / "bin" / "python"), "-m", "compileall", "-q", "-x",
                      r"\.venv|\.uv-cache", "."], plugin, env, "compileall")
    print(f"\ninstall: uv venv {venv_s:.1f} s, uv pip install {install_s:.1f} s, compileall {compile_s:.1f} s")
    return plugin


def _plugin_env(mode: str, tmp_path: Path) -> dict[str, str]:
    if mode == "no-ffmpeg-on-path":
        empty = tmp_path / "path"
        empty.mkdir()
        return {"PATH": str(empty)}
    return {"PATH": SYSTEM_PATH}


DISTRO_FFMPEG = shutil.which("ffmpeg", path=SYSTEM_PATH)


@pytest.mark.parametrize(
    "mode",
    ["no-ffmpeg-on-path", "distro-ffmpeg-on-path"],
)
def test_installed_package_narrates_every_format(installed, mode, tmp_path):
    if mode == "distro-ffmpeg-on-path" and DISTRO_FFMPEG is None:
        pytest.skip(f"no distribution ffmpeg on {SYSTEM_PATH} (apt-get install -y ffmpeg)")
    env = {**_plugin_env(mode, tmp_path), "TMPDIR": str(tmp_path)}
    assert (shutil.which("ffmpeg", path=env["PATH"]) is None) == (mode == "no-ffmpeg-on-path")
    daemon = FakeDaemon(installed, tts=tone, env=env, python=str(installed / ".venv" / "bin" / "python"))
    for name in ("FFMPEG_BINARY", "IMAGEIO_FFMPEG_EXE", "VIRTUAL_ENV"):  # the plugin finds ffmpeg itself
        daemon.env.pop(name, None)
    with daemon:
        for fmt in FORMATS:
            started = time.monotonic()
            run = daemon.invoke_tool({"text": TEXT, "model": dict(DEFAULT_MODEL), "max_chars_per_request": 50,
                                      "cache": False, "output_format": fmt}, timeout=120)
            elapsed = time.monotonic() - started
            assert run.ok, f"{fmt}: {run.describe()}"
            assert not run.protocol_errors, (fmt, run.protocol_errors)
            [audio] = run.audio_files()
            pcm, errors = audiogen.decode(audio.data, DEMUXER[fmt], RATE, 1)
            assert errors == "", f"{fmt}: decoder errors:\n{errors}"
            decoded_s = len(pcm) / RATE
            assert abs(decoded_s - EXPECTED_S) < 0.4, (fmt, decoded_s)
            [stats] = run.jsons
            assert stats["format"] == fmt and stats["size_bytes"] == len(audio.data)
            assert abs(stats["duration_s"] - decoded_s) < 0.1, (fmt, stats["duration_s"], decoded_s)
            print(f"{mode} {fmt}: {len(audio.data)} bytes, {decoded_s:.2f} s decoded, job {elapsed:.1f} s")
        assert not daemon.stray_lines and not daemon.global_errors
