"""One training run from configuration to committed record: ``fit`` → ``record_from_run`` → ``write_run`` (chapter 7).

Every caller that trains and records goes through :func:`fit_and_record`: the command line
(``python -m batchcam train`` / ``reproduce``), the prepared GPU session, the submitit jobs and the
book's cached models. Training sits above storage: this module imports both, ``batchcam.results``
imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from .config import TrainConfig
from .results import record_from_run, write_run
from .train import Run, fit

__all__ = ["fit_and_record"]


def fit_and_record(config: TrainConfig, *, root: Optional[Path | str] = None, resume: bool = True,
                   force: bool = False, progress: bool = False, data: Any = None,
                   fit_fn: Optional[Callable[..., Optional[Run]]] = None,
                   extra: Optional[dict] = None) -> tuple[Optional[Run], Optional[Path]]:
    """Train ``config`` and publish its record (chapter 7).

    Args:
        config: the run (validated by ``fit``).
        root: the records folder; default ``<config.out_dir>/runs``.
        resume: continue from the run's checkpoint if there is one.
        force: replace an existing complete record (the old one stays until the new one is written).
        progress: tqdm bars. data: ``train.load_data(config)``'s result, if already loaded.
        fit_fn: what trains (default ``batchcam.train.fit``; the submitit jobs pass the DDP-aware one).
        extra: top-level fields added to the record (e.g. the label permutation of a sanity check).

    Returns ``(run, path)``, or ``(None, None)`` in a ``torchrun`` process other than rank 0 (rank 0
    writes the one record). Raises ``results.RecordExistsError`` when a complete record exists and
    ``force`` is False (also when another process published it meanwhile).
    """
    kwargs = dict(resume=resume, progress=progress) if fit_fn is None else {}
    if data is not None:
        kwargs["data"] = data
    run = (fit_fn or fit)(config, **kwargs)
    if run is None:
        return None, None
    record, tensors = record_from_run(run)
    record.update(extra or {})
    path = write_run(record, tensors, Path(root) if root is not None else Path(config.out_dir) / "runs",
                     force=force)
    return run, path
