"""Faithfulness per model over the verdict grid's seeds: deletion and insertion normalised by the same
model's random-order curve, blur deletion, and ROAD, with 95 % intervals (chapter 7).

Deletion and insertion AUCs are not comparable across models as they stand: a model that is less sure of
its answers starts lower, whatever the order of the pixels. Each record therefore divides its Grad-CAM
AUC by the AUC of a random order on the same images with the same model (``faithfulness.normalised``,
written by :func:`batchcam.evaluate.faithfulness`): below 1 on deletion, above 1 on insertion, is better
than chance *for that model*. The input image, a map that ignores the model, is normalised the same way
and shown beside it, as is ROAD's random order. ROAD (Rong et al. 2022) fills the removed pixels from
their neighbours, so that the removal's shape does not leak the class; its combined score
``mean_p (LeRF − MoRF)/2`` is about 0 for a random order and higher is better.

Nothing here trains or votes: every number is read from the run records, and each cell's interval is the
t-interval of its seed means (descriptive: no claim of the paper is about these rulers).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional, Sequence

from scipy import stats as _st

from .table import Table

__all__ = ["RULERS", "mean_interval", "ruler_cells", "ruler_table"]

#: Column → (value of one flat record row, better direction). The ``(input)`` and ``(random)`` columns are
#: the baselines: the input image as a map (it ignores the model), a random order.
RULERS: dict[str, tuple[Callable[[Mapping], float], str]] = {
    "deletion ÷ random": (lambda r: r["deletion_normalised"], "lower"),
    "deletion ÷ random (input)": (lambda r: r["deletion_input"] / r["deletion_random"], "lower"),
    "insertion ÷ random": (lambda r: r["insertion_normalised"], "higher"),
    "insertion ÷ random (input)": (lambda r: r["insertion_input"] / r["insertion_random"], "higher"),
    "blur deletion ÷ random": (lambda r: r["blur_deletion_normalised"], "lower"),
    "ROAD combined": (lambda r: r["road_combined_maps"], "higher"),
    "ROAD combined (random)": (lambda r: r["road_combined_random"], "higher"),
    "ROAD MoRF": (lambda r: r["road_morf_maps"], "lower"),
    "ROAD LeRF": (lambda r: r["road_lerf_maps"], "higher"),
}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its two-sided t-interval (``scipy.stats.t``; n − 1 degrees of freedom).
    One value: the interval is (nan, nan). No value: ValueError (chapter 7)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def ruler_cells(rows: Iterable[Mapping], run_ids: Iterable[str],
                rulers: Optional[Mapping[str, tuple[Callable[[Mapping], float], str]]] = None
                ) -> dict[tuple[str, str], dict]:
    """(dataset, objective) → ``{"n": seeds, column: (mean, low, high)}`` over the records of ``run_ids``
    (flat rows of :func:`batchcam.results.load_runs`) that hold the ROAD and normalised fields; records
    without them (older runs, untrained models) are left out and counted in ``"skipped"`` of the cell (chapter 7)."""
    rulers = RULERS if rulers is None else rulers
    wanted, by_cell = set(run_ids), {}
    for r in rows:
        if r["run_id"] in wanted:
            cell = by_cell.setdefault((r["dataset"], r["objective"]), {"rows": [], "skipped": 0})
            if r.get("road_combined_maps") is None or r.get("deletion_normalised") is None:
                cell["skipped"] += 1
            else:
                cell["rows"].append(r)
    out = {}
    for key, cell in by_cell.items():
        if cell["rows"]:
            out[key] = {"n": len(cell["rows"]), "skipped": cell["skipped"],
                        **{col: mean_interval([f(r) for r in cell["rows"]]) for col, (f, _) in rulers.items()}}
    return out


def _fmt(stat: tuple[float, float, float]) -> str:
    mean, lo, hi = stat
    return f"{mean:.3f}" if math.isnan(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def ruler_table(cells: Mapping[tuple[str, str], dict], dataset: str, columns: Sequence[str],
                caption: str = "") -> Table:
    """One row per objective of ``dataset`` (in the order of :data:`batchcam.losses.OBJECTIVES`): the seeds,
    then each of ``columns`` (keys of :data:`RULERS`) as mean [95 % interval] (chapter 7)."""
    from .losses import OBJECTIVES

    unknown = [c for c in columns if c not in RULERS]
    if unknown:
        raise ValueError(f"unknown ruler column(s) {unknown}; choose from {list(RULERS)}")
    order = {o: i for i, o in enumerate(OBJECTIVES)}
    keys = sorted((k for k in cells if k[0] == dataset), key=lambda k: (order.get(k[1], len(order)), k[1]))
    rows = [[obj, cells[ds, obj]["n"], *(_fmt(cells[ds, obj][c]) for c in columns)] for ds, obj in keys]
    arrows = {c: " ↓" if RULERS[c][1] == "lower" else " ↑" for c in columns}
    return Table(["objective", "seeds", *(c + arrows[c] for c in columns)], rows, caption)
