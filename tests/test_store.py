"""Tests of crc_core.store: a smoke run end to end into a temporary store (schema and types),
compact JSON, "not retrained unless forced", deferred evaluation, released weights and their
loader, and `verify` (which must see a tampered certificate)."""
from __future__ import annotations

import json

import pytest
import torch

from crc_core import store, training
from crc_core.runs import EVAL_RADII, PRESETS, RUNS
from crc_core.training import TrainSpec

SMOOTH_RUN = "mnist-softplus-2x1024-crt-g0.01-r1.58"    # a released run: weights are written
DEEP_RUN = "mnist-softplus-3x1024-crt-g0.05-r1.58"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Results and runs roots in a temporary directory (via the environment variables)."""
    monkeypatch.setenv("CRC_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CRC_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    result = store.run_experiment(SMOOTH_RUN, "smoke", results_dir=root / "results",
                                  runs_dir=root / "runs", progress=False)
    return root, result


PROPORTION_KEYS = {"value", "count", "n", "se", "ci95"}


def _check_proportion(entry, n):
    assert set(entry) == PROPORTION_KEYS and entry["n"] == n
    lo, hi = entry["ci95"]
    assert 0 <= lo <= entry["value"] <= hi <= 1 and entry["se"] >= 0


def test_results_json_schema(smoke_result):
    root, result = smoke_result
    path = store.results_path(SMOOTH_RUN, "smoke", root / "results")
    stored = json.loads(path.read_text())
    assert stored == result
    for key, kind in {"schema": str, "name": str, "preset": str, "tables": list, "spec": dict,
                      "evaluated_epoch": int, "evaluation": dict, "metrics": dict,
                      "per_image": dict, "per_test_image": dict, "history": list,
                      "provenance": dict, "audit": dict, "curvature_pairs": dict}.items():
        assert isinstance(stored[key], kind), key
    assert stored["schema"] == store.RESULTS_SCHEMA
    spec = TrainSpec.from_dict(stored["spec"])
    assert spec == PRESETS["smoke"].apply(RUNS[SMOOTH_RUN].spec)
    assert stored["evaluated_epoch"] == spec.epochs == len(stored["history"])   # the last epoch
    ev = stored["evaluation"]
    n, n_test = ev["n_subset"], ev["n_test"]
    assert n == PRESETS["smoke"].eval_n and n_test == PRESETS["smoke"].test_n
    m = stored["metrics"]
    _check_proportion(m["clean_accuracy"], n_test)
    for rho in EVAL_RADII:
        for targets in ("runner-up", "all-classes"):
            _check_proportion(m[f"certified_accuracy/{targets}/global/{rho:g}"], n_test)
            _check_proportion(m[f"certified_fraction/{targets}/global/{rho:g}"], n)
            _check_proportion(m[f"certified_fraction/{targets}/paper/{rho:g}"], n)
        _check_proportion(m[f"attack_success/runner-up/{rho:g}"], n)
    per, test = stored["per_image"], stored["per_test_image"]
    assert len(per["index"]) == len(set(per["index"])) == n
    assert all(len(col) == n_test for col in test.values())
    for a, b in zip(test["radius/all-classes/global"], test["radius/runner-up/global"]):
        assert a <= b + 1e-6          # the all-classes certificate is the minimum over targets
    for key, kind in {"git_commit": (str, type(None)), "git_dirty": (bool, type(None)),
                      "date": str, "train_seconds": float, "train_cpu_seconds": float,
                      "eval_seconds": float, "device": str, "torch_version": str,
                      "threads": int, "preset": str}.items():
        assert isinstance(stored["provenance"][key], kind), key
    assert stored["provenance"]["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(ev["seconds"]) >= {"test_set", "subset", "audit"}


def test_results_files_write_arrays_on_one_line(smoke_result):
    root, result = smoke_result
    text = store.results_path(SMOOTH_RUN, "smoke", root / "results").read_text()
    assert len(text.splitlines()) < 250
    line = next(l for l in text.splitlines() if l.strip().startswith('"radius/all-classes/global"'))
    assert line.count(",") >= PRESETS["smoke"].eval_n - 1
    odd = {"a": [1, 2.5, None, True], "b": {"c": [[1, 2], [3]], "d": "é"}, "e": [], "f": {}}
    assert json.loads(store.dumps(odd)) == odd


def test_released_weights_load_bit_exactly(smoke_result):
    root, _ = smoke_result
    path = store.weights_path(SMOOTH_RUN, "smoke", root / "results")
    assert path.is_file()
    released = store.load_network(SMOOTH_RUN, "smoke", results_dir=root / "results")
    trained = training.load_model(root / "runs" / "smoke" / SMOOTH_RUN, "last")
    for a, b in zip(released.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    assert released.activation.name == "softplus"


def test_load_network_says_how_to_train_a_missing_run(roots):
    with pytest.raises(FileNotFoundError, match="experiments run mnist-sigmoid-2x1024-standard"):
        store.load_network("mnist-sigmoid-2x1024-standard", "smoke")
    with pytest.raises(ValueError, match="unknown run"):
        store.load_network("no-such-run", "smoke")


def test_verify_recertifies_and_sees_a_tampered_certificate(smoke_result, tmp_path):
    root, _ = smoke_result
    report = store.verify(SMOOTH_RUN, "smoke", results_dir=root / "results", progress=False)
    assert report["ok"] and report["images"] == PRESETS["smoke"].test_n
    assert report["compared"] >= 4 * report["images"]
    # Raise one stored radius by 1e-3: verify must report it.
    path = store.results_path(SMOOTH_RUN, "smoke", root / "results")
    stored = json.loads(path.read_text())
    col = stored["per_test_image"]["radius/all-classes/global"]
    i = max(range(len(col)), key=lambda j: col[j])
    col[i] += 1e-3
    tampered = tmp_path / "results" / "smoke"
    tampered.mkdir(parents=True)
    (tampered / path.name).write_text(json.dumps(stored))
    (tampered / path.with_suffix(".safetensors").name).write_bytes(
        path.with_suffix(".safetensors").read_bytes())
    bad = store.verify(SMOOTH_RUN, "smoke", results_dir=tmp_path / "results", progress=False)
    assert not bad["ok"] and [row[:2] for row in bad["mismatches"]] == [("radius/all-classes/global", i)]


def test_not_retrained_unless_forced(roots, monkeypatch):
    first = store.run_experiment(DEEP_RUN, "smoke", progress=False)
    calls = []
    real_train = training.train

    def counting_train(*args, **kwargs):
        calls.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", counting_train)
    again = store.run_experiment(DEEP_RUN, "smoke", progress=False)
    assert calls == [] and again == first
    forced = store.run_experiment(DEEP_RUN, "smoke", force=True, progress=False)
    assert len(calls) == 1 and calls[0]["resume"] is False and calls[0]["select"] == "last"
    assert forced["provenance"]["date"] >= first["provenance"]["date"]
    assert forced["evaluation"]["local_bounds"] is False     # three layers: no local bounds


def test_until_epoch_and_train_only_defer_the_evaluation(roots):
    name = "mnist-sigmoid-3x1024-curvature-g0.01"
    preset = store.get_preset("smoke")
    two = type(preset)("two", "test", epochs={k: 2 for k in PRESETS["cpu"].epochs},
                       hidden_width=16, train_subset=128, eval_n=10, eval_batch_size=10,
                       pgd_eval_steps=2, pgd_eval_step_size=None, test_n=300, test_batch_size=300,
                       audit_restarts=1, audit_steps=2)
    assert store.run_experiment(name, two, progress=False, until_epoch=1) is None
    assert not store.results_path(name, two).exists()
    assert store.run_experiment(name, two, progress=False, evaluate=False) is None
    assert len(training.read_history(store.runs_root() / "two" / name)) == 2
    assert not store.results_path(name, two).exists()
    result = store.run_experiment(name, two, progress=False)
    assert result is not None and result["evaluated_epoch"] == 2
    assert store.results_path(name, two).is_file()
    again = store.run_experiment(name, two, progress=False, reevaluate=True)
    assert again["metrics"] == result["metrics"] and again["history"] == result["history"]
    with pytest.raises(ValueError, match="cannot re-evaluate"):
        store.run_experiment("mnist-sigmoid-2x1024-standard", two, progress=False, reevaluate=True)


def test_released_2x1024_net_recertifies_its_stored_certificates():
    """The committed results of the released 2×1024 CRT net agree with certificates recomputed
    from its released weights (a slice of the test set; `experiments verify` does all)."""
    name = "mnist-softplus-2x1024-crt-g0.01-r1.58"
    assert store.weights_path(name, "cpu").is_file(), "released weights missing"
    report = store.verify(name, "cpu", images=slice(0, 200), progress=False)
    assert report["images"] == 200 and report["compared"] >= 800
    assert report["ok"], report["mismatches"][:5]


def test_results_of_another_spec_are_stale_not_reused(smoke_result, tmp_path):
    """A stored result whose spec is no longer the registry's (the registry changed) is
    reported as stale: not shown in the tables, not returned by run_experiment, retrained by
    ensure_runs."""
    from crc_core import experiments, tables

    root, result = smoke_result
    results = tmp_path / "results"
    path = store.results_path(SMOOTH_RUN, "smoke", results)
    path.parent.mkdir(parents=True)
    assert store.stored_status(SMOOTH_RUN, "smoke", results) == "missing"
    store.write_json(result, path)
    assert store.stored_status(SMOOTH_RUN, "smoke", results) == "stored"
    store.write_json({**result, "spec": {**result["spec"], "gamma": 0.5}}, path)
    assert store.stored_status(SMOOTH_RUN, "smoke", results) == "stale"
    with pytest.raises(ValueError, match="another spec"):
        store.run_experiment(SMOOTH_RUN, "smoke", results_dir=results, runs_dir=tmp_path / "runs",
                             progress=False)
    line = next(l for l in experiments.list_runs("smoke", results).splitlines()
                if SMOOTH_RUN in l.split())
    assert " stale " in line
    long = tables.long_table("table3", "smoke", results_dir=results)
    mine = long[long["run"] == SMOOTH_RUN]
    assert set(mine["status"]) == {"stale"} and mine["ours"].isna().all()
    status = tables.ensure_runs("table3", "smoke", train_missing=False, results_dir=results)
    assert status.set_index("run").loc[SMOOTH_RUN, "status"] == "stale"


def test_committed_results_are_of_the_registry_specs():
    """Every committed results file was made with its run's spec at its preset now."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "results").glob("*/*.json")):
        preset, name = path.parent.name, path.stem
        assert store.stored_status(name, preset, repo / "results") == "stored", path
