"""Tests of crc_core.runs (the registry and the presets) and crc_core.reference (the paper's
numbers, read from a CSV)."""
from __future__ import annotations

import math

import pytest

from crc_core import reference, runs
from crc_core.runs import PRESETS, RUNS, run_name


def test_registry_names_are_generated_from_the_specs():
    for name, run in RUNS.items():
        assert run_name(run.spec) == name == run.name
    assert RUNS["mnist-softplus-2x1024-crt-g0.01-r1.58"].spec.widths == (784, 1024, 10)
    assert RUNS["mnist-sigmoid-4x1024-standard"].spec.widths == (784, 1024, 1024, 1024, 10)
    assert len(RUNS) == 42


def test_every_table_has_its_runs():
    expected = {"table2": 6, "table3": 12, "table4": 12, "table5": 9, "table6": 4, "figure1": 10}
    assert set(expected) == set(runs.TABLES)
    for table, count in expected.items():
        assert len(runs.runs_for_table(table)) == count, table
    t3 = {run.name for run in runs.runs_for_table("table3")}
    for depth, gamma in ((2, 0.01), (3, 0.05), (4, 0.07)):
        assert f"mnist-softplus-{depth}x1024-crt-g{gamma:g}-r1.58" in t3
        assert f"mnist-relu-{depth}x1024-coap-r1.58" in t3
        assert f"mnist-relu-{depth}x1024-crown-ibp-r1.58" in t3
    with pytest.raises(ValueError, match="unknown table"):
        runs.runs_for_table("table9")


def test_unknown_run_and_preset_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean"):
        runs.get_run("mnist-softplus-2x1024-crt-g0.01-r1.5")
    with pytest.raises(ValueError, match="unknown preset"):
        runs.get_preset("gpu")


def test_presets_keep_depth_and_activation():
    base = RUNS["mnist-softplus-4x1024-crt-g0.07-r1.58"].spec
    smoke = PRESETS["smoke"].apply(base)
    assert smoke.depth == 4 and smoke.activation == "softplus" and smoke.widths[1] == 32
    assert smoke.epochs == 1 and smoke.train_subset is not None
    cpu = PRESETS["cpu"].apply(base)
    assert cpu.widths == base.widths and cpu.batch_size == 128 and cpu.train_subset is None
    assert (cpu.attack_schedule, cpu.attack_steps) == ("crc", 10)
    paper = PRESETS["paper"].apply(base)
    assert paper == base
    assert (paper.epochs, paper.batch_size, paper.lr, paper.seed) == (30, 64, 1e-3, 1)
    assert paper.attack_schedule == "authors"
    assert (PRESETS["smoke"].eval_n, PRESETS["cpu"].eval_n, PRESETS["paper"].eval_n) == (20, 500, 150)
    assert PRESETS["cpu"].test_n is None and PRESETS["paper"].test_n is None   # whole test set
    for run in RUNS.values():
        for preset in PRESETS.values():
            preset.apply(run.spec)
    assert PRESETS["cpu"].pgd_eval(1.58) == (316, 0.01)      # the authors': 200·ρ steps of 0.01
    assert PRESETS["cpu"].apply(RUNS["mnist-softplus-2x1024-crt-g0.01-r1.58"].spec).epochs == 24


def test_an_activation_key_overrides_the_epochs_of_its_depth():
    cpu = PRESETS["cpu"]
    assert cpu.apply(RUNS["mnist-softplus-4x1024-crt-g0.07-r1.58"].spec).epochs == 24
    assert cpu.apply(RUNS["fashion-mnist-softplus-4x1024-crt-g0.07-r1.58"].spec).epochs == 24
    assert cpu.apply(RUNS["mnist-sigmoid-4x1024-crt-g0.01-r1.58"].spec).epochs == 14
    assert cpu.apply(RUNS["mnist-softplus-4x1024-crown-ibp-r1.58"].spec).epochs == 14
    epochs = cpu.to_dict()["epochs"]
    assert epochs["crt/L4"] == 14 and epochs["crt/L4/softplus"] == 24
    assert PRESETS["smoke"].apply(RUNS["mnist-softplus-4x1024-crt-g0.07-r1.58"].spec).epochs == 1


def test_paper_reference_points_at_registered_runs():
    frame = reference.paper_reference()
    assert set(frame["run"]) <= set(RUNS)
    assert set(frame["table"]) == {"table2", "table3", "table4", "table5", "table6"}
    row = frame[(frame["run"] == "mnist-softplus-2x1024-crt-g0.01-r1.58")
                & (frame["metric"] == "certified_fraction/runner-up/global/1.58")]
    assert len(row) == 1 and math.isclose(row["value"].iloc[0], 0.6979)
    assert row["printed"].iloc[0] == "69.79" and row["unit"].iloc[0] == "percent"
    assert all(0 <= v <= 2 for v in frame["value"])
    assert len(reference.paper_reference("table6")) == 12
    with pytest.raises(ValueError, match="unknown table"):
        reference.paper_reference("table7")


def test_paper_reference_rejects_a_malformed_csv(tmp_path, monkeypatch):
    bad = tmp_path / "ref.csv"
    bad.write_text("# comment\ntable,run,quantity,metric,printed,unit\n"
                   "table3,mnist-softplus-2x1024-crt-g0.01-r1.58,acc,clean_accuracy,98.6x,percent\n")
    monkeypatch.setattr(reference, "REFERENCE_CSV", bad)
    reference.paper_records.cache_clear()
    try:
        with pytest.raises(ValueError, match="line 3: '98.6x' is not a number"):
            reference.paper_records()
    finally:
        reference.paper_records.cache_clear()
