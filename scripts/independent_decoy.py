"""An independent re-implementation of the decoy verdict grid's positive control (chapter 9).

    python scripts/independent_decoy.py                    # MNIST, seeds 0 1 2: results/bench/
    python scripts/independent_decoy.py --dataset fashion-mnist --seeds 0
    python scripts/independent_decoy.py --out /tmp/try     # the record goes to /tmp/try instead

What it shares with the package: the raw MNIST / Fashion-MNIST arrays (``batchcam.data.load_split``) and
the SimpleCNN architecture (``batchcam.create_model``), nothing else. The decoy is rebuilt here from its
description in chapter 9 with NumPy and its own random draws: ten fixed binary 6 × 6 textures, one per
class (fair coins, redrawn until distinct and non-uniform), pasted into a corner chosen by two fair coins;
the texture names the label in training and a random class in test. Training is a plain PyTorch loop
with the decoy verdict grid's recipe (Adam, learning rate 2e-3, batch 128, 2 epochs, 20 000 training
images drawn per seed from outside a 6 000-image hold-out, as the grid's validation split is kept out),
without the package's loader, loss, BatchNorm recalibration or evaluation code. Reliance is computed
here as the grid defines it: accuracy on the test images with label-consistent textures minus accuracy
on the same images and places with random-class textures.

The check (issue: "an independent re-implementation ... lands within the reported interval of ``ce``'s
reliance"): when the decoy verdict grid's ``ce`` cell is recorded, the script prints its 95 % interval
(mean ± t·sd/√n over its seeds) and whether this implementation's mean reliance falls inside. The record
goes to ``<out>/independent-decoy-<dataset>-<UTC>.json`` with provenance; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchcam import create_model  # noqa: E402
from batchcam.data import load_split  # noqa: E402
from batchcam.results import provenance, results_root, write_bench_record  # noqa: E402

PATCH, HOLD_OUT, EPOCHS, BATCH, LR = 6, 6_000, 2, 128, 2e-3


def textures(rng: np.random.Generator) -> np.ndarray:
    """uint8 [10, 6, 6] in {0, 255}: one binary texture per class, distinct and non-uniform."""
    while True:
        t = rng.integers(0, 2, size=(10, PATCH, PATCH), dtype=np.uint8) * 255
        flat = t.reshape(10, -1)
        if len({r.tobytes() for r in flat}) == 10 and not (flat.min(1) == flat.max(1)).any():
            return t


def paste(images: np.ndarray, corner: np.ndarray, cls: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """A copy of ``images`` [N, 1, 28, 28] with texture ``tex[cls[n]]`` in corner ``corner[n]`` (0-3:
    top-left, top-right, bottom-left, bottom-right)."""
    out = images.copy()
    side = images.shape[-1]
    for n, (c, k) in enumerate(zip(corner, cls)):
        r0 = (side - PATCH) * (c // 2)
        c0 = (side - PATCH) * (c % 2)
        out[n, 0, r0:r0 + PATCH, c0:c0 + PATCH] = tex[k]
    return out


def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(labels), 1000):
            x = torch.from_numpy(images[i:i + 1000]).float() / 255
            right += int((model(x).argmax(1).numpy() == labels[i:i + 1000]).sum())
    return right / len(labels)


def one_seed(dataset: str, seed: int, root, n_train: int = 20_000) -> dict:
    rng = np.random.default_rng([2026, seed])  # this script's own stream: not the package's seeds
    tex = textures(np.random.default_rng(7))  # the same ten textures for every seed, as in the grid
    x, y = (t.numpy() for t in load_split(dataset, True, root=root))
    xt, yt = (t.numpy() for t in load_split(dataset, False, root=root))
    order = np.random.default_rng(11).permutation(len(y))  # a fixed hold-out, kept out of training
    pool = order[HOLD_OUT:]
    idx = rng.choice(pool, size=n_train, replace=False)
    xtr = paste(x[idx], rng.integers(0, 4, n_train), y[idx], tex)
    ytr = y[idx]
    corner_t, random_t = rng.integers(0, 4, len(yt)), rng.integers(0, 10, len(yt))
    consistent, random_ = paste(xt, corner_t, yt, tex), paste(xt, corner_t, random_t, tex)

    torch.manual_seed(seed)
    model = create_model("simplecnn", 10, 1, 28)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        perm = rng.permutation(n_train)
        for i in range(0, n_train - BATCH + 1, BATCH):  # full batches only (BatchNorm)
            b = perm[i:i + BATCH]
            loss = F.cross_entropy(model(torch.from_numpy(xtr[b]).float() / 255), torch.from_numpy(ytr[b]).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    acc = {"clean": accuracy(model, xt, yt), "consistent": accuracy(model, consistent, yt),
           "random": accuracy(model, random_, yt)}
    return {"seed": seed, **{f"{k}_accuracy": v for k, v in acc.items()},
            "reliance": acc["consistent"] - acc["random"], "train_s": time.perf_counter() - t0}


def grid_interval(dataset: str) -> dict | None:
    """The decoy verdict grid's ``ce`` reliance over its recorded seeds: mean, 95 % t interval, n."""
    from batchcam.grid import VERDICT_SEEDS, decoy_verdict_cell
    from batchcam.results import load_runs
    from batchcam.rulers import mean_interval

    rel = [r["decoy_reliance"] for r in load_runs() if r["dataset"] == dataset and decoy_verdict_cell(r) == "ce"
           and r["seed"] in VERDICT_SEEDS]  # the grid's seeds, not the λ-tuning control (seed 100)
    if len(rel) < 2:
        return None
    mean, low, high = mean_interval(rel)
    return {"mean": mean, "low": low, "high": high, "n": len(rel)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="folder of the record (default: results/bench)")
    p.add_argument("--root", default=None, help="data folder (default: batchcam.data.default_data_root())")
    p.add_argument("--n-train", type=int, default=20_000, help="training images (the grid's: 20 000)")
    args = p.parse_args(argv)
    if not args.seeds or min(args.seeds) < 0 or not BATCH <= args.n_train <= 60_000 - HOLD_OUT:
        p.error(f"--seeds: one or more seeds >= 0; --n-train in {BATCH}..{60_000 - HOLD_OUT}")
    rows = []
    for seed in args.seeds:
        rows.append(one_seed(args.dataset, seed, args.root, args.n_train))
        r = rows[-1]
        print(f"seed {seed}: reliance {r['reliance']:.3f} (consistent {r['consistent_accuracy']:.4f}, "
              f"random {r['random_accuracy']:.4f}, clean {r['clean_accuracy']:.4f}), {r['train_s']:.0f} s")
    mean = statistics.mean(r["reliance"] for r in rows)
    ref = grid_interval(args.dataset)
    inside = None if ref is None else bool(ref["low"] <= mean <= ref["high"])
    record = {"kind": "batchcam-independent-decoy", "dataset": args.dataset, "patch": f"texture{PATCH}",
              "recipe": {"n_train": args.n_train, "hold_out": HOLD_OUT, "epochs": EPOCHS, "batch_size": BATCH,
                         "lr": LR, "optimizer": "adam"},
              "seeds": rows, "mean_reliance": mean, "grid_ce_reliance": ref, "inside_grid_interval": inside,
              "provenance": provenance(torch.device("cpu")),
              "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = write_bench_record(record, device_type="cpu", root=args.out or results_root("bench"),
                             name=f"independent-decoy-{args.dataset}")
    print(f"mean reliance {mean:.3f} over {len(rows)} seed(s); grid ce: "
          + ("not recorded yet" if ref is None else
             f"{ref['mean']:.3f} [{ref['low']:.3f}, {ref['high']:.3f}] (n = {ref['n']}): "
             f"{'inside' if inside else 'outside'}"))
    print(f"record: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
