"""Evaluation of a trained model: accuracy, maps against prototypes with their baselines, and
the time of batch Grad-CAM against the per-image loop (chapters 3, 4, 5 and 6).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ._helpers import amp_autocast
from .cam import batch_gradcam_with_logits, gradcam_loop, normalize_cam
from .data import TensorLoader
from .metrics import BASELINES, ReconstructionMeter, baseline_maps

__all__ = ["evaluate", "time_gradcam", "faithfulness", "decoy_metrics", "decoy_validation", "EVAL_BATCH_SIZE"]

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
    """Test accuracy and the quality of the model's maps, with the baselines (chapters 4, 5 and 6).

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
            with amp_autocast(device, amp):
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
    with eval_mode(model), amp_autocast(device, amp):
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
    test images (chapter 8). images uint8 [N, 1, 28, 28]; prototypes [C, S, S].

    With ``extended`` (chapter 8's evidence), ``"maps"`` and ``"random"`` also carry the blur-baseline
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
            with amp_autocast(device, amp):
                cam, _ = batch_gradcam_with_logits(model, x, layer, y)
            xs.append(x), ys.append(y), maps.append(cam.float())
        x, y = torch.cat(xs), torch.cat(ys)
        candidates = {"maps": torch.cat(maps)}
        candidates.update({k: baseline_maps(k, x, y, prototypes.to(device)) for k in MAP_BASELINES})
        out = {}
        for kind, m in candidates.items():
            with amp_autocast(device, amp):
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

    with amp_autocast(x.device, amp):
        blur = deletion_insertion(model, x, maps, y, steps=steps, baseline="blur")
        r = road(model, x, maps, y, generator=torch.Generator(device=x.device).manual_seed(0))
    return {"blur_deletion": float(blur["deletion"].mean()), "blur_insertion": float(blur["insertion"].mean()),
            "road_morf": float(r["morf"].mean()), "road_lerf": float(r["lerf"].mean()),
            "road_combined": float(r["combined"].mean()), "road_percents": list(ROAD_PERCENTS),
            "road_morf_curve": r["morf"].mean(0).tolist(), "road_lerf_curve": r["lerf"].mean(0).tolist()}


def decoy_metrics(model: nn.Module, splits, *, layer: str, image_size: Optional[int] = None,
                  amp: bool = False, prototypes: Optional[torch.Tensor] = None) -> dict:
    """What a model makes of the decoy patch (chapter 9); ``splits`` a ``batchcam.decoy.DecoySplits``.

    Three versions of the same test images: clean, with random-class patches (``splits.test``, the
    run's test set) and with label-consistent patches at the same positions
    (``batchcam.decoy.consistent_test``). Maps are the true-class Grad-CAM maps [N, S, S].

    Returns:
        ``"clean_accuracy"``, ``"random_accuracy"``, ``"consistent_accuracy"``; ``"reliance"`` =
        consistent − random accuracy (≈ 0 for a model that ignores the patch, up to ≈ 0.9 for one that
        reads only it); ``"relevance_mass"`` (mean share of the map inside the patch, random-class
        images) and ``"relevance_mass_ratio"`` (that share over the patch's share of the area, per
        image, then averaged: 1 = no preference) with its per-image ``"relevance_mass_ratio_std"`` and
        ``"relevance_mass_ratio_ci95"`` ([low, high], normal interval of the mean over images), and
        ``"relevance_mass_ratio_consistent"`` (the same on the label-consistent twin);
        ``"follows_patch"`` (share of random-class images predicted as the patch's class; 0.1 by
        chance); with ``prototypes`` [C, S, S] (the Prototype Loss's targets), ``"prototype_patch_ratio"``:
        the same area-normalised mass of the true class's prototype inside each test image's patch,
        averaged over the test images (so over the four corners in proportion to the test patches);
        plus ``splits.info`` (decoy seeds, SHA-256 of the decoyed arrays).
    """
    from .decoy import consistent_test, relevance_mass, relevance_mass_ratio

    device = next(model.parameters()).device
    kw = dict(image_size=image_size, device=device, channels_last=_channels_last(model))
    grey = splits.test_grey_class.to(device)
    protos = None if prototypes is None else prototypes.to(device).float().clamp_min(0)  # [C, S, S], once
    out, n = {}, len(splits.test[1])
    with eval_mode(model):
        with torch.no_grad(), amp_autocast(device, amp):
            correct = sum(int((model(x).argmax(1) == y).sum())
                          for x, y in TensorLoader(*splits.clean_test, EVAL_BATCH_SIZE, **kw))
        for name, split in (("random", splits.test), ("consistent", consistent_test(splits))):
            right, follows, mass, ratios, proto, start = 0, 0, 0.0, [], [], 0
            for x, y, m in TensorLoader(*split, EVAL_BATCH_SIZE, masks=splits.test_masks, **kw):
                with amp_autocast(device, amp):
                    maps, logits = batch_gradcam_with_logits(model, x, layer, y)
                pred = logits.argmax(1)
                right += int((pred == y).sum())
                follows += int((pred == grey[start:start + len(y)]).sum())
                mass += float(relevance_mass(maps.float(), m).sum())
                ratios.append(relevance_mass_ratio(maps.float(), m).double().cpu())
                if protos is not None and name == "random":
                    proto.append(relevance_mass_ratio(protos[y], m).double().cpu())
                start += len(y)
            r = torch.cat(ratios)
            out[f"{name}_accuracy"] = right / n
            if name == "random":
                std = float(r.std()) if n > 1 else 0.0
                half = 1.96 * std / n ** 0.5
                out.update(relevance_mass=mass / n, follows_patch=follows / n, relevance_mass_ratio=float(r.mean()),
                           relevance_mass_ratio_std=std,
                           relevance_mass_ratio_ci95=[float(r.mean()) - half, float(r.mean()) + half])
                if proto:
                    out["prototype_patch_ratio"] = float(torch.cat(proto).mean())
            else:
                out["relevance_mass_ratio_consistent"] = float(r.mean())
    out["reliance"] = out["consistent_accuracy"] - out["random_accuracy"]
    return {"clean_accuracy": correct / len(splits.clean_test[1]), **out, **splits.info}


def decoy_validation(model: nn.Module, splits, *, image_size: Optional[int] = None, amp: bool = False) -> dict:
    """Reliance on the validation split of a decoy run (chapter 9: the oracles' λ is chosen on it, never on
    the test set); ``splits`` a ``batchcam.decoy.DecoySplits`` with ``val_random`` (``n_val`` and a decoyed
    training split), else ``{}``.

    Returns:
        ``"val_clean_accuracy"`` (the validation images without a patch), ``"val_consistent_accuracy"``
        (their label-consistent patches, ``splits.val``), ``"val_random_accuracy"`` (the same patches drawn
        for random classes, ``splits.val_random``) and ``"val_reliance"`` = consistent − random.
    """
    if splits.val_random is None:
        return {}
    device = next(model.parameters()).device
    kw = dict(image_size=image_size, device=device, channels_last=_channels_last(model))
    out = {}
    with eval_mode(model), torch.no_grad(), amp_autocast(device, amp):
        for name, (x, y) in (("clean", splits.clean_val), ("consistent", splits.val), ("random", splits.val_random)):
            right = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in TensorLoader(x, y, EVAL_BATCH_SIZE, **kw))
            out[f"val_{name}_accuracy"] = right / len(y)
    out["val_reliance"] = out["val_consistent_accuracy"] - out["val_random_accuracy"]
    return out
