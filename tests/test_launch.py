"""The grid on a cluster: ``reproduce --launcher submitit`` (``batchcam.launch``, chapter 7).

submitit's local executor runs two tiny real runs in background jobs; the debug executor runs in
this process on synthetic data; a fake ``sbatch`` / ``sacct`` / ``srun`` on ``PATH`` checks the
Slurm job array that would be submitted, without a cluster.
"""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("submitit")

from batchcam import cli, launch  # noqa: E402
from batchcam.config import TrainConfig  # noqa: E402

SUB = ["reproduce", "--launcher", "submitit", "--seeds", "0", "--datasets", "mnist", "--models", "simplecnn",
       "--objectives", "ce", "ce+batchcam", "--no-random-baseline", "--epochs", "1", "--eval-cam-loop-samples", "0",
       "--allow-dirty", "--no-progress"]


def _records(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*.json"))


def _mnist_available() -> bool:
    from batchcam.data import DataMissingError, load_split
    try:
        load_split("mnist", False, n=1)
    except (DataMissingError, OSError):
        return False
    return True


def test_local_executor_writes_both_records_then_submits_nothing(tmp_path, capsys):
    """Two tiny real runs in one LocalExecutor job (default: one job at a time, its runs in turn; most of
    the ~35 s is the job's imports), --wait; the second call finds both recorded."""
    if not _mnist_available():
        pytest.skip("MNIST is not in data/ (python -m batchcam prepare-data)")
    out = tmp_path / "out"
    argv = SUB + ["--submitit-cluster", "local", "--n-train", "128", "--n-test", "64",
                  "--device", "cpu", "--gpus-per-run", "0", "--out-dir", str(out), "--wait"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "submitted 2 run(s) as 1 local job(s)" in text and text.count("  done: ") == 2, text
    records = _records(out)
    assert len(records) == 2
    assert {json.loads(p.read_text())["config"]["objective"] for p in records} == {"ce", "ce+batchcam"}
    assert all(json.loads(p.read_text())["runtime"]["world_size"] == 1 for p in records)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 recorded, 0 pending" in text and "submitted" not in text, text


def test_debug_executor_runs_in_process(tmp_path, capsys, fake_data, tiny_model):
    out = tmp_path / "out"
    argv = SUB + ["--submitit-cluster", "debug", "--n-train", "64", "--n-test", "32", "--batch-size", "32",
                  "--device", "cpu", "--out-dir", str(out)]
    assert cli.main(argv) == 0
    assert len(_records(out)) == 2
    assert "as 2 debug job(s)" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "0 pending" in capsys.readouterr().out


def _fake_slurm(bin_dir: Path, state: str) -> None:
    """``sbatch`` (keeps the script, answers job 4242), ``sacct`` (every task in ``state``), ``srun``."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": f'#!/bin/sh\ncp "$1" "{bin_dir}/submitted.sh"\necho "Submitted batch job 4242"\n',
        "sacct": f'#!/bin/sh\nprintf "JobID|State|NodeList\\n4242_0|{state}|\\n4242_1|{state}|\\n"\n',
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)


def test_slurm_job_array_and_no_second_submission_while_queued(tmp_path, monkeypatch, capsys):
    """On a 'login node' without GPUs: one array of 2 tasks with 1 GPU each, named as CUDA runs; while
    sacct says PENDING a second call submits nothing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fake_slurm(tmp_path / "bin", "PENDING")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out, logs = tmp_path / "out", tmp_path / "logs"
    argv = SUB + ["--n-train", "64", "--n-test", "32", "--out-dir", str(out), "--submitit-folder", str(logs),
                  "--slurm-partition", "gpu", "--array-parallelism", "1", "--timeout-min", "30"]
    assert cli.main(argv) == 0  # --submitit-cluster auto → slurm, because srun is on PATH
    text = capsys.readouterr().out
    assert "submitted 2 run(s) as 2 slurm job(s)" in text and "job 4242_0" in text and "job 4242_1" in text, text
    script = (tmp_path / "bin" / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --time=30"):
        assert line in script, script
    markers = sorted((logs / "submitted").glob("*.json"))
    assert len(markers) == 2 and all("-cuda-" in m.name for m in markers)  # as the GPU nodes name them
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("already submitted as job 4242_") == 2 and "submitted 2" not in text, text


def test_assume_cuda_names_runs_as_on_a_gpu_node(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto, cpu = TrainConfig(n_train=10), TrainConfig(n_train=10, device="cpu")
    assert "-cpu-" in auto.run_id
    with launch.assume_cuda():
        assert "-cuda-" in auto.run_id and "-cpu-" in cpu.run_id
        TrainConfig(device="cuda").validate()
    assert "-cpu-" in auto.run_id
    with pytest.raises(ValueError, match="CUDA"):
        TrainConfig(device="cuda").validate()


@pytest.mark.parametrize("flag, value, needle", [("--gpus-per-run", "-1", "--gpus-per-run must be ≥ 0"),
                                                 ("--array-parallelism", "0", "--array-parallelism must be ≥ 1"),
                                                 ("--mem-gb", "0", "--mem-gb must be a number of GB > 0 and ≤ 4096"),
                                                 ("--mem-gb", "-8", "got -8"),
                                                 ("--mem-gb", "nan", "got nan"),
                                                 ("--mem-gb", "inf", "got inf"),
                                                 ("--mem-gb", "32000", "got 32000; e.g. --mem-gb 32")])
def test_bad_launcher_options_are_usage_errors(usage_error, no_work, flag, value, needle):
    usage_error(SUB + ["--submitit-cluster", "debug", flag, value], needle)


def test_mem_gb_in_range_is_passed_on():
    from batchcam.cli import build_parser

    for value in ("0.5", "32", str(launch.MAX_MEM_GB)):
        args = build_parser().parse_args(SUB + ["--mem-gb", value])
        assert launch.options_from_args(args).mem_gb == float(value)


def test_slurm_without_sbatch_is_a_usage_error(usage_error, no_work, monkeypatch, tmp_path):
    """``--submitit-cluster slurm`` where Slurm is not installed: one line naming the fix, nothing submitted."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch, no srun
    usage_error(SUB + ["--submitit-cluster", "slurm", "--out-dir", str(tmp_path / "out")],
                "--submitit-cluster slurm needs Slurm", "sbatch is not on PATH", "--submitit-cluster local")
    assert not (tmp_path / "out").exists()
    assert launch.resolve_cluster("local") == "local" and launch.resolve_cluster("debug") == "debug"


def test_a_job_still_running_locally_is_not_submitted_again(tmp_path, capsys):
    config = TrainConfig(n_train=10, device="cpu", out_dir=str(tmp_path / "out")).resolved()
    folder = tmp_path / "logs"
    (folder / "submitted").mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    for _ in range(100):  # until the child has exec'd (its command line is empty before)
        if b"submitit" in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes():
            break
        time.sleep(0.05)
    try:
        (folder / "submitted" / f"{config.run_id}.json").write_text(json.dumps(
            {"job_id": str(sleeper.pid), "cluster": "local", "folder": str(folder)}))
        opts = launch.SubmititOptions(cluster="debug", folder=str(folder))
        assert launch.submit_runs([config], opts) == 0
        assert f"already submitted as job {sleeper.pid}" in capsys.readouterr().out
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_a_job_of_two_tasks_trains_one_run_with_ddp(tmp_path, capsys):
    """--gpus-per-run 2 with --device cpu: one LocalExecutor job of 2 tasks; submitit's torch.distributed
    environment makes them one gloo DDP run, and rank 0 writes its one record (~45 s)."""
    if not _mnist_available():
        pytest.skip("MNIST is not in data/ (python -m batchcam prepare-data)")
    out = tmp_path / "out"
    argv = SUB[:SUB.index("--objectives") + 1] + ["ce+batchcam"] + SUB[SUB.index("--no-random-baseline"):] + [
        "--submitit-cluster", "local", "--gpus-per-run", "2", "--n-train", "128", "--n-test", "64",
        "--device", "cpu", "--out-dir", str(out), "--wait"]
    assert cli.main(argv) == 0, capsys.readouterr()
    records = _records(out)
    assert len(records) == 1
    assert json.loads(records[0].read_text())["runtime"]["world_size"] == 2
