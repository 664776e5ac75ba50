#!/usr/bin/env bash
# The CPU-scale reproduction behind chapter 6, as run on a 2-core machine (records go to results/runs/).
# Already-recorded runs are skipped, so this is safe to re-run; an interrupted run resumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
# SimpleCNN at full data: 2 epochs (~2 min per run on 2 cores), 3 seeds.
$PY -m batchcam reproduce --grid paper --models simplecnn --seeds ${SEEDS:-0 1 2} --epochs 2 --device cpu --no-progress
# ResNet-18 (28 px) and ConvNeXt-V2-Tiny (112 px) at a reduced, clearly labelled CPU scale (cpu-subset):
# ResNet-18: 1 epoch on 1 000 training images, 500 test images.
$PY -m batchcam reproduce --grid paper --models resnet18 --seeds 0 --epochs 1 \
    --n-train 1000 --n-test 500 --device cpu --no-progress
# ConvNeXt-V2-Tiny at 112 px: 1 epoch on 500 images, 200 test images, batch 32, per-image loop timed on
# 64 images. One process per run: batch 128 with the double-backward graph, or several runs in one
# process, went over the machine's 24 GiB.
for ds in mnist fashion-mnist; do
  for obj in ce ce+proto ce+batchcam ce+proto+batchcam; do
    $PY -m batchcam reproduce --grid paper --models convnextv2_tiny --datasets $ds --objectives $obj --seeds 0 \
        --epochs 1 --n-train 500 --n-test 200 --batch-size 32 --eval-cam-loop-samples 64 --device cpu --no-progress
  done
done
