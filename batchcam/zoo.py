"""Small trained models for the chapters: train once, cache, reload (chapters 2–6).

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

from .config import TrainConfig
from .data import default_data_root
from .results import is_complete, load_record
from .runner import fit_and_record
from .train import checkpoint_path, load_checkpoint

__all__ = ["cached_fit", "cache_root"]


def cache_root() -> Path:
    """Default cache folder of :func:`cached_fit` (chapter 6), ``<data root>/models``: records in ``runs/``,
    checkpoints in ``checkpoints/``."""
    return default_data_root() / "models"


def cached_fit(config: TrainConfig, cache_dir: Optional[Union[str, Path]] = None,
               progress: bool = False, *, permute_labels: Optional[int] = None) -> tuple[nn.Module, dict]:
    """Train ``config`` unless a finished run of it is cached; return ``(model in eval mode, record)``.

    The record is the same JSON that ``python -m batchcam train`` writes
    (``record["final"]["accuracy"]`` etc.). The model maps [B, 1, S, S] → logits [B, 10]. Chapter 6
    explains the training; chapters 2–6 load their models with it.

    ``permute_labels=seed`` trains on the same images with their training labels randomly
    permuted (``torch.randperm`` under that seed): the *data randomisation* sanity check of
    chapter 8, ``TrainConfig.permute_labels`` (its own run id, ``...-perm<seed>-...``). The
    prototypes are then the class means under the permuted labels, the test set keeps its true
    labels, the run is cached apart (``<cache>/permuted-labels-<seed>``) and its record says
    ``record["permuted_labels_seed"]``.
    """
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    if permute_labels is not None:
        cache = cache / f"permuted-labels-{int(permute_labels)}"
    config = dataclasses.replace(config, out_dir=str(cache), permute_labels=permute_labels)
    runs, ckpt = cache / "runs", checkpoint_path(config)
    if is_complete(config.run_id, runs) and ckpt.is_file():
        model, _ = load_checkpoint(ckpt)
        return model, load_record(runs / f"{config.run_id}.json")
    extra = {} if permute_labels is None else {"permuted_labels_seed": int(permute_labels)}
    run, path = fit_and_record(config, root=runs, resume=False, force=True, progress=progress, extra=extra)
    return run.model.eval(), load_record(path)
