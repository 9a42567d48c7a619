#!/usr/bin/env bash
# Set up a virtualenv (once) and run the embedded demo. Needs only Python 3.11 and pip.
# Usage: bash scripts/demo.sh [llmpulse demo args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/llmpulse demo "$@"
