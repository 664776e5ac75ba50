"""No module of the package shadows a standard-library module: ``batchcam/behaviour.py`` runs as a script
(``scripts/fingerprint.py``), with ``batchcam/`` first on ``sys.path``, so a ``batchcam/concurrent.py`` would
hide ``concurrent.futures`` from everything it imports."""

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchcam"


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    assert not names & set(sys.stdlib_module_names), sorted(names & set(sys.stdlib_module_names))
