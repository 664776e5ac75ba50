"""Training engine: configuration, one tiny fit, checkpoints and resume, evaluation and timing.

All fits run on tiny synthetic data (``batchcam.train._load_data`` is monkeypatched), on CPU.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import batchcam.train as T
from batchcam.results import load_runs, load_tensors, validate_record
from batchcam.train import OBJECTIVES, TrainConfig, checkpoint_path, evaluate, fit, load_checkpoint, time_gradcam

TIME_KEYS = {"train_time_s", "eval_time_s", "gradcam_time_s", "train_time_per_epoch_s", "gradcam_batch_s",
             "gradcam_loop_s", "gradcam_loop_s_scaled", "gradcam_speedup"}


def synthetic_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 1, 28, 28] images of a bright 8×8 square whose position encodes the class, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = 2 + 5 * (c // 4), 2 + 6 * (c % 4)
        images[i, 0, r:r + 8, col:col + 8] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


def fake_load_data(config: TrainConfig):
    return synthetic_split(config.n_train or 96, config.seed), synthetic_split(config.n_test or 48, 1000)


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr(T, "_load_data", fake_load_data)


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(n_train=96, n_test=48, epochs=2, batch_size=32, device="cpu", out_dir=str(tmp_path),
                eval_cam_loop_samples=8)
    return TrainConfig(**{**base, **kw})


def without_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in TIME_KEYS}


def interrupt_in_epoch(monkeypatch, n: int) -> None:
    """Make the n-th call of ``_train_epoch`` (1-based) raise KeyboardInterrupt, as Ctrl-C would."""
    real, calls = T._train_epoch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "_train_epoch", flaky)


# --------------------------------------------------------------------------- configuration


def test_run_id_is_readable_and_deterministic():
    assert TrainConfig().run_id == "mnist-simplecnn-ce+proto+batchcam-l1-s28-e2-seed0"
    c = TrainConfig(dataset="fashion-mnist", model="convnextv2_tiny", objective="ce", n_train=1000)
    assert c.run_id == "fashion-mnist-convnextv2_tiny-ce-l1-s112-e2-seed0-ntr1000"
    assert TrainConfig(lambda_proto=0.5, layer="layer3", model="resnet18", n_test=7).run_id.endswith(
        "-lp0.5-Llayer3-nte7")
    assert TrainConfig(layer="features").run_id == TrainConfig().run_id  # the default layer is not repeated


@pytest.mark.parametrize("field, value, valid", [
    ("objective", "bogus", OBJECTIVES),
    ("dataset", "cifar10", ("mnist", "fashion-mnist")),
    ("distance", "l3", ("l1", "l2", "ssim")),
    ("optimizer", "rmsprop", ("adam", "sgd", "adamw")),
    ("model", "vgg", ("simplecnn", "resnet18", "convnextv2_tiny")),
])
def test_validation_names_field_and_valid_values(field, value, valid):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value}).validate()
    msg = str(err.value)
    assert f"unknown {field} {value!r}" in msg
    assert all(repr(v) in msg for v in valid)


@pytest.mark.parametrize("kw, match", [
    ({"model": "convnextv2_tiny", "image_size": 28}, "image_size must be ≥ 32"),
    ({"epochs": 0}, "epochs must be > 0"),
    ({"n_train": -1}, "n_train must be > 0"),
    ({"lambda_proto": -1.0}, "lambda_proto must be ≥ 0"),
])
def test_validation_of_ranges(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw).validate()


def test_resolved_fills_model_defaults():
    c = TrainConfig(model="convnextv2_tiny").resolved()
    assert (c.image_size, c.layer) == (112, "stages.3")
    assert TrainConfig(objective="ce+batchcam").terms == ("ce", "batchcam")


# --------------------------------------------------------------------------- one step


def test_ce_baseline_skips_gradcam(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the ce objective must not compute Grad-CAM")

    monkeypatch.setattr(T, "batch_gradcam_with_logits", boom)
    model = T.create_model("simplecnn").train()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 0, 1, 1])
    terms, logits = T.loss_terms(model, x, y, torch.rand(10, 1, 28, 28), TrainConfig(objective="ce").resolved())
    assert set(terms) == {"ce", "total"} and logits.shape == (4, 10)


def test_loss_terms_follow_the_objective():
    torch.manual_seed(0)
    model = T.create_model("simplecnn").train()
    x, y, protos = torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2]), torch.rand(10, 1, 28, 28)
    config = TrainConfig(objective="ce+proto+batchcam", lambda_proto=0.5, lambda_batchcam=2.0).resolved()
    terms, _ = T.loss_terms(model, x, y, protos, config)
    assert set(terms) == {"ce", "proto", "batchcam", "total"}
    expected = terms["ce"] + 0.5 * terms["proto"] + 2.0 * terms["batchcam"]
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()  # double backprop through the maps
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- fit, record, checkpoint


def test_fit_writes_a_valid_record(tmp_path, fake_data):
    run = fit(tiny_config(tmp_path), progress=False)
    record = validate_record(json.loads(run.record_path.read_text()))
    assert record["run_id"] == run.config.run_id and record["scale"] == "cpu-subset"
    assert [row["epoch"] for row in record["history"]] == [1, 2]
    assert record["final"]["accuracy"] == record["history"][-1]["test_accuracy"]
    assert record["final"]["gradcam_loop_samples"] == 8
    assert record["final"]["gradcam_loop_s_scaled"] == pytest.approx(record["final"]["gradcam_loop_s"] * 48 / 8)
    assert not run.model.training
    rows = load_runs(tmp_path / "runs")
    assert [r["run_id"] for r in rows] == [run.config.run_id]
    assert rows[0]["accuracy"] == run.final["accuracy"] and rows[0]["device"] == "cpu"
    tensors = load_tensors(run.config.run_id, tmp_path / "runs")
    assert tensors["average_reconstruction"].shape == (10, 28, 28)
    assert tensors["prototypes"].shape == (10, 1, 28, 28)
    assert checkpoint_path(run.config).is_file()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_history_logs_the_objective_terms(tmp_path, fake_data, objective):
    run = fit(tiny_config(tmp_path, objective=objective, epochs=1, eval_cam_loop_samples=0), progress=False)
    row = run.history[0]
    assert (row["train_proto"] is not None) == ("proto" in objective)
    assert (row["train_batchcam"] is not None) == ("batchcam" in objective)
    assert run.final["gradcam_loop_s"] is None and run.final["gradcam_batch_s"] > 0


def test_interrupt_and_resume_match_an_uninterrupted_run(tmp_path, fake_data, monkeypatch):
    full = fit(tiny_config(tmp_path / "a"), progress=False)

    config = tiny_config(tmp_path / "b")
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(config, progress=False)
    # Ctrl-C during epoch 2: the epoch-1 checkpoint stays, no record and no half-written file.
    assert torch.load(checkpoint_path(config), weights_only=True)["epoch"] == 0
    assert not (tmp_path / "b" / "runs").exists()
    assert not list(tmp_path.rglob("*.tmp"))

    resumed = fit(config, resume=True, progress=False)
    assert [without_times(r) for r in resumed.history] == [without_times(r) for r in full.history]
    assert without_times(resumed.final) == without_times(full.final)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.timings["resumed_from_epoch"] == 1


def test_resume_refuses_a_different_configuration(tmp_path, fake_data):
    fit(tiny_config(tmp_path, epochs=1), progress=False)
    with pytest.raises(ValueError, match="lr: checkpoint 0.001 vs now 0.01"):
        fit(tiny_config(tmp_path, epochs=1, lr=0.01), resume=True, progress=False)


def test_resume_after_the_last_epoch_only_evaluates(tmp_path, fake_data, monkeypatch):
    first = fit(tiny_config(tmp_path, epochs=1), progress=False)
    monkeypatch.setattr(T, "_train_epoch", lambda *a, **k: pytest.fail("nothing left to train"))
    again = fit(tiny_config(tmp_path, epochs=1), resume=True, progress=False)
    assert without_times(again.final) == without_times(first.final)


def test_load_checkpoint_rebuilds_the_model(tmp_path, fake_data):
    run = fit(tiny_config(tmp_path, epochs=1), progress=False)
    model, config = load_checkpoint(checkpoint_path(run.config))
    assert config == run.config and not model.training
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), run.model(x))


# --------------------------------------------------------------------------- evaluate, timing


def test_evaluate_restores_mode_and_reports_quality():
    torch.manual_seed(0)
    model = T.create_model("simplecnn").train()
    images, labels = synthetic_split(20, 0)
    protos = T.class_prototypes(images, labels, 10)
    out = evaluate(model, images, labels, protos, batch_size=8)
    assert model.training
    assert set(out["reconstruction_quality"]) == {"l1", "l2", "ssim", "per_class"}
    assert out["average_reconstruction"].shape == (10, 28, 28) and out["samples"] == 20
    assert 0 <= out["accuracy"] <= 1 and out["gradcam_time_s"] > 0

    timing = time_gradcam(model.eval(), images, labels, n_loop=5, batch_size=4)
    assert not model.training
    assert timing["loop_samples"] == 5 and timing["total_samples"] == 20
    assert timing["loop_s_scaled"] == pytest.approx(timing["loop_s"] * 4)


def test_evaluate_at_another_size():
    model = T.create_model("simplecnn", image_size=36)
    images, labels = synthetic_split(10, 0)
    out = evaluate(model, images, labels, T.class_prototypes(images, labels, 10, size=36), image_size=36)
    assert out["average_reconstruction"].shape == (10, 36, 36)


def test_config_fields_all_have_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))
