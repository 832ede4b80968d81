#!/usr/bin/env bash
# ramdex's main job, offline, on this machine: set up .venv (first run) and run `ramdex demo`.
# Extra arguments go to `ramdex demo` (see `ramdex demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ramdex_venv  # runtime dependencies only, no extras
exec "$VENV/bin/ramdex" demo "$@"
