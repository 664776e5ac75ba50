"""``batchcam.verdicts``: every claim of both versions, tested by the pre-registered protocol, and each
entry recomputed here by an independent implementation (scipy.stats called directly)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps

from batchcam import verdicts as V
from batchcam.losses import OBJECTIVES

REPO = Path(__file__).resolve().parent.parent


def _grid(seeds, shift=None, seed=0):
    """Configs and rows of a synthetic verdict grid; ``shift[(dataset, objective)]`` moves every metric."""
    rng = np.random.default_rng(seed)
    configs, rows = [], []
    for dataset in ("mnist", "fashion-mnist"):
        for s in seeds:
            base = {"accuracy": 0.9 + rng.normal(0, 0.003), "l1": 0.2 + rng.normal(0, 0.01),
                    "ssim_valid": 0.3 + rng.normal(0, 0.01), "dispersion": 0.02 + rng.normal(0, 0.001)}
            for objective in OBJECTIVES:
                rid = f"{dataset}-{objective}-seed{s}"
                configs.append(SimpleNamespace(dataset=dataset, objective=objective, seed=s, epochs=2, run_id=rid))
                d = (shift or {}).get((dataset, objective), 0.0)
                noise = {k: rng.normal(0, 0.002) for k in base}
                rows.append({"run_id": rid, **{k: v + d + noise[k] for k, v in base.items()}})
    return rows, configs


def _independent(entry, rows):
    """Effect and p of a paired t-test, by scipy directly, from the run ids the entry lists."""
    by_id = {r["run_id"]: r for r in rows}
    a = np.array([by_id[i][entry["metric"]] for i in entry["run_ids"]["objective"]])
    b = np.array([by_id[i][entry["metric"]] for i in entry["run_ids"]["ce"]])
    shift = entry["margin"] or 0.0
    res = sps.ttest_rel(a + (shift if entry["direction"] == "greater" else -shift), b,
                        alternative=entry["direction"])
    return float(np.mean(a - b)), float(res.pvalue)


def test_every_claim_of_both_versions_has_entries():
    content = V.build(*_grid(range(10)))
    claims = {e["claim"] for e in content["entries"]}
    assert claims == {c.id for c in V.CLAIMS}
    assert {e["version"] for e in content["entries"]} == {"v1", "v2"}
    assert all(e["scope"] == V.SCOPE and e["family"] == V.FAMILY for e in content["entries"])


def test_the_timing_claims_are_their_own_family():
    content = V.build(*_grid(range(10)))
    from batchcam.timing import FAMILY, TIMING_CLAIMS

    assert [e["claim"] for e in content["timing"]] == [c[0] for c in TIMING_CLAIMS]
    assert {e["family"] for e in content["timing"]} == {FAMILY} != {V.FAMILY}
    assert not {e["claim"] for e in content["timing"]} & {e["claim"] for e in content["entries"]}


def test_entries_are_recomputed_by_an_independent_implementation():
    rows, configs = _grid(range(10), shift={("mnist", "ce+proto+batchcam"): 0.01})
    content = V.build(rows, configs)
    tested = [e for e in content["entries"] if e["test"]]
    assert len(tested) == 5 * 2 * 3  # five testable claims × two datasets × three objectives
    ps = []
    for e in tested:
        effect, p = _independent(e, rows)
        assert e["effect"] == pytest.approx(effect, abs=1e-6)
        assert e["p"] == pytest.approx(p, rel=1e-3)
        assert e["n"] == 10 and e["test"] == "paired t"
        ps.append(p)
    order = np.argsort(ps)  # Holm by hand
    holm = np.empty(len(ps))
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        holm[i] = running
    assert [e["p_holm"] for e in tested] == pytest.approx(list(holm), rel=1e-9)
    shifted = [e for e in tested if e["dataset"] == "mnist" and e["comparison"] == "ce+proto+batchcam vs ce"]
    words = {e["claim"]: e["verdict"] for e in shifted}
    assert words["v1-accuracy"] == "supported" and words["v2-accuracy"] == "supported"
    assert words["v1-reconstruction-l1"] == "contradicted"  # every metric moved up: L1 got worse


def test_missing_seeds_are_not_tested():
    rows, configs = _grid(range(7))
    for e in V.build(rows, configs)["entries"]:
        if not e["note"] or "pre-registered" in e["note"]:
            assert e["verdict"] == "not established (underpowered)" and e["n"] == 7 and e["p"] is None
        else:
            assert e["verdict"] == "not testable here"


def test_non_inferiority_uses_the_margin_and_a_one_sided_bound():
    rows, configs = _grid(range(10), shift={("fashion-mnist", "ce+proto"): -0.004})
    e = next(e for e in V.build(rows, configs)["entries"]
             if e["claim"] == "v2-accuracy" and e["dataset"] == "fashion-mnist" and e["comparison"] == "ce+proto vs ce")
    assert e["margin"] == V.MARGINS["fashion-mnist"] and e["ci_high"] is None and e["ci_low"] > -e["margin"]
    assert e["verdict"] == "supported"  # 0.4 points worse, within the 1-point margin


def test_the_committed_file_matches_the_committed_records():
    from batchcam import grid, results

    path = REPO / "results" / "verdicts.json"
    if not path.is_file():
        pytest.skip("no results/verdicts.json yet")
    stored = json.loads(path.read_text())
    rows = results.load_runs()
    try:
        configs = grid.verdict_grid()
    except ValueError:
        configs = []
    fresh = V.build(rows, configs, design=V.design_from(rows), note=stored["protocol"]["note"],
                    bench=results.latest_bench("cpu", preset="verdict"),
                    bench_name=getattr(results.latest_bench_path("cpu", preset="verdict"), "name", None))
    assert fresh["entries"] == stored["entries"] and fresh["timing"] == stored.get("timing"), (
        "results/verdicts.json is not what the records give: run `python -m batchcam verdicts` and commit it")
    from batchcam import decoy_verdicts

    assert json.loads(json.dumps(decoy_verdicts.from_records(rows))) == stored.get("decoy"), (
        "the decoy part of results/verdicts.json is not what the records give: run `python -m batchcam verdicts`")
    for e in stored["entries"]:
        if e["test"]:
            effect, p = _independent(e, rows)
            assert e["effect"] == pytest.approx(effect, abs=1e-6) and e["p"] == pytest.approx(p, rel=1e-3)
