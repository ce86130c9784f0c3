"""Local curvature bounds (Table 6): σ', σ'' ranges over an l2 ball, then the refined bound.

Over the ball ‖x' − x‖ ≤ R the pre-activations stay in intervals, so σ' and σ'' stay in
narrower ranges than their global ones, and the refined bound
(:func:`crc_core.bound_recursions.refined_recursion`) built from those ranges is valid for every
x' in the ball:

.. math::
    m \\le \\lambda_{\\min}(\\nabla^2 f(x')),\\ \\lambda_{\\max}(\\nabla^2 f(x')) \\le M
    \\quad \\forall x' : \\|x' - x\\|_2 \\le R

For L = 2 this is the paper's local Theorem 3: z^(1)_k(x') ∈ z^(1)_k(x) ± ‖W^(1)_k‖R and the
diagonals p, n are w_k times the exact range of σ'' on that interval (sign split). The public
entry point is :func:`crc_core.curvature.local_bounds`, which checks the arguments and returns
the elementwise tighter of these and the global bounds.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .activations import Activation
from .bound_recursions import refined_recursion, rigorous_extremes, sigma1_global, weights64
from .verified_linalg import UNIT_ROUNDOFF, interval_matvec, margin_factor, spectral_norm_upper

Tensor = torch.Tensor

__all__ = ["ball_ranges", "ball_refined_bounds"]

_F64 = torch.float64


def ball_ranges(model, act: Activation, x: Tensor, R: Tensor):
    """Per-neuron ranges of σ' and σ'' over the balls ‖x' − x_b‖ ≤ R_b, every hidden layer.

    Layer 1: z^(1)_k ∈ z^(1)_k(x) ± ‖W^(1)_k‖ R (exact for the ball). Deeper layers: the
    intersection of interval arithmetic through σ (increasing) and a Lipschitz bound
    |Δz^(J)_k| ≤ ‖|W^(J)_k| ⊙ s̄^(J-1)‖ ρ_{J-1} (mean value theorem per neuron, s̄ the max of
    |σ'| over the previous intervals, ρ an l2 bound of Δz^(J-1)). Everything float64, widened
    outward for rounding.

    Args:
        model: an MLP with a smooth activation ``act``.
        act: its activation.
        x: centers (B, D), any float dtype (converted to float64).
        R: radii (B,) float64, > 0.

    Returns:
        (d1, d2, gbar): per hidden layer J = 1 … L−1, d1[J−1], d2[J−1] = (lo, hi) ranges of σ'
        and σ'', each (B, N_J), and gbar[J−1] (B,) the max of |σ'| over layer J.

    Raises:
        NotImplementedError: L ≥ 3 with an activation that is not increasing.
    """
    Ws = weights64(model)
    bs = [b.detach().to(_F64) for b in model.biases]
    L = len(Ws)
    x = x.to(_F64)
    D = x.shape[1]
    z = x @ Ws[0].t() + bs[0]
    err = (2.0 * (D + 2) * UNIT_ROUNDOFF) * (x.abs() @ Ws[0].abs().t() + bs[0].abs())
    rad = Ws[0].norm(dim=1)[None, :] * R[:, None] * (1 + margin_factor(D))
    lo, hi = z - rad - err, z + rad + err
    rho = spectral_norm_upper(Ws[0]) * R
    d1, d2, gbar = [], [], []
    increasing = sigma1_global(act)[0] == 0.0
    for J in range(1, L):
        s_lo, s_hi = act.d1_range(lo, hi)
        sbar = torch.maximum(s_lo.abs(), s_hi.abs())
        d1.append((s_lo, s_hi))
        d2.append(act.d2_range(lo, hi))
        gbar.append(sbar.amax(1))
        if J == L - 1:
            break
        if not increasing:
            raise NotImplementedError("deep local bounds need an increasing activation")
        W, b = Ws[J], bs[J]
        a_lo, a_hi = act.fn(lo), act.fn(hi)
        a_lo = a_lo - 1e-12 * (1 + a_lo.abs())
        a_hi = a_hi + 1e-12 * (1 + a_hi.abs())
        ibp_lo, ibp_hi = interval_matvec(a_lo, a_hi, W.t())
        ibp_lo, ibp_hi = ibp_lo + b, ibp_hi + b
        a = act.fn(z)
        z = a @ W.t() + b
        lip = ((sbar * sbar) @ (W * W).t()).sqrt() * rho[:, None]
        slack = 1e-9 * (z.abs() + lip) + 1e-12
        lo = torch.maximum(ibp_lo, z - lip - slack)
        hi = torch.minimum(ibp_hi, z + lip + slack)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # (guard against rounding)
        rho = spectral_norm_upper(W) * gbar[-1] * rho
    return d1, d2, gbar


def ball_refined_bounds(model, act: Activation, x: Tensor, y: Tensor, t: Tensor,
                        R: Tensor) -> Tuple[Tensor, Tensor]:
    """The refined bound with the ranges of :func:`ball_ranges`: valid on each ball.

    Arguments are taken as checked (:func:`crc_core.curvature.local_bounds` does it). Cost: one
    verified eigenproblem per image for P and N of every hidden layer.

    Args:
        model: an MLP with a smooth activation ``act``.
        act: its activation.
        x: centers (B, D), B ≥ 1.
        y, t: (B,) int64 on the model's device, t ≠ y.
        R: radii (B,) float64, > 0.

    Returns:
        (m, M), each (B,) float64 on the model's device: rigorous on the ball (not yet
        intersected with the global bounds).
    """
    d1, d2, gbar = ball_ranges(model, act, x, R)
    Ws = weights64(model)
    norms: List[Tensor] = [spectral_norm_upper(W) for W in Ws[:-2]]
    w = Ws[-1][y] - Ws[-1][t]
    return refined_recursion(Ws, norms, w, d1, d2, gbar, rigorous_extremes(Ws))
