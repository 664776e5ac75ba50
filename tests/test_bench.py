"""The speed benchmark (batchcam.bench): record schema, the map-equality check, skipping, CLI options."""

import json
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch

from batchcam import bench
from batchcam.cam import batch_gradcam

OPTIONAL = {"pytorch_grad_cam": "pytorch_grad_cam", "captum": "captum"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run, shared by the schema tests (a few seconds)."""
    out = tmp_path_factory.mktemp("bench")
    record, path = bench.run_benchmark(bench.quick_config(out=str(out)), progress=False)
    return record, path


def test_record_is_written_atomically_and_matches_the_return_value(quick):
    record, path = quick
    assert path.is_file() and path.name.startswith("bench-cpu-") and path.name.endswith("-quick.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(record))
    assert not list(path.parent.glob(".*.tmp"))


def test_record_top_level_schema(quick):
    record, _ = quick
    assert record["kind"] == "batchcam-bench" and record["schema_version"] == bench.SCHEMA_VERSION
    for key in ("config", "provenance", "environment", "methods", "compared", "cam", "training", "skipped",
                "targets", "summary", "wall_s"):
        assert key in record, key
    assert record["config"]["quick"] is True
    prov = record["provenance"]
    assert any(k in prov for k in ("git_commit", "commit")) and prov.get("source")
    env = record["environment"]
    for key in ("device", "device_name", "torch_threads", "amp", "channels_last", "load_average_start",
                "load_average_end", "memory_method"):
        assert key in env, key
    assert env["device"] == "cpu" and env["amp"] is None and len(env["load_average_end"]) == 3
    assert set(record["methods"]) == set(bench.METHOD_BUILDERS)


def test_cam_entries_time_every_method_with_ratios(quick):
    record, _ = quick
    assert [e["batch_size"] for e in record["cam"]] == [2, 8]
    for e in record["cam"]:
        for name in bench.METHODS:
            if name in e["skipped_methods"]:  # an optional library that is not installed
                assert name in OPTIONAL and find_spec(OPTIONAL[name]) is None
                continue
            t = e["timings"][name]
            assert t["reps"] >= 3 and len(t["times_ms"]) == t["reps"] and t["median_ms"] > 0, name
            assert e["ratios"]["to_forward"][name] > 0 and e["ratios"]["to_batch_gradcam"][name] > 0
        assert e["ratios"]["to_batch_gradcam"]["batch_gradcam"] == pytest.approx(1.0)
        assert e["timings"]["gradcam_loop"]["reps"] == 3 if e["batch_size"] >= 8 else 5
        assert e["floor_check"] == {"grad_enabled_up_to_target_layer": False, "holds": True}
        leak = e["loop_leak_check"]
        assert leak["frees_graph_on_return"] is True and leak["problem"] is None
        mem = e["memory"]
        assert "error" not in mem, mem.get("error")  # measured in a spawned process (CPU)
        assert set(mem["peak_mib"]) == {"forward", "batch_gradcam", "gradcam_loop"} and mem["method"]
        assert all(v is None or v >= 0 for v in mem["peak_mib"].values())


def test_equality_check_is_part_of_the_run(quick):
    record, _ = quick
    for e in record["cam"]:
        eq = e["equality"]
        assert eq["reference"] == "batch_gradcam" and eq["atol"] == 1e-5 and eq["pass"] is True
        expected = {"gradcam_loop"} | {label for name, labels in (("captum", ["captum"]), (
            "pytorch_grad_cam", ["pytorch_grad_cam", "pytorch_grad_cam_output"])) if name in e["timings"]
            for label in labels}
        assert set(eq["methods"]) == expected
        for label, check in eq["methods"].items():
            assert 0 <= check["max_abs_diff"] <= 1e-5 and check["pass"] is True, label
    assert record["summary"]["maps_equal"] is True


def test_training_entries_and_targets(quick):
    record, _ = quick
    (train,) = record["training"]
    steps = {(s["objective"], s["distance"]): s for s in train["steps"]}
    assert set(steps) == {("ce", None)} | {(o, d) for o in bench.OBJECTIVES[1:] for d in ("l1", "l2", "ssim")}
    assert steps[("ce", None)]["ratio_to_ce"] == 1.0
    assert all(s["median_ms"] > 0 and s["reps"] == 5 for s in train["steps"])
    names = {r["target"] for r in record["targets"]}
    assert names == set(bench.TARGETS)
    for row in record["targets"]:
        assert row["met"] in (True, False) and row["value"] is not None, row
        assert row["met"] == (row["value"] <= row["threshold"] if row["op"] == "<=" else row["value"] >= row["threshold"])
    assert len([r for r in record["targets"] if r["target"] == "train_overhead"]) == 3
    summary = record["summary"]
    assert summary["targets_met"] + summary["targets_missed"] == len(record["targets"])


def _wrong_class_builder(case):
    """A deliberately wrong Grad-CAM: the map of the next class instead of the target class."""
    def run():
        return batch_gradcam(case.model, case.x, case.layer_name, (case.targets + 1) % 10)

    return bench.Method(run, lambda out: {"gradcam_loop": bench.methods._minmax(out)})


def test_a_wrong_method_fails_the_check_and_the_cli_exit_code(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(bench.METHOD_BUILDERS, "gradcam_loop", _wrong_class_builder)
    code = bench.main(["--quick", "--batch-sizes", "6", "--train-models", "--no-memory", "--reps", "1",
                       "--out", str(tmp_path)])
    assert code == 1
    (path,) = tmp_path.glob("bench-*.json")
    record = json.loads(path.read_text())
    (entry,) = record["cam"]
    wrong = entry["equality"]["methods"]["gradcam_loop"]
    assert wrong["pass"] is False and wrong["max_abs_diff"] > 1e-3
    assert entry["equality"]["pass"] is False and record["summary"]["maps_equal"] is False
    (row,) = [r for r in record["targets"] if r["target"] == "maps_equal"]
    assert row["met"] is False
    assert "FAIL" in capsys.readouterr().out


def test_compare_maps():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 5, 5, generator=g, dtype=torch.float64)
    res = bench.compare_maps({"batch_gradcam": ref, "same": ref + 1e-7, "off": ref + 1e-3,
                              "shape": ref[:, :4]}, atol=1e-5)
    assert res["methods"]["same"]["pass"] and not res["methods"]["off"]["pass"]
    assert res["methods"]["off"]["max_abs_diff"] == pytest.approx(1e-3)
    assert res["methods"]["shape"] == {"max_abs_diff": None, "pass": False} and res["pass"] is False


def test_missing_library_is_skipped_with_a_reason(monkeypatch):
    def unavailable(case):
        raise bench.MethodUnavailable("captum is not installed; pip install captum")

    monkeypatch.setitem(bench.METHOD_BUILDERS, "captum", unavailable)
    model = bench.cam._prepare_model(bench.ModelCase.parse("simplecnn"), bench.quick_config(), torch.device("cpu"), False)
    case = bench.make_case(model, bench.ModelCase.parse("simplecnn"), 2, bench.quick_config(), torch.device("cpu"))
    methods, skipped = bench.build_methods(case)
    assert "captum" not in methods and "pip install captum" in skipped["captum"]


def test_a_failing_method_is_recorded_not_fatal():
    timings, outputs = bench.time_side_by_side({"ok": lambda: 1, "bad": lambda: 1 / 0}, torch.device("cpu"),
                                               reps={"ok": 2, "bad": 2})
    assert timings["ok"]["reps"] == 2 and outputs == {"ok": 1}
    assert timings["bad"] == {"error": "ZeroDivisionError: division by zero"}
    timings, outputs = bench.time_side_by_side({"bad": lambda: 1 / 0}, torch.device("cpu"), reps={"bad": 2})
    assert set(timings) == {"bad"} and outputs == {}


def test_too_slow_configurations_are_skipped_and_reported(tmp_path):
    cfg = bench.quick_config(out=str(tmp_path), max_config_s=0.0, memory=False)
    record, _ = bench.run_benchmark(cfg, write=False, progress=False)
    assert record["cam"] == [] and record["training"] == []
    assert {(s["kind"], s["batch_size"]) for s in record["skipped"]} == {("cam", 2), ("cam", 8), ("train", 8)}
    assert all("max_config_s" in s["reason"] for s in record["skipped"])
    rows = [r for r in record["targets"] if r["target"] != "maps_equal"]
    assert rows and all(r["met"] is None and "max_config_s" in r["reason"] for r in rows)


def test_cli_options_build_the_config():
    parser = bench.add_bench_args(__import__("argparse").ArgumentParser())
    cfg = bench.config_from_args(parser.parse_args(["--quick", "--reps", "3"]))
    assert cfg.quick and cfg.reps == 3 and cfg.models == ("simplecnn:28",)
    cfg = bench.config_from_args(parser.parse_args(["--models", "resnet18:112", "--batch-sizes", "1", "64"]))
    assert cfg.models == cfg.train_models == ("resnet18:112",) and cfg.batch_sizes == (1, 64) and not cfg.quick
    assert bench.config_from_args(parser.parse_args([])) == bench.BenchConfig()
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        bench.config_from_args(parser.parse_args(["--models", "resnet19"]))
    with pytest.raises(ValueError, match="at least 32 px"):
        bench.ModelCase.parse("convnextv2_tiny:28")


def test_model_is_built_for_the_benchmarked_size():
    mc = bench.ModelCase.parse("simplecnn:16")  # SimpleCNN's linear head depends on the input size
    model = bench.cam._prepare_model(mc, bench.quick_config(), torch.device("cpu"), train=False)
    case = bench.make_case(model, mc, 3, bench.quick_config(), torch.device("cpu"))
    assert bench.METHOD_BUILDERS["batch_gradcam"](case).run().shape == (3, 16, 16)


def test_package_import_does_not_import_optional_libraries():
    code = ("import sys, batchcam, batchcam.bench; "
            "assert not {'captum', 'pytorch_grad_cam', 'cv2'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_m_batchcam_bench_with_memory_in_spawned_workers(tmp_path):
    """``python -m batchcam.bench`` end to end, memory included (measured in spawned worker processes):
    exactly one record, with the loop's peak measured."""
    out = subprocess.run([sys.executable, "-m", "batchcam.bench", "--quick", "--batch-sizes", "2",
                          "--train-models", "--reps", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = tmp_path.glob("bench-*.json")
    (entry,) = json.loads(path.read_text())["cam"]
    assert "error" not in entry["memory"] and entry["memory"]["peak_mib"]["gradcam_loop"] is not None
