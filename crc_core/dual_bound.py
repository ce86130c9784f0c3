"""Theorem 1's sound bound: a certified radius from any point, whatever the solver's accuracy.

For the margin f with m ≤ λmin(∇²f) and the certificate dual
d(η) = min_x F_η(x), F_η(x) = ½‖x − x^(0)‖² + η f(x), 0 ≤ η, μ = 1 + η m > 0: F_η is
μ-strongly convex, so for *any* point x̂

.. math::
    d(η) \\ge F_η(\\hat x) - \\frac{\\|\\nabla F_η(\\hat x)\\|^2}{2μ}
    \\qquad (:func:`dual_lower_bound`),

and d(η) ≤ p* = ½ dist(x^(0), {f ≤ 0})² (weak duality), so
r = sqrt(2 max(0, bound)) is a certified l2 radius. Every gradient evaluation gives such a bound
for all η ∈ [0, η_max] at once (:func:`certificate_eta_max`); :func:`best_dual_bound`
maximizes it over η in closed form. This is the whole of the soundness argument that the
solvers of :mod:`crc_core.dual_solvers` rely on: only m enters it (M only sets step sizes).

Example:
    >>> x0 = torch.zeros(1, 2, dtype=torch.float64)          # f(x) = aᵀx + 1, a = (3, 4)
    >>> a = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    >>> bound, eta = best_dual_bound(torch.zeros_like(x0), torch.ones(1, dtype=torch.float64), a,
    ...                              torch.zeros(1, dtype=torch.float64), torch.full((1,), 1e6))
    >>> round(float((2 * bound).sqrt()), 6)                 # f(x0)/‖a‖: exact for a linear f
    0.2
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["MU_FLOOR", "ETA_CAP", "certificate_eta_max", "dual_lower_bound", "best_dual_bound"]

#: Certificate: η is kept at or below (1 − MU_FLOOR)/(−m), so F_η is at least MU_FLOOR-strongly
#: convex (Theorem 1 allows η up to −1/m, where μ = 0 and the bound degenerates). The bound
#: lost by stopping short of −1/m is ≈ MU_FLOOR·f/|m| in d, ~1e-6 in the radius.
MU_FLOOR = 1e-6
#: Certificate: the largest η when m ≥ 0 (f convex; any η ≥ 0 is allowed). With f bounded away
#: from 0 the certificate is then about sqrt(2·ETA_CAP·f(x0)) (the boundary may not exist).
ETA_CAP = 1e6


def certificate_eta_max(m: Tensor) -> Tensor:
    """The largest η of the certificate, η_max = min(ETA_CAP, (1 − MU_FLOOR)/(−m)).

    ETA_CAP when m ≥ 0 (f convex: any η ≥ 0 is allowed). At η_max, μ = 1 + η m ≥ MU_FLOOR.

    Args:
        m: (B,) lower curvature bounds.

    Returns:
        (B,) η_max, in m's dtype.
    """
    cap = torch.full_like(m, ETA_CAP)
    return torch.where(m < 0, torch.minimum(cap, (1 - MU_FLOOR) / (-m).clamp_min(1e-300)), cap)


def dual_lower_bound(x_hat: Tensor, x0: Tensor, f: Tensor, grad: Tensor, eta, m) -> Tensor:
    """Sound lower bound on d(η) (hence on p* = ½ dist²) from one point x̂ (Theorem 1).

    .. math::
        d(η) \\ge F_η(\\hat x) - \\frac{\\|\\hat x - x^{(0)} + η \\nabla f(\\hat x)\\|^2}{2(1 + η m)}

    valid for 0 ≤ η and 1 + ηm > 0 when m ≤ λmin(∇²f) on a convex set containing x̂ and the
    minimizer (everywhere for global bounds).

    Args:
        x_hat: (B, D) the point x̂. x0: (B, D) the input.
        f: (B,) f(x̂). grad: (B, D) ∇f(x̂).
        eta: η, float or (B,), with 1 + ηm > 0. m: float or (B,).

    Returns:
        (B,) the bound on ½ dist²; the certified radius is ``sqrt(2 * max(0, bound))``.
    """
    eta = torch.as_tensor(eta, dtype=x0.dtype, device=x0.device)
    m = torch.as_tensor(m, dtype=x0.dtype, device=x0.device)
    mu = 1 + eta * m
    if (mu <= 0).any() or (eta < 0).any():
        raise ValueError("dual_lower_bound needs η ≥ 0 and 1 + ηm > 0")
    u = x_hat - x0
    resid = u + eta.reshape(-1, 1) * grad if eta.dim() else u + eta * grad
    return 0.5 * (u * u).sum(1) + eta * f - (resid * resid).sum(1) / (2 * mu)


def best_dual_bound(u: Tensor, f: Tensor, g: Tensor, m: Tensor, eta_max: Tensor,
                    extra: Sequence[Tensor] = ()) -> Tuple[Tensor, Tensor]:
    """The bound of :func:`dual_lower_bound` at one point x̂, maximized over η ∈ [0, η_max].

    .. math::
        S(η) = \\tfrac{a}{2} + η f - \\frac{a + 2ηb + η^2 q}{2(1 + η m)},
        \\quad a = \\|u\\|^2,\\ b = u^T g,\\ q = \\|g\\|^2,\\ u = \\hat x - x^{(0)}

    is concave in η; S'(η) = 0 is the quadratic (2fm² − qm)η² + (4fm − 2q)η + (2f − 2b + ma) = 0.
    Its roots, the ends and ``extra`` are clipped to the range and S is evaluated at each
    (directly from the vectors): every value is sound, the largest is returned with its η.

    Args:
        u: (B, D) x̂ − x^(0). f: (B,) f(x̂). g: (B, D) ∇f(x̂).
        m: (B,) lower curvature bounds. eta_max: (B,) from :func:`certificate_eta_max`.
        extra: further (B,) candidate η's (e.g. the solver's current η).

    Returns:
        ``(bound, eta)``, each (B,): the largest bound on ½ dist² and the η that gives it.
    """
    a = (u * u).sum(1)
    b = (u * g).sum(1)
    q = (g * g).sum(1)
    A = 2 * f * m * m - q * m
    Bq = 4 * f * m - 2 * q
    Cq = 2 * f - 2 * b + m * a
    sq = (Bq * Bq - 4 * A * Cq).clamp_min(0).sqrt()
    qq = -0.5 * (Bq + torch.where(Bq >= 0, sq, -sq))
    cands = [torch.zeros_like(f), eta_max, -Cq / Bq, qq / A, Cq / qq, *extra]
    best = torch.full_like(f, -float("inf"))
    best_eta = torch.zeros_like(f)
    for eta in cands:
        eta = torch.nan_to_num(eta, nan=0.0, posinf=0.0, neginf=0.0)
        eta = torch.minimum(eta.clamp_min(0), eta_max)
        resid = u + eta[:, None] * g
        s = 0.5 * a + eta * f - (resid * resid).sum(1) / (2 * (1 + eta * m))
        better = s > best
        best = torch.where(better, s, best)
        best_eta = torch.where(better, eta, best_eta)
    return best, best_eta
