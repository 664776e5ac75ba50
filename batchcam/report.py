"""Tables and verdicts of the reproduction, computed from the run records in ``results/`` (chapter 6).

Nothing here trains: everything is derived from :func:`batchcam.results.load_runs` rows, so a
table changes when a record is added or removed. For each cell of a table the best available
scale is used (GPU full data, then CPU full data, then the subsets), and the scale and device
are shown next to the numbers.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Iterable, Mapping, Optional, Sequence

__all__ = ["SCALE_PREFERENCE", "aggregate", "Table", "metric_table", "claims"]

#: Which records a table cell uses when several scales exist (first match wins).
SCALE_PREFERENCE = ("gpu-full", "cpu-full", "gpu-subset", "cpu-subset")
GROUP = ("dataset", "model", "objective")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(rows: Iterable[Mapping], metrics: Sequence[str] = ("accuracy", "l1", "l2", "ssim",
                                                                   "train_time_per_epoch_s", "gradcam_batch_s",
                                                                   "gradcam_loop_s_scaled"),
              distance: str = "l1") -> dict[tuple, dict]:
    """Mean ± std over seeds per (dataset, model, objective), at the preferred scale.

    Only records with the default λ's and the given ``distance`` count (the paper grid). Returns
    ``{(dataset, model, objective): {"n": seeds, "scale", "device", "epochs", "n_train",
    "image_size", "run_ids", metric: (mean, std) ...}}``.
    """
    by_scale: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("distance") != distance or r.get("lambda_proto") != 1.0 or r.get("lambda_batchcam") != 1.0:
            continue
        by_scale[tuple(r[k] for k in GROUP)][r["scale"]].append(r)
    out = {}
    for key, scales in by_scale.items():
        scale = next((s for s in SCALE_PREFERENCE if s in scales), sorted(scales)[0])
        runs = scales[scale]
        # one configuration per cell: the most common (epochs, n_train) among this scale's records
        budgets = defaultdict(list)
        for r in runs:
            budgets[(r["epochs"], r["n_train"], r["image_size"])].append(r)
        runs = max(budgets.values(), key=len)
        cell = {"n": len(runs), "scale": scale, "device": runs[0]["device_name"] or runs[0]["device"],
                "epochs": runs[0]["epochs"], "n_train": runs[0]["n_train"], "image_size": runs[0]["image_size"],
                "run_ids": sorted(r["run_id"] for r in runs)}
        for m in metrics:
            vals = [r[m] for r in runs if r.get(m) is not None]
            cell[m] = _mean_std(vals) if vals else None
        out[key] = cell
    return out


class Table:
    """A small table that shows as HTML in a notebook and as aligned text elsewhere."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> None:
        self.header, self.rows, self.caption = list(header), [list(r) for r in rows], caption

    def __repr__(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        body = [line(self.header), "  ".join("-" * w for w in widths)] + [line(r) for r in self.rows]
        return "\n".join(([self.caption] if self.caption else []) + body)

    def _repr_html_(self) -> str:
        esc = lambda c: html.escape(str(c))  # noqa: E731
        head = "".join(f"<th>{esc(c)}</th>" for c in self.header)
        body = "".join("<tr>" + "".join(f'<td style="white-space:nowrap">{esc(c)}</td>' for c in r) + "</tr>"
                       for r in self.rows)
        cap = f"<caption>{esc(self.caption)}</caption>" if self.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(stat: Optional[tuple[float, float]], digits: int, scale: float = 1.0) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def metric_table(agg: Mapping[tuple, dict], columns: Mapping[str, tuple[str, int, float]],
                 caption: str = "") -> Table:
    """One row per (dataset, model, objective) present in ``agg``; ``columns`` maps a header to
    ``(metric, digits, scale)``. The last columns name the scale, seeds and budget; the caption names the
    device(s)."""
    devices = sorted({str(cell["device"]) for cell in agg.values()})
    header = ["dataset", "model", "objective", *columns, "scale", "seeds", "budget"]
    rows = []
    for (ds, model, obj), cell in sorted(agg.items()):
        budget = f"{cell['epochs']} ep" + (f" · {cell['n_train']} img" if cell["n_train"] else " · all") + \
                 f" · {cell['image_size']} px"
        rows.append([ds, model, obj, *(_fmt(cell.get(m), d, s) for m, d, s in columns.values()),
                     cell["scale"], cell["n"], budget])
    return Table(header, rows, f"{caption} (device: {', '.join(devices)})" if caption else "")


def _compare(agg: Mapping[tuple, dict], metric: str, better: str, a: str = "ce+proto+batchcam",
             b: str = "ce") -> tuple[int, int, list[str], bool]:
    """Count (dataset, model) pairs where objective ``a`` beats ``b`` on ``metric`` by more than the
    larger of their seed standard deviations; return (wins, pairs compared, evidence lines, whether
    any compared cell has a single seed)."""
    wins, pairs, lines, single = 0, 0, [], False
    for (ds, model) in sorted({(k[0], k[1]) for k in agg}):
        ca, cb = agg.get((ds, model, a)), agg.get((ds, model, b))
        if not ca or not cb or ca.get(metric) is None or cb.get(metric) is None:
            continue
        (ma, sa), (mb, sb) = ca[metric], cb[metric]
        diff = ma - mb if better == "higher" else mb - ma
        margin = max(sa, sb)
        won = diff > margin
        pairs += 1
        wins += won
        single = single or min(ca["n"], cb["n"]) < 2
        lines.append(f"{ds}/{model}: {a} {ma:.4g} vs {b} {mb:.4g} ({'better' if won else 'not better'}; "
                     f"margin {margin:.2g}, seeds {ca['n']}/{cb['n']}, {ca['scale']})")
    return wins, pairs, lines, single


def _verdict(wins: int, pairs: int, single: bool = False) -> str:
    if pairs == 0:
        return "not testable at this scale"
    verdict = "supported" if wins > pairs / 2 else "not supported"
    return verdict + (" (weak: some cells have a single seed, so no spread to beat)" if single else "")


def claims(agg: Mapping[tuple, dict]) -> list[dict]:
    """The paper's claims with a verdict from the records: ``[{"claim", "verdict", "evidence": [...]}, ...]``.

    A claim is *supported* when ``ce+proto+batchcam`` beats ``ce`` by more than the seed spread in a
    majority of the (dataset, model) pairs with records, *not supported* otherwise.
    """
    out = []
    w, p, ev, single = _compare(agg, "accuracy", "higher")
    out.append({"claim": "better accuracy than cross-entropy", "verdict": _verdict(w, p, single), "evidence": ev})
    w1, p1, ev1, s1 = _compare(agg, "l1", "lower")
    w2, p2, ev2, s2 = _compare(agg, "ssim", "higher")
    out.append({"claim": "better reconstruction quality (L1 and SSIM)",
                "verdict": _verdict(min(w1, w2), p1, s1 or s2), "evidence": ev1 + ev2})
    w, p, ev, single = _compare(agg, "train_time_per_epoch_s", "lower")
    out.append({"claim": "lower training time per epoch", "verdict": _verdict(w, p, single), "evidence": ev})
    speed = [f"{k[0]}/{k[1]}/{k[2]}: loop/batch = {c['gradcam_loop_s_scaled'][0] / c['gradcam_batch_s'][0]:.1f}x "
             f"({c['scale']})" for k, c in sorted(agg.items())
             if c.get("gradcam_loop_s_scaled") and c.get("gradcam_batch_s") and k[2] == "ce+proto+batchcam"]
    faster = sum(1 for line in speed if float(line.split("= ")[1].split("x")[0]) > 1)
    out.append({"claim": "lower Grad-CAM inference time (batch vs per-image)",
                "verdict": _verdict(faster, len(speed)), "evidence": speed})
    return out


def reconstruction_figure(agg: Mapping[tuple, dict], dataset: str, model: str, root=None):
    """Average reconstruction per class of each objective (first seed of the cell), with the prototypes
    in the last row — the paper's Figures 2–7 for one (dataset, model). Returns a Figure."""
    from .data import class_names
    from .plots import reconstruction_rows
    from .results import DEFAULT_ROOT, load_tensors

    rows, protos, scale = {}, None, ""
    for (ds, m, obj), cell in sorted(agg.items()):
        if (ds, m) != (dataset, model):
            continue
        t = load_tensors(cell["run_ids"][0], root or DEFAULT_ROOT)
        rows[obj] = t["average_reconstruction"].float()
        protos, scale = t["prototypes"].float()[:, 0], f"{cell['scale']}, {cell['image_size']} px"
    if not rows:
        raise ValueError(f"no records for {dataset}/{model}")
    fig = reconstruction_rows({**rows, "prototype": protos}, class_names(dataset))
    fig.suptitle(f"{dataset} · {model} ({scale})", fontsize=9, y=1.02)
    return fig


def latest_bench(device_type: str = "cpu", root=None) -> Optional[dict]:
    """The newest full (non ``--quick``) benchmark record of ``python -m batchcam bench`` for a device
    type, from ``results/bench/`` (chapter 3); ``None`` when there is none."""
    import json
    from pathlib import Path

    from .results import DEFAULT_ROOT

    folder = Path(root) if root is not None else Path(DEFAULT_ROOT).parent / "bench"
    paths = sorted(p for p in folder.glob(f"bench-{device_type}-*.json") if not p.stem.endswith("-quick"))
    return json.loads(paths[-1].read_text()) if paths else None


def bench_rows(record: Mapping, model: str, image_size: int) -> list[dict]:
    """``[{"method", "batch_size", "ms"}, ...]`` of one model in a benchmark record, for
    :func:`batchcam.plots.timing_plot`."""
    return [{"method": method, "batch_size": e["batch_size"], "ms": t["median_ms"]}
            for e in record["cam"] if e["model"] == model and e["image_size"] == image_size
            for method, t in e["timings"].items() if t.get("median_ms") is not None]
