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


def test_check_allows_training_noise_only_across_cpu_models():
    """``--check`` compares as nbval does: exactly when this CPU model made the stored outputs, number by
    number within ``nbval_numbers``' tolerance when another did; words still exactly."""
    import nbformat

    refresh = _script()

    def nb(text):
        cell = nbformat.v4.new_code_cell("print(...)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text=text)], id="c0")
        return nbformat.v4.new_notebook(cells=[cell])

    stored, noisy, other = nb("L1 0.364\n"), nb("L1 0.378\n"), nb("L2 0.364\n")
    assert refresh.diff_outputs(stored, noisy, across_cpus=True) == []
    assert len(refresh.diff_outputs(stored, noisy)) == 1
    assert len(refresh.diff_outputs(stored, other, across_cpus=True)) == 1
