"""The timing verdicts (issue 27, item 6): ratios paired by round, bootstrap intervals, a threshold fixed in
advance, Holm across the timing family; checked against scipy called directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from batchcam import results as R
from batchcam import timing as T
from batchcam.stats import holm


def _rounds(median, rng, n=25, sd=0.05):
    return {"rounds_ms": list(median * np.exp(rng.normal(0, sd, n)))}


def record(step=1.25, loop=40.0, seed=0):
    rng = np.random.default_rng(seed)
    return {"environment": {"device": "cpu", "torch_threads": 2, "load_average": [[0.2, 0.2, 0.2]]},
            "training": [{"model": "simplecnn", "batch_size": 128,
                          "timings": {"ce": _rounds(100, rng), "ce+proto:l1": _rounds(100 * step, rng),
                                      "ce+batchcam:l1": _rounds(100 * step, rng),
                                      "ce+proto+batchcam:l1": _rounds(100 * step, rng)}}],
            "cam": [{"model": "simplecnn", "batch_size": 128,
                     "timings": {"batch_gradcam": _rounds(10, rng), "gradcam_loop": _rounds(10 * loop, rng)}}]}


def test_each_entry_matches_scipy_directly():
    rec = record()
    entries = T.timing_entries(rec)
    assert len(entries) == 3 + 3 + 1
    for e in entries:
        if e["claim"] == "v1-inference-time":
            t = rec["cam"][0]["timings"]
            a, b = np.array(t["gradcam_loop"]["rounds_ms"]), np.array(t["batch_gradcam"]["rounds_ms"])
        else:
            t = rec["training"][0]["timings"]
            loss = e["comparison"].split(": ")[1].split(" step")[0]
            a, b = np.array(t[loss]["rounds_ms"]), np.array(t["ce"]["rounds_ms"])
        log_r = np.log(a) - np.log(b)
        assert e["ratio"] == pytest.approx(float(np.exp(log_r.mean())), rel=1e-12)
        ref = sps.ttest_rel(np.log(a), np.log(b) + np.log(e["threshold"]), alternative=e["direction"])
        assert e["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        boot = sps.bootstrap((log_r,), np.mean, n_resamples=9999, method="BCa", random_state=np.random.default_rng(0))
        assert (e["ci_low"], e["ci_high"]) == pytest.approx(
            (np.exp(boot.confidence_interval.low), np.exp(boot.confidence_interval.high)))
        assert e["ci_low"] < e["ratio"] < e["ci_high"] and e["rounds"] == 25
    assert [e["p_holm"] for e in entries] == pytest.approx(holm([e["p"] for e in entries]))


def test_the_verdict_words_follow_the_thresholds():
    words = {(e["claim"], e["comparison"]): e["verdict"] for e in T.timing_entries(record(step=1.25))}
    assert {w for (c, _), w in words.items() if c == "v1-training-time"} == {"contradicted"}  # a loss step is slower
    assert {w for (c, _), w in words.items() if c == "v2-overhead"} == {"supported"}  # 1.25 < 1.5
    assert {w for (c, _), w in words.items() if c == "v1-inference-time"} == {"supported"}  # loop 40× the batch
    heavy = {e["claim"]: e["verdict"] for e in T.timing_entries(record(step=2.0, loop=0.5))}
    assert heavy["v2-overhead"] == "contradicted" and heavy["v1-inference-time"] == "contradicted"
    at_threshold = {e["verdict"] for e in T.timing_entries(record(step=1.5)) if e["claim"] == "v2-overhead"}
    assert "supported" not in at_threshold  # a ratio at the threshold is not "below" it


def test_without_per_round_times_nothing_is_decided():
    old = record()
    for e in old["training"] + old["cam"]:
        for t in e["timings"].values():
            t.pop("rounds_ms")
    for rec in (None, old):
        entries = T.timing_entries(rec)
        assert [e["claim"] for e in entries] == [c[0] for c in T.TIMING_CLAIMS]
        assert {e["verdict"] for e in entries} == {"not testable here"}


def test_latest_bench_keeps_verdict_records_apart(tmp_path):
    def put(name, wall):
        (tmp_path / name).write_text(json.dumps({"wall_s": wall, "config": {}}))

    put("bench-cpu-20260101T000000Z.json", 1.0)
    put("bench-cpu-20260102T000000Z-verdict.json", 2.0)
    put("bench-cpu-20260103T000000Z-quick.json", 3.0)
    assert R.latest_bench("cpu", tmp_path)["wall_s"] == 1.0  # chapter 3's plots never read a verdict record
    assert R.latest_bench("cpu", tmp_path, preset="verdict")["wall_s"] == 2.0
    assert R.latest_bench_path("cpu", tmp_path, preset="verdict").name == "bench-cpu-20260102T000000Z-verdict.json"
    assert "_path" not in R.latest_bench("cpu", tmp_path)  # the record as written: its hash still checks


def test_a_named_bench_record_stays_out_of_latest_bench(tmp_path):
    """scripts/bench_methods.py writes ``methods-cpu-<UTC>.json`` through write_bench_record: chapter 3 never
    reads it as its speed record, and load_bench reads it back as written."""
    path = R.write_bench_record({"wall_s": 4.0, "config": {}}, device_type="cpu", root=tmp_path, name="methods")
    assert path.name.startswith("methods-cpu-") and path.name.endswith("Z.json")
    assert R.latest_bench_path("cpu", tmp_path) is None and R.load_bench(None) is None
    assert R.load_bench(path)["wall_s"] == 4.0
