"""batchcam.decoy_verdicts: the decoy family (chapter 9) on synthetic records, against scipy and Holm by hand."""

import random

import pytest
from scipy import stats as st

from batchcam import decoy_verdicts as D
from batchcam import grid

LAMBDAS = {"ce+rrr-input": 1.0, "ce+rrr": 3.0}
#: cell → mean reliance of its synthetic runs (control 0.5; the oracles remove it; one loss helps, one does
#: nothing, one makes it worse).
MEANS = {"ce": 0.5, "ce, Ross 4×4 grey": 0.1, "oracle: ce+rrr-input": 0.02, "oracle: ce+rrr (RRR-G)": 0.2,
         "oracle: ce on clean images": 0.0, "ce+proto": 0.3, "ce+batchcam": 0.5, "ce+proto+batchcam": 0.6}


def _rows(configs, means=MEANS, drop=()):
    rng, rows = random.Random(0), []
    seed_shift = {s: rng.gauss(0, 0.03) for s in range(10)}   # shared by a seed's runs: pairing matters
    for c in configs:
        cell = grid.decoy_verdict_cell(c)
        if (c.dataset, cell, c.seed) in drop:
            continue
        rel = means[cell] + seed_shift[c.seed] + rng.gauss(0, 0.01)
        rows.append({"run_id": c.run_id, "decoy_reliance": rel, "decoy_clean_accuracy": 0.9,
                     "decoy_relevance_mass_ratio": 1.5, "decoy_prototype_patch_ratio": None})
    return rows


@pytest.fixture(scope="module")
def configs():
    return grid.decoy_verdict_grid(oracle_lambdas=LAMBDAS)


def test_the_family_against_scipy_and_holm_by_hand(configs):
    rows = _rows(configs)
    out = D.build(rows, configs)
    assert all(g["complete"] and g["control_holds"] for g in out["gates"])
    works = {o["cell"]: o["works"] for o in out["gates"][0]["oracles"]}
    assert works == {"oracle: ce+rrr-input": True, "oracle: ce+rrr (RRR-G)": False,   # 0.2 / 0.5 > 20 %
                     "oracle: ce on clean images": True}
    by_id = {r["run_id"]: r["decoy_reliance"] for r in rows}
    ps = []
    for e in out["entries"]:
        a = [by_id[i] for i in e["run_ids"]["objective"]]
        b = [by_id[i] for i in e["run_ids"]["ce"]]
        ref = st.ttest_rel(a, b, alternative="less")
        assert e["n"] == 10 and e["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert e["effect"] == pytest.approx(sum(a) / 10 - sum(b) / 10, abs=1e-12)
        ps.append(e["p"])
    order = sorted(range(len(ps)), key=ps.__getitem__)
    holm, running = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        holm[i] = running
    assert [e["p_holm"] for e in out["entries"]] == pytest.approx(holm)
    words = {(e["dataset"], e["comparison"]): e["verdict"] for e in out["entries"]}
    for ds in ("mnist", "fashion-mnist"):
        assert words[ds, "ce+proto vs ce"] == "supported"
        assert words[ds, "ce+proto+batchcam vs ce"] == "contradicted"
        assert words[ds, "ce+batchcam vs ce"] in ("not supported", "not established (underpowered)")


def test_a_failed_control_or_no_working_oracle_is_not_testable(configs):
    weak = {**MEANS, "ce": 0.15}                              # the control's lower bound < 0.20
    out = D.build(_rows(configs, weak), configs)
    assert {e["verdict"] for e in out["entries"]} == {"not testable here"}
    assert all(g["control_holds"] is False for g in out["gates"])
    no_oracle = {**MEANS, "oracle: ce+rrr-input": 0.4, "oracle: ce on clean images": 0.3}
    out = D.build(_rows(configs, no_oracle), configs)
    assert {e["verdict"] for e in out["entries"]} == {"not testable here"}
    assert "no oracle" in out["entries"][0]["note"]


def test_a_missing_seed_leaves_the_dataset_untested(configs):
    out = D.build(_rows(configs, drop={("mnist", "oracle: ce on clean images", 7)}), configs)
    words = {(e["dataset"], e["verdict"]) for e in out["entries"]}
    assert {w for ds, w in words if ds == "mnist"} == {"not established (underpowered)"}
    assert "not established (underpowered)" not in {w for ds, w in words if ds == "fashion-mnist"}
    cells = {(c["dataset"], c["cell"]): c for c in out["cells"]}
    assert cells["mnist", "oracle: ce on clean images"]["decoy_reliance"]["n"] == 9
    assert cells["mnist", "ce+proto"]["decoy_prototype_patch_ratio"] is None   # no value recorded: None
