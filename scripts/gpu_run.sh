#!/usr/bin/env bash
# One GPU session in one command (a lent GPU, a workstation, Colab): prints the versions, smoke-tests
# every CUDA path (stops if one fails), runs a short CUDA benchmark, then trains pending paper-grid runs
# in priority order until the budget is spent, packing every new record into OUT/records.tar.gz after
# each run. Needs torch>=2.4, torchvision, timm, torchmetrics, tqdm and data/ (no install: PYTHONPATH).
# Usage: scripts/gpu_run.sh [BUDGET_S] [OUT] [extra gpu-run flags, e.g. --models resnet18 convnextv2_tiny]
# Then, on the machine with the repository: python -m batchcam unpack OUT/records.tar.gz
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
budget=${1:-500}; out=${2:-${OUT:-gpu-out}}
shift $(( $# > 2 ? 2 : $# ))
exec "${PY:-python}" -m batchcam gpu-run --budget-s "$budget" --out "$out" "$@"
