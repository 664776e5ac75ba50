"""Evaluation of a trained model: accuracy, maps against prototypes with their baselines, and
the time of batch Grad-CAM against the per-image loop (chapters 3, 4 and 5).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ._helpers import bf16_autocast
from .cam import batch_gradcam_with_logits, gradcam_loop, normalize_cam
from .data import TensorLoader
from .metrics import BASELINES, ReconstructionMeter, baseline_maps

__all__ = ["evaluate", "time_gradcam", "faithfulness", "decoy_metrics", "EVAL_BATCH_SIZE"]

EVAL_BATCH_SIZE = 256
EXTENDED = ("maps", "random")  # map kinds that also get blur deletion and ROAD
NORMALISED = ("deletion", "insertion", "blur_deletion", "blur_insertion")


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` after waiting for the GPU, so timings cover the queued kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _channels_last(model: nn.Module) -> bool:
    return any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in model.parameters())


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, *,
             layer: str, image_size: Optional[int] = None, batch_size: int = EVAL_BATCH_SIZE,
             amp: bool = False, baselines: bool = True, progress: bool = False) -> dict:
    """Test accuracy and the quality of the model's maps, with the baselines (chapters 4 and 5).

    The maps are the batch Grad-CAM of the model in eval mode for the *true* labels; the same
    forward gives the logits for the accuracy. A map is dead when it is all zero before
    normalisation. The model's train/eval mode is restored.

    Args:
        model: on the device evaluation runs on. images: uint8 [N, 1, 28, 28]; labels: int64 [N].
        prototypes: [C, S, S] at the evaluation size ``S = image_size`` (default: the images').
        layer: the Grad-CAM layer. baselines: also score the blank map and the input image.

    Returns:
        ``{"accuracy", "maps": ReconstructionMeter.compute(), "baselines": {"blank": ..., "input":
        ...}, "gradcam_time_s", "samples", "average_reconstruction": [C, S, S] CPU tensor}``.
    """
    device = next(model.parameters()).device
    loader = TensorLoader(images, labels, batch_size, image_size=image_size, device=device,
                          channels_last=_channels_last(model))
    meters = {"maps": ReconstructionMeter(prototypes.to(device))}
    if baselines:
        meters.update({k: ReconstructionMeter(prototypes.to(device)) for k in BASELINES})
    correct, cam_time = torch.zeros((), dtype=torch.long, device=device), 0.0
    with eval_mode(model):
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
            t0 = clock(device)
            with bf16_autocast(device, amp):
                raw, logits = batch_gradcam_with_logits(model, x, layer, y, normalize=None)
            maps = normalize_cam(raw.float())
            cam_time += clock(device) - t0
            correct += (logits.argmax(1) == y).sum()
            img = x[:, 0].float()
            meters["maps"].update(maps, y, img, raw.flatten(1).amax(1) <= 0)
            for kind in BASELINES if baselines else ():
                b = baseline_maps(kind, img)
                meters[kind].update(b, y, img, b.flatten(1).amax(1) <= 0)
    return {"accuracy": int(correct) / len(labels), "maps": meters["maps"].compute(),
            "baselines": {k: meters[k].compute() for k in BASELINES if k in meters},
            "gradcam_time_s": cam_time, "samples": len(labels),
            "average_reconstruction": meters["maps"].average_reconstruction()}


def time_gradcam(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, layer: str,
                 image_size: Optional[int] = None, n_loop: int = 256, batch_size: int = EVAL_BATCH_SIZE,
                 amp: bool = False) -> dict:
    """Time the per-image hook-based Grad-CAM (``gradcam_loop``) on the first ``n_loop`` test
    samples (chapter 3); images uint8 [N, 1, 28, 28], labels [N].

    The loop costs one backward per image, so it is timed on a sample and scaled linearly to N:
    ``{"loop_s", "loop_samples", "loop_s_scaled"}`` (``None`` times when ``n_loop`` is 0). A
    two-image warm-up runs first and is not timed. Chapter 3's controlled benchmark is the
    reference for speed; this is the per-run figure.
    """
    n = min(n_loop, len(labels))
    out = {"loop_s": None, "loop_samples": n, "loop_s_scaled": None}
    if n == 0:
        return out
    device = next(model.parameters()).device
    loader = TensorLoader(images[:n], labels[:n], batch_size, image_size=image_size, device=device,
                          channels_last=_channels_last(model))
    elapsed = 0.0
    with eval_mode(model), bf16_autocast(device, amp):
        x, y = next(iter(loader))
        gradcam_loop(model, x[:2], layer, y[:2])  # warm-up
        for x, y in loader:
            t0 = clock(device)
            gradcam_loop(model, x, layer, y)
            elapsed += clock(device) - t0
    out.update(loop_s=elapsed, loop_s_scaled=elapsed * len(labels) / n)
    return out


def faithfulness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, *,
                 layer: str, image_size: Optional[int] = None, n: int = 500, steps: int = 28,
                 amp: bool = False, extended: bool = True) -> dict:
    """Deletion and insertion AUC (zero baseline, ``steps`` steps) of the model's maps and of the
    reference maps (random, centred blob, input image, true-class prototype) on the first ``n``
    test images (chapter 7). images uint8 [N, 1, 28, 28]; prototypes [C, S, S].

    With ``extended`` (chapter 7's evidence), ``"maps"`` and ``"random"`` also carry the blur-baseline
    deletion / insertion AUC and ROAD (Rong et al. 2022: MoRF, LeRF, their combination, and the
    per-percent curves; noisy linear imputation), and ``"normalised"`` holds each of the maps' AUCs
    divided by the same model's random-order AUC (deletion: below 1 beats a random pixel order;
    insertion: above 1 does), so models of different accuracy compare on one scale.

    Returns ``{"maps" | "random" | "blob" | "input" | "prototype": {"deletion", "insertion", ...},
    "normalised", "samples", "steps"}`` (means over the images; deletion: lower is better, insertion: higher).
    """
    from .faithfulness import MAP_BASELINES, baseline_maps, deletion_insertion

    n = min(n, len(labels))
    if n == 0:
        return {}
    device = next(model.parameters()).device
    loader = TensorLoader(images[:n], labels[:n], EVAL_BATCH_SIZE, image_size=image_size, device=device,
                          channels_last=_channels_last(model))
    xs, ys, maps = [], [], []
    with eval_mode(model):
        for x, y in loader:
            with bf16_autocast(device, amp):
                cam, _ = batch_gradcam_with_logits(model, x, layer, y)
            xs.append(x), ys.append(y), maps.append(cam.float())
        x, y = torch.cat(xs), torch.cat(ys)
        candidates = {"maps": torch.cat(maps)}
        candidates.update({k: baseline_maps(k, x, y, prototypes.to(device)) for k in MAP_BASELINES})
        out = {}
        for kind, m in candidates.items():
            with bf16_autocast(device, amp):
                res = deletion_insertion(model, x, m, y, steps=steps)
            out[kind] = {"deletion": float(res["deletion"].mean()), "insertion": float(res["insertion"].mean())}
        if extended:
            for kind in EXTENDED:  # blur deletion and ROAD, for the maps and their random-order yardstick
                out[kind].update(_blur_and_road(model, x, candidates[kind], y, steps=steps, amp=amp))
            out["normalised"] = {k: out["maps"][k] / out["random"][k] for k in NORMALISED
                                 if out["random"][k] > 0}
    return {**out, "samples": n, "steps": steps}


def _blur_and_road(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, y: torch.Tensor, *, steps: int,
                   amp: bool) -> dict:
    """Blur-baseline deletion / insertion AUC and ROAD (MoRF, LeRF, combined; noise seeded with 0) of
    ``maps`` [N, H, W] on images ``x`` [N, 1, H, W] (means over the images; ROAD per percent too)."""
    from .faithfulness import ROAD_PERCENTS, deletion_insertion, road

    with bf16_autocast(x.device, amp):
        blur = deletion_insertion(model, x, maps, y, steps=steps, baseline="blur")
        r = road(model, x, maps, y, generator=torch.Generator(device=x.device).manual_seed(0))
    return {"blur_deletion": float(blur["deletion"].mean()), "blur_insertion": float(blur["insertion"].mean()),
            "road_morf": float(r["morf"].mean()), "road_lerf": float(r["lerf"].mean()),
            "road_combined": float(r["combined"].mean()), "road_percents": list(ROAD_PERCENTS),
            "road_morf_curve": r["morf"].mean(0).tolist(), "road_lerf_curve": r["lerf"].mean(0).tolist()}


def decoy_metrics(model: nn.Module, splits, *, layer: str, image_size: Optional[int] = None,
                  amp: bool = False) -> dict:
    """What a model makes of the decoy patch (chapter 7); ``splits`` a ``batchcam.decoy.DecoySplits``.

    Returns ``{"clean_accuracy"`` (on the clean test images), ``"relevance_mass"`` (mean share of
    the true-class Grad-CAM map inside the patch, decoyed test images), ``"follows_patch"`` (share
    of decoyed test images predicted as the class the patch's grey level stands for; 0.1 by chance),
    plus ``splits.info`` (decoy seeds, SHA-256 of the decoyed arrays)``}``.
    """
    from .decoy import relevance_mass

    device = next(model.parameters()).device
    kw = dict(image_size=image_size, device=device, channels_last=_channels_last(model))
    clean = TensorLoader(*splits.clean_test, EVAL_BATCH_SIZE, **kw)
    decoyed = TensorLoader(*splits.test, EVAL_BATCH_SIZE, masks=splits.test_masks, **kw)
    grey = splits.test_grey_class.to(device)
    correct, mass, follows, start = 0, 0.0, 0, 0
    with eval_mode(model):
        with torch.no_grad(), bf16_autocast(device, amp):
            for x, y in clean:
                correct += int((model(x).argmax(1) == y).sum())
        for x, y, m in decoyed:
            with bf16_autocast(device, amp):
                maps, logits = batch_gradcam_with_logits(model, x, layer, y)
            mass += float(relevance_mass(maps.float(), m).sum())
            follows += int((logits.argmax(1) == grey[start:start + len(y)]).sum())
            start += len(y)
    n = len(splits.test[1])
    return {"clean_accuracy": correct / len(splits.clean_test[1]), "relevance_mass": mass / n,
            "follows_patch": follows / n, **splits.info}
