#!/usr/bin/env bash
# Chapter 7's Decoy-MNIST and Decoy-Fashion-MNIST grid on CPU (records go to results/runs/):
# SimpleCNN at full data, 2 epochs, 3 seeds, eight cells per dataset (batchcam.grid.DECOY_CELLS).
# Recorded runs are skipped, an interrupted run resumes; runs refuse a dirty working tree.
# MNIST's three seeds come first, so a grid cut short still has one complete dataset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
for ds in ${DATASETS:-mnist fashion-mnist}; do
  $PY -m batchcam reproduce --grid decoy --datasets "$ds" --seeds ${SEEDS:-0 1 2} --device cpu \
    --no-progress --eval-cam-loop-samples 64 --eval-faithfulness-samples 200
done
