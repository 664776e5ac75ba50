"""``TrainConfig``: everything that defines one training run, validated once, here (chapter 6).

A run is identified by its whole configuration: :attr:`TrainConfig.run_id` is a readable name
plus a hash of every field that changes the result (:meth:`TrainConfig.result_fields`), so two
runs that could differ never share a record. :meth:`TrainConfig.validate` checks every value
before any work starts; :meth:`TrainConfig.check_ready` also builds the model once to check the
Grad-CAM layer and tries the output folders. Inner functions trust a validated config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ._helpers import resolve_device, unknown_choice
from .cam import SampleMixingError, batch_gradcam_with_logits
from .data import DATASETS, ORDERS
from .decoy import DECOY_PATCHES
from .losses import ALL_OBJECTIVES, CAM_NORMALIZE, DISTANCES, LAMBDA_RRR_INPUT, Objective
from .methods import list_methods
from .models import MODEL_SPECS, create_model, list_models

__all__ = ["TrainConfig", "OPTIMIZERS", "NUM_CLASSES", "SSIM_MIN_SIZE"]

OPTIMIZERS = ("adam", "sgd", "adamw")
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60_000, "test": 10_000}  # both datasets
SSIM_MIN_SIZE = 11  # the SSIM metric's Gaussian window: every run reports SSIM
#: Fields that never change a run's numbers (paths, how long the per-image loop is timed).
NOT_RESULT_FIELDS = ("device", "data_root", "out_dir", "eval_cam_loop_samples", "selected_on")
#: Fields added after the first records, with the value every older record had: at that value
#: they stay out of the run id's hash, so older run ids (and their records) keep their names.
LATER_FIELDS = {"decoy": "none", "prototype_source": "train", "lambda_rrr": 1.0, "stop_gradient": True,
                "cam_normalize": "max", "n_val": 0, "order": "seed+epoch", "cam_method": "gradcam",
                "decoy_patch": "ross4", "amp_dtype": "bf16", "permute_labels": None}
#: Fields that exist for one objective only: in its run ids always (so a later change of their default can
#: never give two different runs one id), in no other run's hash.
OBJECTIVE_FIELDS = {"lambda_rrr_input": "ce+rrr-input"}
PROTOTYPE_SOURCES = ("train", "clean", "ce-maps")  # chapter 8
DECOY = ("none", "train+test", "test")  # where the decoy patch is (chapter 9); "test": the clean oracle
#: Objectives that penalise the known decoy patch (chapter 9's oracles): they need --decoy train+test.
MASK_OBJECTIVES = ("ce+rrr", "ce+rrr-input")
AMP_DTYPES = ("bf16", "fp16")  # autocast dtypes of --amp on CUDA (batchcam._helpers.amp_autocast)
CAM_METHODS = tuple(list_methods())  # the losses' CAM method (batchcam.methods' registry at import)
#: Ceilings of the sizes a run accepts (larger values are typos, or need more than one machine has).
MAX_IMAGE_SIZE, MAX_BATCH_SIZE, MAX_EPOCHS = 512, 4096, 1000
#: Free disk space a run needs for its checkpoint and record (ConvNeXt-V2's checkpoint is ~340 MB).
MIN_FREE_BYTES = 512 * 2**20


def _field(default: Any, help: str, choices: Optional[Sequence[str]] = None) -> Any:
    """A dataclass field whose help text and choices the CLI reuses."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass
class TrainConfig:
    """Everything that defines one training run (chapter 6)."""

    dataset: str = _field("mnist", "dataset", DATASETS)
    model: str = _field("simplecnn", "architecture (batchcam.list_models())", list_models())
    objective: str = _field("ce+proto+batchcam", "cross-entropy plus which CAM terms", ALL_OBJECTIVES)
    distance: str = _field("l1", "distance d of both CAM losses", DISTANCES)
    lambda_proto: float = _field(1.0, "weight λ_P of the Prototype Loss")
    lambda_batchcam: float = _field(1.0, "weight λ_B of the Batch-CAM Loss")
    image_size: Optional[int] = _field(None, "input side in px; default: the model's (28; ConvNeXt-V2 112)")
    layer: Optional[str] = _field(None, "Grad-CAM layer (dotted name); default: the last conv stage")
    epochs: int = _field(2, "training epochs (0: evaluate the untrained model)")
    batch_size: int = _field(128, "training batch size (the Batch-CAM Loss averages maps per class)")
    optimizer: str = _field("adam", "optimiser", OPTIMIZERS)
    lr: float = _field(1e-3, "learning rate (constant)")
    weight_decay: float = _field(0.0, "weight decay")
    seed: int = _field(0, "seed of the weights, the data order and the training subset")
    device: str = _field("auto", "'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = _field(True, "autocast on CUDA in --amp-dtype (ignored on CPU)")
    channels_last: Optional[bool] = _field(None, "channels-last memory format; default: on CUDA only")
    n_train: Optional[int] = _field(None, "random training subset of this size (default: all)")
    n_test: Optional[int] = _field(None, "random test subset of this size (default: all)")
    data_root: Optional[str] = _field(None, "data folder (default: batchcam.data.default_data_root())")
    out_dir: str = _field("results", "records go to OUT_DIR/runs, checkpoints to OUT_DIR/checkpoints")
    eval_cam_loop_samples: int = _field(256, "test samples timed with the per-image loop (0: skip)")
    eval_faithfulness_samples: int = _field(500, "test samples scored by deletion/insertion AUC (0: skip)")
    decoy: str = _field("none", "Decoy-MNIST patches (chapter 8) in training and test, or in test only", DECOY)
    prototype_source: str = _field("train", "the Prototype Loss's prototypes: class-mean training images "
                                   "('train'), with --decoy train+test the clean ones ('clean'), or the "
                                   "class-mean maps of the ce model of this seed ('ce-maps')",
                                   PROTOTYPE_SOURCES)
    lambda_rrr: float = _field(1.0, "weight of the RRR-G penalty (objective ce+rrr)")
    stop_gradient: bool = _field(True, "stop the gradient through the Batch-CAM class means")
    cam_normalize: str = _field("max", "normalisation of the maps the losses train on", CAM_NORMALIZE)
    n_val: int = _field(0, "validation images carved from the training split (fixed, stratified, the same for "
                        "every seed): evaluated each epoch, the test set then read once at the end; 0: none")
    order: str = _field("seed+epoch", "seeding of each epoch's data order: 'seed,epoch' gives independent "
                        "replicates across seeds; 'seed+epoch' is the first records' rule", ORDERS)
    cam_method: str = _field("gradcam", "CAM method of the maps the losses train on", CAM_METHODS)
    decoy_patch: str = _field("ross4", "the decoy's patch (chapter 9): Ross et al.'s 4×4 grey level ('ross4'), an "
                              "8×8 grey level ('grey8') or a class-specific 6×6 binary texture ('texture6')",
                              tuple(DECOY_PATCHES))
    lambda_rrr_input: float = _field(LAMBDA_RRR_INPUT, "weight of Ross et al.'s input-gradient penalty (objective "
                                     "ce+rrr-input; [0, 1] inputs)")
    amp_dtype: str = _field("bf16", "autocast dtype of --amp on CUDA: 'bf16', or 'fp16' with a GradScaler for GPUs "
                            "without native bf16 (e.g. Colab's T4)", AMP_DTYPES)
    permute_labels: Optional[int] = _field(None, "data randomisation (chapter 8): train on the training labels "
                                           "permuted under this seed; validation and test labels stay true")
    selected_on: str = _field("", "how each choice of the recipe was made, e.g. 'lr=val;lambda=design' "
                              "(provenance, not part of the run id)")

    # ------------------------------------------------------------------ validation (the edge)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the bad field and the fix; return ``self``. Cheap: no model."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise unknown_choice(f.name.replace("_", "-"), getattr(self, f.name), choices)
        for name in ("batch_size", "n_train", "n_test", "image_size", "lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value!r}")
        for name in ("epochs", "lambda_proto", "lambda_batchcam", "weight_decay", "eval_cam_loop_samples",
                     "eval_faithfulness_samples", "lambda_rrr", "lambda_rrr_input"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value!r}")
        for name, ceiling in (("image_size", MAX_IMAGE_SIZE), ("batch_size", MAX_BATCH_SIZE),
                              ("epochs", MAX_EPOCHS)):
            value = getattr(self, name)
            if value is not None and value > ceiling:
                raise ValueError(f"--{name.replace('_', '-')} {value} is above the ceiling {ceiling}; "
                                 f"use at most {ceiling}")
        if self.permute_labels is not None and not (isinstance(self.permute_labels, int)
                                                    and not isinstance(self.permute_labels, bool)
                                                    and self.permute_labels >= 0):
            raise ValueError(f"--permute-labels must be an integer seed ≥ 0, got {self.permute_labels!r}")
        if not isinstance(self.n_val, int) or not 0 <= self.n_val < SPLIT_SIZES["train"] or self.n_val % NUM_CLASSES:
            raise ValueError(f"--n-val must be a multiple of {NUM_CLASSES} in 0..{SPLIT_SIZES['train'] - NUM_CLASSES} "
                             f"(a stratified split), got {self.n_val!r}")
        if self.n_val and self.n_train is not None and self.n_train + self.n_val > SPLIT_SIZES["train"]:
            raise ValueError(f"--n-train {self.n_train} + --n-val {self.n_val} exceed the training split "
                             f"({SPLIT_SIZES['train']} images); lower one of them")
        for name, split in (("n_train", "train"), ("n_test", "test")):
            value, total = getattr(self, name), SPLIT_SIZES[split]
            if value is not None and value > total:
                raise ValueError(f"--{name.replace('_', '-')} {value} is larger than the {split} split "
                                 f"({total} images); use at most {total} or leave it out for all")
        if self.n_train is not None and self.n_train < 2:
            raise ValueError("--n-train must be ≥ 2 (BatchNorm needs two samples per batch)")
        if self.objective in MASK_OBJECTIVES and self.decoy != "train+test":
            raise ValueError(f"--objective {self.objective} penalises the decoy patch: it needs --decoy train+test")
        if self.objective == "ce+rrr-input" and world_size() > 1:
            raise ValueError("--objective ce+rrr-input runs two forwards a step, which DistributedDataParallel "
                             "does not support; run it without torchrun")
        if self.decoy_patch != "ross4" and self.decoy == "none":
            raise ValueError(f"--decoy-patch {self.decoy_patch} changes the decoy: use it with --decoy train+test "
                             "or --decoy test")
        if self.permute_labels is not None and self.decoy != "none":
            raise ValueError("--permute-labels is the data randomisation check of clean data; leave out --decoy")
        if self.prototype_source == "clean" and self.decoy != "train+test":
            raise ValueError("--prototype-source clean differs from 'train' only with --decoy train+test")
        if self.prototype_source != "train" and "proto" not in self.objective:
            raise ValueError(f"--prototype-source {self.prototype_source} changes only the Prototype Loss; "
                             "use an objective with it (ce+proto, ce+proto+batchcam)")
        spec = MODEL_SPECS[self.model]
        size = self.image_size or spec.image_size
        least = max(spec.min_size, SSIM_MIN_SIZE)
        if size < least:
            raise ValueError(f"--image-size {size} is too small for {self.model} and the SSIM metric; "
                             f"use at least {least}")
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"--device {self.device!r}: {exc}") from None
        return self

    def check_ready(self) -> "TrainConfig":
        """Checks that need more than the values: the layer exists and outputs [B, K, h, w] (one
        forward of a 2-image batch on CPU), and the record and checkpoint folders are writable."""
        config = self.resolved()
        model = create_model(config.model, NUM_CLASSES, 1, config.image_size).eval()
        seen = {}
        try:
            module = model.get_submodule(config.layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n and n.count(".") < 2]
            raise unknown_choice("layer", config.layer, names) from None
        handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
        with torch.no_grad():
            model(torch.zeros(2, 1, config.image_size, config.image_size))
        handle.remove()
        out = seen.get("out")
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ValueError(f"--layer {config.layer!r} does not output a 4-D feature map [B, K, h, w]; "
                             f"use a convolutional stage such as {MODEL_SPECS[config.model].target_layer!r}")
        if config.objective_spec().needs_cam:  # training maps: is there a train-mode BatchNorm after it?
            try:
                batch_gradcam_with_logits(model.train(), torch.rand(2, 1, config.image_size, config.image_size),
                                          config.layer, torch.tensor([0, 1]))
            except SampleMixingError as exc:
                raise ValueError(f"--layer {config.layer!r}: {exc}. A loss needs a layer with no BatchNorm "
                                 f"after it in training, e.g. {MODEL_SPECS[config.model].target_layer!r}") from None
        for folder in (Path(config.out_dir) / "runs", Path(config.out_dir) / "checkpoints"):
            _check_writable(folder)
            free = shutil.disk_usage(folder).free
            if free < MIN_FREE_BYTES:  # checked before training, not after an hour of it
                raise ValueError(f"only {free / 2**20:.0f} MiB free in {folder}; a run's checkpoints and record need "
                                 f"{MIN_FREE_BYTES / 2**20:.0f} MiB: free some space or choose another --out-dir")
        return config

    def resolved(self) -> "TrainConfig":
        """A validated copy with ``image_size`` and ``layer`` filled in from the model's defaults."""
        self.validate()
        spec = MODEL_SPECS[self.model]
        return dataclasses.replace(self, image_size=self.image_size or spec.image_size,
                                   layer=self.layer or spec.target_layer)

    # ------------------------------------------------------------------ identity

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"`` (what ``device`` resolves to here)."""
        return resolve_device(self.device).type

    def result_fields(self) -> dict:
        """Every field that can change the run's numbers, resolved (defaults filled in, amp and
        channels_last as they take effect), plus the device type. Hashed into :attr:`run_id`."""
        c = self.resolved()
        fields = {k: v for k, v in asdict(c).items()
                  if k not in NOT_RESULT_FIELDS and (k not in LATER_FIELDS or v != LATER_FIELDS[k])
                  and OBJECTIVE_FIELDS.get(k, c.objective) == c.objective}
        cuda = c.device_type == "cuda"
        fields.update(device_type=c.device_type, amp=bool(c.amp) and cuda,
                      channels_last=cuda if c.channels_last is None else bool(c.channels_last))
        if not fields["amp"]:  # the dtype of an autocast that does not run changes nothing
            fields.pop("amp_dtype", None)
        if world_size() > 1:  # DDP on CPU does not give a single process's numbers (chapter 7)
            fields["world_size"] = world_size()
        return fields

    @property
    def config_hash(self) -> str:
        """First 8 hex digits of the SHA-256 of :meth:`result_fields` (sorted JSON)."""
        return _digest(self.result_fields())

    @property
    def run_id(self) -> str:
        """Readable and unique, e.g. ``mnist-simplecnn-ce+proto+batchcam-l1-s28-e2-seed0-cpu-1a2b3c4d``.

        The readable part names the grid axes, subsets and non-default λ or layer; the hash covers
        every field that changes the result (lr, batch size, optimiser, ...), so ``--lr 0.05`` is
        another run, never an overwrite.
        """
        c = self.resolved()
        parts = [c.dataset, c.model, c.objective, c.distance, f"s{c.image_size}", f"e{c.epochs}",
                 f"seed{c.seed}"]
        if c.lambda_proto != 1.0:
            parts.append(f"lp{c.lambda_proto:g}")
        if c.lambda_batchcam != 1.0:
            parts.append(f"lb{c.lambda_batchcam:g}")
        if c.layer != MODEL_SPECS[c.model].target_layer:
            parts.append(f"L{c.layer}")
        later = {"decoy": {"train+test": "decoy", "test": "decoytest"}.get(c.decoy),
                 "prototype_source": {"clean": "pclean", "ce-maps": "pcemaps"}.get(c.prototype_source),
                 "lambda_rrr": f"lr{c.lambda_rrr:g}", "stop_gradient": "nosg",
                 "cam_normalize": c.cam_normalize, "n_val": f"val{c.n_val}", "order": "ose",
                 "cam_method": c.cam_method, "decoy_patch": c.decoy_patch, "amp_dtype": c.amp_dtype,
                 "permute_labels": f"perm{c.permute_labels}"}
        effective = self.result_fields()  # a later field is named exactly when it changes the numbers
        parts += [later[k] for k in LATER_FIELDS if k in effective]
        parts += [f"lri{c.lambda_rrr_input:g}"] * (c.objective == OBJECTIVE_FIELDS["lambda_rrr_input"])
        parts += [f"ntr{c.n_train}"] * bool(c.n_train) + [f"nte{c.n_test}"] * bool(c.n_test)
        parts += [f"ws{world_size()}"] * (world_size() > 1)
        return "-".join(parts + [c.device_type, _digest(effective)])

    def objective_spec(self) -> Objective:
        """The :class:`~batchcam.losses.Objective` this config trains with."""
        return Objective.from_name(self.objective, self.distance, self.lambda_proto, self.lambda_batchcam,
                                   NUM_CLASSES, lambda_rrr=self.lambda_rrr, stop_gradient=self.stop_gradient,
                                   normalize=self.cam_normalize, cam_method=self.cam_method,
                                   lambda_rrr_input=self.lambda_rrr_input)


def _digest(fields: dict) -> str:
    """First 8 hex digits of the SHA-256 of ``fields`` as sorted JSON (:attr:`TrainConfig.config_hash`)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def world_size() -> int:
    """Processes of this run: torchrun's ``WORLD_SIZE`` (with ``RANK`` set), else 1 (chapter 7)."""
    if "RANK" not in os.environ:
        return 1
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write to {folder} ({exc.strerror or exc}); "
                         "choose another --out-dir or fix its permissions") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write to {folder}; choose another --out-dir")
