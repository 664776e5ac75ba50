"""``python -m batchcam gpu-run`` and ``unpack`` on the CPU: the same code path a GPU session takes
(smoke test, pending grid runs within a budget, one archive), with a tiny budget and grid; then the
archive is verified and unpacked, a tampered one is refused, and nothing is replaced without --force.

The session runs once per module (about half a minute on two busy cores). It uses the real MNIST
files when ``data/`` has them, else synthetic data.
"""

import contextlib
import dataclasses
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import torch

import batchcam.cli as cli
import batchcam.gpu
from batchcam.config import TrainConfig
from batchcam.provenance import code_hashes
from batchcam.results import is_complete, load_record, load_runs

REPO = Path(__file__).resolve().parent.parent
HAVE_MNIST = all((REPO / "data" / "MNIST" / "raw" / f"{f}.gz").is_file()
                 for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                           "t10k-labels-idx1-ubyte"))


def _synthetic(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 + 2 * c:10 + 2 * c, 4:12] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One ``gpu-run --device cpu`` with a 120 s budget: simplecnn × mnist × seed 0, 256 / 128 images,
    one epoch, no benchmark. The grid's own overrides shrink the per-run evaluation samples (per-image
    loop timing, deletion/insertion AUC), which gpu-run has no flags for. Returns ``(exit code, log,
    out folder, results root, seconds)``."""
    root = tmp_path_factory.mktemp("gpu")
    out, results = root / "out", root / "results"
    argv = ["gpu-run", "--device", "cpu", "--budget-s", "120", "--out", str(out), "--models", "simplecnn",
            "--seeds", "0", "--datasets", "mnist", "--n-train", "256", "--n-test", "128", "--epochs", "1",
            "--bench", ""]
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("BATCHCAM_RESULTS", str(results))  # the committed records are neither read nor written
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        small = {k: v for k, v in (("eval_cam_loop_samples", 16), ("eval_faithfulness_samples", 16)) if k in fields}
        grid = batchcam.gpu.paper_grid
        m.setattr(batchcam.gpu, "paper_grid", lambda **kw: grid(**{**kw, **small}))
        if not HAVE_MNIST:
            m.setattr(batchcam.gpu, "load_data", lambda c: (_synthetic(c.n_train, c.seed), _synthetic(c.n_test, 0)))
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
    assert "smoke test passed" in log and "5 pending runs" in log, log
    assert seconds < 180, log
    archive = out / "records.tar.gz"
    assert archive.is_file() and (out / "session.json").is_file()
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        tensors_of = {n: json.loads(tar.extractfile(n).read())["tensors"]["file"] for n in names
                      if n.endswith(".json")}
    jsons = [n for n in names if n.endswith(".json")]
    # all five on an idle machine; on a busy one the budget may leave some pending, said in the log
    assert 1 <= len(jsons) <= 5 and f"done: {len(jsons)} new records" in log, log
    assert len(jsons) == 5 or "budget spent" in log or "skip " in log, log
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
    assert len(rows) == len(jsons) == len(list((dest / "runs").glob("*.json")))
    for r in rows:
        assert is_complete(r["run_id"], dest / "runs")
        assert (r["dataset"], r["model"], r["n_train"], r["n_test"], r["device"]) == ("mnist", "simplecnn", 256, 128,
                                                                                    "cpu")
    done = {(r["objective"], r["epochs"]) for r in rows}
    assert done <= {("ce", 0), ("ce", 1), ("ce+batchcam", 1), ("ce+proto", 1), ("ce+proto+batchcam", 1)}
    assert ("ce", 1) in done  # the first in priority order
    assert not (dest / ".unpack").exists()


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
])
def test_gpu_run_bad_values_exit_2_before_any_work(no_work, usage_error, tmp_path, argv, needles):
    out = tmp_path / "out"
    usage_error(["gpu-run", "--out", str(out), "--bench", "", "--device", "cpu", *argv], *needles)
    assert not out.exists()


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
