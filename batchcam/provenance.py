"""Provenance of a record: code version, library versions, machine, date (chapter 6).

Every record carries it, so a number in the book can be traced to the commit, the libraries and
the device that made it. ``git_dirty`` is true when tracked files had uncommitted changes.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["provenance", "git"]

REPO = Path(__file__).resolve().parent.parent



def git(*args: str) -> Optional[str]:
    """Output of ``git args`` in the package's repository, or None (no git, no repository); chapter 6 (provenance)."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: Union[str, torch.device, None] = None) -> dict:
    """Code version (commit, dirty tree), library versions, machine and UTC date; ``None`` where
    a value cannot be found. ``device``'s CUDA name is reported, else the CPU model. Every record
    carries this dict (chapter 6)."""
    from . import __version__

    device = torch.device(device) if device is not None else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    on_cuda = device is not None and device.type == "cuda" and torch.cuda.is_available()
    return {
        "git_commit": commit, "git_dirty": bool(status) if status is not None else None,
        "batchcam": __version__, "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "torchvision", "timm", "torchmetrics")},
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else _cpu_name(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda": torch.version.cuda,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
