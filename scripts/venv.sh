#!/usr/bin/env bash
# Create (if missing) and update the project's virtual environment. Sourced by test.sh and demo.sh:
#
#   source scripts/venv.sh
#   ramdex_venv [EXTRAS]      # e.g. `ramdex_venv dev`; sets $VENV and $PY
#
# The extras are an explicit argument of the function, never the sourcing script's own "$1", so
# `bash scripts/demo.sh --images 50` passes its arguments to `ramdex demo` and nothing else.
# RAMDEX_VENV picks the folder (default .venv), PYTHON the interpreter that creates it.
#
# torch and torchvision are not pinned here: pyproject.toml gives ranges and pip installs a matching
# pair (each torchvision release requires one exact torch release). Where pip is configured with a
# constraints file (PIP_CONSTRAINT, or pip.conf like /etc/xdg/pip on the project's build machines,
# which caps torch at the release lying on that machine's disk), pip honours it here as well.
ramdex_venv() {
    local extras="${1:-}"
    VENV="${RAMDEX_VENV:-.venv}"
    local python="${PYTHON:-python3}"
    if [ ! -x "$VENV/bin/python" ]; then
        printf '[setup] creating %s\n' "$VENV" >&2
        "$python" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    local stamp="$VENV/.ramdex-installed${extras:+-$extras}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        printf '[setup] installing ramdex%s into %s (first run takes a few minutes)\n' \
            "${extras:+[$extras]}" "$VENV" >&2
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -e ".${extras:+[$extras]}"
        touch "$stamp"
    fi
}
