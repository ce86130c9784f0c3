"""The results store: train a run, evaluate it once, keep the numbers and (some) weights.

Layout (roots: :func:`results_root`, :func:`runs_root`)::

    results/<preset>/<run>.json           one results file per run (results/README.md), committed
    results/<preset>/<run>.safetensors    released weights (the six CRT nets of Tables 3 and 4)
    runs/<preset>/<run>/                  checkpoints, every epoch (git-ignored; resumable)

:func:`run_experiment` trains a run (resuming a partial one) and evaluates the **last** epoch's
weights once (:func:`crc_core.evaluation.evaluate`); a stored run is not retrained unless
``force``. :func:`load_network` gives a trained network by run name and preset (released weights,
else ``runs/``, else a clear error); :func:`verify` re-certifies a network from its weights and
checks the stored certificates against it.

The roots default to ``<repo>/results`` and ``<repo>/runs``; the environment variables
``CRC_RESULTS_DIR`` and ``CRC_RUNS_DIR`` (or the ``results_dir=`` / ``runs_dir=`` arguments)
move them.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from . import evaluation, training
from .atomic_files import atomic_write_via
from .models import MLP
from .runs import Preset, get_preset, get_run
from .train_spec import TrainSpec

__all__ = ["RESULTS_SCHEMA", "RELEASED_RUNS", "results_root", "runs_root", "results_path",
           "weights_path", "run_experiment", "stored_status", "load_result", "load_results", "dumps",
           "write_json", "release_weights", "load_weights", "load_trained", "load_network", "verify",
           "verify_network", "VERIFY_TOLERANCE"]

#: Identifies the layout of a results file (results/README.md).
RESULTS_SCHEMA = "crc-results-2"
#: The runs whose weights are committed beside their results (the six CRT softplus nets of
#: Tables 3 and 4, the ones users ask for most).
RELEASED_RUNS = tuple(f"{ds}-softplus-{L}x1024-crt-g{g}-r1.58" for ds in ("mnist", "fashion-mnist")
                      for L, g in ((2, "0.01"), (3, "0.05"), (4, "0.07")))
#: |recomputed − stored| allowed by :func:`verify` for a certified radius: the stored value is
#: rounded down to 1e-5, and the solver is deterministic on one machine but not bit-identical
#: across BLAS builds.
VERIFY_TOLERANCE = 2e-5

_REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def results_root(results_dir: Optional[os.PathLike] = None) -> Path:
    """``results_dir``, else ``$CRC_RESULTS_DIR``, else ``<repo>/results``."""
    if results_dir is not None:
        return Path(results_dir)
    env = os.environ.get("CRC_RESULTS_DIR")
    return Path(env) if env else _REPO / "results"


def runs_root(runs_dir: Optional[os.PathLike] = None) -> Path:
    """``runs_dir``, else ``$CRC_RUNS_DIR``, else ``<repo>/runs`` (git-ignored checkpoints)."""
    if runs_dir is not None:
        return Path(runs_dir)
    env = os.environ.get("CRC_RUNS_DIR")
    return Path(env) if env else _REPO / "runs"


def results_path(name: str, preset: str | Preset, results_dir: Optional[os.PathLike] = None) -> Path:
    """``<results root>/<preset>/<name>.json``."""
    return results_root(results_dir) / get_preset(preset).name / f"{name}.json"


def weights_path(name: str, preset: str | Preset, results_dir: Optional[os.PathLike] = None) -> Path:
    """``<results root>/<preset>/<name>.safetensors`` (released weights)."""
    return results_path(name, preset, results_dir).with_suffix(".safetensors")


# ------------------------------------------------------------------------------------------------
# Compact JSON
# ------------------------------------------------------------------------------------------------

def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def dumps(obj, indent: int = 0) -> str:
    """JSON with one line per array of numbers and per flat record, so results diffs stay
    readable: a list of scalars, or a dict whose values are scalars or such lists of length ≤ 2,
    is written on one line; other dicts and lists one entry per line."""
    one = lambda v: json.dumps(v, ensure_ascii=False, separators=(", ", ": "))  # noqa: E731
    if _scalar(obj):
        return one(obj)
    if isinstance(obj, list) and all(_scalar(v) for v in obj):
        return json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, dict) and all(_scalar(v) or (isinstance(v, list) and len(v) <= 2
                                                    and all(_scalar(u) for u in v))
                                     for v in obj.values()):
        return one(obj)
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, list):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = (inner + json.dumps(str(k), ensure_ascii=False) + ": " + dumps(v, indent + 1)
                 for k, v in obj.items())
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def write_json(obj, path: os.PathLike) -> None:
    """Write ``obj`` atomically with :func:`dumps` (a crash never leaves half a file)."""
    text = dumps(obj) + "\n"
    atomic_write_via(Path(path), lambda p: Path(p).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------------

def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _code_state() -> Dict[str, Any]:
    """The git commit and dirty flag of the code, read when a run starts (the code then loaded).

    Changes under ``results/`` (the store itself, e.g. the tuning record a finished try appends
    to) are data, not code: they do not make the code dirty."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"


def _cpu_description() -> Dict[str, Optional[str]]:
    """The CPU's model name (``/proc/cpuinfo``; None where unreadable) and the vector instruction
    set torch dispatches to (``"AVX2"``, ``"AVX512"``, …). Training is bit-for-bit repeatable on
    one machine, not across CPUs: kernels of another instruction set round differently, and the
    difference grows over training (a 4×1024 CRT net retrained from the same commit on another
    CPU differed in its first epoch's test accuracy by a point)."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), None)
    except OSError:
        pass
    return {"model": model or platform.processor() or None,
            "capability": torch.backends.cpu.get_cpu_capability()}


def _provenance(preset: Preset, device: torch.device, train_seconds: float,
                train_cpu_seconds: Optional[float], eval_seconds: float,
                code_state: Dict[str, Any]) -> Dict[str, Any]:
    return {
        **code_state,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": None if train_cpu_seconds is None else round(train_cpu_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "device": _device_name(device),
        "cpu": _cpu_description(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "preset": preset.name,
        "preset_settings": preset.to_dict(),
    }


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------

def run_experiment(name: str, preset: str | Preset = "cpu", force: bool = False, *,
                   results_dir: Optional[os.PathLike] = None, runs_dir: Optional[os.PathLike] = None,
                   device: str | torch.device = "cpu", progress: bool = True,
                   until_epoch: Optional[int] = None, evaluate: bool = True,
                   reevaluate: bool = False) -> Optional[Dict[str, Any]]:
    """Train run ``name`` at ``preset`` (resumable) and evaluate it once into the results store.

    If ``results/<preset>/<name>.json`` exists and ``force`` is False, it is read and returned:
    nothing is trained or evaluated. Otherwise the run is trained under
    ``runs/<preset>/<name>/`` — resuming a partial run, or from scratch if ``force`` — the last
    epoch's weights are evaluated with :func:`crc_core.evaluation.evaluate`, and the JSON is
    written atomically. Released runs (:data:`RELEASED_RUNS`) also get their weights written as
    safetensors beside the JSON.

    Args:
        name: a key of :data:`crc_core.runs.RUNS`.
        preset: ``"smoke"``, ``"cpu"`` or ``"paper"``.
        force: retrain from scratch and re-evaluate even if results exist.
        results_dir, runs_dir: roots (default :func:`results_root`, :func:`runs_root`).
        device: where to train and evaluate.
        progress: tqdm bars.
        until_epoch: train only up to this epoch (to split a run over sessions); if training is
            then unfinished, nothing is evaluated and None is returned.
        evaluate: False trains only (returns None); the evaluation happens on a later call.
        reevaluate: evaluate the finished checkpoint in ``runs/`` again (after a change of the
            evaluation protocol) and overwrite the stored results; nothing is trained.

    Returns:
        The results dict (as stored), or None if training stopped early or ``evaluate=False``.

    Raises:
        ValueError: unknown run or preset; ``reevaluate`` without a finished checkpoint.
    """
    code_state = _code_state()
    run = get_run(name)
    preset = get_preset(preset)
    out = results_path(name, preset, results_dir)
    spec = preset.apply(run.spec)
    run_dir = runs_root(runs_dir) / preset.name / name
    device = torch.device(device)
    if reevaluate:
        if not training.is_trained(spec, run_dir):
            raise ValueError(f"cannot re-evaluate {name} ({preset.name}): {run_dir} holds no "
                             "finished training run of its spec")
        model = training.load_model(run_dir, "last", device=device)
        return _evaluate_and_store(run, spec, model, training.read_history(run_dir), preset,
                                   device, out, code_state, progress)
    status = stored_status(name, preset, results_dir)
    if status == "stale" and not force:
        raise ValueError(
            f"{out} was made with another spec than {name}'s at preset {preset.name} now "
            f"(the registry changed): retrain it with force=True (--force).\n"
            f"  stored: {load_result(out).get('spec')}\n  now:    {spec.to_dict()}")
    if status == "stored" and not force:
        return load_result(out)
    model = training.train(spec, run_dir, resume=not force, progress=progress, device=device,
                           until_epoch=until_epoch, select="last")
    history = training.read_history(run_dir)
    if len(history) < spec.epochs or not evaluate:
        return None
    return _evaluate_and_store(run, spec, model, history, preset, device, out, code_state,
                               progress)


def _evaluate_and_store(run, spec, model, history, preset: Preset, device, out: Path,
                        code_state, progress: bool) -> Dict[str, Any]:
    t0 = time.perf_counter()
    result_eval = evaluation.evaluate(model, spec, preset, tables=run.tables, progress=progress,
                                      device=device)
    eval_seconds = time.perf_counter() - t0
    train_seconds = sum(row["seconds"] for row in history)
    cpu = [row.get("cpu_seconds") for row in history]
    train_cpu = None if any(c is None for c in cpu) else sum(cpu)
    result = {
        "schema": RESULTS_SCHEMA,
        "name": run.name,
        "preset": preset.name,
        "tables": list(run.tables),
        "spec": spec.to_dict(),
        "evaluated_epoch": len(history),
        **result_eval,
        "history": history,
        "provenance": _provenance(preset, device, train_seconds, train_cpu, eval_seconds,
                                  code_state),
    }
    if run.name in RELEASED_RUNS:
        release_weights(model, run.name, preset, out.parent.parent)
    write_json(result, out)
    return json.loads(json.dumps(result))


def stored_status(name: str, preset: str | Preset = "cpu",
                  results_dir: Optional[os.PathLike] = None) -> str:
    """``"stored"`` (results of the registry's spec at ``preset``), ``"stale"`` (results made
    with another spec: the registry changed since; retrain with ``force``) or ``"missing"``."""
    path = results_path(name, preset, results_dir)
    if not path.is_file():
        return "missing"
    spec = get_preset(preset).apply(get_run(name).spec)
    return "stored" if load_result(path).get("spec") == spec.to_dict() else "stale"


def load_result(path: os.PathLike) -> Dict[str, Any]:
    """Read one results JSON."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_results(preset: str | Preset = "cpu", results_dir: Optional[os.PathLike] = None):
    """The results store of a preset as a pandas DataFrame, one row per run (index: name).

    Columns: ``tables`` (comma-separated), the spec's ``dataset``, ``activation``, ``depth``,
    ``width``, ``method``, ``gamma``, ``rho``, ``epochs``; every metric: a number, or for a
    proportion its ``value`` under the metric's name plus ``<name>:se``, ``<name>:lo``,
    ``<name>:hi`` (95% interval) and ``<name>:n``; ``audit_violations`` and ``audit_pairs``;
    and ``train_seconds``, ``train_cpu_seconds``, ``eval_seconds``, ``git_commit``, ``date``.
    """
    import pandas as pd

    folder = results_root(results_dir) / get_preset(preset).name
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        res = load_result(path)
        spec = res["spec"]
        row: Dict[str, Any] = {
            "name": res["name"], "tables": ",".join(res["tables"]),
            "dataset": spec["dataset"], "activation": spec["activation"],
            "depth": len(spec["widths"]) - 1, "width": spec["widths"][1], "method": spec["method"],
            "gamma": spec["gamma"], "rho": spec["rho"], "epochs": spec["epochs"],
        }
        for key, value in res["metrics"].items():
            if isinstance(value, Mapping):
                row[key] = value["value"]
                row[f"{key}:se"] = value["se"]
                row[f"{key}:lo"], row[f"{key}:hi"] = value["ci95"]
                row[f"{key}:n"] = value["n"]
            else:
                row[key] = value
        audit = res.get("audit") or {}
        row["audit_violations"] = audit.get("violations")
        row["audit_pairs"] = audit.get("pairs")
        prov = res["provenance"]
        for key in ("train_seconds", "train_cpu_seconds", "eval_seconds", "git_commit", "date"):
            row[key] = prov.get(key)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.set_index("name") if len(frame) else frame


# ------------------------------------------------------------------------------------------------
# Released weights
# ------------------------------------------------------------------------------------------------

def release_weights(model: MLP, name: str, preset: str | Preset,
                    results_dir: Optional[os.PathLike] = None, *,
                    path: Optional[os.PathLike] = None) -> Path:
    """Write the weights and biases of ``model`` (float32) as safetensors beside its results.

    The file's metadata names the run (or try, :mod:`crc_core.tuning`), preset, activation and
    widths; :func:`load_weights` reads it back. ``path`` defaults to :func:`weights_path`.
    Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path) if path is not None else weights_path(name, preset, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"layers.{i}.{kind}": getattr(layer, kind).detach().to("cpu", torch.float32).contiguous()
               for i, layer in enumerate(model.layers) for kind in ("weight", "bias")}
    meta = {"run": name, "preset": get_preset(preset).name, "activation": model.activation.name,
            "widths": json.dumps(model.widths), "format": "crc_core.MLP layers.{i}.weight/bias"}
    atomic_write_via(path, lambda p: save_file(tensors, str(p), metadata=meta))
    return path


def load_weights(path: os.PathLike, name: str, activation: str, *,
                 device: str | torch.device = "cpu") -> MLP:
    """The network in the released weights file ``path`` (:func:`release_weights`).

    Raises:
        ValueError: the file's metadata names another run than ``name``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("run", name) != name:
        raise ValueError(f"{path} holds the weights of run {meta.get('run')!r}, not {name!r}")
    return MLP.from_state_dict(load_file(str(path)), activation=activation).to(device)


def load_network(name: str, preset: str | Preset = "cpu", *, results_dir: Optional[os.PathLike] = None,
                 runs_dir: Optional[os.PathLike] = None, device: str | torch.device = "cpu") -> MLP:
    """The trained network of run ``name`` at ``preset``: the released weights
    (``results/<preset>/<name>.safetensors``), else the last epoch in ``runs/``, else an error
    saying how to train it.

    Raises:
        ValueError: unknown run or preset.
        FileNotFoundError: neither released weights nor a finished checkpoint exist.
    """
    run = get_run(name)
    preset = get_preset(preset)
    return load_trained(name, preset, preset.apply(run.spec), weights_path(name, preset, results_dir),
                        runs_root(runs_dir) / preset.name / name,
                        f"python -m crc_core.experiments run {name} --preset {preset.name} "
                        "--threads 1", device=device)


def load_trained(name: str, preset: Preset, spec: TrainSpec, weights: Path, run_dir: Path,
                 command: str, *, device: str | torch.device = "cpu") -> MLP:
    """The network of ``name`` (a run, or a try of :mod:`crc_core.tuning`): the released
    weights file ``weights`` if it exists, else the last epoch of a finished run of ``spec`` in
    ``run_dir``, else a FileNotFoundError that says how far training got and gives ``command``,
    the command that trains it."""
    if weights.is_file():
        return load_weights(weights, name, spec.activation, device=device)
    if training.is_trained(spec, run_dir):
        return training.load_model(run_dir, "last", device=device)
    done = len(training.read_history(run_dir))
    state = f"{done} of {spec.epochs} epochs are trained in {run_dir}" if done else "it is not trained"
    raise FileNotFoundError(f"no weights for {name!r} at preset {preset.name!r}: {state}. "
                            f"Train it with `{command}` (resumable).")


def verify(name: str, preset: str | Preset = "cpu", *, images: Optional[slice] = None,
           results_dir: Optional[os.PathLike] = None, runs_dir: Optional[os.PathLike] = None,
           tolerance: float = VERIFY_TOLERANCE, progress: bool = True) -> Dict[str, Any]:
    """Re-certify a stored run from its weights and compare with every stored certificate.

    Loads the network (:func:`load_network`) and compares with :func:`verify_network`
    (tries: :func:`crc_core.tuning.verify_try`).

    Returns:
        ``{"run", "images", "compared", "max_abs_diff", "mismatches": [(column, index, stored,
        recomputed), ...], "ok"}``.
    """
    preset = get_preset(preset)
    stored = load_result(results_path(name, preset, results_dir))
    model = load_network(name, preset, results_dir=results_dir, runs_dir=runs_dir)
    return verify_network(model, preset.apply(get_run(name).spec), stored, preset, images=images,
                          tolerance=tolerance, progress=progress)


def verify_network(model: MLP, spec: TrainSpec, stored: Dict[str, Any], preset: Preset, *,
                   images: Optional[slice] = None, tolerance: float = VERIFY_TOLERANCE,
                   progress: bool = True) -> Dict[str, Any]:
    """Re-certify ``model`` and compare with the certificates of its stored results ``stored``.

    Recomputes the test-set table (:func:`crc_core.evaluation.test_set_table`: decisions and
    sound CRC radii, all classes and runner-up, under ``spec`` as trained) on ``images`` (a
    slice of the test set; default: all of the stored ones), and compares: decisions exactly;
    radii within ``tolerance`` (stored values are rounded down to 1e-5); and that every stored
    radius is ≤ the recomputed one + tolerance.

    Returns:
        ``{"run", "images", "compared", "max_abs_diff", "mismatches": [(column, index, stored,
        recomputed), ...], "ok"}``.

    Raises:
        ValueError: the results have no per-test-image table.
    """
    from . import data

    name = stored.get("name")
    per = stored.get("per_test_image")
    if per is None:
        raise ValueError(f"{name} ({preset.name}) has no per-test-image table "
                         f"(schema {stored.get('schema')!r}): re-evaluate it first")
    n = len(per["label"])
    sl = images or slice(0, n)
    rows = list(range(n))[sl]
    X, Y = data.load(spec.dataset, "test")
    X, Y = X[:n][sl], Y[:n][sl]
    fresh = evaluation.test_set_table(model, spec, X, Y, preset, crown_mode="none",
                                      progress=progress)
    mismatches: List[Any] = []
    worst = 0.0
    compared = 0
    for key, values in fresh.items():
        if key not in per or key.startswith("certified/"):
            continue
        old = [per[key][i] for i in rows]
        new = values.tolist()
        for i, a, b in zip(rows, old, new):
            compared += 1
            if key.startswith("radius/"):
                a = 0.0 if a is None else a
                diff = abs(a - b)
                worst = max(worst, diff)
                if diff > tolerance:
                    mismatches.append((key, i, a, b))
            elif a != b:
                mismatches.append((key, i, a, b))
    return {"run": name, "images": len(rows), "compared": compared, "max_abs_diff": worst,
            "mismatches": mismatches, "ok": not mismatches}
