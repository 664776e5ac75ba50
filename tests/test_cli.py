"""``python -m batchcam``: every bad value exits 2 with one line before any work; records are never
overwritten without ``--force``; run ids separate runs; ``reproduce`` skips recorded runs and refuses
a dirty tree; Ctrl-C and a NaN loss end cleanly.

The commands run in-process (``cli.main(argv)``) with the fixtures of conftest.py: ``no_work``
(training, data, benchmark reached = test failure), ``usage_error``, ``fake_data``, ``tiny_model``.
One test runs the real ``python -m batchcam`` in a subprocess.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import batchcam.cli as cli
import batchcam.results
import batchcam.runner as runner
import batchcam.train as T
from batchcam.config import TrainConfig
from batchcam.grid import paper_grid
from batchcam.results import is_complete, load_record, write_run

REPO = Path(__file__).resolve().parent.parent
TINY = ["--n-train", "64", "--n-test", "32", "--batch-size", "32", "--device", "cpu", "--eval-cam-loop-samples", "2",
        "--no-progress"]
TINY_GRID = ["--seeds", "0", "--datasets", "mnist", "--models", "simplecnn", "--no-progress"]


# --------------------------------------------------------------------------- errors before any work


@pytest.mark.parametrize("argv, needles", [
    (["train", "--layer", "bogus"], ["unknown layer 'bogus'", "'features'"]),
    (["train", "--image-size", "4"], ["--image-size 4", "at least 11"]),
    (["train", "--image-size", "10"], ["--image-size 10", "SSIM", "at least 11"]),
    (["train", "--model", "convnextv2_tiny", "--image-size", "28"], ["at least 32"]),
    (["train", "--n-train", "70000"], ["--n-train 70000", "60000"]),
    (["train", "--n-test", "0"], ["--n-test"]),
    (["train", "--device", "bogus"], ["--device 'bogus'"]),
    (["train", "--epochs", "-1"], ["--epochs", "≥ 0"]),
    (["train", "--lr", "0"], ["--lr", "> 0"]),
    (["train", "--lr", "nan"], ["--lr"]),
    (["train", "--lambda-proto", "inf"], ["--lambda-proto", "finite"]),
    (["train", "--lambda-batchcam", "-1"], ["--lambda-batchcam"]),
    (["train", "--objective", "bogus"], ["invalid choice: 'bogus'", "'ce+proto+batchcam'"]),
    (["train", "--epochs", "two"], ["--epochs", "invalid int value"]),
    (["reproduce", "--lr", "0", *TINY_GRID], ["--lr"]),
    (["reproduce", "--n-train", "70000", *TINY_GRID], ["--n-train 70000"]),
    (["reproduce", "--models", "vgg"], ["invalid choice: 'vgg'"]),
    (["bench", "--budget-seconds", "-5"], ["--budget-seconds must be a positive number"]),
    (["gpu-run", "--budget-s", "0"], ["--budget-s must be a finite number of seconds > 0"]),
])
def test_bad_values_exit_2_with_one_line_before_any_work(no_work, usage_error, tmp_path, argv, needles):
    out = tmp_path / "out"
    if argv[0] in ("train", "reproduce"):
        argv = argv + ["--out-dir", str(out)]
    elif argv[0] == "gpu-run":
        argv = argv + ["--out", str(out)]
    _, seconds = usage_error(argv, *needles)
    assert seconds < 20
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())
    assert not list(no_work.rglob("*.json"))  # no record, no benchmark record
    if argv[0] == "gpu-run":
        assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused(no_work, usage_error, tmp_path):
    usage_error(["train", "--device", "cuda", "--out-dir", str(tmp_path)], "--device 'cuda'", "CUDA is not available")


def test_an_unwritable_out_dir_is_refused_before_training(no_work, usage_error, tmp_path):
    """A folder that cannot be created (under a regular file: this also holds when running as root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    usage_error(["train", "--out-dir", str(blocker / "out"), *TINY], "cannot write to", "--out-dir")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a read-only folder")
def test_a_read_only_out_dir_is_refused_before_training(no_work, usage_error, tmp_path):
    out = tmp_path / "ro"
    (out / "runs").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "runs").chmod(0o555)
    try:
        usage_error(["train", "--out-dir", str(out), *TINY], "cannot write to", "runs")
    finally:
        (out / "runs").chmod(0o755)


def test_the_real_command_line_reports_one_line_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "batchcam", "train", "--lambda-proto", "inf", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("batchcam train: error: --lambda-proto must be a finite number ≥ 0, got inf")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- never overwrite a record


def test_train_with_default_arguments_cannot_overwrite_a_record(tmp_path, make_record, monkeypatch, capsys):
    out = str(tmp_path)
    config = TrainConfig(out_dir=out)  # what `train` builds from its defaults
    record, tensors = make_record(config)
    path = write_run(record, tensors, tmp_path / "runs")
    before = path.read_bytes()
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("training started although the record exists"))
    assert cli.main(["train", "--out-dir", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("batchcam train: error: record ") and "already exists" in err and "--force" in err
    assert path.read_bytes() == before

    replacement = make_record(config, final={"accuracy": 0.123})
    monkeypatch.setattr(runner, "fit", lambda config, **kw: "a finished run")
    monkeypatch.setattr(runner, "record_from_run", lambda run: replacement)
    assert cli.main(["train", "--out-dir", out, "--force", "--no-progress"]) == 0
    assert load_record(path)["final"]["accuracy"] == 0.123 and is_complete(record["run_id"], tmp_path / "runs")


def test_another_lr_is_another_run_so_reproduce_lists_it_as_pending(tmp_path, make_record, no_work, capsys):
    out = str(tmp_path)
    grid = paper_grid(seeds=[0], datasets=["mnist"], models=["simplecnn"], out_dir=out)
    for config in grid:
        write_run(*make_record(config), tmp_path / "runs")
    argv = ["reproduce", *TINY_GRID, "--out-dir", out, "--dry-run"]
    assert cli.main(argv) == 0
    assert f"grid paper: {len(grid)} runs, {len(grid)} recorded, 0 pending" in capsys.readouterr().out
    assert cli.main(argv + ["--lr", "0.05"]) == 0
    listed = capsys.readouterr().out
    assert f"{len(grid)} runs, 0 recorded, {len(grid)} pending" in listed
    ids = [line.split()[0] for line in listed.splitlines() if line.startswith("  ")]
    assert len(ids) == len(grid) and not {c.run_id for c in grid} & set(ids)


# --------------------------------------------------------------------------- reproduce and a dirty tree


def test_reproduce_refuses_a_dirty_tree_without_allow_dirty(tmp_path, no_work, monkeypatch, capsys):
    monkeypatch.setattr(batchcam.results, "provenance", lambda *a, **k: {"git_dirty": True, "git_commit": "abc"})
    argv = ["reproduce", *TINY_GRID, "--objectives", "ce", "--no-random-baseline", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "uncommitted changes" in err and "--allow-dirty" in err
    calls = []
    monkeypatch.setattr(cli, "_train_and_record", lambda config, **kw: calls.append(config.run_id))
    assert cli.main(argv + ["--allow-dirty"]) == 0
    assert calls == [paper_grid(seeds=[0], datasets=["mnist"], models=["simplecnn"], objectives=["ce"],
                                random_baseline=False, out_dir=str(tmp_path))[0].run_id]


def test_reproduce_runs_what_is_pending_then_skips_it(tmp_path, fake_data, tiny_model, capsys, monkeypatch):
    monkeypatch.setattr(batchcam.results, "provenance", lambda *a, **k: {"git_dirty": False})
    argv = ["reproduce", *TINY_GRID, "--objectives", "ce", "ce+batchcam", "--no-random-baseline", "--epochs", "1",
            "--n-train", "64", "--n-test", "32", "--batch-size", "32", "--device", "cpu",
            "--eval-cam-loop-samples", "0", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "2 runs, 0 recorded, 2 pending" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
    assert cli.main(argv) == 0
    assert "2 runs, 2 recorded, 0 pending" in capsys.readouterr().out


# --------------------------------------------------------------------------- train end to end


def test_train_writes_a_record_and_list_runs_shows_it(tmp_path, fake_data, tiny_model, capsys):
    assert cli.main(["train", "--epochs", "1", "--out-dir", str(tmp_path), *TINY]) == 0
    run_id = TrainConfig(epochs=1, n_train=64, n_test=32, batch_size=32, device="cpu",
                         eval_cam_loop_samples=2).run_id
    out = capsys.readouterr().out
    assert run_id in out and "test accuracy" in out
    assert is_complete(run_id, tmp_path / "runs")
    assert cli.main(["list-runs", "--out-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert run_id in table and "cpu-subset" in table and "1 run(s)" in table


def test_a_loss_that_becomes_nan_exits_2_and_writes_no_record(tmp_path, fake_data, tiny_model, nan_after_first_step,
                                                            capsys):
    assert cli.main(["train", "--epochs", "1", "--out-dir", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not finite" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_ctrl_c_reports_the_checkpoint_and_the_resume_command(tmp_path, fake_data, tiny_model, monkeypatch, capsys):
    real, calls = T.train_one_epoch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    argv = ["train", "--epochs", "2", "--out-dir", str(tmp_path), *TINY]
    with monkeypatch.context() as m:
        m.setattr(T, "train_one_epoch", flaky)
        assert cli.main(argv) == 130
    err = capsys.readouterr().err
    config = cli.config_from_args(cli.build_parser().parse_args(argv))
    ckpt = T.checkpoint_path(config)
    assert ckpt.is_file() and str(ckpt) in err and "--resume" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert cli.main(argv + ["--resume"]) == 0
    assert is_complete(config.run_id, tmp_path / "runs")


def test_every_config_field_is_a_flag():
    args = cli.build_parser().parse_args(["train", "--no-amp", "--channels-last", "--lambda-proto", "0.5",
                                          "--n-train", "10", "--layer", "features.3"])
    config = cli.config_from_args(args)
    assert (config.amp, config.channels_last, config.lambda_proto, config.n_train) == (False, True, 0.5, 10)
    assert config.layer == "features.3" and config.image_size is None
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])) == TrainConfig()


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, usage_error, tiny_config, fake_data):
    from batchcam.train import checkpoint_path

    config = tiny_config()
    ckpt = checkpoint_path(config.resolved())
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot be read .*delete it"):
        T.fit(config, resume=True, progress=False)


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch, usage_error):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    usage_error(["train", "--out-dir", str(tmp_path), "--epochs", "1"], "MiB free", "--out-dir")
