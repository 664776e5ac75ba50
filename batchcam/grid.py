"""The experiment grids as lists of ``TrainConfig`` (chapters 7 and 8).

``paper``: {MNIST, Fashion-MNIST} × {SimpleCNN, ResNet-18, ConvNeXt-V2-Tiny} × the four
objectives × seeds, plus ``random`` cells (``epochs=0``: the untrained model, a baseline).
``ablations`` (chapter 8): the paper cell of SimpleCNN with one of the choices the paper leaves
open changed (``ABLATIONS``: the loss weights, the distance, the Grad-CAM layer).
Image sizes follow the paper's figures (28 px; ConvNeXt-V2 at 112 px). The paper does not give
its training budget; the per-model defaults below are ours and each can be overridden
(``python -m batchcam reproduce --epochs N ...``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from .config import LATER_FIELDS, TrainConfig
from .data import DATASETS
from .losses import OBJECTIVES
from .results import is_complete, results_root

__all__ = ["GRID_MODELS", "MODEL_DEFAULTS", "EVAL_SETTINGS", "ABLATIONS", "ABLATION_RECIPE", "DECOY_CELLS", "GRIDS",
           "paper_grid", "ablation_grid", "decoy_grid", "decoy_cell", "pending", "variant", "VERDICT_SEEDS",
           "VERDICT_PROTOCOL",
           "SELECTED_ON", "LR_CANDIDATES", "TUNING_SEED", "tuning_grid", "select_lr", "verdict_grid",
           "DECOY_CONTROL", "DECOY_VERDICT_CELLS", "DECOY_VERDICT_RECIPE", "decoy_verdict_grid", "decoy_verdict_cell",
           "ORACLE_LAMBDAS", "ORACLE_SHARE", "decoy_tuning_grid", "choose_oracle_lambda", "select_oracle_lambda"]

GRID_MODELS = ("simplecnn", "resnet18", "convnextv2_tiny")

#: Per-model training defaults of the grid (our choices; the paper does not state them).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # lr 2e-3, not 1e-3: chosen on Fashion-MNIST test accuracy of ce, seeds 0-2 (89.1-89.6 % against
    # 88.3-89.1 % at 1e-3; chapter 6 says so). The 1e-3 records stay: chapter 8's ablations use them.
    "simplecnn": dict(image_size=28, epochs=2, batch_size=128, optimizer="adam", lr=2e-3),
    "resnet18": dict(image_size=28, epochs=3, batch_size=128, optimizer="adam", lr=1e-3),
    # ConvNeXt from scratch: AdamW with weight decay and a smaller learning rate (no warm-up).
    "convnextv2_tiny": dict(image_size=112, epochs=3, batch_size=128, optimizer="adamw", lr=3e-4,
                            weight_decay=0.05),
}
#: The grids' evaluation settings (the grid owns them, so that ``reproduce --dry-run`` names the run ids
#: its records carry): deletion/insertion and ROAD on 200 test images, the per-image loop timed on 64.
EVAL_SETTINGS: dict[str, Any] = dict(eval_faithfulness_samples=200, eval_cam_loop_samples=64)


def paper_grid(seeds: Sequence[int] = (0, 1, 2), datasets: Sequence[str] = DATASETS,
               models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
               random_baseline: bool = True, **overrides: Any) -> list[TrainConfig]:
    """Every configuration of the paper grid, validated (chapter 7).

    Ordered seed → model → dataset → objective, so a grid cut short has complete tables for the
    first seeds. With ``random_baseline`` each (seed, model, dataset) also gets an ``epochs=0``
    run of ``ce`` (the untrained model's maps). ``overrides`` (any ``TrainConfig`` field, e.g.
    ``epochs=2, device="cuda", n_train=1000``) replace the per-model defaults; ``None`` values
    are ignored.
    """
    models, objectives = models or GRID_MODELS, objectives or OBJECTIVES
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
    axes = set(overrides) & {"seed", "dataset", "model", "objective"}
    if axes:
        raise ValueError(f"{sorted(axes)} are grid axes: pass seeds=, datasets=, models=, objectives=")
    configs = []
    for seed in seeds:
        for model in models:
            for dataset in datasets:
                kwargs = {**EVAL_SETTINGS, **MODEL_DEFAULTS.get(model, {}), **overrides}
                cells = [(o, kwargs) for o in objectives]
                if random_baseline:
                    cells.append(("ce", {**kwargs, "epochs": 0, "eval_cam_loop_samples": 0}))
                for objective, kw in cells:
                    configs.append(TrainConfig(dataset=dataset, model=model, objective=objective,
                                               seed=seed, **kw).validate())
    return configs


#: Chapter 8's ablations that need no new code: name → the ``TrainConfig`` fields that change.
#: λ scales both loss weights; the layer ablation moves Grad-CAM from the last block of
#: SimpleCNN's features to the third (same 14 × 14 grid, receptive field 12 px) — for ``ce`` only:
#: a loss there would differentiate through block 4's BatchNorm in train mode, which mixes the
#: samples of a batch, and batch Grad-CAM refuses that (``SampleMixingError``, chapter 3).
#: Stop-gradient off and min-max maps change the training maps of the loss objective only; the
#: prototype source "ce-maps" replaces the class-mean images by the class-mean Grad-CAM maps of
#: the trained ``ce`` model of the same seed (``train.map_prototypes``).
ABLATIONS: dict[str, dict[str, Any]] = {
    **{f"λ={lam:g}": dict(lambda_proto=lam, lambda_batchcam=lam) for lam in (0.1, 0.3, 3.0, 10.0)},
    "distance=l2": dict(distance="l2"),
    "distance=ssim": dict(distance="ssim"),
    "layer=features.9": dict(layer="features.9"),
    "stop-gradient=off": dict(stop_gradient=False),
    "normalisation=minmax": dict(cam_normalize="minmax"),
    "prototypes=ce maps": dict(prototype_source="ce-maps"),
    # the losses with another CAM method (chapter 8's method rows: MNIST only, shown, not voted)
    **{f"cam={m}": dict(cam_method=m) for m in ("hirescam", "gradcam-elementwise", "gradcam++", "xgradcam",
                                                "layercam")},
}
#: The ablations keep the recipe of their first seed (lr 1e-3): the paper cells of that learning
#: rate, recorded for three seeds, are their reference (``MODEL_DEFAULTS`` moved on to 2e-3).
ABLATION_RECIPE: dict[str, Any] = dict(lr=1e-3)


def variant(config: Any) -> str:
    """The ablation a configuration (or a ``load_runs`` row) belongs to, ``"paper"`` for the
    paper's choices (λ = 1, L1, the default layer); chapter 8."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    for name, fields in ABLATIONS.items():
        if all(get(k) == v for k, v in fields.items()):
            return name
    return "paper"


def ablation_grid(seeds: Sequence[int] = (0, 1, 2), datasets: Sequence[str] = DATASETS,
                  models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
                  random_baseline: bool = False, **overrides: Any) -> list[TrainConfig]:
    """Every ablation of ``ABLATIONS`` for each (seed, dataset), validated (chapter 8).

    Default: SimpleCNN and ``ce+proto+batchcam``, plus ``ce`` at the ablated layer (its maps move);
    λ and the distance do not change ``ce`` and are skipped for it, and the layer ablation is
    ``ce``'s only (see ``ABLATIONS``). The paper cells themselves come from ``paper_grid`` at
    ``ABLATION_RECIPE`` (same run ids: they are shared). ``random_baseline`` is accepted for the
    command line and ignored.
    """
    models, objectives = models or ("simplecnn",), objectives or ("ce", "ce+proto+batchcam")
    overrides = {k: v for k, v in overrides.items() if v is not None}  # the CLI passes None: keep the recipe
    configs = []
    for name, fields in ABLATIONS.items():
        for objective in objectives:
            if (objective == "ce") != name.startswith("layer="):
                continue
            sets = [d for d in datasets if d == "mnist"] if name.startswith("cam=") else datasets
            if not sets:
                continue
            configs += paper_grid(seeds, sets, models, [objective], random_baseline=False,
                                  **{**ABLATION_RECIPE, **overrides, **fields})
    return sorted(configs, key=lambda c: (c.seed, c.dataset))  # a grid cut short has whole seeds


#: Chapter 8's Decoy-MNIST cells (Ross et al. 2017): name → ``TrainConfig`` fields. Prototypes come
#: from the decoyed training images (their class means carry the patch) or from the clean ones;
#: ``ce+rrr`` penalises the map inside the known patch (the annotation-using upper bound); the
#: oracle trains ``ce`` on clean images and is tested on decoyed ones.
DECOY_CELLS: dict[str, dict[str, Any]] = {
    **{o: dict(objective=o, decoy="train+test") for o in OBJECTIVES},
    **{f"{o}, clean prototypes": dict(objective=o, decoy="train+test", prototype_source="clean")
       for o in ("ce+proto", "ce+proto+batchcam")},
    "ce+rrr": dict(objective="ce+rrr", decoy="train+test"),
    "oracle: ce on clean images": dict(objective="ce", decoy="test"),
}


def _getter(config: Any):
    """``get(field)`` of a configuration or a ``load_runs`` row; a field a record predates reads as its
    :data:`~batchcam.config.LATER_FIELDS` value (the value every older record had)."""
    if isinstance(config, dict):
        return lambda k: config.get(k, LATER_FIELDS.get(k))
    return lambda k: getattr(config, k, LATER_FIELDS.get(k))


#: What the first decoy grid held fixed: Ross's patch, no validation split, the first records' order.
_FIRST_DECOY_PROTOCOL = dict(decoy_patch="ross4", n_val=0, order="seed+epoch")


def decoy_cell(config: Any) -> Optional[str]:
    """The :data:`DECOY_CELLS` name of a configuration or ``load_runs`` row, None if not a run of that
    grid (chapter 9): Ross's 4×4 patch, without a validation split, the first records' data order
    (the runs of :func:`decoy_verdict_grid` belong to :func:`decoy_verdict_cell`)."""
    get = _getter(config)
    for name, fields in DECOY_CELLS.items():
        if all(get(k) == v for k, v in {"prototype_source": "train", **_FIRST_DECOY_PROTOCOL, **fields}.items()):
            return name
    return None


def decoy_grid(seeds: Sequence[int] = (0, 1, 2), datasets: Sequence[str] = DATASETS,
               models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
               random_baseline: bool = False, **overrides: Any) -> list[TrainConfig]:
    """Every :data:`DECOY_CELLS` cell for each (seed, dataset), SimpleCNN by default, validated
    (chapter 8). ``objectives`` keeps the cells with those objectives; ``random_baseline`` is
    accepted for the command line and ignored."""
    configs = []
    for fields in DECOY_CELLS.values():
        if objectives is None or fields["objective"] in objectives:
            cell = {k: v for k, v in fields.items() if k != "objective"}
            configs += paper_grid(seeds, datasets, models or ("simplecnn",), [fields["objective"]],
                                  random_baseline=False, **{**overrides, **cell})
    return sorted(configs, key=lambda c: (c.seed, c.dataset))


#: The verdict protocol (chapter 7, fixed before its runs): 10 seeds per SimpleCNN cell, a fixed
#: validation split of 6 000 training images (600 per class) that every choice is made on, each
#: epoch's order from (seed, epoch), the test set read once at the end of each run. Only the learning
#: rate is tuned (on validation, ``tuning_grid``); λ, epochs, batch size and layer keep their design values.
VERDICT_SEEDS = tuple(range(10))
VERDICT_PROTOCOL: dict[str, Any] = dict(n_val=6000, order="seed,epoch", eval_faithfulness_samples=200)
SELECTED_ON = "lr=val;lambda=design;epochs=design;batch_size=design;layer=design;distance=design"
#: The learning rates tried, with ``ce`` and one seed kept apart from the verdict seeds (seed 100).
LR_CANDIDATES = (1e-3, 2e-3, 4e-3)
TUNING_SEED = 100


def tuning_grid(seeds: Sequence[int] = (TUNING_SEED,), datasets: Sequence[str] = DATASETS,
                models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
                random_baseline: bool = False, **overrides: Any) -> list[TrainConfig]:
    """The learning-rate choice on the validation split (chapter 7): ``ce`` of SimpleCNN at each of
    :data:`LR_CANDIDATES`, seed 100, the verdict protocol; no faithfulness or loop timing (not used).
    :func:`select_lr` reads the result. ``random_baseline`` is accepted and ignored."""
    overrides = {k: v for k, v in overrides.items() if v is not None and k != "lr"}
    fields = {**VERDICT_PROTOCOL, "eval_faithfulness_samples": 0, "eval_cam_loop_samples": 0,
              "selected_on": "design", **overrides}
    configs = []
    for lr in LR_CANDIDATES:
        configs += paper_grid(seeds, datasets, models or ("simplecnn",), objectives or ("ce",),
                              random_baseline=False, **{**fields, "lr": lr})
    return sorted(configs, key=lambda c: (c.seed, c.dataset, c.lr))


def _runs_folder(config: TrainConfig, root: Optional[str | Path]) -> Path:
    """Where a grid's records are: ``root``, else the committed records (``results_root("runs")``, found from
    any working directory, e.g. a notebook in ``book/``) for the default ``out_dir``, else ``out_dir/runs``."""
    if root is not None:
        return Path(root)
    return results_root("runs") if config.out_dir == "results" else Path(config.out_dir) / "runs"


def select_lr(dataset: str, root: Optional[str | Path] = None, **overrides: Any) -> tuple[float, dict]:
    """The learning rate of the verdict grid for ``dataset``: the candidate whose tuning run has the
    highest validation accuracy after its last epoch (ties: the smaller rate), and
    ``{lr: validation accuracy}`` (chapter 7). Raises ValueError when a tuning run is missing."""
    from .results import load_record

    scores = {}
    for config in tuning_grid(datasets=[dataset], **overrides):
        path = _runs_folder(config, root) / f"{config.run_id}.json"
        if not is_complete(config.run_id, path.parent):
            raise ValueError(f"the learning rate is chosen on validation runs that are not recorded yet "
                             f"({config.run_id}); run: python -m batchcam reproduce --grid tuning")
        scores[config.lr] = load_record(path)["history"][-1]["val_accuracy"]
    best = max(sorted(scores), key=lambda lr: scores[lr])  # max keeps the first (smallest) of equals
    return best, scores


def verdict_grid(seeds: Sequence[int] = VERDICT_SEEDS, datasets: Sequence[str] = DATASETS,
                 models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
                 random_baseline: bool = True, **overrides: Any) -> list[TrainConfig]:
    """The SimpleCNN cells whose verdicts the book states (chapter 7): the four objectives × 10 seeds
    at the verdict protocol and the learning rate :func:`select_lr` chose on validation; the untrained
    model (``epochs=0``) for seeds 0-2 with ``random_baseline``. Ordered seed → dataset → objective,
    so a grid cut short has whole seeds."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    configs = []
    for dataset in datasets:
        lr = overrides.pop("lr", None) or select_lr(dataset, **{k: v for k, v in overrides.items()
                                                                 if k in ("out_dir", "epochs", "batch_size")})[0]
        fields = {**VERDICT_PROTOCOL, "selected_on": SELECTED_ON, **overrides, "lr": lr}
        for seed in seeds:
            configs += paper_grid([seed], [dataset], models or ("simplecnn",), objectives,
                                  random_baseline=random_baseline and seed < 3, **fields)
    return sorted(configs, key=lambda c: (c.seed, c.dataset))


#: The positive control's patch (chapter 9): a fixed class-specific 6×6 binary texture in a random corner
#: (``decoy.class_textures``). Calibration runs of ``ce`` (seed 0, 20 000 images, 2 epochs, batch 128, lr 2e-3,
#: no validation split): reliance 0.673 on MNIST and 0.596 on Fashion-MNIST (consistent-patch accuracy
#: 1.000 / 0.9996, random-patch 0.327 / 0.404), far above the 0.20 the control must clear; Ross's 4×4 grey
#: patch gave 0.019 on MNIST (chapter 9's exploration), too little for a positive control.
DECOY_CONTROL = "texture6"
#: The decoy verdict grid's cells (chapter 9): name → ``TrainConfig`` fields. The positive control
#: (``ce`` on :data:`DECOY_CONTROL`: the effect must exist), Ross's exact patch as a row, the oracles that
#: use the true patch mask (Ross's input-gradient penalty, RRR-G, ``ce`` trained on clean images), and the
#: paper's losses (L1) with prototypes from the decoyed training images.
DECOY_VERDICT_CELLS: dict[str, dict[str, Any]] = {
    "ce": dict(objective="ce", decoy="train+test", decoy_patch=DECOY_CONTROL),
    "ce, Ross 4×4 grey": dict(objective="ce", decoy="train+test", decoy_patch="ross4"),
    "oracle: ce+rrr-input": dict(objective="ce+rrr-input", decoy="train+test", decoy_patch=DECOY_CONTROL),
    "oracle: ce+rrr (RRR-G)": dict(objective="ce+rrr", decoy="train+test", decoy_patch=DECOY_CONTROL),
    "oracle: ce on clean images": dict(objective="ce", decoy="test", decoy_patch=DECOY_CONTROL),
    **{o: dict(objective=o, decoy="train+test", decoy_patch=DECOY_CONTROL)
       for o in ("ce+proto", "ce+batchcam", "ce+proto+batchcam")},
}
#: The decoy verdict grid's budget: the verdict protocol on 20 000 training images (2 epochs: SimpleCNN's).
DECOY_VERDICT_RECIPE: dict[str, Any] = dict(n_train=20_000)
#: The oracles' weights, chosen on the validation split (chapter 9): objective → (its λ field, the candidates).
#: The first grid, 0.3-10 for both (a first try of ``ce+rrr-input`` at λ = 10 on Fashion-MNIST had cut
#: reliance to 0.024 but left 0.54 clean accuracy), put ``ce+rrr-input``'s Fashion-MNIST choice at its lower
#: end (validation reliance 0.01-0.03 at every λ, clean accuracy 0.48-0.65 against the control's 0.78), so
#: its list goes on downward by half-decades (0.01, 0.03, 0.1); no λ of ``ce+rrr`` (RRR-G) reached the bar on
#: Fashion-MNIST (validation reliance 0.22-0.33 against the control's 0.55), the least at its upper end, 10,
#: so its list goes on upward (30, 100). Validation runs only, the test set untouched. The rule from here
#: on: a choice at an end of its list extends the list beyond that end, on validation.
ORACLE_LAMBDAS: dict[str, tuple[str, tuple[float, ...]]] = {
    "ce+rrr-input": ("lambda_rrr_input", (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)),
    "ce+rrr": ("lambda_rrr", (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)),
}
#: An oracle must cut the positive control's reliance to at most this share of it (chapter 9).
ORACLE_SHARE = 0.2


def decoy_verdict_cell(config: Any) -> Optional[str]:
    """The :data:`DECOY_VERDICT_CELLS` name of a configuration or ``load_runs`` row, None if not a run of
    :func:`decoy_verdict_grid`'s protocol (validation split 6 000, order 'seed,epoch'); chapter 9."""
    get = _getter(config)
    protocol = {k: VERDICT_PROTOCOL[k] for k in ("n_val", "order")}
    for name, fields in DECOY_VERDICT_CELLS.items():
        if all(get(k) == v for k, v in {"prototype_source": "train", "distance": "l1", **protocol,
                                           **fields}.items()):
            return name
    return None


def decoy_verdict_grid(seeds: Sequence[int] = VERDICT_SEEDS, datasets: Sequence[str] = DATASETS,
                       models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
                       random_baseline: bool = False, oracle_lambdas: Optional[Mapping[str, float]] = None,
                       **overrides: Any) -> list[TrainConfig]:
    """Every :data:`DECOY_VERDICT_CELLS` cell × 10 seeds × both datasets at the verdict protocol
    (:data:`VERDICT_PROTOCOL`), 20 000 training images, the learning rate :func:`select_lr` chose on
    validation and the oracles' λ :func:`select_oracle_lambda` chose on validation (ValueError while a
    tuning run is missing, as :func:`verdict_grid`); chapter 9. ``oracle_lambdas`` (objective → λ) skips
    that choice; ``objectives`` keeps the cells with those objectives; ``random_baseline`` is accepted and
    ignored. Ordered seed → dataset, so a grid cut short has whole seeds."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    configs = []
    for dataset in datasets:
        fields = {**VERDICT_PROTOCOL, **DECOY_VERDICT_RECIPE, "selected_on": SELECTED_ON, **overrides}
        fields["lr"] = overrides.get("lr") or select_lr(dataset, **_tuning_keys(overrides))[0]
        for cell in DECOY_VERDICT_CELLS.values():
            if objectives is None or cell["objective"] in objectives:
                rest = {k: v for k, v in cell.items() if k != "objective"}
                if cell["objective"] in ORACLE_LAMBDAS:
                    lam = (oracle_lambdas or {}).get(cell["objective"])
                    if lam is None:
                        lam = select_oracle_lambda(dataset, cell["objective"], lr=fields["lr"],
                                                   **_tuning_keys(overrides))[0]
                    rest.update({ORACLE_LAMBDAS[cell["objective"]][0]: lam,
                                 "selected_on": SELECTED_ON.replace("lambda=design", "lambda=val")})
                configs += paper_grid(seeds, [dataset], models or ("simplecnn",), [cell["objective"]],
                                      random_baseline=False, **{**fields, **rest})
    return sorted(configs, key=lambda c: (c.seed, c.dataset))


def _tuning_keys(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides a tuning grid shares with the grid it tunes (where the records are, the budget)."""
    return {k: v for k, v in overrides.items() if k in ("out_dir", "epochs", "batch_size")}


def decoy_tuning_grid(seeds: Sequence[int] = (TUNING_SEED,), datasets: Sequence[str] = DATASETS,
                      models: Optional[Sequence[str]] = None, objectives: Optional[Sequence[str]] = None,
                      random_baseline: bool = False, **overrides: Any) -> list[TrainConfig]:
    """The oracles' λ choice on the validation split (chapter 9): the positive control (``ce`` on the
    decoy) and each oracle of :data:`ORACLE_LAMBDAS` at each candidate λ, seed 100, the decoy verdict
    grid's protocol and learning rate (:func:`select_lr`); no faithfulness or loop timing. Their records
    hold the validation reliance (``batchcam.evaluate.decoy_validation``) that :func:`select_oracle_lambda`
    reads. ``objectives`` keeps those oracles (the control always runs); ``random_baseline`` is ignored."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    configs = []
    for dataset in datasets:
        fields = {**VERDICT_PROTOCOL, **DECOY_VERDICT_RECIPE, "eval_faithfulness_samples": 0,
                  "eval_cam_loop_samples": 0, "selected_on": "design", **overrides}
        fields["lr"] = overrides.get("lr") or select_lr(dataset, **_tuning_keys(overrides))[0]
        control = {k: v for k, v in DECOY_VERDICT_CELLS["ce"].items() if k != "objective"}
        configs += paper_grid(seeds, [dataset], models or ("simplecnn",), ["ce"], random_baseline=False,
                              **{**fields, **control})
        for objective, (field, candidates) in ORACLE_LAMBDAS.items():
            if objectives is not None and objective not in objectives:
                continue
            cell = next(c for c in DECOY_VERDICT_CELLS.values() if c["objective"] == objective)
            rest = {k: v for k, v in cell.items() if k != "objective"}
            for lam in candidates:
                configs += paper_grid(seeds, [dataset], models or ("simplecnn",), [objective],
                                      random_baseline=False, **{**fields, **rest, field: lam})
    return sorted(configs, key=lambda c: (c.seed, c.dataset))


def choose_oracle_lambda(control: float, candidates: Mapping[float, tuple[float, float]]) -> float:
    """The rule fixed before the tuning runs (chapter 9). ``control``: the positive control's validation
    reliance; ``candidates``: λ → (validation reliance, clean validation accuracy). Among the λ whose
    reliance is at most :data:`ORACLE_SHARE` × ``control``, the one with the highest clean accuracy (the
    oracle that removes the shortcut and costs least); if none qualifies, the λ with the lowest reliance
    (and the oracle is reported as failed at that budget). Ties: the smaller λ."""
    if not candidates:
        raise ValueError("no candidate λ")
    ok = [lam for lam, (rel, _) in sorted(candidates.items()) if rel <= ORACLE_SHARE * control]
    if ok:
        return max(ok, key=lambda lam: candidates[lam][1])  # max keeps the first (smallest) of equals
    return min(sorted(candidates), key=lambda lam: candidates[lam][0])


def select_oracle_lambda(dataset: str, objective: str, root: Optional[str | Path] = None,
                         **overrides: Any) -> tuple[float, dict]:
    """The λ of ``objective`` (an oracle of :data:`ORACLE_LAMBDAS`) for the decoy verdict grid on
    ``dataset``, by :func:`choose_oracle_lambda` on the records of :func:`decoy_tuning_grid`, and
    ``{"control": reliance, λ: [reliance, clean accuracy], …}`` (validation numbers; chapter 9).
    Raises ValueError when a tuning run is missing."""
    from .results import load_record

    values: dict = {}
    for config in decoy_tuning_grid(datasets=[dataset], objectives=[objective], **overrides):
        path = _runs_folder(config, root) / f"{config.run_id}.json"
        if not is_complete(config.run_id, path.parent):
            raise ValueError(f"the oracles' λ is chosen on validation runs that are not recorded yet "
                             f"({config.run_id}); run: python -m batchcam reproduce --grid decoy-tuning")
        d = load_record(path)["final"]["decoy"]
        if config.objective == "ce":
            values["control"] = d["val_reliance"]
        else:
            values[getattr(config, ORACLE_LAMBDAS[objective][0])] = [d["val_reliance"], d["val_clean_accuracy"]]
    control = values.pop("control")
    return choose_oracle_lambda(control, {k: tuple(v) for k, v in values.items()}), {"control": control, **values}


GRIDS = {"paper": paper_grid, "ablations": ablation_grid, "decoy": decoy_grid, "tuning": tuning_grid,
         "verdict": verdict_grid, "decoy-tuning": decoy_tuning_grid, "decoy-verdict": decoy_verdict_grid}


def pending(configs: Iterable[TrainConfig], root: Optional[str | Path] = None) -> list[TrainConfig]:
    """The configurations without a complete record (in ``root``, default ``<out_dir>/runs``), in order;
    ``reproduce``, ``gpu-run`` and the submitit launcher run only these (chapter 7)."""
    return [c for c in configs
            if not is_complete(c.run_id, root if root is not None else Path(c.out_dir) / "runs")]
