"""Tests of crc_core.experiments, the front module: its names, `list` (status, times, headline
numbers), the command line's errors, and that importing it parses no arguments."""
from __future__ import annotations

import subprocess
import sys

import pytest

from crc_core import evaluation, experiments, reference, runs, store
from crc_core.runs import RUNS

SMOOTH_RUN = "mnist-sigmoid-2x1024-crt-g0.01-r1.58"


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store.run_experiment(SMOOTH_RUN, "smoke", results_dir=root / "results",
                         runs_dir=root / "runs", progress=False)
    return root


def test_front_module_names_are_the_pipelines():
    assert experiments.RUNS is runs.RUNS and experiments.PRESETS is runs.PRESETS
    assert experiments.run_experiment is store.run_experiment
    assert experiments.evaluate is evaluation.evaluate
    assert experiments.paper_reference is reference.paper_reference
    for name in experiments.__all__:
        assert hasattr(experiments, name), name


def test_list_shows_every_run_with_tables_status_times_and_headline(smoke_store):
    text = experiments.list_runs("smoke", results_dir=smoke_store / "results")
    for name, run in RUNS.items():
        line = next(l for l in text.splitlines() if f" {name} " in l + " ")
        assert f" {run.method} " in line and ",".join(run.tables) in line
        if name == SMOOTH_RUN:
            assert " stored " in line and "clean " in line and "cert@1.58 " in line
        else:
            assert " missing" in line
    assert f"smoke: 1/{len(RUNS)} stored" in text


def test_cli_list_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CRC_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CRC_RUNS_DIR", str(tmp_path / "runs"))
    assert experiments.main(["list", "--preset", "cpu"]) == 0
    assert SMOOTH_RUN in capsys.readouterr().out
    assert experiments.main(["run", "no-such-run", "--preset", "smoke"]) == 1
    assert "unknown run" in capsys.readouterr().err
    assert experiments.main(["verify", SMOOTH_RUN, "--preset", "smoke"]) == 1
    assert f"{SMOOTH_RUN}.json" in capsys.readouterr().err      # no stored results to verify
    assert experiments.main(["run", SMOOTH_RUN, "--threads", "0"]) == 1
    assert "--threads must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["verify", SMOOTH_RUN, "--images", "a:b"])


def test_import_parses_no_arguments():
    code = "import sys; sys.argv = ['x', '--bogus']; import crc_core.experiments"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_headline_shows_a_baselines_own_certificate_with_crc_beside_it_and_a_samples_n():
    def entry(value, n):
        return {"value": value, "n": n}

    def result(method, **certs):
        metrics = {"clean_accuracy": entry(0.9, 10000)}
        metrics.update({f"certified_accuracy/all-classes/{b}/1.58": e for b, e in certs.items()})
        return {"spec": {"method": method}, "metrics": metrics}

    softplus_crown_ibp = result("crown-ibp", crown=entry(0.436, 2000), **{"global": entry(0.0, 10000)})
    assert experiments._headline(softplus_crown_ibp) == (
        "clean 90.0, cert@1.58 43.6 (crown, n=2000), cert@1.58 0.0 (global)")
    coap = result("coap", crown=entry(0.473, 10000), coap=entry(0.464, 1000))
    assert experiments._headline(coap) == "clean 90.0, cert@1.58 46.4 (coap, n=1000)"
    crt = result("crt", crown=entry(0.3, 10000), **{"global": entry(0.752, 10000)})
    assert experiments._headline(crt) == "clean 90.0, cert@1.58 75.2 (global)"
