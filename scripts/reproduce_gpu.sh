#!/usr/bin/env bash
# The GPU-scale paper grid (both datasets x three models x four objectives x 3 seeds; ConvNeXt-V2-Tiny
# at 112 px), split by model so that each call stays within a few minutes on one H100/H200.
# Needs only torch>=2.4, torchvision, timm, torchmetrics, tqdm (no install: PYTHONPATH=. is enough)
# and the data folder (python -m batchcam prepare-data, or carry data/ along).
# Usage: scripts/reproduce_gpu.sh [MODEL ...]   (default: all three, in order of cost)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-python}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
for model in "${@:-simplecnn resnet18 convnextv2_tiny}"; do
  for m in $model; do
    $PY -m batchcam reproduce --grid paper --models "$m" --seeds ${SEEDS:-0 1 2} --device cuda --no-progress
  done
done
