"""``python -m batchcam gpu-run`` and ``unpack`` on the CPU: the same code path a GPU session takes
(``--dry-run-tiny``: smoke test, two runs at once in worker processes within a budget, one archive), then
the archive is verified and unpacked, a tampered one is refused, and nothing is replaced without --force.
Two runs at once give the records one run at a time gives; the session refuses a tree with uncommitted
result files; ``--calibrate`` writes a record the planner reads and ``unpack`` accepts.

The session runs once per module (under a minute on two busy cores: most of it is two fresh worker
processes importing torch). It needs the real MNIST files in ``data/``; without them it runs the runs in
this process on synthetic data (worker processes do not see a monkeypatch) and skips the comparison.
"""

import contextlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import torch

import batchcam.cli as cli
import batchcam.gpu
import batchcam.plan as planner
from batchcam.digest import canonical_sha256
from batchcam.grid import paper_grid
from batchcam.provenance import code_hashes
from batchcam.results import is_complete, load_record, load_runs
from batchcam.runpool import measure_concurrency, train_run

REPO = Path(__file__).resolve().parent.parent
HAVE_MNIST = all((REPO / "data" / "MNIST" / "raw" / f"{f}.gz").is_file()
                 for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                           "t10k-labels-idx1-ubyte"))
OBJECTIVES = ("ce", "ce+proto+batchcam")


def _synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 + 2 * c:10 + 2 * c, 4:12] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One ``gpu-run --device cpu --dry-run-tiny --models simplecnn``: MNIST seed 0, ce and ce+proto+batchcam
    on 200 / 100 images, one epoch, two worker processes. Returns ``(exit code, log, out folder, results root,
    seconds)``."""
    root = tmp_path_factory.mktemp("gpu")
    out, results = root / "out", root / "results"
    argv = ["gpu-run", "--device", "cpu", "--dry-run-tiny", "--models", "simplecnn", "--budget-s", "300",
            "--out", str(out)]
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("BATCHCAM_RESULTS", str(results))  # the committed records are neither read nor written
        if not HAVE_MNIST:
            import batchcam.train
            argv += ["--concurrency", "1"]
            m.setattr(batchcam.train, "load_data", lambda c: (_synthetic(c.n_train, c.seed), _synthetic(c.n_test, 0)))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log):
            code = cli.main(argv)
        seconds = time.perf_counter() - t0
    return code, log.getvalue(), out, results, seconds


def _rewrite(archive, dest, change):
    """Copy ``archive`` to ``dest``, passing each member's bytes through ``change(name, data)``."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w:gz") as tar:
        for member in src.getmembers():
            data = change(member.name, src.extractfile(member).read())
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


# --------------------------------------------------------------------------- the session


def test_gpu_run_on_cpu_packs_complete_records(session, tmp_path, capsys):
    code, log, out, results, seconds = session
    assert code == 0, log
    assert "smoke test passed" in log and "2 pending runs" in log, log
    assert ("K = 2" if HAVE_MNIST else "K = 1") in log and "cost model: extrapolated" in log
    assert seconds < 120, log
    archive = out / "records.tar.gz"
    assert archive.is_file() and (out / "session.json").is_file()
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        tensors_of = {n: json.loads(tar.extractfile(n).read())["tensors"]["file"] for n in names
                      if n.endswith(".json")}
    jsons = [n for n in names if n.endswith(".json")]
    assert len(jsons) == 2 and "done: 2 new records, 0 left pending" in log, log
    assert all(n.startswith("runs/") for n in names)
    assert sorted(f"runs/{tensors_of[n]}" for n in jsons) == [n for n in names if n.endswith(".tensors.pt")]
    assert all(tensors_of[n].startswith(n[5:-5] + ".") for n in jsons)  # each record names its own tensors
    assert not (results / "runs").exists()  # the session writes into its work folder, not results/

    dest = tmp_path / "results"
    assert cli.main(["unpack", str(archive), "--dest", str(dest)]) == 0
    out_text = capsys.readouterr().out
    assert f"added {2 * len(jsons)} files" in out_text
    if code_hashes() == code_hashes("HEAD"):  # records made from HEAD's code are not flagged
        assert "warning:" not in out_text, out_text
    rows = load_runs(dest / "runs")
    assert len(rows) == 2 == len(list((dest / "runs").glob("*.json")))
    for r in rows:
        assert is_complete(r["run_id"], dest / "runs")
        assert (r["dataset"], r["model"], r["n_train"], r["n_test"], r["device"]) == ("mnist", "simplecnn", 200, 100,
                                                                                    "cpu")
    assert {(r["objective"], r["epochs"]) for r in rows} == {(o, 1) for o in OBJECTIVES}
    assert not (dest / ".unpack").exists()


@pytest.mark.skipif(not HAVE_MNIST, reason="the concurrent session needs the MNIST files")
def test_two_runs_at_once_give_the_records_of_one_at_a_time(session):
    """K = 2 worker processes against this process, one run after the other, with the same single thread:
    the same losses, accuracy, map metrics and tensors (tolerance 1e-6 relative; on a CPU they are equal)."""
    out = session[2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for config in paper_grid([0], ["mnist"], ["simplecnn"], OBJECTIVES, random_baseline=False,
                                 **batchcam.gpu.DRY_RUN, device="cpu", out_dir=str(out / "sequential")):
            res = train_run(config, str(out / "sequential" / "runs"))
            one, two = load_record(Path(res["files"][0])), load_record(out / "work" / "runs" / f"{config.run_id}.json")
            for a, b in zip(one["history"], two["history"], strict=True):
                for key in ("train_total", "train_ce", "train_accuracy", "test_accuracy", "test_l1"):
                    assert a[key] == pytest.approx(b[key], rel=1e-6), key
            for key in ("accuracy", "l1", "ssim", "dead_fraction"):
                assert one["final"][key] == pytest.approx(two["final"][key], rel=1e-6), key
            assert one["tensors"]["sha256"] == two["tensors"]["sha256"]
    finally:
        torch.set_num_threads(threads)


def test_a_tampered_tensors_file_makes_unpack_fail(session, tmp_path, capsys):
    archive = session[2] / "records.tar.gz"
    hit = []

    def flip(name, data):
        if name.endswith(".tensors.pt") and not hit:
            hit.append(name)
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            return bytes(data)
        return data

    bad = _rewrite(archive, tmp_path / "tampered.tar.gz", flip)
    dest = tmp_path / "results"
    assert cli.main(["unpack", str(bad), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("batchcam unpack: error: ") and "tensors do not match" in err
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]  # nothing added, no staging left


def test_unpack_refuses_to_overwrite_without_force(session, tmp_path, capsys):
    archive = session[2] / "records.tar.gz"
    dest = tmp_path / "results"
    assert cli.main(["unpack", str(archive), "--dest", str(dest)]) == 0
    path = sorted((dest / "runs").glob("*.json"))[0]
    path.write_text(path.read_text().replace('"schema_version": 2', '"schema_version": 2 ', 1))
    edited = path.read_bytes()
    capsys.readouterr()
    assert cli.main(["unpack", str(archive), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err and "Traceback" not in err
    assert path.read_bytes() == edited and not (dest / ".unpack").exists()
    assert cli.main(["unpack", str(archive), "--dest", str(dest), "--force"]) == 0
    assert path.read_bytes() != edited and load_record(path)


def test_unpack_refuses_unexpected_entries_and_bad_files(session, tmp_path, usage_error):
    archive = session[2] / "records.tar.gz"
    dest = tmp_path / "results"
    with tarfile.open(archive) as src, tarfile.open(tmp_path / "extra.tar.gz", "w:gz") as tar:
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("notes/evil.sh")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"rm\n"))
    usage_error(["unpack", str(tmp_path / "extra.tar.gz"), "--dest", str(dest)], "unexpected entries",
                "notes/evil.sh")
    usage_error(["unpack", str(tmp_path / "absent.tar.gz"), "--dest", str(dest)], "no such file")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    usage_error(["unpack", str(tmp_path / "junk.tar.gz"), "--dest", str(dest)], "not a readable tar.gz archive")
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- errors before the session


@pytest.mark.parametrize("argv, needles", [
    (["--budget-s", "0"], ["--budget-s"]),
    (["--budget-s", "-5"], ["--budget-s"]),
    (["--budget-s", "nan"], ["--budget-s"]),
    (["--device", "bogus"], ["--device 'bogus'"]),
    (["--device", "mps"], ["--device 'mps'", "CPU and CUDA only", "valid choices here: 'auto', 'cpu'"]),
    (["--device", "meta"], ["--device 'meta'", "valid choices here: 'auto', 'cpu'"]),
    (["--n-train", "70000"], ["--n-train 70000"]),
    (["--epochs", "-1"], ["--epochs"]),
    (["--models", "vgg"], ["invalid choice: 'vgg'"]),
    (["--concurrency", "0"], ["--concurrency must be ≥ 1"]),
    (["--recipe", "bogus"], ["invalid choice: 'bogus'"]),
    (["--calibrate-k", "0"], ["--calibrate-k must be ≥ 1"]),
])
def test_gpu_run_bad_values_exit_2_before_any_work(no_work, usage_error, tmp_path, argv, needles):
    out = tmp_path / "out"
    usage_error(["gpu-run", "--out", str(out), "--bench", "", "--device", "cpu", *argv], *needles)
    assert not out.exists()


@pytest.mark.parametrize("status, needles", [
    (" M batchcam/losses.py\n?? batchcam/new.py", ["uncommitted changes to result files",
                                                  "batchcam/losses.py, batchcam/new.py", "--allow-dirty"]),
    (None, ["cannot read git status", "--allow-dirty"]),
])
def test_gpu_run_refuses_uncommitted_result_files(no_work, usage_error, tmp_path, monkeypatch, status, needles):
    monkeypatch.setattr(batchcam.gpu, "STAMP", tmp_path / "gpu-stamp.json")  # none
    seen = []

    def git(*args):
        seen.append(args)
        return None if status is None else status.strip()  # batchcam.provenance.git strips its output

    monkeypatch.setattr(batchcam.gpu, "git", git)
    usage_error(["gpu-run", "--out", str(tmp_path / "out"), "--device", "cpu"], *needles)
    assert seen[0][:3] == ("status", "--porcelain", "--") and "batchcam/train.py" in seen[0]  # RESULT_FILES only
    assert not (tmp_path / "out").exists()


def test_gpu_run_with_allow_dirty_or_a_clean_tree_goes_on_to_the_smoke_test(no_work, tmp_path, monkeypatch,
                                                                              capsys):
    def reached(*args, **kwargs):
        raise RuntimeError("the smoke test was reached")

    monkeypatch.setattr(batchcam.gpu, "smoke_test", reached)
    monkeypatch.setattr(batchcam.gpu, "STAMP", tmp_path / "gpu-stamp.json")
    for extra, status in ((["--allow-dirty"], " M batchcam/losses.py"), ([], "")):
        monkeypatch.setattr(batchcam.gpu, "git", lambda *args, status=status: status)
        assert cli.main(["gpu-run", "--out", str(tmp_path / "out"), "--device", "cpu", *extra]) == 3
        assert "SMOKE TEST FAILED, stopping: RuntimeError: the smoke test was reached" in capsys.readouterr().out


def test_a_stamp_of_a_clean_commit_lets_a_copy_with_stale_git_metadata_run(no_work, usage_error, tmp_path,
                                                                          monkeypatch, capsys):
    """A lent GPU's copy may carry git metadata older than its code: ``git status`` there lists the result
    files. ``gpu-run --stamp`` (on the clean tree, before the session) records the commit and the code's
    fingerprints; a session whose code matches them starts and names the stamp; one that does not is refused."""
    stamp = tmp_path / "gpu-stamp.json"
    monkeypatch.setattr(batchcam.gpu, "STAMP", stamp)
    monkeypatch.setattr(batchcam.gpu, "smoke_test", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("reached")))
    monkeypatch.setattr(batchcam.gpu, "git", lambda *args: " M batchcam/losses.py" if args[0] == "status" else "c0ffee")
    usage_error(["gpu-run", "--stamp"], "--stamp needs a clean tree", "batchcam/losses.py")
    assert not stamp.exists()
    monkeypatch.setattr(batchcam.gpu, "git", lambda *args: "" if args[0] == "status" else "c0ffee")
    assert cli.main(["gpu-run", "--stamp"]) == 0 and f"stamp: {stamp}" in capsys.readouterr().out
    record = json.loads(stamp.read_text())
    assert record["commit"] == "c0ffee" and record["code_sha256"] == code_hashes()
    monkeypatch.setattr(batchcam.gpu, "git", lambda *args: " M batchcam/losses.py")  # the stale copy
    assert cli.main(["gpu-run", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 3
    log = capsys.readouterr().out
    assert "reached" in log and '"stamp": {"commit": "c0ffee"' in log
    stamp.write_text(json.dumps({**record, "code_sha256": {"batchcam/losses.py": "0" * 64}}))  # other code
    usage_error(["gpu-run", "--out", str(tmp_path / "out"), "--device", "cpu"], "uncommitted changes")


def test_calibrate_on_cpu_writes_a_record_the_planner_reads_and_unpack_accepts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path / "results"))
    out = tmp_path / "out"
    assert cli.main(["gpu-run", "--device", "cpu", "--calibrate", "--models", "simplecnn", "--calibrate-k", "1",
                     "--calibrate-s", "0.2", "--allow-dirty", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    paths = list((tmp_path / "results" / "bench").glob("bench-calibration-cpu-*.json"))
    assert len(paths) == 1 and f"calibration: {paths[0]}" in log, log
    record = json.loads(paths[0].read_text())
    assert record["kind"] == "batchcam-calibration" and record["record_sha256"] == canonical_sha256(record)
    assert record["provenance"]["code_sha256"] and record["amp_dtype"] is None and record["best_k"] == 1
    (case,) = record["cases"]
    assert (case["model"], case["image_size"], case["batch_size"]) == ("simplecnn", 28, 128)
    assert case["forward_ms_per_image"] > 0 and set(case["step_ms"]) == {"ce", "ce+proto+batchcam"}
    model = planner.cost_model("cpu")
    assert model.source.startswith(f"calibration {paths[0].name}")
    assert model.factor == pytest.approx(case["step_ms"]["ce"] / 1e3 / planner.ANCHORS["cpu"].step_s)
    with tarfile.open(out / "records.tar.gz") as tar:
        assert tar.getnames() == [f"bench/{paths[0].name}"]
    dest = tmp_path / "dest"
    assert cli.main(["unpack", str(out / "records.tar.gz"), "--dest", str(dest)]) == 0
    assert (dest / "bench" / paths[0].name).read_bytes() == paths[0].read_bytes()


def test_measure_concurrency_runs_k_workers_together():
    out = measure_concurrency([dict(model="simplecnn", image_size=28, batch_size=8, objective="ce+proto+batchcam")],
                              "cpu", False, (1, 2), seconds=0.3, log=lambda msg: None)
    assert set(out) == {"simplecnn"} and out["simplecnn"][1] == 1.0 and out["simplecnn"][2] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_run_on_a_machine_without_cuda_is_refused(no_work, usage_error, tmp_path):
    usage_error(["gpu-run", "--out", str(tmp_path / "out")], "--device 'cuda'", "CUDA is not available")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- devices (batchcam._helpers)


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "mps:0", "bogus", "cuda:99"])
def test_resolve_device_refuses_devices_this_project_cannot_use(device):
    """``mps`` and ``meta`` used to pass and fail deep inside training with a traceback."""
    from batchcam._helpers import resolve_device

    with pytest.raises(ValueError, match="'auto', 'cpu'" if device != "cuda:99" or torch.cuda.is_available()
                       else "CUDA is not available") as info:
        resolve_device(device)
    assert "\n" not in str(info.value) and repr(device) in str(info.value)


def test_resolve_device_accepts_cpu_auto_and_cuda_where_present():
    from batchcam._helpers import resolve_device

    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0").type == "cuda"


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_train_and_bench_refuse_mps_and_meta_in_one_line(usage_error, no_work, tmp_path, device):
    usage_error(["train", "--device", device, "--out-dir", str(tmp_path)], f"--device {device!r}",
                "valid choices here: 'auto', 'cpu'")
    usage_error(["bench", "--quick", "--device", device], f"unknown device {device!r}")
