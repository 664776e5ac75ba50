#!/usr/bin/env bash
# One GPU session in one command (a lent GPU, a workstation, Colab; docs/colab_gpu.md): prints the versions,
# smoke-tests every CUDA path (stops if one fails), calibrates the planner once per device (forward, training
# steps, K runs at once; results/bench/bench-calibration-*.json), then trains the pending runs of the GPU grid
# (ResNet-18 and ConvNeXt-V2, recipe batchcam.plan.GPU_RECIPES, seeds 0-2 before 3-9), K at once, each only
# if its estimate fits what is left of the budget, packing every new record into OUT/records.tar.gz after each
# run. Needs torch>=2.4, torchvision, timm, torchmetrics, tqdm and data/ (no install: PYTHONPATH).
# Before it, on the machine with the repository: commit, then `python -m batchcam gpu-run --stamp` (the GPU's
# copy of the git metadata may be older than its code) and `python -m batchcam gpu-run --plan --device-name H100`.
# Usage: scripts/gpu_run.sh [BUDGET_S] [OUT] [extra gpu-run flags, e.g. --concurrency 2 --recipe paper]
# Then, on the machine with the repository: python -m batchcam unpack OUT/records.tar.gz
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
budget=${1:-540}; out=${2:-${OUT:-gpu-out}}
shift $(( $# > 2 ? 2 : $# ))
exec "${PY:-python}" -m batchcam gpu-run --budget-s "$budget" --out "$out" "$@"
