"""Re-execute the book's notebooks in place, so that their stored outputs are fresh.

    python scripts/refresh_notebooks.py                  # every notebook in _toc.yml
    python scripts/refresh_notebooks.py book/03_*.ipynb  # just these
    python scripts/refresh_notebooks.py --check          # execute in memory, report drift

The stored outputs are what the HTML book shows (execute_notebooks is "off") and what
`pytest --nbval book/` compares against, so they are refreshed with one fixed recipe:
nbclient with the `python3` kernel (the interpreter running this script), the notebook's
folder as working directory, no timing metadata, saved widget state, and a seeded
environment. Cell ids are kept, execution timestamps and other volatile metadata are
dropped, and a notebook is only rewritten when its content changed; a second run on the
same machine therefore leaves no git diff except widget model ids (random by design,
and ignored by nbval).

Each notebook's execution time is recorded in `results/notebooks/times.json` (with the date,
the CPU, its core count and the load average when it started): the landing page's table of
CPU times per chapter reads it.

Each notebook also names the CPU model that made its outputs (`metadata.batchcam.outputs_cpu`):
on another CPU model, training rounds differently, so `pytest --nbval book/` compares numbers
within training noise there (`scripts/nbval_numbers.py`) and exactly on this one.

`--check` executes without writing and compares every code cell's text outputs with the
stored ones the way nbval does (same sanitiser, same per-cell markers, the same tolerance
across CPU models). It exits 1 if any notebook drifted or failed to run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from nbval_numbers import close, outputs_cpu  # noqa: E402

TOC = ROOT / "_toc.yml"
SANITIZE_FILE = ROOT / "book" / "nbval_sanitize.cfg"
TIMEOUT = 900  # seconds per cell
TIMES = ROOT / "results" / "notebooks" / "times.json"  # read by book/intro.ipynb

# Environment of the kernel (inherited from this process). PYTHONHASHSEED fixes set and
# dict-of-str iteration order; CUBLAS_WORKSPACE_CONFIG is what
# torch.use_deterministic_algorithms(True) requires on CUDA. MPLBACKEND=Agg would drop
# the inline figures, so it is removed.
SEEDED_ENV = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

# Notebook-level metadata that varies between runs or machines and means nothing to
# the book. language_info.version is the exact Python version of whoever ran it last.
VOLATILE_NB_METADATA = ("papermill", "execution", "vscode", "colab", "toc", "varInspector")
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


# --------------------------------------------------------------------------- discovery

def toc_notebooks(toc_path: Path = TOC) -> list[Path]:
    """Every `.ipynb` listed in _toc.yml (root, parts, chapters, sections), in order."""
    import yaml  # PyYAML comes with jupyter-book

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    files.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    notebooks = []
    for entry in files:
        path = ROOT / entry
        if path.suffix == "":
            path = path.with_suffix(".ipynb")
        if path.suffix == ".ipynb" and path.is_file() and path not in notebooks:
            notebooks.append(path)
    return notebooks


# ------------------------------------------------------------------------ normalising

def ensure_cell_ids(nb) -> None:
    """Give cells without an id a deterministic one (nbformat would pick random ones).

    Existing ids are never changed, so a notebook keeps its ids across refreshes.
    """
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        nb.nbformat, nb.nbformat_minor = 4, 5
    used = {cell.get("id") for cell in nb.cells if cell.get("id")}
    for index, cell in enumerate(nb.cells):
        if not cell.get("id"):
            candidate, n = f"cell-{index}", 0
            while candidate in used:
                n += 1
                candidate = f"cell-{index}-{n}"
            cell["id"] = candidate
            used.add(candidate)


def normalise(nb) -> None:
    """Drop run- and machine-specific metadata so that re-runs give no diff."""
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    language_info = nb.metadata.get("language_info")
    if isinstance(language_info, dict):
        language_info.pop("version", None)
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                # nbclient never writes these, but Jupyter front-ends do.
                output.get("metadata", {}).pop("execution", None)


# ------------------------------------------------------------------------- executing

def seeded_environment() -> None:
    os.environ.update(SEEDED_ENV)
    os.environ.pop("MPLBACKEND", None)


def execute(path: Path):
    """Execute the notebook at `path`; return the executed notebook (not written)."""
    nb = nbformat.read(path, as_version=4)
    ensure_cell_ids(nb)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        record_timing=False,
        store_widget_state=True,
        timeout=TIMEOUT,
        # The kernel's working directory: the notebook's folder (book/ for the book).
        resources={"metadata": {"path": str(path.parent.relative_to(ROOT))}},
    )
    client.execute()
    normalise(nb)
    return nb


def write_if_changed(nb, path: Path) -> bool:
    new = nbformat.writes(nb)
    if not new.endswith("\n"):
        new += "\n"
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    if new == old:
        return False
    path.write_text(new, encoding="utf-8")
    return True


# ------------------------------------------------------------------------- comparing

def _sanitize_patterns() -> list[tuple[str, str]]:
    if not SANITIZE_FILE.is_file():
        return []
    text = SANITIZE_FILE.read_text(encoding="utf-8")
    # The same parser as nbval's get_sanitize_patterns.
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)


_IGNORE_COMMENTS = {"NBVAL_IGNORE_OUTPUT", "PYTEST_VALIDATE_IGNORE_OUTPUT", "NBVAL_SKIP"}
_IGNORE_TAGS = {"nbval-ignore-output", "nbval-skip"}
# Outputs nbval does not compare (images are bytes; widget model ids are random).
_SKIP_MIME = {"image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json"}


_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)  # nbval's pattern


def _ignored(cell) -> bool:
    if set(cell.metadata.get("tags", [])) & _IGNORE_TAGS:
        return True
    comments = {
        line.strip().lstrip("#").strip()
        for line in cell.source.splitlines()
        if line.strip().startswith("#")
    }
    return bool(comments & _IGNORE_COMMENTS)


def _text_outputs(cell, patterns) -> list[str]:
    """A cell's outputs as comparable text: streams merged per name, then each mime type."""

    def clean(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    def resolve_cr(text: str) -> str:
        # As nbval's coalesce_streams: a carriage return overwrites the current line.
        return _CARRIAGE_RETURN.sub("", text)

    streams: dict[str, str] = {}
    others: list[str] = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            streams[out.get("name", "stdout")] = streams.get(out.get("name", "stdout"), "") + out.get("text", "")
        elif kind in ("execute_result", "display_data"):
            for mime, value in sorted(out.get("data", {}).items()):
                if mime in _SKIP_MIME:
                    continue
                value = value if isinstance(value, str) else "".join(value) if isinstance(value, list) else repr(value)
                others.append(f"[{mime}]\n{clean(value)}")
        elif kind == "error":
            others.append(f"[error]\n{out.get('ename')}: {clean(str(out.get('evalue')))}")
    texts = [f"[{name}]\n{clean(resolve_cr(text))}" for name, text in sorted(streams.items())]
    return texts + others


def _same(before: list[str], after: list[str], across_cpus: bool) -> bool:
    if before == after:
        return True
    return across_cpus and len(before) == len(after) and all(close(a, b)[0] for a, b in zip(before, after))


def diff_outputs(stored, fresh, across_cpus: bool = False) -> list[str]:
    """Describe every code cell whose text outputs differ between two notebooks (``across_cpus``:
    numbers within ``nbval_numbers.close``'s tolerance count as the same)."""
    import difflib

    patterns = _sanitize_patterns()
    problems = []
    fresh_by_id = {cell.get("id"): cell for cell in fresh.cells}
    for index, cell in enumerate(stored.cells):
        if cell.cell_type != "code" or _ignored(cell):
            continue
        other = fresh_by_id.get(cell.get("id"))
        if other is None:
            other = fresh.cells[index] if index < len(fresh.cells) else None
        if other is None:
            problems.append(f"cell {index}: missing after execution")
            continue
        before, after = _text_outputs(cell, patterns), _text_outputs(other, patterns)
        if not _same(before, after, across_cpus):
            diff = difflib.unified_diff(
                "\n".join(before).splitlines(), "\n".join(after).splitlines(),
                "stored", "fresh", lineterm="", n=1,
            )
            body = "\n".join(list(diff)[:40])
            problems.append(f"cell {index} (id {cell.get('id')}):\n{body}")
    return problems


# ----------------------------------------------------------------------------- timing

def machine() -> dict:
    """The provenance (`batchcam.provenance`) that every timing entry of one refresh shares."""
    from batchcam.provenance import provenance

    return provenance("cpu")


def record_time(name: str, seconds: float, load: float, times: Path = TIMES,
                prov: dict | None = None) -> None:
    """Merge one notebook's execution time into `times` (written atomically)."""
    import json

    prov = prov or machine()
    entries = json.loads(times.read_text(encoding="utf-8")) if times.is_file() else {}
    entries[name] = {"seconds": round(seconds, 1), "date_utc": prov["date_utc"],
                     "cpu": prov["cpu"], "cpu_count": prov["cpu_count"],
                     "load_average_at_start": round(load, 2), "git_commit": prov["git_commit"]}
    times.parent.mkdir(parents=True, exist_ok=True)
    tmp = times.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, times)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every .ipynb listed in _toc.yml)")
    parser.add_argument("--check", action="store_true",
                        help="execute in memory and report notebooks whose text outputs "
                             "differ from the stored ones; write nothing")
    args = parser.parse_args(argv)

    os.chdir(ROOT)  # nbclient resolves the kernel's working directory from here
    seeded_environment()
    paths = [p.resolve() for p in args.notebooks] if args.notebooks else toc_notebooks()
    missing = [p for p in paths if not p.is_file()]
    if missing:
        parser.error("not found: " + ", ".join(str(p) for p in missing))
    if not paths:
        print("no notebooks listed in _toc.yml: nothing to do")
        return 0

    failed, drifted = [], []
    prov = machine()  # once per refresh, not per notebook
    this_cpu = prov["cpu"]
    total = time.perf_counter()
    for path in paths:
        name = path.relative_to(ROOT)
        load, start = os.getloadavg()[0], time.perf_counter()
        try:
            nb = execute(path)
        except CellExecutionError as exc:
            print(f"FAIL     {name} ({time.perf_counter() - start:.1f} s)\n{exc}", file=sys.stderr)
            failed.append(name)
            continue
        except Exception as exc:  # kernel died, timeout, invalid notebook, ...
            print(f"FAIL     {name} ({time.perf_counter() - start:.1f} s): "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        seconds = time.perf_counter() - start
        if args.check:
            stored = nbformat.read(path, as_version=4)
            problems = diff_outputs(stored, nb, across_cpus=outputs_cpu(stored) != this_cpu)
            status = "DIFFERS " if problems else "same    "
            print(f"{status} {name} ({seconds:.1f} s)")
            for problem in problems:
                print("  " + problem.replace("\n", "\n    "))
            if problems:
                drifted.append(name)
        else:
            nb.metadata["batchcam"] = {**nb.metadata.get("batchcam", {}), "outputs_cpu": this_cpu}
            changed = write_if_changed(nb, path)
            record_time(name.as_posix(), seconds, load, prov=prov)
            print(f"{'updated ' if changed else 'unchanged'} {name} ({seconds:.1f} s)")

    print(f"{len(paths)} notebook(s) in {time.perf_counter() - total:.1f} s"
          + (f"; {len(failed)} failed" if failed else "")
          + (f"; {len(drifted)} differ" if args.check else ""))
    return 1 if failed or drifted else 0


if __name__ == "__main__":
    sys.exit(main())
