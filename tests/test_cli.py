"""Command line: ``python -m batchcam train | reproduce | list-runs`` and the command registry.

Most tests call ``main(argv)`` in-process with the data loader monkeypatched (tiny synthetic
data); one runs the real ``python -m batchcam`` in a subprocess.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import batchcam.__main__ as cli
import batchcam.train as T
from batchcam.grid import MODEL_DEFAULTS, paper_grid, pending
from batchcam.results import write_record
from batchcam.train import OBJECTIVES, TrainConfig
from test_results import fake_run
from test_train import fake_load_data, interrupt_in_epoch

REPO = Path(__file__).resolve().parent.parent
TINY = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--device", "cpu",
        "--eval-cam-loop-samples", "4", "--no-progress"]


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr(T, "_load_data", fake_load_data)


def test_bad_objective_exits_nonzero_listing_valid_ones():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "batchcam", "train", "--objective", "bogus"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode != 0
    assert "invalid choice: 'bogus'" in proc.stderr
    assert all(f"'{o}'" in proc.stderr for o in OBJECTIVES)


def test_invalid_config_is_a_usage_error(capsys):
    assert cli.main(["train", "--model", "convnextv2_tiny", "--image-size", "28"]) == 2
    assert "image_size must be ≥ 32" in capsys.readouterr().err


def test_every_config_field_is_a_flag():
    args = cli.build_parser().parse_args(["train", "--no-amp", "--channels-last", "--lambda-proto", "0.5",
                                          "--n-train", "10", "--layer", "features.3"])
    config = cli.config_from_args(args)
    assert (config.amp, config.channels_last, config.lambda_proto, config.n_train) == (False, True, 0.5, 10)
    assert config.layer == "features.3" and config.image_size is None
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])) == TrainConfig()


def test_train_writes_a_record_and_list_runs_shows_it(tmp_path, fake_data, capsys):
    assert cli.main(["train", "--epochs", "1", "--out-dir", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    run_id = "mnist-simplecnn-ce+proto+batchcam-l1-s28-e1-seed0-ntr64-nte32"
    assert run_id in out and "test accuracy" in out
    assert cli.main(["list-runs", "--out-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert run_id in table and "cpu-subset" in table and "s/epoch" in table and "1 run(s)" in table


def test_list_runs_on_an_empty_folder(tmp_path, capsys):
    assert cli.main(["list-runs", "--out-dir", str(tmp_path)]) == 0
    assert "no run records" in capsys.readouterr().out


def test_ctrl_c_reports_checkpoint_and_resume_command(tmp_path, fake_data, monkeypatch, capsys):
    argv = ["train", "--epochs", "2", "--out-dir", str(tmp_path), *TINY]
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 2)
        assert cli.main(argv) == 130
    err = capsys.readouterr().err
    ckpt = tmp_path / "checkpoints" / "mnist-simplecnn-ce+proto+batchcam-l1-s28-e2-seed0-ntr64-nte32.pt"
    assert str(ckpt) in err and "--resume" in err and ckpt.is_file()
    assert not (tmp_path / "runs").exists()
    assert cli.main(argv + ["--resume"]) == 0
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1


def test_paper_grid_shape_and_defaults():
    grid = paper_grid(seeds=(0, 1))
    assert len(grid) == 48 and len({c.run_id for c in grid}) == 48
    convnext = [c for c in grid if c.model == "convnextv2_tiny"]
    assert {c.image_size for c in convnext} == {112} and {c.lr for c in convnext} == {MODEL_DEFAULTS[
        "convnextv2_tiny"]["lr"]}
    assert {c.epochs for c in paper_grid(epochs=1)} == {1}
    assert [c.seed for c in grid[:24]] == [0] * 24  # seed-major order
    with pytest.raises(ValueError, match="grid axes"):
        paper_grid(seed=3)


def test_reproduce_dry_run_lists_pending_and_skips_recorded(tmp_path, capsys):
    out_dir = ["--out-dir", str(tmp_path)]
    assert cli.main(["reproduce", "--grid", "paper", "--dry-run", *out_dir]) == 0
    out = capsys.readouterr().out
    assert "72 runs, 0 recorded, 72 pending" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == 72

    recorded = paper_grid(seeds=(0,), out_dir=str(tmp_path))[5]
    write_record(fake_run(tmp_path, config=recorded))
    assert len(pending(paper_grid(seeds=(0,), out_dir=str(tmp_path)))) == 23
    assert cli.main(["reproduce", "--seeds", "0", "--dry-run", *out_dir]) == 0
    out = capsys.readouterr().out
    assert "24 runs, 1 recorded, 23 pending" in out and f"  {recorded.run_id}\n" not in out


def test_reproduce_runs_pending_then_skips_them(tmp_path, fake_data, capsys):
    argv = ["reproduce", "--seeds", "0", "--datasets", "mnist", "--models", "simplecnn", "--objectives", "ce",
            "ce+batchcam", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--eval-cam-loop-samples",
            "0", "--out-dir", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    assert "2 runs, 0 recorded, 2 pending" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    assert cli.main(argv) == 0
    assert "2 runs, 2 recorded, 0 pending" in capsys.readouterr().out


def test_adding_a_command_is_one_registry_entry(monkeypatch, capsys):
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        print(f"hello {args.n}")
        return 7

    monkeypatch.setitem(cli.COMMANDS, "hello", cli.Command("say hello", add, run))
    assert cli.main(["hello", "--n", "3"]) == 7
    assert "hello 3" in capsys.readouterr().out
