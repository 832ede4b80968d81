#!/usr/bin/env bash
# Run the whole ramdex test suite on this machine.
#
# Creates the virtual environment .venv (if missing), installs ramdex with its test extras, makes
# sure PostgreSQL, Redis and RabbitMQ are running (starting any that are not), installs Chromium
# for the web-UI test and ExifTool for the metadata tests when missing, then runs pytest. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test.sh]\033[0m %s\n' "$*" >&2; }

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ramdex_venv dev

bash scripts/services.sh

if ! command -v chromium >/dev/null 2>&1; then
    log "installing Chromium for the web-UI test"
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
            || log "could not install chromium; the browser test will report it"
    fi
fi

if ! command -v exiftool >/dev/null 2>&1; then
    log "installing ExifTool for the metadata tests (keywords in and out of files)"
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq libimage-exiftool-perl >/dev/null) \
            || log "could not install exiftool; the metadata tests will report it"
    fi
fi

log "running pytest"
set +e
"$PY" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    log "pytest collected no tests"
fi
exit "$status"
