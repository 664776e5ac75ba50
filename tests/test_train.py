"""The training engine: ``TrainConfig`` (validation, run id), one step of ``train_one_epoch``, ``fit``,
checkpoints, exact resume and determinism.

Fits run on CPU on tiny synthetic data (``fake_data``) with a tiny network (``tiny_model``), both
from conftest.py; only the configuration checks build the registry's models.
"""

import copy
import dataclasses
import shutil

import pytest
import torch

import batchcam.config as C
import batchcam.losses as L
import batchcam.train as T
from batchcam.config import TrainConfig
from batchcam.data import TensorLoader
from batchcam.loop import NonFiniteLossError, train_one_epoch
from batchcam.losses import OBJECTIVES, Objective, objective_loss
from batchcam.results import record_from_run
from batchcam.train import checkpoint_path, fit, load_checkpoint

TIME_KEYS = {"train_time_s", "eval_time_s"}


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def interrupt_in_epoch(monkeypatch, n):
    """The n-th call of ``train_one_epoch`` (1-based) raises KeyboardInterrupt, as Ctrl-C would."""
    real, calls = T.train_one_epoch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_one_epoch", flaky)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("field, value, valid", [
    ("objective", "bogus", OBJECTIVES),
    ("dataset", "cifar10", ("mnist", "fashion-mnist")),
    ("distance", "l3", ("l1", "l2", "ssim")),
    ("optimizer", "rmsprop", ("adam", "sgd", "adamw")),
    ("model", "vgg", ("simplecnn", "resnet18", "convnextv2_tiny")),
])
def test_validation_names_the_field_and_the_valid_values(field, value, valid):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: value}).validate()
    assert f"unknown {field} {value!r}" in str(err.value)
    assert all(repr(v) in str(err.value) for v in valid)


@pytest.mark.parametrize("kw, match", [
    ({"lr": 0.0}, "--lr must be a finite number > 0"),
    ({"lr": float("nan")}, "--lr must be a finite number > 0"),
    ({"batch_size": 0}, "--batch-size must be"),
    ({"epochs": -1}, "--epochs must be a finite number ≥ 0"),
    ({"lambda_proto": float("inf")}, "--lambda-proto must be a finite number ≥ 0"),
    ({"lambda_batchcam": -0.5}, "--lambda-batchcam must be"),
    ({"weight_decay": float("nan")}, "--weight-decay must be"),
    ({"n_train": 70_000}, "larger than the train split"),
    ({"n_test": 10_001}, "larger than the test split"),
    ({"n_train": 1}, "--n-train must be ≥ 2"),
    ({"image_size": 10}, "use at least 11"),
    ({"model": "convnextv2_tiny", "image_size": 28}, "use at least 32"),
    ({"device": "bogus"}, "--device 'bogus'"),
])
def test_validation_of_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw).validate()


def test_resolved_fills_the_model_defaults():
    c = TrainConfig(model="convnextv2_tiny").resolved()
    assert (c.image_size, c.layer) == (112, "stages.3")
    assert TrainConfig(objective="ce+batchcam", lambda_batchcam=0.3).objective_spec() == Objective(
        (("batchcam", 0.3),), "l1", 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run id is checked on a CPU machine")
def test_run_id_is_readable_and_ends_with_device_and_hash():
    rid = TrainConfig().run_id
    head, _, digest = rid.rpartition("-")
    assert head == "mnist-simplecnn-ce+proto+batchcam-l1-s28-e2-seed0-cpu"
    assert len(digest) == 8 and int(digest, 16) >= 0 and digest == TrainConfig().config_hash
    c = TrainConfig(dataset="fashion-mnist", model="resnet18", objective="ce", n_train=1000, n_test=50,
                    lambda_proto=0.5, layer="layer3")
    assert c.run_id.startswith("fashion-mnist-resnet18-ce-l1-s28-e2-seed0-lp0.5-Llayer3-ntr1000-nte50-cpu-")
    assert TrainConfig(layer="features").run_id == rid  # the default layer is the default


@pytest.mark.parametrize("change", [dict(lr=0.05), dict(batch_size=64), dict(optimizer="sgd"),
                                    dict(optimizer="adamw"), dict(weight_decay=1e-4), dict(seed=1), dict(epochs=3),
                                    dict(objective="ce"), dict(distance="ssim"), dict(lambda_batchcam=0.5),
                                    dict(image_size=32), dict(n_train=500), dict(n_test=500),
                                    dict(channels_last=not torch.cuda.is_available()), dict(dataset="fashion-mnist"),
                                    dict(permute_labels=0)])
def test_run_id_changes_with_every_result_field(change):
    assert TrainConfig(**change).run_id != TrainConfig().run_id


@pytest.mark.parametrize("change", [dict(out_dir="elsewhere"), dict(data_root="/tmp/data"),
                                    dict(eval_cam_loop_samples=0), dict(layer="features")])
def test_run_id_ignores_paths_and_the_timing_sample(change):
    assert TrainConfig(**change).run_id == TrainConfig().run_id


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only machine")
def test_on_cpu_amp_and_default_channels_last_do_not_change_the_run():
    base = TrainConfig().run_id
    assert TrainConfig(amp=False).run_id == base  # amp never takes effect on CPU
    assert TrainConfig(channels_last=False).run_id == base  # the CPU default
    assert TrainConfig(device="cpu").run_id == base  # "auto" resolves to the same device


def test_on_cuda_amp_and_channels_last_change_the_run(monkeypatch):
    monkeypatch.setattr(C, "resolve_device", lambda device: torch.device("cuda" if device in ("cuda", "auto")
                                                                         else device))
    cuda = TrainConfig(device="cuda")
    assert cuda.run_id.rsplit("-", 2)[1] == "cuda"
    assert cuda.result_fields()["amp"] is True and cuda.result_fields()["channels_last"] is True
    assert TrainConfig(device="cuda", amp=False).run_id != cuda.run_id
    assert TrainConfig(device="cuda", channels_last=False).run_id != cuda.run_id
    assert TrainConfig(device="cuda", channels_last=True).run_id == cuda.run_id  # the CUDA default
    assert TrainConfig(device="cpu").run_id != cuda.run_id


def test_every_config_field_has_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


# --------------------------------------------------------------------------- one step


@pytest.mark.parametrize("name", OBJECTIVES)
def test_train_one_epoch_on_one_batch_is_one_manual_step(TinyNet, synthetic, name):
    """``train_one_epoch`` = ``objective_loss`` + backward + step, and nothing else: the same
    parameters, buffers and optimizer state after one batch."""
    torch.manual_seed(0)
    model_a = TinyNet().train()
    model_b = copy.deepcopy(model_a)
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=1e-2, weight_decay=0.1)
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.1)
    images, labels = synthetic(16, 0)
    protos = torch.rand(10, 28, 28)
    objective = Objective.from_name(name, "l1", 0.7, 1.3)
    loader = TensorLoader(images, labels, 16)

    out = train_one_epoch(model_a, objective.bind("features", protos), loader, opt_a)

    x, y = next(iter(TensorLoader(images, labels, 16)))
    terms, logits = objective_loss(objective, model_b, x, y, layer="features", prototypes=protos)
    opt_b.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt_b.step()

    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k
    for k in terms:
        assert out[k] == pytest.approx(terms[k].item(), rel=1e-6)
    assert out["accuracy"] == (logits.argmax(1) == y).float().mean().item()
    assert set(out) == set(terms) | {"accuracy"}


def test_train_one_epoch_raises_on_a_non_finite_loss(TinyNet, synthetic, monkeypatch):
    real = L.objective_loss

    def nan_loss(*args, **kwargs):
        terms, logits = real(*args, **kwargs)
        return {**terms, "total": terms["total"] * float("nan")}, logits

    monkeypatch.setattr(L, "objective_loss", nan_loss)
    model = TinyNet().train()
    images, labels = synthetic(16, 0)
    with pytest.raises(NonFiniteLossError, match="not finite.*No record was written"):
        train_one_epoch(model, Objective.from_name("ce").bind("features"), TensorLoader(images, labels, 8),
                        torch.optim.SGD(model.parameters(), 0.1))


def test_train_one_epoch_refuses_an_unbound_objective(TinyNet, synthetic):
    images, labels = synthetic(8, 0)
    model = TinyNet()
    with pytest.raises(TypeError, match=r"objective\.bind\(layer, prototypes\)"):
        train_one_epoch(model, Objective.from_name("ce"), TensorLoader(images, labels, 8),
                        torch.optim.SGD(model.parameters(), 0.1))


def test_train_one_epoch_takes_at_most_five_parameters():
    """Issue 22: the loss's arguments are bound once in the objective, not passed to the loop."""
    import inspect

    assert len(inspect.signature(train_one_epoch).parameters) <= 5


# --------------------------------------------------------------------------- fit


def test_fit_returns_the_run(tiny_config, fake_data, tiny_model):
    run = fit(tiny_config(), progress=False)
    assert run.config == tiny_config().resolved() and not run.model.training
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert {"train_total", "train_ce", "train_proto", "train_batchcam", "train_accuracy", "test_accuracy",
            "test_l1", "test_ssim", "test_dead_fraction"} <= set(run.history[0])
    assert run.prototypes.shape == (10, 28, 28) and run.average_reconstruction.shape == (10, 28, 28)
    assert run.evaluation["samples"] == 48 and set(run.evaluation["baselines"]) == {"blank", "input"}
    assert run.evaluation["accuracy"] == run.history[-1]["test_accuracy"]
    assert run.timings["gradcam_loop_samples"] == 4
    assert run.timings["gradcam_loop_s_scaled"] == pytest.approx(run.timings["gradcam_loop_s"] * 48 / 4)
    assert run.runtime["device_type"] == "cpu" and run.runtime["amp"] is False
    assert checkpoint_path(run.config).is_file()
    assert not (checkpoint_path(run.config).parent.parent / "runs").exists()  # fit writes no record


def test_cudnn_autotuning_is_on_for_training_and_off_for_the_faithfulness_scores(tiny_config, fake_data, tiny_model,
                                                                                  monkeypatch):
    """On CUDA ``fit`` autotunes cuDNN, except around the faithfulness scores, whose batches change size from
    call to call (each new shape would be tuned again). On a CPU the flag is inert; set here to see it."""
    from batchcam._helpers import cudnn_autotune

    seen = {}
    real_faith, real_epoch = T.faithfulness, T.train_one_epoch

    def faith(*a, **k):
        seen["faithfulness"] = torch.backends.cudnn.benchmark
        return real_faith(*a, **k)

    def epoch(*a, **k):
        seen["training"] = torch.backends.cudnn.benchmark
        return real_epoch(*a, **k)

    monkeypatch.setattr(T, "faithfulness", faith)
    monkeypatch.setattr(T, "train_one_epoch", epoch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    fit(tiny_config(epochs=1), progress=False)
    assert seen == {"training": True, "faithfulness": False} and torch.backends.cudnn.benchmark is True
    torch.backends.cudnn.benchmark = False
    with cudnn_autotune(torch.device("cuda")):  # only a flag: no GPU needed
        assert torch.backends.cudnn.benchmark is True
        with cudnn_autotune(torch.device("cuda"), on=False):
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


def test_fit_with_zero_epochs_evaluates_the_untrained_model(tiny_config, fake_data, tiny_model, monkeypatch):
    monkeypatch.setattr(T, "train_one_epoch", lambda *a, **k: pytest.fail("epochs=0 must not train"))
    run = fit(tiny_config(epochs=0, objective="ce"), progress=False)
    assert run.history == [] and run.timings["train_time_per_epoch_s"] is None
    assert 0 <= run.evaluation["accuracy"] <= 1


def test_fit_accepts_data_and_does_not_load(tiny_config, tiny_model, synthetic, monkeypatch):
    monkeypatch.setattr(T, "load_data", lambda config: pytest.fail("data was given"))
    run = fit(tiny_config(epochs=1), progress=False, data=(synthetic(40, 0), synthetic(20, 1)))
    assert run.evaluation["samples"] == 20


def test_a_loss_that_becomes_nan_stops_fit(tiny_config, fake_data, tiny_model, nan_after_first_step):
    with pytest.raises(NonFiniteLossError):
        fit(tiny_config(), progress=False)
    assert not checkpoint_path(tiny_config()).exists()  # the epoch did not complete


def test_two_runs_with_the_same_seed_are_bit_identical(tiny_config, fake_data, tiny_model, tmp_path):
    a = fit(tiny_config(out_dir=str(tmp_path / "a")), progress=False)
    b = fit(tiny_config(out_dir=str(tmp_path / "b")), progress=False)
    ra, rb = record_from_run(a)[0], record_from_run(b)[0]
    assert ra["final"] == rb["final"]
    assert without_times(ra["history"]) == without_times(rb["history"])
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k
    assert torch.equal(a.average_reconstruction, b.average_reconstruction)
    c = fit(tiny_config(out_dir=str(tmp_path / "c"), seed=1, epochs=1), progress=False)
    assert record_from_run(c)[0]["final"] != ra["final"]  # the comparison can fail


def test_interrupt_and_resume_give_the_record_of_an_uninterrupted_run(tiny_config, fake_data, tiny_model,
                                                                      tmp_path, monkeypatch):
    full = fit(tiny_config(out_dir=str(tmp_path / "a")), progress=False)
    config = tiny_config(out_dir=str(tmp_path / "b"))
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(config, progress=False)
    # Ctrl-C in epoch 2: the epoch-1 checkpoint stays, and no half-written file
    assert torch.load(checkpoint_path(config), weights_only=True)["epoch"] == 0
    assert not list(tmp_path.rglob("*.tmp"))

    resumed = fit(config, resume=True, progress=False)
    (rec_full, t_full), (rec_res, t_res) = record_from_run(full), record_from_run(resumed)
    assert rec_res["final"] == rec_full["final"]
    assert without_times(rec_res["history"]) == without_times(rec_full["history"])
    assert rec_res["run_id"] == rec_full["run_id"] and rec_res["config_hash"] == rec_full["config_hash"]
    for k in t_full:
        assert torch.equal(t_full[k], t_res[k]), k
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.timings["resumed_from_epoch"] == 1


def test_resume_without_a_checkpoint_starts_from_scratch(tiny_config, fake_data, tiny_model, tmp_path):
    a = fit(tiny_config(epochs=1, out_dir=str(tmp_path / "a")), resume=True, progress=False)
    b = fit(tiny_config(epochs=1, out_dir=str(tmp_path / "b")), progress=False)
    assert record_from_run(a)[0]["final"] == record_from_run(b)[0]["final"]
    assert a.timings["resumed_from_epoch"] is None


def test_resuming_a_checkpoint_of_another_configuration_is_refused(tiny_config, fake_data, tiny_model):
    """Another lr is another run id, so its checkpoint is never found by accident; one put in its
    place (copied, renamed) is refused with the differing fields named."""
    first = fit(tiny_config(epochs=1), progress=False)
    other = tiny_config(epochs=1, lr=0.01)
    assert checkpoint_path(other) != checkpoint_path(first.config)
    shutil.copy(checkpoint_path(first.config), checkpoint_path(other))
    with pytest.raises(ValueError, match=r"another configuration \(lr: checkpoint 0.001 vs now 0.01\).*delete"):
        fit(other, resume=True, progress=False)


def test_resume_after_the_last_epoch_only_evaluates(tiny_config, fake_data, tiny_model, monkeypatch):
    first = fit(tiny_config(epochs=1), progress=False)
    monkeypatch.setattr(T, "train_one_epoch", lambda *a, **k: pytest.fail("nothing left to train"))
    again = fit(tiny_config(epochs=1), resume=True, progress=False)
    assert record_from_run(again)[0]["final"] == record_from_run(first)[0]["final"]


def test_load_checkpoint_rebuilds_the_model(tiny_config, fake_data, tiny_model):
    run = fit(tiny_config(epochs=1), progress=False)
    model, config = load_checkpoint(checkpoint_path(run.config))
    assert config == run.config and not model.training
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), run.model(x))


# --------------------------------------------------------------------------- evaluation and timing


def test_evaluate_restores_the_mode_and_time_gradcam_scales(TinyNet, synthetic):
    torch.manual_seed(0)
    model = TinyNet().train()
    images, labels = synthetic(20, 0)
    protos = T.class_prototypes(images, labels, 10)
    out = T.evaluate(model, images, labels, protos, layer="features", batch_size=8)
    assert model.training
    assert {"l1", "l2", "ssim", "ssim_valid", "dead_fraction", "dispersion", "corr_image", "corr_prototype",
            "per_class"} == set(out["maps"])
    timing = T.time_gradcam(model.eval(), images, labels, layer="features", n_loop=5, batch_size=4)
    assert not model.training
    assert timing["loop_samples"] == 5 and timing["loop_s_scaled"] == pytest.approx(timing["loop_s"] * 4)
    assert T.time_gradcam(model, images, labels, layer="features", n_loop=0)["loop_s"] is None


def test_an_fp16_loss_scaler_gives_the_plain_step(TinyNet, synthetic):
    """Issue 25: with a GradScaler (fp16 training's) the epoch's losses and weights are the plain path's:
    the scale multiplies the loss and divides the gradients again before the step (float32 here, on CPU)."""
    images, labels = synthetic(32, 0)
    protos = torch.rand(10, 28, 28)
    out, params = [], []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)):
        torch.manual_seed(0)
        model = TinyNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bound = Objective.from_name("ce+proto+batchcam", num_classes=10).bind("features", protos, scaler=scaler)
        out.append(train_one_epoch(model, bound, TensorLoader(images, labels, 8), opt))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert out[0].keys() == out[1].keys()
    for k in out[0]:
        assert out[1][k] == pytest.approx(out[0][k], rel=1e-5, abs=1e-6), k
    assert torch.allclose(params[0], params[1], rtol=1e-4, atol=1e-6)


def test_the_amp_dtype_changes_the_run_id_only_where_autocast_runs():
    """A CPU run ignores autocast, so --amp-dtype fp16 there is the same run; the default keeps old ids."""
    base = TrainConfig(dataset="mnist", objective="ce", device="cpu")
    assert TrainConfig(dataset="mnist", objective="ce", device="cpu", amp_dtype="fp16").run_id == base.run_id
    assert "amp_dtype" not in base.result_fields()
    with pytest.raises(ValueError, match="amp-dtype"):
        TrainConfig(dataset="mnist", objective="ce", device="cpu", amp_dtype="fp8").validate()
