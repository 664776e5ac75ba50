"""The speed benchmark (batchcam.bench): the record, the map check, the training step being training's
step, validation before any work, and the command in-process."""

import argparse
import ast
import copy
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

import batchcam.losses
from batchcam import bench, results
from batchcam.bench import measure as bench_run
from batchcam.bench import methods
from batchcam.bench.config import METHODS, PRESETS, ModelCase, config_from_args
from batchcam.cam import batch_gradcam, gradcam_loop

OPTIONAL = {"pytorch_grad_cam": "pytorch_grad_cam", "captum": "captum"}
FAST = ["--quick", "--batch-sizes", "6", "--rounds", "1", "--min-run-time", "0.01", "--no-memory"]


def parse(*argv):
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.fixture
def written(monkeypatch, tmp_path):
    """Replace the records module's writer (never write into results/); collect what it was given."""
    calls = []

    def write_bench_record(record, *, device_type, quick, force=False):
        calls.append({"record": record, "device_type": device_type, "quick": quick, "force": force})
        return tmp_path / "bench.json"

    monkeypatch.setattr(results, "write_bench_record", write_bench_record, raising=False)
    return calls


@pytest.fixture(scope="module")
def quick():
    """One ``--quick`` run with memory (a few seconds of timing, two spawned memory processes). The
    budget is lifted so that a busy machine does not skip the training step (a deadline is tested
    on its own in ``test_budget_skips_what_would_start_late``)."""
    return bench.run_benchmark(bench.BenchConfig.from_preset("quick", budget_s=3600.0))


def test_quick_record_shape(quick):
    assert list(quick) == ["kind", "schema_version", "config", "provenance", "environment", "methods", "compared",
                           "cam", "training", "skipped", "summary", "wall_s"]
    assert quick["config"]["preset"] == "quick" and quick["config"]["models"] == ["simplecnn:28"]
    assert quick["provenance"]["torch"] and "captum" in quick["provenance"]["versions"]
    assert quick["environment"]["device"] == "cpu" and quick["environment"]["amp"] is None
    assert quick["skipped"] == [] and quick["summary"] == {"maps_equal": True, "loop_frees_graph": True}
    assert [e["batch_size"] for e in quick["cam"]] == [2, 8]


def test_every_method_is_timed_once_per_configuration(quick):
    for e in quick["cam"]:
        assert "ratios" not in e  # each timing is stored once; bench.rows computes the ratios
        for name in METHODS:
            if name in e["skipped_methods"]:  # only an optional library that is not installed
                assert name in OPTIONAL and find_spec(OPTIONAL[name]) is None
                continue
            t = e["timings"][name]
            assert set(t) == {"median_ms", "iqr_ms", "times_ms", "rounds_ms"} and t["median_ms"] > 0, name
            assert len(t["rounds_ms"]) == quick["config"]["rounds"], name  # one median per round
            assert len(t["times_ms"]) >= quick["config"]["rounds"], name


def test_maps_of_all_methods_agree(quick):
    for e in quick["cam"]:
        eq = e["equality"]
        assert eq["reference"] == "batch_gradcam" and eq["atol"] == 1e-5 and eq["pass"] is True
        expected = {"gradcam_loop"} | ({"captum"} if "captum" in e["timings"] else set()) | (
            {"pytorch_grad_cam", "pytorch_grad_cam_output"} if "pytorch_grad_cam" in e["timings"] else set())
        assert set(eq["methods"]) == expected
        assert all(0 <= c["max_abs_diff"] <= 1e-5 and c["pass"] for c in eq["methods"].values())


def test_memory_is_measured_and_the_loop_keeps_more(quick):
    for e in quick["cam"]:
        mem = e["memory"]
        assert set(mem) == {"forward", "batch_gradcam", "gradcam_loop"}, mem
        assert all(isinstance(v, float) and v >= 0 for v in mem.values()), mem
    at8 = quick["cam"][1]["memory"]  # the loop keeps the graph of the whole forward pass
    assert at8["gradcam_loop"] > at8["batch_gradcam"], at8


def test_training_steps_time_every_objective(quick):
    (entry,) = quick["training"]
    assert set(entry["timings"]) == {"ce"} | {f"{o}:{d}" for o in batchcam.losses.OBJECTIVES[1:]
                                               for d in ("l1", "l2", "ssim")}
    assert all(t["median_ms"] > 0 for t in entry["timings"].values())
    train = bench.rows(quick, "train")
    assert len(train) == 10 and next(r for r in train if r["method"] == "ce")["to_ce"] == 1.0


def test_rows_and_summary(quick):
    cam = bench.rows(quick, model="simplecnn", image_size=28)
    assert {(r["method"], r["batch_size"]) for r in cam} == {(m, b) for m in METHODS for b in (2, 8)}
    assert all(r["to_batch_gradcam"] == 1.0 for r in cam if r["method"] == "batch_gradcam")
    assert bench.rows(quick, model="resnet18") == []
    text = bench.format_summary(quick)
    assert text.count(" ok") == 2 and "train simplecnn:28 B=8" in text


def test_the_bench_step_is_the_training_step():
    """Same seed, same model copy, same batch: the bench's step and a step written like the training
    loop (objective_loss + backward) give the same loss terms and the same gradients."""
    assert bench_run.objective_loss is batchcam.losses.objective_loss
    cfg = bench.BenchConfig.from_preset("quick")
    steps = bench_run.objectives(cfg)
    assert len(steps) == 10
    for key, objective in steps.items():
        name, _, distance = key.partition(":")
        training_objective = batchcam.losses.Objective.from_name(name, distance or "l1")
        case = bench_run.TrainCase.build(ModelCase.parse("simplecnn:28"), cfg, torch.device("cpu"))
        model = copy.deepcopy(case.model)
        terms = bench_run.train_step(case, objective)
        ref, _ = batchcam.losses.objective_loss(training_objective, model, case.x, case.y, layer="features",
                                                prototypes=case.prototypes)
        model.zero_grad(set_to_none=True)
        ref["total"].backward()
        assert set(terms) == set(ref), key
        for name in ref:
            torch.testing.assert_close(terms[name], ref[name].detach(), rtol=1e-6, atol=0, msg=key)
        for (name, p), q in zip(case.model.named_parameters(), model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=f"{key} {name}")
    assert case.prototypes.shape == (10, 28, 28)


def test_cli_end_to_end_in_process(written, capsys):
    assert bench.run(parse(*FAST, "--distances", "l1")) == 0
    (call,) = written
    assert (call["device_type"], call["quick"], call["force"]) == ("cpu", True, False)
    record = call["record"]
    assert [e["batch_size"] for e in record["cam"]] == [6] and record["summary"]["maps_equal"] is True
    assert len(record["training"][0]["timings"]) == 4  # ce + three objectives with l1
    assert "record: " in capsys.readouterr().out


def test_a_wrong_method_fails_the_check_and_the_exit_code(monkeypatch, written, capsys):
    def wrong_class(case):  # the map of the next class instead of the target class
        run = lambda: batch_gradcam(case.model, case.x, case.layer, (case.targets + 1) % 10)  # noqa: E731
        return methods.Method(run, lambda out: {"gradcam_loop": methods.minmax(out)})

    monkeypatch.setitem(methods.BUILDERS, "gradcam_loop", wrong_class)
    assert bench.run(parse(*FAST, "--train-models")) == 1
    (entry,) = written[0]["record"]["cam"]
    wrong = entry["equality"]["methods"]["gradcam_loop"]
    assert wrong["pass"] is False and wrong["max_abs_diff"] > 1e-3 and entry["equality"]["pass"] is False
    assert written[0]["record"]["summary"]["maps_equal"] is False and "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet19"], "unknown model 'resnet19'. Did you mean 'resnet18'"),
    (["--models", "resnet18:abc"], "bad model case 'resnet18:abc'.*whole number"),
    (["--models", "convnextv2_tiny:28"], "bad model case 'convnextv2_tiny:28'.*32"),
    (["--models", "convnextv2_tiny:16"], "bad model case 'convnextv2_tiny:16'.*32"),
    (["--methods", "gradcam"], "unknown method 'gradcam'"),
    (["--methods", "forward", "captum"], "must include 'batch_gradcam'"),
    (["--batch-sizes", "0", "8"], "--batch-sizes must be whole numbers ≥ 1, got \\[0, 8\\]"),
    (["--batch-sizes", "-3"], "--batch-sizes must be a whole number ≥ 1, got -3"),
    (["--train-batch", "1"], "--train-batch must be a whole number ≥ 2"),
    (["--budget-seconds", "-5"], "--budget-seconds must be a positive number of seconds, got -5.0"),
    (["--min-run-time", "0"], "--min-run-time must be a positive"),
    (["--rounds", "0"], "--rounds must be a whole number ≥ 1"),
    (["--threads", "0"], "--threads must be a whole number ≥ 1"),
    (["--threads", "100000"], "--threads must be at most \\d+ \\(4 × the \\d+ CPUs here\\), got 100000"),
    (["--distances", "l3"], "unknown distance 'l3'"),
    (["--device", "tpu"], "unknown device 'tpu'; use --device cpu, cuda"),
    (["--preset", "gpu"], None),  # CUDA on a machine without it (skipped where there is CUDA)
    (["--quick", "--preset", "cpu"], "--quick is --preset quick"),
])
def test_bad_values_are_rejected_before_any_work(argv, message, monkeypatch, written, capsys):
    if message is None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        message = "--device cuda: CUDA is not available on this machine; use --device cpu"
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: pytest.fail("ran despite a bad value"))
    monkeypatch.setattr(bench_run, "run_benchmark", lambda *a, **k: pytest.fail("ran despite a bad value"))
    assert bench.run(parse(*(argv if argv[0] in ("--quick", "--preset") else ["--quick", *argv]))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("batchcam bench: error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert written == []  # no record, not even an empty one


def test_threads_are_capped_at_four_per_cpu(monkeypatch):
    """``--threads 100000`` crashed the process (a segfault in torch.set_num_threads); now it is refused."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert bench.BenchConfig.from_preset("quick", threads=8).threads == 8
    for bad in (9, 100000):
        with pytest.raises(ValueError, match=f"--threads must be at most 8 \\(4 × the 2 CPUs here\\), got {bad}"):
            bench.BenchConfig.from_preset("quick", threads=bad)


def test_presets():
    assert set(PRESETS) == {"quick", "cpu", "verdict", "gpu-short", "gpu"}
    verdict = bench.BenchConfig.from_preset("verdict")
    assert verdict.rounds >= 20 and verdict.batch_sizes == (128,) and not verdict.memory
    assert bench.BenchConfig() == bench.BenchConfig.from_preset("cpu")
    short = bench.BenchConfig.from_preset("gpu-short", device="cpu")  # built here without CUDA
    assert ModelCase("resnet18", 112) in short.models and 256 in short.batch_sizes
    assert "gradcam_loop" in short.methods and PRESETS["gpu-short"]["device"] == "cuda"
    args = parse("--preset", "gpu-short", "--device", "cpu", "--batch-sizes", "256")
    cfg = config_from_args(args)
    assert cfg.preset == "gpu-short" and cfg.batch_sizes == (256,) and not cfg.quick
    assert bench.BenchConfig(models=["resnet18"]).models == (ModelCase("resnet18", 28),)  # the registry's size


def test_budget_skips_what_would_start_late():
    cfg = bench.BenchConfig.from_preset("quick", budget_s=1e-9, memory=False)
    record = bench.run_benchmark(cfg)
    assert record["cam"] == [] and record["training"] == []
    assert [(s["kind"], s["batch_size"]) for s in record["skipped"]] == [("cam", 2), ("cam", 8), ("train", 8)]
    assert all("raise --budget-seconds" in s["reason"] for s in record["skipped"])


def test_compare_maps():
    ref = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = methods.compare_maps({"batch_gradcam": ref, "same": ref + 1e-7, "off": ref + 1e-3, "shape": ref[:, :4]})
    assert res["methods"]["same"]["pass"] and not res["methods"]["off"]["pass"]
    assert res["methods"]["off"]["max_abs_diff"] == pytest.approx(1e-3)
    assert res["methods"]["shape"] == {"max_abs_diff": None, "pass": False} and res["pass"] is False
    assert methods.compare_maps({"batch_gradcam": ref})["pass"] is False  # nothing compared is no pass


def test_missing_library_is_skipped_with_a_reason(monkeypatch):
    def unavailable(case):
        raise methods.MethodUnavailable("captum is not installed; pip install captum")

    monkeypatch.setitem(methods.BUILDERS, "captum", unavailable)
    cfg = bench.BenchConfig.from_preset("quick")
    case = bench_run.make_case(ModelCase("simplecnn", 16), 3, cfg, torch.device("cpu"))
    built, skipped = methods.build_methods(case, METHODS)
    assert "captum" not in built and "pip install captum" in skipped["captum"]
    assert built["batch_gradcam"].run().shape == (3, 16, 16)  # the model is built for the benchmarked size


def test_a_failing_method_is_recorded_not_fatal():
    timings = bench_run.time_calls({"ok": lambda: 1, "bad": lambda: 1 / 0}, rounds=2, min_run_time=0.01)
    assert timings["bad"] == {"error": "ZeroDivisionError: division by zero"} and timings["ok"]["median_ms"] > 0


def test_loop_leak_check_detects_a_leak(monkeypatch):
    case = bench_run.make_case(ModelCase("simplecnn", 28), 2, bench.BenchConfig.from_preset("quick"),
                               torch.device("cpu"))
    assert methods.loop_frees_graph(case) is True
    kept = []

    def leaky(model, x, layer, targets):  # keeps the target layer's output (and its graph) alive
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            return gradcam_loop(model, x, layer, targets)
        finally:
            handle.remove()

    monkeypatch.setattr(methods, "gradcam_loop", leaky)
    assert methods.loop_frees_graph(case) is False


def test_no_private_names_cross_module_lines():
    for path in Path(bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, node.module)


def test_package_import_does_not_import_optional_libraries():
    code = ("import sys, batchcam.bench; "
            "assert not {'captum', 'pytorch_grad_cam', 'cv2'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
