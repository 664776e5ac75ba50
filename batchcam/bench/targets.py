"""The speed and correctness targets, evaluated on a record."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .config import BenchConfig, ModelCase, REFERENCE


@dataclass(frozen=True)
class Target:
    """One speed or correctness target of the issue."""

    name: str
    description: str
    op: str  # "<=" or ">="
    threshold: float

    def met(self, value: Optional[float]) -> Optional[bool]:
        if value is None:
            return None
        return value <= self.threshold if self.op == "<=" else value >= self.threshold


TARGETS = {
    "batch_vs_forward": Target("batch_vs_forward", "batch_gradcam / forward (no_grad) at the target batch",
                               "<=", 1.05),
    "pytorch_grad_cam_vs_batch": Target("pytorch_grad_cam_vs_batch",
                                        "pytorch_grad_cam / batch_gradcam at the target batch", ">=", 3.0),
    "batch_vs_captum": Target("batch_vs_captum", "batch_gradcam / captum at the target batch", "<=", 1.0),
    "train_overhead": Target("train_overhead", "ce+proto+batchcam step / ce step (SimpleCNN, ResNet-18)",
                             "<=", 1.15),
    "maps_equal": Target("maps_equal", "max abs difference of the min-max normalised maps to batch_gradcam",
                         "<=", 1e-5),
}
TRAIN_TARGET_MODELS = ("simplecnn", "resnet18")


def _target_row(target: Target, value: Optional[float], where: dict, reason: str = "") -> dict:
    row = {"target": target.name, "description": target.description, **where, "value": value, "op": target.op,
           "threshold": target.threshold, "met": target.met(value)}
    if reason:
        row["reason"] = reason
    return row


def _cam_target_rows(entry: Optional[dict], where: dict, reason: str) -> list[dict]:
    ratio = (lambda base, name: (entry or {}).get("ratios", {}).get(base, {}).get(name))
    values = {
        "batch_vs_forward": ratio("to_forward", REFERENCE),
        "pytorch_grad_cam_vs_batch": ratio("to_batch_gradcam", "pytorch_grad_cam"),
        "batch_vs_captum": (1 / ratio("to_batch_gradcam", "captum")) if ratio("to_batch_gradcam", "captum") else None,
    }
    return [_target_row(TARGETS[k], v, where, "" if v is not None else reason or "method not measured")
            for k, v in values.items()]


def evaluate_targets(record: dict, cfg: BenchConfig) -> list[dict]:
    """One row per target and configuration: the measured value, the threshold and whether it is met
    (``met`` None with a ``reason`` when the configuration was not measured)."""
    rows: list[dict] = []
    skipped = {(s["kind"], s["model"], s["image_size"], s["batch_size"]): s["reason"] for s in record["skipped"]}
    cams = {(e["model"], e["image_size"], e["batch_size"]): e for e in record["cam"]}
    for text in cfg.models:
        mc = ModelCase.parse(text)
        key, where = (mc.name, mc.size, cfg.target_batch), {"model": mc.name, "image_size": mc.size,
                                                            "batch_size": cfg.target_batch}
        reason = skipped.get(("cam",) + key, "" if cfg.target_batch in cfg.batch_sizes
                             else f"batch size {cfg.target_batch} not in this run")
        rows += _cam_target_rows(cams.get(key), where, reason)
    for e in record["cam"]:
        eq = e["equality"] or {}
        diffs = [v["max_abs_diff"] for v in eq.get("methods", {}).values()]
        value = None if not diffs or None in diffs else max(diffs)
        row = _target_row(replace(TARGETS["maps_equal"], threshold=cfg.atol), value,
                          {"model": e["model"], "image_size": e["image_size"], "batch_size": e["batch_size"]},
                          "" if value is not None else "no comparable maps (or a shape mismatch)")
        row["met"] = bool(eq.get("pass")) if eq else None
        rows.append(row)
    rows += _train_target_rows(record, cfg)
    return rows


def _train_target_rows(record: dict, cfg: BenchConfig) -> list[dict]:
    rows = []
    trains = {(e["model"], e["image_size"]): e for e in record["training"]}
    skipped = {(s["model"], s["image_size"]): s["reason"] for s in record["skipped"] if s["kind"] == "train"}
    for text in cfg.train_models:
        mc = ModelCase.parse(text)
        if mc.name not in TRAIN_TARGET_MODELS:
            continue
        entry = trains.get((mc.name, mc.size))
        for d in cfg.distances:
            where = {"model": mc.name, "image_size": mc.size, "batch_size": cfg.train_batch, "distance": d}
            step = next((s for s in (entry or {}).get("steps", [])
                         if s["objective"] == "ce+proto+batchcam" and s["distance"] == d), None)
            rows.append(_target_row(TARGETS["train_overhead"], step and step["ratio_to_ce"], where,
                                    "" if step else skipped.get((mc.name, mc.size), "not measured")))
    return rows
