"""The committed records for a package installed outside the repository (chapter 7).

A source checkout (or Colab after its install cell's clone) already has ``results/``. A package
installed with pip does not: :func:`fetch_records` downloads the repository's archive once,
explicitly, and keeps only its ``results/`` folder under :data:`CACHE`, where
``batchcam.results.results_root`` looks after the checkout and the working directory.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional

__all__ = ["CACHE", "ARCHIVE_URL", "fetch_records"]

CACHE = Path.home() / ".cache" / "batchcam" / "results"
ARCHIVE_URL = "https://github.com/batchcam/batchcam/archive/refs/heads/main.tar.gz"


def fetch_records(url: str = ARCHIVE_URL, dest: Optional[Path] = None, timeout: float = 60) -> Path:
    """Download the repository archive at ``url`` and keep its ``results/`` as ``dest`` (default
    :data:`CACHE`, replaced); returns ``dest`` (chapter 7). Only JSON and ``.tensors.pt`` files
    under ``results/runs`` and ``results/bench`` are extracted."""
    dest = Path(dest) if dest is not None else CACHE
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a fixed https/file URL
        data = response.read()
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (member.isfile() and len(parts) == 4 and parts[1] == "results" and parts[2] in ("runs", "bench")
                    and (parts[3].endswith(".json") or parts[3].endswith(".tensors.pt"))):
                target = staging / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    if not (staging / "runs").is_dir():
        raise RuntimeError(f"{url} holds no results/runs folder; is it the batchcam repository archive?")
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)
    return dest
