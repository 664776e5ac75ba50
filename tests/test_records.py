"""The committed records found by a package installed outside the repository (chapter 7)."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_an_installed_package_finds_the_records_after_fetch_records(tmp_path):
    runs = sorted((REPO / "results" / "runs").glob("*.json"))[:2]
    if not runs:
        import pytest

        pytest.skip("no committed run records")
    archive = tmp_path / "main.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # the layout of GitHub's archive of the repository
        for json_path in runs:
            for p in (json_path, json_path.with_name(json_path.stem + ".tensors.pt")):
                tar.add(p, arcname=f"batchcam-main/results/runs/{p.name}")
        tar.add(REPO / "README.md", arcname="batchcam-main/README.md")
    shutil.copytree(REPO / "batchcam", tmp_path / "site" / "batchcam")  # imported from outside the repo
    (tmp_path / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BATCHCAM_RESULTS"}
    env.update(PYTHONPATH=str(tmp_path / "site"), HOME=str(tmp_path / "home"))
    code = ("import json, batchcam.results as R, batchcam.records as F\n"
            "before = str(R.results_root())\n"
            f"F.fetch_records({archive.as_uri()!r})\n"
            "print(json.dumps([before, str(R.results_root()), len(R.load_runs()), R.__file__]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "work", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, after, n, module = json.loads(out.stdout.strip().splitlines()[-1])
    assert module.startswith(str(tmp_path / "site"))
    assert before == "results/runs" and not (tmp_path / "work" / "results").exists()
    assert after == str(tmp_path / "home" / ".cache" / "batchcam" / "results" / "runs")
    assert n == len(runs)


def test_committed_sanity_records_are_sealed_and_name_a_verdict_grid_run():
    """Every results/sanity record (chapter 8) carries a valid record_sha256, was made at a clean commit, and
    its run_id (cascade) is a verdict-grid run whose record is committed; a data-randomisation record's
    "memorised" agrees with its training accuracy."""
    import json
    from pathlib import Path

    from batchcam import grid
    from batchcam.digest import record_hash_ok

    root = Path(__file__).resolve().parents[1] / "results"
    files = sorted((root / "sanity").glob("*.json"))
    verdict_ids = {c.run_id for c in grid.verdict_grid()}
    for f in files:
        rec = json.loads(f.read_text())
        assert record_hash_ok(rec) is True, f"{f.name}: record_sha256 does not match"
        assert rec["provenance"]["git_dirty"] is False, f"{f.name}: made from a dirty tree"
        if rec["kind"] == "cascade":
            assert rec["run_id"] in verdict_ids and (root / "runs" / f"{rec['run_id']}.json").is_file()
            assert f.name == f"cascade-{rec['run_id']}.json"
            assert all(0.0 <= s["dead"] <= 1.0 for s in rec["stages"])
        elif rec["kind"] == "data-randomisation":  # the 90 % bar is the record's own, never a reading of it
            assert rec["memorised"] is (rec["train_accuracy_permuted"] >= 0.9)
            assert f.name == f"data-randomisation-{rec['dataset']}-seed{rec['seed']}.json"
            assert -1.0 <= rec["spearman_mean"] <= 1.0 and 0.0 <= rec["spearman_abs_mean"] <= 1.0
