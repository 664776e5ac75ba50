"""Tables of the reproduction, computed from the records only (chapters 6–9).

Nothing here trains. Each (dataset, model, objective) cell uses the best scale recorded; baselines
(blank map, input image, untrained model) sit in the same tables, computed by the same code. A cell
*votes* in the descriptive claims table (:mod:`batchcam.claims`) only with ≥ ``MIN_SEEDS`` seeds at a
non-smoke scale (full data, or a subset of ≥ ``MIN_SUBSET`` training images); smoke cells are shown,
never counted. The pre-registered verdicts are :mod:`batchcam.verdicts`' job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Optional, Sequence

from .table import Table

__all__ = ["beats", "fmt", "mean_std", "seed_cell", "aggregate", "Table", "metric_table", "collapsed",
           "reconstruction_figure", "faithfulness_table", "SCALE_PREFERENCE", "RECIPE"]

SCALE_PREFERENCE = ("gpu-full", "cpu-full", "gpu-subset", "cpu-subset")
MIN_SEEDS, MIN_SUBSET, COLLAPSE = 3, 10_000, 0.5
MAP_METRICS = ("l1", "l2", "ssim", "dead_fraction", "dispersion", "corr_image", "corr_prototype")
REFERENCE_MAPS = ("maps", "random", "blob", "input", "prototype")  # faithfulness: Grad-CAM + references
METRICS = ("accuracy", *MAP_METRICS, "train_time_per_epoch_s", "gradcam_batch_s", "gradcam_loop_s_scaled",
           "session_wall_s", *(f"{b}_{m}" for b in ("blank", "input") for m in MAP_METRICS),
           *(f"{k}_{r}" for r in REFERENCE_MAPS for k in ("deletion", "insertion")))
LOSS_OBJECTIVES = ("ce+proto", "ce+batchcam", "ce+proto+batchcam")
ORDER = {o: i for i, o in enumerate(("ce",) + LOSS_OBJECTIVES + ("random model",))}
#: What two cells must share to be averaged together or compared: budget and training recipe.
RECIPE = ("n_train", "n_test", "epochs", "image_size", "optimizer", "lr", "batch_size")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value) of seed values (chapter 7)."""
    n, mean = len(values), sum(values) / len(values)
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def _cell_name(row: Mapping) -> str:
    return "random model" if row["epochs"] == 0 else row["objective"]


def aggregate(rows: Iterable[Mapping], distance: str = "l1", stale: Iterable[str] = ()) -> dict[tuple, dict]:
    """Mean ± std over seeds per (dataset, model, objective) at the preferred scale.

    Only records with λ = 1, the given ``distance``, the model's default Grad-CAM layer and no
    chapter-7 option (decoy, prototype source, stop-gradient, normalisation) count; ``epochs=0``
    records form the ``"random model"`` cell. Within a scale, the seeds of one budget and recipe
    (subset, epochs, size, optimiser, lr, batch) are averaged: a complete one (≥ 3 seeds) first,
    then the grid's current recipe (``grid.MODEL_DEFAULTS``), then the most seeds. ``stale``:
    run ids that ``staleness.stale_records`` flags. Cell: ``{"n", "scale", "votes", "epochs", "n_train",
    "n_test", "image_size", "device", "run_ids", "collapsed": seeds ≥ 50 % dead, "stale", metric: (mean, std)}``.
    """
    from .config import LATER_FIELDS
    from .grid import MODEL_DEFAULTS
    from .models import default_target_layer
    stale, cells = set(stale), defaultdict(lambda: defaultdict(list))
    current = lambda r: all(r.get(k) == v for k, v in MODEL_DEFAULTS.get(r["model"], {}).items()  # noqa: E731
                            if k not in ("epochs", "image_size"))  # the grid's recipe now
    for r in rows:
        paper = r.get("lambda_proto") == r.get("lambda_batchcam") == 1.0 and r.get("distance") == distance
        paper = paper and all(r.get(k, v) == v for k, v in LATER_FIELDS.items())
        if paper and r.get("layer") in (None, default_target_layer(r["model"])):  # not an ablation
            cells[(r["dataset"], r["model"], _cell_name(r))][r["scale"]].append(r)
    out = {}
    for key, scales in cells.items():
        scale = next((s for s in SCALE_PREFERENCE if s in scales), sorted(scales)[0])
        budgets = defaultdict(list)
        for r in scales[scale]:
            budgets[tuple(r.get(k) for k in RECIPE)].append(r)
        runs = max(budgets.values(), key=lambda rs: (len(rs) >= MIN_SEEDS, current(rs[0]), len(rs), rs[0]["epochs"]))
        r0, cell = runs[0], seed_cell(runs, METRICS)  # every run here has scale == r0["scale"]
        cell.update({k: r0.get(k) for k in ("epochs", "n_train", "n_test", "image_size", "lr", "batch_size",
                                            "optimizer")}, device=r0["device_name"] or r0["device"],
                    collapsed=sum(r["dead_fraction"] >= COLLAPSE for r in runs),
                    stale=sum(r["run_id"] in stale for r in runs))
        out[key] = cell
    return out


def seed_cell(runs: Sequence[Mapping], metrics: Iterable[str],
              value: Callable[[Mapping, str], Optional[float]] = lambda r, m: r.get(m)) -> dict:
    """One cell from its seeds' rows (chapters 7–9): ``{"n", "votes", "scale", "run_ids", metric: (mean, std)
    or None}``; ``value(row, metric)`` reads a metric. Votes: ≥ ``MIN_SEEDS`` seeds, ≥ ``MIN_SUBSET`` images."""
    smoke = bool(runs[0]["n_train"]) and runs[0]["n_train"] < MIN_SUBSET
    cell = {"n": len(runs), "votes": len(runs) >= MIN_SEEDS and not smoke,
            "scale": runs[0]["scale"] + (" (smoke)" if smoke else ""), "run_ids": sorted(r["run_id"] for r in runs)}
    for m in metrics:
        vals = [v for v in (value(r, m) for r in runs) if v is not None]
        cell[m] = mean_std(vals) if vals else None
    return cell


def fmt(stat: Optional[tuple[float, float]], digits: int, scale: float = 1.0) -> str:
    """``"mean ± std"`` of a ``(mean, std)`` cell statistic times ``scale``, "—" if None (chapters 7–9)."""
    return "—" if stat is None else f"{stat[0] * scale:.{digits}f} ± {stat[1] * scale:.{digits}f}"


def _budget(cell: Mapping) -> str:
    k = lambda n: "all" if not n else f"{n / 1000:g}k"  # noqa: E731
    lr = f" · lr {cell['lr']:g}" if cell.get("lr") and cell.get("epochs") else ""
    return f"{cell['epochs']} ep · {k(cell['n_train'])} / {k(cell.get('n_test'))} img · {cell['image_size']} px{lr}"


def _sorted(agg: Mapping[tuple, dict]) -> list:
    return sorted(agg.items(), key=lambda kv: (kv[0][:2], ORDER.get(kv[0][2], 9)))


def metric_table(agg: Mapping[tuple, dict], columns: Mapping[str, tuple[str, int, float]],
                 caption: str = "", baselines: bool = True, dead: bool = True) -> Table:
    """One row per cell of ``agg`` (objectives, random model, then — if ``baselines`` and a column has
    them — blank map and input image per (dataset, model)); ``columns``: header → ``(metric, digits,
    scale)``; ``dead`` adds the dead-map column. Then seeds, scale (``†``: a stale record), budget
    (epochs · train / test images · size). ``⚠ collapsed``: some seed has ≥ 50 % dead maps (chapters 6–8)."""
    columns = dict(columns)
    if dead and not any(m == "dead_fraction" for m, _, _ in columns.values()):
        columns["dead maps (%)"] = ("dead_fraction", 1, 100)
    rows, items = [], _sorted(agg)
    for i, ((ds, model, obj), cell) in enumerate(items):
        flag = f" ⚠ collapsed ({cell['collapsed']}/{cell['n']})" if cell["collapsed"] else ""
        rows.append([ds, model, obj + flag, *(fmt(cell.get(m), d, s) for m, d, s in columns.values()),
                     cell["n"], cell["scale"] + (" †" if cell.get("stale") else ""), _budget(cell)])
        if not baselines or (i + 1 < len(items) and items[i + 1][0][:2] == (ds, model)):
            continue  # baseline rows close each (dataset, model) group
        group = [c for k, c in items if k[:2] == (ds, model)]
        ref = next((c for c in reversed(group) if c.get("blank_l1")), None)
        if ref is None or not any(f"blank_{m}" in METRICS for m, _, _ in columns.values() if m != "dead_fraction"):
            continue
        for kind in ("blank", "input"):
            vals = [fmt(ref.get(f"{kind}_{m}"), d, s) for m, d, s in columns.values()]
            rows.append([ds, model, "blank map" if kind == "blank" else "input image", *vals,
                         "—", "baseline", "same test images"])
    return Table(["dataset", "model", "objective", *columns, "seeds", "scale", "budget"], rows, caption)


def collapsed(agg: Mapping[tuple, dict]) -> list[str]:
    """Cells where some seeds collapsed (≥ 50 % dead maps): ``"dataset/model/objective: k of n"``
    (chapters 6 and 7)."""
    return [f"{ds}/{m}/{o}: {c['collapsed']} of {c['n']} seeds"
            for (ds, m, o), c in sorted(agg.items()) if c["collapsed"]]


def beats(a: Optional[tuple], b: Optional[tuple], better: str) -> Optional[bool]:
    """Whether ``(mean, std)`` ``a`` beats ``b`` (``better``: "higher" or "lower") by more than the
    larger std: chapter 7's rule. None when either is missing."""
    return None if a is None or b is None else (a[0] - b[0] if better == "higher" else b[0] - a[0]) > max(a[1], b[1])


def faithfulness_table(agg: Mapping[tuple, dict], dataset: str, caption: str = "") -> Table:
    """Deletion ↓ / insertion ↑ AUC (means over seeds) of each trained cell's Grad-CAM maps and of the
    reference maps, for one dataset; "beats Grad-CAM" names the references better on deletion or
    insertion by more than the larger seed std (chapters 7 and 8)."""
    rows = []
    for (ds, model, obj), cell in _sorted(agg):
        if ds != dataset or obj == "random model" or cell.get("deletion_maps") is None:
            continue
        vals = [f"{cell[f'deletion_{r}'][0]:.3f} / {cell[f'insertion_{r}'][0]:.3f}" for r in REFERENCE_MAPS]
        beat = [r for r in REFERENCE_MAPS[1:]
                if beats(cell[f"deletion_{r}"], cell["deletion_maps"], "lower")
                or beats(cell[f"insertion_{r}"], cell["insertion_maps"], "higher")]
        rows.append([model, obj, *vals, ", ".join(beat) or "none", cell["n"],
                     cell["scale"] + (" †" if cell.get("stale") else "")])
    return Table(["model", "objective", "Grad-CAM", *REFERENCE_MAPS[1:], "beats Grad-CAM", "seeds", "scale"],
                 rows, caption)


def reconstruction_figure(agg: Mapping[tuple, dict], dataset: str, model: str, root=None):
    """Average reconstruction per class of each objective and of the untrained model (first seed of
    each cell), prototypes last: the paper's Figures 2–7 for one (dataset, model) (chapter 7)."""
    from .data import class_names
    from .plots import reconstruction_rows
    from .results import load_tensors

    rows, protos, scales = {}, None, []
    for (ds, m, obj), cell in _sorted(agg):
        if (ds, m) == (dataset, model):
            t = load_tensors(cell["run_ids"][0], root)
            rows[obj], protos = t["average_reconstruction"], t["prototypes"]
            if obj != "random model":
                scales.append(f"{cell['scale']}{' †' * bool(cell['stale'])}, {cell['image_size']} px")
    if not rows:
        raise ValueError(f"no records for {dataset}/{model}")
    fig = reconstruction_rows({**rows, "prototype": protos}, class_names(dataset))
    fig.suptitle(f"{dataset} · {model} ({'; '.join(sorted(set(scales))) or 'untrained only'})")
    return fig
