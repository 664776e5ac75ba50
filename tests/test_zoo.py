"""``zoo.cached_fit``: trains once, reloads the same model, and trains on permuted labels apart
(chapter 8's data-randomisation check)."""

import pytest
import torch

import batchcam.runner as runner
import batchcam.zoo as zoo


@pytest.fixture
def tiny(tiny_config, fake_data, monkeypatch):
    monkeypatch.setattr(zoo, "load_data", fake_data)  # synthetic images, no MNIST needed
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
        seen["data"] = kw["data"]
        return real_fit(config, **kw)

    monkeypatch.setattr(runner, "fit", spy)
    _, record = zoo.cached_fit(tiny, tmp_path, permute_labels=3)
    (x, y), (tx, ty) = zoo.load_data(tiny.resolved())
    (px, py), (ptx, pty) = seen["data"]
    assert torch.equal(px, x) and torch.equal(ptx, tx) and torch.equal(pty, ty)  # test keeps its labels
    assert not torch.equal(py, y) and torch.equal(py.sort().values, y.sort().values)
    expected = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    assert torch.equal(py, y[expected])
    assert record["permuted_labels_seed"] == 3
    assert (tmp_path / "permuted-labels-3" / "runs" / f"{record['run_id']}.json").is_file()
    assert not (tmp_path / "runs").exists()  # the unpermuted cache is untouched
