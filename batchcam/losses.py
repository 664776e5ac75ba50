"""Distances between maps, the two losses of the paper, and THE training objective.

Explained in chapter 6. Maps ("reconstructions") ``R`` and prototypes ``P`` share one shape,
[N, H, W], values in [0, 1]. :func:`objective_loss` is the only place where the loss of a
training step is put together: training (``batchcam.train``), the benchmark
(``batchcam.bench``) and the book all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._helpers import amp_autocast, unknown_choice
from ._ssim import ssim
from .cam import batch_gradcam_with_logits
from .rrr import input_gradient_penalty, rrr_input_loss

__all__ = ["DISTANCES", "OBJECTIVES", "ALL_OBJECTIVES", "Objective", "distance", "prototype_loss",
           "batchcam_loss", "rrr_loss", "input_gradient_penalty", "objective_loss", "BoundObjective"]

DISTANCES = ("l1", "l2", "ssim")
OBJECTIVES = ("ce", "ce+proto", "ce+batchcam", "ce+proto+batchcam")  # the paper's
#: Also ``ce+rrr``: a penalty on the map inside a known spurious region (chapter 9, Decoy-MNIST), and
#: ``ce+rrr-input``: Ross et al.'s penalty on the input gradients there (``batchcam.rrr``).
ALL_OBJECTIVES = OBJECTIVES + ("ce+rrr", "ce+rrr-input")
CAM_TERMS = ("proto", "batchcam", "rrr")  # the terms that need the Grad-CAM maps
INPUT_TERMS = ("rrr-input",)  # the terms that need the gradient with respect to the input
#: Default λ of ``ce+rrr-input`` for [0, 1] inputs (``TrainConfig.lambda_rrr_input``; ``batchcam.rrr`` says why).
LAMBDA_RRR_INPUT = 10.0
CAM_NORMALIZE = ("max", "minmax")

#: ``reduce(sums [C, H, W], counts [C])`` sums both in place over processes (DDP); None: one process.
Reduce = Optional[Callable[[torch.Tensor, torch.Tensor], None]]


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-sample distance between maps ``a`` and ``b``, both [B, H, W] → [B] (chapter 6).

    ``"l1"``: mean absolute difference; ``"l2"``: mean squared difference; ``"ssim"``:
    ``1 − SSIM`` (torchmetrics' definition: Gaussian window 11, σ = 1.5, reflect padding, data
    range 1), computed by the separable form in ``batchcam._ssim`` (chapter 4 builds it by hand;
    the tests hold it equal to torchmetrics). SSIM needs maps of at least 11 × 11 pixels.
    """
    if kind == "l1":
        return (a - b).abs().flatten(1).mean(1)
    if kind == "l2":
        return (a - b).pow(2).flatten(1).mean(1)
    if kind == "ssim":
        return 1.0 - ssim(a, b, data_range=1.0)
    raise unknown_choice("distance", kind, DISTANCES)


def prototype_loss(recon: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                   kind: str = "l1") -> torch.Tensor:
    """Prototype Loss ``L_P = mean_b d(R_b, P_{t_b})`` (chapter 6).

    Args:
        recon: maps ``R`` [B, H, W].
        prototypes: class prototypes ``P`` [C, H, W] (:func:`batchcam.class_prototypes`).
        targets: class per sample, int64 [B] in [0, C).
        kind: the distance ``d``: ``"l1"``, ``"l2"`` or ``"ssim"``.
    Returns:
        A scalar tensor; 0 for an empty batch.
    """
    if recon.shape[0] == 0:
        return recon.sum()
    return distance(recon, prototypes.to(recon)[targets], kind).mean()


def class_means(recon: torch.Tensor, targets: torch.Tensor, num_classes: int,
                reduce: Reduce = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached mean map per class of the batch ``R̄`` [C, H, W] and the class counts [C] (chapter 6).

    Fixed-size sums (no ``torch.unique``), so nothing waits for the GPU; with ``reduce`` the sums
    and counts are first summed over every process, giving the means of the global batch (DDP).
    """
    r = recon.detach()
    sums = torch.zeros((num_classes,) + tuple(r.shape[1:]), dtype=r.dtype, device=r.device)
    sums.index_add_(0, targets, r)
    counts = torch.zeros(num_classes, dtype=r.dtype, device=r.device)
    counts.index_add_(0, targets, torch.ones_like(targets, dtype=r.dtype))
    if reduce is not None:
        reduce(sums, counts)
    return sums / counts.clamp_min(1).view(-1, 1, 1), counts


def batchcam_loss(recon: torch.Tensor, targets: torch.Tensor, kind: str = "l1", *,
                  num_classes: Optional[int] = None, reduce: Reduce = None,
                  stop_gradient: bool = True) -> torch.Tensor:
    """Batch-CAM Loss ``L_B = mean_b d(R_b, sg(R̄_{t_b}))`` (chapter 6).

    ``R̄_c`` is the mean map of the samples of class ``c`` in the batch, a constant (stop-gradient;
    ``stop_gradient=False`` lets the gradient flow through the mean too: chapter 8's ablation,
    one process only).
    A class with one sample in the (global) batch contributes 0 (it would be compared with
    itself); the mean is over all B samples. All-zero maps are a trivial minimiser (chapter 6).

    Args:
        recon: maps [B, H, W].
        targets: class per sample, int64 [B].
        kind: ``"l1"``, ``"l2"`` or ``"ssim"``.
        num_classes: C; default ``targets.max() + 1`` (that reads a value: pass it in training).
        reduce: see :func:`class_means` (DDP).
    Returns:
        A scalar tensor; 0 for an empty batch.
    """
    if recon.shape[0] == 0:
        return recon.sum()
    c = int(targets.max()) + 1 if num_classes is None else num_classes
    means, counts = class_means(recon, targets, c, reduce)
    if not stop_gradient:
        sums = torch.zeros_like(means).index_add(0, targets, recon)
        means = sums / counts.clamp_min(1).view(-1, 1, 1)
    d = distance(recon, means[targets], kind)
    return (d * (counts[targets] > 1).to(d.dtype)).mean()


def rrr_loss(recon: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """RRR-G, "right for the right reasons" with Grad-CAM (chapter 8): ``mean_b Σ R_b·M_b / Σ M_b``,
    the mean map value inside each sample's known spurious region ``M_b`` (Ross et al. 2017 penalise
    input gradients there; we penalise the Grad-CAM map). recon [B, H, W] in [0, 1]; masks bool
    [B, H, W], each with at least one pixel. Returns a scalar; 0 for an empty batch."""
    if recon.shape[0] == 0:
        return recon.sum()
    m = masks.to(recon.dtype)
    return ((recon * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)).mean()


@dataclass(frozen=True)
class Objective:
    """``L = CE + λ_P·L_P + λ_B·L_B`` as data: the CAM terms and their weights (chapter 6).

    ``weights`` maps ``"proto"`` / ``"batchcam"`` to λ; a term absent from ``weights`` is not
    computed (one with λ = 0 is computed and weighted by 0, so its value is still reported).
    ``distance`` is the ``d`` of both terms; ``num_classes`` sizes the class means. Chapter 8's
    ablations: ``stop_gradient`` on the Batch-CAM mean, ``normalize`` of the training maps.
    """

    weights: tuple[tuple[str, float], ...] = ()
    distance: str = "l1"
    num_classes: int = 10
    stop_gradient: bool = True
    normalize: str = "max"
    cam_method: str = "gradcam"  # the CAM method of the training maps (chapter 8's method rows)

    @classmethod
    def from_name(cls, name: str, distance: str = "l1", lambda_proto: float = 1.0,
                  lambda_batchcam: float = 1.0, num_classes: int = 10, *, lambda_rrr: float = 1.0,
                  stop_gradient: bool = True, normalize: str = "max", cam_method: str = "gradcam",
                  lambda_rrr_input: float = LAMBDA_RRR_INPUT) -> "Objective":
        """``Objective.from_name("ce+proto+batchcam", "ssim", 1.0, 0.3)``; names in ``ALL_OBJECTIVES``."""
        if name not in ALL_OBJECTIVES:
            raise unknown_choice("objective", name, ALL_OBJECTIVES)
        if distance not in DISTANCES:
            raise unknown_choice("distance", distance, DISTANCES)
        if normalize not in CAM_NORMALIZE:
            raise unknown_choice("normalize", normalize, CAM_NORMALIZE)
        lam = {"proto": lambda_proto, "batchcam": lambda_batchcam, "rrr": lambda_rrr,
               "rrr-input": lambda_rrr_input}
        terms = name.split("+")[1:]
        return cls(tuple((t, float(lam[t])) for t in terms), distance, num_classes, stop_gradient, normalize,
                   cam_method)

    @property
    def name(self) -> str:
        """``"ce"``, ``"ce+proto"``, ... (the terms, whatever their weights)."""
        return "+".join(("ce",) + tuple(t for t, _ in self.weights))

    @property
    def needs_cam(self) -> bool:
        """Whether a step must compute the differentiable maps (``create_graph=True``)."""
        return any(t in CAM_TERMS for t, _ in self.weights)

    @property
    def needs_input_grad(self) -> bool:
        """Whether a step differentiates with respect to the input (``ce+rrr-input``, chapter 9)."""
        return any(t in INPUT_TERMS for t, _ in self.weights)

    def bind(self, layer: str, prototypes: Optional[torch.Tensor] = None, *, amp: Union[bool, str] = False,
             reduce: Reduce = None, scaler: Optional["torch.amp.GradScaler"] = None) -> "BoundObjective":
        """This objective with everything a step needs that does not change between batches (chapter 6):
        the Grad-CAM ``layer`` (dotted name), the target ``prototypes`` [C, H, W] on the batches' device,
        autocast (``amp``: False, True / "bf16", or "fp16"; CUDA only), the DDP ``reduce``, and for fp16
        the ``scaler`` (``torch.amp.GradScaler``) that scales the loss before its backward. Bound once per
        run, called per batch: ``terms, logits = objective.bind("features", protos)(model, x, y)``."""
        return BoundObjective(self, layer, prototypes, amp, reduce, scaler)


@dataclass(frozen=True)
class BoundObjective:
    """An :class:`Objective` bound to its layer, prototypes, autocast, DDP reduction and loss scaler
    (:meth:`Objective.bind`); calling it is :func:`objective_loss` for one batch (chapter 6).
    ``batchcam.loop.train_one_epoch`` takes one, so the loop does not carry the loss's arguments."""

    objective: Objective
    layer: str
    prototypes: Optional[torch.Tensor] = None  # [C, H, W]
    amp: Union[bool, str] = False  # False, True / "bf16", "fp16" (batchcam._helpers.amp_autocast)
    reduce: Reduce = None
    scaler: Optional["torch.amp.GradScaler"] = None  # fp16: scales the loss (batchcam.loop)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 masks: Optional[torch.Tensor] = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(terms, logits)`` of the batch x [B, 1, H, W], y int64 [B] (masks bool [B, H, W] for the
        mask objectives), exactly as :func:`objective_loss` computes them."""
        return objective_loss(self.objective, model, x, y, layer=self.layer, prototypes=self.prototypes,
                              amp=self.amp, reduce=self.reduce, masks=masks)


def objective_loss(objective: Objective, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   layer: str, prototypes: Optional[torch.Tensor] = None, amp: Union[bool, str] = False,
                   reduce: Reduce = None, masks: Optional[torch.Tensor] = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The loss of one training batch, term by term (chapter 6).

    One forward gives the logits for the cross-entropy and, when the objective has a CAM term,
    the differentiable batch Grad-CAM maps ``R`` [B, H, W] (``create_graph=True``, chapter 3);
    ``ce`` alone runs a plain ``model(x)`` and pays nothing for the maps. The forward may run
    under autocast (``amp``: True / "bf16" or "fp16", CUDA only); the maps are formed and normalised
    in float32 (``batchcam.cam``) and the losses are computed in float32. Inputs are
    trusted (validated once by ``TrainConfig``): nothing here reads a tensor value, so a step
    never waits for the GPU.

    Args:
        objective: the terms and their λ.
        model: in train mode; x: images [B, 1, H, W] in [0, 1]; y: labels int64 [B].
        layer: the Grad-CAM layer (dotted name); prototypes: [C, H, W] on ``x``'s device.
        reduce: DDP sum of the Batch-CAM class means (:func:`class_means`).
        masks: bool [B, H, W], the known spurious region of each sample (``ce+rrr``, ``ce+rrr-input``).
    Returns:
        ``(terms, logits)``: scalar tensors ``"ce"``, one per CAM term and ``"total"``;
        logits [B, C] float32.
    """
    with amp_autocast(x.device, amp):
        if objective.needs_cam:
            method = {} if objective.cam_method == "gradcam" else {"method": objective.cam_method}
            cam, logits = batch_gradcam_with_logits(model, x, layer, y, create_graph=True,
                                                    normalize=objective.normalize, **method)
        else:
            cam, logits = None, model(x)
    logits = logits.float()
    terms = {"ce": F.cross_entropy(logits, y)}
    total = terms["ce"]
    for term, lam in objective.weights:
        if term == "rrr-input":  # its own forward: batchcam.rrr
            terms[term] = rrr_input_loss(model, x, masks, amp=amp)
            total = total + lam * terms[term]
            continue
        r = cam.float()
        if term == "proto":
            terms[term] = prototype_loss(r, prototypes, y, objective.distance)
        elif term == "rrr":
            terms[term] = rrr_loss(r, masks)
        else:
            terms[term] = batchcam_loss(r, y, objective.distance, num_classes=objective.num_classes,
                                        reduce=reduce, stop_gradient=objective.stop_gradient)
        total = total + lam * terms[term]
    terms["total"] = total
    return terms, logits
