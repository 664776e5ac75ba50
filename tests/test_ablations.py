"""Chapter 8's ablation table through compare + Holm (issue 27, item 7), on synthetic load_runs rows."""

from __future__ import annotations

import random

import pytest
from scipy import stats as sps

from batchcam import ablations, grid
from batchcam.stats import holm


def row(seed, objective="ce+proto+batchcam", dataset="mnist", accuracy=0.98, l1=0.2, deletion=0.1, **fields):
    base = dict(model="simplecnn", n_train=None, epochs=2, lr=grid.ABLATION_RECIPE["lr"], seed=seed,
                dataset=dataset, objective=objective, lambda_proto=1.0, lambda_batchcam=1.0, distance="l1",
                layer="features.12", stop_gradient=True, cam_normalize="max", prototype_source="train",
                cam_method="gradcam", accuracy=accuracy, l1=l1, deletion_maps=deletion)
    return {**base, **fields}


def cell(n, shift=0.0, noise=0.001, rng_seed=0, **fields):
    rng = random.Random(rng_seed)
    return [row(s, accuracy=0.98 + shift + rng.gauss(0, noise), l1=0.2 + rng.gauss(0, noise),
                deletion=0.1 + rng.gauss(0, noise), **fields) for s in range(n)]


def test_three_seed_rows_are_shown_not_voted_and_cannot_reach_significance():
    rows = cell(3) + cell(3, shift=0.05, rng_seed=1, lambda_proto=3.0, lambda_batchcam=3.0)
    out = ablations.compare_ablations(rows)
    assert {e["variant"] for e in out} == {"λ=3"} and len(out) == 3
    assert all(e["status"] == ablations.SHOWN and e["n"] == 3 for e in out)
    assert all(e["p"] >= ablations.smallest_p(3) == 0.25 for e in out)  # 2 / 2**3: the sign-flip floor


def test_ten_seed_rows_vote_after_holm_and_match_scipy():
    paper = cell(10, rng_seed=2)
    lam = cell(10, shift=0.02, rng_seed=3, lambda_proto=3.0, lambda_batchcam=3.0)
    random.Random(0).shuffle(lam)  # pairing is by seed, not by position
    out = ablations.compare_ablations(paper + lam)
    acc = next(e for e in out if e["metric"] == "accuracy")
    a = [r["accuracy"] for r in sorted(lam, key=lambda r: r["seed"])]
    b = [r["accuracy"] for r in paper]
    ref = sps.ttest_rel(a, b)
    assert acc["test"] == "paired t" and acc["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert acc["status"] == "better"  # higher accuracy, p_holm far below 0.05
    worse = ablations.compare_ablations(paper + cell(10, shift=-0.02, rng_seed=3, distance="l2"))
    assert next(e for e in worse if e["metric"] == "accuracy")["status"] == "worse"
    assert {e["status"] for e in worse if e["metric"] != "accuracy"} <= {"no difference shown", "worse", "better"}


def test_holm_spans_every_row_of_the_table():
    rows = cell(10, rng_seed=4) + cell(10, shift=0.003, rng_seed=5, distance="l2") + \
        cell(10, shift=0.003, rng_seed=6, distance="ssim")
    out = ablations.compare_ablations(rows)
    assert [e["p_holm"] for e in out] == pytest.approx(holm([e["p"] for e in out]))
    assert len(out) == 6


def test_rows_outside_the_ablation_recipe_are_ignored():
    rows = cell(3) + cell(3, lambda_proto=3.0, lambda_batchcam=3.0)
    others = [dict(r, lr=2e-3) for r in cell(3, rng_seed=9)] + [dict(r, n_val=6000) for r in cell(3, rng_seed=8)]
    assert len(ablations.reference_rows(rows + others)) == 3
    assert ablations.compare_ablations(rows + others) == ablations.compare_ablations(rows)
