"""Small trained models for the chapters: train once, cache, reload (chapters 2–4).

The notebooks need a model that has learned something, but should not spend a minute
re-training the same one in every chapter. :func:`cached_fit` runs :func:`batchcam.train.fit`
once, keeps its checkpoint and record under ``<data root>/models`` (git-ignored, next to the
data), and later calls load them in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .data import default_data_root
from .results import load_record, record_path
from .train import TrainConfig, checkpoint_path, fit, load_checkpoint

__all__ = ["cached_fit", "cache_root"]


def cache_root() -> Path:
    """Default cache folder, ``<data root>/models``; records are in ``runs/``, checkpoints in ``checkpoints/``."""
    return default_data_root() / "models"


def cached_fit(config: TrainConfig, cache_dir: Optional[Union[str, Path]] = None,
               progress: bool = False) -> tuple[nn.Module, dict]:
    """Train ``config`` unless a finished run of it is cached; return ``(model in eval mode, record)``.

    The cache lives in ``cache_dir`` (default ``<data root>/models``); the record is the same JSON
    that :func:`batchcam.train.fit` writes (``record["final"]["accuracy"]`` etc.).
    """
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    config = dataclasses.replace(config, out_dir=str(cache))
    rec, ckpt = record_path(config.run_id, cache / "runs"), checkpoint_path(config)
    if rec.is_file() and ckpt.is_file():
        model, _ = load_checkpoint(ckpt)
        return model, load_record(rec)
    run = fit(config, progress=progress)
    return run.model.eval(), load_record(run.record_path)
