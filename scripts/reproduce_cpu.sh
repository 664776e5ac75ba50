#!/usr/bin/env bash
# The CPU-scale reproduction behind chapters 6 and 7, as run on a 2-core machine (records go to
# results/runs/). Recorded runs are skipped, so this is safe to re-run; an interrupted run resumes.
# Runs refuse a dirty working tree: commit first (records name the commit they were made at).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
# SimpleCNN at full data, 2 epochs, 3 seeds, plus the untrained-model baseline (epochs 0), with
# the evaluation settings of the committed records (64 images timed with the per-image loop,
# 200 scored by deletion/insertion), so that their runs are recognised and skipped. About 2 min
# per trained run on an idle 2-core machine (any objective: the GAP head keeps the double backward
# cheap) and under 1 min per untrained one; chapter 7 reports each record's time.
for obj in ce ce+proto+batchcam ce+proto ce+batchcam; do
  extra=(); [ "$obj" != ce ] && extra=(--no-random-baseline)
  $PY -m batchcam reproduce --grid paper --models simplecnn --objectives "$obj" "${extra[@]}" \
    --seeds ${SEEDS:-0 1 2} --device cpu --no-progress --eval-cam-loop-samples 64 \
    --eval-faithfulness-samples 200
done
