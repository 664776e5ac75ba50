"""The landing page's status box is computed from the records and the verdicts file (issue 26, item 6)."""

from __future__ import annotations

from types import SimpleNamespace

from batchcam import status


def test_grid_progress_counts_recorded_run_ids():
    configs = [SimpleNamespace(run_id=f"r{i}") for i in range(5)]
    assert status.grid_progress(configs, {"r0", "r3", "other"}) == (2, 5)


def test_the_status_reads_the_verdict_words_and_the_records(monkeypatch):
    monkeypatch.setattr(status, "_grid", lambda name, recorded: ((len(recorded), 86), "") if name == "verdict"
                        else (None, "the learning rate is chosen on validation runs that are not recorded yet"))
    rows = [{"run_id": "a", "model": "simplecnn", "epochs": 2, "device": "cpu"},
            {"run_id": "b", "model": "simplecnn", "epochs": 0, "device": "cpu"}]
    verdicts = {"entries": [{"verdict": "supported"}, {"verdict": "not testable here"}, {"verdict": "supported"}],
                "timing": [{"verdict": "contradicted"}], "protocol": {"scope": "SimpleCNN, CPU"},
                "decoy": {"entries": [{"verdict": "not established (underpowered)"}, {"verdict": "supported"}],
                          "protocol": {"scope": "SimpleCNN, decoyed"}}}
    bench = {"summary": {"maps_equal": False}}
    got = dict(status.reproduction_status(rows, verdicts, bench, "b.json")["rows"])
    assert got["Main verdict grid"].startswith("2 of 86 runs recorded")
    assert got["Decoy verdict grid"].startswith("not started: the learning rate")
    assert got["Verdicts on the claims"] == "2 supported, 1 not testable here"
    assert got["Timing verdicts"] == "1 contradicted" and got["Scope"] == "SimpleCNN, CPU"
    assert got["Decoy verdicts (v2: suppresses spurious features)"] == "1 not established (underpowered), 1 supported"
    assert got["Scope of the decoy verdicts"] == "SimpleCNN, decoyed"
    verdicts.pop("decoy")  # a verdicts file from before the decoy family: no line, no error
    assert "Decoy verdicts (v2: suppresses spurious features)" not in dict(
        status.reproduction_status(rows, verdicts, bench)["rows"])
    assert "NO: b.json" in got["The method"]  # a failed equality check is said plainly
    assert got["Records"].startswith("2 run records (2 cpu); simplecnn: 1 trained")
    assert "not generated yet" in dict(status.reproduction_status(rows)["rows"])["Verdicts"]


def test_the_status_command_prints_the_box_from_the_committed_records(capsys):
    from batchcam import cli

    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out == status.status_markdown()
    assert out.startswith("**Status of the reproduction**") and "- **Decoy verdict grid:**" in out
