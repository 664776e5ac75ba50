"""Repo-wide pytest configuration: the nbval sanitiser hook and the fixtures the package tests share.

Wires the nbval sanitiser into every run, so that the literal command
`pytest --nbval book/` (from any working directory) masks the outputs that legitimately
change between runs: tqdm rates and times, timings, memory addresses, kernel temp paths.
A relative path in `addopts` would break as soon as pytest runs from another folder, so
the absolute path is set here instead. An explicit `--nbval-sanitize-with FILE` wins.

Under nbval it also gives the notebook kernel (which inherits this process's
environment) the seeded environment that scripts/refresh_notebooks.py used to produce
the stored outputs, so both runs see the same hash seed; and where the stored outputs were made
on another CPU model than this one, it compares their numbers within training noise rather than
character for character (``scripts/nbval_numbers.py``).

Fixtures (no test module imports another; what several modules need lives here):
``synthetic`` (tiny uint8 data), ``fake_data`` (``load_data`` → synthetic), ``tiny_model`` (``fit``
builds a small GAP network instead of the registry's model), ``tiny_config``, ``TinyNet``,
``make_record`` (a record without training), ``isolated_results`` (``$BATCHCAM_RESULTS`` → tmp),
``no_work`` (training, data loading, benchmark and GPU session fail the test if reached) and
``usage_error`` (run the CLI, expect exit 2 with one line and no traceback).
"""

import functools
import os
import time
from pathlib import Path

import pytest

NBVAL_SANITIZE_FILE = Path(__file__).resolve().parent / "book" / "nbval_sanitize.cfg"

# Keep in sync with SEEDED_ENV in scripts/refresh_notebooks.py.
NOTEBOOK_ENV = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pytest_configure(config):
    # Absent when nbval is not installed (e.g. a machine with only the package's runtime
    # dependencies): then there is nothing to wire.
    if not hasattr(config.option, "nbval_sanitize_with"):
        return
    if not getattr(config.option, "sanitize_with", None):  # nbval's deprecated alias
        if config.option.nbval_sanitize_with is None and NBVAL_SANITIZE_FILE.is_file():
            config.option.nbval_sanitize_with = str(NBVAL_SANITIZE_FILE)
    if getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False):
        for key, value in NOTEBOOK_ENV.items():
            os.environ.setdefault(key, value)
        _compare_numbers_across_cpus()


def _compare_numbers_across_cpus():
    """nbval compares exactly on the CPU model that made a notebook's stored outputs; on another,
    number by number within training noise (``scripts/nbval_numbers.py`` says why and how much)."""
    from nbval.plugin import IPyNbCell

    from tests._scripts import load_script

    numbers = load_script("nbval_numbers")
    exact = IPyNbCell.compare_outputs
    if getattr(exact, "across_cpus", False):
        return

    class Numbers(str):
        """A sanitised text output that equals another when :func:`numbers.close` says so."""

        __hash__ = str.__hash__

        def __eq__(self, other):
            return numbers.close(str(self), str(other))[0] if isinstance(other, str) else NotImplemented

        def __ne__(self, other):
            same = self.__eq__(other)
            return same if same is NotImplemented else not same

    def compare_outputs(self, test, ref, skip_compare=None):
        if exact(self, test, ref, skip_compare):
            return True
        made_on = numbers.outputs_cpu(self.parent.nb)
        if made_on is not None and made_on == _this_cpu():
            return False
        exact_traceback, sanitize = self.comparison_traceback, self.sanitize
        self.sanitize = lambda s: Numbers(sanitize(s)) if isinstance(s, str) else sanitize(s)
        try:
            same = exact(self, test, ref, skip_compare)
        finally:
            del self.sanitize
        if not same:
            self.comparison_traceback = exact_traceback + [
                f"(stored outputs made on {made_on or 'an unnamed CPU'}, this is {_this_cpu()}: the numbers "
                f"were also compared within {numbers.REL_TOL:g} relative or {numbers.ABS_TOL:g} absolute)"]
        return same

    compare_outputs.across_cpus = True
    IPyNbCell.compare_outputs = compare_outputs


@functools.lru_cache(maxsize=None)
def _this_cpu() -> str:
    from batchcam.provenance import provenance

    return provenance("cpu")["cpu"]


# --------------------------------------------------------------------------- data and models


def _synthetic_split(n: int, seed: int):
    """uint8 [n, 1, 28, 28] images of a bright 8×8 square whose position encodes the class (labels
    ``arange(n) % 10``), on weak noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = 2 + 5 * (c // 4), 2 + 6 * (c % 4)
        images[i, 0, r:r + 8, col:col + 8] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


def _fake_load_data(config):
    """``batchcam.train.load_data`` on synthetic data (training subset follows the seed, test fixed; the
    training labels permuted as ``load_data`` permutes them)."""
    from batchcam.train import permute_labels

    train = _synthetic_split(config.n_train or 96, config.seed)
    if config.permute_labels is not None:
        train = permute_labels(train, config.permute_labels)
    return train, _synthetic_split(config.n_test or 48, 1000)


@pytest.fixture(scope="session")
def synthetic():
    """``synthetic(n, seed)`` → (uint8 [n, 1, 28, 28], int64 [n]) with labels ``arange(n) % 10``."""
    return _synthetic_split


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-batch tests: faster than two, and far faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_data(monkeypatch):
    """``fit`` and ``gpu-run`` load tiny synthetic data instead of MNIST."""
    import batchcam.gpu
    import batchcam.runner
    import batchcam.train

    monkeypatch.setattr(batchcam.train, "load_data", _fake_load_data)
    monkeypatch.setattr(batchcam.gpu, "load_data", _fake_load_data)
    return _fake_load_data


def _tiny_net_class():
    from torch import nn

    class TinyNet(nn.Module):
        """conv → BatchNorm → ReLU → ``features`` (conv → ReLU) → GAP → LayerNorm → linear.

        The target layer ``features`` is followed only by per-sample operations (pooling, LayerNorm,
        linear), so batch Grad-CAM is exact; the LayerNorm makes α depend on the input.
        """

        def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 6) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.features = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(2 * width),
                                      nn.Linear(2 * width, num_classes))

        def forward(self, x):
            return self.head(self.features(self.stem(x)))

    return TinyNet


@pytest.fixture
def TinyNet():  # noqa: N802 - a class
    """A small network whose Grad-CAM layer is ``features`` (like SimpleCNN's default)."""
    return _tiny_net_class()


@pytest.fixture
def tiny_model(monkeypatch):
    """``fit`` (and ``load_checkpoint``) build ``TinyNet`` instead of the registry's model: the
    training engine is tested without paying for a real network. Validation still uses the real one."""
    import batchcam.train

    net = _tiny_net_class()
    monkeypatch.setattr(batchcam.train, "create_model", lambda name, num_classes=10, in_chans=1, image_size=None:
                        net(num_classes, in_chans))
    return net


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(**overrides)``: a CPU ``TrainConfig`` of 2 epochs on 96 / 48 images in ``tmp_path``,
    with small evaluation samples (per-image loop timing, faithfulness)."""
    import dataclasses

    from batchcam.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}

    def make(**kw):
        base = dict(n_train=96, n_test=48, epochs=2, batch_size=32, device="cpu", out_dir=str(tmp_path / "out"),
                    eval_cam_loop_samples=4, eval_faithfulness_samples=8)
        return TrainConfig(**{k: v for k, v in {**base, **kw}.items() if k in names or k in kw})

    return make


# --------------------------------------------------------------------------- records


@pytest.fixture
def make_record():
    """``make_record(config=None, *, size=None, final=None, provenance=None, seed_maps=0, **config_kw)`` →
    ``(record, tensors)`` as ``batchcam.results.record_from_run`` builds them for a finished run, without
    training: the metrics come from a real ``ReconstructionMeter`` on random maps, then ``final`` and
    ``provenance`` entries are overridden. Default config: CPU, ``n_train=10``, ``out_dir`` unused."""
    import torch

    from batchcam.config import TrainConfig
    from batchcam.metrics import BASELINES, ReconstructionMeter, baseline_maps
    from batchcam.results import record_from_run
    from batchcam.train import Run

    def make(config=None, *, size=None, final=None, provenance=None, seed_maps=0, **config_kw):
        if config is None:
            config = TrainConfig(**{"device": "cpu", "n_train": 10, "out_dir": "unused", **config_kw})
        config = config.resolved()
        s = size or config.image_size
        g = torch.Generator().manual_seed(seed_maps)
        protos = torch.rand(10, s, s, generator=g)
        maps, images = torch.rand(20, s, s, generator=g), torch.rand(20, s, s, generator=g)
        maps[0] = 0
        y = torch.arange(20) % 10
        meters = {k: ReconstructionMeter(protos) for k in ("maps",) + BASELINES}
        meters["maps"].update(maps, y, images, maps.flatten(1).amax(1) <= 0)
        for kind in BASELINES:
            b = baseline_maps(kind, images)
            meters[kind].update(b, y, images, b.flatten(1).amax(1) <= 0)
        evaluation = {"accuracy": 0.9, "maps": meters["maps"].compute(),
                      "baselines": {k: meters[k].compute() for k in BASELINES},
                      "gradcam_time_s": 0.1, "samples": 20}
        history = [{"epoch": e + 1, "train_total": 1.0 / (e + 1), "train_ce": 1.0 / (e + 1), "train_accuracy": 0.5,
                    "test_accuracy": 0.9, "test_l1": 0.2, "test_ssim": 0.3, "test_dead_fraction": 0.05,
                    "train_time_s": 2.0, "eval_time_s": 0.5} for e in range(config.epochs)]
        run = Run(config=config, model=None, history=history, evaluation=evaluation, prototypes=protos,
                  average_reconstruction=meters["maps"].average_reconstruction(),
                  timings={"train_time_per_epoch_s": 2.0 if history else None, "gradcam_batch_s": 0.1,
                           "gradcam_batch_samples": 20, "gradcam_loop_s": 0.3, "gradcam_loop_samples": 4,
                           "gradcam_loop_s_scaled": 1.5, "resumed_from_epoch": None, "session_wall_s": 9.0},
                  runtime={"device": "cpu", "device_type": "cpu", "amp": False, "channels_last": False,
                           "cudnn_benchmark": False, "torch_threads": 1})
        record, tensors = record_from_run(run)
        record["final"].update(final or {})
        record["provenance"].update(provenance or {})
        return record, tensors

    return make


@pytest.fixture
def isolated_results(monkeypatch, tmp_path):
    """``$BATCHCAM_RESULTS`` → ``tmp_path / "results"``: nothing reads or writes the committed records."""
    root = tmp_path / "results"
    monkeypatch.setenv("BATCHCAM_RESULTS", str(root))
    return root


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def no_work(monkeypatch, isolated_results):
    """Training, data loading, the benchmark and the GPU session's smoke test fail the test if reached."""
    import batchcam.bench
    import batchcam.cli
    import batchcam.gpu
    import batchcam.train

    def forbidden(what):
        def fail(*args, **kwargs):
            pytest.fail(f"{what} was reached: the error must come before any work")
        return fail

    for module, name in ((batchcam.runner, "fit"), (batchcam.train, "fit"),
                         (batchcam.train, "load_data"), (batchcam.gpu, "load_data"),
                         (batchcam.gpu, "smoke_test"), (batchcam.bench, "run_benchmark")):
        monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    return isolated_results


@pytest.fixture
def usage_error(capsys):
    """``usage_error(argv, *needles)`` runs ``batchcam.cli.main(argv)`` and checks that it exits 2 with
    one line ``... batchcam <command>: error: ...`` on stderr holding every needle, and no traceback.
    Returns ``(line, seconds)``."""
    from batchcam import cli

    def check(argv, *needles):
        capsys.readouterr()
        t0 = time.perf_counter()
        code = cli.main(list(argv))
        elapsed = time.perf_counter() - t0
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1, err
        assert f"batchcam {argv[0]}: error: " in lines[0], err
        assert "Traceback" not in err
        for needle in needles:
            assert needle in lines[0], lines[0]
        return lines[0], elapsed

    return check


@pytest.fixture
def nan_after_first_step(monkeypatch):
    """Make the training loss NaN from the second step on (``batchcam.losses.objective_loss``, which
    the bound objective of ``batchcam.loop.train_one_epoch`` calls)."""
    import batchcam.losses as T

    real, steps = T.objective_loss, []

    def later_nan(*args, **kwargs):
        terms, logits = real(*args, **kwargs)
        steps.append(1)
        return ({**terms, "total": terms["total"] * float("nan")} if len(steps) > 1 else terms), logits

    monkeypatch.setattr(T, "objective_loss", later_nan)
    return steps
