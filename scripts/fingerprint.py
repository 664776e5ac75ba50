"""Add behaviour probes to results/behaviour.json (chapter 7, ``batchcam.behaviour``).

    python scripts/fingerprint.py                 # the working tree's code
    python scripts/fingerprint.py --commit cec57a1 --commit e083a71   # older code versions

A commit is probed in a temporary git worktree, with this checkout's data folder and this file's
``batchcam/behaviour.py`` (which imports only what every version has). A probe names the CPU model
that made it (``versions.cpu``): another CPU model rounds training differently, so ``batchcam.staleness``
compares two probes only when one CPU model made both. An entry is keyed by the code version
(``batchcam.behaviour.code_key``), or by ``"<code key>@<CPU model>"`` when another CPU model already
probed that version; an existing probe of this code on this CPU model is replaced only with --force.
After a code change on a CPU model that has not probed the records' code, probe that code here too:
``--commit <the records' commit>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchcam._helpers import atomic_write_json  # noqa: E402
from batchcam.behaviour import code_key  # noqa: E402
from batchcam.data import default_data_root  # noqa: E402
from batchcam.provenance import code_hashes, git, provenance  # noqa: E402
from batchcam.staleness import load_behaviour, pack_behaviour, probe_cpu  # noqa: E402

TARGET = REPO / "results" / "behaviour.json"


def probe_at(source: Path) -> dict:
    """Run ``batchcam/behaviour.py`` of this checkout against the package in ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "BATCHCAM_DATA": str(default_data_root())}
    proc = subprocess.run([sys.executable, str(REPO / "batchcam" / "behaviour.py")], cwd=source, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the probe failed in {source}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", action="append", default=[], help="probe this commit (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace an existing entry")
    args = parser.parse_args()
    entries = load_behaviour(TARGET)
    jobs = [(c, code_hashes(c)) for c in args.commit] or [("working tree", code_hashes())]
    cpu = provenance("cpu")["cpu"]  # the probes below run on this machine
    for label, hashes in jobs:
        if None in hashes.values() and label != "working tree":
            sys.exit(f"{label}: not a commit of this repository with every result file")
        key = code_key(hashes)
        name = key if key not in entries or probe_cpu(entries[key]) == cpu else f"{key}@{cpu}"
        if name in entries and not args.force:
            print(f"{label}: code {key} already probed on {cpu} (--force to redo)")
            continue
        if label == "working tree":
            result = probe_at(REPO)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                tree = Path(tmp) / "tree"
                if git("worktree", "add", "--detach", str(tree), label) is None:
                    sys.exit(f"cannot check out {label} in a worktree")
                try:
                    result = probe_at(tree)
                finally:
                    git("worktree", "remove", "--force", str(tree))
        result.setdefault("versions", {})["cpu"] = cpu
        entries[name] = result
        atomic_write_json(TARGET, pack_behaviour(entries))
        print(f"{label}: code {key} probed on {cpu} ({sum(map(len, result.values()))} numbers) -> {TARGET}")


if __name__ == "__main__":
    main()
