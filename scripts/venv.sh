#!/usr/bin/env bash
# Create (if missing) and update the project's virtual environment. Sourced by test.sh and demo.sh.
# Usage: source scripts/venv.sh [EXTRAS]   ->   sets $VENV and $PY
VENV="${RAMDEX_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
_extras="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
    printf '[setup] creating %s\n' "$VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
_stamp="$VENV/.ramdex-installed${_extras:+-$_extras}"
if [ ! -f "$_stamp" ] || [ pyproject.toml -nt "$_stamp" ]; then
    printf '[setup] installing ramdex%s into %s (first run takes a few minutes)\n' \
        "${_extras:+[$_extras]}" "$VENV" >&2
    "$PY" -m pip install -q --upgrade pip
    # torchvision must match torch; this pair installs offline from this machine's disk.
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$PY" -m pip install -q -e ".${_extras:+[$_extras]}"
    touch "$_stamp"
fi
