"""The claims of arXiv v1 and v2 read by the first records' descriptive rule (chapter 7).

This is the rule the pre-registered verdicts (:mod:`batchcam.verdicts`, :mod:`batchcam.timing`)
replace; chapter 7 keeps its table to show what it said and why it is not evidence (with three seeds,
"the difference of means exceeds the larger seed standard deviation" calls a difference between two
groups drawn from one distribution in about one experiment in five: ``batchcam.stats.old_rule``).

The rule: a cell *votes* only with ≥ ``report.MIN_SEEDS`` seeds at a non-smoke scale (full data, or a
subset of ≥ ``report.MIN_SUBSET`` training images); smoke cells are shown, never counted. "A beats B"
means the difference of means exceeds the larger of the two seed standard deviations. A claim is
*supported* when it holds in every voting (dataset, model) pair, *mixed* when in some, *not supported*
when in none, *not testable* without voting pairs. Speed claims read chapter 3's controlled benchmark
(:func:`bench_ratios`), never per-run timings: each measured configuration votes, and a time beats
another (or a threshold) only by more than the larger of their interquartile ranges over repeated calls.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .report import RECIPE, beats, fmt

__all__ = ["verdict", "claims", "bench_ratios", "NO_VOTES", "OVERHEAD_MAX"]

NO_VOTES = "no cell with ≥ 3 seeds at a non-smoke scale"
OVERHEAD_MAX = 1.25  # the descriptive rule's overhead threshold (the verdict's is batchcam.timing's)


def verdict(results: list[bool], missing: str = NO_VOTES) -> str:
    """Supported (every voting pair), mixed (some), not supported (none), not testable (no pair); chapter 7."""
    return (f"not testable ({missing})" if not results else "supported" if all(results)
            else "mixed" if any(results) else "not supported")


def _pairs(agg: Mapping[tuple, dict], objective: str, voting: bool = True):
    """(dataset, model) pairs with both ``ce`` and ``objective`` that vote (or, with ``voting=False``,
    that do not): ("dataset/model", ce cell, cell). A pair votes when both cells vote at the same
    scale and budget (a full-data cell is never compared with a subset cell)."""
    for (ds, model) in sorted({k[:2] for k in agg}):
        ce, other = agg.get((ds, model, "ce")), agg.get((ds, model, objective))
        if ce and other and (ce["votes"] and other["votes"] and all(
                ce.get(k) == other.get(k) for k in ("scale", *RECIPE))) == voting:
            yield f"{ds}/{model}", ce, other


def _ratios(bench: Optional[Mapping], key: str) -> list[tuple[str, float, float]]:
    v = (bench or {}).get(key)
    return [] if v is None else [("benchmark", v, 0.0)] if isinstance(v, (int, float)) else list(v)


def claims(agg: Mapping[tuple, dict], bench: Optional[Mapping] = None,
           objective: str = "ce+proto+batchcam", spurious: Optional[dict] = None) -> list[dict]:
    """The claims of arXiv v1 and v2 with a verdict each, from the records (chapter 7).

    ``bench``: chapter 3's benchmark as :func:`bench_ratios` returns it, ``{"batch_vs_loop": [(label,
    loop / batch, spread)], "train_overhead": [(label, loss step / ce step, spread)]}`` (or one number).
    ``spurious``: chapter 9's verdict (``batchcam.spurious.spurious_verdict``), last.
    Returns ``[{"version", "claim", "test", "verdict", "evidence": [...]}, ...]``.
    """
    out = []
    shown = [f"{name}: shown, not counted (ce {ce['n']} seed(s) {ce['scale']}; {objective} {c['n']} "
             f"seed(s) {c['scale']})" for name, ce, c in _pairs(agg, objective, voting=False)]

    def add(version, claim, test, results, evidence, missing=NO_VOTES, data=True):
        out.append({"version": version, "claim": claim, "test": test, "verdict": verdict(results, missing),
                    "evidence": evidence + (shown if data else [])})

    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        res.append(bool(beats(c["accuracy"], ce["accuracy"], "higher")))
        ev.append(f"{name}: {fmt(c['accuracy'], 2, 100)} % vs ce {fmt(ce['accuracy'], 2, 100)} %")
    add("v1", "better accuracy", f"{objective} beats ce by more than the seed spread", res, ev)
    comp = [c["accuracy"][0] >= ce["accuracy"][0] - 0.005 - max(c["accuracy"][1], ce["accuracy"][1])
            for _, ce, c in _pairs(agg, objective)]
    add("v2", "competitive accuracy", "within 0.5 points (plus the seed spread) of ce", comp, list(ev))
    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        refs = {"ce": ce, "blank": {"l1": ce.get("blank_l1"), "ssim": ce.get("blank_ssim")},
                "input": {"l1": ce.get("input_l1"), "ssim": ce.get("input_ssim")}}
        rand = agg.get((name.split("/")[0], name.split("/")[1], "random model"))
        if rand:
            refs["random model"] = rand
        won = {k: bool(beats(c["l1"], r["l1"], "lower")) and bool(beats(c["ssim"], r["ssim"], "higher"))
               for k, r in refs.items()}
        res.append(all(won.values()))
        ev.append(f"{name}: L1 {c['l1'][0]:.3f}, SSIM {c['ssim'][0]:.3f}; beats "
                  + ", ".join(f"{k} {'yes' if w else 'no'}" for k, w in won.items()))
    add("v1", "better reconstruction quality", "beats ce, the blank map, the input image and the "
        "untrained model on L1 and SSIM (circular: L_P trains on this distance)", res, ev)
    res, ev = [], []
    for name, ce, c in _pairs(agg, objective):
        tighter = bool(beats(c["dispersion"], ce["dispersion"], "lower"))
        gap = lambda x: x["corr_image"][0] - x["corr_prototype"][0]  # noqa: E731
        spread = max(x[k][1] for x in (c, ce) for k in ("corr_image", "corr_prototype"))
        res.append(tighter and gap(c) >= gap(ce) - spread)
        ev.append(f"{name}: dispersion {c['dispersion'][0]:.4f} vs ce {ce['dispersion'][0]:.4f}; "
                  f"corr(map, own image) {c['corr_image'][0]:.3f} vs {ce['corr_image'][0]:.3f}; "
                  f"corr(map, prototype) {c['corr_prototype'][0]:.3f} vs {ce['corr_prototype'][0]:.3f}")
    add("v2", "more coherent saliency maps", "lower dispersion than ce, and corr_image − corr_prototype "
        "does not fall (moving towards the class template wins dispersion for free)", res, ev)
    steps, none = _ratios(bench, "train_overhead"), "no benchmark record with training steps"
    ev = [f"{k}: step / ce step = {r:.2f}× (IQR spread {s:.2f})" for k, r, s in steps]
    add("v1", "lower training time", f"a {objective}:l1 training step faster than a ce step (chapter 3's "
        "benchmark)", [1 - r > s for _, r, s in steps], ev, none, data=False)
    add("v2", "minimal computational overhead", f"{objective}:l1 step below {OVERHEAD_MAX} × the ce step "
        "(chapter 3's benchmark)", [OVERHEAD_MAX - r > s for _, r, s in steps], list(ev), none, data=False)
    speed = _ratios(bench, "batch_vs_loop")
    add("v1", "lower inference time", "batch Grad-CAM faster than the per-image loop at the largest "
        "batch size (chapter 3's benchmark)", [r - 1 > s for _, r, s in speed],
        [f"{k}: loop / batch = {r:.2f}× (IQR spread {s:.2f})" for k, r, s in speed], "no benchmark record",
        data=False)
    if spurious is None:
        add("v2", "suppresses spurious features", "decoy-patch relevance and accuracy (chapter 9)", [],
            ["no Decoy-MNIST records"], "no Decoy-MNIST records", data=False)
    return out + ([spurious] if spurious else [])


def bench_ratios(*records: Optional[Mapping], objective: str = "ce+proto+batchcam:l1") -> dict:
    """Speed ratios of benchmark records (``results.latest_bench``; None entries are skipped):
    ``{"batch_vs_loop": [(label, loop / batch at the largest batch size the loop was timed at, spread)],
    "train_overhead": [(label, ``objective`` step / ce step, spread)]}``, labels ``"cpu resnet18:28
    B=256"``; spread = the larger of the two times' IQRs over the base time (batch, ce step); chapter 7."""
    from .bench import rows

    out: dict[str, list] = {"batch_vs_loop": [], "train_overhead": []}
    for rec in filter(None, records):
        dev, cam, train = rec["config"]["device"], rows(rec, "cam"), rows(rec, "train")
        for kind, table, num, den in (("batch_vs_loop", cam, "gradcam_loop", "batch_gradcam"),
                                      ("train_overhead", train, objective, "ce")):
            by = {(r["model"], r["image_size"], r["batch_size"], r["method"]): r for r in table}
            for m, size, b, _ in sorted(k for k in by if k[3] == num and (*k[:3], den) in by):
                if kind == "train_overhead" or b == max(k[2] for k in by if k[:2] == (m, size) and k[3] == num):
                    a, base = by[m, size, b, num], by[m, size, b, den]
                    out[kind].append((f"{dev} {m}:{size} B={b}", a["ms"] / base["ms"],
                                      max(a["iqr_ms"], base["iqr_ms"]) / base["ms"]))
    return out
