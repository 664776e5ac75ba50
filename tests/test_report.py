"""Chapter 7's tables and verdicts (``batchcam.report``), computed from records only: which scale a
cell uses, who votes, the claims of v1 and v2, collapse, and the table's two forms."""

import pytest

from batchcam import claims, report
from batchcam.results import load_runs, write_run

CE, FULL = "ce", "ce+proto+batchcam"


def row(objective=CE, seed=0, scale="cpu-full", n_train=None, model="simplecnn", dataset="mnist", epochs=2, **metrics):
    """One flat row as ``load_runs`` returns it (only the keys ``report`` reads)."""
    r = {"run_id": f"{dataset}-{model}-{objective}-{scale}-{n_train}-e{epochs}-seed{seed}", "dataset": dataset,
         "model": model, "objective": objective, "distance": "l1", "lambda_proto": 1.0, "lambda_batchcam": 1.0,
         "seed": seed, "epochs": epochs, "image_size": 28, "n_train": n_train, "scale": scale, "device": "cpu",
         "device_name": "a CPU", "accuracy": 0.95, "l1": 0.30, "l2": 0.15, "ssim": 0.30, "dead_fraction": 0.0,
         "dispersion": 0.02, "corr_image": 0.5, "corr_prototype": 0.4, "train_time_per_epoch_s": 10.0,
         "blank_l1": 0.40, "blank_ssim": 0.10, "input_l1": 0.35, "input_ssim": 0.20}
    r.update(metrics)
    return r


def seeds(objective, n=3, spread=0.001, **metrics):
    """``n`` seeds of one cell whose metrics differ by a small spread."""
    out = []
    for s in range(n):
        m = {k: v + (s - 1) * spread for k, v in metrics.items()}
        out.append(row(objective, seed=s, **m))
    return out


def verdicts(rows, **kw):
    return {(c["version"], c["claim"]): c["verdict"] for c in claims.claims(report.aggregate(rows), **kw)}


# --------------------------------------------------------------------------- aggregate


def test_aggregate_prefers_gpu_full_then_cpu_full_then_subsets():
    rows = [row(seed=0, scale="cpu-subset", n_train=20000, accuracy=0.5),
            row(seed=0, accuracy=0.90), row(seed=1, accuracy=0.92),
            row(seed=0, objective=FULL, scale="gpu-full", accuracy=0.97),
            row(seed=0, objective=FULL, scale="cpu-full", accuracy=0.10),
            row(seed=0, objective="ce+proto", scale="gpu-subset", n_train=20000, accuracy=0.8),
            row(seed=0, objective="ce+proto", scale="cpu-subset", n_train=20000, accuracy=0.1),
            row(seed=0, distance="ssim", accuracy=0.1),  # another distance: another table
            row(seed=2, lambda_proto=0.5, accuracy=0.1)]  # another λ: an ablation, not the grid
    agg = report.aggregate(rows)
    ce = agg[("mnist", "simplecnn", CE)]
    assert ce["scale"] == "cpu-full" and ce["n"] == 2
    assert ce["accuracy"][0] == pytest.approx(0.91) and ce["accuracy"][1] == pytest.approx(0.0141421356)
    assert agg[("mnist", "simplecnn", FULL)]["scale"] == "gpu-full"
    assert agg[("mnist", "simplecnn", FULL)]["accuracy"] == (0.97, 0.0)
    assert agg[("mnist", "simplecnn", "ce+proto")]["scale"] == "gpu-subset"
    assert report.aggregate(rows, distance="ssim")[("mnist", "simplecnn", CE)]["accuracy"][0] == pytest.approx(0.1)


def test_untrained_runs_form_the_random_model_cell():
    agg = report.aggregate([row(epochs=0, accuracy=0.1), row(accuracy=0.9)])
    assert agg[("mnist", "simplecnn", "random model")]["accuracy"][0] == pytest.approx(0.1)
    assert agg[("mnist", "simplecnn", CE)]["accuracy"][0] == pytest.approx(0.9)


def test_smoke_cells_and_cells_with_fewer_than_three_seeds_do_not_vote():
    full = report.aggregate(seeds(CE) + seeds(FULL))
    assert all(c["votes"] for c in full.values())
    two = report.aggregate(seeds(CE, n=2) + seeds(FULL))
    assert not two[("mnist", "simplecnn", CE)]["votes"]
    smoke = [dict(r, scale="cpu-subset", n_train=1000) for r in seeds(CE) + seeds(FULL)]
    agg = report.aggregate(smoke)
    cell = agg[("mnist", "simplecnn", CE)]
    assert not cell["votes"] and cell["scale"] == "cpu-subset (smoke)" and cell["n"] == 3
    big = report.aggregate([dict(r, scale="cpu-subset", n_train=10000) for r in seeds(CE) + seeds(FULL)])
    assert big[("mnist", "simplecnn", CE)]["votes"]
    for rows in (seeds(CE, n=2) + seeds(FULL), smoke):
        assert all(v.startswith("not testable") for (version, claim), v in verdicts(rows).items()
                   if claim not in ("minimal computational overhead", "lower inference time",
                                    "suppresses spurious features"))


def test_ablation_records_stay_out_of_the_paper_cells():
    paper = seeds(CE, accuracy=0.99)
    other_layer = [dict(r, seed=9, accuracy=0.5, layer="features.9") for r in seeds(FULL)]
    other_weight = [dict(r, seed=8, accuracy=0.5, lambda_proto=0.1, lambda_batchcam=0.1) for r in seeds(FULL)]
    agg = report.aggregate(paper + [dict(r, layer="features") for r in seeds(FULL)] + other_layer + other_weight)
    assert agg[("mnist", "simplecnn", FULL)]["n"] == 3 and agg[("mnist", "simplecnn", FULL)]["accuracy"][0] > 0.9
    assert agg[("mnist", "simplecnn", CE)]["n"] == 3


def test_a_full_data_cell_is_never_compared_with_a_subset_cell():
    subset = [dict(r, scale="cpu-subset", n_train=10000) for r in seeds(FULL, accuracy=0.90)]
    rows = seeds(CE, accuracy=0.99) + subset  # both vote, at different scales
    agg = report.aggregate(rows)
    assert agg[("mnist", "simplecnn", CE)]["votes"] and agg[("mnist", "simplecnn", FULL)]["votes"]
    v = verdicts(rows)
    assert v[("v2", "competitive accuracy")].startswith("not testable")
    claim = next(c for c in claims.claims(agg) if c["claim"] == "competitive accuracy")
    assert any("shown, not counted" in e and "cpu-subset" in e for e in claim["evidence"])
    same = seeds(CE, accuracy=0.99) + seeds(FULL, accuracy=0.90)
    assert verdicts(same)[("v2", "competitive accuracy")] == "not supported"


# --------------------------------------------------------------------------- claims


def test_claims_cover_v1_and_v2():
    found = claims.claims(report.aggregate(seeds(CE) + seeds(FULL)))
    names = {(c["version"], c["claim"]) for c in found}
    assert {("v1", "better accuracy"), ("v1", "better reconstruction quality"), ("v1", "lower training time"),
            ("v1", "lower inference time"), ("v2", "competitive accuracy"), ("v2", "more coherent saliency maps"),
            ("v2", "minimal computational overhead"), ("v2", "suppresses spurious features")} <= names
    assert all({"version", "claim", "test", "verdict", "evidence"} <= set(c) for c in found)


def test_accuracy_claims():
    better = verdicts(seeds(CE, accuracy=0.95) + seeds(FULL, accuracy=0.97))
    assert better[("v1", "better accuracy")] == "supported"
    assert better[("v2", "competitive accuracy")] == "supported"
    worse = verdicts(seeds(CE, accuracy=0.95) + seeds(FULL, accuracy=0.90))
    assert worse[("v1", "better accuracy")] == "not supported"
    assert worse[("v2", "competitive accuracy")] == "not supported"
    within_spread = verdicts(seeds(CE, accuracy=0.95, spread=0.01) + seeds(FULL, accuracy=0.955, spread=0.01))
    assert within_spread[("v1", "better accuracy")] == "not supported"  # not more than the seed spread


def test_better_reconstruction_needs_to_beat_the_blank_map():
    good = dict(l1=0.10, ssim=0.60)
    base = dict(l1=0.30, ssim=0.30)
    assert verdicts(seeds(CE, **base) + seeds(FULL, **good))[("v1", "better reconstruction quality")] == "supported"
    # the objective beats ce, the input image and the untrained model, but the blank map does better
    rows = seeds(CE, **base, blank_l1=0.05, blank_ssim=0.70) + seeds(FULL, **good)
    assert verdicts(rows)[("v1", "better reconstruction quality")] == "not supported"
    claim = next(c for c in claims.claims(report.aggregate(rows)) if c["claim"] == "better reconstruction quality")
    assert "blank no" in claim["evidence"][0] and "ce yes" in claim["evidence"][0]
    # and the untrained model, when recorded, is one more reference to beat
    random_wins = seeds(CE, **base) + seeds(FULL, **good) + [row(epochs=0, seed=s, l1=0.01, ssim=0.9) for s in range(3)]
    assert verdicts(random_wins)[("v1", "better reconstruction quality")] == "not supported"


def test_coherence_does_not_count_when_the_maps_stop_following_the_image():
    tighter = verdicts(seeds(CE, dispersion=0.05) + seeds(FULL, dispersion=0.01))
    assert tighter[("v2", "more coherent saliency maps")] == "supported"
    template = verdicts(seeds(CE, dispersion=0.05, corr_image=0.6) + seeds(FULL, dispersion=0.01, corr_image=0.1))
    assert template[("v2", "more coherent saliency maps")] == "not supported"


def test_verdicts_over_several_pairs_can_be_mixed_and_bench_ratios_are_used():
    rows = seeds(CE, accuracy=0.90) + seeds(FULL, accuracy=0.95)
    rows += [dict(r, model="resnet18") for r in seeds(CE, accuracy=0.95) + seeds(FULL, accuracy=0.90)]
    assert verdicts(rows)[("v1", "better accuracy")] == "mixed"
    v = verdicts(rows, bench={"train_overhead": 1.1, "batch_vs_loop": 20.0})
    assert v[("v2", "minimal computational overhead")] == "supported"
    assert v[("v1", "lower inference time")] == "supported"
    assert verdicts(rows, bench={"train_overhead": 2.0})[("v2", "minimal computational overhead")] == "not supported"
    assert verdicts(rows)[("v2", "minimal computational overhead")].startswith("not testable")


# --------------------------------------------------------------------------- collapse


def test_collapsed_cells_are_flagged():
    rows = seeds(CE) + [row("ce+batchcam", seed=s, dead_fraction=d) for s, d in enumerate((0.9, 0.5, 0.1))]
    agg = report.aggregate(rows)
    assert agg[("mnist", "simplecnn", "ce+batchcam")]["collapsed"] == 2
    assert report.collapsed(agg) == ["mnist/simplecnn/ce+batchcam: 2 of 3 seeds"]
    assert "⚠ collapsed" in repr(report.metric_table(agg, {"dead": ("dead_fraction", 1, 100)}))
    assert report.collapsed(report.aggregate(seeds(CE, dead_fraction=0.49))) == []


# --------------------------------------------------------------------------- tables


def test_table_has_a_text_form_and_an_html_form_with_right_aligned_numbers():
    agg = report.aggregate([row(accuracy=0.90, seed=0), row(accuracy=0.92, seed=1)])
    table = report.metric_table(agg, {"accuracy (%)": ("accuracy", 2, 100), "L1": ("l1", 3, 1)}, caption="Table 1")
    text = repr(table)
    lines = text.splitlines()
    assert lines[0] == "Table 1" and lines[1].split()[:4] == ["dataset", "model", "objective", "accuracy"]
    assert "91.00 ± 1.41" in text and "0.300 ± 0.000" in text
    assert "blank map" in text and "input image" in text  # the baselines sit in the same table
    assert len({len(line) for line in lines[1:]}) == 1  # every column padded to its width: aligned
    html = table._repr_html_()
    assert "<caption>Table 1</caption>" in html and "overflow-x:auto" in html
    assert 'text-align:right">91.00 ± 1.41</td>' in html
    assert 'text-align:left">mnist</td>' in html and 'text-align:left">simplecnn</td>' in html
    assert html.count("<tr>") == 1 + len(table.rows)


def test_removing_a_record_changes_the_tables(tmp_path, make_record):
    for seed, acc in ((0, 0.90), (1, 0.96), (2, 0.93)):
        write_run(*make_record(seed=seed, objective=CE, final={"accuracy": acc}), tmp_path)
    columns = {"acc": ("accuracy", 2, 100)}
    before = report.aggregate(load_runs(tmp_path))
    key = next(iter(before))
    assert before[key]["n"] == 3
    victim = sorted(tmp_path.glob("*seed1*.json"))[0]
    victim.unlink()
    after = report.aggregate(load_runs(tmp_path))
    assert after[key]["n"] == 2 and after[key]["accuracy"][0] == pytest.approx(0.915)
    assert repr(report.metric_table(after, columns)) != repr(report.metric_table(before, columns))
