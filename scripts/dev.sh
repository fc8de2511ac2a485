#!/usr/bin/env bash
# The two commands of README.md live here so that Makefile, README and .ci/run say the same thing.
#   scripts/dev.sh demo   -> venv + runtime and local-runner deps, narrate examples/podcast.md to podcast.mp3
#                            (Host on embedded model 1, Guest on model 2) over a music bed generated at run time
#   scripts/dev.sh test   -> venv + dev deps, ruff, whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    py=$(bash scripts/find-python.sh)
    echo "creating $VENV with $py" >&2
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$1"
}

case "${1:-}" in
  demo)
    ensure_venv requirements-local.txt
    shift
    # a music bed made at run time from ffmpeg sine sources (royalty-free, nothing downloaded)
    pad=$(mktemp --suffix=.flac)
    trap 'rm -f "$pad"' EXIT
    "$VENV/bin/python" scripts/make_pad.py "$pad"
    # the guest reads with the second embedded model (another answer shape, 10 dB quieter): two providers
    "$VENV/bin/python" -m audio narrate examples/podcast.md -o podcast.mp3 --speakers "Host=en-us; Guest=2:en-gb+f3" \
      --music "$pad" "$@"
    ;;
  test)
    ensure_venv requirements-dev.txt
    shift
    "$VENV/bin/python" -m ruff check .
    "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test [args]" >&2
    exit 2
    ;;
esac
