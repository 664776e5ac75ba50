"""Chapter 8's prototype source ``ce-maps``: the Prototype Loss pulls the maps towards the
class-mean Grad-CAM maps of the trained ``ce`` model of the same seed. Checked against a slow
per-image reference written here, and for the reuse of the teacher's checkpoint."""

import pytest
import torch

from batchcam.cam import gradcam_loop
from batchcam.config import TrainConfig
from batchcam.results import record_from_run
from batchcam.train import checkpoint_path, fit, load_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic):
    out = str(tmp_path_factory.mktemp("cemaps"))
    data = (synthetic(40, 1), synthetic(20, 2))  # a bright square whose place is the class
    base = dict(model="simplecnn", objective="ce+proto", epochs=1, batch_size=20, device="cpu", seed=4,
                out_dir=out, eval_cam_loop_samples=0, eval_faithfulness_samples=0)
    config = TrainConfig(**base, prototype_source="ce-maps")
    teacher = TrainConfig(**{**base, "objective": "ce"})
    first = fit(config, data=data, progress=False)
    stamp = checkpoint_path(teacher).stat().st_mtime_ns
    second = fit(config, data=data, progress=False)
    plain = fit(TrainConfig(**base), data=data, progress=False)
    return dict(config=config, teacher=teacher, data=data, first=first, second=second, plain=plain,
                stamp=stamp)


def test_the_targets_are_the_class_mean_maps_of_the_ce_model(runs):
    model, config = load_checkpoint(checkpoint_path(runs["teacher"]))
    assert config.objective == "ce"
    (x, y), _ = runs["data"]
    maps = gradcam_loop(model, x.float() / 255, config.resolved().layer, y)  # one backward per image
    slow = torch.stack([maps[y == c].mean(0) for c in range(10)])
    slow = slow / slow.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    torch.testing.assert_close(runs["first"].target_prototypes, slow.float(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(runs["first"].target_prototypes, runs["first"].prototypes, atol=0.05)


def test_the_teacher_checkpoint_is_reused_and_the_run_repeats(runs):
    assert checkpoint_path(runs["teacher"]).stat().st_mtime_ns == runs["stamp"]  # not trained again
    torch.testing.assert_close(runs["first"].target_prototypes, runs["second"].target_prototypes)
    numbers = [{k: v for k, v in run.history[0].items() if not k.endswith("_s")}
               for run in (runs["first"], runs["second"])]  # the teacher trained here, then loaded
    assert numbers[0] == numbers[1]


def test_only_the_loss_target_changes(runs):
    first, plain = runs["first"], runs["plain"]
    torch.testing.assert_close(first.prototypes, plain.prototypes)  # evaluated against the images
    assert plain.target_prototypes is None
    assert first.history[0]["train_proto"] != plain.history[0]["train_proto"]
    record, tensors = record_from_run(first)
    assert set(tensors) == {"average_reconstruction", "prototypes", "target_prototypes"}
    assert "pcemaps" in record["run_id"] and record["run_id"] != plain.config.run_id
    assert "target_prototypes" not in record_from_run(plain)[1]


@pytest.mark.parametrize("objective", ["ce", "ce+batchcam"])
def test_a_prototype_source_without_the_prototype_loss_is_refused(objective):
    with pytest.raises(ValueError, match="changes only the Prototype Loss"):
        TrainConfig(device="cpu", objective=objective, prototype_source="ce-maps").validate()
