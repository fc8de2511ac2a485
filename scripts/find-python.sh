#!/usr/bin/env bash
# Print the path of a working Python 3.12 interpreter, the version Dify runs plugins with.
# Order: $PYTHON (if it is 3.12), python3.12 on PATH (if it actually runs: pyenv shims may refuse),
# pyenv's 3.12.x, uv-managed 3.12. Exits 1 with a message when none is found.
set -u
is312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; }
for cand in "${PYTHON:-}" python3.12 python3; do
  [ -n "$cand" ] || continue
  path=$(command -v "$cand" 2>/dev/null) || continue
  if is312 "$path"; then echo "$path"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for path in $(ls -d "$root"/versions/3.12*/bin/python3 2>/dev/null | sort -rV); do
    if is312 "$path"; then echo "$path"; exit 0; fi
  done
fi
if command -v uv >/dev/null 2>&1; then
  path=$(uv python find 3.12 2>/dev/null) && is312 "$path" && { echo "$path"; exit 0; }
fi
echo "find-python: no Python 3.12 found (set PYTHON=/path/to/python3.12)" >&2
exit 1
