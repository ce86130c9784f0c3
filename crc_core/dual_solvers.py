"""Definitions 1 and 2 on a generic margin function: the certificate and attack dual solvers.

Nothing here knows about networks: a margin is any smooth f: R^D → R given as a
:data:`MarginFn` (values and gradients for rows of a batch) with Hessian eigenvalues in
[m, M]. :mod:`crc_core.duality` applies these solvers to networks (f = z_y − z_t);
:mod:`crc_core.reference_schedules` holds the authors' fixed schedules for comparison.

The sound bound of Theorem 1 (:mod:`crc_core.dual_bound`) turns every point the certificate
solver visits into a certified radius, whatever its accuracy.

**The certificate solver** (:func:`solve_certificate`) replaces the authors' 30 bisection steps
× 20 inner steps (600 gradients) by a sequential-quadratic step per gradient evaluation: at the
current point x_k it models f by :math:`f_k + g_k^T s + \\tfrac{c}{2}\\|s\\|^2` with a
Barzilai–Borwein curvature c = sᵀΔg/‖s‖² of the last step clipped to [m, M], and jumps to the
exact solution of the *model* problem: the minimizer of ½‖x − x0‖² + η·model for the η (clipped
to [0, η_max]) at which the model vanishes. In closed form, with u = x_k − x^(0),

.. math::
    x_{k+1} - x^{(0)} = \\frac{η\\,(c\\,u - g_k)}{1 + η c},\\qquad
    P(η) = (f c^2 - \\tfrac{q c}{2}) η^2 + (2 f c - q) η + (f - g_k^T u + \\tfrac{c}{2}\\|u\\|^2) = 0,

q = ‖g_k‖² (P is the model value times (1 + ηc)², decreasing in η on [0, η_max]). The first
step (c = 0) is the first-order guess η = f/‖∇f‖²; with c = M at a fixed η the step is the
authors' majorize–minimize step; for a linear f or an isotropic quadratic it is exact. x is
carried from one η to the next. A pair stops when the Lagrangian residual
‖x − x0 + η∇f(x)‖ and |f(x)| are below ``tol`` (or η = η_max with f > 0 and the residual below
``tol``: the certificate is curvature-limited); it is ``tight`` (primal = dual) when |f| and the
residual are both ≤ TIGHT_TOL with η inside (0, η_max) (:func:`certificate_tight`), whatever
stopped it. About 5–14 gradient evaluations per pair on MNIST nets (γ-regularized and
CRT-trained), against the authors' 600, with the same values to ~1e-6 (``benchmarks/duality.py``).

**The attack solver** (:func:`solve_attack`) uses the same model in the ball: the minimizer of
:math:`f_k + g_k^T s + \\tfrac{c}{2}\\|s\\|^2 + \\tfrac{η}{2}\\|x - x^{(0)}\\|^2` with η
chosen so the point lands on the sphere (η ≥ η_lo = max(0, −m + 10⁻³)):

.. math::
    x_{k+1} = x^{(0)} + \\frac{c\\,u - g_k}{c + η},\\qquad
    η = \\max\\big(η_{lo},\\ \\|c\\,u - g_k\\| / ρ - c\\big),

a projected gradient step with a Barzilai–Borwein step length (the authors' MM step is c = M).
Every iterate is in the ball by construction. Ten steps (11 gradient evaluations per batch)
match the authors' 30 × 10 bisection schedule within 1% (``benchmarks/duality.py``).
:func:`solve_certificate`'s docstring has a runnable example on an affine margin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from . import checks
from .attacks import project_l2_ball
from .dual_bound import ETA_CAP, MU_FLOOR, best_dual_bound, certificate_eta_max, dual_lower_bound

Tensor = torch.Tensor


#: ``margin_fn(x, rows) -> (f, grad)``: for the rows ``rows`` (k,) int64 of the batch at the
#: points x (k, D), the margins f (k,) and their gradients ∇f (k, D).
MarginFn = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]

__all__ = [
    "MarginFn",
    "CertificateSolution",
    "AttackResult",
    "solve_certificate",
    "solve_attack",
    "certificate_tight",
    "attack_tight",
    "curvature_rows",
    "ATTACK_MU_FLOOR",
    "TIGHT_TOL",
    "PAPER_RESIDUAL_TOL",
    "ATTACK_TIGHT_RTOL",
    "ATTACK_KKT_RTOL",
    # re-exported from crc_core.dual_bound
    "dual_lower_bound",
    "best_dual_bound",
    "certificate_eta_max",
    "MU_FLOOR",
    "ETA_CAP",
]

#: Attack: η ≥ η_lo = max(0, ATTACK_MU_FLOOR − m), so the inner problem is strongly convex.
ATTACK_MU_FLOOR = 1e-3
#: Certificate ``tight`` flag (:func:`certificate_tight`): |f(x)| ≤ TIGHT_TOL (logit units) and
#: the stationarity residual ‖x − x0 + η∇f(x)‖ ≤ TIGHT_TOL (input units), 0 < η < η_max.
TIGHT_TOL = 1e-5
#: The authors' rule for counting a certificate: ‖η∇f(x) + (x − x0)‖ < PAPER_RESIDUAL_TOL.
PAPER_RESIDUAL_TOL = 1e-5
#: Attack ``tight`` flag (:func:`attack_tight`): | ‖x − x0‖ − ρ | ≤ ATTACK_TIGHT_RTOL·ρ, η > η_lo
#: and the Lagrangian residual ‖∇f(x) + η(x − x0)‖ ≤ ATTACK_KKT_RTOL·‖∇f(x)‖.
ATTACK_TIGHT_RTOL = 1e-4
ATTACK_KKT_RTOL = 1e-2


# ================================================================================================
# Results
# ================================================================================================

@dataclass
class CertificateSolution:
    """What :func:`solve_certificate` returns for a batch of B (input, target) pairs.

    Attributes:
        radius: (B,) certified l2 radius r (sound; see the module docstring), ≥ 0.
        bound: (B,) the best lower bound on p* = ½ dist², i.e. ½ r² before clipping at 0 (and
            before clipping at the ball radius R in local mode).
        eta: (B,) the final dual variable η.
        x: (B, D) the final primal point (approximately x*(η); on the boundary when tight).
        margin: (B,) f at ``x``.
        residual: (B,) ‖x − x0 + η∇f(x)‖, the gradient of F_η at ``x``.
        paper_radius: (B,) the authors' value sqrt(max(0, ‖x − x0‖² + 2ηf(x))) = sqrt(2F_η(x)).
        paper_counted: (B,) bool, ``residual < PAPER_RESIDUAL_TOL`` (the authors' rule).
        tight: (B,) bool, :func:`certificate_tight` (and x strictly inside the ball in local
            mode): primal = dual (Theorem 1), ``radius`` is the distance to the boundary.
        eta_max: (B,) the largest η used, min(ETA_CAP, (1 − MU_FLOOR)/(−m)).
        grad_evals: (B,) int64 gradient evaluations per pair.
    """

    radius: Tensor
    bound: Tensor
    eta: Tensor
    x: Tensor
    margin: Tensor
    residual: Tensor
    paper_radius: Tensor
    paper_counted: Tensor
    tight: Tensor
    eta_max: Tensor
    grad_evals: Tensor



@dataclass
class AttackResult:
    """The CRC attack of a batch (Definition 2), as returned by :func:`attack`.

    Attributes:
        x: (B, D) the attack point, ‖x − x0‖ ≤ ρ always.
        margin: (B,) f = z_y − z_t at ``x``.
        tight: (B,) bool, :func:`attack_tight`: ‖x − x0‖ = ρ within ``ATTACK_TIGHT_RTOL``·ρ with
            η > η_lo and a converged inner problem (Theorem 2: then ``margin`` is the minimum of f over the ball).
        eta: (B,) final dual variable η.
        target: (B,) int64 targets (None from :func:`solve_attack`).
        grad_evals: int, batched gradient evaluations (each over the whole batch).
        distance: (B,) ‖x − x0‖.
    """

    x: Tensor
    margin: Tensor
    tight: Tensor
    eta: Tensor
    target: Optional[Tensor]
    grad_evals: int
    distance: Tensor


# ================================================================================================
# Model steps and tightness rules
# ================================================================================================

def _model_root(u: Tensor, f: Tensor, g: Tensor, c: Tensor, eta_max: Tensor) -> Tensor:
    """η ∈ [0, η_max] at which the model f + gᵀs + (c/2)‖s‖² vanishes at the model's x(η)."""
    a = (u * u).sum(1)
    b = (u * g).sum(1)
    q = (g * g).sum(1)
    A = f * c * c - 0.5 * q * c
    Bq = 2 * f * c - q
    Cq = f - b + 0.5 * c * a
    P_max = (A * eta_max + Bq) * eta_max + Cq
    sq = (Bq * Bq - 4 * A * Cq).clamp_min(0).sqrt()
    qq = -0.5 * (Bq + torch.where(Bq >= 0, sq, -sq))
    best = eta_max.clone()
    best_p = torch.full_like(f, float("inf"))
    for r in (qq / A, Cq / qq, -Cq / Bq):
        r = torch.nan_to_num(r, nan=-1.0, posinf=-1.0, neginf=-1.0)
        ok = (r >= 0) & (r <= eta_max)
        p = ((A * r + Bq) * r + Cq).abs()
        take = ok & (p < best_p)
        best = torch.where(take, r, best)
        best_p = torch.where(take, p, best_p)
    eta = torch.where(P_max >= 0, eta_max, best)      # model positive up to η_max: curvature-limited
    return torch.where(Cq <= 0, torch.zeros_like(eta), eta)   # model already ≤ 0 at x0: restart


def certificate_tight(f: Tensor, residual: Tensor, eta: Tensor, eta_max: Tensor) -> Tensor:
    """The certificate's ``tight`` rule: primal = dual within tolerance (Theorem 1).

    .. math::
        |f(x)| \\le \\text{TIGHT\\_TOL},\\quad
        \\|x - x^{(0)} + η \\nabla f(x)\\| \\le \\text{TIGHT\\_TOL},\\quad 0 < η < η_{\\max}

    x is then (nearly) a KKT point of min ½‖x − x0‖² s.t. f(x) = 0 with its multiplier strictly
    inside the dual range: the boundary point nearest x0, and the certified radius is its
    distance. Feasibility alone is not enough: a solve stopped early (small ``max_evals``) can
    end with |f| small far from stationarity, at a point farther away than the radius.

    Args:
        f: (B,) f(x). residual: (B,) ‖x − x0 + η∇f(x)‖. eta, eta_max: (B,).

    Returns:
        (B,) bool.
    """
    return (f.abs() <= TIGHT_TOL) & (residual <= TIGHT_TOL) & (eta > 0) & (eta < eta_max)


def attack_tight(x0: Tensor, x: Tensor, grad: Tensor, eta: Tensor, eta_lo: Tensor,
                 rho: Tensor) -> Tensor:
    """The attack's ``tight`` rule: x minimizes f over the ρ-ball (Theorem 2), within tolerance.

    .. math::
        \\big|\\|x - x^{(0)}\\| - ρ\\big| \\le \\text{ATTACK\\_TIGHT\\_RTOL}\\,ρ,\\quad
        η > η_{lo},\\quad
        \\|\\nabla f(x) + η (x - x^{(0)})\\| \\le \\text{ATTACK\\_KKT\\_RTOL}\\,\\|\\nabla f(x)\\|

    On the sphere, with a multiplier above η_lo = max(0, ATTACK_MU_FLOOR − m) (the Lagrangian
    strongly convex) and stationary: the dual bound equals f(x).

    Args:
        x0, x: (B, D) input and attack point. grad: (B, D) ∇f(x). eta, eta_lo, rho: (B,).

    Returns:
        (B,) bool.
    """
    u = x - x0
    kkt = (grad + eta[:, None] * u).norm(dim=1)
    return (((u.norm(dim=1) - rho).abs() <= ATTACK_TIGHT_RTOL * rho) & (eta > eta_lo)
            & (kkt <= ATTACK_KKT_RTOL * grad.norm(dim=1)))


def curvature_rows(m, M, like: Tensor) -> Tuple[Tensor, Tensor]:
    """Curvature bounds m ≤ M, floats or (B,) tensors, as (B,) tensors in ``like``'s dtype.

    B = ``like.shape[0]``; the checks are :func:`crc_core.checks.bounds`.

    Raises:
        ValueError: a shape other than () or (B,), NaN, or m > M (naming the first index).
    """
    m, M = checks.bounds((m, M), allowed=(), batch=like.shape[0], device=like.device)
    return m.to(like.dtype), M.to(like.dtype)


def _per_row(value, B: int, like: Tensor, name: str) -> Tensor:
    """A float or (B,) tensor (any value, inf included) as a fresh (B,) tensor like ``like``."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        v = v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name} must be a float or a tensor of shape ({B},), got {tuple(v.shape)}")
    return v.clone()


# ================================================================================================
# Solvers
# ================================================================================================

def solve_certificate(margin_fn: MarginFn, x0: Tensor, m, M, *, max_evals: int = 100,
                      tol: float = 1e-6, ball=None, stop_radius=None,
                      x_start: Optional[Tensor] = None,
                      first: Optional[Tuple[Tensor, Tensor]] = None) -> CertificateSolution:
    """Definition 1 for any smooth f with curvature in [m, M]: a sound certified radius.

    .. math::
        \\max_{0 \\le η \\le η_{\\max}} \\min_x \\tfrac12\\|x - x^{(0)}\\|^2 + η f(x)
        \\quad (η_{\\max} = \\min(\\text{ETA\\_CAP}, (1 - \\text{MU\\_FLOOR})/(-m)))

    solved by the model-based steps of the module docstring, one gradient evaluation each, x
    carried over. Pairs with f(x0) ≤ 0 get radius 0 at once.

    Guarantee: if m ≤ λmin(∇²f(x)) for all x (for all x in the ball when ``ball`` is given),
    ``radius`` ≤ the l2 distance from x0 to {f ≤ 0}, whatever ``max_evals`` and ``tol`` (they
    only affect how close to that distance it gets). If the bound on m does not hold, nothing
    is guaranteed.

    Args:
        margin_fn: ``fn(x (k, D), rows (k,)) -> (f (k,), ∇f (k, D))`` for rows of the batch.
        x0: (B, D) inputs (float64 recommended; the bound is computed in x0's dtype).
        m, M: floats or (B,) tensors, m ≤ λmin(∇²f) and λmax(∇²f) ≤ M.
        max_evals: gradient evaluations per pair at most (default 100).
        tol: stop when ‖x − x0 + η∇f(x)‖ ≤ tol and |f(x)| ≤ tol, or η = η_max with f > 0 and
            the residual ≤ tol (default 1e-6).
        ball: None (default; global bounds) or R, float or (B,): the bounds hold on the ball
            B(x0, R). Every point is projected onto the ball before it is evaluated, the solve
            stops once r ≥ R, and ``radius`` = min(r, R).
        stop_radius: None (default) or a float or (B,): a pair also stops as soon as its
            certified radius reaches it (used to prune targets that cannot be the minimum).
        x_start: (B, D) first point (default x0), e.g. a previous solution (warm start).
        first: ``(f, ∇f)`` at ``x_start`` if already known (not counted in ``grad_evals``).

    Returns:
        :class:`CertificateSolution`.

    Example:
        >>> a = torch.tensor([[3.0, 4.0]], dtype=torch.float64)      # f(x) = aᵀx + 1
        >>> fn = lambda x, rows: ((x * a).sum(1) + 1, a.expand_as(x))
        >>> sol = solve_certificate(fn, torch.zeros(1, 2, dtype=torch.float64), 0.0, 0.0)
        >>> round(float(sol.radius), 6)                                 # f(x0)/‖a‖
        0.2
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (B, D), got {tuple(x0.shape)}")
    B, D = x0.shape
    m, M = curvature_rows(m, M, x0)
    max_evals = checks.count(max_evals, "max_evals", 1)
    R = None if ball is None else checks.radius(ball, B, x0.dtype, x0.device, name="ball")
    enough = (torch.full_like(m, float("inf")) if stop_radius is None
              else _per_row(stop_radius, B, x0, "stop_radius"))
    if R is not None:
        enough = torch.minimum(enough, R)
    eta_max = certificate_eta_max(m)
    x = (x0 if x_start is None else x_start.to(x0)).clone()
    if R is not None:
        x = project_l2_ball(x, x0, R)
    eta = torch.zeros_like(m)
    c = torch.zeros_like(m)
    best = torch.full_like(m, -float("inf"))
    fx = torch.zeros_like(m)
    gx = torch.zeros_like(x0)
    x_prev = torch.zeros_like(x0)
    g_prev = torch.zeros_like(x0)
    have_prev = torch.zeros(B, dtype=torch.bool, device=x0.device)
    evals = torch.zeros(B, dtype=torch.int64, device=x0.device)
    active = torch.ones(B, dtype=torch.bool, device=x0.device)
    with torch.no_grad():
        for it in range(max_evals + (first is not None)):
            rows = active.nonzero()[:, 0]
            if rows.numel() == 0:
                break
            xr, x0r = x[rows], x0[rows]
            if it == 0 and first is not None:
                f, g = first[0].to(x0)[rows], first[1].to(x0)[rows]
            else:
                f, g = margin_fn(xr, rows)
                f, g = f.to(x0), g.to(x0)
                evals[rows] += 1
            if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
                raise ValueError("margin_fn returned NaN or infinite values")
            fx[rows], gx[rows] = f, g
            mr, Mr, emax, er = m[rows], M[rows], eta_max[rows], eta[rows]
            u = xr - x0r
            s, _ = best_dual_bound(u, f, g, mr, emax, extra=(er,))
            best[rows] = torch.maximum(best[rows], s)
            if it == 0:
                # f(x0) <= 0: the boundary is reached at x0 (radius 0)
                start_bad = (f <= 0) & (u.abs().amax(1) == 0)
            else:
                start_bad = torch.zeros_like(f, dtype=torch.bool)
            # Barzilai–Borwein curvature of f along the last step, clipped to [m, M]
            step = xr - x_prev[rows]
            ss = (step * step).sum(1)
            c_new = (step * (g - g_prev[rows])).sum(1) / ss.clamp_min(1e-300)
            cr = torch.where(have_prev[rows] & (ss > 0), c_new, c[rows])
            cr = torch.minimum(torch.maximum(cr, mr), Mr)
            c[rows] = cr
            x_prev[rows], g_prev[rows] = xr, g
            have_prev[rows] = True
            # stopping rule at the current (η, x)
            res = (u + er[:, None] * g).norm(dim=1)
            done = (res <= tol) & ((f.abs() <= tol) | ((er >= emax) & (f > 0))) | start_bad
            done = done | (best[rows] >= 0.5 * enough[rows] ** 2)
            # model step
            eta_new = _model_root(u, f, g, cr, emax)
            u_new = eta_new[:, None] * (cr[:, None] * u - g) / (1 + eta_new * cr)[:, None]
            x_new = x0r + u_new
            if R is not None:
                x_new = project_l2_ball(x_new, x0r, R[rows])
            moved = (x_new - xr).norm(dim=1) > 1e-15 * (1 + u.norm(dim=1))
            keep = ~done & moved
            if it == max_evals - 1 + (first is not None):
                keep = torch.zeros_like(keep)
            x[rows] = torch.where(keep[:, None], x_new, xr)
            eta[rows] = torch.where(keep, eta_new, er)
            active[rows] = keep
        u = x - x0
        res = (u + eta[:, None] * gx).norm(dim=1)
        paper = ((u * u).sum(1) + 2 * eta * fx).clamp_min(0).sqrt()
        radius = (2 * best).clamp_min(0).sqrt()
        tight = certificate_tight(fx, res, eta, eta_max)
        if R is not None:
            radius = torch.minimum(radius, R)
            tight = tight & (u.norm(dim=1) < R)
    return CertificateSolution(radius=radius, bound=best, eta=eta, x=x, margin=fx, residual=res,
                               paper_radius=paper, paper_counted=res < PAPER_RESIDUAL_TOL,
                               tight=tight, eta_max=eta_max, grad_evals=evals)


def solve_attack(margin_fn: MarginFn, x0: Tensor, m, M, rho, *, steps: int = 10,
                 first: Optional[Tuple[Tensor, Tensor]] = None) -> AttackResult:
    """Definition 2 for any smooth f with curvature in [m, M]: minimize f over the ρ-ball.

    .. math::
        \\max_{η \\ge η_{lo}} \\min_x f(x) + \\tfrac{η}{2}(\\|x - x^{(0)}\\|^2 - ρ^2),
        \\quad η_{lo} = \\max(0, \\text{ATTACK\\_MU\\_FLOOR} - m)

    by ``steps`` model steps (module docstring), all rows together. Theorem 2: when the
    result is ``tight`` (on the sphere with a converged inner problem), its margin is the
    minimum of f over the ball; otherwise it is still a point of the ball (an attack), and the
    dual optimum lies at η_lo (the constraint is not active, or the curvature bound blocks it).

    Args:
        margin_fn: ``fn(x (k, D), rows (k,)) -> (f (k,), ∇f (k, D))``.
        x0: (B, D) inputs. m, M: floats or (B,) (estimates are fine: they only set steps).
        rho: ρ > 0, float or (B,).
        steps: model steps (default 10): ``steps + 1`` gradient evaluations per batch.
        first: ``(f, ∇f)`` at x0 if already known (saves one evaluation).

    Returns:
        :class:`AttackResult` with ``target=None``; ‖x − x0‖ ≤ ρ (projected at every step).
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (B, D), got {tuple(x0.shape)}")
    B = x0.shape[0]
    rho = checks.radius(rho, B, x0.dtype, x0.device, name="rho")
    m, M = curvature_rows(m, M, x0)
    steps = checks.count(steps, "steps", 0)
    rows = torch.arange(B, device=x0.device)
    eta_lo = (ATTACK_MU_FLOOR - m).clamp_min(0)
    evals = 0
    with torch.no_grad():
        x = x0.clone()
        if first is None:
            f, g = margin_fn(x, rows)
            evals += 1
        else:
            f, g = first
        f, g = f.to(x0), g.to(x0)
        eta = eta_lo.clone()
        c = torch.minimum(torch.maximum(torch.zeros_like(m), m), M)
        x_prev = g_prev = None
        for _ in range(steps):
            if x_prev is not None:
                s = x - x_prev
                ss = (s * s).sum(1)
                c_new = (s * (g - g_prev)).sum(1) / ss.clamp_min(1e-300)
                c = torch.where(ss > 0, c_new, c)
                c = torch.minimum(torch.maximum(c, m), M)
            u = x - x0
            v = c[:, None] * u - g
            eta = torch.maximum(v.norm(dim=1) / rho - c, eta_lo)
            x_new = project_l2_ball(x0 + v / (c + eta)[:, None], x0, rho)
            x_prev, g_prev = x, g
            x = x_new
            f, g = margin_fn(x, rows)
            f, g = f.to(x0), g.to(x0)
            evals += 1
        if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
            raise ValueError("margin_fn returned NaN or infinite values")
        u = x - x0
        dist = u.norm(dim=1)
        tight = attack_tight(x0, x, g, eta, eta_lo, rho)
    return AttackResult(x=x, margin=f, tight=tight, eta=eta, target=None, grad_evals=evals,
                        distance=dist)
