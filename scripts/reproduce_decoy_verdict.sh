#!/usr/bin/env bash
# The runs behind chapter 9's verdicts, in order, on a CPU (records go to results/runs/):
# 1. the learning rate chosen on validation (grid 'tuning', shared with chapter 7; skipped when recorded);
# 2. the oracles' λ chosen on validation (grid 'decoy-tuning': the positive control and each oracle at
#    each candidate λ of batchcam.grid.ORACLE_LAMBDAS, seed 100; 28 runs);
# 3. the decoy verdict grid: 8 cells × 2 datasets × seeds 0-9 on 20 000 training images (160 runs),
#    whole seeds first (SEEDS="0 1" limits it).
# Recorded runs are skipped and an interrupted run resumes; runs refuse a dirty working tree. About 2 min
# per run on an idle 2-core machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
$PY -m batchcam reproduce --grid tuning --device cpu --no-progress
$PY -m batchcam reproduce --grid decoy-tuning --device cpu --no-progress
$PY -m batchcam reproduce --grid decoy-verdict --device cpu --no-progress --eval-cam-loop-samples 0 \
  ${SEEDS:+--seeds $SEEDS}
