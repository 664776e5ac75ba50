"""Run and benchmark records: write, refuse to overwrite, verify, load, staleness, and the committed
records. Records are fabricated with the ``make_record`` fixture (conftest.py): nothing trains here."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import batchcam.results as R
from batchcam.config import TrainConfig
from batchcam.provenance import RESULT_FILES, code_hashes, code_tree, git, provenance

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "results" / "runs"


def tmp_files(root):
    return [p for p in Path(root).rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- write and load


def test_write_then_load_round_trip(tmp_path, make_record):
    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    assert path == tmp_path / f"{record['run_id']}.json"
    stored = R.load_record(path)
    assert set(R.REQUIRED_KEYS) <= set(stored) and stored["scale"] == "cpu-subset"
    assert stored["tensors"]["sha256"] == hashlib.sha256((tmp_path / stored["tensors"]["file"]).read_bytes()).hexdigest()
    assert R.is_complete(record["run_id"], tmp_path)
    (row,) = R.load_runs(tmp_path)
    assert row["run_id"] == record["run_id"] and row["accuracy"] == 0.9 and row["dataset"] == "mnist"
    assert row["blank_dead_fraction"] == 1.0 and row["git_commit"] == stored["provenance"]["git_commit"]
    back = R.load_tensors(record["run_id"], tmp_path)
    assert set(back) == {"average_reconstruction", "prototypes"}
    for k, v in tensors.items():
        assert back[k].shape == (10, 28, 28)
        torch.testing.assert_close(back[k], v.float(), atol=1e-3, rtol=0)  # stored as float16
    assert not tmp_files(tmp_path)


def test_write_run_refuses_to_overwrite_without_force(tmp_path, make_record):
    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    before = path.read_bytes()
    again, again_tensors = make_record(final={"accuracy": 0.5}, seed_maps=1)
    with pytest.raises(R.RecordExistsError, match="--force"):
        R.write_run(again, again_tensors, tmp_path)
    assert path.read_bytes() == before
    R.write_run(again, again_tensors, tmp_path, force=True)
    assert R.load_record(path)["final"]["accuracy"] == 0.5 and R.is_complete(record["run_id"], tmp_path)


def test_large_maps_are_stored_at_56_px(tmp_path, make_record):
    record, tensors = make_record(model="convnextv2_tiny")
    assert tensors["average_reconstruction"].shape == (10, 112, 112)
    R.write_run(record, tensors, tmp_path)
    assert R.load_record(tmp_path / f"{record['run_id']}.json")["tensors"]["stored_size"] == 56
    back = R.load_tensors(record["run_id"], tmp_path)
    want = torch.nn.functional.avg_pool2d(tensors["average_reconstruction"][:, None], 2)[:, 0]
    assert back["prototypes"].shape == (10, 56, 56)
    torch.testing.assert_close(back["average_reconstruction"], want, atol=1e-3, rtol=0)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.pop("provenance"), r"lacks keys \['provenance'\]"),
    (lambda r: r["final"].pop("ssim"), r"'final' lacks \['ssim'\]"),
    (lambda r: r.update(history={}), "'history' must be a list"),
    (lambda r: r.update(schema_version=1), "schema_version 1, expected 2"),
])
def test_validate_record_names_the_problem(make_record, mutate, match):
    record, _ = make_record()
    record["tensors"] = {}
    R.validate_record(record)
    mutate(record)
    with pytest.raises(ValueError, match=match):
        R.validate_record(record)


def test_tampered_tensors_make_the_record_incomplete(tmp_path, make_record):
    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    t = tmp_path / f"{record['run_id']}.tensors.pt"
    data = bytearray(t.read_bytes())
    data[-10] ^= 0xFF
    t.write_bytes(bytes(data))
    assert not R.is_complete(record["run_id"], tmp_path)
    with pytest.warns(UserWarning, match="skipping"):
        assert R.load_runs(tmp_path) == []
    t.unlink()
    assert not R.is_complete(record["run_id"], tmp_path)


# --------------------------------------------------------------------------- a write that fails half-way


def _fail_json_write(monkeypatch):
    def fail(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(R, "atomic_write_json", fail)


def test_a_json_write_that_fails_after_the_tensors_leaves_no_record(tmp_path, make_record, monkeypatch):
    record, tensors = make_record()
    _fail_json_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        R.write_run(record, tensors, tmp_path)
    assert (tmp_path / f"{record['run_id']}.tensors.pt").is_file()  # the tensors were written first
    assert not R.is_complete(record["run_id"], tmp_path)
    assert R.load_runs(tmp_path) == []
    assert not tmp_files(tmp_path)


def test_a_failed_forced_rewrite_leaves_an_incomplete_pair_that_load_runs_skips(tmp_path, make_record, monkeypatch):
    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    new, new_tensors = make_record(final={"accuracy": 0.1}, seed_maps=5)
    _fail_json_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        R.write_run(new, new_tensors, tmp_path, force=True)
    # old JSON, new tensors: the SHA-256 no longer matches, so the pair is not a record
    assert not R.is_complete(record["run_id"], tmp_path)
    with pytest.warns(UserWarning, match="skipping"):
        assert R.load_runs(tmp_path) == []


# --------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("where", ["final.accuracy", "final.l1", "final.per_class", "history", "timings",
                                   "baselines", "provenance"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_write_run_refuses_a_non_finite_number_anywhere(tmp_path, make_record, where, bad):
    record, tensors = make_record()
    if where.startswith("final."):
        key = where.split(".")[1]
        if key == "per_class":
            record["final"]["per_class"]["ssim"][3] = bad
        else:
            record["final"][key] = bad
    elif where == "history":
        record["history"][-1]["train_total"] = bad
    elif where == "timings":
        record["timings"]["gradcam_loop_s"] = bad
    elif where == "baselines":
        record["final"]["baselines"]["blank"]["l2"] = bad
    else:
        record["provenance"]["torch_threads"] = bad
    with pytest.raises(ValueError, match="finite"):
        R.write_run(record, tensors, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written, not even the tensors


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_a_json_file_with_non_finite_tokens_is_not_complete(tmp_path, make_record, token):
    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    text = path.read_text()
    assert '"accuracy": 0.9' in text
    path.write_text(text.replace('"accuracy": 0.9', f'"accuracy": {token}', 1))
    assert not R.is_complete(record["run_id"], tmp_path)
    with pytest.raises(ValueError, match="non-finite"):
        R.load_record(path)
    with pytest.warns(UserWarning, match="skipping"):
        assert R.load_runs(tmp_path) == []


def test_load_runs_skips_bad_files_and_sorts(tmp_path, make_record):
    for seed in (2, 0, 1):
        R.write_run(*make_record(seed=seed), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "partial.json").write_text(json.dumps({"run_id": "partial"}))
    with pytest.warns(UserWarning, match="skipping"):
        rows = R.load_runs(tmp_path)
    assert [r["seed"] for r in rows] == [0, 1, 2]
    assert not R.is_complete("partial", tmp_path) and not R.is_complete("absent", tmp_path)


# --------------------------------------------------------------------------- where records live


def test_results_root_follows_the_environment_then_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path))
    assert R.results_root() == tmp_path / "runs" and R.results_root("bench") == tmp_path / "bench"
    monkeypatch.delenv("BATCHCAM_RESULTS")
    assert R.results_root() == REPO / "results" / "runs"


# --------------------------------------------------------------------------- staleness


def _write_with(tmp_path, make_record, seed, **prov):
    prov.setdefault("code_sha256", None)  # records made before fingerprints: git metadata decides
    record, tensors = make_record(seed=seed, provenance=prov)
    R.write_run(record, tensors, tmp_path)
    return record["run_id"]


def test_stale_records_lists_changed_dirty_and_uncommitted_records(tmp_path, make_record, monkeypatch):
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path))  # no behaviour probes: the code alone decides
    head = git("rev-parse", "HEAD")
    if head is None:
        pytest.skip("not a git checkout")
    def code_changed(c):  # a result file whose code (not only its docstrings) differs from HEAD
        names = (git("diff", "--name-only", c, "HEAD", "--", *R.RESULT_FILES) or "").split()
        return any(code_tree(git("show", f"{c}:{f}")) != code_tree(git("show", f"HEAD:{f}")) for f in names)

    changed = next((c for c in (git("rev-list", "HEAD") or "").split() if code_changed(c)), None)
    if changed is None:
        pytest.skip("no commit in this history differs from HEAD in a result file")
    clean = _write_with(tmp_path, make_record, 0, git_commit=head, git_dirty=False)
    old = _write_with(tmp_path, make_record, 1, git_commit=changed, git_dirty=False)
    dirty = _write_with(tmp_path, make_record, 2, git_commit=head, git_dirty=True)
    nocommit = _write_with(tmp_path, make_record, 3, git_commit=None, git_dirty=None)
    alien = _write_with(tmp_path, make_record, 4, git_commit="0" * 40, git_dirty=False)
    stale = {s["run_id"]: s for s in R.stale_records(tmp_path)}
    assert clean not in stale
    assert set(stale) == {old, dirty, nocommit, alien}
    assert stale[old]["reason"].startswith("changed since: ") and "batchcam/" in stale[old]["reason"]
    assert stale[old]["commit"] == changed
    assert stale[dirty]["reason"] == "made from a dirty tree"
    assert stale[nocommit]["reason"] == "no commit recorded"
    assert "not in this repository" in stale[alien]["reason"]


def test_code_fingerprints_decide_staleness_whatever_the_git_metadata(tmp_path, make_record, monkeypatch):
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path))  # no behaviour probes: the code alone decides
    if git("rev-parse", "HEAD") is None:
        pytest.skip("not a git checkout")
    head = code_hashes("HEAD")
    assert set(head) == set(RESULT_FILES) and all(len(h) == 64 for h in head.values())
    # a lent GPU machine: stale metadata (another commit, dirty) but HEAD's code -> current
    copied = _write_with(tmp_path, make_record, 0, git_commit="0" * 40, git_dirty=True,
                         code_sha256=head)
    edited = dict(head, **{"batchcam/losses.py": "f" * 64})
    changed = _write_with(tmp_path, make_record, 1, git_commit="0" * 40, git_dirty=False,
                          code_sha256=edited)
    stale = {s["run_id"]: s["reason"] for s in R.stale_records(tmp_path)}
    assert copied not in stale
    assert stale[changed] == "changed since: batchcam/losses.py"


def test_provenance_fingerprints_the_code_on_disk():
    prov = provenance("cpu")
    assert prov["code_sha256"] == code_hashes()
    source = (Path(__file__).resolve().parents[1] / "batchcam/losses.py").read_text()
    assert prov["code_sha256"]["batchcam/losses.py"] == hashlib.sha256(
        code_tree(source).encode()).hexdigest()


# --------------------------------------------------------------------------- benchmark records


def test_bench_records_never_overwrite_and_quick_ones_are_not_the_latest(tmp_path, monkeypatch):
    import datetime

    record = {"kind": "bench", "summary": {"maps_equal": True}, "wall_s": 1.0}
    path = R.write_bench_record(record, device_type="cpu", root=tmp_path)
    assert path.name.startswith("bench-cpu-") and R.latest_bench("cpu", tmp_path) == record
    stamp = datetime.datetime.strptime(path.stem.split("-")[2], "%Y%m%dT%H%M%SZ")

    class SameSecond(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return stamp.replace(tzinfo=tz)

    monkeypatch.setattr(R.datetime, "datetime", SameSecond)
    with pytest.raises(R.RecordExistsError, match="--force"):
        R.write_bench_record({**record, "wall_s": 2.0}, device_type="cpu", root=tmp_path)
    assert R.latest_bench("cpu", tmp_path)["wall_s"] == 1.0
    R.write_bench_record({**record, "wall_s": 2.0}, device_type="cpu", root=tmp_path, force=True)
    R.write_bench_record({**record, "wall_s": 3.0}, device_type="cpu", quick=True, root=tmp_path)
    assert R.latest_bench("cpu", tmp_path)["wall_s"] == 2.0  # a --quick record is never the latest
    assert R.latest_bench("cuda", tmp_path) is None
    with pytest.raises(ValueError, match="finite"):
        R.write_bench_record({"wall_s": math.inf}, device_type="cuda", root=tmp_path)
    assert not list(tmp_path.glob("bench-cuda-*"))


# --------------------------------------------------------------------------- the committed records


def test_every_committed_record_loads():
    paths = sorted(COMMITTED.glob("*.json"))
    current = [p for p in paths if json.loads(p.read_text()).get("schema_version") == R.SCHEMA_VERSION]
    if not current:
        pytest.skip(f"no committed record at schema {R.SCHEMA_VERSION} yet ({len(paths)} older ones in "
                    f"{COMMITTED}): the records are being regenerated")
    rows = R.load_runs(COMMITTED)
    assert len(rows) == len(paths), sorted({p.stem for p in paths} - {r["run_id"] for r in rows})
    total = sum(p.stat().st_size for p in COMMITTED.iterdir())
    assert total < 16 * 2**20, f"records take {total / 2**20:.1f} MiB"
    for path in paths:  # a CPU record's id is its configuration's (a CUDA one needs a CUDA machine)
        record = R.load_record(path)
        if record["runtime"]["device_type"] == "cpu":
            assert TrainConfig(**{**record["config"], "device": "cpu"}).run_id == record["run_id"] == path.stem


def test_a_docstring_change_does_not_make_a_record_stale():
    from batchcam.provenance import code_tree as _code

    before = 'def f(x):\n    """Old words."""\n    return x + 1  # a comment\n'
    assert _code(before) == _code('def f(x):\n    """New words, chapter 5."""\n    return x + 1\n')
    assert _code(before) != _code('def f(x):\n    """Old words."""\n    return x + 2\n')
