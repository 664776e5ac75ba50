#!/usr/bin/env bash
# Chapter 9's Decoy-MNIST and Decoy-Fashion-MNIST grid on CPU (records go to results/runs/):
# SimpleCNN, 2 epochs, 3 seeds, eight cells per dataset (batchcam.grid.DECOY_CELLS), on a
# 20 000-image training subset (drawn with each run's seed; all 10 000 test images): about
# 1 min per run on a 2-core CPU; N_TRAIN= (empty) runs at full data, about 2 min per run.
# Recorded runs are skipped, an interrupted run resumes; runs refuse a dirty working tree. Order: every MNIST cell, then the Fashion-MNIST cells that
# the verdict needs (ce, ce+proto+batchcam and the oracle), then the rest, so that a grid cut
# short still votes on both datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
N_TRAIN=${N_TRAIN-20000}
run() { $PY -m batchcam reproduce --grid decoy --seeds ${SEEDS:-0 1 2} --device cpu --no-progress \
          ${N_TRAIN:+--n-train $N_TRAIN} --eval-cam-loop-samples 0 --eval-faithfulness-samples 0 "$@"; }
run --datasets mnist
run --datasets fashion-mnist --objectives ce ce+proto+batchcam
run --datasets fashion-mnist
