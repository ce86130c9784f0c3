"""Tries beyond a preset's recipe, and the record of what each one measured.

A *try* is a registry run with some fields of its preset spec changed (a final β for CROWN-IBP,
more epochs, another γ or training radius). It is trained like a stored run (resumable, under
``runs/<preset>/tuning/<variant>/``), evaluated by the same :func:`crc_core.evaluation.evaluate`,
stored as ``results/<preset>/tuning/<variant>.json`` (same schema as the store, so every number
of it can be recounted), and summarized as one row of ``results/tuning.csv``, the record shown on
the book's reproduction page. The stored run of the recipe itself can be recorded too
(:func:`record_stored`), so that a sweep's rows sit side by side. A try's name (its results
file's) parses back to its run and changes (:func:`parse_variant_name`); its weights can be
released beside its results (:func:`release_try`) and re-certified from them
(:func:`verify_try`), as the store does for its released runs.

A row: ``date`` (of the evaluation), ``base_run``, ``change`` (``field value; …``, or ``none
(the stored recipe)``), ``epochs``, ``clean_accuracy`` and ``certified_test_1.58`` (percent,
whole test set, all classes, at ρ = 1.58, by the run's own certificate), ``certificate``
(``global``: sound CRC with rigorous global bounds; ``crown`` / ``coap``: the baselines' own) and
a ``note`` naming the results file.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from . import store, training
from .runs import Preset, Run, get_preset, get_run, own_certificate
from .train_spec import TrainSpec

__all__ = ["TUNING_CSV", "COLUMNS", "parse_changes", "variant_name", "parse_variant_name",
           "variant_spec", "try_variant", "release_try", "load_try_network", "verify_try",
           "record_stored", "tuning_row", "append_row"]

#: The record of what was tried (committed with the repository).
TUNING_CSV = Path(__file__).resolve().parents[1] / "results" / "tuning.csv"
#: Its columns, in order.
COLUMNS = ("date", "base_run", "change", "epochs", "clean_accuracy", "certified_test_1.58",
           "certificate", "note")
#: Fields a try may not change: they define which registry run it is a variant of.
_FIXED = ("dataset", "widths", "activation", "method")


def _parse_value(field: dataclasses.Field, text: str):
    """One ``--set`` value, typed by the field's default."""
    default = field.default
    if text.lower() == "none":
        if default is not None and field.name not in ("rho", "pgd_step_size", "train_subset"):
            raise ValueError(f"{field.name} cannot be None")
        return None
    if isinstance(default, bool):
        raise ValueError(f"{field.name}: boolean fields are not supported")
    if isinstance(default, int) or field.name == "train_subset":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{field.name} expects an integer, got {text!r}") from None
    if isinstance(default, float) or field.name in ("rho", "pgd_step_size"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{field.name} expects a number, got {text!r}") from None
    return text


def parse_changes(items: Sequence[str]) -> Dict[str, Any]:
    """``["crown_ibp_final_beta=2", "epochs=30"]`` → ``{"crown_ibp_final_beta": 2.0, "epochs": 30}``.

    Keys are :class:`TrainSpec` fields other than ``dataset``, ``widths``, ``activation`` and
    ``method``; values are typed by the field (``none`` for an optional field).

    Raises:
        ValueError: a malformed item, an unknown or fixed field, a repeated field, a bad value.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainSpec)}
    changes: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"expected FIELD=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"unknown spec field {key!r}; expected one of "
                             f"{sorted(set(fields) - set(_FIXED))}")
        if key in _FIXED:
            raise ValueError(f"{key} names another run, not a variant: choose that run instead")
        if key in changes:
            raise ValueError(f"{key} is set twice")
        changes[key] = _parse_value(fields[key], text.strip())
    return changes


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant_name(name: str, changes: Mapping[str, Any]) -> str:
    """A file-safe name of a try: ``<run>--<field>=<value>[,…]`` with the fields sorted."""
    if not changes:
        raise ValueError("a try needs at least one change")
    text = ",".join(f"{k}={_format(changes[k])}" for k in sorted(changes))
    if not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", text):
        raise ValueError(f"changes {dict(changes)!r} do not make a file-safe name")
    return f"{name}--{text}"


def parse_variant_name(variant: str) -> Tuple[str, Dict[str, Any]]:
    """The run and changes of a try's name: the inverse of :func:`variant_name`.

    Example:
        >>> parse_variant_name("mnist-softplus-2x1024-crt-g0.01-r1.58--epochs=48,gamma=0.06")
        ('mnist-softplus-2x1024-crt-g0.01-r1.58', {'epochs': 48, 'gamma': 0.06})

    Raises:
        ValueError: not ``<run>--<field>=<value>[,…]``, an unknown run, bad changes, or a name
            that is not the canonical one of its changes (fields sorted, values as written by
            :func:`variant_name`).
    """
    name, sep, text = variant.partition("--")
    if not sep or not text:
        raise ValueError(f"{variant!r} is not the name of a try: expected "
                         "<run>--<field>=<value>[,...] (the name of its results file)")
    get_run(name)
    changes = parse_changes(text.split(","))
    canonical = variant_name(name, changes)
    if canonical != variant:
        raise ValueError(f"{variant!r} is not a canonical try name; did you mean {canonical!r}?")
    return name, changes


def variant_spec(name: str, preset: str | Preset, changes: Mapping[str, Any]) -> TrainSpec:
    """The spec of a try: the run's spec at ``preset`` with ``changes`` applied (validated).

    Raises:
        ValueError: unknown run or preset; invalid changes; changes that leave the spec as the
            preset trains it (that is the stored run: use ``run``).
    """
    run = get_run(name)
    base = get_preset(preset).apply(run.spec)
    bad = sorted(set(changes) & set(_FIXED))
    if bad:
        raise ValueError(f"{bad} name another run, not a variant: choose that run instead")
    try:
        spec = base.replace(**changes)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if spec == base:
        raise ValueError(f"{dict(changes)!r} leaves {name}'s spec at preset "
                         f"{get_preset(preset).name} unchanged: that is the stored run")
    return spec


def _certificate(result: Mapping[str, Any]) -> Tuple[str, Optional[float]]:
    """The run's own certificate (:func:`crc_core.runs.own_certificate`) and its certified
    accuracy at 1.58, whole test set, all classes; ("", None) if it was not computed."""
    bounds = own_certificate(result["spec"]["method"])
    entry = result["metrics"].get(f"certified_accuracy/all-classes/{bounds}/1.58")
    return (bounds, entry["value"]) if entry is not None else ("", None)


def tuning_row(result: Mapping[str, Any], base_run: str, change: str, note: str = "") -> Dict[str, Any]:
    """One row of the record from a results dict (as stored by the store or by :func:`try_variant`)."""
    metrics = result["metrics"]
    certificate, certified = _certificate(result)
    date = str(result["provenance"].get("date", ""))[:10]
    return {"date": date, "base_run": base_run, "change": change,
            "epochs": int(result["evaluated_epoch"]),
            "clean_accuracy": round(100 * metrics["clean_accuracy"]["value"], 2),
            "certified_test_1.58": "" if certified is None else round(100 * certified, 2),
            "certificate": certificate, "note": note}


def append_row(row: Mapping[str, Any], path: Optional[os.PathLike] = None) -> None:
    """Append a row to the record (a CSV with ``#`` comment lines and a header of :data:`COLUMNS`).

    Raises:
        ValueError: the file's header is not :data:`COLUMNS`, or the row has other keys.
    """
    path = Path(path) if path is not None else TUNING_CSV
    if set(row) != set(COLUMNS):
        raise ValueError(f"a tuning row has the columns {list(COLUMNS)}, got {sorted(row)}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not path.is_file():
        writer.writerow(COLUMNS)
    else:
        header = next((line for line in path.read_text(encoding="utf-8").splitlines()
                       if line and not line.startswith("#")), None)
        if header is not None and tuple(header.split(",")) != COLUMNS:
            raise ValueError(f"{path} has the header {header!r}, expected {','.join(COLUMNS)}")
        if header is None:
            writer.writerow(COLUMNS)
    writer.writerow([row[c] for c in COLUMNS])
    with open(path, "a", encoding="utf-8") as f:
        f.write(buf.getvalue())


def _change_text(changes: Mapping[str, Any]) -> str:
    return "; ".join(f"{k} {_format(changes[k])}" for k in sorted(changes))


def try_variant(name: str, changes: Mapping[str, Any], preset: str | Preset = "cpu", *,
                note: str = "", results_dir: Optional[os.PathLike] = None,
                runs_dir: Optional[os.PathLike] = None, tuning_csv: Optional[os.PathLike] = None,
                device: str | torch.device = "cpu", progress: bool = True,
                until_epoch: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """Train, evaluate, store and record one try (resumable; a stored try is not redone).

    Args:
        name: the registry run it varies.
        changes: spec fields to change (:func:`parse_changes`).
        preset: the preset whose recipe is varied (its evaluation budget too).
        note: free text for the row (the results file is named after it).
        results_dir, runs_dir: roots of the store and of checkpoints (defaults as the store's).
        tuning_csv: the record (default :data:`TUNING_CSV`).
        device, progress, until_epoch: as :func:`crc_core.store.run_experiment`.

    Returns:
        The row appended to the record, or None if training stopped at ``until_epoch``. If the
        try's results file already exists, nothing is trained and its row is returned, not
        appended again.
    """
    preset = get_preset(preset)
    spec = variant_spec(name, preset, changes)
    variant = variant_name(name, changes)
    run = get_run(name)
    out, _, run_dir = _try_paths(variant, preset, results_dir, runs_dir)
    rel = f"results/{preset.name}/tuning/{out.name}"
    row_note = "; ".join(filter(None, [note, rel]))
    if out.is_file():
        return tuning_row(store.load_result(out), name, _change_text(changes), row_note)
    code_state = store._code_state()
    model = training.train(spec, run_dir, resume=True, progress=progress, device=device,
                           until_epoch=until_epoch, select="last")
    history = training.read_history(run_dir)
    if len(history) < spec.epochs:
        return None
    variant_run = Run(variant, run.spec, run.tables)
    result = store._evaluate_and_store(variant_run, spec, model, history, preset,
                                       torch.device(device), out, code_state, progress)
    row = tuning_row(result, name, _change_text(changes), row_note)
    append_row(row, tuning_csv)
    return row


def _try_paths(variant: str, preset: Preset, results_dir: Optional[os.PathLike],
               runs_dir: Optional[os.PathLike]) -> Tuple[Path, Path, Path]:
    """Where a try lives: its results JSON, its released weights and its checkpoint directory
    (``results/<preset>/tuning/<variant>.{json,safetensors}``, ``runs/<preset>/tuning/<variant>/``)."""
    out = store.results_root(results_dir) / preset.name / "tuning" / f"{variant}.json"
    return out, out.with_suffix(".safetensors"), store.runs_root(runs_dir) / preset.name / "tuning" / variant


def release_try(variant: str, preset: str | Preset = "cpu", *,
                results_dir: Optional[os.PathLike] = None,
                runs_dir: Optional[os.PathLike] = None, retrain: bool = False,
                device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Release the weights of a finished try (its last epoch, the weights it was evaluated with)
    as ``results/<preset>/tuning/<variant>.safetensors``, so that its stored certificates can be
    re-checked without retraining (:func:`verify_try`). Returns the path.

    With ``retrain``, a stored try whose checkpoint is gone (another machine, a wiped ``runs/``)
    is trained again (resumable) from its recipe; training is deterministic on CPU, so this
    reproduces its weights, and they are released only if they re-certify every image of its
    stored results (:func:`crc_core.store.verify_network`, to
    :data:`crc_core.store.VERIFY_TOLERANCE`).

    Raises:
        ValueError: ``variant`` is not a try's name.
        FileNotFoundError: the try is not stored, or (without ``retrain``) its checkpoint is not
            in ``runs/``.
        RuntimeError: retrained weights do not reproduce the stored certificates (nothing is
            released).
    """
    preset = get_preset(preset)
    name, changes = parse_variant_name(variant)
    spec = variant_spec(name, preset, changes)
    out, weights, run_dir = _try_paths(variant, preset, results_dir, runs_dir)
    if not out.is_file():
        raise FileNotFoundError(f"try {variant!r} is not stored at preset {preset.name} ({out}): "
                                "run it with `experiments try` first")
    if not training.is_trained(spec, run_dir):
        if not retrain:
            raise FileNotFoundError(f"the finished checkpoint of try {variant!r} is not in "
                                    f"{run_dir}: train it again (`experiments try ... --release` "
                                    "retrains a stored try whose checkpoint is gone)")
        model = training.train(spec, run_dir, resume=True, progress=progress, device=device,
                               select="last")
        check = store.verify_network(model, spec, store.load_result(out), preset,
                                     progress=progress)
        if not check["ok"]:
            raise RuntimeError(f"the retrained weights of try {variant!r} do not reproduce its "
                               f"stored certificates ({len(check['mismatches'])} mismatches, "
                               f"largest radius difference {check['max_abs_diff']:.3g}); "
                               "nothing released")
    model = training.load_model(run_dir, "last")
    return store.release_weights(model, variant, preset, path=weights)


def load_try_network(variant: str, preset: str | Preset = "cpu", *,
                     results_dir: Optional[os.PathLike] = None,
                     runs_dir: Optional[os.PathLike] = None,
                     device: str | torch.device = "cpu"):
    """The trained network of a try: its released weights (:func:`release_try`), else its last
    epoch in ``runs/``, else an error saying how to get it.

    Raises:
        ValueError: ``variant`` is not a try's name.
        FileNotFoundError: neither released weights nor a finished checkpoint exist.
    """
    preset = get_preset(preset)
    name, changes = parse_variant_name(variant)
    spec = variant_spec(name, preset, changes)
    _, weights, run_dir = _try_paths(variant, preset, results_dir, runs_dir)
    sets = " ".join(f"--set {k}={_format(v)}" for k, v in sorted(changes.items()))
    return store.load_trained(variant, preset, spec, weights, run_dir,
                              f"python -m crc_core.experiments try {name} --preset {preset.name} "
                              f"{sets} --threads 1", device=device)


def verify_try(variant: str, preset: str | Preset = "cpu", *, images: Optional[slice] = None,
               results_dir: Optional[os.PathLike] = None, runs_dir: Optional[os.PathLike] = None,
               tolerance: float = store.VERIFY_TOLERANCE, progress: bool = True) -> Dict[str, Any]:
    """:func:`crc_core.store.verify` for a try: re-certify it from its weights
    (:func:`load_try_network`) and compare with every certificate of its stored results.

    Raises:
        ValueError: ``variant`` is not a try's name.
        FileNotFoundError: the try is not stored, or has no weights here.
    """
    preset = get_preset(preset)
    name, changes = parse_variant_name(variant)
    spec = variant_spec(name, preset, changes)
    out, _, _ = _try_paths(variant, preset, results_dir, runs_dir)
    if not out.is_file():
        raise FileNotFoundError(f"try {variant!r} is not stored at preset {preset.name} ({out})")
    model = load_try_network(variant, preset, results_dir=results_dir, runs_dir=runs_dir)
    return store.verify_network(model, spec, store.load_result(out), preset, images=images,
                                tolerance=tolerance, progress=progress)


def record_stored(name: str, preset: str | Preset = "cpu", *, note: str = "",
                  results_dir: Optional[os.PathLike] = None,
                  tuning_csv: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """Append the stored run of the recipe itself to the record (the reference row of a sweep).

    Raises:
        FileNotFoundError: the run is not stored at ``preset``.
    """
    preset = get_preset(preset)
    path = store.results_path(name, preset, results_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not stored at preset {preset.name} ({path})")
    rel = f"results/{preset.name}/{path.name}"
    row = tuning_row(store.load_result(path), name, "none (the stored recipe)",
                     "; ".join(filter(None, [note, rel])))
    append_row(row, tuning_csv)
    return row
