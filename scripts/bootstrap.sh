#!/usr/bin/env bash
# Creates .venv with exactly the locked dependency set and the project installed (editable).
# Idempotent: does nothing when the lock has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.lock-installed
if [ -f "$stamp" ] && cmp -s requirements.lock "$stamp"; then exit 0; fi
"$PYTHON" -m pip install --quiet --upgrade uv
[ -x .venv/bin/python ] || "$PYTHON" -m uv venv --python "$PYTHON" .venv
"$PYTHON" -m uv pip sync --python .venv/bin/python requirements.lock
"$PYTHON" -m uv pip install --python .venv/bin/python --no-deps -e .
cp requirements.lock "$stamp"
