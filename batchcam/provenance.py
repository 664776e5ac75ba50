"""Provenance of a record: code version, library versions, machine, date (chapter 7).

Every record carries it, so a number in the book can be traced to the commit, the libraries and
the device that made it. ``git_dirty`` is true when tracked files had uncommitted changes.
``code_sha256`` fingerprints the code of every file that can change a run's numbers
(``RESULT_FILES``, docstrings and comments left out), so a record made from a copy of the
working tree whose git metadata is stale (a lent GPU machine) can still be matched to a commit.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["provenance", "git", "RESULT_FILES", "LEGACY_RESULT_FILES", "ENTRY_POINTS", "import_closure", "code_tree",
           "code_hashes"]

REPO = Path(__file__).resolve().parent.parent
#: The entry points of a run's numbers: training and evaluation (``fit`` calls ``evaluate``).
ENTRY_POINTS = ("batchcam/train.py", "batchcam/evaluate.py")
#: The hand-written list the records made before the import closure were fingerprinted with; the
#: behaviour probes of those code versions are keyed by it (``batchcam.staleness``).
LEGACY_RESULT_FILES = ("batchcam/cam.py", "batchcam/_capture.py", "batchcam/losses.py", "batchcam/_ssim.py",
                       "batchcam/models.py", "batchcam/data.py", "batchcam/_idx.py", "batchcam/prototypes.py",
                       "batchcam/train.py", "batchcam/evaluate.py", "batchcam/config.py", "batchcam/metrics.py",
                       "batchcam/faithfulness.py", "batchcam/decoy.py")


def _module_file(module: str, root: Path) -> Optional[str]:
    """``batchcam/x.py`` or ``batchcam/x/__init__.py`` for the dotted module ``batchcam.x`` (None if absent)."""
    parts = module.split(".")
    for rel in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (root / rel).is_file():
            return rel
    return None


def import_closure(entries: tuple[str, ...] = ENTRY_POINTS, root: Path = REPO) -> tuple[str, ...]:
    """Every package file the ``entries`` import, directly or not, sorted (chapter 7, stale records).

    An AST walk of each file, imports inside functions included (a lazy import still runs); relative
    imports and ``batchcam.*`` are followed, ``from . import x`` names the module ``x``; the package's
    ``__init__.py`` is not (it only re-exports). What the walk finds is what can change a run's numbers.
    """
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        rel = todo.pop()
        if rel in seen or not (root / rel).is_file():
            continue
        seen.add(rel)
        package = rel[:-len("/__init__.py")] if rel.endswith("/__init__.py") else rel.rsplit("/", 1)[0]
        tree = ast.parse((root / rel).read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("batchcam.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split("/")[:len(package.split("/")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("batchcam"):
                    mod = node.module
                else:
                    continue
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            parents = {".".join(m.split(".")[:i]) for m in targets for i in range(2, m.count(".") + 1)}
            for mod in targets + sorted(parents):  # a subpackage's __init__ runs before its modules
                found = _module_file(mod, root)
                if found and not found.endswith("batchcam/__init__.py") and found != "batchcam/__init__.py":
                    todo.append(found)
    return tuple(sorted(seen))


#: Files whose changes can change a run's numbers: the import closure of :data:`ENTRY_POINTS`,
#: derived from the code itself (``batchcam.staleness`` compares their fingerprints).
RESULT_FILES = import_closure()


def git(*args: str) -> Optional[str]:
    """Output of ``git args`` in the package's repository, or None (no git, no repository); chapter 7 (provenance)."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_tree(source: Optional[str]) -> Optional[str]:
    """The syntax tree of a Python source without docstrings (comments are not in it); None if
    absent. Two sources with the same tree compute the same numbers (chapter 7, stale records)."""
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_hashes(commit: Optional[str] = None, files: tuple[str, ...] = ()) -> dict[str, Optional[str]]:
    """``{path: SHA-256 of code_tree}`` for every ``RESULT_FILES`` entry (or ``files``), read from the files
    on disk, or from ``commit`` through git (None where a file is missing); chapter 7."""
    out = {}
    for name in files or RESULT_FILES:
        if commit is None:
            path = REPO / name
            source = path.read_text() if path.exists() else None
        else:
            source = git("show", f"{commit}:{name}")
        tree = code_tree(source)
        out[name] = hashlib.sha256(tree.encode()).hexdigest() if tree is not None else None
    return out


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
    carries this dict (chapter 7)."""
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
        "code_sha256": code_hashes(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
