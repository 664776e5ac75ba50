"""Chapter 9's controls: reliance, the area-normalised relevance mass, the stronger decoy patches, Ross's
input-gradient penalty (ce+rrr-input), the validation split of decoy runs and the decoy verdict grid."""

import json
from pathlib import Path

import pytest
import torch
from _tiny import TinyCNN
from torch import nn

from batchcam.config import LATER_FIELDS, OBJECTIVE_FIELDS, TrainConfig
from batchcam.decoy import (
    DECOY_PATCHES,
    DecoySplits,
    class_textures,
    consistent_test,
    load_decoy,
    make_decoy,
    paint_patch,
    relevance_mass_ratio,
)
from batchcam.evaluate import decoy_metrics, decoy_validation
from batchcam.grid import (
    DECOY_CELLS,
    DECOY_VERDICT_CELLS,
    GRIDS,
    ORACLE_LAMBDAS,
    ORACLE_SHARE,
    VERDICT_PROTOCOL,
    choose_oracle_lambda,
    decoy_cell,
    decoy_grid,
    decoy_tuning_grid,
    decoy_verdict_cell,
    decoy_verdict_grid,
)
from batchcam.losses import Objective, input_gradient_penalty, objective_loss

REPO = Path(__file__).resolve().parents[1]
LEVELS = (255 - 25 * torch.arange(10)).double() / 255  # grey level of each class, in [0, 1]
LAMBDAS = {"ce+rrr-input": 1.0, "ce+rrr": 3.0}  # the oracles' λ, given (the grid otherwise reads the tuning runs)


# --------------------------------------------------------------------------- reliance, with hand-set models


class ReadsOnePlace(nn.Module):
    """Predicts the class whose grey level is nearest to one value read from the image: the brightest of
    the four corner pixels (``where="corners"``: reads only the decoy patch) or the centre pixel
    (``where="centre"``: ignores the patch). ``features`` (identity 1×1 conv) is the Grad-CAM layer."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.features.weight)

    def forward(self, x):
        a = self.features(x)[:, 0]
        if self.where == "corners":
            v = torch.stack([a[:, 0, 0], a[:, 0, -1], a[:, -1, 0], a[:, -1, -1]], 1).amax(1)
        else:
            v = a[:, a.shape[1] // 2, a.shape[2] // 2]
        return -100 * (v[:, None] - LEVELS.to(v)[None]) ** 2


def _splits(n=400, variant="ross4", size=16):
    """Blank images whose centre pixel carries the label's grey level; the decoy on top (DecoySplits)."""
    y = torch.arange(n) % 10
    clean = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    clean[:, 0, size // 2, size // 2] = (255 - 25 * y).to(torch.uint8)
    kw = DECOY_PATCHES[variant]
    test_x, info = make_decoy(clean, y, train=False, seed=5, **kw)
    return DecoySplits((clean, y), (test_x, y), (clean, y), (clean, y), None, info["mask"], info["grey_class"],
                       {"seed_test": 5}, None, variant)


def test_reliance_is_large_for_a_model_that_reads_only_the_patch_and_zero_for_one_that_ignores_it():
    splits = _splits()
    chance = float((splits.test_grey_class == splits.test[1]).double().mean())  # r == y by chance
    reads = decoy_metrics(ReadsOnePlace("corners"), splits, layer="features")
    assert reads["consistent_accuracy"] == 1.0
    assert reads["random_accuracy"] == pytest.approx(chance)
    assert reads["reliance"] == pytest.approx(1.0 - chance) and reads["reliance"] > 0.8
    assert reads["follows_patch"] == 1.0
    ignores = decoy_metrics(ReadsOnePlace("centre"), splits, layer="features")
    assert ignores["consistent_accuracy"] == ignores["random_accuracy"] == ignores["clean_accuracy"] == 1.0
    assert ignores["reliance"] == 0.0
    for key in ("relevance_mass", "follows_patch", "seed_test", "relevance_mass_ratio", "relevance_mass_ratio_std",
                "relevance_mass_ratio_ci95", "relevance_mass_ratio_consistent"):
        assert key in reads  # the old keys stay, the new ones are there


def test_the_consistent_twin_differs_from_the_test_set_only_inside_the_patch():
    for variant in DECOY_PATCHES:
        splits = _splits(variant=variant, size=28)
        twin, y = consistent_test(splits)
        assert torch.equal(y, splits.test[1])
        differ = (twin != splits.test[0])[:, 0]
        assert not bool((differ & ~splits.test_masks).any())  # same images, same positions
        same_class = splits.test_grey_class == y
        assert not bool(differ[same_class].any())  # where r happens to equal y the twins are equal
        assert bool(differ[~same_class].flatten(1).any(1).all())  # elsewhere the patch differs
        ref, _ = make_decoy(splits.clean_test[0], y, train=True, seed=5, **DECOY_PATCHES[variant])
        assert torch.equal(twin, ref)  # = the training rule at the test positions (same seed: same coins)


def test_prototype_patch_ratio_uses_the_true_class_prototype_at_each_test_patch():
    splits = _splits(n=40, size=16)
    protos = torch.zeros(10, 16, 16)
    protos[:, :4, :4] = 1.0  # all mass in the top-left corner
    out = decoy_metrics(ReadsOnePlace("centre"), splits, layer="features", prototypes=protos)
    top_left = (splits.test_masks[:, 0, 0]).double().mean()
    assert out["prototype_patch_ratio"] == pytest.approx(float(top_left) * 256 / 16)


# --------------------------------------------------------------------------- area normalisation


def test_relevance_mass_ratio_is_one_for_a_uniform_map():
    mask = torch.zeros(3, 28, 28, dtype=torch.bool)
    mask[0, :4, :4], mask[1, -8:, -8:], mask[2, :6, -6:] = True, True, True
    torch.testing.assert_close(relevance_mass_ratio(torch.ones(3, 28, 28), mask), torch.ones(3))
    inside = mask.float()
    torch.testing.assert_close(relevance_mass_ratio(inside, mask), 784 / mask.flatten(1).sum(1).float())
    assert relevance_mass_ratio(torch.zeros(3, 28, 28), mask).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="at least one pixel"):
        relevance_mass_ratio(torch.ones(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- the stronger decoy patches


def _synthetic(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("variant", ["grey8", "texture6"])
@pytest.mark.parametrize("train", [True, False])
def test_stronger_patches_sit_in_a_corner_and_encode_their_class(variant, train):
    x, y = _synthetic()
    kw = DECOY_PATCHES[variant]
    p = kw["patch"]
    out, info = make_decoy(x, y, train=train, seed=3, **kw)
    assert out.shape == x.shape and out.dtype == torch.uint8
    mask = info["mask"]
    for i in range(0, len(y), 97):  # the patch is the p × p square of the corner the coins chose
        c = int(info["corner"][i])
        r0, c0 = (28 - p) * (c // 2), (28 - p) * (c % 2)
        expected = torch.zeros(28, 28, dtype=torch.bool)
        expected[r0:r0 + p, c0:c0 + p] = True
        assert torch.equal(mask[i], expected)
        patch = out[i, 0, r0:r0 + p, c0:c0 + p]
        k = int(info["grey_class"][i])
        want = class_textures(p)[k] if kw["kind"] == "texture" else torch.full((p, p), 255 - 25 * k)
        assert torch.equal(patch, want.to(torch.uint8))
    assert torch.equal(out[:, 0][~mask], x[:, 0][~mask])
    assert torch.equal(info["grey_class"], y) == train  # train: the label; test: a random class
    counts = torch.bincount(info["corner"], minlength=4).double()
    assert ((counts - len(y) / 4).abs() < 4 * (len(y) * 0.25 * 0.75) ** 0.5).all()


def test_class_textures_are_fixed_binary_distinct_and_not_uniform():
    t = class_textures(6)
    assert t.shape == (10, 6, 6) and t.dtype == torch.uint8 and set(t.unique().tolist()) == {0, 255}
    assert torch.equal(t, class_textures(6))
    assert len({tuple(r.tolist()) for r in t.flatten(1)}) == 10
    hamming = (t.flatten(1)[:, None] != t.flatten(1)[None]).sum(-1)
    assert int(hamming[~torch.eye(10, dtype=torch.bool)].min()) >= 6  # far apart, not one pixel apart


def test_paint_patch_checks_the_mask():
    x, y = _synthetic(4)
    mask = torch.zeros(4, 28, 28, dtype=torch.bool)
    mask[:, :3, :3] = True
    mask[0, 3, 3] = True  # one image's patch is not the others' square
    with pytest.raises(ValueError, match="p×p square"):
        paint_patch(x, mask, y, kind="texture")


def ross_augment(image, digit, down, right, mult=25):
    """Ross et al.'s ``decoy_mnist.augment`` (github.com/dtak/rrr), rewritten with the coins given: a
    4×4 swatch of ``255 − mult·digit`` in the corner (``fwd`` rows/columns 0..3, ``rev`` −1..−4)."""
    img = image.copy()
    expl = [[False] * len(img[0]) for _ in img]
    fwd, rev = [0, 1, 2, 3], [-1, -2, -3, -4]
    for i in (rev if down else fwd):
        for j in (rev if right else fwd):
            img[i][j] = 255 - mult * digit
            expl[i][j] = True
    return img, expl


@pytest.mark.parametrize("train", [True, False])
def test_make_decoy_is_ross_et_al_s_construction(train):
    x, y = _synthetic(300, seed=9)
    out, info = make_decoy(x, y, train=train, seed=11)
    g = torch.Generator().manual_seed(11)  # the coins, drawn as make_decoy documents
    down, right = torch.randint(0, 2, (300,), generator=g), torch.randint(0, 2, (300,), generator=g)
    digit = y if train else torch.randint(0, 10, (300,), generator=g)
    for i in range(300):
        img, expl = ross_augment(x[i, 0].numpy(), int(digit[i]), int(down[i]), int(right[i]))
        assert (out[i, 0].numpy() == img).all()
        assert info["mask"][i].tolist() == expl


def test_ross4_is_bit_identical_to_the_committed_decoy_records():
    """The default patch still builds the arrays whose SHA-256 the committed records hold."""
    records = sorted((REPO / "results" / "runs").glob("mnist-simplecnn-ce-l1-s28-e2-seed1-decoy-ntr20000-cpu-*.json"))
    if not records:
        pytest.skip("no committed Decoy-MNIST record")
    try:
        splits = load_decoy("mnist", "train+test", n_train=20000, seed=1)
    except FileNotFoundError:
        pytest.skip("MNIST is not in the data folder")
    decoy = json.loads(records[0].read_text())["final"]["decoy"]
    assert splits.info["test_sha256"] == decoy["test_sha256"]
    assert splits.info["train_sha256"] == decoy["train_sha256"]


# --------------------------------------------------------------------------- the input-gradient penalty


def _slow_penalty(model, x, masks):
    """Ross's term image by image: each image alone through the model."""
    total = 0.0
    for b in range(len(x)):
        xb = x[b:b + 1].clone().requires_grad_(True)
        logp = torch.log_softmax(model(xb), 1)
        g, = torch.autograd.grad(logp.sum(), xb, create_graph=True)
        total = total + (g[0, 0][masks[b]] ** 2).sum()
    return total / len(x)


def _batch(seed=0, n=6, size=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for b in range(n):
        r, c = (b % 2) * (size - 4), (b // 2 % 2) * (size - 4)
        masks[b, r:r + 4, c:c + 4] = True
    return x, torch.arange(n) % 4, masks


def test_input_gradient_penalty_equals_a_per_image_loop_in_value_and_gradient():
    torch.manual_seed(0)
    model = TinyCNN(classes=4).double()
    x, _, masks = _batch()
    xg = x.clone().requires_grad_(True)
    fast = input_gradient_penalty(model(xg), xg, masks)
    slow = _slow_penalty(model, x, masks)
    assert float(fast.detach()) > 0
    torch.testing.assert_close(fast, slow)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(slow, params)):
        torch.testing.assert_close(a, b)  # differentiable: double backprop through the input gradient
    assert float(input_gradient_penalty(model(xg[:0]), xg[:0], masks[:0]).detach()) == 0.0


def test_input_gradient_penalty_with_batchnorm_in_eval_mode_is_per_image():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 4)).double().eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    x, _, masks = _batch(seed=2)
    xg = x.clone().requires_grad_(True)
    torch.testing.assert_close(input_gradient_penalty(model(xg), xg, masks), _slow_penalty(model, x, masks))


def _bn_model(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).double()


def test_in_train_mode_the_penalty_is_each_image_s_own_gradient_with_the_batch_statistics_held():
    """With BatchNorm in train mode the penalty equals the per-image loop through the same model in eval mode
    whose running statistics are this batch's (what each image sees), in value and parameter gradient."""
    from batchcam.rrr import batch_stats_as_constants, rrr_input_loss

    model = _bn_model()
    x, _, masks = _batch(seed=4, n=8)
    stats, bns = [], [m for m in model if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, i: stats.append((i[0].mean((0, 2, 3)).detach(),
                                                                   i[0].var((0, 2, 3), unbiased=False).detach())))
             for m in bns]
    plain = model(x)
    for h in hooks:
        h.remove()
    running = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    with batch_stats_as_constants(model):
        frozen = model(x)
    torch.testing.assert_close(frozen, plain)  # the same forward values
    assert all(torch.equal(m.running_mean, r[0]) and torch.equal(m.running_var, r[1]) for m, r in zip(bns, running))
    fast = rrr_input_loss(model, x, masks)
    assert model.training and all("forward" not in m.__dict__ for m in bns)  # the patch is undone
    params = list(model.parameters())
    g_fast = torch.autograd.grad(fast, params)
    for m, (mean, var) in zip(bns, stats[:len(bns)]):
        m.running_mean.copy_(mean), m.running_var.copy_(var)
    model.eval()
    slow = _slow_penalty(model, x, masks)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(g_fast, torch.autograd.grad(slow, params)):
        torch.testing.assert_close(a, b)
    model.train()
    xg = x.clone().requires_grad_(True)
    naive = input_gradient_penalty(model(xg), xg, masks)  # through the batch statistics: another number
    assert abs(float(naive.detach()) - float(slow.detach())) > 1e-6 * float(slow.detach())


def test_objective_ce_plus_rrr_input_adds_lambda_times_the_penalty():
    torch.manual_seed(0)
    model = TinyCNN(classes=4).double()
    x, y, masks = _batch(seed=3)
    obj = Objective.from_name("ce+rrr-input", num_classes=4, lambda_rrr_input=3.0)
    assert obj.name == "ce+rrr-input" and obj.needs_input_grad and not obj.needs_cam
    terms, _ = objective_loss(obj, model, x, y, layer="features", masks=masks)
    assert not x.requires_grad  # the caller's batch is not touched
    value = {k: float(v.detach()) for k, v in terms.items()}
    assert value["rrr-input"] == pytest.approx(float(_slow_penalty(model, x, masks).detach()), rel=1e-6)
    assert value["total"] == pytest.approx(value["ce"] + 3 * value["rrr-input"], rel=1e-6)
    terms["total"].backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- configuration


def test_the_new_fields_default_to_the_old_behaviour_and_name_themselves_otherwise():
    assert LATER_FIELDS["decoy_patch"] == TrainConfig().decoy_patch == "ross4"
    assert OBJECTIVE_FIELDS["lambda_rrr_input"] == "ce+rrr-input"  # in that objective's ids always, no other's
    base = TrainConfig(device="cpu", objective="ce", decoy="train+test")
    assert "decoy_patch" not in base.result_fields()
    assert "lambda_rrr_input" not in base.result_fields()
    tex = TrainConfig(device="cpu", objective="ce", decoy="train+test", decoy_patch="texture6")
    assert "-decoy-texture6-" in tex.run_id and tex.config_hash != base.config_hash
    rrr = TrainConfig(device="cpu", objective="ce+rrr-input", decoy="train+test", lambda_rrr_input=0.5)
    assert "-lri0.5" in rrr.run_id
    default = TrainConfig(device="cpu", objective="ce+rrr-input", decoy="train+test")
    assert f"-lri{default.lambda_rrr_input:g}-" in default.run_id and "lambda_rrr_input" in default.result_fields()
    assert TrainConfig(device="cpu", objective="ce", decoy="train+test", n_val=6000).validate()


@pytest.mark.parametrize("fields, needle", [
    (dict(objective="ce+rrr-input"), "needs --decoy train\\+test"),
    (dict(objective="ce+rrr-input", decoy="test"), "needs --decoy train\\+test"),
    (dict(decoy_patch="texture6"), "--decoy train\\+test or --decoy test"),
    (dict(decoy_patch="grey16", decoy="train+test"), "decoy-patch"),
    (dict(lambda_rrr_input=-1.0), "lambda-rrr-input"),
])
def test_bad_decoy_options_are_refused_with_the_fix(fields, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(device="cpu", **fields).validate()


# --------------------------------------------------------------------------- validation split of decoy runs


@pytest.fixture
def small_split(monkeypatch):
    """A 1 000-image 'training split' and 50-image 'test split' of random images, for load_decoy."""
    import batchcam.decoy as decoy

    g = torch.Generator().manual_seed(0)
    full = {True: (torch.randint(0, 256, (1000, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(1000) % 10),
            False: (torch.randint(0, 256, (50, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(50) % 10)}

    def fake(name, train, root=None, n=None, seed=0):
        x, y = full[train]
        if n is None:
            return x.clone(), y.clone()
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        return x[idx], y[idx]

    monkeypatch.setattr(decoy, "load_split", fake)
    return full


@pytest.mark.parametrize("where", ["train+test", "test"])
def test_the_validation_split_of_a_decoy_run_is_carved_before_the_subset(small_split, where):
    from batchcam.data import split_validation

    x, y = small_split[True]
    s = load_decoy("mnist", where, n_train=300, n_val=100, seed=4, variant="texture6")
    keep, val = split_validation(y, 100)
    sub = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(4))[:300]]
    assert torch.equal(s.clean_train[0], x[sub]) and torch.equal(s.train[1], y[sub])
    assert set(sub.tolist()).isdisjoint(val.tolist())
    assert torch.equal(s.val[1], y[val]) and (torch.bincount(s.val[1]) == 10).all()
    full, info = make_decoy(x, y, train=True, seed=0, **DECOY_PATCHES["texture6"])
    if where == "train+test":  # decoyed like the training images: label-consistent patches
        assert torch.equal(s.train[0], full[sub]) and torch.equal(s.train_masks, info["mask"][sub])
        assert torch.equal(s.val[0], full[val])
    else:  # the oracle: clean training and validation images
        assert torch.equal(s.train[0], x[sub]) and torch.equal(s.val[0], x[val]) and s.train_masks is None
    other = load_decoy("mnist", where, n_train=300, n_val=100, seed=5, variant="texture6")
    assert torch.equal(other.val[0], s.val[0])  # the same validation images for every seed


def test_fit_evaluates_a_decoy_run_on_its_decoyed_validation_split(small_split, tmp_path):
    from batchcam.train import fit

    config = TrainConfig(dataset="mnist", objective="ce+rrr-input", decoy="train+test", decoy_patch="texture6",
                         n_val=100, n_train=64, n_test=50, epochs=1, batch_size=32, device="cpu",
                         eval_cam_loop_samples=0, eval_faithfulness_samples=0, out_dir=str(tmp_path))
    run = fit(config, progress=False)
    assert "val_accuracy" in run.history[0] and "test_accuracy" not in run.history[0]
    assert run.history[0]["train_rrr-input"] >= 0
    d = run.evaluation["decoy"]
    assert d["reliance"] == pytest.approx(d["consistent_accuracy"] - d["random_accuracy"])
    assert d["random_accuracy"] == pytest.approx(run.evaluation["accuracy"])  # the same images
    assert d["patch"] == "texture6" and "prototype_patch_ratio" in d
    assert d["val_reliance"] == pytest.approx(d["val_consistent_accuracy"] - d["val_random_accuracy"])
    assert d["val_consistent_accuracy"] == pytest.approx(run.history[-1]["val_accuracy"])  # the same images


# --------------------------------------------------------------------------- the decoy verdict grid


def test_the_decoy_verdict_grid_has_every_cell_per_seed_and_dataset():
    configs = decoy_verdict_grid(lr=2e-3, oracle_lambdas=LAMBDAS)
    assert len(configs) == len(DECOY_VERDICT_CELLS) * 10 * 2
    assert len({c.run_id for c in configs}) == len(configs)
    assert {decoy_verdict_cell(c) for c in configs} == set(DECOY_VERDICT_CELLS)
    for c in configs:
        assert (c.n_val, c.order, c.n_train, c.epochs, c.batch_size, c.lr) == (
            VERDICT_PROTOCOL["n_val"], VERDICT_PROTOCOL["order"], 20_000, 2, 128, 2e-3)
        assert decoy_cell(c) is None  # the first decoy grid's table does not take them
    assert {c.decoy_patch for c in configs} == {"texture6", "ross4"}
    assert GRIDS["decoy-verdict"] is decoy_verdict_grid


def test_the_decoy_verdict_grid_needs_the_tuned_learning_rate(tmp_path):
    with pytest.raises(ValueError, match="--grid tuning"):
        decoy_verdict_grid(out_dir=str(tmp_path))


def test_the_first_decoy_grid_is_unchanged():
    configs = decoy_grid()
    assert {decoy_cell(c) for c in configs} == set(DECOY_CELLS)
    assert all(c.decoy_patch == "ross4" and c.n_val == 0 for c in configs)
    assert all(decoy_verdict_cell(c) is None for c in configs)


def test_the_decoy_verdict_table_reads_reliance_from_the_records_rows():
    from dataclasses import asdict

    from batchcam.spurious import decoy_aggregate, decoy_verdict_aggregate, decoy_verdict_table

    rows = []
    for c in decoy_verdict_grid(seeds=(0, 1, 2), datasets=["mnist"], lr=2e-3, oracle_lambdas=LAMBDAS):
        name = decoy_verdict_cell(c)
        rel = 0.6 if name == "ce" else 0.01
        rows.append({**asdict(c), "run_id": c.run_id, "scale": "cpu-subset", "accuracy": 0.3, "dead_fraction": 0.0,
                     "decoy_reliance": rel + 0.01 * c.seed, "decoy_random_accuracy": 0.3,
                     "decoy_consistent_accuracy": 0.3 + rel, "decoy_clean_accuracy": 0.9,
                     "decoy_relevance_mass_ratio": 2.0, "decoy_prototype_patch_ratio": 3.0})
    agg = decoy_verdict_aggregate(rows)
    assert set(agg) == {("mnist", "simplecnn", name) for name in DECOY_VERDICT_CELLS}
    assert agg[("mnist", "simplecnn", "ce")]["decoy_reliance"][0] == pytest.approx(0.61)
    assert agg[("mnist", "simplecnn", "ce")]["n"] == 3
    assert "reliance (points)" in repr(decoy_verdict_table(agg))
    assert decoy_aggregate(rows) == {}  # the first decoy grid's table does not take them


# --------------------------------------------------------------------------- the oracles' λ, chosen on validation


@pytest.mark.parametrize("where", ["train+test", "test"])
def test_the_random_shade_validation_twin_differs_only_inside_the_patch(small_split, where):
    x, y = small_split[True]
    s = load_decoy("mnist", where, n_train=300, n_val=100, seed=4, variant="texture6")
    if where == "test":  # the clean oracle has no decoyed validation split to measure reliance on
        assert s.val_random is None and s.clean_val is None
        assert decoy_validation(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), s) == {}
        return
    from batchcam.data import split_validation

    _, val = split_validation(y, 100)
    full, info = make_decoy(x, y, train=True, seed=0, **DECOY_PATCHES["texture6"])
    mask = info["mask"][val]
    r = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(s.clean_val[0], x[val]) and torch.equal(s.val_random[1], y[val])
    assert torch.equal(s.val_random[0], paint_patch(x[val], mask, r, kind="texture"))
    outside = ~mask[:, None]
    assert torch.equal(s.val_random[0][outside], s.val[0][outside])  # the same images and patch places
    assert not torch.equal(s.val_random[0], s.val[0])  # ... with other classes' patches (r ≠ y mostly)


def test_validation_reliance_is_large_for_a_model_that_reads_only_the_patch():
    splits = _splits()  # the val twins from the test twins: consistent = the training rule, random = r
    consistent = consistent_test(splits)
    splits.val, splits.val_random, splits.clean_val = consistent, splits.test, splits.clean_test
    reads = decoy_validation(ReadsOnePlace("corners"), splits)
    test = decoy_metrics(ReadsOnePlace("corners"), splits, layer="features")
    assert reads["val_reliance"] == pytest.approx(test["reliance"]) and reads["val_reliance"] > 0.8
    ignores = decoy_validation(ReadsOnePlace("centre"), splits)
    assert ignores["val_reliance"] == 0.0 and ignores["val_clean_accuracy"] == 1.0


def test_choose_oracle_lambda_is_the_rule_fixed_before_the_runs():
    control = 0.6  # the positive control's reliance: an oracle must reach at most 0.2 × 0.6 = 0.12
    assert ORACLE_SHARE == 0.2
    # (reliance, clean accuracy): 0.3 keeps the shortcut; 1 and 3 remove it, 1 costs less accuracy
    assert choose_oracle_lambda(control, {0.3: (0.30, 0.95), 1.0: (0.10, 0.93), 3.0: (0.02, 0.90)}) == 1.0
    assert choose_oracle_lambda(control, {1.0: (0.05, 0.90), 3.0: (0.02, 0.90)}) == 1.0  # a tie: the smaller λ
    assert choose_oracle_lambda(control, {0.3: (0.12, 0.90), 1.0: (0.13, 0.99)}) == 0.3  # ≤ is enough
    # none qualifies: the least reliance (the oracle is then reported as failed at this budget)
    assert choose_oracle_lambda(control, {0.3: (0.40, 0.95), 10.0: (0.20, 0.60)}) == 10.0
    with pytest.raises(ValueError, match="candidate"):
        choose_oracle_lambda(control, {})


def test_the_decoy_tuning_grid_is_the_control_and_each_oracle_at_each_candidate():
    configs = decoy_tuning_grid(lr=2e-3)
    per_dataset = 1 + sum(len(c) for _, c in ORACLE_LAMBDAS.values())
    assert len(configs) == 2 * per_dataset and len({c.run_id for c in configs}) == len(configs)
    assert {c.seed for c in configs} == {100} and GRIDS["decoy-tuning"] is decoy_tuning_grid
    for c in configs:
        assert (c.n_val, c.n_train, c.decoy_patch, c.eval_faithfulness_samples) == (6000, 20_000, "texture6", 0)
    for objective, (field, candidates) in ORACLE_LAMBDAS.items():
        assert sorted(getattr(c, field) for c in configs if c.objective == objective and c.dataset == "mnist") == \
            sorted(candidates)


def test_select_oracle_lambda_reads_the_tuning_records(monkeypatch):
    import batchcam.grid as G
    import batchcam.results as R

    reliance = {"ce": 0.5, 0.01: 0.45, 0.03: 0.4, 0.1: 0.35, 0.3: 0.3, 1.0: 0.08, 3.0: 0.01, 10.0: 0.0}
    clean = {0.3: 0.95, 1.0: 0.94, 3.0: 0.96, 10.0: 0.7}
    by_id = {}
    for c in decoy_tuning_grid(datasets=["mnist"], objectives=["ce+rrr-input"], lr=2e-3):
        key = "ce" if c.objective == "ce" else c.lambda_rrr_input
        by_id[f"{c.run_id}.json"] = {"final": {"decoy": {"val_reliance": reliance[key],
                                                           "val_clean_accuracy": clean.get(key, 0.9)}}}
    monkeypatch.setattr(G, "is_complete", lambda run_id, root: f"{run_id}.json" in by_id)
    monkeypatch.setattr(R, "load_record", lambda path: by_id[Path(path).name])
    lam, scores = G.select_oracle_lambda("mnist", "ce+rrr-input", lr=2e-3)
    assert lam == 3.0 and scores["control"] == 0.5 and scores[1.0] == [0.08, 0.94]
    configs = decoy_verdict_grid(seeds=(0,), datasets=["mnist"], lr=2e-3, oracle_lambdas={"ce+rrr": 1.0})
    oracle = [c for c in configs if c.objective == "ce+rrr-input"]
    assert [c.lambda_rrr_input for c in oracle] == [3.0] and "lambda=val" in oracle[0].selected_on
    others = [c for c in configs if c.objective not in ORACLE_LAMBDAS]
    assert all(c.lambda_rrr == LATER_FIELDS["lambda_rrr"] and "lambda=design" in c.selected_on for c in others)
    monkeypatch.setattr(G, "is_complete", lambda run_id, root: False)
    with pytest.raises(ValueError, match="--grid decoy-tuning"):
        G.select_oracle_lambda("mnist", "ce+rrr-input", lr=2e-3)
