"""Behaviour fingerprints: what the code computes on tiny fixed inputs, per model (chapter 7).

A record is current when the code that made it computes what HEAD's code computes. The first
test is the source: ``provenance.code_hashes`` (the syntax trees of ``RESULT_FILES``). A change of
source that leaves every number the same — a refactor, a new option that is off by default — is
recognised by the second: :func:`probe` trains and evaluates each registered model for one epoch
on seeded synthetic images (every objective, the three distances, another λ and Grad-CAM
layer, the untrained model) and loads seeded subsets of the real data, on one CPU thread, and
returns named numbers. ``results/behaviour.json`` keeps the probe of each code version (keyed by
:func:`code_key`); ``staleness.stale_records`` accepts a record whose model's probe numbers equal
HEAD's within ``REL_TOL``. ``scripts/fingerprint.py`` probes the working tree or any commit.

This file also runs against older versions of the package (``python batchcam/behaviour.py`` with
that version first on ``PYTHONPATH``): it uses only ``TrainConfig``, ``fit(config, data=...)``
and ``load_split``, imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import tempfile
from typing import Any, Optional

__all__ = ["PROBES", "REL_TOL", "CROSS_CPU_REL_TOL", "probe", "code_key", "same_behaviour"]

REL_TOL, ABS_TOL = 1e-4, 1e-6  # records print 3–4 significant digits
#: Another CPU model (AMD EPYC against the Intel Xeon that made the probes) rounds differently, and a few
#: training steps carry it further: measured up to 9e-5 relative on weight sums, 3e-4 absolute on ROAD
#: curves near 0. Used only to compare a probe with a re-run of the same code elsewhere.
CROSS_CPU_REL_TOL, CROSS_CPU_ABS_TOL = 1e-2, 1e-3
#: (model, TrainConfig fields) of each probe run; 1 epoch unless given.
PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "simplecnn/ce": ("simplecnn", dict(objective="ce")),
    "simplecnn/proto-l1": ("simplecnn", dict(objective="ce+proto")),
    "simplecnn/batchcam-l2": ("simplecnn", dict(objective="ce+batchcam", distance="l2")),
    "simplecnn/both-ssim": ("simplecnn", dict(objective="ce+proto+batchcam", distance="ssim")),
    "simplecnn/both-l1-lambda": ("simplecnn", dict(objective="ce+proto+batchcam", lambda_proto=0.3,
                                                   lambda_batchcam=3.0)),
    "simplecnn/ce-layer": ("simplecnn", dict(objective="ce", layer="features.9")),
    "simplecnn/untrained": ("simplecnn", dict(objective="ce", epochs=0)),
    "resnet18/ce": ("resnet18", dict(objective="ce")),
    "resnet18/both-l1": ("resnet18", dict(objective="ce+proto+batchcam")),
    "convnextv2_tiny/both-l1": ("convnextv2_tiny", dict(objective="ce+proto+batchcam", image_size=32)),
    # chapter 8 on real data subsets (skipped by versions without these fields)
    "simplecnn/decoy-rrr": ("simplecnn", dict(objective="ce+rrr", decoy="train+test", n_train=100, n_test=20)),
    "simplecnn/decoy-clean-both": ("simplecnn", dict(objective="ce+proto+batchcam", decoy="train+test",
                                                     prototype_source="clean", n_train=100, n_test=20)),
    "simplecnn/decoy-oracle": ("simplecnn", dict(objective="ce", decoy="test", n_train=100, n_test=20)),
    "simplecnn/both-nosg-minmax": ("simplecnn", dict(objective="ce+proto+batchcam", stop_gradient=False,
                                                     cam_normalize="minmax")),
    "simplecnn/proto-cemaps": ("simplecnn", dict(objective="ce+proto", prototype_source="ce-maps")),
    # chapter 7's verdict protocol: validation split, (seed, epoch) orders, two epochs
    "simplecnn/verdict-protocol": ("simplecnn", dict(objective="ce+proto+batchcam", n_val=100, order="seed,epoch",
                                                     epochs=2, n_train=100, n_test=20)),
}
DATA_PROBES = [(name, train) for name in ("mnist", "fashion-mnist") for train in (True, False)]


def _synthetic(n: int, seed: int):
    """Seeded uint8 images [n, 1, 28, 28] with a class-dependent bright bar, labels ``i % 10``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, 0, 4 + 2 * y: 6 + 2 * y, 6:22] = 250
    return images, labels


def _numbers(prefix: str, obj: Any, out: dict[str, float]) -> None:
    """Flatten nested dicts / lists of numbers into ``out`` ("a/b/0": value); times are skipped."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not str(k).endswith("_s"):  # seconds
                _numbers(f"{prefix}/{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _numbers(f"{prefix}/{i}", v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)


def _run_probe(name: str, model: str, fields: dict[str, Any], out_dir: str) -> dict[str, float]:
    import torch

    from batchcam.config import TrainConfig
    from batchcam.train import fit

    base = dict(model=model, seed=3, epochs=1, batch_size=20, device="cpu", out_dir=out_dir,
                eval_cam_loop_samples=0, eval_faithfulness_samples=8)
    known = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
    if not set(fields) <= set(known) or any(known[k] and v not in known[k] for k, v in fields.items()):
        return {}  # an older version without these options or values
    config = TrainConfig(**{**base, **fields})
    data = None if "n_train" in fields else (_synthetic(40, 1), _synthetic(20, 2))
    run = fit(config, data=data, progress=False)
    out: dict[str, float] = {}
    _numbers(name, {"history": run.history, "evaluation": run.evaluation}, out)
    params = [p.detach().double() for p in run.model.state_dict().values() if p.is_floating_point()]
    out[f"{name}/weights/sum"] = float(sum(p.sum() for p in params))
    out[f"{name}/weights/sumsq"] = float(sum(p.pow(2).sum() for p in params))
    out[f"{name}/prototypes/sum"] = float(run.prototypes.double().sum())
    if getattr(run, "target_prototypes", None) is not None:
        out[f"{name}/target_prototypes/sum"] = float(run.target_prototypes.double().sum())
    out[f"{name}/average_reconstruction/sum"] = float(torch.as_tensor(run.average_reconstruction).double().sum())
    return out


def probe(models: Optional[list[str]] = None, data: bool = True) -> dict[str, dict[str, float]]:
    """Run the probes of ``models`` (default: all of :data:`PROBES`) and, with ``data``, load seeded
    subsets of both datasets; ``{model or "data": {name: number}, "versions": {library: version}}``.
    One CPU thread (same numbers
    on every run); about 40 s here (chapter 7)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (model, fields) in PROBES.items():
                if models is None or model in models:
                    out.setdefault(model, {}).update(_run_probe(name, model, fields, tmp))
        if data:
            from batchcam.data import load_split

            for dataset, train in DATA_PROBES:
                x, y = load_split(dataset, train, n=64, seed=5)
                key = f"{dataset}/{'train' if train else 'test'}"
                out.setdefault("data", {}).update({f"{key}/sha256": int(hashlib.sha256(
                    x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12], 16)})
    finally:
        torch.set_num_threads(threads)
    import torchvision

    out["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__}  # not compared
    return out


def code_key(hashes: dict[str, Optional[str]]) -> str:
    """One key for a code version: the SHA-256 (16 hex digits) of its ``code_hashes`` (chapter 7)."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def same_behaviour(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], model: str,
                   rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Whether two probes agree for ``model`` and the data (every shared number within
    ``rel_tol``, ``abs_tol``; data hashes exactly). A probe missing either part does not agree (chapter 7)."""
    for part in (model, "data"):
        x, y = a.get(part), b.get(part)
        if not x or not y:
            return False
        shared = set(x) & set(y)
        if not shared or not all(x[k] == y[k] if k.endswith("sha256") else
                                 math.isclose(x[k], y[k], rel_tol=rel_tol, abs_tol=abs_tol) for k in shared):
            return False
    return True


if __name__ == "__main__":  # python batchcam/behaviour.py [model ...]: the probe as JSON on stdout
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        result = probe(sys.argv[1:] or None)
    json.dump(result, sys.stdout, sort_keys=True)
