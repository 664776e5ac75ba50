"""batchcam.rulers: the per-model faithfulness table of chapter 7, against scipy and a slow loop."""

import math

import numpy as np
import pytest
from scipy import stats

from batchcam import rulers


def test_mean_interval_equals_scipy():
    x = [0.31, 0.28, 0.35, 0.30, 0.27, 0.33]
    mean, lo, hi = rulers.mean_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x), abs=1e-12)
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)


def test_mean_interval_edges():
    assert math.isnan(rulers.mean_interval([0.5])[1])
    with pytest.raises(ValueError, match="at least one"):
        rulers.mean_interval([])


def _row(run_id, dataset, objective, seed, **over):
    row = {"run_id": run_id, "dataset": dataset, "objective": objective,
           "deletion_normalised": 0.5 + seed / 100, "deletion_input": 0.2, "deletion_random": 0.4,
           "insertion_normalised": 1.5, "insertion_input": 0.6, "insertion_random": 0.3,
           "blur_deletion_normalised": 0.8, "road_combined_maps": 0.2 + seed / 50,
           "road_combined_random": 0.0, "road_morf_maps": -0.7, "road_lerf_maps": -0.3}
    return {**row, **over}


def test_ruler_cells_by_hand():
    rows = [_row(f"a{s}", "mnist", "ce", s) for s in range(4)]
    rows += [_row("b0", "mnist", "ce+proto", 0), _row("old", "mnist", "ce", 9, road_combined_maps=None),
             _row("other", "mnist", "ce", 7)]   # "other" is not asked for
    cells = rulers.ruler_cells(rows, ["a0", "a1", "a2", "a3", "b0", "old"])
    ce = cells["mnist", "ce"]
    assert (ce["n"], ce["skipped"]) == (4, 1)
    road = [0.2 + s / 50 for s in range(4)]
    assert ce["ROAD combined"][0] == pytest.approx(sum(road) / 4)
    assert ce["deletion ÷ random (input)"][0] == pytest.approx(0.5)
    assert cells["mnist", "ce+proto"]["n"] == 1


def test_ruler_table_rows_and_errors():
    cells = rulers.ruler_cells([_row("a", "mnist", "ce+proto", 0), _row("b", "mnist", "ce", 1),
                                _row("c", "mnist", "ce", 2)], ["a", "b", "c"])
    table = rulers.ruler_table(cells, "mnist", ["ROAD combined"])
    assert [r[0] for r in table.rows] == ["ce", "ce+proto"]      # the order of OBJECTIVES
    assert table.header[-1] == "ROAD combined ↑" and "[" in table.rows[0][2]
    assert table.rows[1][2] == "0.200"                           # one seed: no interval
    with pytest.raises(ValueError, match="unknown ruler column"):
        rulers.ruler_table(cells, "mnist", ["road"])
