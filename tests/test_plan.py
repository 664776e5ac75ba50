"""The GPU planner and its cost model (``batchcam.plan``; chapter 7): the grid's priority order, the recipes,
device names and the autocast rule, the anchored prices and their scaling, calibration and run records taking
over from the extrapolation, the split into commands, and ``gpu-run --plan`` (no GPU, no training).
"""

import json
import math

import pytest
import torch

import batchcam.plan as P
from batchcam import cli
from batchcam.digest import canonical_sha256
from batchcam.runpool import count_ops

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def empty(tmp_path, monkeypatch):
    """``$BATCHCAM_RESULTS`` → an empty folder: no calibration, benchmark or run record is read."""
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path / "results"))
    (tmp_path / "results" / "bench").mkdir(parents=True)
    (tmp_path / "results" / "runs").mkdir()
    return tmp_path / "results"


def _calibration(root, key="h100", stamp="20270101T000000Z", resnet_ce_ms=5.2, convnext_cam_ms=30.0, speedup=None):
    record = {"kind": "batchcam-calibration", "schema_version": 1, "device_key": key, "device_name": H100,
              "amp_dtype": "bf16", "recipe": "gpu",
              "cases": [{"model": "resnet18", "image_size": 28, "batch_size": 128, "forward_ms_per_image": 0.01,
                         "step_ms": {"ce": resnet_ce_ms, "ce+proto+batchcam": resnet_ce_ms * 1.1}},
                        {"model": "convnextv2_tiny", "image_size": 96, "batch_size": 128, "forward_ms_per_image": 0.03,
                         "step_ms": {"ce": convnext_cam_ms / 1.1, "ce+proto+batchcam": convnext_cam_ms}}],
              "concurrency": speedup or {}, "best_k": 2 if speedup else 1}
    path = root / "bench" / f"{P.CALIBRATION_PREFIX}{key}-{stamp}.json"
    path.write_text(json.dumps({**record, "record_sha256": canonical_sha256(record)}))
    return path


# --------------------------------------------------------------------------- the grid


def test_gpu_grid_is_seed_major_with_the_recipe_and_untrained_runs_for_seeds_0_to_2():
    configs = P.gpu_grid()
    seeds = [c.seed for c in configs]
    assert seeds == sorted(seeds) and set(seeds) == set(range(10))
    first = [c for c in configs if c.seed < 3]
    assert configs[:len(first)] == first and len(first) == 60  # 2 models × 2 datasets × (4 objectives + untrained) × 3
    assert sum(c.epochs > 0 for c in first) == 48 and all(c.epochs > 0 for c in configs[60:])
    assert [c.model for c in configs[:10]] == ["resnet18"] * 10 and configs[10].model == "convnextv2_tiny"
    assert (configs[0].dataset, configs[0].objective) == ("mnist", "ce")
    for c in configs:
        r = c.resolved()
        assert r.n_train == 20_000 and r.eval_faithfulness_samples == 100
        assert r.image_size == (96 if c.model == "convnextv2_tiny" else 28) and r.epochs in (0, 3)
    paper = P.gpu_grid([0], "paper")
    assert {(c.model, c.resolved().image_size, c.n_train, c.eval_faithfulness_samples) for c in paper} == {
        ("resnet18", 28, None, 200), ("convnextv2_tiny", 112, None, 200)}  # grid.EVAL_SETTINGS


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown recipe 'bogus'"):
        P.gpu_grid(recipe="bogus")


@pytest.mark.parametrize("name, key", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("Tesla T4", "t4"),
                                       ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA L4", "l4"), ("H100", "h100"),
                                       ("cpu", "cpu"), ("Intel(R) Xeon(R) Processor", "cpu")])
def test_device_key(name, key):
    assert P.device_key(name) == key


def test_an_unknown_device_is_refused_or_generic():
    with pytest.raises(ValueError, match="unknown device 'RTX 9999'.*H100"):
        P.device_key("RTX 9999")
    assert P.device_key("NVIDIA GeForce RTX 9999", strict=False) == "gpu"
    assert P.device_key("NVIDIA L40S", strict=False) == "gpu"  # "l4" must not match inside another name


def test_autocast_rule(monkeypatch):
    assert (P.amp_dtype("h100"), P.amp_dtype("t4"), P.amp_dtype("cpu")) == ("bf16", "fp16", None)
    assert P.amp_dtype(torch.device("cpu")) is None
    cuda = torch.device("cuda", 0)
    seen = {}

    def supported(including_emulation=True):
        seen["emulation"] = including_emulation
        return seen["native"]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for native, expected in ((True, "bf16"), (False, "fp16")):
        seen["native"] = native
        assert P.amp_dtype(cuda) == expected and seen["emulation"] is False  # emulated bf16 does not count

    def old_torch():  # torch < 2.5: no including_emulation
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert P.amp_dtype(cuda) == "fp16"


# --------------------------------------------------------------------------- the cost model


def test_flops_and_op_tables_match_what_the_counters_give():
    from torch.utils.flop_counter import FlopCounterMode

    from batchcam.models import create_model

    with torch.device("meta"):
        net, x = create_model("simplecnn", 10, 1, 28), torch.empty(1, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        net(x)
    assert counter.get_total_flops() / 1e9 == pytest.approx(P.FLOPS_G[("simplecnn", 28)], rel=0.01)
    assert P.flops("simplecnn", 40) == pytest.approx(P.FLOPS_G[("simplecnn", 28)] * (40 / 28) ** 2, rel=0.02)
    ce, cam = P.STEP_OPS["simplecnn"][:2]
    assert count_ops("simplecnn", "ce") == pytest.approx(ce, rel=0.2)  # torch versions differ a little
    assert count_ops("simplecnn", "ce+proto+batchcam") == pytest.approx(cam, rel=0.2)


def test_scale_takes_the_larger_of_flops_and_ops():
    assert P.scale("resnet18", 28, "train") == 1.0
    conv = P.scale("convnextv2_tiny", 96, "train")
    flop = P.FLOPS_G[("convnextv2_tiny", 96)] / P.FLOPS_G[("resnet18", 28)] / P.MODEL_EFFICIENCY["convnextv2_tiny"]
    ops = P.STEP_OPS["convnextv2_tiny"][1] / P.STEP_OPS["resnet18"][1]
    assert conv == pytest.approx(max(flop, ops)) and 3 < conv < 4
    assert P.scale("convnextv2_tiny", 64, "train") == pytest.approx(ops)  # small images: the launches bound it
    assert P.scale("simplecnn", 28, "train", "cpu") == pytest.approx(0.0366 / 0.9116, rel=0.01)  # CPU: FLOPs


def test_extrapolated_h100_prices_the_anchor_by_the_spec_ratio(empty):
    model = P.cost_model("H100")
    assert model.source.startswith("extrapolated from the H200 run records") and "H100 = H200 × 0.75" in model.source
    assert model.factor == pytest.approx(1 / 0.75)
    config = P.gpu_grid([0])[3].resolved()  # ResNet-18, ce+proto+batchcam
    assert config.objective == "ce+proto+batchcam"
    parts = model.run_s(config)
    a = P.ANCHORS["cuda"]
    assert parts["train"] == pytest.approx(3 * (20_000 // 128) * a.step_s * P.CAM_STEP_RATIO / 0.75)
    assert parts["faithfulness"] == pytest.approx(100 * a.faith_s * P.EXTENDED_FAITHFULNESS / 0.75)
    assert parts["eval"] == pytest.approx(4 * 10_000 * a.eval_s / 0.75) and parts["warmup"] == 0
    body = sum(v for k, v in parts.items() if k != "total")
    assert parts["total"] == pytest.approx(body * P.PLAN_MARGIN)
    assert model.run_s(config, warm=False)["warmup"] == pytest.approx(a.warmup_s / 0.75)
    untrained = model.run_s(P.gpu_grid([0])[4])
    assert untrained["train"] == 0 and untrained["faithfulness"] < parts["faithfulness"]


def test_the_newest_calibration_of_the_device_replaces_the_extrapolation(empty):
    _calibration(empty, stamp="20270101T000000Z", resnet_ce_ms=99.0)
    path = _calibration(empty, stamp="20270202T000000Z", resnet_ce_ms=5.2, speedup={"resnet18": {"1": 1.0, "2": 1.6}})
    _calibration(empty, key="t4", stamp="20280101T000000Z")  # another device's
    model = P.cost_model("H100")
    assert model.source.startswith(f"calibration {path.name}")
    assert model.factor == pytest.approx(5.2 / 10.4)  # its ResNet-18 step over the anchor's
    configs = P.gpu_grid([0])
    resnet, convnext = configs[3], configs[13]
    assert convnext.model == "convnextv2_tiny" and convnext.objective == "ce+proto+batchcam"
    assert model.run_s(convnext)["train"] == pytest.approx(3 * (20_000 // 128) * 0.030)  # measured step
    one = model.run_s(resnet, 1)["total"]
    assert model.run_s(resnet, 2)["total"] == pytest.approx(one * 2 / 1.6)  # two at once, 1.6 × the throughput


def test_finished_runs_of_the_device_correct_the_estimate(empty):
    model = P.cost_model("H100")
    config = P.gpu_grid([0])[0]
    base = model.run_s(config)["total"] / P.PLAN_MARGIN
    fields = {k: v for k, v in config.resolved().__dict__.items()}
    for seconds, name in ((2 * base, H100), (3 * base, H100), (100 * base, "NVIDIA H200")):
        record = {"config": {**fields, "device": "cuda"}, "timings": {"session_wall_s": seconds},
                  "provenance": {"device_name": name}}
        (empty / "runs" / f"x{seconds:.0f}-cuda-0000000{len(list((empty / 'runs').iterdir()))}.json").write_text(
            json.dumps(record))
    model = P.cost_model("H100")
    assert model.correction == {"resnet18": pytest.approx(2.5)}  # the H200 record is another device's
    assert model.run_s(config)["total"] == pytest.approx(2.5 * base)
    assert any("corrected by finished runs: resnet18 × 2.50 (2 runs)" in n for n in model.notes)


def test_plan_splits_the_runs_into_commands_and_skips_recorded_ones(empty, monkeypatch):
    model = P.cost_model("H100")
    configs = P.gpu_grid([0, 1, 2, 3])
    done = {configs[1].run_id}
    monkeypatch.setattr(P, "is_complete", lambda run_id, root: run_id in done)
    rows = P.plan(configs, model, 540, 100, 60)
    assert len(rows) == len(configs) - 1 and configs[1].run_id not in {r["run_id"] for r in rows}
    assert [r["command"] for r in rows] == sorted(r["command"] for r in rows)
    for command in {r["command"] for r in rows}:
        used = sum(r["est_s"] for r in rows if r["command"] == command)
        assert used <= 540 - (100 if command == 1 else 60) + 1e-9 or \
            sum(r["command"] == command for r in rows) == 1
    assert rows[-1]["cum_s"] == pytest.approx(sum(r["est_s"] for r in rows))
    with pytest.raises(ValueError, match="leaves nothing for runs"):
        P.plan(configs, model, 90, 100, 60)
    text = P.format_plan(rows, model, 540, 100, 60, "gpu", 1, "bf16")
    assert "seeds 0-2: 59 runs (47 trained)" in text and "seeds 3-9: 16 runs (16 trained)" in text
    assert "extrapolated" in text and "1/8 of inference throughput" not in text  # no benchmark record here


# --------------------------------------------------------------------------- the command


def test_gpu_run_plan_prints_the_runs_and_needs_no_gpu(empty, capsys, monkeypatch):
    import batchcam.gpu

    monkeypatch.setattr(batchcam.gpu, "smoke_test", lambda *a, **k: pytest.fail("--plan ran the smoke test"))
    assert cli.main(["gpu-run", "--plan", "--device-name", "H100", "--budget-s", "540"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("device H100 (bf16 autocast), K = 1") and "recipe 'gpu'" in lines[0]
    assert "cost model: extrapolated from the H200 run records of commit 37ea4c8" in out
    runs = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(runs) == 172 and "-cuda-" in runs[0] and runs[0].split()[1] == "yes"
    est = [float(line.split()[-3]) for line in runs]
    assert all(e > 0 for e in est) and math.isclose(float(runs[-1].split()[-2]), sum(est), rel_tol=1e-3)
    assert any(line.startswith("seeds 0-2: 60 runs (48 trained)") for line in lines)
    assert any(line.startswith("seeds 3-9: 112 runs (112 trained)") for line in lines)
    assert cli.main(["gpu-run", "--plan", "--device-name", "Tesla T4", "--recipe", "paper", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device T4 (fp16 autocast)") and "T4 = H200 × 0.065" in out and "-s112-" in out


def test_gpu_run_plan_bad_values_exit_2(empty, usage_error):
    usage_error(["gpu-run", "--plan", "--device-name", "bogus"], "unknown device 'bogus'")
    usage_error(["gpu-run", "--plan", "--device-name", "H100", "--budget-s", "60"], "leaves nothing for runs")
    usage_error(["gpu-run", "--plan", "--recipe", "bogus"], "invalid choice: 'bogus'")
    usage_error(["gpu-run", "--plan", "--concurrency", "0"], "--concurrency must be ≥ 1")
