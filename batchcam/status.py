"""Where the reproduction stands, computed from the records and ``results/verdicts.json`` (landing page
and chapter 7's first screen).

Nothing here is typed by hand: every count is a set of run ids of a grid that has a record under
``results/runs/``, and every verdict word is read from the verdicts file. :func:`status_markdown`
renders it as a short Markdown box (a ``{note}``-style admonition in the HTML book).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["grid_progress", "reproduction_status", "status_markdown"]


def grid_progress(configs: Sequence, recorded: set[str]) -> tuple[int, int]:
    """(recorded, planned) run ids of a grid's configurations (chapter 7)."""
    ids = {c.run_id for c in configs}
    return len(ids & recorded), len(ids)


def _grid(name: str, recorded: set[str]) -> tuple[Optional[tuple[int, int]], str]:
    from . import grid, plan

    make = {"verdict": grid.verdict_grid, "decoy-verdict": grid.decoy_verdict_grid,
            "gpu": lambda: plan.gpu_grid(seeds=(0, 1, 2))}[name]
    try:
        return grid_progress(make(), recorded), ""
    except ValueError as exc:  # the learning rate is not chosen on validation yet
        return None, str(exc)


def _verdict_words(entries: Optional[Sequence[Mapping]]) -> str:
    """``"n word, ..."``: the entries' verdict words counted, most common first ("" without entries)."""
    return ", ".join(f"{n} {w}" for w, n in Counter(e["verdict"] for e in entries or []).most_common())


def reproduction_status(rows: Sequence[Mapping], verdicts: Optional[Mapping] = None,
                        bench: Optional[Mapping] = None, bench_name: str = "bench record") -> dict:
    """The status as data (chapter 7): per line a label and its text.

    Args:
        rows: ``batchcam.results.load_runs()`` rows.
        verdicts: the content of ``results/verdicts.json`` (None: not generated yet).
        bench: chapter 3's benchmark record (``results.latest_bench("cpu")``), for the method's check;
            ``bench_name`` its file name.
    Returns ``{"rows": [(label, text), ...], "records": int}``.
    """
    recorded = {r["run_id"] for r in rows}
    devices = Counter(r.get("device", "cpu").split(":")[0] for r in rows)
    lines = []
    if bench:
        equal = (bench.get("summary") or {}).get("maps_equal")
        lines.append(("The method", "batch Grad-CAM gives the per-image loop's maps, and pytorch-grad-cam's and "
                                    f"Captum's, in the benchmark record ({'yes' if equal else 'NO'}: "
                                    f"{bench_name})"))
    done = Counter(r["model"] for r in rows if r.get("epochs", 0) > 0)
    lines.append(("Records", f"{len(rows)} run records ({', '.join(f'{n} {d}' for d, n in devices.most_common())}); "
                             + ", ".join(f"{m}: {n} trained" for m, n in sorted(done.items()))))
    for key, label, what in (("verdict", "Main verdict grid", "SimpleCNN, 4 objectives × 10 seeds × 2 datasets, "
                                                             "CPU, 2 epochs, 28 px"),
                             ("decoy-verdict", "Decoy verdict grid", "SimpleCNN on Decoy-(Fashion-)MNIST, 10 seeds"),
                             ("gpu", "GPU grid (waits for a GPU)", "ResNet-18 and ConvNeXt-V2, seeds 0–2")):
        progress, why = _grid(key, recorded)
        text = (f"{progress[0]} of {progress[1]} runs recorded ({what})" if progress
                else f"not started: {why.split(';')[0]}")
        lines.append((label, text))
    if verdicts:
        decoy = verdicts.get("decoy") or {}
        for label, entries in (("Verdicts on the claims", verdicts.get("entries")),
                               ("Timing verdicts", verdicts.get("timing"))):
            if words := _verdict_words(entries):
                lines.append((label, words))
        lines.append(("Scope", verdicts.get("protocol", {}).get("scope", "")))
        if words := _verdict_words(decoy.get("entries")):
            lines.append(("Decoy verdicts (v2: suppresses spurious features)", words))
            lines.append(("Scope of the decoy verdicts", decoy.get("protocol", {}).get("scope", "")))
    else:
        lines.append(("Verdicts", "results/verdicts.json not generated yet (python -m batchcam verdicts)"))
    return {"rows": lines, "records": len(rows)}


def status_markdown(root: Optional[Path] = None) -> str:
    """The status box as Markdown, from the committed records under ``root`` (default
    ``results_root("runs").parent``) and their ``verdicts.json`` (landing page and chapter 7)."""
    from .results import latest_bench_path, load_bench, load_runs, results_root

    base = Path(root) if root is not None else results_root("runs").parent
    path = base / "verdicts.json"
    verdicts = json.loads(path.read_text()) if path.is_file() else None
    bench_path = latest_bench_path("cpu", base / "bench")
    status = reproduction_status(load_runs(base / "runs"), verdicts, load_bench(bench_path),
                                 bench_path.name if bench_path else "bench record")
    body = "\n".join(f"- **{label}:** {text}" for label, text in status["rows"])
    return f"**Status of the reproduction** (computed from the committed records)\n\n{body}\n"
