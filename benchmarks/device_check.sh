#!/usr/bin/env bash
# One check of ramdex's GPU path, in under 8 minutes (docs/gpu.md):
#
#   bash benchmarks/device_check.sh            # on a CUDA machine: full sizes
#   bash benchmarks/device_check.sh --smoke    # tiny sizes (what a machine without CUDA runs anyway)
#   bash benchmarks/device_check.sh --setup    # create/update .venv with scripts/venv.sh first
#
# Each stage (env, decode, scan, flat, tagging) runs in its own Python process under its own time
# budget, so one stage that fails or hangs costs only its budget; the rest go on. Stage figures and
# the summary (device_check.json) are written to $OUT/device_check when OUT is set, else to a
# temporary folder that is printed. Python: $PYTHON, else .venv/bin/python, else python3, the
# first that imports torch, torchvision, timm, numpy and PIL (no install needed: the repository is
# put on PYTHONPATH). RAMDEX_CHECK_TOTAL_S sets the overall limit (default 470 s).
set -u
cd "$(dirname "$0")/.."
start=$(date +%s)
total=${RAMDEX_CHECK_TOTAL_S:-470}
smoke="" setup=0
for arg in "$@"; do
    case "$arg" in
        --smoke) smoke="--smoke" ;;
        --setup) setup=1 ;;
        *) echo "usage: $0 [--smoke] [--setup]" >&2; exit 2 ;;
    esac
done

usable() { "$1" -c 'import torch, torchvision, timm, numpy, PIL' >/dev/null 2>&1; }

if [ "$setup" = 1 ]; then
    # pip may be unreachable on the device machine: a failed setup falls back to what is there.
    timeout 240 bash -c 'source scripts/venv.sh && ramdex_venv' || echo "[setup] failed; using an existing python" >&2
fi
py=""
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if usable "$candidate"; then py="$candidate"; break; fi
done
if [ -z "$py" ]; then
    echo "no python with torch, torchvision, timm, numpy and PIL; set PYTHON or run with --setup" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "$smoke" ] && ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "[device_check] no CUDA device: smoke run on the CPU (tiny sizes)"
    smoke="--smoke"
fi
dir="${OUT:+$OUT/device_check}"
dir="${dir:-$(mktemp -d /tmp/device_check.XXXXXX)}"
mkdir -p "$dir"
echo "[device_check] python $py, results in $dir, limit ${total} s ${smoke}"

# stage:budget (seconds); budgets shrink to what the overall limit leaves (20 s kept for the summary)
for entry in env:30 decode:60 scan:120 flat:60 tagging:200; do
    stage=${entry%%:*} budget=${entry##*:}
    left=$(( total - ($(date +%s) - start) - 20 ))
    [ "$left" -lt "$budget" ] && budget=$left
    if [ "$budget" -lt 10 ]; then
        echo "[device_check] $stage skipped: overall limit reached"
        echo 125 > "$dir/$stage.rc"
        continue
    fi
    # the stage stops itself before its budget (it checks time between cases); timeout is the backstop
    timeout --kill-after=5 "$budget" "$py" benchmarks/bench_device.py --stage "$stage" \
        --budget $(( budget - 10 )) --json "$dir/$stage.json" $smoke
    echo $? > "$dir/$stage.rc"
done
"$py" benchmarks/bench_device.py --summary "$dir" --total-s $(( $(date +%s) - start ))
