"""The authors' fixed schedules for Definitions 1 and 2, kept for comparison (facts.md).

The paper's public code solves the certificate dual by 30 bisection steps on η with 20
majorize–minimize (MM) steps each (601 gradient evaluations per pair), and the CRT attack by 30
bisection steps with 10 MM steps each (301 per batch). :mod:`crc_core.dual_solvers` replaces
both by model-based steps (5–15 evaluations) that reach the same values; these references are
what ``benchmarks/duality.py``, the tests and ``training`` (``attack_schedule="authors"``)
compare against. They take the same generic :data:`~crc_core.dual_solvers.MarginFn`.

Example:
    >>> a = torch.tensor([[3.0, 4.0]], dtype=torch.float64)      # f(x) = aᵀx + 1
    >>> fn = lambda x, rows: ((x * a).sum(1) + 1, a.expand_as(x))
    >>> ref = certify_reference(fn, torch.zeros(1, 2, dtype=torch.float64), -1.0, 1.0)
    >>> int(ref.grad_evals[0])
    601
"""
from __future__ import annotations

import torch

from . import checks
from .dual_solvers import (ATTACK_MU_FLOOR, ETA_CAP, PAPER_RESIDUAL_TOL, AttackResult,
                           CertificateSolution, MarginFn, attack_tight, best_dual_bound,
                           certificate_eta_max, certificate_tight, curvature_rows)

Tensor = torch.Tensor

__all__ = ["certify_reference", "attack_reference"]


def certify_reference(margin_fn: MarginFn, x0: Tensor, m, M, *, bisection_steps: int = 30,
                      inner_steps: int = 20) -> CertificateSolution:
    """The authors' certificate schedule (Definition 1), for comparison (facts.md).

    .. math::
        \\max_{0 \\le η \\le 1/|m|} \\min_x \\tfrac12\\|x - x^{(0)}\\|^2 + η f(x)
        \\quad\\text{by bisection on } η \\text{ and MM steps in } x

    Bisection on η over [0, 1/|m|] (``bisection_steps``, default 30); for each η,
    ``inner_steps`` (default 20) majorize–minimize steps x ← (x0 + η(Mx − ∇f(x)))/(1 + ηM) with
    x carried over; η moves up while f(x) > 0. The reported value is their
    sqrt(max(0, ‖x − x0‖² + 2ηf(x))), counted when ‖η∇f(x) + x − x0‖ < 1e-5. About
    ``bisection_steps·inner_steps + 1`` = 601 gradient evaluations per pair (the evaluation
    that tests the sign of f at the end of one η is the first MM step of the next, and the
    residual check reuses the last).
    ``radius`` is our sound bound at the final iterate (for comparison only).

    Args:
        margin_fn: ``fn(x (k, D), rows (k,)) -> (f (k,), ∇f (k, D))``.
        x0: (B, D) inputs. m, M: floats or (B,) curvature bounds, as in
            :func:`~crc_core.dual_solvers.solve_certificate`.
        bisection_steps: bisection steps on η (default 30).
        inner_steps: MM steps per η (default 20).

    Returns:
        :class:`~crc_core.dual_solvers.CertificateSolution` (``paper_radius`` is the authors'
        value; ``eta_max`` is their range end 1/|m|).
    """
    B = x0.shape[0]
    m, M = curvature_rows(m, M, x0)
    rows = torch.arange(B, device=x0.device)
    top = torch.where(m < 0, 1 / (-m).clamp_min(1e-300), torch.full_like(m, ETA_CAP))
    lo, hi = torch.zeros_like(m), top.clone()
    x = x0.clone()
    eta = lo
    with torch.no_grad():
        f, g = margin_fn(x, rows)
        evals = 1
        for _ in range(int(bisection_steps)):
            eta = (lo + hi) / 2
            for k in range(int(inner_steps)):
                if k:
                    f, g = margin_fn(x, rows)
                    evals += 1
                x = (x0 + eta[:, None] * (M[:, None] * x - g)) / (1 + eta * M)[:, None]
            f, g = margin_fn(x, rows)        # sign test at the final point (its gradient is
            evals += 1                       # the first step of the next η)
            up = f > 0
            lo = torch.where(up, eta, lo)
            hi = torch.where(up, hi, eta)
        u = x - x0
        res = (u + eta[:, None] * g).norm(dim=1)
        paper = ((u * u).sum(1) + 2 * eta * f).clamp_min(0).sqrt()
        eta_max = certificate_eta_max(m)
        e = torch.minimum(eta, eta_max)
        s, _ = best_dual_bound(u, f, g, m, eta_max, extra=(e,))
    evals_t = torch.full((B,), evals, dtype=torch.int64, device=x0.device)
    return CertificateSolution(
        radius=(2 * s).clamp_min(0).sqrt(), bound=s, eta=eta, x=x, margin=f, residual=res,
        paper_radius=paper, paper_counted=res < PAPER_RESIDUAL_TOL,
        tight=certificate_tight(f, res, eta, eta_max), eta_max=top, grad_evals=evals_t)


def attack_reference(margin_fn: MarginFn, x0: Tensor, m, M, rho, *, bisection_steps: int = 30,
                     inner_steps: int = 10) -> AttackResult:
    """The authors' CRT attack schedule (Definition 2), for comparison (facts.md).

    .. math::
        \\max_{|m| \\le η \\le |m| + 1000} \\min_x f(x) + \\tfrac{η}{2}(\\|x - x^{(0)}\\|^2 - ρ^2)

    Bisection on η over [|m|, |m| + 1000] (``bisection_steps``, default 30); for each η,
    ``inner_steps`` (default 10) steps x ← (Mx − ∇f(x) + ηx0)/(M + η) from x0; η moves up
    when ‖x − x0‖ > ρ. ``bisection_steps·inner_steps + 1`` gradient evaluations per batch. The
    final point is returned as is (it can lie slightly outside the ball).

    Args:
        margin_fn: ``fn(x (k, D), rows (k,)) -> (f (k,), ∇f (k, D))``.
        x0: (B, D) inputs. m, M: floats or (B,) curvature bounds (estimates are fine).
        rho: ρ > 0, float or (B,).
        bisection_steps: bisection steps on η (default 30).
        inner_steps: MM steps per η (default 10).

    Returns:
        :class:`~crc_core.dual_solvers.AttackResult` with ``target=None``; ``tight`` by the
        same rule as :func:`~crc_core.dual_solvers.solve_attack` (:func:`~crc_core.dual_solvers.attack_tight`).
    """
    B = x0.shape[0]
    m, M = curvature_rows(m, M, x0)
    rho = checks.radius(rho, B, x0.dtype, x0.device, name="rho")
    rows = torch.arange(B, device=x0.device)
    lo = m.abs()
    hi = m.abs() + 1000
    evals = 0
    with torch.no_grad():
        x = x0
        eta = lo
        for _ in range(int(bisection_steps)):
            eta = (lo + hi) / 2
            x = x0.clone()
            for _ in range(int(inner_steps)):
                f, g = margin_fn(x, rows)
                x = (M[:, None] * x - g + eta[:, None] * x0) / (M + eta)[:, None]
            evals += int(inner_steps)
            up = (x - x0).norm(dim=1) > rho
            lo = torch.where(up, eta, lo)
            hi = torch.where(up, hi, eta)
        f, g = margin_fn(x, rows)
        evals += 1
        dist = (x - x0).norm(dim=1)
        tight = attack_tight(x0, x, g, eta, (ATTACK_MU_FLOOR - m).clamp_min(0), rho)
    return AttackResult(x=x, margin=f, tight=tight, eta=eta, target=None, grad_evals=evals,
                        distance=dist)
