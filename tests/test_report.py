"""Chapter 6's tables are computed from the committed records: coverage of the paper grid, and
that removing a record changes the tables."""

import json
import shutil
from pathlib import Path

import pytest

from batchcam import report, results
from batchcam.grid import paper_grid

RUNS = Path(__file__).resolve().parent.parent / "results" / "runs"


def _rows(root=RUNS):
    return results.load_runs(root)


def _fake_row(**kw):
    row = {"run_id": "r", "dataset": "mnist", "model": "simplecnn", "objective": "ce", "distance": "l1",
           "lambda_proto": 1.0, "lambda_batchcam": 1.0, "seed": 0, "epochs": 2, "image_size": 28, "n_train": None,
           "scale": "cpu-full", "device": "cpu", "device_name": "cpu", "accuracy": 0.9, "l1": 0.2, "l2": 0.1,
           "ssim": 0.3, "train_time_per_epoch_s": 10.0, "gradcam_batch_s": 1.0, "gradcam_loop_s_scaled": 30.0}
    row.update(kw)
    return row


def test_aggregate_mean_std_and_scale_preference():
    rows = [_fake_row(seed=0, accuracy=0.90), _fake_row(seed=1, accuracy=0.92),
            _fake_row(seed=0, scale="cpu-subset", n_train=1000, accuracy=0.5),
            _fake_row(objective="ce+proto+batchcam", accuracy=0.95, l1=0.1, ssim=0.6),
            _fake_row(distance="ssim", accuracy=0.1)]  # another distance: not in the l1 table
    agg = report.aggregate(rows)
    cell = agg[("mnist", "simplecnn", "ce")]
    assert cell["n"] == 2 and cell["scale"] == "cpu-full"
    assert cell["accuracy"][0] == pytest.approx(0.91) and cell["accuracy"][1] == pytest.approx(0.0141421356)
    verdicts = {c["claim"]: c["verdict"] for c in report.claims(agg)}
    assert verdicts["better accuracy than cross-entropy"].startswith("supported (weak")  # one seed on one side
    assert verdicts["lower training time per epoch"].startswith("not supported")
    table = repr(report.metric_table(agg, {"acc": ("accuracy", 2, 100)}))
    assert "91.00 ± 1.41" in table and "<table>" in report.metric_table(agg, {"acc": ("accuracy", 2, 100)})._repr_html_()


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records")
def test_every_paper_grid_cell_has_a_record():
    agg = report.aggregate(_rows())
    cells = {(c.dataset, c.model, c.objective) for c in paper_grid(seeds=[0])}
    assert len(cells) == 24
    assert cells <= set(agg), sorted(cells - set(agg))


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records")
def test_removing_a_record_changes_the_tables(tmp_path):
    shutil.copytree(RUNS, tmp_path / "runs")
    before = report.aggregate(_rows(tmp_path / "runs"))
    victim = sorted((tmp_path / "runs").glob("*.json"))[0]
    key = tuple(json.loads(victim.read_text())["config"][k] for k in ("dataset", "model", "objective"))
    victim.unlink()
    after = report.aggregate(_rows(tmp_path / "runs"))
    assert after.get(key) != before[key]
    cols = {"acc": ("accuracy", 4, 100)}
    assert repr(report.metric_table(after, cols)) != repr(report.metric_table(before, cols))


@pytest.mark.skipif(not RUNS.is_dir(), reason="no committed records")
def test_records_are_small_and_valid():
    total = sum(p.stat().st_size for p in RUNS.iterdir())
    assert total < 5_000_000, f"records take {total / 1e6:.1f} MB"
    for path in RUNS.glob("*.json"):
        results.validate_record(json.loads(path.read_text()))
