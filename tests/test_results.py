"""Run records: provenance, validation, atomic writes, tables and stored tensors.

Records are built from hand-made ``Run`` objects, so no training happens here.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

import batchcam._helpers as helpers
import batchcam.results as R
from batchcam.train import Run, TrainConfig


def fake_run(out_dir: Path, accuracy: float = 0.9, size: int = 28, config: TrainConfig = None, **config_kw) -> Run:
    """A finished run with made-up metrics (what ``fit`` would return) of ``config`` or of a small default one."""
    config = (config or TrainConfig(out_dir=str(out_dir), device="cpu", n_train=10, **config_kw)).resolved()
    row = {"epoch": 1, "train_loss": 1.0, "train_ce": 1.0, "train_proto": None, "train_batchcam": None,
           "train_accuracy": 0.5, "test_accuracy": accuracy, "test_l1": 0.1, "test_l2": 0.02, "test_ssim": 0.4,
           "train_time_s": 2.0, "eval_time_s": 0.5, "gradcam_time_s": 0.1}
    final = {"accuracy": accuracy, "l1": 0.1, "l2": 0.02, "ssim": 0.4, "per_class": {"l1": [0.1] * 10},
             "train_time_per_epoch_s": 2.0, "gradcam_batch_s": 0.1, "gradcam_loop_s": 0.3,
             "gradcam_loop_s_scaled": 3.0}
    return Run(config=config, model=None, history=[row], final=final, record_path=None,
               prototypes=torch.rand(10, 1, size, size), average_reconstruction=torch.rand(10, size, size),
               timings={"train_time_s": [2.0]},
               runtime={"device": "cpu", "device_type": "cpu", "amp": False, "channels_last": False})


def tmp_files(root: Path) -> list:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_provenance_fields():
    p = R.provenance("cpu")
    for key in ("git_commit", "git_dirty", "torch", "torchvision", "timm", "torchmetrics", "python", "platform",
                "device_name", "cpu_count", "torch_threads", "gpu_count", "date_utc"):
        assert key in p
    assert torch.__version__.startswith(p["torch"].split("+")[0])
    assert p["date_utc"].endswith("+00:00") and p["device_name"]
    json.dumps(p)


def test_provenance_fails_soft_without_git(monkeypatch):
    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    p = R.provenance()
    assert p["git_commit"] is None and p["git_dirty"] is None


@pytest.mark.parametrize("device, subset, label", [("cpu", False, "cpu-full"), ("cpu", True, "cpu-subset"),
                                                   ("cuda", False, "gpu-full"), ("cuda", True, "gpu-subset")])
def test_scale_label(device, subset, label):
    assert R.scale_label(device, subset) == label


def test_write_validate_and_load(tmp_path):
    run = fake_run(tmp_path)
    path = R.write_record(run)
    assert path == tmp_path / "runs" / f"{run.config.run_id}.json"
    record = R.load_record(path)
    assert set(R.REQUIRED_KEYS) <= set(record) and record["scale"] == "cpu-subset"
    assert R.is_complete(run.config.run_id, tmp_path / "runs")
    (row,) = R.load_runs(tmp_path / "runs")
    assert row["run_id"] == run.config.run_id and row["accuracy"] == 0.9 and row["dataset"] == "mnist"
    tensors = R.load_tensors(run.config.run_id, tmp_path / "runs")
    torch.testing.assert_close(tensors["average_reconstruction"], run.average_reconstruction, atol=1e-3, rtol=0)
    assert not tmp_files(tmp_path)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("provenance"), r"lacks keys \['provenance'\]"),
    (lambda r: r["final"].pop("ssim"), r"'final' lacks \['ssim'\]"),
    (lambda r: r.update(history=[]), "non-empty list"),
    (lambda r: r.update(schema_version=99), "schema_version 99"),
])
def test_validate_record_names_the_problem(tmp_path, mutate, match):
    record = R.build_record(fake_run(tmp_path))
    R.validate_record(record)
    mutate(record)
    with pytest.raises(ValueError, match=match):
        R.validate_record(record)


def test_failed_write_leaves_the_old_record_intact(tmp_path, monkeypatch):
    path = R.write_record(fake_run(tmp_path, accuracy=0.5))
    before = path.read_bytes()
    tensors_before = (path.parent / f"{path.stem}.tensors.pt").read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(helpers.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        R.write_record(fake_run(tmp_path, accuracy=0.99))
    assert path.read_bytes() == before
    assert (path.parent / f"{path.stem}.tensors.pt").read_bytes() == tensors_before
    assert not tmp_files(tmp_path)


def test_large_maps_are_stored_at_56_px(tmp_path):
    run = fake_run(tmp_path, size=112, model="convnextv2_tiny")
    R.write_record(run)
    record = R.load_record(R.record_path(run.config.run_id, tmp_path / "runs"))
    assert record["tensors"]["image_size"] == 112 and record["tensors"]["stored_size"] == 56
    assert "downsampled" in record["tensors"]["note"]
    tensors = R.load_tensors(run.config.run_id, tmp_path / "runs")
    assert tensors["average_reconstruction"].shape == (10, 56, 56)
    assert tensors["prototypes"].shape == (10, 1, 56, 56)
    expected = torch.nn.functional.avg_pool2d(run.average_reconstruction[:, None], 2)[:, 0]
    torch.testing.assert_close(tensors["average_reconstruction"], expected, atol=1e-3, rtol=0)


def test_load_runs_skips_bad_files_and_sorts(tmp_path):
    for seed in (2, 0, 1):
        R.write_record(fake_run(tmp_path, seed=seed))
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    (tmp_path / "runs" / "partial.json").write_text(json.dumps({"run_id": "partial"}))
    with pytest.warns(UserWarning, match="skipping"):
        rows = R.load_runs(tmp_path / "runs")
    assert [r["seed"] for r in rows] == [0, 1, 2]
    assert not R.is_complete("partial", tmp_path / "runs")


def test_load_runs_as_frame_without_pandas_falls_back(tmp_path, monkeypatch):
    import builtins

    R.write_record(fake_run(tmp_path))
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.warns(UserWarning, match="pandas"):
        rows = R.load_runs(tmp_path / "runs", as_frame=True)
    assert isinstance(rows, list) and len(rows) == 1
