"""The training spec: everything that determines a training run, serializable and validated.

:class:`TrainSpec` names the data set, the network (widths, activation), the method and its
parameters (γ, the training radius ρ, the attack schedule, PGD settings, CROWN-IBP's final β),
the optimizer and schedule, the seed and the training subset. It is validated on creation (every
bad field named with its allowed values), written into checkpoints and results files as a dict
(:meth:`TrainSpec.to_dict`) and rebuilt from one (:meth:`TrainSpec.from_dict`).
:func:`crc_core.training.train` trains one; :mod:`crc_core.runs` derives every run of the paper
from one table of specs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from . import data as data_module
from .activations import ACTIVATIONS, NoCurvatureError, get_activation

__all__ = ["METHODS", "TRAINABLE_METHODS", "BASELINE_METHODS", "LR_SCHEDULES", "PGD_TARGETS",
           "PENALTY_BOUNDS", "ATTACK_SCHEDULES", "TrainSpec"]

#: Methods implemented here.
TRAINABLE_METHODS: Tuple[str, ...] = ("standard", "curvature", "crt", "pgd")
#: Methods of the baselines; their losses are :data:`crc_core.baselines.TRAINING_LOSSES`
#: (COAP's only where the ``convex_adversarial`` package is installed, see :func:`is_implemented`).
BASELINE_METHODS: Tuple[str, ...] = ("crown-ibp", "coap")
METHODS: Tuple[str, ...] = TRAINABLE_METHODS + BASELINE_METHODS
LR_SCHEDULES: Tuple[str, ...] = ("constant", "cosine")
PGD_TARGETS: Tuple[str, ...] = ("untargeted", "runner-up")
#: The curvature bounds γ may multiply (``TrainSpec.penalty_bound``).
PENALTY_BOUNDS: Tuple[str, ...] = ("theorem4", "theorem3", "theorem3-all")
ATTACK_SCHEDULES: Tuple[str, ...] = ("crc", "authors")
#: Default of TrainSpec.crown_ibp_final_beta (the value every non-CROWN-IBP spec keeps).
_DEFAULT_FINAL_BETA = 1.0
#: Methods that need a training radius ρ > 0.
_NEEDS_RHO = ("crt", "pgd", "crown-ibp", "coap")



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
        crt_attack_targets: ``crt`` only: k, the number of target classes of the CRT attack:
            the k classes of largest clean logit other than y
            (:func:`crc_core.checks.largest_other_classes`); each image's attack loss is the
            cross-entropy at the worst of its k attack points (the largest). 1 (the default, the
            paper's) attacks the runner-up class only; C − 1 = 9 attacks every class, the
            training counterpart of the all-classes certificate, at k times the attack's cost.
            The curvature penalty stays at the runner-up pair. Must stay 1 for the other
            methods; :meth:`to_dict` writes it only when it is not 1.
        penalty_bound: which curvature bound γ multiplies: ``"theorem4"`` (the default, the
            paper's equation (7): Theorem 4's K with estimated spectral norms,
            :func:`crc_core.curvature.curvature_penalty`) or ``"theorem3"`` (``crt`` with L = 2
            only: max(−m̂, M̂) of Theorem 3, the bound the two-layer certificate uses, as Rayleigh
            quotients at the run's warm-started Ritz vectors,
            :meth:`crc_core.curvature.CurvatureEstimator.theorem3_penalty`; beyond the paper) or
            ``"theorem3-all"`` (the same, the largest over every target t ≠ y: the bound of the
            all-classes certificate).
            :meth:`to_dict` writes it only when it is not the default.

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
    crt_attack_targets: int = 1
    penalty_bound: str = "theorem4"

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
        for name in ("epochs", "batch_size", "seed", "attack_steps", "pgd_steps", "train_subset",
                     "crt_attack_targets"):
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
        k = self.crt_attack_targets
        if not 1 <= k <= self.widths[-1] - 1:
            raise _field_error("crt_attack_targets", k,
                               f"an integer in [1, {self.widths[-1] - 1}] (C - 1 = every other class)")
        if self.method != "crt" and k != 1:
            raise _field_error("crt_attack_targets", k, f"1 (the default) for method "
                               f"{self.method!r}: it applies to 'crt' only")
        if self.penalty_bound not in PENALTY_BOUNDS:
            raise _field_error("penalty_bound", self.penalty_bound, f"one of {list(PENALTY_BOUNDS)}")
        if self.penalty_bound != "theorem4" and (self.method != "crt" or self.depth != 2):
            raise _field_error("penalty_bound", self.penalty_bound,
                               f"'theorem4' (the default) for method {self.method!r} with "
                               f"L = {self.depth}: {self.penalty_bound!r} applies to 'crt' with L = 2 "
                               "only")
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

        ``crown_ibp_final_beta`` is written for ``crown-ibp`` runs only, ``crt_attack_targets``
        only when it is not 1, ``penalty_bound`` only when it is not ``"theorem4"`` (so specs
        from before these fields existed compare equal).
        """
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        if self.method != "crown-ibp":
            del d["crown_ibp_final_beta"]
        if self.crt_attack_targets == 1:
            del d["crt_attack_targets"]
        if self.penalty_bound == "theorem4":
            del d["penalty_bound"]
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
