#!/usr/bin/env bash
# Install: create .venv once, (re)install requirements.txt only when it changed, build the bundled
# digits dataset once. Idempotent; every other script calls it first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  echo "$want" > "$stamp"
fi
[ -f data/digits/.complete-v1 ] || .venv/bin/python utils/make_digits.py
