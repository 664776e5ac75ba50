"""The experiment grids as lists of ``TrainConfig`` (chapters 6 and 7).

``paper``: {MNIST, Fashion-MNIST} × {SimpleCNN, ResNet-18, ConvNeXt-V2-Tiny} × the four
objectives × seeds, plus ``random`` cells (``epochs=0``: the untrained model, a baseline).
Image sizes follow the paper's figures (28 px; ConvNeXt-V2 at 112 px). The paper does not give
its training budget; the per-model defaults below are ours and each can be overridden
(``python -m batchcam reproduce --epochs N ...``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .config import TrainConfig
from .data import DATASETS
from .losses import OBJECTIVES
from .results import is_complete

__all__ = ["GRID_MODELS", "MODEL_DEFAULTS", "GRIDS", "paper_grid", "pending"]

GRID_MODELS = ("simplecnn", "resnet18", "convnextv2_tiny")

#: Per-model training defaults of the grid (our choices; the paper does not state them).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "simplecnn": dict(image_size=28, epochs=2, batch_size=128, optimizer="adam", lr=1e-3),
    "resnet18": dict(image_size=28, epochs=3, batch_size=128, optimizer="adam", lr=1e-3),
    # ConvNeXt from scratch: AdamW with weight decay and a smaller learning rate (no warm-up).
    "convnextv2_tiny": dict(image_size=112, epochs=3, batch_size=128, optimizer="adamw", lr=3e-4,
                            weight_decay=0.05),
}


def paper_grid(seeds: Sequence[int] = (0, 1, 2), datasets: Sequence[str] = DATASETS,
               models: Sequence[str] = GRID_MODELS, objectives: Sequence[str] = OBJECTIVES,
               random_baseline: bool = True, **overrides: Any) -> list[TrainConfig]:
    """Every configuration of the paper grid, validated (chapter 6).

    Ordered seed → model → dataset → objective, so a grid cut short has complete tables for the
    first seeds. With ``random_baseline`` each (seed, model, dataset) also gets an ``epochs=0``
    run of ``ce`` (the untrained model's maps). ``overrides`` (any ``TrainConfig`` field, e.g.
    ``epochs=2, device="cuda", n_train=1000``) replace the per-model defaults; ``None`` values
    are ignored.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
    axes = set(overrides) & {"seed", "dataset", "model", "objective"}
    if axes:
        raise ValueError(f"{sorted(axes)} are grid axes: pass seeds=, datasets=, models=, objectives=")
    configs = []
    for seed in seeds:
        for model in models:
            for dataset in datasets:
                kwargs = {**MODEL_DEFAULTS.get(model, {}), **overrides}
                cells = [(o, kwargs) for o in objectives]
                if random_baseline:
                    cells.append(("ce", {**kwargs, "epochs": 0, "eval_cam_loop_samples": 0}))
                for objective, kw in cells:
                    configs.append(TrainConfig(dataset=dataset, model=model, objective=objective,
                                               seed=seed, **kw).validate())
    return configs


GRIDS = {"paper": paper_grid}


def pending(configs: Iterable[TrainConfig], root: Optional[str | Path] = None) -> list[TrainConfig]:
    """The configurations without a complete record (in ``root``, default ``<out_dir>/runs``), in order;
    ``reproduce``, ``gpu-run`` and the submitit launcher run only these (chapter 6)."""
    return [c for c in configs
            if not is_complete(c.run_id, root if root is not None else Path(c.out_dir) / "runs")]
