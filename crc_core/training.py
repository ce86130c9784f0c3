"""Training: standard, γ-regularized, CRT and PGD adversarial training (Section 6 of the paper).

One entry point, :func:`train`, driven by a serializable :class:`TrainSpec`. The per-sample
losses, with t the runner-up class at the clean input (the largest logit other than y):

.. math::
    \\text{standard:}\\ \\ell(z(x^{(0)}), y), \\qquad
    \\text{curvature:}\\ \\ell(z(x^{(0)}), y) + γ K(W, y, t),

.. math::
    \\text{crt:}\\ \\ell(z(x^{(attack)}), y) + γ K(W, y, t), \\qquad
    \\text{pgd:}\\ \\ell(z(x^{(pgd)}), y)\\ (+\\, γ K \\text{ if } γ > 0),

equation (7) of the paper, with ℓ the cross-entropy, K the Theorem 4 curvature bound
(:func:`crc_core.curvature.curvature_penalty`, power-iteration spectral norms advanced by one step
per call), x^(attack) the solution of the CRT attack of Definition 2
(:func:`crc_core.duality.attack`, detached: no gradient flows through the attack) and x^(pgd) a
PGD-l2 point (:func:`crc_core.attacks.pgd_l2`). The mean over the batch is minimized with Adam.

A run lives in a directory (``runs/…``, git-ignored)::

    checkpoint.pt     everything needed to resume: model, optimizer, completed epochs,
                      the data-order generator's state, the global torch RNG state, the
                      curvature estimate's warm-start vectors, history
    model-best.pt     the paper's checkpoint: best clean test accuracy so far (MLP.save format)
    model-last.pt     the weights after the last completed epoch (MLP.save format)
    spec.json         the TrainSpec, readable
    history.json      one row per epoch: loss, train accuracy, mean K, test accuracy, seconds, lr

Every file is written atomically (temporary file, then ``os.replace``), after each epoch. An
interrupted run resumes at the last completed epoch and ends with exactly the weights an
uninterrupted run reaches (same spec, same device; CPU tested).

Example:
    >>> spec = TrainSpec(widths=(784, 32, 10), method="curvature", gamma=0.01, epochs=1,
    ...                  train_subset=512)
    >>> model = train(spec, "runs/example", progress=False)     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from . import attacks, baselines, curvature, duality
from . import data as data_module
from .activations import ACTIVATIONS, NoCurvatureError, get_activation
from .models import MLP

Tensor = torch.Tensor

__all__ = [
    "METHODS", "TRAINABLE_METHODS", "BASELINE_METHODS", "LR_SCHEDULES", "PGD_TARGETS",
    "ATTACK_SCHEDULES",
    "TrainSpec", "train", "load_model", "read_history", "is_trained", "is_implemented",
    "training_progress",
    "accuracy", "crt_attack", "CHECKPOINT", "BEST", "LAST",
]

#: Methods implemented here.
TRAINABLE_METHODS: Tuple[str, ...] = ("standard", "curvature", "crt", "pgd")
#: Methods of the baselines; their losses are :data:`crc_core.baselines.TRAINING_LOSSES`
#: (COAP's only where the ``convex_adversarial`` package is installed, see :func:`is_implemented`).
BASELINE_METHODS: Tuple[str, ...] = ("crown-ibp", "coap")
METHODS: Tuple[str, ...] = TRAINABLE_METHODS + BASELINE_METHODS
LR_SCHEDULES: Tuple[str, ...] = ("constant", "cosine")
PGD_TARGETS: Tuple[str, ...] = ("untargeted", "runner-up")
ATTACK_SCHEDULES: Tuple[str, ...] = ("crc", "authors")
#: Default of TrainSpec.crown_ibp_final_beta (the value every non-CROWN-IBP spec keeps).
_DEFAULT_FINAL_BETA = 1.0
#: Methods that need a training radius ρ > 0.
_NEEDS_RHO = ("crt", "pgd", "crown-ibp", "coap")

CHECKPOINT = "checkpoint.pt"
BEST = "model-best.pt"
LAST = "model-last.pt"
_CHECKPOINT_FORMAT = "crc-train-checkpoint-1"

# ------------------------------------------------------------------------------------------------
# The spec
# ------------------------------------------------------------------------------------------------

def _field_error(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"TrainSpec.{field}={value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a training run (JSON-serializable, validated on creation).

    Attributes:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        widths: ``(784, N_1, …, N_{L-1}, 10)``, at least three sizes (L ≥ 2 layers); the paper's
            ``L×[1024]`` is ``(784,) + (1024,) * (L - 1) + (10,)``.
        activation: ``"softplus"``, ``"sigmoid"``, ``"tanh"`` or ``"relu"`` (ReLU only with
            ``standard`` or ``pgd`` at γ = 0, and the baselines).
        method: ``"standard"``, ``"curvature"`` (γ-regularized, equation (7) at x^(0)),
            ``"crt"`` (equation (7) at the Definition 2 attack point), ``"pgd"`` (cross-entropy
            at a PGD-l2 point); ``"crown-ibp"`` and ``"coap"``: the baselines, whose losses come
            from :data:`crc_core.baselines.TRAINING_LOSSES`.
        gamma: γ ≥ 0, the curvature coefficient (must be 0 for ``standard``).
        rho: the training radius ρ > 0 (l2) for ``crt``, ``pgd`` and the baselines; ``None`` for
            the others.
        epochs: number of epochs, ≥ 1.
        batch_size: ≥ 1.
        lr: Adam's learning rate, > 0.
        lr_schedule: ``"constant"`` (the authors') or ``"cosine"`` (per epoch, from lr to 0).
        seed: seeds the initialization, the data order and the attacks' randomness; ≥ 0.
        attack_schedule: the CRT attack's solver: ``"crc"`` (:func:`crc_core.duality.attack`,
            ``attack_steps`` model steps, ``attack_steps + 1`` gradients per batch) or
            ``"authors"`` (:func:`crc_core.duality.attack_reference`, the authors' 30 bisection ×
            10 inner steps, 301 gradients per batch). Both use the training-time curvature
            estimate (the run's :class:`~crc_core.curvature.CurvatureEstimator`).
        attack_steps: CRT attack, model steps of the ``"crc"`` schedule (≥ 1).
        pgd_steps: PGD training, steps per batch (≥ 1).
        pgd_step_size: PGD training step (l2 length) > 0; ``None`` means 2.5 ρ / pgd_steps.
        pgd_targets: PGD training attack, ``"untargeted"`` or ``"runner-up"``.
        train_subset: train on this many training images (a seeded random subset; for smoke
            tests), or ``None`` for all 60,000.
        crown_ibp_final_beta: ``crown-ibp`` only: the final β of the CROWN-IBP schedule (β moves
            from 1 to it while ε ramps up; the paper keeps the best of final β in [0.8, 3];
            :func:`crc_core.baselines.crown.crown_ibp_schedule`). Finite, ≥ 0; must stay at its
            default 1.0 for the other methods, and :meth:`to_dict` writes it only for
            ``crown-ibp`` (so the specs, checkpoints and results of the other methods are
            unchanged by its introduction).

    Raises:
        ValueError: naming the field and the allowed values, for any bad value.
        NoCurvatureError: (a ValueError) for ReLU with a method or γ that needs curvature.
    """

    dataset: str = "mnist"
    widths: Tuple[int, ...] = (784, 1024, 10)
    activation: str = "softplus"
    method: str = "standard"
    gamma: float = 0.0
    rho: Optional[float] = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"
    seed: int = 1
    attack_schedule: str = "crc"
    attack_steps: int = 10
    pgd_steps: int = 20
    pgd_step_size: Optional[float] = None
    pgd_targets: str = "untargeted"
    train_subset: Optional[int] = None
    crown_ibp_final_beta: float = 1.0

    def __post_init__(self):
        if isinstance(self.widths, (str, bytes)) or not hasattr(self.widths, "__iter__"):
            raise _field_error("widths", self.widths, "a sequence of positive integers")
        try:
            widths = tuple(int(w) for w in self.widths)
        except (TypeError, ValueError):
            raise _field_error("widths", self.widths, "a sequence of positive integers") from None
        object.__setattr__(self, "widths", widths)
        for name in ("gamma", "lr", "crown_ibp_final_beta"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        for name in ("rho", "pgd_step_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        for name in ("epochs", "batch_size", "seed", "attack_steps", "pgd_steps", "train_subset"):
            value = getattr(self, name)
            if value is None and name == "train_subset":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    object.__setattr__(self, name, int(value))
                else:
                    raise _field_error(name, value, "an integer")
        self.validate()

    # --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field (called on creation); see the class docstring for the ranges."""
        if self.dataset not in data_module.DATASETS:
            raise _field_error("dataset", self.dataset, f"one of {list(data_module.DATASETS)}")
        w = self.widths
        if len(w) < 3 or any(v < 1 for v in w) or w[0] != 784 or w[-1] != 10:
            raise _field_error("widths", list(w), "(784, N_1, ..., N_{L-1}, 10) with at least one "
                               "hidden width, every width >= 1")
        if self.activation not in ACTIVATIONS:
            raise _field_error("activation", self.activation, f"one of {sorted(ACTIVATIONS)}")
        if self.method not in METHODS:
            raise _field_error("method", self.method, f"one of {list(METHODS)}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise _field_error("gamma", self.gamma, "a finite number >= 0")
        if self.method == "standard" and self.gamma != 0:
            raise _field_error("gamma", self.gamma, "0 for method 'standard' (use method "
                               "'curvature' for a γ-regularized run)")
        if self.method in _NEEDS_RHO:
            if self.rho is None or not (math.isfinite(self.rho) and self.rho > 0):
                raise _field_error("rho", self.rho, f"a finite number > 0 for method {self.method!r}")
        elif self.rho is not None:
            raise _field_error("rho", self.rho, f"None for method {self.method!r} (it has no "
                               "training radius)")
        if self.epochs < 1:
            raise _field_error("epochs", self.epochs, "an integer >= 1")
        if self.batch_size < 1:
            raise _field_error("batch_size", self.batch_size, "an integer >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise _field_error("lr", self.lr, "a finite number > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _field_error("lr_schedule", self.lr_schedule, f"one of {list(LR_SCHEDULES)}")
        if self.seed < 0:
            raise _field_error("seed", self.seed, "an integer >= 0")
        if self.attack_schedule not in ATTACK_SCHEDULES:
            raise _field_error("attack_schedule", self.attack_schedule,
                               f"one of {list(ATTACK_SCHEDULES)}")
        for name in ("attack_steps", "pgd_steps"):
            if getattr(self, name) < 1:
                raise _field_error(name, getattr(self, name), "an integer >= 1")
        if self.pgd_step_size is not None and not (math.isfinite(self.pgd_step_size)
                                                   and self.pgd_step_size > 0):
            raise _field_error("pgd_step_size", self.pgd_step_size, "None or a finite number > 0")
        if self.pgd_targets not in PGD_TARGETS:
            raise _field_error("pgd_targets", self.pgd_targets, f"one of {list(PGD_TARGETS)}")
        if self.train_subset is not None and not (1 <= self.train_subset <= 60000):
            raise _field_error("train_subset", self.train_subset, "None or an integer in [1, 60000]")
        beta = self.crown_ibp_final_beta
        if not (math.isfinite(beta) and beta >= 0):
            raise _field_error("crown_ibp_final_beta", beta, "a finite number >= 0")
        if self.method != "crown-ibp" and beta != _DEFAULT_FINAL_BETA:
            raise _field_error("crown_ibp_final_beta", beta,
                               f"{_DEFAULT_FINAL_BETA} (the default) for method {self.method!r}: it "
                               "applies to 'crown-ibp' only")
        act = get_activation(self.activation)
        if not act.has_curvature:
            if self.method in ("curvature", "crt"):
                raise NoCurvatureError(
                    f"TrainSpec.activation={self.activation!r} is invalid for method "
                    f"{self.method!r}: it needs the curvature bound, which exists only for smooth "
                    "activations (softplus, sigmoid, tanh); ReLU nets are trained with 'standard', "
                    "'pgd', 'crown-ibp' or 'coap'")
            if self.gamma > 0:
                raise NoCurvatureError(
                    f"TrainSpec.gamma={self.gamma!r} needs a smooth activation, got "
                    f"activation={self.activation!r}: the curvature bound K does not exist for ReLU")

    # --------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """L, the number of linear layers."""
        return len(self.widths) - 1

    @property
    def effective_pgd_step_size(self) -> Optional[float]:
        """pgd_step_size, or 2.5 ρ / pgd_steps when it is None (Madry et al.'s rule)."""
        if self.pgd_step_size is not None:
            return self.pgd_step_size
        return None if self.rho is None else 2.5 * self.rho / self.pgd_steps

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serializable dict (``widths`` as a list); inverse of :meth:`from_dict`.

        ``crown_ibp_final_beta`` is written for ``crown-ibp`` runs only.
        """
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        if self.method != "crown-ibp":
            del d["crown_ibp_final_beta"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainSpec":
        """Rebuild a spec; missing fields take their defaults, unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainSpec field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **changes) -> "TrainSpec":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise _field_error(name, value, "a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _field_error(name, value, "a number") from None


def is_implemented(method: str) -> bool:
    """Whether :func:`train` can train ``method`` here (False for ``"coap"`` without the
    ``convex_adversarial`` package: :data:`crc_core.baselines.TRAINING_LOSSES` lacks it)."""
    if method in TRAINABLE_METHODS:
        return True
    if method in BASELINE_METHODS:
        return method in baselines.TRAINING_LOSSES
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def training_progress(spec: "TrainSpec", epoch: int, step: int, steps_per_epoch: int) -> float:
    """Fraction of the training steps completed before this step, in [0, 1).

    .. math::
        p = \\frac{e\\,S + s}{E\\,S}

    with e the 0-based epoch, s the 0-based step within it, S the steps per epoch and E =
    ``spec.epochs``. The baselines' schedules (:mod:`crc_core.baselines.schedules`) are
    functions of p.

    Args:
        spec: the run's :class:`TrainSpec` (``epochs``).
        epoch: 0-based epoch; step: 0-based step within the epoch.
        steps_per_epoch: S = ⌈n / batch size⌉ for n training examples.

    Example:
        >>> training_progress(spec, 1, 0, 10)          # spec.epochs = 2: half-way
        0.5
    """
    return (epoch * steps_per_epoch + step) / (spec.epochs * steps_per_epoch)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def accuracy(model: MLP, X: Tensor, Y: Tensor, batch_size: int = 2000) -> float:
    """Clean accuracy of ``model`` on (X (N, D), Y (N,)), on the model's device."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, X.shape[0], batch_size):
        x = X[start:start + batch_size].to(device)
        y = Y[start:start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, X.shape[0])


def _atomic_write_bytes_via(path: Path, writer) -> None:
    """Call ``writer(tmp_path)`` then ``os.replace(tmp_path, path)``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_torch_save(obj, path: Path) -> None:
    _atomic_write_bytes_via(path, lambda p: torch.save(obj, p))


def _atomic_json(obj, path: Path) -> None:
    def write(p: Path):
        p.write_text(json.dumps(obj, indent=2) + "\n")
    _atomic_write_bytes_via(path, write)


def _train_data(spec: TrainSpec) -> Tuple[Tensor, Tensor]:
    X, Y = data_module.load(spec.dataset, "train")
    if spec.train_subset is not None and spec.train_subset < X.shape[0]:
        g = torch.Generator().manual_seed(spec.seed)
        idx = torch.randperm(X.shape[0], generator=g)[:spec.train_subset]
        X, Y = X[idx], Y[idx]
    return X, Y


def _lr_at(spec: TrainSpec, epoch: int) -> float:
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))
    return spec.lr


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------

def crt_attack(model: MLP, x: Tensor, y: Tensor, t: Tensor, spec: TrainSpec,
               estimator: Optional[curvature.CurvatureEstimator] = None):
    """The CRT attack of Definition 2 for a training batch, with the spec's schedule.

    The curvature bounds are the training-time estimate of ``estimator`` (warm-started Lanczos,
    an estimate from below, not a bound); the attack only needs them to set its steps.

    Args:
        model: the network being trained.
        x: (B, D) clean inputs; y: (B,) labels; t: (B,) targets (the runner-up classes).
        spec: a ``crt`` spec (``rho``, ``attack_schedule``, ``attack_steps``).
        estimator: the run's :class:`~crc_core.curvature.CurvatureEstimator` (its warm start
            advances); None uses a fresh one (a cold start).

    Returns:
        :class:`crc_core.duality.AttackResult`; its ``x`` (B, D) is the attack point.
    """
    if estimator is None:
        estimator = curvature.CurvatureEstimator()
    m, M = estimator.bounds(model, y, t)
    if spec.attack_schedule == "crc":
        return duality.attack(model, x, y, spec.rho, targets=t, bounds=(m, M),
                              steps=spec.attack_steps)
    p = next(model.parameters())
    return duality.attack_reference(duality.margin_function(model, y, t), x.detach().to(p.dtype),
                                    m.to(p.dtype), M.to(p.dtype), spec.rho)


def _loss(model: MLP, x: Tensor, y: Tensor, spec: TrainSpec, progress: float,
          estimator: Optional[curvature.CurvatureEstimator] = None):
    """(loss scalar, clean logits (B, C) detached, mean K or None) for one batch; ``estimator``:
    the run's curvature estimate for the CRT attack."""
    method = spec.method
    if method in BASELINE_METHODS:
        loss, logits0 = baselines.TRAINING_LOSSES[method](model, x, y, spec, progress)
        return loss, logits0.detach(), None
    need_clean_grad = method in ("standard", "curvature")
    if need_clean_grad:
        logits0 = model(x)
    else:
        with torch.no_grad():
            logits0 = model(x)
    t = attacks.runner_up(logits0, y)
    if method in ("standard", "curvature"):
        loss = F.cross_entropy(logits0, y)
    elif method == "crt":
        x_attack = crt_attack(model, x, y, t, spec, estimator).x.detach()
        loss = F.cross_entropy(model(x_attack), y)
    else:  # pgd
        x_adv = attacks.pgd_l2(model, x, y, spec.rho, steps=spec.pgd_steps,
                               step_size=spec.effective_pgd_step_size, targets=spec.pgd_targets,
                               restarts=1, random_start=True)
        loss = F.cross_entropy(model(x_adv.detach()), y)
    K_mean = None
    if spec.gamma > 0:
        K = curvature.curvature_penalty(model, y, t)
        K_mean = K.mean()
        loss = loss + spec.gamma * K_mean
        K_mean = float(K_mean.detach())
    return loss, logits0.detach(), K_mean


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_model(model: MLP, path: Path) -> None:
    _atomic_write_bytes_via(path, model.save)


def read_history(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """The per-epoch history of a run (``[]`` if it has no checkpoint yet)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return []
    return torch.load(path, map_location="cpu", weights_only=True)["history"]


def is_trained(spec: TrainSpec, run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``spec``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["spec"] == spec.to_dict() and ckpt["epoch"] >= spec.epochs


def load_model(run_dir: str | os.PathLike, which: str = "best",
               device: str | torch.device = "cpu") -> MLP:
    """Load ``model-best.pt`` (the paper's checkpoint) or ``model-last.pt`` from a run directory."""
    if which not in ("best", "last"):
        raise ValueError(f"which={which!r} is invalid: expected 'best' or 'last'")
    path = Path(run_dir) / (BEST if which == "best" else LAST)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the run first")
    return MLP.load(path, map_location=device).to(device)


# ------------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------------

def train(spec: TrainSpec, run_dir: str | os.PathLike, *, resume: bool = True,
          progress: bool = True, device: str | torch.device = "cpu",
          until_epoch: Optional[int] = None, select: str = "best") -> MLP:
    """Train a network as ``spec`` says, checkpointing into ``run_dir`` after every epoch.

    The initialization is drawn after ``torch.manual_seed(spec.seed)``; the data order comes from
    a ``torch.Generator`` seeded with ``spec.seed``; the attacks draw from the global torch RNG.
    All three states are saved with each checkpoint and restored on resume, so an interrupted
    run ends with the same weights as an uninterrupted one (same device; on CPU bit for bit).
    The test set's clean accuracy is evaluated after each epoch; the best epoch's weights are
    kept in ``model-best.pt`` (the authors' rule) beside ``model-last.pt``.

    Args:
        spec: the run.
        run_dir: its directory (created). If it holds a checkpoint of the same spec and
            ``resume`` is True, training continues after the last completed epoch; a finished
            run is just loaded.
        resume: False starts over, overwriting any checkpoint in ``run_dir``.
        progress: show a tqdm bar per epoch with loss, accuracy and mean K.
        device: where to train (``"cpu"``, ``"cuda"``, …).
        until_epoch: stop after this epoch (1-based) even if ``spec.epochs`` is larger, e.g. to
            split a long run over sessions; a later call resumes. ``None``: run to the end.
        select: which weights to return, ``"best"`` (the paper's checkpoint) or ``"last"``.

    Returns:
        The trained :class:`MLP` on ``device`` (in eval mode).

    Raises:
        ValueError: ``run_dir`` holds a checkpoint of a different spec (with ``resume=True``),
            or a bad ``select`` / ``until_epoch``.
        NotImplementedError: for a baseline method whose training loss is not registered yet.
    """
    if select not in ("best", "last"):
        raise ValueError(f"select={select!r} is invalid: expected 'best' or 'last'")
    if until_epoch is not None and until_epoch < 1:
        raise ValueError(f"until_epoch={until_epoch!r} is invalid: expected None or an integer >= 1")
    if not is_implemented(spec.method):
        raise NotImplementedError(
            f"method {spec.method!r} is reserved for the baselines (crc_core.baselines) and is not "
            "implemented yet")
    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    last_epoch = spec.epochs if until_epoch is None else min(spec.epochs, until_epoch)

    # --- state: fresh or resumed ---------------------------------------------------------------
    torch.manual_seed(spec.seed)
    model = MLP(spec.widths, spec.activation).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    data_gen = torch.Generator().manual_seed(spec.seed)
    # The CRT attack's curvature estimate: its Lanczos warm-start vectors change the estimates
    # slightly, so they are saved with each checkpoint ("solver_state") for an exact resume.
    estimator = curvature.CurvatureEstimator()
    history: List[Dict[str, Any]] = []
    best = {"epoch": 0, "test_accuracy": -1.0}
    start_epoch = 0
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a training checkpoint ({_CHECKPOINT_FORMAT})")
        if ckpt["spec"] != spec.to_dict():
            raise ValueError(
                f"{ckpt_path} holds a run of a different spec; use another run_dir or "
                f"resume=False to start over.\n  stored: {ckpt['spec']}\n  asked:  {spec.to_dict()}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"].cpu())
        _set_rng_state({k: v.cpu() for k, v in ckpt["rng"].items()}, device)
        estimator.load_state_dict(ckpt.get("solver_state", {}), device=device)
        history = list(ckpt["history"])
        best = dict(ckpt["best"])
        start_epoch = int(ckpt["epoch"])
    _atomic_json(spec.to_dict(), run_dir / "spec.json")

    if start_epoch < last_epoch:
        X, Y = _train_data(spec)
        X, Y = X.to(device), Y.to(device)
        Xt, Yt = data_module.load(spec.dataset, "test")
        n = X.shape[0]
        steps_per_epoch = math.ceil(n / spec.batch_size)
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, last_epoch):
            lr = _lr_at(spec, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            t0, cpu0 = time.perf_counter(), time.process_time()
            perm = torch.randperm(n, generator=data_gen).to(device)
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "K": 0.0, "K_batches": 0}
            bar = tqdm(range(steps_per_epoch), desc=f"{spec.method} epoch {epoch + 1}/{spec.epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True)
            for step in bar:
                idx = perm[step * spec.batch_size:(step + 1) * spec.batch_size]
                x, y = X[idx], Y[idx]
                p = training_progress(spec, epoch, step, steps_per_epoch)
                loss, logits0, K_mean = _loss(model, x, y, spec, p, estimator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                b = y.shape[0]
                sums["loss"] += float(loss.detach()) * b
                sums["correct"] += int((logits0.argmax(dim=1) == y).sum())
                sums["seen"] += b
                if K_mean is not None:
                    sums["K"] += K_mean
                    sums["K_batches"] += 1
                if progress:
                    post = {"loss": f"{sums['loss'] / sums['seen']:.3f}",
                            "acc": f"{sums['correct'] / sums['seen']:.3f}"}
                    if sums["K_batches"]:
                        post["K"] = f"{sums['K'] / sums['K_batches']:.3g}"
                    bar.set_postfix(post, refresh=False)
            bar.close()
            model.eval()
            test_acc = accuracy(model, Xt, Yt)
            seconds = time.perf_counter() - t0
            cpu_seconds = time.process_time() - cpu0
            row = {
                "epoch": epoch + 1, "lr": lr,
                "loss": sums["loss"] / sums["seen"],
                "train_accuracy": sums["correct"] / sums["seen"],
                "mean_K": sums["K"] / sums["K_batches"] if sums["K_batches"] else None,
                "test_accuracy": test_acc, "seconds": seconds, "cpu_seconds": cpu_seconds,
            }
            history.append(row)
            if progress:
                k = "" if row["mean_K"] is None else f", K {row['mean_K']:.3g}"
                print(f"{spec.method} epoch {epoch + 1}/{spec.epochs}: loss {row['loss']:.4f}, "
                      f"train acc {row['train_accuracy']:.4f}{k}, test acc {test_acc:.4f} "
                      f"({seconds:.0f} s)", flush=True)
            if test_acc > best["test_accuracy"]:
                best = {"epoch": epoch + 1, "test_accuracy": test_acc}
                _save_model(model, run_dir / BEST)
            _save_model(model, run_dir / LAST)
            _atomic_json(history, run_dir / "history.json")
            _atomic_torch_save({
                "format": _CHECKPOINT_FORMAT, "spec": spec.to_dict(), "epoch": epoch + 1,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "data_rng": data_gen.get_state(), "rng": _rng_state(device),
                "solver_state": estimator.state_dict(),
                "history": history, "best": best,
            }, ckpt_path)

    which = select if (run_dir / (BEST if select == "best" else LAST)).is_file() else "last"
    out = load_model(run_dir, which, device=device)
    out.eval()
    return out
