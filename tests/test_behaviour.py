"""Behaviour probes: a code change that computes the same numbers keeps records current, one that
changes a number makes them stale; the committed probe of this code is the code's (chapter 7)."""

import json
import warnings

import pytest
import torch

from batchcam import results as R
from batchcam import staleness as S
from batchcam.behaviour import CROSS_CPU_ABS_TOL, CROSS_CPU_REL_TOL, code_key, probe, same_behaviour
from batchcam.provenance import code_hashes, git


def _probe(value=1.0, resnet=2.0):
    return {"simplecnn": {"a/l1": value, "a/acc": 0.5}, "resnet18": {"b/l1": resnet},
            "data": {"mnist/train/sha256": 12345.0}}


def test_same_behaviour_compares_the_model_and_the_data_only():
    a = _probe()
    assert same_behaviour(a, _probe(1.0 + 1e-6), "simplecnn")  # within REL_TOL
    assert not same_behaviour(a, _probe(1.01), "simplecnn")
    assert same_behaviour(a, _probe(resnet=3.0), "simplecnn")  # another model's change
    assert not same_behaviour(a, _probe(resnet=3.0), "resnet18")
    other_data = _probe()
    other_data["data"]["mnist/train/sha256"] = 12346.0  # hashes compare exactly
    assert not same_behaviour(a, other_data, "simplecnn")
    assert not same_behaviour(a, {"data": a["data"]}, "simplecnn")  # model not probed


def _record_of_edited_code(tmp_path, make_record, monkeypatch):
    """One record under ``tmp_path/runs`` made by HEAD's code with ``losses.py`` edited: (HEAD's hashes, its)."""
    if git("rev-parse", "HEAD") is None:
        pytest.skip("not a git checkout")
    monkeypatch.setenv("BATCHCAM_RESULTS", str(tmp_path))
    head = code_hashes("HEAD")
    edited = dict(head, **{"batchcam/losses.py": "f" * 64})
    record, tensors = make_record(seed=0, provenance={"git_commit": "0" * 40, "git_dirty": False,
                                                      "code_sha256": edited})
    R.write_run(record, tensors, tmp_path / "runs")
    return head, edited


def test_a_code_change_with_the_same_behaviour_keeps_records_current(tmp_path, make_record, monkeypatch):
    head, edited = _record_of_edited_code(tmp_path, make_record, monkeypatch)
    behaviour = tmp_path / "behaviour.json"

    def stale_with(old_probe):
        behaviour.write_text(json.dumps({code_key(head): _probe(), code_key(edited): old_probe}))
        return [s["reason"] for s in S.stale_records(tmp_path / "runs")]

    assert stale_with(_probe(resnet=9.0)) == []  # same SimpleCNN numbers: current
    assert stale_with(_probe(1.5)) == ["changed since: batchcam/losses.py"]
    behaviour.unlink()
    assert [s["reason"] for s in S.stale_records(tmp_path / "runs")] == ["changed since: batchcam/losses.py"]


def test_the_committed_probe_of_this_code_is_what_this_code_computes():
    from batchcam.provenance import provenance

    probes = S.probes_for(code_hashes(), S.load_behaviour(), legacy=False)
    key = code_key(code_hashes())
    assert probes, (f"results/behaviour.json has no probe of this code ({key}): "
                    "run `python scripts/fingerprint.py` and commit the file")
    cpu = provenance("cpu")["cpu"]
    stored = probes.get(cpu) or next(iter(probes.values()))
    if stored.get("versions", {}).get("torch") != torch.__version__:
        pytest.skip(f"probe recorded with torch {stored.get('versions')}, this is {torch.__version__}")
    fresh = probe(["simplecnn"])
    if cpu in probes:  # this CPU model made a probe of this code: it must agree within REL_TOL
        assert same_behaviour(stored, fresh, "simplecnn")
        return
    # Only another CPU model probed this code: it rounds differently and training carries it further. The
    # probe must still agree within the cross-CPU tolerance, and the test says so.
    assert same_behaviour(stored, fresh, "simplecnn", CROSS_CPU_REL_TOL, CROSS_CPU_ABS_TOL)
    warnings.warn(f"this code was probed on {', '.join(probes)}, not on {cpu}: the probe agrees within the "
                  f"cross-CPU tolerance ({CROSS_CPU_REL_TOL:g} relative)", stacklevel=2)


def test_probes_are_compared_only_when_one_cpu_model_made_both(tmp_path, make_record, monkeypatch):
    """A record's code and HEAD's code probed on different CPU models cannot show the same behaviour (the
    CPUs round differently): the record is stale and the reason says how to probe both on one CPU model.
    Probed on a common CPU model, they are compared there."""
    head, edited = _record_of_edited_code(tmp_path, make_record, monkeypatch)

    def on(cpu, value=1.0):
        return {**_probe(value), "versions": {"cpu": cpu}}

    def reasons(entries):
        (tmp_path / "behaviour.json").write_text(json.dumps(S.pack_behaviour(entries)))
        return [s["reason"] for s in S.stale_records(tmp_path / "runs")]

    new, old = code_key(head), code_key(edited)
    (apart,) = reasons({new: on("AMD EPYC"), old: on("Intel Xeon")})
    assert apart.startswith("changed since: batchcam/losses.py") and "fingerprint.py --commit" in apart
    assert reasons({new: on("AMD EPYC"), f"{new}@Intel Xeon": on("Intel Xeon"), old: on("Intel Xeon")}) == []
    assert reasons({new: on("AMD EPYC"), f"{new}@Intel Xeon": on("Intel Xeon", 1.5),
                    old: on("Intel Xeon")}) == ["changed since: batchcam/losses.py"]
    assert S.probes_for(head, S.load_behaviour(tmp_path / "behaviour.json")).keys() == {"AMD EPYC", "Intel Xeon"}
    assert S.probe_cpu(_probe()) == S.LEGACY_PROBE_CPU  # stored before probes named their CPU


def test_the_cross_cpu_tolerance_still_catches_a_changed_number():
    a = _probe()
    assert same_behaviour(a, _probe(1.0 + 5e-3), "simplecnn", CROSS_CPU_REL_TOL, CROSS_CPU_ABS_TOL)
    assert not same_behaviour(a, _probe(1.05), "simplecnn", CROSS_CPU_REL_TOL, CROSS_CPU_ABS_TOL)
    assert not same_behaviour(a, _probe(1.0 + 5e-3), "simplecnn")  # the default stays tight
