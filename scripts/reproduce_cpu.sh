#!/usr/bin/env bash
# The CPU-scale reproduction behind chapter 6, as run on a 2-core machine (records go to results/runs/).
# Already-recorded runs are skipped, so this is safe to re-run; an interrupted run resumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
# SimpleCNN at full data: 2 epochs (~2 min per run on 2 cores), 3 seeds.
$PY -m batchcam reproduce --grid paper --models simplecnn --seeds ${SEEDS:-0 1 2} --epochs 2 --device cpu --no-progress
# ResNet-18 (28 px) and ConvNeXt-V2-Tiny (112 px) at a reduced, clearly labelled CPU scale:
# 1 epoch on 1 000 training images, 500 test images (records are labelled cpu-subset).
$PY -m batchcam reproduce --grid paper --models resnet18 convnextv2_tiny --seeds 0 --epochs 1 \
    --n-train 1000 --n-test 500 --device cpu --no-progress
