"""Chapter 8's ablations through the verdicts' statistics: each variant against its paper cell (chapter 8).

Every ablation row is one choice of the paper cell changed (``batchcam.grid.ABLATIONS``), trained with the
same seeds, so run ``i`` of a variant and run ``i`` of its reference share the seed, the initialisation
and the data order: the comparison is paired by seed (``batchcam.stats.compare(paired=True)``; with
fewer than five pairs it is an exact sign-flip permutation test). All comparisons of the table (every
variant × metric × dataset) form one Holm family. A row with fewer seeds than the verdicts' planned
:data:`~batchcam.verdicts.PLANNED_SEEDS` is *shown, not voted*: its interval is printed, no verdict
rests on it. With three pairs the smallest two-sided p a sign-flip test can give is 2/8 = 0.25, so no
three-seed row can reach p < 0.05 at all: the status says so rather than "no effect".
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

from . import grid
from .stats import MIN_PARAMETRIC_N, compare, holm
from .verdicts import PLANNED_SEEDS

__all__ = ["METRICS", "SHOWN", "reference_rows", "by_variant", "compare_ablations", "smallest_p"]

#: (metric, the better direction) of the ablation table.
METRICS = (("accuracy", "higher"), ("l1", "lower"), ("deletion_maps", "lower"))
SHOWN = "shown, not voted"


def _is_reference(r: Mapping) -> bool:
    """A paper cell of the ablations' recipe: SimpleCNN, full data, 2 epochs, no decoy, no validation
    split, the ablation learning rate, ``ce`` or ``ce+proto+batchcam``."""
    return (grid.variant(r) == "paper" and r["model"] == "simplecnn" and r["n_train"] is None
            and r["epochs"] == 2 and r.get("decoy", "none") == "none" and not r.get("n_val")
            and r["lr"] == grid.ABLATION_RECIPE["lr"] and r["objective"] in ("ce", "ce+proto+batchcam"))


def reference_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The paper cells the ablations are compared with (``load_runs`` rows; chapter 8)."""
    return [r for r in rows if _is_reference(r)]


def by_variant(rows: Iterable[Mapping]) -> dict[tuple[str, str, str], list[Mapping]]:
    """``{(dataset, variant, objective): [rows]}`` for the reference cells and every ablated run
    (``variant`` is ``"paper"`` for the reference; chapter 8)."""
    rows = list(rows)
    out: dict[tuple[str, str, str], list[Mapping]] = {}
    for r in reference_rows(rows) + [r for r in rows if grid.variant(r) != "paper"]:
        out.setdefault((r["dataset"], grid.variant(r), r["objective"]), []).append(r)
    return out


def _pairs(runs: Sequence[Mapping], ref: Sequence[Mapping], metric: str) -> tuple[list[float], list[float]]:
    """The metric of runs and reference runs that share a seed, in seed order (missing values dropped)."""
    a = {r["seed"]: r.get(metric) for r in runs}
    b = {r["seed"]: r.get(metric) for r in ref}
    seeds = sorted(s for s in a.keys() & b.keys() if a[s] is not None and b[s] is not None)
    return [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]


def compare_ablations(rows: Iterable[Mapping], metrics: Sequence[tuple[str, str]] = METRICS,
                      planned: int = PLANNED_SEEDS, alpha: float = 0.05) -> list[dict]:
    """Each ablated cell against its paper cell (same dataset and objective), metric by metric (chapter 8).

    Args:
        rows: ``batchcam.results.load_runs()`` rows (other runs are ignored).
        metrics: (record column, ``"higher"`` or ``"lower"`` is better).
        planned: the number of seeds a row needs to vote (the verdicts' planned n).
    Returns one dict per (dataset, variant, objective, metric) with a reference and ≥ 2 shared seeds,
    in ``grid.ABLATIONS`` order: ``dataset, variant, objective, metric, better, n`` (pairs),
    ``effect`` (variant − paper, mean of the paired differences), ``ci_low``, ``ci_high`` (95 %),
    ``p`` (two-sided), ``p_holm`` (Holm over every returned entry), ``test``, and ``status``:
    :data:`SHOWN` when ``n < planned``, else ``"better"`` / ``"worse"`` (Holm-adjusted p < alpha, by
    the sign of the effect and ``better``) or ``"no difference shown"``. Pairs without spread get
    p = None and stay out of the family.
    """
    cells = by_variant(rows)
    rank = {name: i for i, name in enumerate(grid.ABLATIONS)}
    out = []
    for (ds, name, obj), runs in sorted(cells.items(), key=lambda kv: (kv[0][0], rank.get(kv[0][1], -1),
                                                                        kv[0][2])):
        ref = cells.get((ds, "paper", obj))
        if name == "paper" or not ref:
            continue
        for metric, better in metrics:
            a, b = _pairs(runs, ref, metric)
            if len(a) < 2:
                continue
            entry = dict(dataset=ds, variant=name, objective=obj, metric=metric, better=better, n=len(a))
            try:
                c = compare(a, b, paired=True, alpha=alpha)
                entry.update(effect=c.effect, ci_low=c.ci_low, ci_high=c.ci_high, p=c.p, test=c.test)
            except ValueError:  # no spread in the differences: nothing to test
                entry.update(effect=sum(a) / len(a) - sum(b) / len(b), ci_low=None, ci_high=None, p=None,
                             test="none (no spread)")
            out.append(entry)
    tested = [e for e in out if e["p"] is not None]
    for e, q in zip(tested, holm([e["p"] for e in tested]) if tested else []):
        e["p_holm"] = q
    for e in out:
        e.setdefault("p_holm", None)
        e["status"] = _status(e, planned, alpha)
    return out


def _status(e: Mapping, planned: int, alpha: float) -> str:
    if e["n"] < planned:
        return SHOWN
    if e["p_holm"] is None or not e["p_holm"] < alpha:
        return "no difference shown"
    up = e["effect"] > 0
    return "better" if up == (e["better"] == "higher") else "worse"


def smallest_p(n: int) -> Optional[float]:
    """The smallest two-sided p an exact sign-flip test on ``n`` pairs can give (2 / 2**n), or None
    when ``n`` is large enough for the t-test (``batchcam.stats.MIN_PARAMETRIC_N``); chapter 8."""
    return None if n >= MIN_PARAMETRIC_N else min(1.0, 2.0 / math.pow(2, n))
