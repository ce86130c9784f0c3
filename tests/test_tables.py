"""Tests of crc_core.tables (the API the notebooks call) and crc_core.anatomy: tables in the
paper's shape with ours beside the paper's numbers, missing runs shown as missing, the smoke
warning, the CSV, the tidy frames, the run status and its time estimate."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from crc_core import MLP, anatomy, store, tables
from crc_core.runs import RUNS, runs_for_table

RUN = "mnist-sigmoid-2x1024-crt-g0.01-r1.58"      # in Tables 5 and 6


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store.run_experiment(RUN, "smoke", results_dir=root / "results", runs_dir=root / "runs",
                         progress=False)
    return root / "results"


def test_long_table_puts_ours_beside_the_papers(smoke_store):
    frame = tables.long_table("table6", "smoke", results_dir=smoke_store)
    assert len(frame) == 4 * len(runs_for_table("table6"))
    stored = frame[frame["run"] == RUN]
    assert set(stored["status"]) == {"stored"}
    result = store.load_result(store.results_path(RUN, "smoke", smoke_store))
    row = stored[stored["metric"] == "certified_fraction/runner-up/global/0.5"].iloc[0]
    entry = result["metrics"]["certified_fraction/runner-up/global/0.5"]
    assert row["ours"] == entry["value"] and row["n"] == entry["n"]
    assert (row["lo"], row["hi"]) == tuple(entry["ci95"])
    mean = stored[stored["metric"] == "mean_certificate/runner-up/global"].iloc[0]
    assert math.isclose(mean["paper"], 1.5705) and math.isclose(mean["difference"], mean["ours"] - 1.5705)
    missing = frame[frame["run"] != RUN]
    assert set(missing["status"]) == {"missing"} and missing["ours"].isna().all()


def test_paper_table_shape_missing_runs_and_smoke_warning(smoke_store):
    wide = tables.paper_table("table6", "smoke", results_dir=smoke_store)
    assert "⚠" in wide.index[0][0] and "NOT comparable" in wide.index[0][0]
    assert len(wide) == 1 + len(runs_for_table("table6"))
    quantity = "mean CRC, global bounds"
    assert (quantity, "ours") in wide.columns and (quantity, "paper") in wide.columns
    ours = wide[(quantity, "ours")]
    assert (ours == "missing").sum() == 3
    crt = wide.loc[("2×1024 sigmoid", "CRT, γ = 0.01")]
    assert crt[(quantity, "paper")] == "1.571" and crt[(quantity, "ours")] not in ("", "missing")
    cpu = tables.paper_table("table6", "cpu", results_dir=smoke_store)
    assert not any("⚠" in str(i[0]) for i in cpu.index)


def test_csv_is_the_long_table(smoke_store):
    wide = tables.paper_table("table5", "smoke", results_dir=smoke_store)
    path = tables.write_csv(wide, "table5", "smoke", results_dir=smoke_store)
    assert path == smoke_store / "tables" / "smoke" / "table5.csv"
    back = pd.read_csv(path)
    assert list(back.columns[:3]) == ["table", "run", "network"]
    assert len(back) == len(tables.long_table("table5", "smoke", results_dir=smoke_store))


def test_ensure_runs_lists_without_training(smoke_store, tmp_path):
    status = tables.ensure_runs("table6", "smoke", train_missing=False, results_dir=smoke_store,
                                runs_dir=tmp_path / "runs", progress=False)
    assert dict(zip(status["run"], status["status"]))[RUN] == "stored"
    assert (status["status"] == "missing").sum() == 3
    assert not (tmp_path / "runs").exists()
    empty = tmp_path / "no-results"
    for run in RUNS.values():
        assert tables.measured_minutes(run, "cpu", empty) is None
        assert 0 < tables.estimate_minutes(run, "cpu", empty) < 24 * 60
    assert tables.estimate_minutes(RUNS["mnist-softplus-2x1024-crt-g0.01-r1.58"], "cpu", empty) > 30


def test_a_stored_run_is_estimated_by_its_own_measured_minutes(smoke_store):
    prov = store.load_result(store.results_path(RUN, "smoke", smoke_store))["provenance"]
    minutes = (prov["train_cpu_seconds"] + prov["eval_seconds"]) / 60
    assert tables.measured_minutes(RUNS[RUN], "smoke", smoke_store) == pytest.approx(minutes)
    assert tables.estimate_minutes(RUNS[RUN], "smoke", smoke_store) == pytest.approx(minutes)
    assert tables.estimate_minutes(RUNS[RUN], "smoke", smoke_store) != 0.25   # not the fallback


def test_tidy_frames(smoke_store):
    subset = tables.per_image_frame(RUN, "smoke", "subset", results_dir=smoke_store)
    test = tables.per_image_frame(RUN, "smoke", "test", results_dir=smoke_store)
    assert len(subset) == 20 and len(test) == 500 and list(test["index"][:3]) == [0, 1, 2]
    radii = tables.radii_frame("table6", "smoke", results_dir=smoke_store)
    assert set(radii["targets"]) == {"runner-up", "all-classes"} and len(radii) == 1000
    assert tables.figure1_frame("smoke", results_dir=smoke_store).empty
    prov = tables.provenance_frame("smoke", results_dir=smoke_store)
    assert list(prov["run"]) == [RUN] and prov["audit_violations"].iloc[0] == 0
    with pytest.raises(FileNotFoundError, match="no stored results"):
        tables.per_image_frame("mnist-sigmoid-2x1024-standard", "smoke", results_dir=smoke_store)
    with pytest.raises(ValueError, match="unknown table"):
        tables.long_table("table7", "smoke")


def test_anatomy_of_one_certificate():
    torch.manual_seed(0)
    model = MLP([784, 24, 10], "softplus")
    x = torch.rand(784)
    y = int(model(x[None]).argmax())
    a = anatomy.certificate_anatomy(model, x, y, rho=0.5)
    assert math.isnan(a.radius[y]) and a.certificate == float(a.radius[~a.radius.isnan()].min()) >= 0
    assert a.runner_up != y and a.predicted == y
    m, M = a.global_bounds
    lm, lM = a.local_bounds
    assert m - 1e-9 <= a.eigenvalues[0] and a.eigenvalues[-1] <= M + 1e-9
    assert lm - 1e-9 <= a.eigenvalues[0] and a.eigenvalues[-1] <= lM + 1e-9
    assert m <= lm + 1e-12 and lM <= M + 1e-12           # local bounds are never looser
    assert (a.attack - a.x).norm() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="y must lie in"):
        anatomy.certificate_anatomy(model, x, 10)


def test_tuning_record_is_read():
    frame = tables.tuning_frame()
    assert list(frame.columns) == ["date", "base_run", "change", "epochs", "clean_accuracy",
                                   "certified_test_1.58", "certificate", "note"]
    assert len(frame) >= 1 and set(frame["base_run"]) <= set(RUNS)
    assert set(frame["certificate"]) <= {"global", "crown", "coap"}


def test_best_try_is_the_largest_certified_row_of_its_run(tmp_path):
    record = tmp_path / "tuning.csv"
    record.write_text(
        "# a comment\n"
        "date,base_run,change,epochs,clean_accuracy,certified_test_1.58,certificate,note\n"
        "d,mnist-softplus-2x1024-crt-g0.01-r1.58,none,24,98.2,75.2,global,\n"
        "d,mnist-softplus-2x1024-crt-g0.01-r1.58,rho 2,24,98.1,76.5,global,"
        "\"a note; results/cpu/tuning/mnist-softplus-2x1024-crt-g0.01-r1.58--rho=2.json\"\n"
        "d,mnist-softplus-2x1024-crt-g0.01-r1.58,first schedule,5,95.3,,global,stopped\n"
        "d,mnist-relu-2x1024-crown-ibp-r1.58,beta 3,20,98.3,80.0,crown,\n")
    best = tables.best_try("mnist-softplus-2x1024-crt-g0.01-r1.58", record, tmp_path)
    assert (best["change"], best["certified_test_1.58"], best["tries"]) == ("rho 2", 76.5, 3)
    assert best["try"] == "mnist-softplus-2x1024-crt-g0.01-r1.58--rho=2" and best["weights"] is None
    weights = tmp_path / "cpu" / "tuning" / "mnist-softplus-2x1024-crt-g0.01-r1.58--rho=2.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert tables.best_try("mnist-softplus-2x1024-crt-g0.01-r1.58", record, tmp_path)["weights"] == weights
    assert tables.best_try("mnist-relu-2x1024-crown-ibp-r1.58", record, tmp_path)["try"] is None
    assert tables.best_try("mnist-softplus-3x1024-crt-g0.05-r1.58", record) is None
    stored = tables.best_try("mnist-softplus-2x1024-crt-g0.01-r1.58")   # the committed record
    frame = tables.tuning_frame()
    mine = frame[frame["base_run"] == "mnist-softplus-2x1024-crt-g0.01-r1.58"]
    assert stored["certified_test_1.58"] == mine["certified_test_1.58"].max()


def test_smooth_baselines_show_the_crc_certificate_beside_their_own():
    long = tables.long_table("table3", "smoke")
    crc = long[long["quantity"].str.startswith("CRC on the same net")]
    assert set(crc["run"]) == {r for r in set(long["run"]) if "crown-ibp" in r or "coap" in r}
    assert set(crc["metric"]) == {"certified_accuracy/all-classes/global/1.58",
                                  "certified_accuracy/all-classes/global/0.5"}
    crt = long[long["run"].str.contains("-crt-")]
    assert not crt["quantity"].str.startswith("CRC on the same net").any()


def test_differences_summary_lists_clean_gaps_success_and_radius_ratio_ranges():
    nan = float("nan")
    frame = pd.DataFrame([
        # run, metric, ours, paper (fractions)
        ("a-crt", "clean_accuracy", 0.937, 0.956),
        ("a-crt", "clean_accuracy", 0.937, 0.956),          # the same run in a second table
        ("b-crown-ibp", "clean_accuracy", 0.898, 0.827),
        ("c-crt", "clean_accuracy", 0.982, 0.987),          # within a point: in neither list
        ("d-missing", "clean_accuracy", nan, 0.9),
        ("mnist-sigmoid-2x1024-curvature-g0.03", "certificate_success/runner-up/global", 1.0, 0.4417),
        ("mnist-sigmoid-4x1024-curvature-g0.07", "certificate_success/runner-up/global", 0.96, 0.1953),
        ("mnist-sigmoid-2x1024-standard", "certificate_success/runner-up/global", 0.0, 0.0224),
        ("mnist-sigmoid-2x1024-crt-g0.01-r1.58", "certificate_success/runner-up/global", 0.5, 0.5),
        # Table 5's mean certificates: CROWN-general and CRC on the same nets
        ("e-net", "mean_certificate/runner-up/crown", 0.6, 0.4),
        ("e-net", "mean_certificate/runner-up/global", 1.1, 1.0),
        ("e-net", "mean_certificate/runner-up/global", 1.1, 1.0),     # again, in Table 6
        ("f-net", "mean_certificate/runner-up/crown", 0.3, 0.25),
        ("f-net", "mean_certificate/runner-up/global", 0.02, 0.005),  # the paper's below 0.1: left out
        ("g-net", "mean_certificate/runner-up/global", 3.0, 1.0),     # no CROWN-general mean: not Table 5's
    ], columns=["run", "metric", "ours", "paper"])
    frame["difference"] = frame["ours"] - frame["paper"]
    summary = tables.differences_summary(frame)
    assert summary["clean_below"] == "`a-crt` (-1.9)"
    assert summary["clean_above"] == "`b-crown-ibp` (+7.1)"
    # only Table 2's γ > 0 nets: not the standard (γ = 0) one, nor another method's
    assert summary["success_ours"] == "96–100%" and summary["success_paper"] == "20–44%"
    assert summary["crown_ratio"] == "1.20–1.50×" and summary["crc_ratio"] == "1.10–1.10×"
    empty = tables.differences_summary(frame.iloc[:0])
    assert empty == {"clean_below": "none", "clean_above": "none", "success_ours": "—",
                     "success_paper": "—", "crown_ratio": "—", "crc_ratio": "—"}
