"""The training loop: ``train_one_epoch`` and ``fit``, with checkpoints that resume exactly (chapter 6).

The epoch itself (``train_one_epoch``, the BatchNorm recalibration) is ``batchcam.loop``; this
module runs the epochs: data, prototypes, model, optimizer, per-epoch evaluation on the
validation split, checkpoints that resume exactly, and the final evaluation on the test set.
``fit`` returns a :class:`Run`; writing its record is ``batchcam.runner``'s job
(``python -m batchcam train`` does both).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._helpers import atomic_torch_save, cudnn_autotune, set_seed
from .config import MASK_OBJECTIVES, NUM_CLASSES, TrainConfig
from .data import load_split, split_validation
from .decoy import load_decoy
from .evaluate import clock, decoy_metrics, decoy_validation, evaluate, faithfulness, time_gradcam
from .loop import recalibrate_batchnorm, train_one_epoch
from .models import create_model
from .prototypes import class_prototypes

__all__ = ["Run", "fit", "load_data", "permute_labels", "load_validation", "checkpoint_path", "load_checkpoint",
           "map_prototypes"]

#: Fields that may differ between a checkpoint and the run resuming it.
RESUMABLE_DIFFERENCES = {"device", "data_root", "out_dir", "eval_cam_loop_samples"}


@dataclass
class Run:
    """What ``fit`` returns (chapter 6): the trained model and everything its record holds."""

    config: TrainConfig  # resolved (image_size and layer filled in)
    model: nn.Module  # trained, in eval mode
    history: list[dict]  # one row per epoch: train loss terms and accuracy, test metrics, times
    evaluation: dict  # the last ``evaluate`` result (maps, baselines; tensors removed)
    prototypes: torch.Tensor  # [C, H, W] on CPU
    average_reconstruction: torch.Tensor  # [C, H, W] mean test map per class, on CPU
    target_prototypes: Optional[torch.Tensor] = None  # [C, H, W] the loss's, if not ``prototypes``
    timings: dict = field(default_factory=dict)  # seconds: per epoch, Grad-CAM batch and loop
    runtime: dict = field(default_factory=dict)  # device, effective amp / channels_last, threads


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(config: TrainConfig) -> Path:
    """``<out_dir>/checkpoints/<run_id>.pt`` (git-ignored), where ``fit`` checkpoints each epoch (chapter 6)."""
    return Path(config.out_dir) / "checkpoints" / f"{config.run_id}.pt"


def _save_checkpoint(path: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                     epoch: int, history: list[dict], scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Atomically save everything needed to continue after ``epoch`` (0-based, completed), the fp16 loss
    scaler's state included."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    extra = {"scaler": scaler.state_dict()} if scaler is not None else {}
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra,
                       "config": asdict(config), "epoch": epoch, "history": history, "rng": rng}, path)


def _restore(path: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler] = None) -> tuple[int, list]:
    """Load a checkpoint into ``model`` and ``optimizer``; return (next epoch, history so far). A file that
    does not load (truncated, not a checkpoint) raises ValueError naming it and the fix."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["config"], ckpt["epoch"]  # noqa: B018 - a checkpoint has both
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds for a damaged file
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it to start this run "
                         "from scratch") from None
    saved = TrainConfig(**{**ckpt["config"], "device": config.device}).result_fields()
    now = config.result_fields()
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was written by another configuration ({detail}); "
                         "resume with the same settings or delete the checkpoint")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return ckpt["epoch"] + 1, list(ckpt["history"])


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint (in eval mode, on ``device``) and its ``TrainConfig`` (chapter 6).
    The model maps [B, 1, S, S] → logits [B, 10], S = ``config.image_size``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig(**ckpt["config"])
    model = create_model(config.model, NUM_CLASSES, 1, config.image_size)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config


# --------------------------------------------------------------------------- fit


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=wd)


def load_data(config: TrainConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((train uint8 [N,1,28,28], int64 [N]), (test ..., ...))`` of a run (chapter 6). The training subset follows
    the run's seed; the test subset is always drawn with seed 0, so every run of a grid is
    evaluated on the same images. With ``n_val`` the training images exclude the validation split
    (:func:`load_validation`); the subset is then drawn from what remains. With ``permute_labels`` the
    training labels are permuted (``torch.randperm`` under that seed; the data randomisation check)."""
    if config.n_val:
        x, y = load_split(config.dataset, True, root=config.data_root)
        keep, _ = split_validation(y, config.n_val, NUM_CLASSES)
        if config.n_train:
            order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(config.seed))
            keep = keep[order[:config.n_train]]
        train = x[keep], y[keep]
    else:
        train = load_split(config.dataset, True, root=config.data_root, n=config.n_train, seed=config.seed)
    if config.permute_labels is not None:
        train = permute_labels(train, config.permute_labels)
    test = load_split(config.dataset, False, root=config.data_root, n=config.n_test, seed=0)
    return train, test


def permute_labels(train: tuple[torch.Tensor, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, ...], labels [N])`` with the labels permuted by ``torch.randperm(N)`` under ``seed`` and
    the images in their order: the data randomisation check of chapter 8 (``TrainConfig.permute_labels``)."""
    x, y = train
    return x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))]


def load_validation(config: TrainConfig) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split (uint8 [n_val, 1, 28, 28], int64 [n_val]) carved from the training split by
    :func:`batchcam.data.split_validation` (fixed, stratified, the same for every seed), or None
    without ``n_val`` (chapter 7: choices are made on it, the test set is read once)."""
    if not config.n_val:
        return None
    x, y = load_split(config.dataset, True, root=config.data_root)
    _, val = split_validation(y, config.n_val, NUM_CLASSES)
    return x[val], y[val]


def fit(config: TrainConfig, *, resume: bool = False, progress: bool = True, data=None) -> Optional[Run]:
    """Train one configuration, evaluate after every epoch, checkpoint each epoch (chapter 6).

    Args:
        config: the run (validated and resolved here; call ``check_ready`` first in a CLI).
        resume: continue from ``checkpoint_path(config)`` if it exists (same configuration apart
            from device and paths); without a checkpoint, start from scratch.
        progress: tqdm bars. data: ``load_data(config)``'s result, if already loaded.

    Returns a :class:`Run`. ``epochs=0`` evaluates the untrained model (the random-model
    baseline). After a KeyboardInterrupt the last complete epoch's checkpoint stays, and
    ``fit(config, resume=True)`` continues with the same data order and, on CPU, ends with
    the same numbers. Under ``torchrun`` each process trains its shard of every global batch with
    DistributedDataParallel (``batchcam.distributed``, chapter 7); rank 0 evaluates, checkpoints
    and returns the Run, the other ranks return None.
    """
    config = config.resolved()
    ddp = distributed.setup(config.device)  # one process (all no-ops) unless torchrun started this one
    device, progress = ddp.device, progress and ddp.is_main
    amp = (config.amp_dtype if config.amp else False) if device.type == "cuda" else False  # "bf16", "fp16", False
    # fp16 needs its loss scaled (bf16 has fp32's range); the maps and losses stay float32 either way
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    ckpt, started = checkpoint_path(config), time.perf_counter()
    set_seed(config.seed)
    decoy = None if config.decoy == "none" else load_decoy(
        config.dataset, config.decoy, root=config.data_root, n_train=config.n_train, n_test=config.n_test,
        seed=config.seed, variant=config.decoy_patch, n_val=config.n_val)  # chapter 9
    if data is None:
        data = (decoy.train, decoy.test) if decoy else load_data(config)
    (train_x, train_y), (test_x, test_y) = data
    # per-epoch evaluation; None: the test set (the first records' protocol). Decoy runs: decoyed like training
    val = decoy.val if decoy else load_validation(config)
    source = decoy.clean_train if decoy and config.prototype_source == "clean" else (train_x, train_y)
    prototypes = ddp.from_main(lambda: class_prototypes(*source, NUM_CLASSES, size=config.image_size))
    prototypes = prototypes.to(device)
    target = prototypes  # what the Prototype Loss pulls the maps towards; chapter 8 varies it
    if config.prototype_source == "ce-maps":
        target = ddp.from_main(lambda: map_prototypes(config, data, prototypes, ddp.world_size)).to(device)
        set_seed(config.seed)  # the teacher's training used the generator: start as a 'train' run does
    model = ddp.sync_batchnorm(create_model(config.model, NUM_CLASSES, 1, config.image_size))
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    optimizer = _optimizer(config, model)
    start, history = _restore(ckpt, config, model, optimizer, scaler) if resume and ckpt.is_file() else (0, [])
    net = ddp.wrap(model)  # DistributedDataParallel under torchrun, else the model itself
    loader = ddp.loader(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed,
                        image_size=config.image_size, device=device, channels_last=channels_last,
                        drop_last=ddp.drop_last(len(train_y), config.batch_size),  # BatchNorm needs B ≥ 2
                        order=config.order,
                        **({"masks": decoy.train_masks} if config.objective in MASK_OBJECTIVES else {}))
    objective = config.objective_spec().bind(ddp.layer(config.layer), target, amp=amp, reduce=ddp.reduce,
                                             scaler=scaler)
    kw = dict(layer=config.layer, image_size=config.image_size, amp=amp)
    ev = None
    with cudnn_autotune(device):
        for epoch in tqdm(range(start, config.epochs), desc=config.run_id, initial=start,
                          total=config.epochs, disable=not progress, unit="epoch"):
            loader.set_epoch(epoch)
            t0 = clock(device)
            train = train_one_epoch(net, objective, loader, optimizer,
                                    progress=progress and f"epoch {epoch + 1}/{config.epochs}")
            recalibrate_batchnorm(model, loader, epoch)
            t1 = clock(device)
            if not ddp.is_main:  # DDP: rank 0 evaluates and checkpoints while the others wait
                ddp.barrier()
                continue
            split, (ex, ey) = ("val", val) if val is not None else ("test", (test_x, test_y))
            ev = evaluate(model, ex, ey, prototypes, baselines=False, progress=progress, **kw)
            history.append({"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                            f"{split}_accuracy": ev["accuracy"], f"{split}_l1": ev["maps"]["l1"],
                            f"{split}_ssim": ev["maps"]["ssim"],
                            f"{split}_dead_fraction": ev["maps"]["dead_fraction"],
                            "train_time_s": t1 - t0, "eval_time_s": clock(device) - t1})
            _save_checkpoint(ckpt, config, model, optimizer, epoch, history, scaler)
            ddp.barrier()
        if not ddp.is_main:
            return None
        ev = evaluate(model, test_x, test_y, prototypes, progress=progress, **kw)
        loop = time_gradcam(model, test_x, test_y, n_loop=config.eval_cam_loop_samples, **kw)
        with cudnn_autotune(device, on=False):  # deletion's batches vary in size: no autotuning per shape
            ev["faithfulness"] = faithfulness(model, test_x, test_y, prototypes,
                                              n=config.eval_faithfulness_samples, **kw)
        if decoy is not None:
            ev["decoy"] = {**decoy_metrics(model, decoy, prototypes=target, **kw),
                           **decoy_validation(model, decoy, image_size=config.image_size, amp=amp)}
    per_epoch = [row["train_time_s"] for row in history]
    timings = {"train_time_per_epoch_s": sum(per_epoch) / len(per_epoch) if per_epoch else None,
               "gradcam_batch_s": ev["gradcam_time_s"], "gradcam_batch_samples": ev["samples"],
               "gradcam_loop_s": loop["loop_s"], "gradcam_loop_samples": loop["loop_samples"],
               "gradcam_loop_s_scaled": loop["loop_s_scaled"],
               "resumed_from_epoch": start if resume and start else None,
               "session_wall_s": time.perf_counter() - started}
    runtime = {"device": str(device), "device_type": device.type, "amp": amp, "channels_last": channels_last,
               "cudnn_benchmark": device.type == "cuda", "torch_threads": torch.get_num_threads(),
               "world_size": ddp.world_size}
    average = ev.pop("average_reconstruction")
    return Run(config=config, model=model.eval(), history=history, evaluation=ev,
               prototypes=prototypes.cpu(), average_reconstruction=average, timings=timings, runtime=runtime,
               target_prototypes=None if target is prototypes else target.cpu())


def map_prototypes(config: TrainConfig, data, prototypes: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Prototype source ``ce-maps`` (chapter 8): the mean Grad-CAM map per class [C, S, S] (each
    max 1) of the trained ``ce`` model with ``config``'s seed, data and recipe, on the training
    images ``data[0]``; ``prototypes`` [C, S, S] only feed the meter. The teacher's checkpoint is
    reused when complete, else ``fit`` trains (or finishes) it first, which writes it."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    teacher = replace(config, objective="ce", prototype_source="train",
                      **{k: defaults[k] for k in ("distance", "lambda_proto", "lambda_batchcam", "lambda_rrr",
                                                  "lambda_rrr_input", "stop_gradient", "cam_normalize")})
    ckpt = checkpoint_path(teacher)
    done = ckpt.is_file() and torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1 >= teacher.epochs
    if not done:
        if world_size > 1:
            raise RuntimeError(f"--prototype-source ce-maps needs {ckpt}: train {teacher.run_id} first "
                               "without torchrun, then start this run again")
        fit(teacher, resume=True, progress=False, data=data)
    model, _ = load_checkpoint(ckpt, prototypes.device)
    (train_x, train_y), _ = data
    maps = evaluate(model, train_x, train_y, prototypes, layer=teacher.resolved().layer,
                    image_size=teacher.resolved().image_size, baselines=False)["average_reconstruction"]
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)

