"""Tables and verdicts of the reproduction, computed from the records only (chapters 5 and 6).

Nothing here trains. For each (dataset, model, objective) cell the best available scale is used
(GPU full data, CPU full data, then subsets); baselines (blank map, input image, untrained
model) sit in the same tables, computed by the same code as the models' numbers.

The verdict rule (chapter 6 states it too): a cell *votes* only with ≥ ``MIN_SEEDS`` seeds at a
non-smoke scale (full data, or a subset of ≥ ``MIN_SUBSET`` training images); smoke cells are
shown, never counted. "A beats B" means the difference of means exceeds the larger of the two
seed standard deviations. A claim is *supported* when it holds in every voting (dataset, model)
pair, *mixed* when in some, *not supported* when in none, *not testable* without voting pairs.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence

__all__ = ["aggregate", "Table", "metric_table", "claims", "collapsed", "reconstruction_figure",
           "SCALE_PREFERENCE"]

SCALE_PREFERENCE = ("gpu-full", "cpu-full", "gpu-subset", "cpu-subset")
MIN_SEEDS, MIN_SUBSET, COLLAPSE = 3, 10_000, 0.5
METRICS = ("accuracy", "l1", "l2", "ssim", "dead_fraction", "dispersion", "corr_image", "corr_prototype",
           "train_time_per_epoch_s", "blank_l1", "blank_ssim", "input_l1", "input_ssim")
LOSS_OBJECTIVES = ("ce+proto", "ce+batchcam", "ce+proto+batchcam")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def _cell_name(row: Mapping) -> str:
    return "random model" if row["epochs"] == 0 else row["objective"]


def aggregate(rows: Iterable[Mapping], distance: str = "l1") -> dict[tuple, dict]:
    """Mean ± std over seeds per (dataset, model, objective) at the preferred scale.

    Only default-λ records with the given ``distance`` count; ``epochs=0`` records form the
    ``"random model"`` cell. Each cell: ``{"n", "scale", "votes", "epochs", "n_train",
    "image_size", "device", "run_ids", "collapsed": seeds with ≥ 50 % dead maps, metric: (mean,
    std), ...}``.
    """
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("distance") == distance and r.get("lambda_proto") == 1.0 and r.get("lambda_batchcam") == 1.0:
            cells[(r["dataset"], r["model"], _cell_name(r))][r["scale"]].append(r)
    out = {}
    for key, scales in cells.items():
        scale = next((s for s in SCALE_PREFERENCE if s in scales), sorted(scales)[0])
        budgets = defaultdict(list)
        for r in scales[scale]:
            budgets[(r["n_train"], r["image_size"], r["epochs"])].append(r)
        runs = max(budgets.values(), key=lambda rs: (len(rs), rs[0]["epochs"]))
        r0 = runs[0]
        smoke = bool(r0["n_train"]) and r0["n_train"] < MIN_SUBSET
        cell = {"n": len(runs), "scale": scale + (" (smoke)" if smoke else ""),
                "votes": len(runs) >= MIN_SEEDS and not smoke, "epochs": r0["epochs"],
                "n_train": r0["n_train"], "image_size": r0["image_size"],
                "device": r0["device_name"] or r0["device"], "run_ids": sorted(r["run_id"] for r in runs),
                "collapsed": sum(r["dead_fraction"] >= COLLAPSE for r in runs)}
        for m in METRICS:
            vals = [r[m] for r in runs if r.get(m) is not None]
            cell[m] = _mean_std(vals) if vals else None
        out[key] = cell
    return out


class Table:
    """A table that shows as HTML in a notebook (right-aligned numbers, scrolls on a phone) and
    as aligned text elsewhere (nbval compares that)."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        self.header, self.rows, self.caption = list(header), [[str(c) for c in r] for r in rows], caption

    def __repr__(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        body = [line(self.header), "  ".join("-" * w for w in widths)] + [line(r) for r in self.rows]
        return "\n".join(([self.caption] if self.caption else []) + body)

    def _repr_html_(self) -> str:
        def td(c: str, tag: str = "td") -> str:
            num = c[:1].isdigit() or c[:1] in "−-+." and c[1:2].isdigit()
            style = "padding:2px 8px;white-space:nowrap;text-align:" + ("right" if num else "left")
            return f'<{tag} style="{style}">{html.escape(c)}</{tag}>'
        head = "".join(td(c, "th") for c in self.header)
        body = "".join("<tr>" + "".join(td(c) for c in r) + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<div style="overflow-x:auto;max-width:100%"><table style="border-collapse:collapse">'
                f"{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _fmt(stat: Optional[tuple[float, float]], digits: int, scale: float = 1.0) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def metric_table(agg: Mapping[tuple, dict], columns: Mapping[str, tuple[str, int, float]],
                 caption: str = "", baselines: bool = True) -> Table:
    """One row per cell of ``agg`` (objectives, then the random model, then the blank-map and
    input-image baselines per (dataset, model) when ``baselines``); ``columns`` maps a header to
    ``(metric, digits, scale)``. The last columns give seeds, scale and budget."""
    order = {o: i for i, o in enumerate(("ce",) + LOSS_OBJECTIVES + ("random model",))}
    rows = []
    for (ds, model, obj), cell in sorted(agg.items(), key=lambda kv: (kv[0][:2], order.get(kv[0][2], 9))):
        budget = (f"{cell['epochs']} ep · " + (f"{cell['n_train']} img" if cell["n_train"] else "all")
                  + f" · {cell['image_size']} px")
        flag = " ⚠ collapsed" if cell["collapsed"] else ""
        rows.append([ds, model, obj + flag, *(_fmt(cell.get(m), d, s) for m, d, s in columns.values()),
                     cell["n"], cell["scale"], budget])
        if baselines and obj == "random model" or (baselines and obj == "ce" and
                                                   (ds, model, "random model") not in agg):
            for kind in ("blank", "input"):
                vals = [_fmt(cell.get(f"{kind}_{m}"), d, s) if f"{kind}_{m}" in METRICS
                        else ("100.0 ± 0.0" if (kind, m) == ("blank", "dead_fraction") else "—")
                        for m, d, s in columns.values()]
                rows.append([ds, model, f"{kind} map" if kind == "blank" else "input image", *vals,
                             "—", "baseline", "same test set"])
    return Table(["dataset", "model", "objective", *columns, "seeds", "scale", "budget"], rows, caption)


def collapsed(agg: Mapping[tuple, dict]) -> list[str]:
    """Cells where some seeds collapsed (≥ 50 % dead maps): ``"dataset/model/objective: k of n"``."""
    return [f"{ds}/{m}/{o}: {c['collapsed']} of {c['n']} seeds" for (ds, m, o), c in sorted(agg.items())
            if c["collapsed"]]


def _beats(a: Optional[tuple], b: Optional[tuple], better: str) -> Optional[bool]:
    if a is None or b is None:
        return None
    diff = a[0] - b[0] if better == "higher" else b[0] - a[0]
    return diff > max(a[1], b[1])


def _verdict(results: list[bool]) -> str:
    if not results:
        return "not testable (no cell with ≥ 3 seeds at a non-smoke scale)"
    return "supported" if all(results) else "mixed" if any(results) else "not supported"


def _pairs(agg: Mapping[tuple, dict], objective: str):
    """Voting (dataset, model) pairs with both ``ce`` and ``objective``: (key, ce cell, cell)."""
    for (ds, model) in sorted({k[:2] for k in agg}):
        ce, other = agg.get((ds, model, "ce")), agg.get((ds, model, objective))
        if ce and other and ce["votes"] and other["votes"]:
            yield f"{ds}/{model}", ce, other


def claims(agg: Mapping[tuple, dict], bench: Optional[Mapping] = None,
           objective: str = "ce+proto+batchcam") -> list[dict]:
    """The claims of arXiv v1 and v2 with a verdict each, from the records (chapter 6).

    ``bench``: ratios from chapter 3's controlled benchmark, ``{"batch_vs_loop": x,
    "train_overhead": y}`` (loop time / batch time; loss-step time / ce-step time), or None.
    Returns ``[{"version", "claim", "test", "verdict", "evidence": [...]}, ...]``.
    """
    out = []

    def add(version, claim, test, results, evidence):
        out.append({"version": version, "claim": claim, "test": test, "verdict": _verdict(results),
                    "evidence": evidence})

    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        res.append(bool(_beats(c["accuracy"], ce["accuracy"], "higher")))
        ev.append(f"{name}: {c['accuracy'][0]:.2%} vs ce {ce['accuracy'][0]:.2%}")
    add("v1", "better accuracy", f"{objective} beats ce by more than the seed spread", res, ev)
    comp = [c["accuracy"][0] >= ce["accuracy"][0] - 0.005 - max(c["accuracy"][1], ce["accuracy"][1])
            for _, ce, c in _pairs(agg, objective)]
    add("v2", "competitive accuracy", "within 0.5 points (plus the seed spread) of ce", comp, ev)
    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        refs = {"ce": ce, "blank": {"l1": ce.get("blank_l1"), "ssim": ce.get("blank_ssim")},
                "input": {"l1": ce.get("input_l1"), "ssim": ce.get("input_ssim")}}
        rand = agg.get((name.split("/")[0], name.split("/")[1], "random model"))
        if rand:
            refs["random model"] = rand
        won = {k: bool(_beats(c["l1"], r["l1"], "lower")) and bool(_beats(c["ssim"], r["ssim"], "higher"))
               for k, r in refs.items()}
        res.append(all(won.values()))
        ev.append(f"{name}: L1 {c['l1'][0]:.3f}, SSIM {c['ssim'][0]:.3f}; beats "
                  + ", ".join(f"{k} {'yes' if w else 'no'}" for k, w in won.items()))
    add("v1", "better reconstruction quality", "beats ce, the blank map, the input image and the "
        "untrained model on L1 and SSIM (circular: L_P trains on this distance)", res, ev)
    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        tighter = bool(_beats(c["dispersion"], ce["dispersion"], "lower"))
        follows = c["corr_image"][0] >= ce["corr_image"][0] - max(c["corr_image"][1], ce["corr_image"][1])
        res.append(tighter and follows)
        ev.append(f"{name}: dispersion {c['dispersion'][0]:.4f} vs ce {ce['dispersion'][0]:.4f}; "
                  f"corr(map, own image) {c['corr_image'][0]:.3f} vs {ce['corr_image'][0]:.3f}; "
                  f"corr(map, prototype) {c['corr_prototype'][0]:.3f} vs {ce['corr_prototype'][0]:.3f}")
    add("v2", "more coherent saliency maps", "lower within-class dispersion than ce, without "
        "following the own image less (else a class template wins for free)", res, ev)
    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        res.append(bool(_beats(c["train_time_per_epoch_s"], ce["train_time_per_epoch_s"], "lower")))
        ev.append(f"{name}: {c['train_time_per_epoch_s'][0]:.1f} s/epoch vs ce "
                  f"{ce['train_time_per_epoch_s'][0]:.1f} s")
    add("v1", "lower training time", "s/epoch below ce's (per-run records)", res, ev)
    ratio = (bench or {}).get("train_overhead")
    add("v2", "minimal computational overhead", "loss step ≤ 1.25 × the ce step (chapter 3's benchmark)",
        [ratio <= 1.25] if ratio else [], [f"training step time ratio {ratio:.2f}×"] if ratio else [])
    speed = (bench or {}).get("batch_vs_loop")
    add("v1", "lower inference time", "batch Grad-CAM faster than the per-image loop (chapter 3)",
        [speed > 1] if speed else [], [f"loop / batch = {speed:.1f}×"] if speed else [])
    add("v2", "suppresses spurious features", "decoy-patch relevance and accuracy (chapter 7)", [],
        ["tested in chapter 7 (Decoy-MNIST), not from the paper grid"])
    return out


def reconstruction_figure(agg: Mapping[tuple, dict], dataset: str, model: str, root=None):
    """Average reconstruction per class of each objective (first seed of the cell) with the
    prototypes in the last row: the paper's Figures 2–7 for one (dataset, model) (chapter 6)."""
    from .data import class_names
    from .plots import reconstruction_rows
    from .results import load_tensors

    rows, protos, scale = {}, None, ""
    for (ds, m, obj), cell in sorted(agg.items()):
        if (ds, m) == (dataset, model) and obj != "random model":
            t = load_tensors(cell["run_ids"][0], root)
            rows[obj] = t["average_reconstruction"]
            protos, scale = t["prototypes"], f"{cell['scale']}, {cell['image_size']} px"
    if not rows:
        raise ValueError(f"no records for {dataset}/{model}")
    fig = reconstruction_rows({**rows, "prototype": protos}, class_names(dataset))
    fig.suptitle(f"{dataset} · {model} ({scale})", y=1.02)
    return fig
