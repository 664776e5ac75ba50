"""The experiment grids (``batchcam.grid``): the paper grid's axes and order, and chapter 8's
ablations — each changes exactly one choice of the paper cell, and ``variant`` names it back."""

import dataclasses

import pytest

from batchcam.config import TrainConfig
from batchcam.grid import ABLATIONS, GRIDS, ablation_grid, paper_grid, variant

PAPER = {"lambda_proto": 1.0, "lambda_batchcam": 1.0, "distance": "l1", "layer": None, "stop_gradient": True,
         "cam_normalize": "max", "prototype_source": "train", "cam_method": "gradcam"}


def test_the_paper_grid_has_every_cell_and_an_untrained_model_per_seed():
    configs = paper_grid()
    assert len(configs) == 3 * 3 * 2 * (4 + 1)
    assert len({c.run_id for c in configs}) == len(configs)
    assert {c.seed for c in configs[:10]} == {0}  # a grid cut short has whole seeds
    assert sum(c.epochs == 0 for c in configs) == 3 * 3 * 2
    assert all(variant(c) == "paper" for c in configs)


def test_each_ablation_changes_one_choice_of_the_paper_cell():
    configs = ablation_grid()
    names = [variant(c) for c in configs]
    assert set(names) == set(ABLATIONS)
    for c in configs:
        changed = {k for k, v in PAPER.items() if getattr(c, k) != v}
        assert changed == set(ABLATIONS[variant(c)]), (variant(c), changed)
        assert (c.model, c.epochs, c.lr) == ("simplecnn", 2, 1e-3)  # the recipe of the first seed
        assert (c.objective == "ce") == variant(c).startswith("layer=")
    # 3 seeds x 2 datasets x (9 loss-weight, distance, stop-gradient, normalisation and prototype runs
    # + ce's layer run), and 3 seeds x MNIST x the 5 other CAM methods
    assert len(configs) == 3 * 2 * 10 + 3 * 5 == len({c.run_id for c in configs})
    assert [c.seed for c in configs] == sorted(c.seed for c in configs)
    paper_ids = {c.run_id for c in paper_grid()}
    assert not paper_ids & {c.run_id for c in configs}


def test_ablations_are_valid_configurations_and_rows_name_their_variant():
    for c in ablation_grid(seeds=[0], datasets=["mnist"]):
        c.check_ready()  # the layer exists, the values validate
        row = dataclasses.asdict(c)
        assert variant(row) == variant(c) != "paper"
    assert variant(dataclasses.asdict(TrainConfig())) == "paper"


def test_the_command_line_keeps_the_ablation_recipe(tmp_path):
    # the CLI passes every override it knows, None when not given: None must not wipe the recipe
    import batchcam.cli as cli

    configs = ablation_grid(**{name: None for name in cli.GRID_OVERRIDES})
    assert {c.lr for c in configs} == {1e-3}
    assert {c.lr for c in ablation_grid(lr=5e-4)} == {5e-4}  # a given override still wins
    args = cli.build_parser().parse_args(["reproduce", "--grid", "ablations", "--seeds", "0",
                                          "--out-dir", str(tmp_path)])
    overrides = {name: getattr(args, name) for name in cli.GRID_OVERRIDES}
    assert {c.lr for c in ablation_grid(seeds=[0], **overrides)} == {1e-3}


def test_the_command_line_knows_the_ablation_grid(usage_error, capsys, tmp_path):
    import batchcam.cli as cli

    assert set(GRIDS) == {"paper", "ablations", "decoy", "tuning", "verdict", "decoy-tuning", "decoy-verdict"}
    assert cli.main(["reproduce", "--grid", "ablations", "--seeds", "0", "--datasets", "mnist",
                     "--dry-run", "--out-dir", str(tmp_path)]) == 0  # an empty folder: every run pending
    out = capsys.readouterr().out
    assert out.startswith("grid ablations: 15 runs") and "-hirescam-" in out
    assert "lp0.1-lb0.1" in out and "Lfeatures.9" in out
    assert "-nosg-" in out and "-minmax-" in out and "-pcemaps-" in out


@pytest.mark.parametrize("objectives", [None, ["ce"]])
def test_ce_is_ablated_only_where_its_maps_change(objectives):
    configs = ablation_grid(seeds=[0], datasets=["mnist"], objectives=objectives)
    assert all(variant(c).startswith("layer=") for c in configs if c.objective == "ce")


def test_a_loss_at_a_layer_before_a_batchnorm_is_refused_in_training(tiny_config, fake_data):
    # why the grid ablates the layer for ce only: block 4's BatchNorm mixes the batch
    from batchcam.cam import SampleMixingError
    from batchcam.train import fit

    with pytest.raises(SampleMixingError, match="features.11"):
        fit(tiny_config(objective="ce+proto+batchcam", layer="features.9", epochs=1), progress=False)


def test_the_grids_own_their_evaluation_settings():
    """Issue 22: `reproduce --grid paper --dry-run` (the README's example) names the run ids the committed
    CPU records carry, so none of the recorded SimpleCNN cells shows as pending."""
    from batchcam.results import load_runs

    recorded = {r["run_id"] for r in load_runs()}
    simple = [c for c in paper_grid(models=("simplecnn",))]
    if not any(c.run_id in recorded for c in simple):
        pytest.skip("no SimpleCNN paper-grid record committed")
    assert [c.run_id for c in simple if c.run_id not in recorded] == []
    assert all(c.eval_faithfulness_samples == 200 for c in simple)


def test_the_learning_rate_choice_reads_the_committed_records_from_any_folder(monkeypatch, tmp_path):
    """A notebook runs in book/: select_lr (and so verdict_grid) must find results/runs from there."""
    from batchcam.grid import select_lr

    try:
        expected = select_lr("mnist")
    except ValueError:
        pytest.skip("no tuning records committed")
    monkeypatch.chdir(tmp_path)
    assert select_lr("mnist") == expected
