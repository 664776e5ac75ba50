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
