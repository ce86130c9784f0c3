"""The notebooks are thin and parameterized: a cell tagged `parameters` with exactly the
documented names, no function or class definitions, committed without outputs, and each calls
the table API; and one of them runs end to end under papermill at preset smoke (CI runs them all
through `make book PRESET=smoke`)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TABLES = ("table2", "table3", "table4", "table5", "table6", "figure1")


def _cells(name):
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


@pytest.mark.parametrize("name", TABLES + ("explore", "reproduction", "comparison"))
def test_notebook_is_thin_and_parameterized(name):
    cells = _cells(name)
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    names = {t.id for node in ast.parse("".join(params[0]["source"])).body
             for t in getattr(node, "targets", [])}
    expected = {"preset", "train_missing", "force"} if name != "explore" else \
        {"preset", "train_missing", "image_index", "rho"}
    assert names == expected
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None
        source = "".join(cell["source"])
        tree = ast.parse(source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.AsyncFunctionDef))
                       for n in ast.walk(tree)), f"{name}: a definition in a notebook"
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    if name in TABLES:
        assert f'tables.ensure_runs("{name}"' in code


@pytest.mark.slow      # CI runs every notebook at smoke through `make book PRESET=smoke`
def test_table6_runs_under_papermill_at_smoke(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("CRC_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CRC_RUNS_DIR", str(tmp_path / "runs"))
    out = tmp_path / "table6.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "table6.ipynb"), str(out),
                               parameters={"preset": "smoke"}, cwd=str(NOTEBOOKS.parent),
                               progress_bar=False)
    assert (tmp_path / "results" / "tables" / "smoke" / "table6.csv").is_file()
    text = out.read_text()
    assert "NOT comparable with the paper" in text
