"""CROWN-IBP training (Zhang et al. 2019): the schedule and the loss of one batch.

The loss mixes the clean cross-entropy with the cross-entropy of the worst-case logits built
from margin lower bounds over the l2 ball of radius ε,

.. math::
    κ\\,\\mathrm{CE}(z(x), y) + (1-κ)\\,\\mathrm{CE}(-\\underline{f}, y), \\qquad
    \\underline{f} = β\\,\\underline{f}_{\\text{CROWN-IBP}} + (1-β)\\,\\underline{f}_{\\text{IBP}},

where :math:`\\underline{f}_{\\text{CROWN-IBP}}` back-substitutes the margins through
relaxations on IBP's intervals (:mod:`crc_core.baselines.back_substitution`) and
:math:`\\underline{f}_{\\text{IBP}}` is IBP's bound (:mod:`crc_core.baselines.ibp`). ε, κ and β
follow :func:`crown_ibp_schedule` as functions of the training progress p ∈ [0, 1], the
fraction of the training steps done (:func:`crc_core.training.training_progress` computes it;
:mod:`crc_core.training` calls :func:`crown_ibp_loss` for ``method="crown-ibp"``).

Example:
    >>> loss, logits = crown_ibp_loss(model, x, y, spec, progress=0.3)
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .back_substitution import back_substitute
from .ibp import hidden_intervals, spec_interval_lower_bound
from .network import affine_layers, margin_matrix
from .relaxations import linear_relaxation
from .schedules import check_progress, ramp

Tensor = torch.Tensor

__all__ = ["crown_ibp_schedule", "crown_ibp_loss", "robust_cross_entropy", "WARMUP_FRACTION",
           "RAMP_END_FRACTION", "FINAL_KAPPA"]

#: CROWN-IBP schedule (Zhang et al. 2019, scaled to a fraction of the training steps): ε = 0
#: and κ = 1 during the first WARMUP_FRACTION of the steps, then ε rises linearly to ρ, κ falls
#: to FINAL_KAPPA and β moves from 1 to the final β, until RAMP_END_FRACTION; constant after.
WARMUP_FRACTION = 0.05
RAMP_END_FRACTION = 0.5
FINAL_KAPPA = 0.0


def crown_ibp_schedule(spec, progress: float) -> Tuple[float, float, float]:
    """(ε, κ, β) of CROWN-IBP at a point of training (Zhang et al. 2019, Section 4).

    With r = the ramp fraction (0 during the first ``WARMUP_FRACTION`` of the steps, then
    linear to 1 at ``RAMP_END_FRACTION``):

    .. math::
        ε = r ρ, \\quad κ = 1 - r (1 - κ_{\\text{final}}), \\quad β = 1 + r (β_{\\text{final}} - 1)

    with ρ = ``spec.rho``, κ_final = :data:`FINAL_KAPPA` and β_final =
    ``spec.crown_ibp_final_beta`` (the paper tries final β in [0.8, 3]).

    Args:
        spec: a :class:`~crc_core.training.TrainSpec` (``rho``, ``crown_ibp_final_beta``).
        progress: the fraction of the training steps done before this one, ≥ 0
            (:func:`crc_core.training.training_progress`); values above 1 act as 1.

    Raises:
        ValueError: progress negative or not a finite number.

    Example:
        >>> crown_ibp_schedule(spec, 0.0)
        (0.0, 1.0, 1.0)
    """
    r = ramp(check_progress(progress), WARMUP_FRACTION, RAMP_END_FRACTION)
    beta_final = float(getattr(spec, "crown_ibp_final_beta", 1.0))
    return r * float(spec.rho), 1.0 - r * (1.0 - FINAL_KAPPA), 1.0 + r * (beta_final - 1.0)


def robust_cross_entropy(lower: Tensor, y: Tensor) -> Tensor:
    """CE(−f̲, y): the cross-entropy of the worst-case logits built from margin lower bounds
    (B, C) with column y = 0 (Wong & Kolter 2018; Zhang et al. 2019)."""
    return F.cross_entropy(-lower, y)


def crown_ibp_loss(model, x: Tensor, y: Tensor, spec, progress: float) -> Tuple[Tensor, Tensor]:
    """The CROWN-IBP training loss of one batch (``method="crown-ibp"`` in :mod:`crc_core.training`).

    .. math::
        κ\\,\\mathrm{CE}(z(x), y) + (1 - κ)\\,\\mathrm{CE}\\big(-(β\\,\\underline{f}_{\\text{CROWN-IBP}}
        + (1 - β)\\,\\underline{f}_{\\text{IBP}}), y\\big)

    at the step's (ε, κ, β) from :func:`crown_ibp_schedule`; f̲ are the (B, C) margin lower
    bounds over the l2 ball of radius ε (column y = 0).

    Args:
        model: the MLP being trained (relu or softplus in the paper; any supported activation).
        x: (B, D) batch; y: (B,) labels.
        spec: the run's TrainSpec; progress: the fraction of the training steps done.

    Returns:
        (loss scalar, clean logits (B, C)).
    """
    eps, kappa, beta = crown_ibp_schedule(spec, progress)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if eps > 0 and kappa < 1:
        Ws, bs = affine_layers(model, logits.dtype, x.device)
        act = model.activation
        xb = model.check_input(x).to(logits.dtype)
        e = torch.full((xb.shape[0],), eps, dtype=logits.dtype, device=x.device)
        S = margin_matrix(y, model.num_classes, logits.dtype)
        ibp = hidden_intervals(act, Ws, bs, xb, e)
        lower = 0
        if beta != 0:
            relax = [linear_relaxation(act, lo, hi) for lo, hi in ibp]
            lower = beta * back_substitute(Ws, bs, relax, xb, e, S, len(Ws))
        if beta != 1:
            lower = lower + (1 - beta) * spec_interval_lower_bound(act, Ws[-1], bs[-1], ibp[-1], S)
        lower = lower.scatter(1, y[:, None], 0.0)
        loss = kappa * loss + (1 - kappa) * robust_cross_entropy(lower, y)
    return loss, logits
