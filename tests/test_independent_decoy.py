"""scripts/independent_decoy.py: its own decoy construction does what chapter 9 describes (the check that
the package's decoy pipeline is reproduced by code that shares none of it)."""

import numpy as np
from _scripts import load_script


def _script():
    return load_script("independent_decoy")


def test_textures_are_ten_distinct_non_uniform_binary_patches():
    s = _script()
    t = s.textures(np.random.default_rng(7))
    assert t.shape == (10, 6, 6) and t.dtype == np.uint8 and set(np.unique(t)) <= {0, 255}
    flat = t.reshape(10, -1)
    assert len({r.tobytes() for r in flat}) == 10 and (flat.min(1) < flat.max(1)).all()


def test_paste_puts_the_class_texture_in_the_chosen_corner_and_nothing_else():
    s = _script()
    tex = s.textures(np.random.default_rng(7))
    images = np.full((4, 1, 28, 28), 17, dtype=np.uint8)
    corner, cls = np.array([0, 1, 2, 3]), np.array([3, 5, 0, 9])
    out = s.paste(images, corner, cls, tex)
    assert (images == 17).all()  # a copy: the input is not modified
    for n, (r0, c0) in enumerate([(0, 0), (0, 22), (22, 0), (22, 22)]):
        assert (out[n, 0, r0:r0 + 6, c0:c0 + 6] == tex[cls[n]]).all()
        rest = out[n, 0].copy()
        rest[r0:r0 + 6, c0:c0 + 6] = 17
        assert (rest == 17).all()


def test_main_writes_a_record_that_compares_with_the_grid_interval(tmp_path, monkeypatch):
    """The record is written (plain JSON types, even when the grid's interval comes from NumPy/SciPy) and says
    whether the mean reliance lies inside the grid's interval; training is replaced by fixed rows."""
    import json

    s = _script()

    def fake_seed(dataset, seed, root, n_train=20_000):
        return {"seed": seed, "clean_accuracy": 0.9, "consistent_accuracy": 1.0, "random_accuracy": 0.4,
                "reliance": 0.6, "train_s": 1.0}

    monkeypatch.setattr(s, "one_seed", fake_seed)
    monkeypatch.setattr(s, "grid_interval", lambda dataset: {"mean": np.float64(0.62), "low": np.float64(0.55),
                                                             "high": np.float64(0.69), "n": 10})
    assert s.main(["--seeds", "0", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["inside_grid_interval"] is True and record["mean_reliance"] == 0.6
    assert [r["seed"] for r in record["seeds"]] == [0, 1]
    monkeypatch.setattr(s, "grid_interval", lambda dataset: {"mean": 0.3, "low": 0.25, "high": 0.35, "n": 10})
    assert s.main(["--seeds", "0", "--out", str(tmp_path / "b")]) == 0
    assert json.loads(next((tmp_path / "b").glob("*.json")).read_text())["inside_grid_interval"] is False


def test_the_grid_interval_reads_the_grid_seeds_of_the_control_only(monkeypatch):
    """``grid_interval`` takes the control cell's seeds 0-9, not the λ-tuning control (seed 100) nor other cells."""
    import dataclasses

    from batchcam import grid, results

    s = _script()
    lambdas = {"ce+rrr-input": 0.1, "ce+rrr": 3.0}
    configs = grid.decoy_verdict_grid(seeds=[0, 1, 100], datasets=["mnist"], lr=2e-3, oracle_lambdas=lambdas)
    rows = [{**dataclasses.asdict(c), "decoy_reliance": 0.9 if c.seed == 100 else 0.5 + 0.1 * c.seed}
            for c in configs]
    monkeypatch.setattr(results, "load_runs", lambda *a, **k: rows)
    ref = s.grid_interval("mnist")
    assert ref["n"] == 2 and abs(ref["mean"] - 0.55) < 1e-12 and ref["low"] < 0.5 < 0.6 < ref["high"]
    assert s.grid_interval("fashion-mnist") is None
