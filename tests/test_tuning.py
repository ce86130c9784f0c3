"""Tests of crc_core.tuning: parsing changes, the variant's spec and name (and back), a smoke try
end to end into temporary roots (its stored results, its row recounted from them, its released
weights re-certified), the record's CSV, and the command line's errors."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from crc_core import experiments, store, tables, tuning
from crc_core.runs import PRESETS, RUNS

BASELINE_RUN = "mnist-relu-2x1024-crown-ibp-r1.58"
SMOOTH_RUN = "mnist-sigmoid-2x1024-standard"


def test_parse_changes_types_values_by_field():
    changes = tuning.parse_changes(["crown_ibp_final_beta=2", "epochs=30", "rho=2",
                                    "train_subset=none", "lr_schedule=constant"])
    assert changes == {"crown_ibp_final_beta": 2.0, "epochs": 30, "rho": 2.0,
                       "train_subset": None, "lr_schedule": "constant"}
    assert isinstance(changes["epochs"], int) and isinstance(changes["crown_ibp_final_beta"], float)


@pytest.mark.parametrize("items, message", [
    (["epochs"], "FIELD=VALUE"),
    (["epochs="], "FIELD=VALUE"),
    (["depth=3"], "unknown spec field"),
    (["activation=relu"], "another run"),
    (["epochs=2.5"], "integer"),
    (["gamma=big"], "number"),
    (["gamma=none"], "cannot be None"),
    (["epochs=3", "epochs=4"], "twice"),
])
def test_parse_changes_rejects_bad_items(items, message):
    with pytest.raises(ValueError, match=message):
        tuning.parse_changes(items)


def test_variant_spec_and_name():
    spec = tuning.variant_spec(BASELINE_RUN, "cpu", {"crown_ibp_final_beta": 2.0})
    base = PRESETS["cpu"].apply(RUNS[BASELINE_RUN].spec)
    assert spec == base.replace(crown_ibp_final_beta=2.0)
    assert tuning.variant_name(BASELINE_RUN, {"epochs": 30, "crown_ibp_final_beta": 2.0}) == \
        f"{BASELINE_RUN}--crown_ibp_final_beta=2,epochs=30"
    with pytest.raises(ValueError, match="unchanged"):
        tuning.variant_spec(BASELINE_RUN, "cpu", {"crown_ibp_final_beta": 1.0})
    with pytest.raises(ValueError, match="crown_ibp_final_beta"):   # only for crown-ibp
        tuning.variant_spec(SMOOTH_RUN, "cpu", {"crown_ibp_final_beta": 2.0})
    with pytest.raises(ValueError, match="at least one"):
        tuning.variant_name(BASELINE_RUN, {})
    with pytest.raises(ValueError, match="unknown run"):
        tuning.variant_spec("no-such-run", "cpu", {"epochs": 3})


def test_append_row_checks_columns_and_header(tmp_path):
    path = tmp_path / "tuning.csv"
    row = dict.fromkeys(tuning.COLUMNS, "x")
    tuning.append_row(row, path)
    tuning.append_row({**row, "note": "a, b"}, path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(tuning.COLUMNS) and rows[2][-1] == "a, b" and len(rows) == 3
    with pytest.raises(ValueError, match="columns"):
        tuning.append_row({"date": "x"}, path)
    bad = tmp_path / "bad.csv"
    bad.write_text("# a comment\ndate,base_run\n")
    with pytest.raises(ValueError, match="header"):
        tuning.append_row(row, bad)


@pytest.fixture(scope="module")
def smoke_try(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuning")
    record = root / "tuning.csv"
    row = tuning.try_variant(SMOOTH_RUN, {"epochs": 2}, "smoke", note="smoke test",
                             results_dir=root / "results", runs_dir=root / "runs",
                             tuning_csv=record, progress=False)
    return root, record, row


def test_a_try_is_stored_and_its_row_comes_from_its_results(smoke_try):
    root, record, row = smoke_try
    variant = tuning.variant_name(SMOOTH_RUN, {"epochs": 2})
    path = root / "results" / "smoke" / "tuning" / f"{variant}.json"
    result = json.loads(path.read_text())
    assert result["name"] == variant and result["schema"] == store.RESULTS_SCHEMA
    assert result["spec"]["epochs"] == 2 == result["evaluated_epoch"] == row["epochs"]
    m = result["metrics"]
    assert row["clean_accuracy"] == round(100 * m["clean_accuracy"]["value"], 2)
    assert row["certified_test_1.58"] == \
        round(100 * m["certified_accuracy/all-classes/global/1.58"]["value"], 2)
    assert row["certificate"] == "global" and row["change"] == "epochs 2"
    assert row["note"] == f"smoke test; results/smoke/tuning/{variant}.json"
    frame = tables.tuning_frame(record)
    assert len(frame) == 1 and frame.loc[0, "base_run"] == SMOOTH_RUN
    # the try's results are not a run of the store
    assert SMOOTH_RUN not in store.load_results("smoke", root / "results").index
    assert not list((root / "results" / "smoke").glob("*.json"))


def test_a_stored_try_is_not_redone_nor_recorded_twice(smoke_try):
    root, record, row = smoke_try
    again = tuning.try_variant(SMOOTH_RUN, {"epochs": 2}, "smoke", note="smoke test",
                               results_dir=root / "results", runs_dir=root / "runs",
                               tuning_csv=record, progress=False)
    assert again == row
    assert len(tables.tuning_frame(record)) == 1


def test_variant_names_parse_back_to_their_run_and_changes():
    changes = {"epochs": 48, "gamma": 0.06, "penalty_bound": "theorem3-all", "rho": 2.5}
    variant = tuning.variant_name("mnist-softplus-2x1024-crt-g0.01-r1.58", changes)
    assert tuning.parse_variant_name(variant) == ("mnist-softplus-2x1024-crt-g0.01-r1.58", changes)
    with pytest.raises(ValueError, match="not the name of a try"):
        tuning.parse_variant_name("mnist-softplus-2x1024-crt-g0.01-r1.58")
    with pytest.raises(ValueError, match="unknown run"):
        tuning.parse_variant_name("no-such-run--epochs=2")
    with pytest.raises(ValueError, match="did you mean .*--epochs=2,gamma=0.1"):
        tuning.parse_variant_name(f"{SMOOTH_RUN}--gamma=0.1,epochs=2")
    with pytest.raises(ValueError, match="unknown spec field"):
        tuning.parse_variant_name(f"{SMOOTH_RUN}--epoch=2")


def test_a_released_try_loads_bit_exactly_and_verifies(smoke_try, tmp_path, monkeypatch, capsys):
    root, _, _ = smoke_try
    variant = tuning.variant_name(SMOOTH_RUN, {"epochs": 2})
    results, runs = tmp_path / "results", tmp_path / "runs"
    (results / "smoke").mkdir(parents=True)
    shutil.copytree(root / "results" / "smoke" / "tuning", results / "smoke" / "tuning")
    shutil.copytree(root / "runs", runs)
    trained = tuning.load_try_network(variant, "smoke", results_dir=results, runs_dir=runs)
    path = tuning.release_try(variant, "smoke", results_dir=results, runs_dir=runs)
    assert path == results / "smoke" / "tuning" / f"{variant}.safetensors"
    shutil.rmtree(runs)  # from here on only the released weights are there
    released = tuning.load_try_network(variant, "smoke", results_dir=results, runs_dir=runs)
    for a, b in zip(trained.parameters(), released.parameters()):
        assert torch.equal(a, b)
    report = tuning.verify_try(variant, "smoke", results_dir=results, runs_dir=runs,
                               progress=False)
    assert report["ok"] and report["run"] == variant
    assert report["images"] == PRESETS["smoke"].test_n and report["compared"] >= 4 * report["images"]
    # the command line takes a try's name too; a raised stored radius is a mismatch
    monkeypatch.setenv("CRC_RESULTS_DIR", str(results))
    monkeypatch.setenv("CRC_RUNS_DIR", str(runs))
    assert experiments.main(["verify", variant, "--preset", "smoke"]) == 0
    assert "all agree" in capsys.readouterr().out
    stored_path = results / "smoke" / "tuning" / f"{variant}.json"
    stored = json.loads(stored_path.read_text())
    col = stored["per_test_image"]["radius/all-classes/global"]
    i = max(range(len(col)), key=lambda j: col[j])
    col[i] += 1e-3
    stored_path.write_text(json.dumps(stored))
    assert experiments.main(["verify", variant, "--preset", "smoke"]) == 2
    assert "1 MISMATCHES" in capsys.readouterr().out


def test_a_stored_try_whose_checkpoint_is_gone_is_retrained_for_release(smoke_try, tmp_path,
                                                                          capsys, monkeypatch):
    """Training is deterministic on CPU: `try ... --release` retrains a stored try without its
    checkpoint, and releases the weights only if they reproduce its stored certificates."""
    root, _, _ = smoke_try
    variant = tuning.variant_name(SMOOTH_RUN, {"epochs": 2})
    results, runs = tmp_path / "results", tmp_path / "runs"
    shutil.copytree(root / "results" / "smoke" / "tuning", results / "smoke" / "tuning")
    kw = dict(results_dir=results, runs_dir=runs)
    with pytest.raises(FileNotFoundError, match="retrains a stored try"):
        tuning.release_try(variant, "smoke", **kw)
    # a stored radius the weights do not give: nothing is released
    stored_path = results / "smoke" / "tuning" / f"{variant}.json"
    good = stored_path.read_text()
    tampered = json.loads(good)
    col = tampered["per_test_image"]["radius/all-classes/global"]
    col[max(range(len(col)), key=lambda j: col[j])] += 1e-3
    stored_path.write_text(json.dumps(tampered))
    with pytest.raises(RuntimeError, match="do not reproduce.*1 mismatches"):
        tuning.release_try(variant, "smoke", retrain=True, progress=False, **kw)
    assert not stored_path.with_suffix(".safetensors").exists()
    stored_path.write_text(good)
    shutil.rmtree(runs)
    monkeypatch.setenv("CRC_RESULTS_DIR", str(results))
    monkeypatch.setenv("CRC_RUNS_DIR", str(runs))
    # the command line: the stored try is not redone, its weights are retrained and released
    assert experiments.main(["try", SMOOTH_RUN, "--preset", "smoke", "--set", "epochs=2",
                             "--release", "--no-progress"]) == 0
    assert "weights released" in capsys.readouterr().out
    original = tuning.load_try_network(variant, "smoke", results_dir=root / "results",
                                       runs_dir=root / "runs")
    shutil.rmtree(runs)
    released = tuning.load_try_network(variant, "smoke", **kw)
    for a, b in zip(original.parameters(), released.parameters()):
        assert torch.equal(a, b)


def test_release_and_load_of_a_try_say_what_is_missing(tmp_path):
    variant = tuning.variant_name(SMOOTH_RUN, {"epochs": 2})
    kw = dict(results_dir=tmp_path / "results", runs_dir=tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="not stored.*experiments try"):
        tuning.release_try(variant, "smoke", **kw)
    with pytest.raises(FileNotFoundError, match=r"experiments try .* --set epochs=2"):
        tuning.load_try_network(variant, "smoke", **kw)
    with pytest.raises(FileNotFoundError, match="not stored"):
        tuning.verify_try(variant, "smoke", **kw)
    (tmp_path / "results" / "smoke" / "tuning").mkdir(parents=True)
    (tmp_path / "results" / "smoke" / "tuning" / f"{variant}.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="checkpoint .* is not in"):
        tuning.release_try(variant, "smoke", **kw)


def test_record_stored_needs_a_stored_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not stored"):
        tuning.record_stored(SMOOTH_RUN, "smoke", results_dir=tmp_path,
                             tuning_csv=tmp_path / "t.csv")


def test_command_line_errors(capsys):
    assert experiments.main(["try", BASELINE_RUN]) == 1
    assert "at least one --set" in capsys.readouterr().err
    assert experiments.main(["try", BASELINE_RUN, "--stored", "--set", "epochs=3"]) == 1
    assert "takes no --set" in capsys.readouterr().err
    assert experiments.main(["try", BASELINE_RUN, "--set", "widths=3"]) == 1
    assert "another run" in capsys.readouterr().err
    assert experiments.main(["try", BASELINE_RUN, "--stored", "--release"]) == 1
    assert "RELEASED_RUNS" in capsys.readouterr().err
    assert experiments.main(["verify", f"{BASELINE_RUN}--epochs=x"]) == 1
    assert "expects an integer" in capsys.readouterr().err


def test_a_rows_certificate_is_the_runs_own_even_where_crc_was_computed_too():
    def result(method, **certified):
        metrics = {"clean_accuracy": {"value": 0.9, "n": 10000}}
        metrics.update({f"certified_accuracy/all-classes/{b}/1.58": {"value": v, "n": 10000}
                        for b, v in certified.items()})
        return {"spec": {"method": method}, "metrics": metrics, "evaluated_epoch": 20,
                "provenance": {"date": "2026-12-02T00:00:00"}}

    softplus_crown_ibp = tuning.tuning_row(result("crown-ibp", crown=0.436, **{"global": 0.0}),
                                           "r", "none")
    assert (softplus_crown_ibp["certificate"], softplus_crown_ibp["certified_test_1.58"]) == \
        ("crown", 43.6)
    coap = tuning.tuning_row(result("coap", crown=0.44, coap=0.421), "r", "none")
    assert (coap["certificate"], coap["certified_test_1.58"]) == ("coap", 42.1)
    crt = tuning.tuning_row(result("crt", **{"global": 0.752}), "r", "none")
    assert (crt["certificate"], crt["certified_test_1.58"]) == ("global", 75.2)
    missing = tuning.tuning_row(result("crt"), "r", "none")
    assert (missing["certificate"], missing["certified_test_1.58"]) == ("", "")


def test_the_best_try_of_the_2x1024_crt_net_is_released_and_recertifies():
    """The committed record's best try of the 2×1024 MNIST CRT net (the net the whole-test-set
    goal is measured on) has released weights, and certificates recomputed from them agree with
    its stored ones (a slice of the test set; `experiments verify <try>` does all)."""
    best = tables.best_try("mnist-softplus-2x1024-crt-g0.01-r1.58")
    assert best["try"] is not None and best["weights"] is not None, \
        f"the best try {best['try']} has no released weights: `experiments try ... --release`"
    report = tuning.verify_try(best["try"], "cpu", images=slice(0, 200), progress=False)
    assert report["images"] == 200 and report["compared"] >= 800
    assert report["ok"], report["mismatches"][:5]
