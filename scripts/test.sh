#!/usr/bin/env bash
# Set up a virtualenv (once) and run every check: lint, types, doctests, tests.
# Needs only Python 3.11 and pip. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "== ruff";    .venv/bin/ruff check .
echo "== mypy";    .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports --no-cache
echo "== doctests"; .venv/bin/python -m pytest -q --doctest-modules llmpulse -p no:cacheprovider
echo "== tests";   .venv/bin/python -m pytest -q --durations=30 "$@"
