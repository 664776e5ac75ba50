"""Run and benchmark records: write, refuse to overwrite, verify, load, staleness, and the committed
records. Records are fabricated with the ``make_record`` fixture (conftest.py): nothing trains here."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import batchcam.results as R
import batchcam.staleness as S
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
    stored_tensors = (tmp_path / stored["tensors"]["file"]).read_bytes()
    assert stored["tensors"]["sha256"] == hashlib.sha256(stored_tensors).hexdigest()
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


def _tensors_path(root, run_id):
    return Path(root) / json.loads((Path(root) / f"{run_id}.json").read_text())["tensors"]["file"]


def test_tampered_tensors_make_the_record_incomplete(tmp_path, make_record):
    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    t = _tensors_path(tmp_path, record["run_id"])
    data = bytearray(t.read_bytes())
    data[-10] ^= 0xFF
    t.write_bytes(bytes(data))
    assert not R.is_complete(record["run_id"], tmp_path)
    with pytest.raises(ValueError, match=r"tensors do not match the SHA-256"):
        R.load_tensors(record["run_id"], tmp_path)  # the loader checks the hash and names the file
    with pytest.warns(UserWarning, match="skipping"):
        assert R.load_runs(tmp_path) == []
    t.unlink()
    assert not R.is_complete(record["run_id"], tmp_path)


def test_a_tampered_number_is_refused_and_named(tmp_path, make_record):
    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    stored = json.loads(path.read_text())
    stored["final"]["accuracy"] = 0.99  # an accidental edit
    path.write_text(json.dumps(stored, indent=1))
    with pytest.raises(ValueError, match=r"does not match its record_sha256") as err:
        R.load_record(path)
    assert str(path) in str(err.value)
    assert not R.is_complete(record["run_id"], tmp_path)


def test_a_record_without_its_hash_is_refused(tmp_path, make_record):
    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    stored = json.loads(path.read_text())
    del stored["record_sha256"]
    path.write_text(json.dumps(stored, indent=1))
    with pytest.raises(ValueError, match="migrate_records"):
        R.load_record(path)


# --------------------------------------------------------------------------- a write that fails half-way


def _fail_json_write(monkeypatch):
    def fail(root, name, data):
        raise OSError("disk full")

    monkeypatch.setattr(R, "fsynced_temp", fail)


def test_a_json_write_that_fails_after_the_tensors_leaves_no_record(tmp_path, make_record, monkeypatch):
    record, tensors = make_record()
    _fail_json_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        R.write_run(record, tensors, tmp_path)
    assert list(tmp_path.glob("*.tensors.pt"))  # the tensors were written first, under their own name
    assert not (tmp_path / f"{record['run_id']}.json").exists()
    assert not R.is_complete(record["run_id"], tmp_path)
    assert R.load_runs(tmp_path) == []
    assert not tmp_files(tmp_path)


def test_a_failed_forced_rewrite_leaves_the_old_record(tmp_path, make_record, monkeypatch):
    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    new, new_tensors = make_record(final={"accuracy": 0.1}, seed_maps=5)
    _fail_json_write(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        R.write_run(new, new_tensors, tmp_path, force=True)
    assert R.is_complete(record["run_id"], tmp_path)  # the old record is intact
    (row,) = R.load_runs(tmp_path)
    assert row["accuracy"] == 0.9


def test_a_forced_rewrite_replaces_the_pair_and_drops_the_old_tensors(tmp_path, make_record):
    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    old = _tensors_path(tmp_path, record["run_id"])
    new, new_tensors = make_record(final={"accuracy": 0.1}, seed_maps=5)
    R.write_run(new, new_tensors, tmp_path, force=True)
    (row,) = R.load_runs(tmp_path)
    assert row["accuracy"] == 0.1 and not old.exists()
    assert len(list(tmp_path.glob("*.tensors.pt"))) == 1


def test_an_incomplete_record_is_pending_and_replaced_without_force(tmp_path, make_record):
    from batchcam.grid import pending

    record, tensors = make_record()
    path = R.write_run(record, tensors, tmp_path)
    stored = json.loads(path.read_text())
    del stored["final"]  # a record cut short
    path.write_text(json.dumps(stored))
    config = TrainConfig(**stored["config"])
    assert [c.run_id for c in pending([config], tmp_path)] == [record["run_id"]]
    R.write_run(record, tensors, tmp_path)  # no force needed
    assert R.is_complete(record["run_id"], tmp_path) and pending([config], tmp_path) == []


_KILL_DURING_FORCE = """
import os, signal, sys
import batchcam.results as R
real = R._publish
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 just before the swap
R._publish = killed
"""


def test_kill_9_during_force_leaves_the_old_record(tmp_path, make_record):
    import pickle
    import subprocess
    import sys

    record, tensors = make_record()
    R.write_run(record, tensors, tmp_path)
    new, new_tensors = make_record(final={"accuracy": 0.1}, seed_maps=5)
    (tmp_path / "new.pkl").write_bytes(pickle.dumps((new, new_tensors)))
    pkl = str(tmp_path / "new.pkl")
    code = _KILL_DURING_FORCE + (f"new, t = __import__('pickle').loads(open({pkl!r}, 'rb').read())\n"
                                 f"R.write_run(new, t, {str(tmp_path)!r}, force=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -9
    assert R.is_complete(record["run_id"], tmp_path)
    (row,) = R.load_runs(tmp_path)
    assert row["accuracy"] == 0.9


_WRITER = """
import pickle, sys, time
import batchcam.results as R
record, tensors = pickle.loads(open(sys.argv[1], 'rb').read())
while time.time() < float(sys.argv[3]):
    pass
try:
    R.write_run(record, tensors, sys.argv[2])
    print("won")
except R.RecordExistsError as exc:
    print("lost:", exc)
"""


def test_two_concurrent_writers_leave_exactly_one_record(tmp_path, make_record):
    import pickle
    import subprocess
    import sys
    import time

    record, tensors = make_record()
    out = tmp_path / "runs"
    outs = []
    for i in range(2):  # different content, same run id
        rec, t = make_record(final={"accuracy": 0.5 + i / 10}, seed_maps=i)
        (tmp_path / f"{i}.pkl").write_bytes(pickle.dumps((rec, t)))
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / f"{i}.pkl"), str(out), str(start)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(o.split(":")[0].strip() for o in outs) == ["lost", "won"], outs
    (row,) = R.load_runs(out)
    winner = [i for i, o in enumerate(outs) if o.startswith("won")][0]
    assert row["accuracy"] == 0.5 + winner / 10
    assert len(list(out.glob("*.tensors.pt"))) == 1 and not tmp_files(out)


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
        names = (git("diff", "--name-only", c, "HEAD", "--", *RESULT_FILES) or "").split()
        return any(code_tree(git("show", f"{c}:{f}")) != code_tree(git("show", f"HEAD:{f}")) for f in names)

    changed = next((c for c in (git("rev-list", "HEAD") or "").split() if code_changed(c)), None)
    if changed is None:
        pytest.skip("no commit in this history differs from HEAD in a result file")
    clean = _write_with(tmp_path, make_record, 0, git_commit=head, git_dirty=False)
    old = _write_with(tmp_path, make_record, 1, git_commit=changed, git_dirty=False)
    dirty = _write_with(tmp_path, make_record, 2, git_commit=head, git_dirty=True)
    nocommit = _write_with(tmp_path, make_record, 3, git_commit=None, git_dirty=None)
    alien = _write_with(tmp_path, make_record, 4, git_commit="0" * 40, git_dirty=False)
    stale = {s["run_id"]: s for s in S.stale_records(tmp_path)}
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
    stale = {s["run_id"]: s["reason"] for s in S.stale_records(tmp_path)}
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
    latest = R.latest_bench("cpu", tmp_path)
    assert path.name.startswith("bench-cpu-") and {k: v for k, v in latest.items() if k != "record_sha256"} == record
    from batchcam.digest import record_hash_ok
    assert record_hash_ok(latest)
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
    # the clone stays small: about 50 KB per run (JSON + class-mean maps) for the ~600 planned CPU runs
    # (three-seed grids, the verdict and decoy verdict grids, ablations) is about 30 MiB
    assert total < 32 * 2**20, f"records take {total / 2**20:.1f} MiB"
    for path in paths:  # a CPU record's id is its configuration's (a CUDA one needs a CUDA machine)
        record = R.load_record(path)
        if record["runtime"]["device_type"] == "cpu":
            assert TrainConfig(**{**record["config"], "device": "cpu"}).run_id == record["run_id"] == path.stem


def test_a_docstring_change_does_not_make_a_record_stale():
    from batchcam.provenance import code_tree as _code

    before = 'def f(x):\n    """Old words."""\n    return x + 1  # a comment\n'
    assert _code(before) == _code('def f(x):\n    """New words, chapter 5."""\n    return x + 1\n')
    assert _code(before) != _code('def f(x):\n    """Old words."""\n    return x + 2\n')


def test_result_files_are_the_import_closure_of_training_and_evaluation():
    assert {"batchcam/_helpers.py", "batchcam/distributed.py", "batchcam/train.py", "batchcam/evaluate.py",
            "batchcam/faithfulness.py"} <= set(RESULT_FILES)  # faithfulness: imported inside a function
    assert not {"batchcam/results.py", "batchcam/report.py", "batchcam/plots.py"} & set(RESULT_FILES)


def test_import_closure_follows_lazy_and_package_imports(tmp_path):
    from batchcam.provenance import import_closure

    pkg = tmp_path / "batchcam"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .unused import x\n")
    (pkg / "entry.py").write_text("from . import helper\ndef f():\n    from .sub.deep import g\n")
    (pkg / "helper.py").write_text("import os\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from ..leaf import y\n")
    (pkg / "leaf.py").write_text("")
    (pkg / "unused.py").write_text("")
    assert import_closure(("batchcam/entry.py",), tmp_path) == (
        "batchcam/entry.py", "batchcam/helper.py", "batchcam/leaf.py", "batchcam/sub/__init__.py",
        "batchcam/sub/deep.py")


def test_a_change_to_helpers_makes_records_stale(tmp_path, make_record, monkeypatch):
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path))  # no behaviour probes: the code alone decides
    if git("rev-parse", "HEAD") is None:
        pytest.skip("not a git checkout")
    head = code_hashes("HEAD")
    edited = dict(head, **{"batchcam/_helpers.py": "e" * 64})
    rid = _write_with(tmp_path, make_record, 0, git_commit="0" * 40, git_dirty=False, code_sha256=edited)
    assert {s["run_id"]: s["reason"] for s in S.stale_records(tmp_path)} == {
        rid: "changed since: batchcam/_helpers.py"}


def test_results_imports_nothing_from_training_or_the_probes():
    import ast

    source = (REPO / "batchcam" / "results.py").read_text()
    names = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"train", "behaviour", "staleness", "evaluate", "cli"}


def test_a_probe_made_before_a_module_joined_the_closure_is_found():
    """A record made before a file entered RESULT_FILES (batchcam/loop.py) was probed under the smaller
    closure of its time: staleness must key its probe by the files that version had."""
    from batchcam.behaviour import code_key
    from batchcam.provenance import RESULT_FILES
    from batchcam.staleness import LEGACY_PROBE_CPU, probes_for

    old = {f: f"hash-of-{f}" for f in RESULT_FILES if f != "batchcam/loop.py"}
    behaviour = {code_key(old): {"simplecnn": {"x": 1.0}}}
    assert probes_for({**old, "batchcam/loop.py": None}, behaviour) == {LEGACY_PROBE_CPU: {"simplecnn": {"x": 1.0}}}
    assert probes_for({**old, "batchcam/loop.py": None}, behaviour, legacy=False) == {}  # HEAD: every file


def test_atomic_writes_share_one_temp_file_rule(tmp_path, monkeypatch):
    """``atomic_write_bytes`` and ``write_run``'s JSON both go through ``_helpers.fsynced_temp``: the usual
    permissions (not mkstemp's 0600), and a failed rename leaves neither the target nor a temp file."""
    import os

    from batchcam import _helpers

    path = _helpers.atomic_write_bytes(tmp_path / "a.bin", b"abc")
    assert path.read_bytes() == b"abc" and (path.stat().st_mode & 0o777) == 0o666 & ~_helpers._UMASK

    def fail(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        _helpers.atomic_write_bytes(tmp_path / "b.bin", b"xyz")
    assert not (tmp_path / "b.bin").exists() and not tmp_files(tmp_path)
