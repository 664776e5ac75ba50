"""The Decoy-MNIST grid's table and verdict, computed from the records only (chapter 9).

The cells are ``grid.DECOY_CELLS``. Per cell: accuracy on the decoyed test set (the patch's grey
now names a random class), on the clean test set, the *relevance mass* (share of the true-class
Grad-CAM map inside the patch), *follows patch* (share of decoyed test images predicted as the
class the patch's grey names; 10 % by chance) and dead maps, as mean ± std over seeds.

The *shortcut cost* of a run is its clean-test accuracy minus its decoyed-test accuracy: what
the lying patch takes away. The verdict on v2's "suppresses spurious features" uses chapter 7's
rule: a (dataset, model) votes when ``ce`` and the loss objective both have ≥ 3 seeds at a
non-smoke scale and the same recipe; the objective (with prototypes from the decoyed training
images, all that a user who does not know the shortcut has) must beat ``ce`` on relevance mass
(lower) *and* on shortcut cost (lower), each by more than the larger seed standard deviation.
The cost, not the decoyed-test accuracy itself, so that an objective that is simply more
accurate everywhere does not pass for one that ignores the patch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Optional

from .claims import verdict
from .grid import DECOY_CELLS, DECOY_VERDICT_CELLS, decoy_cell, decoy_verdict_cell
from .report import RECIPE, beats, fmt, seed_cell
from .table import Table

__all__ = ["METRICS", "VERDICT_METRICS", "decoy_aggregate", "decoy_table", "decoy_verdict_aggregate",
           "decoy_verdict_table", "spurious_verdict"]

#: (row key, column title, scale, digits) of the decoy table.
METRICS = (("accuracy", "decoyed test acc. (%)", 100, 1), ("decoy_clean_accuracy", "clean test acc. (%)", 100, 1),
           ("shortcut_cost", "shortcut cost (points)", 100, 1), ("decoy_relevance_mass", "relevance mass (%)", 100, 1),
           ("decoy_follows_patch", "follows patch (%)", 100, 1), ("dead_fraction", "dead maps (%)", 100, 1))


#: The decoy verdict grid's columns (``grid.DECOY_VERDICT_CELLS``): reliance (accuracy with label-consistent
#: patches minus accuracy with random ones, same images and positions), the accuracies, the relevance mass
#: over the patch's share of the area (1: no preference) and the same for the true class's prototype.
VERDICT_METRICS = (("decoy_reliance", "reliance (points)", 100, 1),
                   ("decoy_random_accuracy", "random-patch test acc. (%)", 100, 1),
                   ("decoy_consistent_accuracy", "consistent-patch test acc. (%)", 100, 1),
                   ("decoy_clean_accuracy", "clean test acc. (%)", 100, 1),
                   ("decoy_relevance_mass_ratio", "relevance mass / area", 1, 2),
                   ("decoy_prototype_patch_ratio", "prototype mass / area", 1, 2),
                   ("dead_fraction", "dead maps (%)", 100, 1))


def _value(row: Mapping, metric: str) -> Optional[float]:
    if metric == "shortcut_cost":  # clean minus decoyed test accuracy
        clean, acc = row.get("decoy_clean_accuracy"), row.get("accuracy")
        return None if clean is None or acc is None else clean - acc
    return row.get(metric)


def decoy_aggregate(rows: Iterable[Mapping], cell_of: Callable[[Any], Optional[str]] = decoy_cell,
                    metrics: tuple = METRICS) -> dict[tuple[str, str, str], dict]:
    """Mean ± std over seeds per (dataset, model, decoy cell), from ``results.load_runs()`` rows
    (chapter 9). Within a cell the seeds of one recipe (``report.RECIPE``) are averaged, the one
    with most seeds. Cell: ``{"n", "votes", "run_ids", "scale", metric: (mean, std) or None}``.
    ``cell_of`` names a row's cell (default: the first decoy grid's)."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        name = cell_of(r)
        if name is not None:
            cells[(r["dataset"], r["model"], name)][tuple(r.get(k) for k in RECIPE)].append(r)
    out = {}
    for key, recipes in cells.items():
        recipe, runs = max(recipes.items(), key=lambda kv: len(kv[1]))
        out[key] = {**seed_cell(runs, [m for m, *_ in metrics], _value), "recipe": recipe}
    return out


def decoy_table(agg: Mapping[tuple, dict], caption: str = "", cells: Iterable[str] = DECOY_CELLS,
                metrics: tuple = METRICS) -> Table:
    """One row per (dataset, model, cell) in ``cells`` order: the metrics, seeds, scale (chapter 9)."""
    order = {name: i for i, name in enumerate(cells)}
    rows = [[ds, model, name, *(fmt(c[m], digits, scale) for m, _, scale, digits in metrics), c["n"],
             c["scale"] + ("" if c["votes"] else ", not voted")]
            for (ds, model, name), c in sorted(agg.items(), key=lambda kv: (kv[0][:2], order[kv[0][2]]))]
    return Table(["dataset", "model", "cell", *(t for _, t, _, _ in metrics), "seeds", "scale"], rows, caption)


def decoy_verdict_aggregate(rows: Iterable[Mapping]) -> dict[tuple[str, str, str], dict]:
    """:func:`decoy_aggregate` of the decoy verdict grid's runs (``grid.decoy_verdict_cell``) with
    :data:`VERDICT_METRICS` (chapter 9)."""
    return decoy_aggregate(rows, decoy_verdict_cell, VERDICT_METRICS)


def decoy_verdict_table(agg: Mapping[tuple, dict], caption: str = "") -> Table:
    """The decoy verdict grid's table, one row per (dataset, model, cell) in ``DECOY_VERDICT_CELLS`` order
    (chapter 9)."""
    return decoy_table(agg, caption, DECOY_VERDICT_CELLS, VERDICT_METRICS)


def spurious_verdict(agg: Mapping[tuple, dict], objective: str = "ce+proto+batchcam") -> dict:
    """``{"version": "v2", "claim", "test", "verdict", "evidence"}`` for "suppresses spurious features"
    (chapter 9): the rule of this module's docstring, over every voting (dataset, model)."""
    results, evidence = [], []
    for (ds, model) in sorted({k[:2] for k in agg}):
        ce, c = agg.get((ds, model, "ce")), agg.get((ds, model, objective))
        if not (ce and c):
            continue
        mass = beats(c["decoy_relevance_mass"], ce["decoy_relevance_mass"], "lower")
        cost = beats(c["shortcut_cost"], ce["shortcut_cost"], "lower")
        line = (f"{ds}/{model}: relevance mass {fmt(c['decoy_relevance_mass'], 2, 100)} % vs ce "
                f"{fmt(ce['decoy_relevance_mass'], 2, 100)} %; shortcut cost "
                f"{fmt(c['shortcut_cost'], 2, 100)} vs ce {fmt(ce['shortcut_cost'], 2, 100)} points")
        if ce["votes"] and c["votes"] and ce["recipe"] == c["recipe"]:
            results.append(bool(mass) and bool(cost))
            evidence.append(line)
        else:
            evidence.append(f"{line} (shown, not counted: ce {ce['n']}, {objective} {c['n']} seed(s))")
    return {"version": "v2", "claim": "suppresses spurious features",
            "test": f"{objective} (decoy prototypes) beats ce on Decoy-MNIST relevance mass and on "
                    "shortcut cost (clean minus decoyed test accuracy), both lower; chapter 9",
            "verdict": verdict(results, "no Decoy-MNIST cell with ≥ 3 seeds at a non-smoke scale"),
            "evidence": evidence}

