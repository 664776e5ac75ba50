"""The decoy family of verdicts: v2's "suppresses spurious features" tested on the decoy verdict grid (chapter 9).

Fixed before the decoy verdict runs (chapter 9 states it where the grid is introduced):

* **Seeds.** :data:`batchcam.verdicts.PLANNED_SEEDS` (10) per cell and dataset. A dataset is tested only
  when every cell has all of them; until then its entries say "not established (underpowered)".
* **Positive control.** ``ce`` trained on the decoyed data (the class texture, ``grid.DECOY_CONTROL``) must
  take the shortcut: the one-sided 95 % lower bound of its mean reliance is at least :data:`CONTROL_MIN`
  (20 points). Reliance = accuracy on test images with label-consistent patches minus accuracy on the same
  images and positions with random-class patches (``batchcam.evaluate.decoy_metrics``).
* **Oracles.** An oracle (``ce+rrr-input``, ``ce+rrr`` at the λ chosen on validation, ``ce`` on clean images)
  *works* on a dataset when its mean reliance is at most ``grid.ORACLE_SHARE`` (20 %) of the control's;
  otherwise it *failed*, and the entry says so. Ross's exact 4 × 4 grey patch is a ``ce``-only row, shown.
* **The family.** Each paper loss (``ce+proto``, ``ce+batchcam``, ``ce+proto+batchcam``) against the
  control on reliance: paired by seed (a seed's runs share initial weights, data and order), the one-sided
  paired t-test for "less", Holm across the six comparisons (three losses × two datasets), one word from
  ``stats.decide``. The smallest effect the claim is about, :data:`PLANNED_EFFECT`, is 10 points of
  reliance. A comparison on a dataset whose control fails, or where no oracle works, is "not testable here":
  without a shortcut that ``ce`` takes and an annotated fix that removes it, a lower reliance means nothing.
* **Descriptive beside it** (not voted): clean accuracy, the area-normalised relevance mass inside the
  patch (1 = no preference) and, for the rows with a Prototype Loss, the prototypes' mass inside the patch.

The design has no pilot spread for these cells, so each entry's minimum detectable effect is computed from
the recorded runs' paired differences at the planned n: it says what the test could see, it chose nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

__all__ = ["CONTROL_MIN", "PLANNED_EFFECT", "LOSSES", "ORACLES", "FAMILY", "SCOPE", "build"]

CONTROL_MIN = 0.20
PLANNED_EFFECT = 0.10
LOSSES = ("ce+proto", "ce+batchcam", "ce+proto+batchcam")
ORACLES = ("oracle: ce+rrr-input", "oracle: ce+rrr (RRR-G)", "oracle: ce on clean images")
FAMILY = "decoy: each paper loss against ce on reliance, MNIST and Fashion-MNIST (SimpleCNN)"
SCOPE = ("SimpleCNN (GAP head), CPU, 2 epochs, 28 px, 20 000 decoyed training images, a 6 × 6 class texture "
         "in a random corner, Adam at the learning rate chosen on validation, all 10 000 test images")
#: Descriptive metrics of every cell: record field → label.
DESCRIBE = {"decoy_reliance": "reliance", "decoy_clean_accuracy": "clean accuracy",
            "decoy_relevance_mass_ratio": "relevance mass ÷ area share",
            "decoy_prototype_patch_ratio": "prototypes' mass ÷ area share"}


def _cells(rows: Sequence[Mapping], configs: Sequence[Any]) -> dict[tuple[str, str], dict[int, Mapping]]:
    """``{(dataset, cell name): {seed: row}}`` of the recorded runs of ``configs`` (the decoy verdict grid)."""
    from .grid import decoy_verdict_cell

    by_id, out = {r["run_id"]: r for r in rows}, {}
    for c in configs:
        if c.run_id in by_id:
            out.setdefault((c.dataset, decoy_verdict_cell(c)), {})[c.seed] = by_id[c.run_id]
    return out


def _describe(values: Sequence[float]) -> Optional[dict]:
    """Mean and two-sided 95 % t-interval (None without values)."""
    from .rulers import mean_interval

    if not values:
        return None
    mean, lo, hi = mean_interval(values)
    return {"mean": mean, "ci_low": None if math.isnan(lo) else lo, "ci_high": None if math.isnan(hi) else hi,
            "n": len(values)}


def _lower_bound(values: Sequence[float], alpha: float) -> Optional[float]:
    """One-sided 1 − alpha lower bound of the mean (t; None below two values)."""
    from scipy import stats as st

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(mean - st.t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n))


def _gate(cells: Mapping, dataset: str, planned: int, alpha: float) -> dict:
    """The dataset's control and oracles: complete?, control lower bound and verdict, each oracle's status."""
    from .grid import ORACLE_SHARE

    control = cells.get((dataset, "ce"), {})
    rel = [r["decoy_reliance"] for r in control.values()]
    complete = all(len(cells.get((dataset, name), {})) >= planned for name in ("ce", *ORACLES, *LOSSES))
    lb = _lower_bound(rel, alpha)
    gate = {"dataset": dataset, "complete": complete, "control_n": len(rel),
            "control_reliance": _describe(rel), "control_lower_bound": lb, "control_min": CONTROL_MIN,
            "control_holds": None if lb is None or not complete else lb >= CONTROL_MIN, "oracles": []}
    ce_mean = sum(rel) / len(rel) if rel else None
    for name in ORACLES:
        mine = [r["decoy_reliance"] for r in cells.get((dataset, name), {}).values()]
        works = (None if not (mine and ce_mean is not None and complete)
                 else bool(sum(mine) / len(mine) <= ORACLE_SHARE * ce_mean))
        gate["oracles"].append({"cell": name, "reliance": _describe(mine), "share_of_control": (
            sum(mine) / len(mine) / ce_mean if mine and ce_mean else None), "works": works})
    return gate


def build(rows: Sequence[Mapping], configs: Sequence[Any], *, alpha: float = 0.05,
          planned: Optional[int] = None, note: str = "") -> dict:
    """The ``"decoy"`` part of ``results/verdicts.json`` from ``load_runs`` rows and the decoy verdict grid's
    configs (``grid.decoy_verdict_grid()``; empty while the oracles' λ is not chosen, with ``note`` saying
    why); chapter 9. Returns ``{"protocol", "gates" (per dataset: control and oracles), "entries" (the
    family), "cells" (descriptive: every cell's metrics, mean and 95 % interval)}``."""
    from . import stats
    from .data import DATASETS
    from .verdicts import PLANNED_SEEDS

    planned = planned or PLANNED_SEEDS
    cells = _cells(rows, configs)
    gates = {ds: _gate(cells, ds, planned, alpha) for ds in DATASETS}
    entries = []
    for ds in DATASETS:
        g, ce = gates[ds], cells.get((ds, "ce"), {})
        for loss in LOSSES:
            mine = cells.get((ds, loss), {})
            seeds = sorted(set(mine) & set(ce))
            e = {"claim": "v2-spurious", "version": "v2", "dataset": ds, "model": "simplecnn",
                 "comparison": f"{loss} vs ce", "metric": "decoy_reliance", "direction": "less",
                 "kind": "superiority", "family": FAMILY, "scope": SCOPE, "seeds_planned": planned,
                 "n": len(seeds), "test": None, "effect": None, "ci_low": None, "ci_high": None, "p": None,
                 "p_holm": None, "mde": None, "planned_effect": PLANNED_EFFECT, "verdict": None, "note": "",
                 "run_ids": {"objective": [mine[s]["run_id"] for s in seeds],
                             "ce": [ce[s]["run_id"] for s in seeds]}}
            if not g["complete"] or len(seeds) < planned:
                e["verdict"] = "not established (underpowered)"
                e["note"] = f"{len(seeds)} of {planned} seeds of this pair; the dataset's cells are not all in"
            elif not g["control_holds"]:
                e["verdict"] = "not testable here"
                e["note"] = (f"positive control failed: ce's reliance lower bound {g['control_lower_bound']:.3f} "
                             f"< {CONTROL_MIN}")
            elif not any(o["works"] for o in g["oracles"]):
                e["verdict"] = "not testable here"
                e["note"] = "no oracle removes the shortcut at this budget"
            else:
                a = [mine[s]["decoy_reliance"] for s in seeds]
                b = [ce[s]["decoy_reliance"] for s in seeds]
                c = stats.compare(a, b, paired=True, alternative="less", alpha=alpha)
                diffs = [x - y for x, y in zip(a, b)]
                mean = sum(diffs) / len(diffs)
                sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
                e.update(test=c.test, effect=c.effect, ci_low=c.ci_low, ci_high=c.ci_high, p=c.p, _c=c,
                         mde=stats.min_detectable_effect(planned, sd, alpha, paired=True, alternative="less")
                         if sd > 0 else None)
            entries.append(e)
    tested = [e for e in entries if "_c" in e]
    for e, q in zip(tested, stats.holm([e["p"] for e in tested]) if tested else []):
        c = dataclasses.replace(e.pop("_c"), p_holm=q)
        e["p_holm"] = q
        e["verdict"] = stats.decide(c, claim_direction="less", mde=e["mde"], planned_effect=PLANNED_EFFECT)
    for e in entries:  # JSON has no infinity: a one-sided interval's open end is null
        for k in ("ci_low", "ci_high", "mde"):
            if isinstance(e[k], float) and not math.isfinite(e[k]):
                e[k] = None
    described = [{"dataset": ds, "cell": name, "seeds": sorted(runs),
                  **{k: _describe([r[k] for r in runs.values() if r.get(k) is not None]) for k in DESCRIBE}}
                 for (ds, name), runs in sorted(cells.items())]
    return {"protocol": {"seeds_planned": planned, "alpha": alpha, "family": FAMILY, "scope": SCOPE,
                         "correction": "Holm across the family", "test": "paired t, one-sided (less)",
                         "control_min": CONTROL_MIN, "planned_effect": PLANNED_EFFECT, "note": note},
            "gates": [gates[ds] for ds in DATASETS], "entries": entries, "cells": described}


def from_records(rows: Sequence[Mapping], *, alpha: float = 0.05) -> dict:
    """:func:`build` on the decoy verdict grid as the records define it (chapter 9): while a tuning run is
    missing, ``grid.decoy_verdict_grid`` cannot name the runs, and every entry waits, with the reason."""
    from .grid import decoy_verdict_grid

    try:
        configs, note = decoy_verdict_grid(), ""
    except ValueError as exc:
        configs, note = [], str(exc)
    return build(rows, configs, alpha=alpha, note=note)
