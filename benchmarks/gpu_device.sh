#!/usr/bin/env bash
# benchmarks/gpu.py on the lent GPU machine, in one call (it has torch, timm, typer, pandas, OpenCV,
# but no internet and no albumentations: those wheels are carried).
#
#   here:   bash benchmarks/gpu_device.sh prepare        # wheels for the device's Python 3.12 -> .device-wheels/
#   device: run(command="bash benchmarks/gpu_device.sh run", carry=[".device-wheels"], timeout_s=420)
#   dry run on the CPU:  bash benchmarks/gpu_device.sh prepare 3.11 && OUT=/tmp/gpu-out bash benchmarks/gpu_device.sh run --quick
#
# `run` installs the carried wheels into a private folder (only those python3 lacks), prints the card,
# then runs gpu.py (extra arguments are passed on) with its log and results under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.device-wheels
NEEDED="albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0
typing-inspection==0.4.2 simsimd==6.5.16 stringzilla==5.3.2 typing-extensions==4.16.0"

case "${1:-}" in
prepare)
    version="${2:-3.12}"
    mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    python3 -m pip download -q --only-binary=:all: --no-deps --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$WHEELS" $NEEDED
    ls -l "$WHEELS"
    ;;
run)
    shift
    OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$OUT"
    site=/tmp/maskkit-device-site
    if ! python3 -c "import albumentations" 2>/dev/null; then
        # shellcheck disable=SC2086
        python3 -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$site" \
            $(echo $NEEDED | tr ' ' '\n' | cut -d= -f1)
        export PYTHONPATH="$site"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: a CPU dry run"
    python3 -c "import maskkit.cli, maskkit.engine.trainer" # every import gpu.py needs, before timing anything
    set -o pipefail
    timeout 330 python3 benchmarks/gpu.py --out "$OUT/gpu_results.json" "$@" 2>&1 | tee "$OUT/gpu_log.txt"
    ;;
*)
    echo "usage: bash benchmarks/gpu_device.sh prepare [PYTHON_VERSION] | run [gpu.py options]" >&2
    exit 2
    ;;
esac
