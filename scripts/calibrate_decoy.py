"""Calibrate our Decoy-MNIST generator and input-gradient penalty against Ross et al.'s published setting (chapter 9).

    python scripts/calibrate_decoy.py                      # 3 seeds, 64 epochs: results/bench/
    python scripts/calibrate_decoy.py --out /tmp/try       # the record goes to /tmp/try instead

Ross, Hughes & Doshi-Velez (2017), "Right for the right reasons", train a multilayer perceptron (ReLU
layers of 50 and 30 units) on Decoy-MNIST with raw 0–255 pixel inputs, Adam (step 1e-3), batches of 256
in a fixed order, 64 epochs (their ``MultilayerPerceptron.fit`` defaults), weights and biases drawn from
N(0, 0.1²), a loss summed over the batch with an L2 penalty 1e-4·‖θ‖² on the parameters; with
annotations it adds ``λ Σ_n Σ_d (A_nd ∂/∂x_nd Σ_k log p_nk)²`` with λ = 1000. Their notebook reports a
test accuracy of 0.516 without annotations, 0.961 with them and 0.961 for the same MLP on clean MNIST.

Here the same MLP and recipe run on *our* generator (``batchcam.decoy.make_decoy``, Ross's construction,
variant ``ross4``, the decoy seeds every run uses, all 60 000 training images) with *our* penalty
(``batchcam.rrr.input_gradient_penalty``, a batch mean: the loss is ``B·(mean CE + λ·mean penalty)
+ 1e-4·‖θ‖²``, which is Ross's sum). Each seed sets the initial weights (the data order is fixed, as in
Ross's code). Per seed and arm: accuracy on the random-shade test images (Ross's test set), on their
label-consistent twin (same images and patch positions, shade 255 − 25·y), on the clean test images,
on the training images, and reliance (consistent minus random). The pattern to reproduce: the random-shade
accuracy collapses without annotations and returns to about 0.96 with the penalty. The record goes to
``<out>/calibration-decoy-<UTC>.json`` with its provenance; an existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from batchcam._helpers import atomic_write_json  # noqa: E402
from batchcam.data import load_split  # noqa: E402
from batchcam.decoy import DECOY_SEEDS, make_decoy, paint_patch  # noqa: E402
from batchcam.provenance import provenance  # noqa: E402
from batchcam.rrr import input_gradient_penalty  # noqa: E402

#: Ross et al.'s numbers (their "Decoy MNIST" notebook): test accuracy of the MLP on random-shade images.
ROSS_2017 = {"no annotations": 0.5155, "input-gradient penalty (λ = 1000)": 0.9607, "clean MNIST baseline": 0.9611}
ARMS = {"no annotations": 0.0, "input-gradient penalty": 1000.0}


class RossMLP(nn.Module):
    """Ross et al.'s MLP: 784 → 50 → 30 → 10, ReLU, linear output; [B, 1, 28, 28] raw 0–255 → logits [B, 10].
    Weights and biases from N(0, 0.1²) (their ``init_random_params(0.1, ...)``)."""

    def __init__(self, layers=(50, 30), inputs: int = 784, classes: int = 10) -> None:
        super().__init__()
        sizes = (inputs, *layers, classes)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for lin in self.linears:
            nn.init.normal_(lin.weight, 0.0, 0.1)
            nn.init.normal_(lin.bias, 0.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = torch.relu(h)
        return h


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Share of ``x`` (uint8 [N, 1, 28, 28]) predicted as ``y`` [N]."""
    with torch.no_grad():
        right = sum(int((model(x[i:i + batch].float()).argmax(1) == y[i:i + batch]).sum())
                    for i in range(0, len(y), batch))
    return right / len(y)


def train(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, *, lam: float, seed: int, epochs: int,
          batch_size: int = 256, lr: float = 1e-3, l2_params: float = 1e-4) -> nn.Module:
    """Ross's ``MultilayerPerceptron.fit``: fixed batch order, loss summed over the batch (module docstring).
    x uint8 [N, 1, 28, 28] (used raw, 0–255); y [N]; masks bool [N, 28, 28] (read only when ``lam`` > 0)."""
    torch.manual_seed(seed)
    model = RossMLP()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xf = x.float()
    for _ in range(epochs):
        for i in range(0, len(y), batch_size):
            xb = xf[i:i + batch_size].detach().requires_grad_(lam > 0)
            yb = y[i:i + batch_size]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if lam > 0:
                loss = loss + lam * input_gradient_penalty(logits, xb, masks[i:i + batch_size])
            loss = len(yb) * loss + l2_params * sum(p.pow(2).sum() for p in model.parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=64, help="Ross's default: 64")
    p.add_argument("--n-train", type=int, default=None, help="a subset of the training images (default: all 60 000)")
    p.add_argument("--out", default=str(REPO / "results" / "bench"), help="folder of the record")
    p.add_argument("--root", default=None, help="data folder (default: batchcam.data.default_data_root())")
    args = p.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(args.out) / f"calibration-decoy-{stamp}.json"
    if path.exists():
        sys.exit(f"{path} exists; it is never overwritten")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    clean_train = load_split("mnist", True, root=args.root, n=args.n_train, seed=0)
    clean_test = load_split("mnist", False, root=args.root)
    x, info = make_decoy(*clean_train, train=True, seed=DECOY_SEEDS["train"])
    xt, tinfo = make_decoy(*clean_test, train=False, seed=DECOY_SEEDS["test"])
    twin = paint_patch(clean_test[0], tinfo["mask"], clean_test[1])  # shade 255 − 25·y at the same positions
    y, yt = clean_train[1], clean_test[1]
    runs, started = [], time.perf_counter()
    for seed in args.seeds:
        for arm, lam in ARMS.items():
            t0 = time.perf_counter()
            model = train(x, y, info["mask"], lam=lam, seed=seed, epochs=args.epochs)
            row = {"seed": seed, "arm": arm, "lambda": lam, "random_accuracy": accuracy(model, xt, yt),
                   "consistent_accuracy": accuracy(model, twin, yt), "clean_accuracy": accuracy(model, *clean_test),
                   "train_accuracy": accuracy(model, x, y), "train_time_s": time.perf_counter() - t0}
            row["reliance"] = row["consistent_accuracy"] - row["random_accuracy"]
            runs.append(row)
            print(f"seed {seed} {arm:24s} random {row['random_accuracy']:.4f} consistent "
                  f"{row['consistent_accuracy']:.4f} clean {row['clean_accuracy']:.4f} "
                  f"({row['train_time_s']:.0f} s)", flush=True)
    summary = {arm: {k: sum(r[k] for r in runs if r["arm"] == arm) / len(args.seeds)
                     for k in ("random_accuracy", "consistent_accuracy", "clean_accuracy", "reliance")}
               for arm in ARMS}
    record = {"kind": "calibration-decoy", "chapter": 8,
              "setting": {"model": "MLP 784-50-30-10 ReLU, N(0, 0.1²) init", "inputs": "raw 0-255",
                          "optimizer": "adam", "lr": 1e-3, "batch_size": 256, "order": "fixed (Ross)",
                          "epochs": args.epochs, "l2_params": 1e-4, "loss": "summed over the batch (Ross)",
                          "n_train": len(y), "n_test": len(yt), "decoy": "ross4", "decoy_seeds": DECOY_SEEDS,
                          "seeds": args.seeds, "arms": ARMS},
              "runs": runs, "summary": summary, "ross_2017": ROSS_2017,
              "wall_s": time.perf_counter() - started, "load_average_1min_at_start": load,
              "torch_threads": torch.get_num_threads(), "provenance": provenance("cpu")}
    if path.exists():
        sys.exit(f"{path} exists; it is never overwritten")
    atomic_write_json(path, record)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
