"""The run registry, the presets, the evaluation and the results store.

Every network the paper's Tables 2-6 and Figure 1 need is one entry of :data:`RUNS`, generated
from one table (:data:`_TABLE_ROWS`); its name says what it is::

    mnist-softplus-2x1024-crt-g0.01-r1.58     data set, activation, L×width, method, γ, ρ_train

A *preset* (:data:`PRESETS`) turns a run's base spec — the paper's settings — into the settings
actually trained, and fixes the evaluation budget:

==========  =========================================================================
``smoke``   seconds: hidden width 32, 256 training images, 1 epoch, 20 evaluation images
``cpu``     the paper's architectures on 2 CPU cores, batch 128, epochs per method and
            depth to fit about 45 minutes of training, the 10-step CRC attack, 500 images
``paper``   the paper's settings: 30 epochs, batch 64, Adam 1e-3, the authors' 30×10
            CRT attack, 150 evaluation images (meant for a GPU)
==========  =========================================================================

:func:`run_experiment` trains a run (resumably, under ``runs/<preset>/<name>/``) and evaluates
it once into ``results/<preset>/<name>.json``; a run whose JSON exists is not retrained unless
``force=True``. :func:`load_results` reads a preset's store into one DataFrame row per run.
:data:`PAPER_REFERENCE` holds the paper's numbers, used only as the reference column beside ours.
``results/README.md`` documents the JSON schema field by field.

Command line::

    python -m crc_core.experiments list [--preset cpu]
    python -m crc_core.experiments run mnist-softplus-2x1024-crt-g0.01-r1.58 --preset cpu [--force]

The results and runs roots default to ``<repo>/results`` and ``<repo>/runs``; the environment
variables ``CRC_RESULTS_DIR`` and ``CRC_RUNS_DIR`` (or the ``results_dir=`` / ``runs_dir=``
arguments) move them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from . import attacks, curvature, duality, training
from . import data as data_module
from .activations import get_activation
from .attacks import runner_up
from .training import TrainSpec

Tensor = torch.Tensor

__all__ = [
    "EVAL_RADII", "EVAL_SEED", "TRAIN_RHO", "RESULTS_SCHEMA", "Run", "Preset", "RUNS",
    "PRESETS", "PAPER_REFERENCE", "run_name", "get_run", "get_preset", "runs_for_table",
    "results_root", "runs_root", "results_path", "run_experiment", "evaluate", "CROWN_MODES",
    "load_result", "load_results", "paper_reference", "main",
]

#: Radii at which certified and empirical robust accuracies are reported (the paper's two).
EVAL_RADII: Tuple[float, ...] = (0.5, 1.58)
#: Seed of the evaluation subset (data.evaluation_subset) and of the PGD random starts.
EVAL_SEED = 0
#: The training radius of every CRT / PGD / baseline run (the authors' code: 1.58 on MNIST).
TRAIN_RHO = 1.58
#: Identifies the layout of a results file (results/README.md).
RESULTS_SCHEMA = "crc-results-1"

_REPO = Path(__file__).resolve().parents[1]


# ================================================================================================
# The run registry
# ================================================================================================

@dataclass(frozen=True)
class Run:
    """A named network of the paper.

    Attributes:
        name: e.g. ``mnist-softplus-2x1024-crt-g0.01-r1.58``.
        spec: the base spec, at the paper's training settings (the ``paper`` preset).
        tables: which tables / figures use it, e.g. ``("table3",)``.
    """

    name: str
    spec: TrainSpec
    tables: Tuple[str, ...]

    @property
    def method(self) -> str:
        return self.spec.method


def _fmt(x: float) -> str:
    return f"{x:g}"


def run_name(spec: TrainSpec) -> str:
    """The registry name of a spec: ``{dataset}-{activation}-{L}x{width}-{method}[-g{γ}][-r{ρ}]``.

    γ appears for ``curvature`` and ``crt`` (and any other method with γ > 0), ρ for methods with
    a training radius. The width is the first hidden width.
    """
    parts = [spec.dataset, spec.activation, f"{spec.depth}x{spec.widths[1]}", spec.method]
    if spec.method in ("curvature", "crt") or spec.gamma > 0:
        parts.append(f"g{_fmt(spec.gamma)}")
    if spec.rho is not None:
        parts.append(f"r{_fmt(spec.rho)}")
    return "-".join(parts)


def _base_spec(dataset: str, activation: str, depth: int, method: str, gamma: float = 0.0,
               rho: Optional[float] = None) -> TrainSpec:
    """The paper's settings (facts.md): width 1024, Adam 1e-3, batch 64, 30 epochs, seed 1, the
    authors' 30 × 10 CRT attack; PGD training (not specified by the paper): 20 steps of 2.5ρ/20."""
    return TrainSpec(dataset=dataset, widths=(784,) + (1024,) * (depth - 1) + (10,),
                     activation=activation, method=method, gamma=gamma, rho=rho, epochs=30,
                     batch_size=64, lr=1e-3, lr_schedule="constant", seed=1,
                     attack_schedule="authors", pgd_steps=20)


def _table_rows() -> List[Tuple[str, str, str, int, str, float, Optional[float]]]:
    """(table, dataset, activation, depth, method, γ, ρ_train) for every network the paper uses."""
    rows = []
    r = TRAIN_RHO
    # Table 2: certificate / attack success of sigmoid nets, γ = 0 and γ > 0 (no attack).
    for depth, gamma in ((2, 0.03), (3, 0.05), (4, 0.07)):
        rows.append(("table2", "mnist", "sigmoid", depth, "standard", 0.0, None))
        rows.append(("table2", "mnist", "sigmoid", depth, "curvature", gamma, None))
    # Tables 3 (MNIST) and 4 (Fashion-MNIST): CRT against CROWN-IBP and COAP at ρ = 1.58.
    for table, dataset in (("table3", "mnist"), ("table4", "fashion-mnist")):
        for depth, gamma in ((2, 0.01), (3, 0.05), (4, 0.07)):
            rows.append((table, dataset, "softplus", depth, "crt", gamma, r))
            rows.append((table, dataset, "softplus", depth, "crown-ibp", 0.0, r))
            rows.append((table, dataset, "relu", depth, "coap", 0.0, r))
            rows.append((table, dataset, "relu", depth, "crown-ibp", 0.0, r))
    # Table 5: sigmoid nets, standard vs γ = 0.01 vs CRT γ = 0.01 (and CROWN-general vs CRC).
    for depth in (2, 3, 4):
        rows.append(("table5", "mnist", "sigmoid", depth, "standard", 0.0, None))
        rows.append(("table5", "mnist", "sigmoid", depth, "curvature", 0.01, None))
        rows.append(("table5", "mnist", "sigmoid", depth, "crt", 0.01, r))
    # Table 6: 2-layer sigmoid, global vs local curvature bounds.
    rows.append(("table6", "mnist", "sigmoid", 2, "standard", 0.0, None))
    for gamma in (0.0, 0.01, 0.02):
        rows.append(("table6", "mnist", "sigmoid", 2, "crt", gamma, r))
    # Figure 1: K_ub vs K_lb of 2- and 3-layer sigmoid nets for several γ and PGD training.
    for depth in (2, 3):
        rows.append(("figure1", "mnist", "sigmoid", depth, "standard", 0.0, None))
        for gamma in (0.01, 0.03, 0.05):
            rows.append(("figure1", "mnist", "sigmoid", depth, "curvature", gamma, None))
        rows.append(("figure1", "mnist", "sigmoid", depth, "pgd", 0.0, r))
    return rows


_TABLE_ROWS = _table_rows()


def _build_registry() -> Dict[str, Run]:
    runs: Dict[str, Run] = {}
    for table, dataset, activation, depth, method, gamma, rho in _TABLE_ROWS:
        spec = _base_spec(dataset, activation, depth, method, gamma, rho)
        name = run_name(spec)
        if name in runs:
            if table not in runs[name].tables:
                runs[name] = Run(name, spec, runs[name].tables + (table,))
        else:
            runs[name] = Run(name, spec, (table,))
    return runs


#: Every run the tables and Figure 1 need, by name.
RUNS: Dict[str, Run] = _build_registry()


def get_run(name: str) -> Run:
    """The registry entry ``name``; ValueError listing close names if unknown."""
    try:
        return RUNS[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, RUNS, n=5, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else "; see `python -m crc_core.experiments list`"
        raise ValueError(f"unknown run {name!r}{hint}") from None


def runs_for_table(table: str) -> List[Run]:
    """The runs a table (``"table2"`` … ``"table6"``, ``"figure1"``) uses, in registry order."""
    out = [run for run in RUNS.values() if table in run.tables]
    if not out:
        tables = sorted({t for run in RUNS.values() for t in run.tables})
        raise ValueError(f"unknown table {table!r}; expected one of {tables}")
    return out


# ================================================================================================
# Presets
# ================================================================================================

# Training epochs at the cpu preset, by (method, L), chosen to fit about 45 minutes of training
# on 2 shared CPU cores with one torch thread, batch 128 (469 steps per epoch). Measured minutes
# per epoch (softplus / sigmoid, width 1024, with other jobs running): crt 1.3-2.0 (the committed
# 2x1024 run: 24 epochs in 36.7 min wall, 30.4 CPU-min, test evaluation each epoch included) /
# 5.4 / 7.6 for L = 2 / 3 / 4 (the 10-step attack plus the curvature estimate), pgd (10 steps) 1.8 / 3.8,
# standard 0.15 / 0.3 / 0.5, curvature 0.2 / 0.4 / 0.7. Baselines (benchmarks/baselines.py, one
# thread, shared cores, seconds per step of 128): crown-ibp 0.2-0.26 / 0.33-0.56 / 0.5-1.0 for
# L = 2 / 3 / 4 (relu and softplus alike), i.e. about 2 / 3.5 / 6 minutes per epoch; coap
# 0.18-0.31 (exact l2 dual) / 2.5-3.7 / 8 (50 random projections), i.e. about 2 / 25 / 63
# minutes per epoch — COAP's deeper nets get only 2 / 1 epochs here (ε still reaches ρ halfway).
_CPU_EPOCHS: Dict[Tuple[str, int], int] = {
    ("standard", 2): 30, ("standard", 3): 30, ("standard", 4): 30,
    ("curvature", 2): 30, ("curvature", 3): 30, ("curvature", 4): 30,
    ("crt", 2): 24, ("crt", 3): 8, ("crt", 4): 6,
    ("pgd", 2): 20, ("pgd", 3): 12, ("pgd", 4): 8,
    ("crown-ibp", 2): 20, ("crown-ibp", 3): 12, ("crown-ibp", 4): 8,
    ("coap", 2): 20, ("coap", 3): 2, ("coap", 4): 1,
}


@dataclass(frozen=True)
class Preset:
    """How a run's base spec is trained and evaluated at one budget.

    Attributes:
        name: ``"smoke"``, ``"cpu"`` or ``"paper"``.
        description: one line.
        batch_size: training batch size (None: the base spec's).
        epochs: ``{(method, L): epochs}`` (None: the base spec's).
        hidden_width: replaces every hidden width (None: keep 1024); depth and activation kept.
        train_subset: number of training images (None: all 60,000).
        attack_schedule, attack_steps: the CRT training attack (None: the base spec's).
        pgd_train_steps: PGD training steps (None: base spec's).
        lr_schedule: ``"constant"`` or ``"cosine"`` (None: the base spec's, the authors' constant).
        eval_n: size of the evaluation subset (correctly classified test images).
        eval_batch_size: images per evaluation batch.
        pgd_eval_steps: PGD evaluation steps; None means the authors' round(200 ρ).
        pgd_eval_step_size: PGD evaluation step; None means 2.5 ρ / steps.
    """

    name: str
    description: str
    batch_size: Optional[int] = None
    epochs: Optional[Mapping[Tuple[str, int], int]] = None
    hidden_width: Optional[int] = None
    train_subset: Optional[int] = None
    attack_schedule: Optional[str] = None
    attack_steps: Optional[int] = None
    pgd_train_steps: Optional[int] = None
    lr_schedule: Optional[str] = None
    eval_n: int = 150
    eval_batch_size: int = 150
    pgd_eval_steps: Optional[int] = None
    pgd_eval_step_size: Optional[float] = 0.01

    def apply(self, spec: TrainSpec) -> TrainSpec:
        """The spec trained at this preset (validated)."""
        changes: Dict[str, Any] = {}
        if self.batch_size is not None:
            changes["batch_size"] = self.batch_size
        if self.epochs is not None:
            changes["epochs"] = self.epochs[(spec.method, spec.depth)]
        if self.hidden_width is not None:
            changes["widths"] = (spec.widths[0],) + (self.hidden_width,) * (spec.depth - 1) \
                + (spec.widths[-1],)
        if self.train_subset is not None:
            changes["train_subset"] = self.train_subset
        if self.attack_steps is not None:
            changes["attack_steps"] = self.attack_steps
        if self.attack_schedule is not None:
            changes["attack_schedule"] = self.attack_schedule
        if self.pgd_train_steps is not None:
            changes["pgd_steps"] = self.pgd_train_steps
        if self.lr_schedule is not None:
            changes["lr_schedule"] = self.lr_schedule
        return spec.replace(**changes)

    def pgd_eval(self, rho: float) -> Tuple[int, float]:
        """(steps, step size) of the evaluation PGD at radius ρ."""
        steps = self.pgd_eval_steps if self.pgd_eval_steps is not None else max(1, round(200 * rho))
        size = self.pgd_eval_step_size if self.pgd_eval_step_size is not None else 2.5 * rho / steps
        return steps, size

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if self.epochs is not None:
            d["epochs"] = {f"{m}/L{L}": e for (m, L), e in sorted(self.epochs.items())}
        return d


PRESETS: Dict[str, Preset] = {
    "smoke": Preset(
        "smoke", "seconds per run: hidden width 32, 256 training images, 1 epoch, 20 images",
        batch_size=64, epochs={key: 1 for key in _CPU_EPOCHS}, hidden_width=32,
        train_subset=256, attack_schedule="crc", attack_steps=2, pgd_train_steps=2,
        eval_n=20, eval_batch_size=20, pgd_eval_steps=5, pgd_eval_step_size=None),
    "cpu": Preset(
        "cpu", "the paper's architectures on 2 CPU cores: batch 128, about 45 min of training "
               "per run, the 10-step CRC attack (11 gradients), a cosine learning-rate decay (fewer "
               "epochs than the paper's 30), 500 evaluation images",
        batch_size=128, epochs=_CPU_EPOCHS, attack_schedule="crc", attack_steps=10,
        pgd_train_steps=10, lr_schedule="cosine", eval_n=500, eval_batch_size=100),
    "paper": Preset(
        "paper", "the paper's settings (30 epochs, batch 64, the authors' 30x10 CRT attack, "
                 "150 evaluation images); meant for a GPU",
        eval_n=150, eval_batch_size=150),
}


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (a :class:`Preset` passes through)."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}") from None


# ================================================================================================
# Paths
# ================================================================================================

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


# ================================================================================================
# Evaluation
# ================================================================================================

def _wilson(k: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _fraction(flags: Tensor) -> Dict[str, Any]:
    """A binomial proportion: value, count, n, standard error, 95% Wilson interval."""
    flags = flags.reshape(-1).bool()
    n = int(flags.numel())
    k = int(flags.sum())
    p = k / n if n else float("nan")
    lo, hi = _wilson(k, n)
    return {"value": p, "count": k, "n": n,
            "se": math.sqrt(p * (1 - p) / n) if n else float("nan"),
            "ci95": [lo, hi]}


def _times_clean(frac: Mapping[str, Any], clean: Mapping[str, Any]) -> Dict[str, Any]:
    """P(correct and certified) ≈ (subset fraction) × (clean accuracy).

    Standard error by the delta method (both factors' errors); the 95% interval is the subset
    fraction's Wilson interval times the clean accuracy (whose own error, over 10,000 images,
    is much smaller).
    """
    f, c = frac["value"], clean["value"]
    se = math.sqrt((c * frac["se"]) ** 2 + (f * clean["se"]) ** 2)
    lo, hi = frac["ci95"]
    return {"value": f * c, "count": None, "n": frac["n"], "se": se, "ci95": [lo * c, hi * c]}


def _floats(t: Tensor, digits: int = 5) -> List[Optional[float]]:
    return [None if not math.isfinite(v) else round(v, digits) for v in t.detach().double().cpu().tolist()]


def _ints(t: Tensor) -> List[int]:
    return [int(v) for v in t.detach().cpu().tolist()]


def _bools(t: Tensor) -> List[bool]:
    return [bool(v) for v in t.detach().cpu().tolist()]


def _crown_module():
    """crc_core.baselines.crown if it exists (for CROWN certificates), else None."""
    try:
        from .baselines import crown  # type: ignore[attr-defined]
    except ImportError:
        return None
    return crown if hasattr(crown, "certify") else None


def _coap_module():
    """crc_core.baselines.coap if it exists and convex_adversarial is installed, else None."""
    try:
        from .baselines import coap  # type: ignore[attr-defined]
    except ImportError:
        return None
    return coap


#: What :func:`evaluate` computes with CROWN (``crown_mode``): nothing; the certified fractions
#: at each ρ in EVAL_RADII (one bound of all C − 1 margins per ρ gives both runner-up and
#: all-classes); or the runner-up certified radius by search (Table 5b's mean certificate),
#: from which the runner-up fractions follow, plus the all-classes checks at each ρ.
CROWN_MODES = ("none", "at-radii", "radius")


def _default_crown_mode(spec: TrainSpec, tables: Sequence[str] = ()) -> str:
    """``"radius"`` for the smooth nets of Table 5 (CROWN's mean certificate), ``"at-radii"`` for
    the baselines (their certified accuracy), ``"none"`` for the others (certified by CRC)."""
    if "table5" in tables and get_activation(spec.activation).has_curvature:
        return "radius"
    if spec.method in training.BASELINE_METHODS:
        return "at-radii"
    return "none"


def evaluate(model, spec: TrainSpec, preset: str | Preset = "cpu", *, progress: bool = True,
             device: str | torch.device = "cpu", crown_mode: Optional[str] = None) -> Dict[str, Any]:
    """Every metric the tables need, for one trained model.

    On the full test set: the clean accuracy. On the evaluation subset
    (:func:`crc_core.data.evaluation_subset`, ``preset.eval_n`` correctly classified test images,
    seed :data:`EVAL_SEED`), in batches:

    - CRC certificates (:func:`crc_core.duality.certify`): runner-up and all-classes with global
      bounds; runner-up with local bounds for two-layer nets (Table 6). Their radii, the certified
      fraction of the subset at each ρ in :data:`EVAL_RADII` and the mean certificate; the
      paper-style value (``paper_radius`` where ``paper_counted``, else 0); the certificate
      success rate (fraction with a tight certificate, f(x_cert) = 0, Table 2);
    - the CRC attack (:func:`crc_core.duality.attack`, runner-up) at each ρ: attack success =
      fraction with ‖x_attack − x0‖ = ρ (primal = dual, Table 2);
    - PGD-l2 (:func:`crc_core.attacks.pgd_l2`) at each ρ, targeted at the runner-up class (as the
      authors) and untargeted: the fraction of the subset still correctly classified;
    - curvature (smooth nets only): K_ub, the Theorem 4 bound averaged over the distinct (y, t)
      pairs of the subset (t = runner-up), and K_lb (:func:`crc_core.curvature.empirical_curvature`
      on the subset), as in Figure 1;
    - CROWN-general (:mod:`crc_core.baselines.crown`, when present), per ``crown_mode``: the
      certified fractions at each ρ, runner-up and all-classes (bounds slot ``crown``); with
      ``"radius"`` also the runner-up certified radius (``mean_certificate/runner-up/crown``,
      Table 5b) — a sample counts as certified at ρ if either the bound at ρ or its radius says so;
    - COAP (:mod:`crc_core.baselines.coap`) for ``coap`` runs: the dual bound at each ρ,
      runner-up and all-classes (bounds slot ``coap``).

    Every *fraction of the subset* (``certified_fraction/…``, ``robust_fraction_pgd/…``) is
    stored with its count, standard error and 95% Wilson interval; the matching
    ``…_accuracy/…`` is that fraction times the clean accuracy, an estimate of
    P(correct and certified) over the test distribution (delta-method standard error). The
    paper's "certified robust accuracy" is the subset fraction. For ReLU nets the curvature
    quantities (certificates, CRC attack, K) are ``None``.

    Args:
        model: the trained :class:`crc_core.MLP` (moved to ``device``).
        spec: its training spec (for the data set).
        preset: evaluation budget (subset size, batch size, PGD steps).
        progress: a tqdm bar over evaluation batches.
        device: where to evaluate.
        crown_mode: one of :data:`CROWN_MODES`; None (default): ``"at-radii"`` for the baseline
            methods, ``"none"`` otherwise (:func:`run_experiment` asks ``"radius"`` for the smooth
            nets of Table 5).

    Returns:
        ``{"evaluation": settings, "metrics": {...}, "per_image": {...}}`` (JSON-serializable;
        keys documented in results/README.md).
    """
    from tqdm.auto import tqdm

    preset = get_preset(preset)
    if crown_mode is None:
        crown_mode = _default_crown_mode(spec)
    if crown_mode not in CROWN_MODES:
        raise ValueError(f"crown_mode={crown_mode!r} is invalid: expected None or one of {list(CROWN_MODES)}")
    device = torch.device(device)
    model = model.to(device).eval()
    smooth = model.activation.has_curvature
    two_layer = model.num_layers == 2
    Xt, Yt = training.load_data(spec.dataset, "test")
    clean = _fraction(_correct(model, Xt, Yt))
    idx = data_module.evaluation_subset(model, Xt, Yt, preset.eval_n, seed=EVAL_SEED)
    X, Y = Xt[idx].to(device), Yt[idx].to(device)
    radii = EVAL_RADII
    rkey = [_fmt(r) for r in radii]
    crown = _crown_module() if crown_mode != "none" else None
    coap = _coap_module() if spec.method == "coap" else None
    pgd_gen = torch.Generator(device=device).manual_seed(EVAL_SEED)

    per: Dict[str, List[Tensor]] = {}

    def put(key: str, value: Tensor) -> None:
        per.setdefault(key, []).append(value.detach().cpu())

    B = preset.eval_batch_size
    batches = range(0, X.shape[0], B)
    for start in tqdm(batches, desc="evaluate", disable=not progress, dynamic_ncols=True):
        x, y = X[start:start + B], Y[start:start + B]
        with torch.no_grad():
            t = runner_up(model(x), y)
        put("runner_up", t)
        if smooth:
            for targets, tname in (("runner-up", "runner-up"), ("all", "all-classes")):
                cert = duality.certify(model, x, y, targets=targets, bounds="global",
                                       progress=False)
                put(f"radius/{tname}/global", cert.radius)
                put(f"tight/{tname}/global", cert.tight)
                put(f"target/{tname}/global", cert.target)
                put(f"paper_radius/{tname}", torch.where(cert.paper_counted, cert.paper_radius,
                                                         torch.zeros_like(cert.paper_radius)))
                put(f"paper_counted/{tname}", cert.paper_counted)
            if two_layer:
                cert = duality.certify(model, x, y, targets="runner-up", bounds="local",
                                       progress=False)
                put("radius/runner-up/local", cert.radius)
                put("tight/runner-up/local", cert.tight)
            for rho, rk in zip(radii, rkey):
                adv = duality.attack(model, x, y, rho, targets="runner-up")
                put(f"attack_tight/runner-up/{rk}", adv.tight)
        if crown is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            radius = None
            if crown_mode == "radius":
                radius = crown.certify(model, x, y, targets="runner-up").radius
                put("radius/runner-up/crown", radius)
            for rho, rk in zip(radii, rkey):
                with torch.no_grad():
                    lb = crown.margin_lower_bounds(model, x, y, rho)
                ru = lb[rows, t] > 0
                if radius is not None:
                    ru = ru | (radius >= rho)
                put(f"certified/runner-up/crown/{rk}", ru)
                put(f"certified/all-classes/crown/{rk}", lb.scatter(1, y[:, None], math.inf).amin(1) > 0)
        if coap is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            for rho, rk in zip(radii, rkey):
                with torch.no_grad():
                    lb = coap.margin_lower_bounds(model, x, y, rho)
                put(f"certified/runner-up/coap/{rk}", lb[rows, t] > 0)
                put(f"certified/all-classes/coap/{rk}", lb.scatter(1, y[:, None], math.inf).amin(1) > 0)
        for rho, rk in zip(radii, rkey):
            steps, size = preset.pgd_eval(rho)
            for targets in ("runner-up", "untargeted"):
                x_adv = attacks.pgd_l2(model, x, y, rho, steps=steps, step_size=size,
                                       targets=targets, restarts=1, random_start=True,
                                       generator=pgd_gen)
                with torch.no_grad():
                    put(f"pgd_robust/{targets}/{rk}", model(x_adv).argmax(dim=1) == y)
    cat = {k: torch.cat(v) for k, v in per.items()}

    metrics: Dict[str, Any] = {"clean_accuracy": clean}
    for key, values in cat.items():
        kind, _, rest = key.partition("/")
        if kind in ("radius", "paper_radius"):
            # radius/<targets>/<bounds>, paper_radius/<targets> (bounds slot "paper")
            tname, bounds = rest.split("/") if kind == "radius" else (rest, "paper")
            metrics[f"mean_certificate/{tname}/{bounds}"] = float(values.double().mean())
            for rho, rk in zip(radii, rkey):
                if f"certified/{tname}/{bounds}/{rk}" in cat:
                    continue   # a direct check at ρ (which already counts radius ≥ ρ) wins
                frac = _fraction(values >= rho)
                metrics[f"certified_fraction/{tname}/{bounds}/{rk}"] = frac
                metrics[f"certified_accuracy/{tname}/{bounds}/{rk}"] = _times_clean(frac, clean)
        elif kind == "certified":
            # certified/<targets>/<bounds>/<ρ>: a bound checked at ρ directly (CROWN, COAP)
            frac = _fraction(values)
            metrics[f"certified_fraction/{rest}"] = frac
            metrics[f"certified_accuracy/{rest}"] = _times_clean(frac, clean)
        elif kind == "tight":
            metrics[f"certificate_success/{rest}"] = _fraction(values)
        elif kind == "paper_counted":
            metrics[f"paper_counted_fraction/{rest}"] = _fraction(values)
        elif kind == "attack_tight":
            metrics[f"attack_success/{rest}"] = _fraction(values)
        elif kind == "pgd_robust":
            frac = _fraction(values)
            metrics[f"robust_fraction_pgd/{rest}"] = frac
            metrics[f"robust_accuracy_pgd/{rest}"] = _times_clean(frac, clean)

    curvature_pairs = None
    for key in ("K_ub", "K_lb", "M_global", "m_global", "K_pairs"):
        metrics[key] = None
    if smooth:
        pairs = torch.unique(torch.stack([Y.cpu(), cat["runner_up"]], dim=1), dim=0)
        py, pt = pairs[:, 0].to(device), pairs[:, 1].to(device)
        K_ub = curvature.theorem4_bound(model, py, pt).double().cpu()
        m_glob, M_glob = (v.double().cpu() for v in curvature.global_bounds(model, py, pt))
        emp = curvature.empirical_curvature(model, X, Y, cat["runner_up"].to(device))
        K_lb = emp.table.cpu()[pairs[:, 0], pairs[:, 1]]
        metrics["K_ub"] = float(K_ub.mean())
        metrics["K_lb"] = float(emp.mean)
        metrics["M_global"] = float(M_glob.mean())
        metrics["m_global"] = float(m_glob.mean())
        metrics["K_pairs"] = int(pairs.shape[0])
        curvature_pairs = {"y": _ints(pairs[:, 0]), "t": _ints(pairs[:, 1]), "K_ub": _floats(K_ub),
                           "K_lb": _floats(K_lb), "m": _floats(m_glob), "M": _floats(M_glob)}

    per_image: Dict[str, Any] = {"index": _ints(idx), "label": _ints(Y)}
    for key, values in cat.items():
        if values.dtype == torch.bool:
            per_image[key] = _bools(values)
        elif values.is_floating_point():
            per_image[key] = _floats(values)
        else:
            per_image[key] = _ints(values)

    settings = {
        "n_test": int(Xt.shape[0]), "n_subset": int(X.shape[0]), "subset_seed": EVAL_SEED,
        "radii": list(radii), "local_bounds": bool(smooth and two_layer),
        "pgd": {rk: dict(zip(("steps", "step_size"), preset.pgd_eval(r))) for r, rk in zip(radii, rkey)},
        "pgd_restarts": 1, "crown": crown is not None, "crown_mode": crown_mode,
        "coap": coap is not None,
    }
    return {"evaluation": settings, "metrics": metrics, "per_image": per_image,
            "curvature_pairs": curvature_pairs}


@torch.no_grad()
def _correct(model, X: Tensor, Y: Tensor, batch_size: int = 2000) -> Tensor:
    device = next(model.parameters()).device
    out = []
    for start in range(0, X.shape[0], batch_size):
        out.append((model(X[start:start + batch_size].to(device)).argmax(dim=1).cpu()
                    == Y[start:start + batch_size]))
    return torch.cat(out)


# ================================================================================================
# Running and storing
# ================================================================================================

def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _code_state() -> Dict[str, Any]:
    """The git commit and dirty flag of the code, read when a run starts (the code then loaded)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def _provenance(preset: Preset, device: torch.device, train_seconds: float,
                eval_seconds: float, code_state: Dict[str, Any]) -> Dict[str, Any]:
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    else:
        dev += f" ({platform.processor() or platform.machine()})"
    return {
        **code_state,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "device": dev,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": torch.get_num_threads(),
        "preset": preset.name,
        "preset_settings": preset.to_dict(),
    }


def run_experiment(name: str, preset: str | Preset = "cpu", force: bool = False, *,
                   results_dir: Optional[os.PathLike] = None, runs_dir: Optional[os.PathLike] = None,
                   device: str | torch.device = "cpu", progress: bool = True,
                   until_epoch: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """Train run ``name`` at ``preset`` (resumable) and evaluate it once into the results store.

    If ``results/<preset>/<name>.json`` exists and ``force`` is False, it is read and returned:
    nothing is trained or evaluated. Otherwise the run is trained under
    ``runs/<preset>/<name>/`` — resuming a partial run, or from scratch if ``force`` — the
    paper's checkpoint (best clean test accuracy) is evaluated with :func:`evaluate`, and the
    JSON is written atomically.

    Args:
        name: a key of :data:`RUNS`.
        preset: ``"smoke"``, ``"cpu"`` or ``"paper"``.
        force: retrain from scratch and re-evaluate even if results exist.
        results_dir, runs_dir: roots (default :func:`results_root`, :func:`runs_root`).
        device: where to train and evaluate.
        progress: tqdm bars.
        until_epoch: train only up to this epoch (to split a run over sessions); if training is
            then unfinished, nothing is evaluated and None is returned.

    Returns:
        The results dict (as stored), or None if training stopped at ``until_epoch``.

    Raises:
        ValueError: unknown run or preset.
        NotImplementedError: the run's method is a baseline not implemented yet.
    """
    code_state = _code_state()
    run = get_run(name)
    preset = get_preset(preset)
    out = results_path(name, preset, results_dir)
    if out.is_file() and not force:
        return load_result(out)
    spec = preset.apply(run.spec)
    run_dir = runs_root(runs_dir) / preset.name / name
    device = torch.device(device)
    model = training.train(spec, run_dir, resume=not force, progress=progress, device=device,
                           until_epoch=until_epoch, select="best")
    history = training.read_history(run_dir)
    if len(history) < spec.epochs:
        return None
    best_epoch = max(history, key=lambda row: (row["test_accuracy"], -row["epoch"]))["epoch"]
    t0 = time.perf_counter()
    evaluation = evaluate(model, spec, preset, progress=progress, device=device,
                          crown_mode=_default_crown_mode(spec, run.tables))
    eval_seconds = time.perf_counter() - t0
    train_seconds = sum(row["seconds"] for row in history)
    result = {
        "schema": RESULTS_SCHEMA,
        "name": name,
        "preset": preset.name,
        "tables": list(run.tables),
        "spec": spec.to_dict(),
        "selected_epoch": best_epoch,
        **evaluation,
        "history": history,
        "provenance": _provenance(preset, device, train_seconds, eval_seconds, code_state),
    }
    training._atomic_json(result, out)
    return result


def load_result(path: os.PathLike) -> Dict[str, Any]:
    """Read one results JSON."""
    return json.loads(Path(path).read_text())


def load_results(preset: str | Preset = "cpu", results_dir: Optional[os.PathLike] = None):
    """The results store of a preset as a pandas DataFrame, one row per run (index: name).

    Columns: ``tables`` (comma-separated), the spec's ``dataset``, ``activation``, ``depth``,
    ``width``, ``method``, ``gamma``, ``rho``, ``epochs``, ``selected_epoch``; every metric: a
    number, or for a proportion its ``value`` under the metric's name plus ``<name>:se``,
    ``<name>:lo``, ``<name>:hi`` (95% interval) and ``<name>:n``; and ``train_seconds``,
    ``eval_seconds``, ``git_commit``, ``date``.
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
            "selected_epoch": res.get("selected_epoch"),
        }
        for key, value in res["metrics"].items():
            if isinstance(value, Mapping):
                row[key] = value["value"]
                row[f"{key}:se"] = value["se"]
                row[f"{key}:lo"], row[f"{key}:hi"] = value["ci95"]
                row[f"{key}:n"] = value["n"]
            else:
                row[key] = value
        prov = res["provenance"]
        for key in ("train_seconds", "eval_seconds", "git_commit", "date"):
            row[key] = prov.get(key)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.set_index("name") if len(frame) else frame


# ================================================================================================
# The paper's numbers (reference only)
# ================================================================================================

def _paper_reference() -> List[Dict[str, Any]]:
    """The paper's reported numbers, transcribed from its text (Tables 2-6).

    Each record: ``table``, ``run`` (our registry name of the same network and training),
    ``quantity`` (what the paper reports), ``metric`` (our metric key closest to it) and
    ``value`` (a fraction for percentages). The paper's certified accuracy is the fraction of 150
    correctly classified images certified at ρ with the runner-up target; its certificates use
    the authors' formula and residual rule — compare with ``certified_fraction/runner-up/paper/ρ``
    as well as the rigorous ``…/global/ρ``.
    """
    recs: List[Dict[str, Any]] = []

    def add(table, run_spec, quantity, metric, value):
        recs.append({"table": table, "run": run_name(run_spec), "quantity": quantity,
                     "metric": metric, "value": value})

    r = TRAIN_RHO
    # Table 2 (ρ = 0.5): accuracy, attack success, certificate success.
    t2 = {(2, 0.0): (98.77, 5.05, 2.24), (2, 0.03): (98.30, 100.0, 44.17),
          (3, 0.0): (98.52, 0.0, 0.12), (3, 0.05): (97.60, 100.0, 22.59),
          (4, 0.0): (98.22, 0.0, 0.01), (4, 0.07): (95.24, 100.0, 19.53)}
    for (depth, gamma), (acc, att, cert) in t2.items():
        spec = _base_spec("mnist", "sigmoid", depth, "standard" if gamma == 0 else "curvature", gamma)
        add("table2", spec, "accuracy", "clean_accuracy", acc / 100)
        add("table2", spec, "attack success (ρ = 0.5)", "attack_success/runner-up/0.5", att / 100)
        add("table2", spec, "certificate success", "certificate_success/runner-up/global", cert / 100)
    # Tables 3 (MNIST) and 4 (Fashion-MNIST), ρ = 1.58: standard and certified accuracy.
    t34 = {
        "table3": {(2, "softplus", "crt", 0.01): (98.68, 69.79), (2, "softplus", "crown-ibp", 0): (88.48, 42.36),
                   (2, "relu", "coap", 0): (89.33, 44.29), (2, "relu", "crown-ibp", 0): (89.49, 44.96),
                   (3, "softplus", "crt", 0.05): (97.43, 57.78), (3, "softplus", "crown-ibp", 0): (86.58, 42.14),
                   (3, "relu", "coap", 0): (89.12, 44.21), (3, "relu", "crown-ibp", 0): (87.77, 44.74),
                   (4, "softplus", "crt", 0.07): (95.60, 53.19), (4, "softplus", "crown-ibp", 0): (82.74, 41.34),
                   (4, "relu", "coap", 0): (90.17, 44.66), (4, "relu", "crown-ibp", 0): (84.4, 43.83)},
        "table4": {(2, "softplus", "crt", 0.01): (80.31, 54.39), (2, "softplus", "crown-ibp", 0): (69.23, 47.19),
                   (2, "relu", "coap", 0): (74.1, 46.3), (2, "relu", "crown-ibp", 0): (70.73, 48.61),
                   (3, "softplus", "crt", 0.05): (78.39, 53.4), (3, "softplus", "crown-ibp", 0): (68.72, 46.52),
                   (3, "relu", "coap", 0): (73.9, 46.3), (3, "relu", "crown-ibp", 0): (70.79, 48.69),
                   (4, "softplus", "crt", 0.07): (75.61, 49.6), (4, "softplus", "crown-ibp", 0): (68.31, 46.21),
                   (4, "relu", "coap", 0): (73.6, 45.1), (4, "relu", "crown-ibp", 0): (70.21, 48.08)},
    }
    for table, entries in t34.items():
        dataset = "mnist" if table == "table3" else "fashion-mnist"
        for (depth, act, method, gamma), (acc, cert) in entries.items():
            spec = _base_spec(dataset, act, depth, method, gamma, r)
            add(table, spec, "standard accuracy", "clean_accuracy", acc / 100)
            metric = ("certified_fraction/runner-up/global/1.58" if method == "crt"
                      else "certified_fraction/runner-up/crown/1.58")
            add(table, spec, "certified robust accuracy (ρ = 1.58)", metric, cert / 100)
    # Table 5 (a) certified accuracy (ρ = 0.5, see Table 6's text) and (b) mean certificates.
    t5 = {(2, "standard", 0.0): (98.37, 54.17, 0.28395, 0.48500),
          (2, "curvature", 0.01): (98.08, 83.53, 0.32548, 0.84719),
          (2, "crt", 0.01): (98.57, 95.59, 0.43061, 1.54673),
          (3, "standard", 0.0): (98.37, 0.00, 0.24644, 0.06874),
          (3, "curvature", 0.01): (97.71, 88.33, 0.39799, 1.07842),
          (3, "crt", 0.01): (97.23, 94.99, 0.39603, 1.24100),
          (4, "standard", 0.0): (98.39, 0.00, 0.19501, 0.00454),
          (4, "curvature", 0.01): (97.41, 89.61, 0.40620, 1.05323),
          (4, "crt", 0.01): (97.83, 93.41, 0.40327, 1.06208)}
    for (depth, method, gamma), (acc, cert, crown_mean, crc_mean) in t5.items():
        spec = _base_spec("mnist", "sigmoid", depth, method, gamma, r if method == "crt" else None)
        add("table5", spec, "standard accuracy", "clean_accuracy", acc / 100)
        add("table5", spec, "certified robust accuracy (ρ = 0.5)",
            "certified_fraction/runner-up/global/0.5", cert / 100)
        add("table5", spec, "mean certificate, CROWN-general", "mean_certificate/runner-up/crown", crown_mean)
        add("table5", spec, "mean certificate, CRC", "mean_certificate/runner-up/global", crc_mean)
    # Table 6: mean CRC with global and local bounds, 2-layer sigmoid; certified accuracy at
    # ρ = 0.5 from its text.
    t6 = {("standard", 0.0): (0.5013, 0.5847), ("crt", 0.0): (1.0011, 1.1741),
          ("crt", 0.01): (1.5705, 1.6047), ("crt", 0.02): (1.6720, 1.6831)}
    for (method, gamma), (glob, loc) in t6.items():
        spec = _base_spec("mnist", "sigmoid", 2, method, gamma, r if method == "crt" else None)
        add("table6", spec, "mean CRC, global bounds", "mean_certificate/runner-up/global", glob)
        add("table6", spec, "mean CRC, local bounds", "mean_certificate/runner-up/local", loc)
    for (method, gamma), (glob, loc) in {("crt", 0.0): (95.04, 95.31), ("standard", 0.0): (54.17, 58.06)}.items():
        spec = _base_spec("mnist", "sigmoid", 2, method, gamma, r if method == "crt" else None)
        add("table6", spec, "certified accuracy (ρ = 0.5), global bounds",
            "certified_fraction/runner-up/global/0.5", glob / 100)
        add("table6", spec, "certified accuracy (ρ = 0.5), local bounds",
            "certified_fraction/runner-up/local/0.5", loc / 100)
    return recs


#: The paper's numbers (Tables 2-6, transcribed from its text) — a reference column only, never
#: an input to any computation. See :func:`paper_reference`.
PAPER_REFERENCE: Tuple[Dict[str, Any], ...] = tuple(_paper_reference())


def paper_reference(table: Optional[str] = None):
    """:data:`PAPER_REFERENCE` as a DataFrame (columns table, run, quantity, metric, value)."""
    import pandas as pd

    frame = pd.DataFrame(list(PAPER_REFERENCE))
    return frame if table is None else frame[frame["table"] == table].reset_index(drop=True)


# ================================================================================================
# Command line
# ================================================================================================

def _status(run: Run, preset: Preset, results_dir: Optional[os.PathLike]) -> str:
    if results_path(run.name, preset, results_dir).is_file():
        return "stored"
    if not training.is_implemented(run.method):
        return "not implemented yet"
    return "missing"


def list_runs(preset: Optional[str] = None, results_dir: Optional[os.PathLike] = None) -> str:
    """The text ``python -m crc_core.experiments list`` prints: every run, by method."""
    presets = [get_preset(preset)] if preset else list(PRESETS.values())
    order = {m: i for i, m in enumerate(training.METHODS)}
    runs = sorted(RUNS.values(), key=lambda run: (order[run.method], run.name))
    width = max(len(run.name) for run in runs)
    twidth = max(len(",".join(run.tables)) for run in runs)
    cols = [p.name for p in presets]
    head = f"{'method':<10} {'run':<{width}}  {'tables':<{twidth}} " + " ".join(f"{c:<20}" for c in cols)
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for run in runs:
        status = " ".join(f"{_status(run, p, results_dir):<20}" for p in presets)
        lines.append(f"{run.method:<10} {run.name:<{width}}  {','.join(run.tables):<{twidth}} {status}".rstrip())
    counts = []
    for p in presets:
        stored = sum(results_path(run.name, p, results_dir).is_file() for run in runs)
        counts.append(f"{p.name}: {stored}/{len(runs)} stored in {results_root(results_dir) / p.name}")
    lines.append("")
    lines.extend(counts)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m crc_core.experiments {list,run} …``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m crc_core.experiments",
                                     description="The runs the paper's tables need: list, train, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="every run, by method, with the tables using it and its status")
    p_list.add_argument("--preset", choices=list(PRESETS), default=None,
                        help="show one preset's status (default: all)")
    p_run = sub.add_parser("run", help="train (resumable) and evaluate one run into the results store")
    p_run.add_argument("name", help="a run name (see `list`)")
    p_run.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p_run.add_argument("--force", action="store_true", help="retrain from scratch and re-evaluate")
    p_run.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p_run.add_argument("--until-epoch", type=int, default=None,
                       help="stop training after this epoch (resume later with the same command)")
    p_run.add_argument("--threads", type=int, default=None,
                       help="torch.set_num_threads (default: torch's choice); 1 is much faster "
                            "when other processes share the cores")
    p_run.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.command == "list":
        print(list_runs(args.preset))
        return 0
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 1
        torch.set_num_threads(args.threads)
    try:
        result = run_experiment(args.name, args.preset, force=args.force, device=args.device,
                                progress=not args.no_progress, until_epoch=args.until_epoch)
    except (ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is None:
        print(f"{args.name}: stopped after epoch {args.until_epoch}; run the same command again "
              "(without --until-epoch) to continue")
        return 0
    m = result["metrics"]
    path = results_path(args.name, args.preset)
    print(f"{args.name} ({args.preset}): clean accuracy {m['clean_accuracy']['value']:.4f}; "
          f"results in {path}")
    for rk in (_fmt(r) for r in EVAL_RADII):
        for bounds in ("global", "crown", "coap"):
            key = f"certified_fraction/runner-up/{bounds}/{rk}"
            if key in m:
                print(f"  certified (runner-up, {bounds}) at {rk}: {m[key]['value']:.4f} of the subset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
