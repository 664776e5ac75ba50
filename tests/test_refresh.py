"""scripts/refresh_notebooks.py records each notebook's execution time for the landing page."""

import json
from pathlib import Path

from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("refresh_notebooks")


def test_execution_times_are_merged_per_notebook(tmp_path):
    refresh, times = _script(), tmp_path / "notebooks" / "times.json"
    refresh.record_time("book/a.ipynb", 12.34, 1.5, times)
    refresh.record_time("book/b.ipynb", 3.0, 0.25, times)
    refresh.record_time("book/a.ipynb", 20.0, 0.5, times)  # a later refresh replaces a's entry
    entries = json.loads(times.read_text())
    assert list(entries) == ["book/a.ipynb", "book/b.ipynb"]
    assert entries["book/a.ipynb"]["seconds"] == 20.0 and entries["book/b.ipynb"]["seconds"] == 3.0
    assert entries["book/a.ipynb"]["load_average_at_start"] == 0.5
    assert {"date_utc", "cpu", "cpu_count", "git_commit"} <= set(entries["book/b.ipynb"])
    assert not list(times.parent.glob("*.tmp"))


def test_the_landing_page_reads_the_file_the_script_writes():
    refresh = _script()
    assert refresh.TIMES == ROOT / "results" / "notebooks" / "times.json"
    cells = json.loads((ROOT / "book" / "intro.ipynb").read_text())["cells"]
    intro = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert 'results_root("notebooks")' in intro and "times.json" in intro
