"""``results/verdicts.json``: every claim of the paper, tested by the pre-registered protocol (chapter 7).

The claims, their metrics, directions, decision kinds and non-inferiority margins are written down
here, before the runs (:data:`CLAIMS`, :data:`MARGINS`, :data:`PLANNED_SEEDS`). :func:`build` reads
the run records of the verdict grid (``grid.verdict_grid``: SimpleCNN, 10 seeds per cell, the
learning rate chosen on the validation split) and, for each (claim, dataset, objective against
``ce``), compares the per-seed values with ``batchcam.stats.compare`` — paired by seed, because the
runs of one seed share the initial weights and the data order — corrects the p-values of the whole
family with Holm and maps each comparison to one word with ``stats.decide``. A cell whose
pre-registered seeds are not all recorded is not tested: its verdict is "not established
(underpowered)" and the entry says how many seeds are in. Claims that the records cannot decide
(the timing claims until a benchmark under the protocol exists) say "not testable here" with the
reason. Nothing is typed: the file is generated (``python -m batchcam verdicts``) and the book
renders it. scipy is needed (the ``test`` / ``book`` extras).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .data import DATASETS
from .losses import OBJECTIVES

__all__ = ["Claim", "CLAIMS", "MARGINS", "PLANNED_SEEDS", "FAMILY", "SCOPE", "build", "write", "entry_values",
           "design_from"]

PLANNED_SEEDS = 10  # fixed before the runs by the power analysis of chapter 7
FAMILY = "main: all claims of v1 and v2 on MNIST and Fashion-MNIST (SimpleCNN)"
SCOPE = ("SimpleCNN (GAP head), CPU, 2 epochs, 28 px, batch 128, Adam at the learning rate chosen on the "
         "validation split, training split minus 6 000 validation images, all 10 000 test images")
#: Non-inferiority margins of v2's "competitive accuracy", in accuracy (fraction), fixed before the runs:
#: about twice the seed-to-seed standard deviation of ``ce`` seen at three seeds (0.1 points on MNIST,
#: 0.3 on Fashion-MNIST) and well under the gap between the paper's models; a loss that costs less than
#: half a point on MNIST (one point on Fashion-MNIST) is "competitive" by any reading of the abstract.
MARGINS = {"mnist": 0.005, "fashion-mnist": 0.010}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a test (chapter 7): the record metric, the better direction, the kind of
    decision (``superiority`` or ``non-inferiority``) and, when the records cannot decide it, why."""

    id: str
    version: str
    text: str
    metric: str
    direction: str  # "greater" or "less": which way is better for the losses
    kind: str = "superiority"
    not_testable: str = ""


CLAIMS = (
    Claim("v1-accuracy", "v1", "the losses improve accuracy", "accuracy", "greater"),
    Claim("v2-accuracy", "v2", "competitive accuracy", "accuracy", "greater", "non-inferiority"),
    Claim("v1-reconstruction-l1", "v1", "better reconstruction quality: L1 to the class prototype", "l1", "less"),
    Claim("v1-reconstruction-ssim", "v1", "better reconstruction quality: SSIM to the class prototype (valid "
          "windows)", "ssim_valid", "greater"),
    Claim("v2-coherence", "v2", "more coherent saliency maps: within-class dispersion", "dispersion", "less"),
    Claim("v2-spurious", "v2", "suppresses spurious features", "decoy_reliance", "less",
          not_testable="decided on the Decoy grid (chapter 9), its own family"),
)


def _runs(rows: Sequence[Mapping], configs: Sequence[Any]) -> dict[tuple, dict[int, Mapping]]:
    """``{(dataset, objective): {seed: row}}`` of the verdict grid's trained runs that are recorded."""
    by_id = {r["run_id"]: r for r in rows}
    out: dict[tuple, dict[int, Mapping]] = {}
    for c in configs:
        if c.epochs and c.run_id in by_id:
            out.setdefault((c.dataset, c.objective), {})[c.seed] = by_id[c.run_id]
    return out


def entry_values(entry: Mapping, rows: Sequence[Mapping]) -> tuple[list[float], list[float]]:
    """The per-seed values ``(objective, ce)`` an entry was computed from, read again from ``rows`` by the run ids
    it lists (for an independent recomputation; chapter 7)."""
    by_id = {r["run_id"]: r for r in rows}
    return ([by_id[i][entry["metric"]] for i in entry["run_ids"]["objective"]],
            [by_id[i][entry["metric"]] for i in entry["run_ids"]["ce"]])


def design_from(rows: Sequence[Mapping], lr: float = 2e-3) -> dict[str, float]:
    """The spread seen before the verdict runs (chapter 7's power analysis): for each dataset, loss objective
    and tested metric, the standard deviation of the per-seed differences objective − ce of the first
    SimpleCNN grid (full data, 2 epochs, ``lr``, the paper's choices, three seeds).
    Keys ``dataset/objective/metric``."""
    from .report import mean_std

    cells: dict[tuple, dict[int, Mapping]] = {}
    for r in rows:
        plain = (r.get("model") == "simplecnn" and r.get("epochs") == 2 and r.get("lr") == lr
                 and not r.get("n_train") and not r.get("n_test") and not r.get("n_val")
                 and r.get("decoy", "none") == "none" and r.get("distance") == "l1"
                 and r.get("lambda_proto") == 1.0 and r.get("lambda_batchcam") == 1.0
                 and r.get("layer") == "features" and r.get("prototype_source", "train") == "train"
                 and r.get("stop_gradient", True) and r.get("cam_normalize", "max") == "max")
        if plain:
            cells.setdefault((r["dataset"], r["objective"]), {})[r["seed"]] = r
    out = {}
    for (dataset, objective), mine in cells.items():
        ce = cells.get((dataset, "ce"), {})
        seeds = sorted(set(mine) & set(ce))
        if objective == "ce" or len(seeds) < 2:
            continue
        for claim in CLAIMS:
            if claim.not_testable or any(claim.metric not in mine[s] for s in seeds):
                continue
            diffs = [mine[s][claim.metric] - ce[s][claim.metric] for s in seeds]
            out[f"{dataset}/{objective}/{claim.metric}"] = mean_std(diffs)[1]
    return out


def build(rows: Sequence[Mapping], configs: Sequence[Any], *, design: Optional[Mapping] = None,
          note: str = "", alpha: float = 0.05, bench: Optional[Mapping] = None,
          bench_name: Optional[str] = None) -> dict:
    """The verdicts file's content from ``load_runs`` rows and the verdict grid's configs (chapter 7).

    ``design``: ``{"dataset/objective/metric": sd of the paired differences}`` from the runs seen before
    (the power analysis), used for each entry's minimum detectable effect at n = 10. ``bench``: the
    benchmark record of the ``verdict`` preset (``results.latest_bench("cpu", preset="verdict")``) for the
    timing claims, a family of their own under ``"timing"`` (:mod:`batchcam.timing`); ``bench_name`` its
    file name.
    """
    from . import stats
    from .timing import timing_entries

    design, runs, entries = design or {}, _runs(rows, configs), []
    for claim in CLAIMS:
        for dataset in DATASETS:
            for objective in (o for o in OBJECTIVES if o != "ce"):
                margin = MARGINS[dataset] if claim.kind == "non-inferiority" else None
                e = {"claim": claim.id, "version": claim.version, "text": claim.text, "dataset": dataset,
                     "model": "simplecnn", "comparison": f"{objective} vs ce", "metric": claim.metric,
                     "direction": claim.direction, "kind": claim.kind, "margin": margin, "family": FAMILY,
                     "scope": SCOPE, "seeds_planned": PLANNED_SEEDS, "test": None, "n": 0, "effect": None,
                     "ci_low": None, "ci_high": None, "p": None, "p_holm": None, "mde": None,
                     "verdict": "not testable here", "note": claim.not_testable,
                     "run_ids": {"objective": [], "ce": []}}
                sd = design.get(f"{dataset}/{objective}/{claim.metric}")  # the spread planned on
                if sd:
                    e["mde"] = stats.min_detectable_effect(PLANNED_SEEDS, sd, alpha, paired=True,
                                                           alternative=claim.direction)
                entries.append(e)
                if claim.not_testable:
                    continue
                mine, ce = runs.get((dataset, objective), {}), runs.get((dataset, "ce"), {})
                seeds = sorted(set(mine) & set(ce))
                e["n"] = len(seeds)
                e["run_ids"] = {"objective": [mine[s]["run_id"] for s in seeds],
                                "ce": [ce[s]["run_id"] for s in seeds]}
                if len(seeds) < PLANNED_SEEDS:
                    e["verdict"] = "not established (underpowered)"
                    e["note"] = (f"{len(seeds)} of {PLANNED_SEEDS} pre-registered seeds recorded: not tested "
                                 "until all are in")
                    continue
                a = [mine[s][claim.metric] for s in seeds]
                b = [ce[s][claim.metric] for s in seeds]
                c = stats.compare(a, b, paired=True, alternative=claim.direction, margin=margin, alpha=alpha)
                e.update(test=c.test, effect=c.effect, ci_low=c.ci_low, ci_high=c.ci_high, p=c.p, _c=c)
    tested = [e for e in entries if "_c" in e]
    for e, q in zip(tested, stats.holm([e["p"] for e in tested]) if tested else []):
        c = dataclasses.replace(e.pop("_c"), p_holm=q)
        e["p_holm"] = q
        planned = e["margin"] or (MARGINS[e["dataset"]] if e["metric"] == "accuracy" else None)
        e["verdict"] = stats.decide(c, claim_direction=e["direction"], mde=e["mde"], planned_effect=planned,
                                    kind=e["kind"])
    for e in entries:  # JSON has no infinity: a one-sided interval's open end is null
        for k in ("ci_low", "ci_high", "mde"):
            if isinstance(e[k], float) and not math.isfinite(e[k]):
                e[k] = None
    return {"generated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "protocol": {"seeds_planned": PLANNED_SEEDS, "alpha": alpha, "family": FAMILY,
                         "correction": "Holm across the family", "test": "paired t (permutation below 5 pairs)",
                         "margins": MARGINS, "scope": SCOPE, "note": note},
            "design": dict(design), "entries": entries, "timing": timing_entries(bench, alpha, bench_name)}


def write(content: Mapping, path: Optional[Path] = None) -> Path:
    """Write ``results/verdicts.json`` atomically with its ``record_sha256`` (chapter 7)."""
    from ._helpers import atomic_write_json
    from .digest import with_hash
    from .results import results_root

    path = Path(path) if path is not None else results_root("runs").parent / "verdicts.json"
    return atomic_write_json(path, with_hash(dict(content)))
