#!/usr/bin/env bash
# The runs behind chapter 7's verdicts, in priority order, on a CPU (records go to results/runs/):
# 1. the learning-rate choice on the validation split (grid 'tuning': ce, seed 100, 3 rates, 2 datasets);
# 2. the verdict grid: SimpleCNN × 4 objectives × 2 datasets × seeds 0-9 at the rate chosen on
#    validation (plus the untrained model for seeds 0-2), whole seeds first.
# Recorded runs are skipped and an interrupted run resumes, so this is safe to re-run; it refuses a
# dirty working tree (records name the commit they were made at). About 2.5 min per trained run on an
# idle 2-core machine; SEEDS="0 1" limits the verdict grid to those seeds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
$PY -m batchcam reproduce --grid tuning --device cpu --no-progress
$PY -m batchcam reproduce --grid verdict --device cpu --no-progress --eval-cam-loop-samples 64 \
  ${SEEDS:+--seeds $SEEDS}
