"""Time deletion + insertion AUC over the test set (chapter 8's speed figure) and record it.

    python scripts/bench_faithfulness.py              # 10 000 MNIST test images, 28 steps
    python scripts/bench_faithfulness.py --n 2000     # 2 000 images, times scaled to 10 000

The model is chapter 8's small SimpleCNN (``ce``, one epoch on 6 000 digits, cached by
``batchcam.zoo.cached_fit``); its Grad-CAM maps of the true classes are scored with
``faithfulness.deletion_insertion`` (zero baseline) three ways: the eager model (on the first
``--n-eager`` images only: it is the slow reference), the TorchScript inference copy
(``inference_model(backend="jit")``, float32) and the ``torch.compile`` copy in bfloat16 (on all
``--n``). Each is timed once after a warm-up on 64 images; the AUCs of the fast copies are
compared with the eager ones on the images both scored. The record goes to
``results/bench/faithfulness-<device>-<UTC>.json`` with provenance and the load average when it
started (an idle machine reads ~0).
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

import batchcam as bc  # noqa: E402
from batchcam import data  # noqa: E402
from batchcam._helpers import atomic_write_json  # noqa: E402
from batchcam.faithfulness import deletion_insertion, inference_model  # noqa: E402
from batchcam.provenance import provenance  # noqa: E402
from batchcam.zoo import cached_fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="test images (default: all 10 000)")
    parser.add_argument("--n-eager", type=int, default=1000, help="images for the eager model")
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    if not 64 <= args.n <= 10_000 or not 64 <= args.n_eager <= args.n or args.steps < 1:
        sys.exit("--n must be in 64..10000, --n-eager in 64..n and --steps ≥ 1")
    load = os.getloadavg()[0]
    config = bc.TrainConfig(dataset="mnist", model="simplecnn", objective="ce", epochs=1, n_train=6000,
                            n_test=1000, device="cpu", eval_cam_loop_samples=0)
    model, _ = cached_fit(config)  # chapter 8's small model
    model.eval()
    x, y = data.load_split("mnist", train=False, n=args.n, seed=0)
    x = x.float() / 255
    maps = torch.cat([bc.batch_gradcam(model, x[i:i + 1000], "features", y[i:i + 1000])
                      for i in range(0, len(y), 1000)])
    ways = {"eager float32": model,
            "TorchScript float32": inference_model(model, x[:64], backend="jit"),
            "torch.compile bfloat16": inference_model(model, x[:64], dtype=torch.bfloat16)}
    rows, ref = [], None
    for name, fn in ways.items():
        n = args.n_eager if name.startswith("eager") else args.n
        deletion_insertion(fn, x[:64], maps[:64], y[:64], steps=args.steps)  # warm-up
        t0 = time.perf_counter()
        res = deletion_insertion(fn, x[:n], maps[:n], y[:n], steps=args.steps)
        wall = time.perf_counter() - t0
        ref = ref or res
        m = args.n_eager
        diff = max(float((res[k][:m] - ref[k][:m]).abs().max()) for k in ("deletion", "insertion"))
        rows.append({"way": name, "n": n, "wall_s": wall, "images_per_s": n / wall,
                     "seconds_for_10k": wall * 10_000 / n, "measured_on_all": n == 10_000,
                     "deletion_mean": float(res["deletion"].mean()), "insertion_mean": float(res["insertion"].mean()),
                     "max_abs_auc_diff_vs_eager": diff})
        print(f"{name:24s} {n:6d} img {wall:7.1f} s  ({n / wall:6.0f} img/s)  max |ΔAUC| vs eager {diff:.1e}")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"kind": "faithfulness-speed", "config": {"n": args.n, "steps": args.steps, "baseline": "zero",
                                                      "model": config.run_id, "torch_threads": torch.get_num_threads()},
              "load_average_at_start": load, "rows": rows, "provenance": provenance("cpu")}
    path = atomic_write_json(REPO / "results" / "bench" / f"faithfulness-cpu-{stamp}.json", record)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
