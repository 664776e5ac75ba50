"""Small private helpers shared by the package: seeding, devices, atomic writes."""

from __future__ import annotations

import difflib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy (if present) and torch; return a torch.Generator seeded with ``seed``."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency of torch
        pass
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device_choices() -> str:
    """The devices this project can use here, for messages: ``'auto', 'cpu'`` and the CUDA devices."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = (", 'cuda', " + (f"'cuda:0' … 'cuda:{n - 1}'" if n > 1 else "'cuda:0'")) if n else ""
    return f"'auto', 'cpu'{cuda}"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` → CUDA if available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Any other device (``mps``, ``meta``, ``xla``, a CUDA index that is not here, a typo) raises a
    ValueError naming the valid choices: this project trains and explains on CPU and CUDA only.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; valid choices here: {device_choices()}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device='cpu' or "
                             "'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: there are {torch.cuda.device_count()} CUDA devices; "
                             f"valid choices here: {device_choices()}")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} cannot be used by this project (CPU and CUDA only); "
                         f"valid choices here: {device_choices()}")
    return dev


def amp_autocast(device: torch.device, amp: "bool | str"):
    """Autocast on CUDA for ``amp`` in (True, "bf16") (bfloat16) or "fp16" (float16, used with a GradScaler
    on GPUs without native bf16); a no-op for False/None and on other devices (AMP is CUDA-only here)."""
    import contextlib

    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    if amp not in (True, "bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: use False, True / 'bf16' or 'fp16'")
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def cudnn_autotune(device: torch.device, on: bool = True):
    """A context in which cuDNN autotunes its kernels on CUDA (restored on exit); ``on=False``: a context
    in which it does not, for calls whose input shapes vary (the faithfulness scores' batches: every new
    shape would be autotuned again; chapter 7)."""
    import contextlib

    @contextlib.contextmanager
    def context():
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = (old or device.type == "cuda") if on else False
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old
    return context()


def unknown_choice(kind: str, value: Any, valid: Iterable[str], hint: str = "") -> ValueError:
    """A ValueError naming the bad ``value``, close matches, and every valid choice."""
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=3)
    msg = f"unknown {kind} {value!r}."
    if close:
        msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
    msg += f" Valid {kind}s: {', '.join(repr(v) for v in valid)}."
    if hint:
        msg += " " + hint
    return ValueError(msg)


def fsynced_temp(folder: str | Path, name: str, data: bytes) -> Path:
    """A temporary file ``.<name>.*.tmp`` in ``folder`` holding ``data``, fsynced, with the usual permissions:
    the first half of an atomic write (the caller renames or links it into place, chapter 7)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = fsynced_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically, so an interrupted write never leaves half a file."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
