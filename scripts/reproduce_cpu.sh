#!/usr/bin/env bash
# The CPU-scale reproduction behind chapters 5 and 6, as run on a 2-core machine (records go to
# results/runs/). Recorded runs are skipped, so this is safe to re-run; an interrupted run resumes.
# Runs refuse a dirty working tree: commit first (records name the commit they were made at).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
# SimpleCNN at full data, 2 epochs, 3 seeds, plus the untrained-model baseline (epochs 0).
$PY -m batchcam reproduce --grid paper --models simplecnn --seeds ${SEEDS:-0 1 2} --device cpu --no-progress
