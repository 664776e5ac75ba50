"""Chapter 8's options: the RRR-G penalty, the Batch-CAM loss without stop-gradient, min-max training
maps, the decoy patches through the loader and the evaluation, the decoy grid, and the run ids of
older records (options added later stay out of their hash). Each against a slow reference here."""

import json
from pathlib import Path

import pytest
import torch
from _tiny import TinyCNN

from batchcam.cam import batch_gradcam_with_logits
from batchcam.config import LATER_FIELDS, TrainConfig
from batchcam.data import TensorLoader
from batchcam.decoy import DecoySplits, make_decoy, relevance_mass
from batchcam.evaluate import decoy_metrics
from batchcam.grid import DECOY_CELLS, decoy_cell, decoy_grid
from batchcam.losses import Objective, batchcam_loss, objective_loss, rrr_loss
from batchcam.report import aggregate

REPO = Path(__file__).resolve().parents[1]


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rrr_loss_is_the_mean_map_value_inside_each_mask():
    maps = _rand(5, 8, 8)
    masks = torch.zeros(5, 8, 8, dtype=torch.bool)
    for b in range(5):
        masks[b, b:b + 2, 8 - 3:] = True
    slow = sum(float(maps[b][masks[b]].mean()) for b in range(5)) / 5
    assert float(rrr_loss(maps, masks)) == pytest.approx(slow, rel=1e-12)
    assert float(rrr_loss(maps[:0], masks[:0])) == 0.0


def test_batchcam_loss_without_stop_gradient_differentiates_the_class_means_too():
    y = torch.tensor([0, 0, 1, 1, 1])
    r = _rand(5, 6, 6, seed=1).requires_grad_()
    means = torch.stack([r[y == c].mean(0) for c in (0, 1)])  # slow reference, not detached
    grads = {}
    for kind, d in (("l1", lambda a: a.abs()), ("l2", lambda a: a ** 2)):
        loss = batchcam_loss(r, y, kind, num_classes=2, stop_gradient=False)
        ref = d(r - means[y]).flatten(1).mean(1).mean()
        assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
        g, = torch.autograd.grad(loss, r, retain_graph=True)
        torch.testing.assert_close(g, torch.autograd.grad(ref, r, retain_graph=True)[0])
        grads[kind] = g, torch.autograd.grad(batchcam_loss(r, y, kind, num_classes=2), r)[0]
    assert not torch.allclose(*grads["l1"])  # L1: the mean's share of the gradient is not zero
    torch.testing.assert_close(*grads["l2"])  # L2: Σ_b (R_b − R̄) = 0, so the stop-gradient changes nothing


def test_objective_options_reach_the_maps_and_the_rrr_term():
    model, x, y = TinyCNN(classes=4).double(), _rand(6, 1, 12, 12, seed=2), torch.tensor([0, 1, 2, 3, 0, 1])
    masks = torch.zeros(6, 12, 12, dtype=torch.bool)
    masks[:, :4, :4] = True
    obj = Objective.from_name("ce+rrr", lambda_rrr=2.0, normalize="minmax", num_classes=4)
    terms, _ = objective_loss(obj, model, x, y, layer="features", masks=masks)
    maps, _ = batch_gradcam_with_logits(model, x, "features", y, normalize="minmax")
    assert float(terms["rrr"]) == pytest.approx(float(rrr_loss(maps, masks)), rel=1e-6)  # float32 losses
    assert float(terms["total"]) == pytest.approx(float(terms["ce"] + 2 * terms["rrr"]), rel=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        Objective.from_name("ce+proto", normalize="sum")


def test_options_added_later_keep_the_run_ids_of_older_records():
    older = 0
    for path in sorted((REPO / "results" / "runs").glob("*simplecnn-ce+proto+batchcam-l1-s28-e2-seed0*.json")):
        record = json.loads(path.read_text())
        older += not set(LATER_FIELDS) & set(record["config"])  # made before the options existed
        assert TrainConfig(**record["config"]).run_id == record["run_id"]
    assert older
    base = TrainConfig(device="cpu", objective="ce")
    assert TrainConfig(device="cpu", objective="ce", decoy="test").run_id != base.run_id


@pytest.mark.parametrize("fields, needle", [
    (dict(objective="ce+rrr"), "needs --decoy train\\+test"),
    (dict(prototype_source="clean"), "only with --decoy train\\+test"),
    (dict(decoy="somewhere"), "decoy"),
    (dict(lambda_rrr=-1.0), "lambda-rrr"),
])
def test_bad_chapter7_options_are_refused_with_the_fix(fields, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(device="cpu", **fields).validate()


def test_check_ready_refuses_a_loss_at_a_layer_before_a_train_mode_batchnorm(tmp_path):
    TrainConfig(device="cpu", objective="ce", layer="features.9", out_dir=str(tmp_path)).check_ready()
    with pytest.raises(ValueError, match="features.9.*A loss needs a layer"):
        TrainConfig(device="cpu", objective="ce+proto", layer="features.9", out_dir=str(tmp_path)).check_ready()


def _decoy_splits(n=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 100, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    test_x, info = make_decoy(images, labels, train=False, seed=seed, patch=3)
    return DecoySplits((images, labels), (test_x, labels), (images, labels), (images, labels), None,
                       info["mask"], info["grey_class"], {"seed_test": seed})


def test_the_loader_slices_and_resizes_the_masks_with_their_images():
    splits = _decoy_splits()
    loader = TensorLoader(*splits.test, 5, shuffle=True, seed=1, masks=splits.test_masks)
    for x, y, m in loader:  # the patch pixels are exactly where the mask is
        grey = x[:, 0] * 255
        for b in range(len(y)):
            assert torch.allclose(grey[b][m[b]], grey[b][m[b]][0]) and int(m[b].sum()) == 9
    big = TensorLoader(*splits.test, 12, image_size=24, masks=splits.test_masks)
    _, _, m = next(iter(big))
    assert m.shape == (12, 24, 24) and int(m[0].sum()) == 36  # nearest: each pixel becomes 2 × 2


def test_decoy_metrics_equal_a_direct_computation():
    splits = _decoy_splits()
    model = TinyCNN(classes=4).eval()
    out = decoy_metrics(model, splits, layer="features")
    x = splits.test[0].float() / 255
    maps, logits = batch_gradcam_with_logits(model, x, "features", splits.test[1])
    clean_pred = model(splits.clean_test[0].float() / 255).argmax(1)
    assert out["relevance_mass"] == pytest.approx(float(relevance_mass(maps, splits.test_masks).mean()), rel=1e-5)
    assert out["follows_patch"] == pytest.approx(float((logits.argmax(1) == splits.test_grey_class).double().mean()))
    assert out["clean_accuracy"] == pytest.approx(float((clean_pred == splits.clean_test[1]).double().mean()))
    assert out["seed_test"] == 3


def test_the_decoy_grid_has_every_cell_once_per_seed_and_dataset():
    configs = decoy_grid()
    assert len(configs) == len(DECOY_CELLS) * 3 * 2 and len({c.run_id for c in configs}) == len(configs)
    assert {decoy_cell(c) for c in configs} == set(DECOY_CELLS)
    assert decoy_cell(TrainConfig(device="cpu")) is None


def test_aggregate_keeps_decoy_runs_out_and_prefers_the_grids_recipe(make_record):
    rows = []
    for lr, seeds in ((1e-3, (0, 1, 2)), (2e-3, (0, 1, 2))):
        for s in seeds:
            record, _ = make_record(seed=s, objective="ce", lr=lr, n_train=None, final={"accuracy": lr * 100})
            rows.append({**record["config"], "run_id": record["run_id"], "scale": "cpu-full", "device": "cpu",
                         "device_name": "cpu", "accuracy": lr * 100, "dead_fraction": 0.0})
    decoy = dict(rows[-1], decoy="train+test", accuracy=0.5, run_id="decoy")
    cell = aggregate(rows + [decoy])[("mnist", "simplecnn", "ce")]
    assert cell["n"] == 3 and cell["lr"] == 2e-3 and cell["accuracy"][0] == pytest.approx(0.2)


def _decoy_rows(cell_fields, mass, acc, seeds=(0, 1, 2), dataset="mnist"):
    rows = []
    for s in seeds:
        c = TrainConfig(device="cpu", dataset=dataset, seed=s, **cell_fields).resolved()
        rows.append({**c.__dict__, "run_id": f"{c.run_id}", "scale": "cpu-full", "accuracy": acc + 0.001 * s,
                     "decoy_relevance_mass": mass + 0.001 * s, "decoy_clean_accuracy": 0.9,
                     "decoy_follows_patch": 0.5, "dead_fraction": 0.0})
    return rows


def test_the_spurious_verdict_needs_lower_relevance_mass_and_shortcut_cost_in_every_voting_dataset():
    from batchcam.spurious import decoy_aggregate, decoy_table, spurious_verdict

    ce, cpb = DECOY_CELLS["ce"], DECOY_CELLS["ce+proto+batchcam"]
    rows = _decoy_rows(ce, mass=0.40, acc=0.30) + _decoy_rows(cpb, mass=0.10, acc=0.80)
    agg = decoy_aggregate(rows)
    assert agg[("mnist", "simplecnn", "ce")]["decoy_relevance_mass"][0] == pytest.approx(0.401)
    assert agg[("mnist", "simplecnn", "ce")]["shortcut_cost"][0] == pytest.approx(0.9 - 0.301)
    assert spurious_verdict(agg)["verdict"] == "supported"
    # more accurate on decoyed images only because more accurate everywhere: not a suppression
    everywhere = [dict(r, decoy_clean_accuracy=r["accuracy"] + 0.6) for r in _decoy_rows(cpb, 0.1, 0.8)]
    assert spurious_verdict(decoy_aggregate(_decoy_rows(ce, 0.4, 0.3) + everywhere))["verdict"] == "not supported"
    worse = _decoy_rows(ce, 0.4, 0.3, dataset="fashion-mnist") + _decoy_rows(cpb, 0.1, 0.2, dataset="fashion-mnist")
    assert spurious_verdict(decoy_aggregate(rows + worse))["verdict"].startswith("mixed")
    few = _decoy_rows(ce, 0.4, 0.3, seeds=(0,)) + _decoy_rows(cpb, 0.1, 0.8, seeds=(0,))
    assert spurious_verdict(decoy_aggregate(few))["verdict"].startswith("not testable")
    assert "not voted" in repr(decoy_table(decoy_aggregate(few)))
