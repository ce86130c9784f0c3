"""Tests of crc_core.experiments: the run registry, the presets, a smoke run end to end into a
temporary results store (schema and types), "not retrained unless forced", `list`, and the
paper's reference numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from crc_core import MLP, experiments, training
from crc_core.experiments import EVAL_RADII, PRESETS, RUNS, run_name
from crc_core.training import TrainSpec



SMOOTH_RUN = "mnist-sigmoid-2x1024-crt-g0.01-r1.58"    # 2 layers: local bounds too
DEEP_RUN = "mnist-softplus-3x1024-crt-g0.05-r1.58"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Results and runs roots in a temporary directory (via the environment variables)."""
    monkeypatch.setenv("CRC_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CRC_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    """One smoke run of a 2-layer CRT net, written into a temporary store."""
    root = tmp_path_factory.mktemp("store")
    result = experiments.run_experiment(SMOOTH_RUN, "smoke", results_dir=root / "results",
                                        runs_dir=root / "runs", progress=False)
    return root, result


# ------------------------------------------------------------------------------------------------
# Registry and presets
# ------------------------------------------------------------------------------------------------

def test_registry_names_are_generated_from_the_specs():
    for name, run in RUNS.items():
        assert run_name(run.spec) == name == run.name
    assert "mnist-softplus-2x1024-crt-g0.01-r1.58" in RUNS
    assert RUNS["mnist-softplus-2x1024-crt-g0.01-r1.58"].spec.widths == (784, 1024, 10)
    assert RUNS["mnist-sigmoid-4x1024-standard"].spec.widths == (784, 1024, 1024, 1024, 10)


def test_every_table_has_its_runs():
    expected = {"table2": 6, "table3": 12, "table4": 12, "table5": 9, "table6": 4, "figure1": 10}
    for table, count in expected.items():
        runs = experiments.runs_for_table(table)
        assert len(runs) == count, table
    t3 = {run.name for run in experiments.runs_for_table("table3")}
    for depth, gamma in ((2, 0.01), (3, 0.05), (4, 0.07)):
        assert f"mnist-softplus-{depth}x1024-crt-g{gamma:g}-r1.58" in t3
        assert f"mnist-relu-{depth}x1024-coap-r1.58" in t3
        assert f"mnist-relu-{depth}x1024-crown-ibp-r1.58" in t3
    assert "mnist-sigmoid-2x1024-standard" in {r.name for r in experiments.runs_for_table("table6")}
    with pytest.raises(ValueError, match="unknown table"):
        experiments.runs_for_table("table9")


def test_unknown_run_and_preset_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean"):
        experiments.get_run("mnist-softplus-2x1024-crt-g0.01-r1.5")
    with pytest.raises(ValueError, match="unknown preset"):
        experiments.get_preset("gpu")


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
    # Every run has settings at every preset.
    for run in RUNS.values():
        for preset in PRESETS.values():
            preset.apply(run.spec)
    # The authors' PGD evaluation: 200·ρ steps of 0.01.
    assert PRESETS["cpu"].pgd_eval(1.58) == (316, 0.01)


def test_paper_reference_points_at_registered_runs():
    frame = experiments.paper_reference()
    assert set(frame["run"]) <= set(RUNS)
    assert set(frame["table"]) == {"table2", "table3", "table4", "table5", "table6"}
    row = frame[(frame["run"] == "mnist-softplus-2x1024-crt-g0.01-r1.58")
                & (frame["metric"] == "certified_fraction/runner-up/global/1.58")]
    assert len(row) == 1 and math.isclose(row["value"].iloc[0], 0.6979)
    assert all(0 <= v <= 2 for v in frame["value"])


# ------------------------------------------------------------------------------------------------
# A smoke run end to end
# ------------------------------------------------------------------------------------------------

ACCURACY_KEYS = {"value", "count", "n", "se", "ci95"}


def _check_proportion(entry, n=None):
    assert set(entry) == ACCURACY_KEYS
    assert 0 <= entry["value"] <= 1 and entry["se"] >= 0
    lo, hi = entry["ci95"]
    assert 0 <= lo <= entry["value"] <= hi <= 1
    if n is not None:
        assert entry["n"] == n


def test_results_json_schema(smoke_result):
    root, result = smoke_result
    path = experiments.results_path(SMOOTH_RUN, "smoke", root / "results")
    assert path.is_file()
    stored = json.loads(path.read_text())
    assert stored == json.loads(json.dumps(result))
    for key, kind in {"schema": str, "name": str, "preset": str, "tables": list, "spec": dict,
                      "selected_epoch": int, "evaluation": dict, "metrics": dict,
                      "per_image": dict, "history": list, "provenance": dict}.items():
        assert isinstance(stored[key], kind), key
    assert stored["schema"] == experiments.RESULTS_SCHEMA
    assert TrainSpec.from_dict(stored["spec"]) == PRESETS["smoke"].apply(RUNS[SMOOTH_RUN].spec)
    n = stored["evaluation"]["n_subset"]
    assert n == PRESETS["smoke"].eval_n
    m = stored["metrics"]
    _check_proportion(m["clean_accuracy"], n=10000)
    for rho in EVAL_RADII:
        r = f"{rho:g}"
        for targets in ("runner-up", "all-classes"):
            for kind in ("global", "paper"):
                _check_proportion(m[f"certified_fraction/{targets}/{kind}/{r}"], n=n)
                acc = m[f"certified_accuracy/{targets}/{kind}/{r}"]
                assert math.isclose(acc["value"], m[f"certified_fraction/{targets}/{kind}/{r}"]["value"]
                                    * m["clean_accuracy"]["value"])
        _check_proportion(m[f"certified_fraction/runner-up/local/{r}"], n=n)
        _check_proportion(m[f"attack_success/runner-up/{r}"], n=n)
        for targets in ("runner-up", "untargeted"):
            _check_proportion(m[f"robust_fraction_pgd/{targets}/{r}"], n=n)
            assert m[f"robust_accuracy_pgd/{targets}/{r}"]["value"] <= m["clean_accuracy"]["value"]
    _check_proportion(m["certificate_success/runner-up/global"], n=n)
    _check_proportion(m["paper_counted_fraction/runner-up"], n=n)
    for key in ("mean_certificate/runner-up/global", "mean_certificate/all-classes/global",
                "mean_certificate/runner-up/local", "mean_certificate/runner-up/paper",
                "K_ub", "K_lb"):
        assert isinstance(m[key], float) and m[key] >= 0, key
    assert m["K_ub"] >= m["K_lb"] * (1 - 1e-6)
    # The all-classes certificate is the minimum over targets: never above the runner-up one.
    per = stored["per_image"]
    assert len(per["index"]) == n and len(set(per["index"])) == n
    for a, b in zip(per["radius/all-classes/global"], per["radius/runner-up/global"]):
        assert a <= b + 1e-6
    for key in ("radius/runner-up/global", "tight/runner-up/global", "target/all-classes/global",
                "radius/runner-up/local", "runner_up", "label"):
        assert len(per[key]) == n, key
    assert all(isinstance(v, bool) for v in per["tight/runner-up/global"])
    prov = stored["provenance"]
    for key, kind in {"git_commit": (str, type(None)), "git_dirty": (bool, type(None)),
                      "date": str, "train_seconds": float, "eval_seconds": float, "device": str,
                      "torch_version": str, "threads": int, "preset": str}.items():
        assert isinstance(prov[key], kind), key
    assert len(stored["history"]) == stored["spec"]["epochs"]


def test_load_results_gives_one_row_per_run(smoke_result):
    root, _ = smoke_result
    frame = experiments.load_results("smoke", results_dir=root / "results")
    assert list(frame.index) == [SMOOTH_RUN]
    row = frame.loc[SMOOTH_RUN]
    assert row["method"] == "crt" and row["depth"] == 2
    assert 0 <= row["certified_fraction/runner-up/global/1.58"] <= 1
    assert row["certified_fraction/runner-up/global/1.58:n"] == PRESETS["smoke"].eval_n
    assert experiments.load_results("cpu", results_dir=root / "results").empty


def test_not_retrained_unless_forced(store, monkeypatch):
    first = experiments.run_experiment(DEEP_RUN, "smoke", progress=False)
    calls = []
    real_train = training.train

    def counting_train(*args, **kwargs):
        calls.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    again = experiments.run_experiment(DEEP_RUN, "smoke", progress=False)
    assert calls == [] and again == json.loads(json.dumps(first))
    forced = experiments.run_experiment(DEEP_RUN, "smoke", force=True, progress=False)
    assert len(calls) == 1 and calls[0]["resume"] is False
    assert forced["provenance"]["date"] >= first["provenance"]["date"]


def test_deep_net_smoke_run_has_no_local_bounds(store):
    result = experiments.run_experiment(DEEP_RUN, "smoke", progress=False)
    assert result["evaluation"]["local_bounds"] is False
    assert "certified_fraction/runner-up/local/1.58" not in result["metrics"]
    assert result["metrics"]["K_ub"] > 0


def test_until_epoch_defers_the_evaluation(store):
    name = "mnist-sigmoid-3x1024-curvature-g0.01"
    assert experiments.run_experiment(name, "smoke", progress=False, until_epoch=1) is not None
    # smoke has 1 epoch, so until_epoch=1 finishes it; a 2-epoch preset stops early:
    preset = experiments.Preset("two", "test", epochs={k: 2 for k in PRESETS["cpu"].epochs},
                                hidden_width=16, train_subset=128, eval_n=10, eval_batch_size=10,
                                pgd_eval_steps=2, pgd_eval_step_size=None)
    assert experiments.run_experiment(name, preset, progress=False, until_epoch=1) is None
    assert not experiments.results_path(name, preset).exists()
    assert experiments.run_experiment(name, preset, progress=False) is not None
    assert experiments.results_path(name, preset).is_file()


def test_relu_net_evaluation_skips_curvature():
    torch.manual_seed(0)
    model = MLP([784, 16, 10], "relu")
    spec = TrainSpec(widths=(784, 16, 10), activation="relu", method="standard", epochs=1)
    out = experiments.evaluate(model, spec, PRESETS["smoke"], progress=False)
    m = out["metrics"]
    assert m["K_ub"] is None and m["K_lb"] is None
    assert not any(key.startswith(("certified_", "attack_success", "certificate_success"))
                   and "crown" not in key for key in m)
    assert "robust_fraction_pgd/runner-up/0.5" in m


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------

def test_list_shows_every_run_with_tables_and_status(smoke_result, capsys):
    root, _ = smoke_result
    text = experiments.list_runs("smoke", results_dir=root / "results")
    for name, run in RUNS.items():
        line = next(l for l in text.splitlines() if f" {name} " in l + " ")
        assert line.startswith(run.method)
        assert ",".join(run.tables) in line
        if name == SMOOTH_RUN:
            assert "stored" in line
        elif not training.is_implemented(run.method):
            assert "not implemented yet" in line
        else:
            assert "missing" in line
    assert f"smoke: 1/{len(RUNS)} stored" in text


def test_cli_list_and_bad_run(store, capsys):
    assert experiments.main(["list", "--preset", "cpu"]) == 0
    out = capsys.readouterr().out
    assert SMOOTH_RUN in out and "cpu" in out
    assert experiments.main(["run", "no-such-run", "--preset", "smoke"]) == 1
    assert "unknown run" in capsys.readouterr().err


def test_import_parses_no_arguments():
    import subprocess
    import sys
    code = "import sys; sys.argv = ['x', '--bogus']; import crc_core.experiments"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
