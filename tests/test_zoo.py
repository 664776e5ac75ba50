"""``zoo.cached_fit``: trains once, reloads the same model, and trains on permuted labels apart
(chapter 8's data-randomisation check)."""

import pytest
import torch

import batchcam.runner as runner
import batchcam.train as train
import batchcam.zoo as zoo


@pytest.fixture
def tiny(tiny_config, fake_data):  # synthetic images, no MNIST needed
    return tiny_config(epochs=1, eval_cam_loop_samples=0, eval_faithfulness_samples=0)


def test_a_cached_run_is_reloaded_not_retrained(tiny, tmp_path, monkeypatch):
    model, record = zoo.cached_fit(tiny, tmp_path)
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("retrained a cached run"))
    again, record2 = zoo.cached_fit(tiny, tmp_path)
    assert record2 == record and "permuted_labels_seed" not in record
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_permuted_labels_train_on_a_permutation_of_the_labels_and_cache_apart(tiny, tmp_path, monkeypatch):
    seen = {}
    real_fit = runner.fit

    def spy(config, **kw):
        seen["config"] = config
        return real_fit(config, **kw)

    monkeypatch.setattr(runner, "fit", spy)
    _, plain = zoo.cached_fit(tiny, tmp_path / "plain")
    _, record = zoo.cached_fit(tiny, tmp_path, permute_labels=3)
    assert seen["config"].permute_labels == 3 and record["config"]["permute_labels"] == 3
    # its own run: another id (the leftover of the first data-randomisation records, which shared it)
    assert record["run_id"] != plain["run_id"] and "-perm3-" in record["run_id"]
    (x, y), (tx, ty) = train.load_data(tiny.resolved())
    (px, py), (ptx, pty) = train.load_data(seen["config"])
    assert torch.equal(px, x) and torch.equal(ptx, tx) and torch.equal(pty, ty)  # test keeps its labels
    assert not torch.equal(py, y) and torch.equal(py.sort().values, y.sort().values)
    assert record["permuted_labels_seed"] == 3
    assert (tmp_path / "permuted-labels-3" / "runs" / f"{record['run_id']}.json").is_file()
    assert not (tmp_path / "runs").exists()  # the unpermuted cache is untouched


def test_load_data_permutes_the_training_labels_only(synthetic, monkeypatch):
    """The real ``load_data`` (its split loader faked): labels permuted by ``randperm`` under the seed,
    images in their order, the test split untouched; the same seed gives the same permutation."""
    from batchcam.config import TrainConfig

    monkeypatch.setattr(train, "load_split", lambda name, is_train, root=None, n=None, seed=0:
                        synthetic(n or (60 if is_train else 20), seed + 100 * is_train))
    base = TrainConfig(n_train=60, n_test=20, device="cpu")
    (x, y), (tx, ty) = train.load_data(base)
    (px, py), (ptx, pty) = train.load_data(TrainConfig(n_train=60, n_test=20, device="cpu", permute_labels=7))
    expected = torch.randperm(60, generator=torch.Generator().manual_seed(7))
    assert torch.equal(px, x) and torch.equal(py, y[expected])
    assert torch.equal(ptx, tx) and torch.equal(pty, ty)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_permute_labels_must_be_a_seed(bad):
    from batchcam.config import TrainConfig

    with pytest.raises(ValueError, match="--permute-labels"):
        TrainConfig(device="cpu", permute_labels=bad).validate()


def test_permute_labels_refuses_a_decoy():
    from batchcam.config import TrainConfig

    with pytest.raises(ValueError, match="--permute-labels.*--decoy"):
        TrainConfig(device="cpu", permute_labels=0, decoy="train+test").validate()
