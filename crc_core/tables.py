"""The paper's tables and Figure 1 from the results store: what the notebooks and the book call.

Each notebook is a handful of calls::

    status = tables.ensure_runs("table3", preset, train_missing=True)   # train what is missing
    frame = tables.paper_table("table3", preset)                        # ours beside the paper's
    tables.write_csv(frame, "table3", preset)                           # results/tables/<preset>/

:func:`long_table` gives one row per (run, quantity): ours with n and a 95% interval, the
paper's number where it reports one, the difference, and the run's status (a missing run is
shown as missing, never as a number). :func:`paper_table` pivots it into the paper's shape
(one row per network, a column group per quantity). :func:`figure1_frame` and
:func:`per_image_frame` are tidy frames for the figures; :func:`crc_core.store.load_network`
loads a trained network by run name.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import store
from .atomic_files import atomic_write_via
from .evaluation import default_crown_mode
from .reference import paper_records
from .runs import (RUNS, TABLES, Preset, Run, format_radius, get_preset, own_certificate,
                   runs_for_table)
from .tuning import COLUMNS as TUNING_COLUMNS, TUNING_CSV

__all__ = ["SMOKE_WARNING", "measured_minutes", "estimate_minutes", "ensure_runs", "long_table",
           "paper_table", "write_csv", "tables_root", "figure1_frame", "per_image_frame",
           "radii_frame", "provenance_frame", "comparison_frame", "reproduction_frame",
           "differences_summary", "tuning_frame", "best_try"]

#: Shown beside every table made at the ``smoke`` preset.
SMOKE_WARNING = ("preset smoke: hidden width 32, 256 training images, 1 epoch, small subsets — "
                 "a check that everything runs, NOT comparable with the paper")

#: Measured minutes per training epoch at preset ``cpu`` (batch 128, one torch thread on a shared
#: 2-core machine), by (method, L): the basis of :func:`estimate_minutes`. The last column is
#: the evaluation (whole-test-set certificates, the subset, PGD, the audit), minutes per run.
_CPU_MINUTES_PER_EPOCH: Dict[Tuple[str, int], float] = {
    ("standard", 2): 0.15, ("standard", 3): 0.17, ("standard", 4): 0.27,
    ("curvature", 2): 0.2, ("curvature", 3): 0.35, ("curvature", 4): 0.4,
    ("crt", 2): 1.25, ("crt", 3): 1.7, ("crt", 4): 3.0,
    ("pgd", 2): 1.2, ("pgd", 3): 1.3, ("pgd", 4): 2.2,
    ("crown-ibp", 2): 0.9, ("crown-ibp", 3): 2.0, ("crown-ibp", 4): 3.2,
    ("coap", 2): 1.1, ("coap", 3): 14.0, ("coap", 4): 32.0,
}
# Measured in runs beside one other run: standard and γ-regularized sigmoid nets (30 epochs) 2 / 5
# / 8 and 2 / 7-14 / 12 CPU-min at L = 2 / 3 / 4; CPU minutes an epoch: CRT at L = 2 1.25
# (softplus) and 0.7 (sigmoid), CROWN-IBP 0.85-0.9 / 1.85-2.0 / 3.0-3.3 (ReLU-softplus), COAP
# 1.1 / 17.6 / 40 on MNIST and 1.1 / 10.1 / 23.9 on Fashion-MNIST (the means kept above; the
# benchmark's step times had given 0.9 / 11 / 29), CRT at L = 3 / 4 1.8 / 2.7 (softplus; at L = 4
# also 3.25 in the two 24-epoch runs of Tables 3 and 4, beside each other) and 1.5 / 2.3
# (sigmoid), PGD 1.2 / 1.3 at L = 2 / 3 (4 scaled from 3 by the benchmark's 6.0 / 3.8).
# These are the fallback: a run stored at the preset is estimated by its own measured minutes.
_CPU_EVAL_MINUTES = {2: 5.5, 3: 5.0, 4: 6.5}
#: The baselines' evaluation (their own certificates, PGD; no curvature, no audit), by
#: (activation, L), measured: ReLU 0.5 / 26 / 14 min (CROWN over the whole test set at L = 2, 3;
#: at L = 4, where CROWN costs 5× its L = 3 cost an image, over a 2,000-image sample and the 500
#: subset images); softplus nets add CRC with its audit (and CROWN is slower on them): 5 / 27 / 26.
_CPU_EVAL_MINUTES_BASELINES = {("relu", 2): 0.5, ("relu", 3): 26.0, ("relu", 4): 14.0,
                               ("softplus", 2): 5.0, ("softplus", 3): 27.0, ("softplus", 4): 26.0}
#: COAP's exact dual on top of CROWN (0.2 / 0.5 s an image at 3 / 4 layers on one thread): the 500
#: subset images and a 1,000-image test-set sample, bounded again at 0.5 where not certified at
#: 1.58. Measured whole evaluations of the MNIST ReLU COAP runs: 1.0 / 28 / 36 min (Fashion-MNIST:
#: 1.0 / 11 / 19, CROWN being faster there), so on top of the CROWN-IBP figures above:
_CPU_EVAL_MINUTES_COAP_DUAL = {2: 0.5, 3: 2.0, 4: 22.0}
#: The evaluation of Table 5's smooth nets, which adds CROWN-general's certified radius of every
#: subset image (a search): measured 5 / 9 / 42 min for the 2 / 3 / 4-layer sigmoid standard nets.
_CPU_EVAL_MINUTES_CROWN_RADII = {2: 5.0, 3: 9.0, 4: 42.0}


# ------------------------------------------------------------------------------------------------
# What each table shows
# ------------------------------------------------------------------------------------------------

def _own(run: Run) -> str:
    """The certificate a run is judged by: CRC (global bounds) for smooth nets trained by the
    paper's methods, CROWN for CROWN-IBP nets, the COAP dual for COAP nets."""
    return own_certificate(run.method)


def _q(label: str, metric: str, group: str = "") -> Dict[str, str]:
    return {"quantity": label, "metric": metric, "group": group}


def _quantities(table: str, run: Run) -> List[Dict[str, str]]:
    """(label, metric key) of every number a table shows for a run, in column order."""
    own = _own(run)
    if table == "table2":
        return [_q("accuracy", "clean_accuracy"),
                _q("attack success (ρ = 0.5)", "attack_success/runner-up/0.5"),
                _q("certificate success", "certificate_success/runner-up/global"),
                _q("certified accuracy, test set, all classes (ρ = 0.5)",
                   "certified_accuracy/all-classes/global/0.5", "beyond the paper")]
    if table in ("table3", "table4"):
        out = [_q("standard accuracy", "clean_accuracy")]
        for rho in (1.58, 0.5):
            r = format_radius(rho)
            out += [_q(f"certified robust accuracy (ρ = {r}), runner-up",
                       f"certified_fraction/runner-up/{own}/{r}", f"ρ = {r}"),
                    _q(f"certified (ρ = {r}), sound all classes",
                       f"certified_fraction/all-classes/{own}/{r}", f"ρ = {r}"),
                    _q(f"certified accuracy, test set, all classes (ρ = {r})",
                       f"certified_accuracy/all-classes/{own}/{r}", f"ρ = {r}"),
                    _q(f"certified accuracy, test set, runner-up (ρ = {r})",
                       f"certified_accuracy/runner-up/{own}/{r}", f"ρ = {r}"),
                    _q(f"PGD-robust (ρ = {r}, untargeted)",
                       f"robust_fraction_pgd/untargeted/{r}", f"ρ = {r}")]
            if own != "global":
                # Beyond the paper: a smooth baseline net certified by CRC too (NaN for ReLU).
                out.append(_q(f"CRC on the same net: certified accuracy, test set, all classes "
                              f"(ρ = {r})", f"certified_accuracy/all-classes/global/{r}",
                              f"ρ = {r}"))
        return out
    if table == "table5":
        return [_q("standard accuracy", "clean_accuracy"),
                _q("certified robust accuracy (ρ = 0.5)", "certified_fraction/runner-up/global/0.5"),
                _q("mean certificate, CROWN-general", "mean_certificate/runner-up/crown"),
                _q("mean certificate, CRC", "mean_certificate/runner-up/global"),
                _q("certified accuracy, test set, all classes (ρ = 0.5)",
                   "certified_accuracy/all-classes/global/0.5", "beyond the paper")]
    if table == "table6":
        return [_q("mean CRC, global bounds", "mean_certificate/runner-up/global"),
                _q("mean CRC, local bounds", "mean_certificate/runner-up/local"),
                _q("certified accuracy (ρ = 0.5), global bounds",
                   "certified_fraction/runner-up/global/0.5"),
                _q("certified accuracy (ρ = 0.5), local bounds",
                   "certified_fraction/runner-up/local/0.5")]
    if table == "figure1":
        return [_q("K_ub (Theorem 4)", "K_ub"), _q("K_lb (largest Hessian eigenvalue)", "K_lb"),
                _q("standard accuracy", "clean_accuracy")]
    raise ValueError(f"unknown table {table!r}; expected one of {list(TABLES)}")


def _network(run: Run) -> str:
    spec = run.spec
    return f"{spec.depth}×{spec.widths[1]} {spec.activation}"


def _training(run: Run) -> str:
    spec = run.spec
    label = {"standard": "standard", "curvature": "γ-regularized", "crt": "CRT", "pgd": "PGD",
             "crown-ibp": "CROWN-IBP", "coap": "COAP"}[spec.method]
    if spec.method in ("curvature", "crt"):
        label += f", γ = {spec.gamma:g}"
    return label


# ------------------------------------------------------------------------------------------------
# Ensuring the runs
# ------------------------------------------------------------------------------------------------

def measured_minutes(run: Run, preset: str | Preset = "cpu",
                     results_dir: Optional[os.PathLike] = None) -> Optional[float]:
    """The minutes ``run`` took to train (CPU time) and evaluate at ``preset``, from its stored
    results' provenance; None unless it is stored there with its current spec."""
    preset = get_preset(preset)
    if store.stored_status(run.name, preset, results_dir) != "stored":
        return None
    prov = store.load_result(store.results_path(run.name, preset, results_dir))["provenance"]
    train = prov.get("train_cpu_seconds")
    if train is None:
        train = prov["train_seconds"]
    return (train + prov["eval_seconds"]) / 60.0


def estimate_minutes(run: Run, preset: str | Preset = "cpu",
                     results_dir: Optional[os.PathLike] = None) -> float:
    """An estimate of the minutes to train and evaluate ``run`` at ``preset`` on 2 CPU cores (one
    torch thread): the run's own :func:`measured_minutes` when it is stored at ``preset`` (a
    retrain repeats it), else the measured costs per epoch and per evaluation of its method and
    depth above (``smoke``: about a quarter of a minute a run; ``paper``: the cpu cost per epoch
    scaled by the epochs and the attack, on a CPU)."""
    preset = get_preset(preset)
    measured = measured_minutes(run, preset, results_dir)
    if measured is not None:
        return measured
    spec = preset.apply(run.spec)
    if preset.name == "smoke":
        return 0.25
    per_epoch = _CPU_MINUTES_PER_EPOCH[(spec.method, spec.depth)]
    if spec.method == "crt" and spec.attack_schedule == "authors":
        per_epoch *= 6.5          # 301 vs 11 gradients per batch, at batch 64 (facts.md)
    if spec.method in ("crown-ibp", "coap"):
        evaluation = _CPU_EVAL_MINUTES_BASELINES[(spec.activation, spec.depth)]
        if spec.method == "coap":
            evaluation += _CPU_EVAL_MINUTES_COAP_DUAL[spec.depth]
    elif default_crown_mode(spec, run.tables) == "radius":
        evaluation = _CPU_EVAL_MINUTES_CROWN_RADII[spec.depth]
    else:
        evaluation = _CPU_EVAL_MINUTES[spec.depth]
    return spec.epochs * per_epoch + evaluation


def ensure_runs(table: str, preset: str | Preset = "cpu", *, train_missing: bool = True,
                force: bool = False, results_dir: Optional[os.PathLike] = None,
                runs_dir: Optional[os.PathLike] = None, progress: bool = True):
    """Make sure the runs of ``table`` are in the results store at ``preset``.

    Stored runs are kept (unless ``force``: then every run is retrained and re-evaluated). With
    ``train_missing`` the missing runs are trained and evaluated one after the other
    (resumable: an interrupted run continues from ``runs/``), after printing an estimate of the
    time it will take; without it, they are listed as missing.

    Returns:
        A DataFrame, one row per run: ``run``, ``network``, ``training``, ``status``
        (``stored``, ``trained now``, ``missing`` or ``stale``: stored results of another spec,
        retrained when ``train_missing``), ``estimate_min``, ``minutes`` (spent now).
    """
    import pandas as pd

    preset = get_preset(preset)
    runs = runs_for_table(table)
    status = {run.name: store.stored_status(run.name, preset, results_dir) for run in runs}
    todo = [run for run in runs if force or status[run.name] != "stored"]
    if todo and train_missing:
        total = sum(estimate_minutes(run, preset, results_dir) for run in todo)
        print(f"{table} at preset {preset.name}: {len(runs) - len(todo)} of {len(runs)} runs stored; "
              f"training {len(todo)} ({'retraining all' if force else 'the missing or stale ones'}), "
              f"estimated {total:.0f} min on 2 CPU cores", file=sys.stderr, flush=True)
    rows = []
    for i, run in enumerate(runs):
        row = {"run": run.name, "network": _network(run), "training": _training(run),
               "estimate_min": round(estimate_minutes(run, preset, results_dir), 1), "minutes": 0.0}
        if run in todo and train_missing:
            if progress:
                print(f"[{todo.index(run) + 1}/{len(todo)}] {run.name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            store.run_experiment(run.name, preset, force=force or status[run.name] == "stale",
                                 results_dir=results_dir, runs_dir=runs_dir, progress=progress)
            row["minutes"] = round((time.perf_counter() - start) / 60, 2)
            row["status"] = "trained now"
        else:
            row["status"] = status[run.name]
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------

def long_table(table: str, preset: str | Preset = "cpu", *,
               results_dir: Optional[os.PathLike] = None):
    """One row per (run, quantity) of ``table``: ours beside the paper's.

    Columns: ``table``, ``run``, ``network``, ``training``, ``group`` (the ρ of a column group,
    or "beyond the paper"), ``quantity``, ``metric`` (the results key), ``status`` (``stored`` /
    ``missing`` / ``stale``), ``ours`` (NaN when not stored or not applicable), ``lo``, ``hi`` (95% Wilson
    interval of a proportion), ``n``, ``paper`` (NaN where the paper reports nothing),
    ``difference`` (ours − paper), ``preset``. Proportions are fractions; radii and K as they
    are.
    """
    import pandas as pd

    preset = get_preset(preset)
    reference = {(r["run"], r["metric"]): r["value"] for r in paper_records() if r["table"] == table}
    rows: List[Dict[str, Any]] = []
    for run in runs_for_table(table):
        path = store.results_path(run.name, preset, results_dir)
        status = store.stored_status(run.name, preset, results_dir)
        metrics = store.load_result(path)["metrics"] if status == "stored" else None
        for q in _quantities(table, run):
            value = metrics.get(q["metric"]) if metrics is not None else None
            ours = lo = hi = n = math.nan
            if isinstance(value, dict):
                ours, (lo, hi), n = value["value"], value["ci95"], value["n"]
            elif isinstance(value, (int, float)):
                ours = float(value)
            paper = reference.get((run.name, q["metric"]), math.nan)
            rows.append({"table": table, "run": run.name, "network": _network(run),
                         "training": _training(run), "group": q["group"],
                         "quantity": q["quantity"], "metric": q["metric"],
                         "status": status,
                         "ours": ours, "lo": lo, "hi": hi, "n": n, "paper": paper,
                         "difference": ours - paper, "preset": preset.name})
    return pd.DataFrame(rows)


def paper_table(table: str, preset: str | Preset = "cpu", *,
                results_dir: Optional[os.PathLike] = None):
    """``table`` in the paper's shape: one row per network and training, a column group per
    quantity with ``ours``, ``95% CI``, ``n``, ``paper`` and ``Δ`` (percent points for
    proportions). Missing runs show "missing" in ``ours``; at the ``smoke`` preset a first row
    carries :data:`SMOKE_WARNING`."""
    import pandas as pd

    long = long_table(table, preset, results_dir=results_dir)
    percent = ~long["metric"].str.startswith(("mean_certificate", "K_"))
    scale = percent.map({True: 100.0, False: 1.0})

    def fmt(x, digits):
        return "" if pd.isna(x) else f"{x:.{digits}f}"

    cells = pd.DataFrame({
        "network": long["network"], "training": long["training"], "quantity": long["quantity"],
        "ours": [(st if st in ("missing", "stale") else (fmt(v * s, 2 if s > 1 else 3) or "—"))
                 for v, s, st in zip(long["ours"], scale, long["status"])],
        "95% CI": [("" if pd.isna(lo) else f"{lo * s:.1f}–{hi * s:.1f}")
                   for lo, hi, s in zip(long["lo"], long["hi"], scale)],
        "n": ["" if pd.isna(n) else f"{int(n)}" for n in long["n"]],
        "paper": [fmt(p * s, 2 if s > 1 else 3) for p, s in zip(long["paper"], scale)],
        "Δ": [fmt(d * s, 2 if s > 1 else 3) for d, s in zip(long["difference"], scale)],
    })
    order = list(dict.fromkeys(long["quantity"]))
    wide = cells.pivot_table(index=["network", "training"], columns="quantity",
                             values=["ours", "95% CI", "n", "paper", "Δ"], aggfunc="first",
                             sort=False)
    wide = wide.swaplevel(0, 1, axis=1)
    wide = wide.reindex(columns=pd.MultiIndex.from_product(
        [order, ["ours", "95% CI", "n", "paper", "Δ"]]))
    wide = wide.loc[:, [c for c in wide.columns if not wide[c].isna().all()]].fillna("")
    if get_preset(preset).name == "smoke":
        warning = pd.DataFrame([[""] * wide.shape[1]], columns=wide.columns,
                               index=pd.MultiIndex.from_tuples([("⚠ " + SMOKE_WARNING, "")],
                                                               names=wide.index.names))
        wide = pd.concat([warning, wide])
    return wide


def tables_root(results_dir: Optional[os.PathLike] = None) -> Path:
    """``<results root>/tables``: where :func:`write_csv` puts the CSV files."""
    return store.results_root(results_dir) / "tables"


def write_csv(frame, table: str, preset: str | Preset = "cpu", *,
              results_dir: Optional[os.PathLike] = None) -> Path:
    """Write ``frame`` to ``results/tables/<preset>/<table>.csv`` (atomically); returns the path.
    A :func:`paper_table` frame is written as its :func:`long_table` (one row per number)."""

    preset = get_preset(preset)
    if getattr(frame.columns, "nlevels", 1) > 1:
        frame = long_table(table, preset, results_dir=results_dir)
    path = tables_root(results_dir) / preset.name / f"{table}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame.to_csv(index=False)
    atomic_write_via(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return path


# ------------------------------------------------------------------------------------------------
# Tidy frames for the figures
# ------------------------------------------------------------------------------------------------

def figure1_frame(preset: str | Preset = "cpu", *, results_dir: Optional[os.PathLike] = None):
    """Figure 1: one row per (run, (y, t) pair): ``run``, ``depth``, ``gamma``, ``method``
    (``standard`` / ``curvature`` / ``pgd``), ``y``, ``t``, ``K_ub``, ``K_lb``. Missing runs have
    no rows (the status frame of :func:`ensure_runs` lists them)."""
    import pandas as pd

    rows = []
    for run in runs_for_table("figure1"):
        path = store.results_path(run.name, preset, results_dir)
        if not path.is_file():
            continue
        pairs = store.load_result(path).get("curvature_pairs") or {}
        for y, t, ub, lb in zip(pairs.get("y", []), pairs.get("t", []), pairs.get("K_ub", []),
                                pairs.get("K_lb", [])):
            rows.append({"run": run.name, "depth": run.spec.depth, "gamma": run.spec.gamma,
                         "method": run.method, "y": y, "t": t, "K_ub": ub, "K_lb": lb})
    return pd.DataFrame(rows, columns=["run", "depth", "gamma", "method", "y", "t", "K_ub", "K_lb"])


def per_image_frame(name: str, preset: str | Preset = "cpu", which: str = "subset", *,
                    results_dir: Optional[os.PathLike] = None):
    """The per-image table of a stored run as a DataFrame, one row per image: ``which="subset"``
    (the evaluation subset; column ``index`` into the test set) or ``"test"`` (every test image
    evaluated; ``index`` added)."""
    import pandas as pd

    if which not in ("subset", "test"):
        raise ValueError(f"which={which!r} is invalid: expected 'subset' or 'test'")
    path = store.results_path(name, preset, results_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no stored results for run {name!r} at preset "
                                f"{get_preset(preset).name!r} ({path})")
    result = store.load_result(path)
    columns = result["per_image"] if which == "subset" else result["per_test_image"]
    frame = pd.DataFrame(columns)
    if which == "test":
        frame.insert(0, "index", range(len(frame)))
    return frame


def radii_frame(table: str, preset: str | Preset = "cpu", *, which: str = "test",
                results_dir: Optional[os.PathLike] = None):
    """The sound CRC radii of a table's stored smooth runs, tidy: one row per (run, image,
    targets) with ``run``, ``network``, ``training``, ``targets`` (``runner-up`` /
    ``all-classes``), ``radius``; over the whole test set (``which="test"``, 0 for misclassified
    images) or the evaluation subset (``"subset"``). For certificate histograms."""
    import pandas as pd

    parts = []
    for run in runs_for_table(table):
        if not store.results_path(run.name, preset, results_dir).is_file():
            continue
        frame = per_image_frame(run.name, preset, which, results_dir=results_dir)
        for targets in ("runner-up", "all-classes"):
            column = f"radius/{targets}/global"
            if column in frame:
                parts.append(pd.DataFrame({"run": run.name, "network": _network(run),
                                           "training": _training(run), "targets": targets,
                                           "radius": frame[column].astype(float)}))
    if not parts:
        return pd.DataFrame(columns=["run", "network", "training", "targets", "radius"])
    return pd.concat(parts, ignore_index=True)


def provenance_frame(preset: str | Preset = "cpu", *, results_dir: Optional[os.PathLike] = None):
    """Where each stored number comes from: one row per stored run with ``run``, ``tables``,
    ``epochs``, ``train_cpu_min`` (wall minutes where CPU time was not recorded),
    ``eval_min``, ``git_commit``, ``date``, ``device``, ``threads``, ``audit_violations``,
    ``audit_pairs``."""
    import pandas as pd

    rows = []
    folder = store.results_root(results_dir) / get_preset(preset).name
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        res = store.load_result(path)
        prov, audit = res["provenance"], res.get("audit") or {}
        cpu = prov.get("train_cpu_seconds")
        rows.append({"run": res["name"], "tables": ", ".join(res["tables"]),
                     "epochs": res["spec"]["epochs"],
                     "train_cpu_min": round((cpu if cpu is not None else prov["train_seconds"]) / 60, 1),
                     "eval_min": round(prov["eval_seconds"] / 60, 1),
                     "git_commit": (prov.get("git_commit") or "")[:10], "date": prov["date"][:10],
                     "device": prov["device"], "threads": prov["threads"],
                     "audit_violations": audit.get("violations"), "audit_pairs": audit.get("pairs")})
    return pd.DataFrame(rows)


def comparison_frame(preset: str | Preset = "cpu", *, results_dir: Optional[os.PathLike] = None):
    """Our certified accuracy over the whole MNIST test set at ρ = 1.58 (sound, all classes, each
    net by its own certificate) beside later deterministic l2 defenses' *reported* numbers.

    Columns: ``method``, ``network``, ``clean``, ``certified`` (percent), ``n`` (test images; NaN
    for reported rows), ``source`` (``"this edition, preset <p>"`` or where the number is
    reported). Our rows are the stored MNIST runs of Table 3, best first."""
    import pandas as pd

    from .reference import later_defenses

    rows = []
    for run in runs_for_table("table3"):
        path = store.results_path(run.name, preset, results_dir)
        if not path.is_file():
            continue
        m = store.load_result(path)["metrics"]
        entry = m.get(f"certified_accuracy/all-classes/{_own(run)}/1.58")
        if entry is None:
            continue
        rows.append({"method": _training(run), "network": _network(run) + " MLP",
                     "clean": 100 * m["clean_accuracy"]["value"],
                     "certified": 100 * entry["value"], "n": entry["n"],
                     "source": f"this edition, preset {get_preset(preset).name}"})
    ours = pd.DataFrame(rows, columns=["method", "network", "clean", "certified", "n", "source"])
    ours = ours.sort_values("certified", ascending=False)
    theirs = later_defenses()
    theirs = pd.DataFrame({"method": theirs["method"] + " (" + theirs["paper"] + ", "
                           + theirs["year"].astype(str) + ")", "network": theirs["network"],
                           "clean": theirs["clean"], "certified": theirs["certified"],
                           "n": math.nan, "source": "reported: " + theirs["source"]})
    return pd.concat([ours, theirs], ignore_index=True)


def reproduction_frame(preset: str | Preset = "cpu", *, results_dir: Optional[os.PathLike] = None):
    """Every number of every table, ours beside the paper's, with where ours comes from: the
    rows of :func:`long_table` for all tables, joined with :func:`provenance_frame` (training
    CPU minutes, evaluation minutes, commit, date) by run."""
    import pandas as pd

    long = pd.concat([long_table(t, preset, results_dir=results_dir) for t in TABLES],
                     ignore_index=True)
    prov = provenance_frame(preset, results_dir=results_dir)
    if prov.empty:
        prov = pd.DataFrame(columns=["run", "train_cpu_min", "eval_min", "git_commit", "date"])
    keep = ["run", "train_cpu_min", "eval_min", "git_commit", "date"]
    return long.merge(prov[keep], on="run", how="left")


def differences_summary(frame, *, clean_points: float = 1.0) -> Dict[str, str]:
    """What the reproduction page says of the differences, computed from ``frame`` (a
    :func:`reproduction_frame`), as Markdown text:

    - ``clean_below`` / ``clean_above``: the runs whose clean accuracy is more than
      ``clean_points`` percentage points below / above the paper's, each with ours − paper in
      points ("none" if there is none);
    - ``success_ours`` / ``success_paper``: the range of Table 2's certificate success over its
      γ > 0 nets, ours and the paper's ("—" before they are stored);
    - ``crown_ratio`` / ``crc_ratio``: the range of ours / the paper's mean certificate over the
      nets of Table 5 (those with a CROWN-general mean), for CROWN-general and for CRC on the
      same nets (only where the paper's mean CRC is at least 0.1: below, both are near 0 and
      their ratio says nothing), as e.g. "1.2–1.6×" ("—" before they are stored).
    """
    known = frame[frame["difference"].notna()]
    clean = known[known["metric"] == "clean_accuracy"].drop_duplicates("run")

    def runs_with(rows):
        return ", ".join(f"`{r.run}` ({100 * r.difference:+.1f})" for r in rows.itertuples()) \
            or "none"

    gamma_nets = {name for name, run in RUNS.items()
                  if run.method == "curvature" and run.spec.gamma > 0}
    success = known[known["metric"].str.startswith("certificate_success")
                    & known["run"].isin(gamma_nets)]

    def percent_range(values):
        return f"{100 * values.min():.0f}–{100 * values.max():.0f}%" if len(values) else "—"

    means = known[known["metric"].isin(["mean_certificate/runner-up/crown",
                                         "mean_certificate/runner-up/global"])]
    means = means.drop_duplicates(["run", "metric"])
    crown = means[means["metric"] == "mean_certificate/runner-up/crown"]
    crc = means[(means["metric"] == "mean_certificate/runner-up/global")
                & means["run"].isin(crown["run"]) & (means["paper"] >= 0.1)]

    def ratio_range(rows):
        ratio = rows["ours"] / rows["paper"]
        return f"{ratio.min():.2f}–{ratio.max():.2f}×" if len(ratio) else "—"

    limit = clean_points / 100
    return {"clean_below": runs_with(clean[clean["difference"] < -limit]),
            "clean_above": runs_with(clean[clean["difference"] > limit]),
            "success_ours": percent_range(success["ours"]),
            "success_paper": percent_range(success["paper"]),
            "crown_ratio": ratio_range(crown),
            "crc_ratio": ratio_range(crc)}


def tuning_frame(path: Optional[os.PathLike] = None):
    """What was tried beyond the presets' recipes (:data:`crc_core.tuning.TUNING_CSV`): one row
    per training run with the columns :data:`crc_core.tuning.COLUMNS` — ``date``, ``base_run``,
    ``change``, ``epochs``, ``clean_accuracy`` and ``certified_test_1.58`` (percent, whole test
    set, all classes, by the run's own ``certificate``) and a ``note``."""
    import pandas as pd

    path = Path(path) if path is not None else TUNING_CSV
    if not path.is_file():
        return pd.DataFrame(columns=list(TUNING_COLUMNS))
    return pd.read_csv(path, comment="#")


def best_try(base_run: str, path: Optional[os.PathLike] = None,
             results_dir: Optional[os.PathLike] = None) -> Optional[Dict[str, Any]]:
    """The row of :func:`tuning_frame` with the largest ``certified_test_1.58`` among the tries
    of ``base_run`` (the stored recipe's own row included), with ``tries``, how many rows that
    run has in all, ``try``, the try's name if the row's note names its results file
    (``results/<preset>/tuning/<try>.json``, as ``experiments try`` writes it; else None), and
    ``weights``, the path of its released weights (:func:`crc_core.tuning.release_try`) if they
    exist under the results root ``results_dir`` (else None); None if the run has no row with a
    certified number.

    Example:
        >>> best = best_try("mnist-softplus-2x1024-crt-g0.01-r1.58")
        >>> best["certified_test_1.58"], best["try"], best["weights"]  # doctest: +SKIP
    """
    frame = tuning_frame(path)
    rows = frame[frame["base_run"] == base_run]
    known = rows[rows["certified_test_1.58"].notna()]
    if known.empty:
        return None
    best = known.loc[known["certified_test_1.58"].idxmax()].to_dict()
    found = re.search(r"results/([^/\s]+)/tuning/([^/\s]+)\.json", str(best.get("note") or ""))
    name = found.group(2) if found else None
    weights = None
    if found:
        candidate = store.results_root(results_dir) / found.group(1) / "tuning" / f"{name}.safetensors"
        weights = candidate if candidate.is_file() else None
    return {**best, "tries": len(rows), "try": name, "weights": weights}
