"""Repo-wide pytest configuration.

Wires the nbval sanitiser into every run, so that the literal command
`pytest --nbval book/` (from any working directory) masks the outputs that legitimately
change between runs: tqdm rates and times, timings, memory addresses, kernel temp paths.
A relative path in `addopts` would break as soon as pytest runs from another folder, so
the absolute path is set here instead. An explicit `--nbval-sanitize-with FILE` wins.

Under nbval it also gives the notebook kernel (which inherits this process's
environment) the seeded environment that scripts/refresh_notebooks.py used to produce
the stored outputs, so both runs see the same hash seed.
"""

import os
from pathlib import Path

NBVAL_SANITIZE_FILE = Path(__file__).resolve().parent / "book" / "nbval_sanitize.cfg"

# Keep in sync with SEEDED_ENV in scripts/refresh_notebooks.py.
NOTEBOOK_ENV = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pytest_configure(config):
    # Absent when nbval is not installed (e.g. a machine with only the package's runtime
    # dependencies): then there is nothing to wire.
    if not hasattr(config.option, "nbval_sanitize_with"):
        return
    if not getattr(config.option, "sanitize_with", None):  # nbval's deprecated alias
        if config.option.nbval_sanitize_with is None and NBVAL_SANITIZE_FILE.is_file():
            config.option.nbval_sanitize_with = str(NBVAL_SANITIZE_FILE)
    if getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False):
        for key, value in NOTEBOOK_ENV.items():
            os.environ.setdefault(key, value)
