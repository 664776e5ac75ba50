"""Training with the two prototype losses: ``TrainConfig``, ``fit``, ``evaluate``, checkpoints, timings.

Chapter 5 walks through the loop; chapter 6 runs it over the paper's grid (``batchcam.grid``)
and reads the run records that ``fit`` writes (``batchcam.results``).

One training step (DESIGN §1): a single forward pass gives the logits ``z`` [B, C] and, when the
objective has a CAM term, the differentiable batch Grad-CAM maps ``R`` [B, H, W]
(``create_graph=True``); then ``L = CE(z, y) + λ_P·L_P(R, P) + λ_B·L_B(R)`` and one backward.
The ``ce`` baseline runs a plain ``model(x)`` and pays nothing for the maps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._helpers import bf16_autocast, atomic_torch_save, resolve_device, set_seed, unknown_choice
from .cam import batch_gradcam_with_logits, gradcam_loop
from .data import DATASETS, TensorLoader, load_split
from .losses import DISTANCES, batchcam_loss, prototype_loss
from .metrics import ReconstructionMeter
from .models import MODEL_SPECS, create_model, default_target_layer, list_models
from .prototypes import class_prototypes

__all__ = ["OBJECTIVES", "OPTIMIZERS", "TrainConfig", "Run", "fit", "evaluate", "time_gradcam", "loss_terms",
           "checkpoint_path", "load_checkpoint"]

OBJECTIVES = ("ce", "ce+proto", "ce+batchcam", "ce+proto+batchcam")
OPTIMIZERS = ("adam", "sgd", "adamw")
NUM_CLASSES = 10
EVAL_BATCH_SIZE = 256
# Hyperparameters that may differ between a checkpoint and the run resuming it.
_RESUMABLE_DIFFERENCES = {"device", "data_root", "out_dir", "eval_cam_loop_samples", "amp", "channels_last"}


def _field(default: Any, help: str, choices: Optional[typing.Sequence[str]] = None) -> Any:
    """A dataclass field whose help text and choices the CLI (``python -m batchcam train``) reuses."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass
class TrainConfig:
    """Everything that defines one training run (chapter 5). ``run_id`` names its record and checkpoint."""

    dataset: str = _field("mnist", "dataset", DATASETS)
    model: str = _field("simplecnn", "architecture (batchcam.list_models())", list_models())
    objective: str = _field("ce+proto+batchcam", "loss: cross-entropy plus which CAM terms", OBJECTIVES)
    distance: str = _field("l1", "distance d of both CAM losses", DISTANCES)
    lambda_proto: float = _field(1.0, "weight λ_P of the Prototype Loss")
    lambda_batchcam: float = _field(1.0, "weight λ_B of the Batch-CAM Loss")
    image_size: Optional[int] = _field(None, "input side in px; default: the model's (28, ConvNeXt-V2 112; ≥ 32)")
    layer: Optional[str] = _field(None, "Grad-CAM layer (dotted name); default: the model's last conv stage")
    epochs: int = _field(2, "training epochs")
    batch_size: int = _field(128, "training batch size (the Batch-CAM Loss averages maps per class in a batch)")
    optimizer: str = _field("adam", "optimiser", OPTIMIZERS)
    lr: float = _field(1e-3, "learning rate (constant)")
    weight_decay: float = _field(0.0, "weight decay")
    seed: int = _field(0, "seed of the weights, the data order and the training subset")
    device: str = _field("auto", "'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = _field(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: Optional[bool] = _field(None, "channels-last memory format; default: on CUDA only")
    n_train: Optional[int] = _field(None, "random training subset of this size (default: all 60k)")
    n_test: Optional[int] = _field(None, "random test subset of this size (default: all 10k)")
    data_root: Optional[str] = _field(None, "data folder (default: batchcam.data.default_data_root())")
    out_dir: str = _field("results", "records go to OUT_DIR/runs, checkpoints to OUT_DIR/checkpoints")
    eval_cam_loop_samples: int = _field(256, "test samples timed with the per-image Grad-CAM loop (0: skip)")

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the bad field and its valid values; return ``self``."""
        for name, value in asdict(self).items():
            choices = self._choices(name)
            if choices and value not in choices:
                raise unknown_choice(name, value, choices)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "n_train": self.n_train, "n_test": self.n_test, "image_size": self.image_size}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name in ("lambda_proto", "lambda_batchcam", "weight_decay", "eval_cam_loop_samples"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        min_size = MODEL_SPECS[self.model].min_size
        if self.image_size is not None and self.image_size < min_size:
            raise ValueError(f"image_size must be ≥ {min_size} for model {self.model!r}, got {self.image_size}")
        return self

    @classmethod
    def _choices(cls, name: str) -> Optional[tuple]:
        return {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}[name]

    def resolved(self) -> "TrainConfig":
        """A validated copy with ``image_size`` and ``layer`` filled in from the model's defaults."""
        self.validate()
        return dataclasses.replace(self, image_size=self.image_size or MODEL_SPECS[self.model].image_size,
                                   layer=self.layer or default_target_layer(self.model))

    @property
    def terms(self) -> tuple[str, ...]:
        """The objective's loss terms, e.g. ``("ce", "proto", "batchcam")``."""
        return tuple(self.objective.split("+"))

    @property
    def run_id(self) -> str:
        """Readable deterministic id, e.g. ``mnist-simplecnn-ce+proto+batchcam-l1-s28-e2-seed0``.

        Non-default λ, a non-default layer and subsets are appended (``-lp0.5``, ``-Llayer3``,
        ``-ntr1000``, ``-nte500``). Optimiser, learning rate, batch size and weight decay are not
        in the id: they are in the record, and ``fit(resume=True)`` refuses a checkpoint whose
        values differ.
        """
        size = self.image_size or MODEL_SPECS[self.model].image_size
        parts = [self.dataset, self.model, self.objective, self.distance, f"s{size}", f"e{self.epochs}",
                 f"seed{self.seed}"]
        if self.lambda_proto != 1.0:
            parts.append(f"lp{self.lambda_proto:g}")
        if self.lambda_batchcam != 1.0:
            parts.append(f"lb{self.lambda_batchcam:g}")
        if self.layer and self.layer != MODEL_SPECS[self.model].target_layer:
            parts.append(f"L{self.layer}")
        if self.n_train:
            parts.append(f"ntr{self.n_train}")
        if self.n_test:
            parts.append(f"nte{self.n_test}")
        return "-".join(parts)


@dataclass
class Run:
    """What ``fit`` returns: the trained model, its per-epoch history and final metrics."""

    config: TrainConfig  # resolved (image_size and layer filled in)
    model: nn.Module  # trained, in eval mode
    history: list[dict]  # one row of metrics per epoch (see ``_epoch_row``)
    final: dict  # final test metrics and timings (the record's "final")
    record_path: Optional[Path]  # results/runs/<run_id>.json once written
    prototypes: torch.Tensor  # [C, 1, H, W] class prototypes, on CPU
    average_reconstruction: torch.Tensor  # [C, H, W] mean test map per class, on CPU
    timings: dict = field(default_factory=dict)  # per-epoch times and Grad-CAM timings (the record's "timings")
    runtime: dict = field(default_factory=dict)  # device, effective amp / channels_last, torch threads


# --------------------------------------------------------------------------- small helpers




def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` after waiting for the GPU, so timings cover the queued kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put ``model`` in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device):
    """``cudnn.benchmark`` on CUDA (every batch has the same shape), restored afterwards."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = old or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_channels_last(model: nn.Module) -> bool:
    return any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())


def _load_data(config: TrainConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((train uint8 [N,1,28,28], int64 [N]), (test ..., ...))``. Tests monkeypatch this.

    The training subset depends on the run's seed; the test subset is always drawn with seed 0, so
    every run of a grid is evaluated on the same images.
    """
    train = load_split(config.dataset, True, root=config.data_root, n=config.n_train, seed=config.seed)
    test = load_split(config.dataset, False, root=config.data_root, n=config.n_test, seed=0)
    return train, test


def _build_model(config: TrainConfig, device: torch.device, channels_last: bool) -> nn.Module:
    model = create_model(config.model, num_classes=NUM_CLASSES, in_chans=1, image_size=config.image_size)
    return model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=wd)


def checkpoint_path(config: TrainConfig) -> Path:
    """``<out_dir>/checkpoints/<run_id>.pt`` (git-ignored)."""
    return Path(config.out_dir) / "checkpoints" / f"{config.run_id}.pt"


# --------------------------------------------------------------------------- one step, one epoch


def loss_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor,
               config: TrainConfig, *, amp: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The loss of one batch, term by term (chapter 5).

    Args:
        model: in train mode.
        x: images [B, 1, S, S] in [0, 1]; y: labels int64 [B].
        prototypes: [C, 1, S, S] on ``x``'s device.
        config: a resolved config (``objective``, ``distance``, λ's, ``layer``).
        amp: bf16 autocast for the forward (CUDA only); the losses are computed in float32.

    Returns:
        ``(terms, logits)``: ``terms`` holds scalar tensors ``"ce"``, ``"proto"`` and ``"batchcam"``
        (only those in the objective) and ``"total"``; logits [B, C] (float32).
    """
    with bf16_autocast(x.device, amp):
        if config.terms == ("ce",):  # the baseline pays nothing for Grad-CAM
            cam, logits = None, model(x)
        else:  # one forward: logits for the CE, differentiable maps [B, S, S] for the CAM losses
            cam, logits = batch_gradcam_with_logits(model, x, config.layer, y, create_graph=True)
    logits = logits.float()
    terms = {"ce": F.cross_entropy(logits, y)}
    total = terms["ce"]
    if "proto" in config.terms:
        terms["proto"] = prototype_loss(cam.float(), prototypes, y, config.distance)
        total = total + config.lambda_proto * terms["proto"]
    if "batchcam" in config.terms:
        terms["batchcam"] = batchcam_loss(cam.float(), y, config.distance)
        total = total + config.lambda_batchcam * terms["batchcam"]
    terms["total"] = total
    return terms, logits


def _train_epoch(model: nn.Module, loader: TensorLoader, optimizer: torch.optim.Optimizer,
                 prototypes: torch.Tensor, config: TrainConfig, *, amp: bool, desc: str, progress: bool) -> dict:
    """One pass over ``loader``; returns sample-weighted mean loss terms and the training accuracy."""
    model.train()
    sums: dict[str, torch.Tensor] = {}  # running sums on the device: no GPU sync per step
    correct, seen = 0, 0
    postfix_every = max(1, len(loader) // 20)
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for step, (x, y) in enumerate(bar):
        terms, logits = loss_terms(model, x, y, prototypes, config, amp=amp)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()

        b = y.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.detach() * b
        correct = correct + (logits.detach().argmax(1) == y).sum()
        seen += b
        if progress and step % postfix_every == 0:
            bar.set_postfix(loss=f"{terms['total'].item():.4f}", acc=f"{int(correct) / seen:.3f}")
    means = {k: float(v) / seen for k, v in sums.items()}
    return {"loss": means["total"], "ce": means["ce"], "proto": means.get("proto"),
            "batchcam": means.get("batchcam"), "accuracy": int(correct) / seen}


# --------------------------------------------------------------------------- evaluation and timing


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, *,
             layer: Optional[str] = None, image_size: Optional[int] = None, batch_size: int = EVAL_BATCH_SIZE,
             device: Optional[torch.device | str] = None, amp: bool = False, progress: bool = False) -> dict:
    """Test accuracy and reconstruction quality of ``model`` (chapter 4, chapter 5).

    The maps are the batch Grad-CAM of the model in eval mode for the *true* labels; the same
    forward pass gives the logits for the accuracy. The model's train/eval mode is restored.

    Args:
        images: uint8 [N, 1, 28, 28]; labels: int64 [N].
        prototypes: [C, 1, S, S] at the evaluation size ``S = image_size`` (default: the images' size).
        layer: Grad-CAM layer; default ``default_target_layer(model)``.
        device: default: the model's device.

    Returns:
        ``{"accuracy", "reconstruction_quality": {"l1", "l2", "ssim", "per_class"}, "gradcam_time_s",
        "samples", "average_reconstruction"}``; ``average_reconstruction`` is a CPU tensor [C, S, S]
        (keep it out of JSON), ``gradcam_time_s`` the seconds spent in batch Grad-CAM over all N.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    layer = layer or default_target_layer(model)
    loader = TensorLoader(images, labels, batch_size, image_size=image_size, device=device,
                          channels_last=_is_channels_last(model))
    meter = ReconstructionMeter(prototypes.to(device))
    correct, cam_time = 0, 0.0
    with _eval_mode(model):
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
            t0 = _clock(device)
            with bf16_autocast(device, amp):
                cam, logits = batch_gradcam_with_logits(model, x, layer, y)
            cam_time += _clock(device) - t0
            correct = correct + (logits.argmax(1) == y).sum()
            meter.update(cam.float(), y)
    return {"accuracy": int(correct) / len(labels), "reconstruction_quality": meter.compute(),
            "gradcam_time_s": cam_time, "samples": len(labels),
            "average_reconstruction": meter.average_reconstruction()}


def time_gradcam(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, layer: Optional[str] = None,
                 image_size: Optional[int] = None, n_loop: int = 256, batch_size: int = EVAL_BATCH_SIZE,
                 device: Optional[torch.device | str] = None, amp: bool = False) -> dict:
    """Time the per-image hook-based Grad-CAM (``gradcam_loop``) on the first ``n_loop`` samples (chapter 3).

    The loop costs one backward per image, so timing all N is slow; its time is scaled linearly
    to N. Both the raw and the scaled figures are returned: ``{"loop_s", "loop_samples",
    "loop_s_scaled", "total_samples"}`` (``None`` times when ``n_loop`` is 0). A two-image warm-up
    runs first and is not timed.
    """
    n_total = len(labels)
    n = min(n_loop, n_total)
    out = {"loop_s": None, "loop_samples": n, "loop_s_scaled": None, "total_samples": n_total}
    if n == 0:
        return out
    device = torch.device(device) if device is not None else _device_of(model)
    layer = layer or default_target_layer(model)
    loader = TensorLoader(images[:n], labels[:n], batch_size, image_size=image_size, device=device,
                          channels_last=_is_channels_last(model))
    elapsed = 0.0
    with _eval_mode(model), bf16_autocast(device, amp):
        x, y = next(iter(loader))
        gradcam_loop(model, x[:2], layer, y[:2])  # warm-up
        for x, y in loader:
            t0 = _clock(device)
            gradcam_loop(model, x, layer, y)
            elapsed += _clock(device) - t0
    out.update(loop_s=elapsed, loop_s_scaled=elapsed * n_total / n)
    return out


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                     epoch: int, history: list[dict]) -> None:
    """Atomically save everything needed to continue after ``epoch`` (0-based, completed)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
                       "epoch": epoch, "history": history, "rng": rng}, path)


def _read_checkpoint(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _restore(path: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list]:
    """Load a checkpoint into ``model`` and ``optimizer``; return (next epoch, history so far)."""
    ckpt = _read_checkpoint(path)
    saved = ckpt["config"]
    diff = {k: (saved.get(k), v) for k, v in asdict(config).items()
            if k not in _RESUMABLE_DIFFERENCES and saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was written by a different configuration ({detail}); "
                         "resume with the same settings or start over without resume")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return ckpt["epoch"] + 1, list(ckpt["history"])


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint (in eval mode, on ``device``) and its ``TrainConfig``."""
    ckpt = _read_checkpoint(path)
    config = TrainConfig(**ckpt["config"])
    model = create_model(config.model, num_classes=NUM_CLASSES, in_chans=1, image_size=config.image_size)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config


# --------------------------------------------------------------------------- fit


def _epoch_row(epoch: int, train: dict, ev: dict, train_time: float, eval_time: float) -> dict:
    """One history row (``epoch`` is 1-based)."""
    rq = ev["reconstruction_quality"]
    return {"epoch": epoch + 1, "train_loss": train["loss"], "train_ce": train["ce"], "train_proto": train["proto"],
            "train_batchcam": train["batchcam"], "train_accuracy": train["accuracy"],
            "test_accuracy": ev["accuracy"], "test_l1": rq["l1"], "test_l2": rq["l2"], "test_ssim": rq["ssim"],
            "train_time_s": train_time, "eval_time_s": eval_time, "gradcam_time_s": ev["gradcam_time_s"]}


def _summaries(history: list[dict], ev: dict, loop: dict) -> tuple[dict, dict]:
    """The record's ``final`` metrics and ``timings`` from the history, the last evaluation and the loop timing."""
    rq = ev["reconstruction_quality"]
    train_times = [row["train_time_s"] for row in history]
    per_epoch = sum(train_times) / len(train_times) if train_times else None
    batch_s, loop_scaled = ev["gradcam_time_s"], loop["loop_s_scaled"]
    gradcam = {"batch_s": batch_s, "batch_samples": ev["samples"], "loop_s": loop["loop_s"],
               "loop_samples": loop["loop_samples"], "loop_s_scaled": loop_scaled,
               "speedup": loop_scaled / batch_s if loop_scaled and batch_s else None}
    last = history[-1] if history else {}
    final = {"accuracy": ev["accuracy"], "l1": rq["l1"], "l2": rq["l2"], "ssim": rq["ssim"],
             "per_class": rq["per_class"], "train_accuracy": last.get("train_accuracy"),
             "train_loss": last.get("train_loss"), "epochs_completed": len(history),
             "train_time_per_epoch_s": per_epoch, "gradcam_batch_s": batch_s, "gradcam_loop_s": loop["loop_s"],
             "gradcam_loop_samples": loop["loop_samples"], "gradcam_loop_s_scaled": loop_scaled,
             "gradcam_speedup": gradcam["speedup"]}
    timings = {"train_time_s": train_times, "eval_time_s": [row["eval_time_s"] for row in history],
               "train_time_per_epoch_s": per_epoch, "gradcam": gradcam}
    return final, timings


def fit(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Run:
    """Train one configuration, evaluate it after every epoch, checkpoint, and write its run record (chapter 5).

    Args:
        config: the run; ``resolved()`` is applied (image size and layer default to the model's).
        resume: continue from ``checkpoint_path(config)`` if it exists (its configuration must match,
            apart from device / paths / amp); without a checkpoint, start from scratch.
        progress: tqdm bars (epochs, batches).

    Returns:
        A :class:`Run`. The record is at ``run.record_path`` (``<out_dir>/runs/<run_id>.json``).

    A KeyboardInterrupt propagates; the last complete epoch's checkpoint stays and no record is
    written, so ``fit(config, resume=True)`` continues with the same data order (the loader's
    shuffle is seeded by ``seed + epoch``) and, on CPU, ends with the same metrics.
    """
    from .results import write_record  # results imports this module

    config = config.resolved()
    device = resolve_device(config.device)
    amp = bool(config.amp) and device.type == "cuda"
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    ckpt = checkpoint_path(config)
    session_start = time.perf_counter()

    set_seed(config.seed)
    (train_x, train_y), (test_x, test_y) = _load_data(config)
    prototypes = class_prototypes(train_x, train_y, NUM_CLASSES, size=config.image_size).to(device)
    model = _build_model(config, device, channels_last)
    optimizer = _make_optimizer(config, model)
    start, history = _restore(ckpt, config, model, optimizer) if resume and ckpt.is_file() else (0, [])
    # A last batch of one sample would break BatchNorm in train mode.
    loader = TensorLoader(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed,
                          image_size=config.image_size, device=device, channels_last=channels_last,
                          drop_last=len(train_y) % config.batch_size == 1)
    eval_kwargs = dict(layer=config.layer, image_size=config.image_size, device=device, amp=amp)

    ev = None
    epochs = tqdm(range(start, config.epochs), desc=config.run_id, initial=start, total=config.epochs,
                  disable=not progress, unit="epoch")
    with _cudnn_autotune(device):
        for epoch in epochs:
            loader.set_epoch(epoch)
            t0 = _clock(device)
            train = _train_epoch(model, loader, optimizer, prototypes, config, amp=amp, progress=progress,
                                 desc=f"epoch {epoch + 1}/{config.epochs}")
            t1 = _clock(device)
            ev = evaluate(model, test_x, test_y, prototypes, progress=progress, **eval_kwargs)
            history.append(_epoch_row(epoch, train, ev, t1 - t0, _clock(device) - t1))
            _save_checkpoint(ckpt, config, model, optimizer, epoch, history)
            epochs.set_postfix(loss=f"{train['loss']:.4f}", test_acc=f"{ev['accuracy']:.4f}")

        if ev is None:  # resumed after the last epoch: evaluate the checkpointed model once more
            ev = evaluate(model, test_x, test_y, prototypes, progress=progress, **eval_kwargs)
        loop = time_gradcam(model, test_x, test_y, n_loop=config.eval_cam_loop_samples, **eval_kwargs)
    final, timings = _summaries(history, ev, loop)
    timings.update(resumed_from_epoch=start if resume and start else None,
                   session_wall_s=time.perf_counter() - session_start)
    runtime = {"device": str(device), "device_type": device.type, "amp": amp, "channels_last": channels_last,
               "cudnn_benchmark": device.type == "cuda", "torch_threads": torch.get_num_threads()}
    run = Run(config=config, model=model.eval(), history=history, final=final, record_path=None,
              prototypes=prototypes.cpu(), average_reconstruction=ev["average_reconstruction"],
              timings=timings, runtime=runtime)
    run.record_path = write_record(run)
    return run
