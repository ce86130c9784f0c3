"""Theorems 1 and 2: the curvature-based certificate (CRC) and attack (CRT's inner problem).

For an input x^(0) with label y and target t, the margin f = z_y − z_t has a Hessian with
eigenvalues in [m, M] (:mod:`crc_core.curvature`). Table 1 of the paper gives the two problems
and their duals:

.. math::
    \\text{certificate: } p^* = \\min_{f(x) = 0} \\tfrac12 \\|x - x^{(0)}\\|^2 \\;\\ge\\;
    d(η) = \\min_x F_η(x),\\quad F_η(x) = \\tfrac12 \\|x - x^{(0)}\\|^2 + η f(x),
    \\quad 0 \\le η < -1/m,

.. math::
    \\text{attack: } \\min_{\\|x - x^{(0)}\\| \\le ρ} f(x) \\;\\ge\\;
    \\min_x f(x) + \\tfrac{η}{2}(\\|x - x^{(0)}\\|^2 - ρ^2),\\quad η \\ge -m.

**Soundness of the certificate.** For η in range, F_η is μ-strongly convex with
μ = 1 + η m (Theorem 1), so for *any* point x̂,

.. math::
    d(η) \\ge F_η(\\hat x) - \\frac{\\|\\nabla F_η(\\hat x)\\|^2}{2μ}, \\qquad
    r = \\sqrt{2 \\max\\big(0,\\ F_η(\\hat x) - \\|\\nabla F_η(\\hat x)\\|^2 / (2μ)\\big)}
    \\le \\sqrt{2 p^*},

whatever the accuracy of the inner solve: r is a certified l2 radius (no point with f ≤ 0 lies
closer to x^(0), because f(x^(0)) > 0 and f is continuous). Every gradient evaluation the solver
makes gives such a bound for every η ∈ [0, η_max] at once (the bound is concave in η and is
maximized in closed form); ``radius`` is the largest of them. Only m enters the guarantee (M
only sets step sizes), so m must be a rigorous bound: :func:`curvature.global_bounds` with
``exact=True``. The final evaluation is in float64; rounding (relative ~1e-16) is not tracked.
With local bounds valid on the ball B(x^(0), R) and every x̂ inside it, the same bound holds for
the minimum over the ball, and points outside the ball are at distance ≥ R, so min(r, R) is
certified.

**The solver** (:func:`solve_certificate`) replaces the authors' 30 bisection steps × 20 inner
steps (600 gradients) by a sequential-quadratic step per gradient evaluation: at the current
point x_k it models f by :math:`f_k + g_k^T s + \\tfrac{c}{2}\\|s\\|^2` with a Barzilai–Borwein
curvature c = sᵀΔg/‖s‖² of the last step clipped to [m, M], and jumps to the exact solution of
the *model* problem: the minimizer of ½‖x − x0‖² + η·model for the η (clipped to [0, η_max])
at which the model vanishes. In closed form, with u = x_k − x^(0),

.. math::
    x_{k+1} - x^{(0)} = \\frac{η\\,(c\\,u - g_k)}{1 + η c},\\qquad
    P(η) = (f c^2 - \\tfrac{q c}{2}) η^2 + (2 f c - q) η + (f - g_k^T u + \\tfrac{c}{2}\\|u\\|^2) = 0,

q = ‖g_k‖² (P is the model value times (1 + ηc)², decreasing in η on [0, η_max]). The first
step (c = 0) is the first-order guess η = f/‖∇f‖²; with c = M at a fixed η the step is the
authors' majorize–minimize step; for a linear f or an isotropic quadratic it is exact. x is
carried from one η to the next. A pair stops when the Lagrangian residual
‖x − x0 + η∇f(x)‖ and |f(x)| are below ``tol`` (or η = η_max with f > 0 and the residual below
``tol``: the certificate is curvature-limited). About 5–14 gradient evaluations per pair on
MNIST nets (γ-regularized and CRT-trained), against the authors' 600, with the same values to
~1e-6 (``benchmarks/duality.py``).

**The attack** (:func:`solve_attack`) uses the same model in the ball: the minimizer of
:math:`f_k + g_k^T s + \\tfrac{c}{2}\\|s\\|^2 + \\tfrac{η}{2}\\|x - x^{(0)}\\|^2` with η
chosen so the point lands on the sphere (η ≥ η_lo = max(0, −m + 10⁻³)):

.. math::
    x_{k+1} = x^{(0)} + \\frac{c\\,u - g_k}{c + η},\\qquad
    η = \\max\\big(η_{lo},\\ \\|c\\,u - g_k\\| / ρ - c\\big),

a projected gradient step with a Barzilai–Borwein step length (the authors' MM step is c = M).
Every iterate is in the ball by construction. Ten steps (11 gradient evaluations per batch)
match the authors' 30 × 10 bisection schedule within 1% (``benchmarks/duality.py``).

Example:
    >>> from crc_core import MLP, duality
    >>> model = MLP([784, 64, 10], activation="softplus")
    >>> x, y = torch.rand(4, 784), torch.randint(0, 10, (4,))
    >>> cert = duality.certify(model, x, y)            # runner-up class, global bounds
    >>> cert.radius.shape, cert.tight.dtype
    (torch.Size([4]), torch.bool)
    >>> adv = duality.attack(model, x, y, rho=0.5)
    >>> bool(((adv.x - x).norm(dim=1) <= 0.5 * (1 + 1e-6)).all())
    True
"""
from __future__ import annotations

import copy
import dataclasses
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .activations import require_curvature
from . import attacks
from .attacks import project_l2_ball, runner_up

Tensor = torch.Tensor

#: ``margin_fn(x, rows) -> (f, grad)``: for the rows ``rows`` (k,) int64 of the batch at the
#: points x (k, D), the margins f (k,) and their gradients ∇f (k, D).
MarginFn = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]

__all__ = [
    "Certificate",
    "CertificateSolution",
    "AttackResult",
    "certify",
    "attack",
    "solve_certificate",
    "solve_attack",
    "certify_reference",
    "attack_reference",
    "margin_function",
    "dual_lower_bound",
    "MU_FLOOR",
    "ETA_CAP",
    "ATTACK_MU_FLOOR",
    "TIGHT_TOL",
    "PAPER_RESIDUAL_TOL",
    "ATTACK_TIGHT_RTOL",
    "ATTACK_KKT_RTOL",
    "LOCAL_FIRST_STEP",
]

#: Certificate: η is kept at or below (1 − MU_FLOOR)/(−m), so F_η is at least MU_FLOOR-strongly
#: convex (Theorem 1 allows η up to −1/m, where μ = 0 and the bound degenerates). The bound
#: lost by stopping short of −1/m is ≈ MU_FLOOR·f/|m| in d, ~1e-6 in the radius.
MU_FLOOR = 1e-6
#: Certificate: the largest η when m ≥ 0 (f convex; any η ≥ 0 is allowed). With f bounded away
#: from 0 the certificate is then about sqrt(2·ETA_CAP·f(x0)) (the boundary may not exist).
ETA_CAP = 1e6
#: Attack: η ≥ η_lo = max(0, ATTACK_MU_FLOOR − m), so the inner problem is strongly convex.
ATTACK_MU_FLOOR = 1e-3
#: Certificate ``tight`` flag: |f(x_boundary)| ≤ TIGHT_TOL (logit units) and η < η_max.
TIGHT_TOL = 1e-5
#: The authors' rule for counting a certificate: ‖η∇f(x) + (x − x0)‖ < PAPER_RESIDUAL_TOL.
PAPER_RESIDUAL_TOL = 1e-5
#: Attack ``tight`` flag: | ‖x − x0‖ − ρ | ≤ ATTACK_TIGHT_RTOL·ρ, η > η_lo and the Lagrangian
#: residual ‖∇f(x) + η(x − x0)‖ ≤ ATTACK_KKT_RTOL·‖∇f(x)‖.
ATTACK_TIGHT_RTOL = 1e-4
ATTACK_KKT_RTOL = 1e-2
#: Local bounds: the first ball tried is R = (1 + LOCAL_FIRST_STEP) × the global radius.
LOCAL_FIRST_STEP = 0.05

_BOUND_MODES = ("global", "local")
_TARGET_MODES = ("runner-up", "all")


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
        tight: (B,) bool, |f(x)| ≤ TIGHT_TOL and η < η_max (and x strictly inside the ball in
            local mode): primal = dual (Theorem 1), ``radius`` is the distance to the boundary.
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
class Certificate:
    """The CRC certificate of a batch (Definition 1), as returned by :func:`certify`.

    Attributes:
        radius: (B,) certified l2 radius: no x with ‖x − x0‖ < radius is classified as the
            target (as any class ≠ y for ``targets="all"``). 0 for misclassified inputs.
        target: (B,) int64, the target t of the reported certificate (the predicted class for
            misclassified inputs unless targets were given).
        eta: (B,) final dual variable η.
        x_boundary: (B, D) final primal point x^(cert) (a boundary point when ``tight``).
        margin: (B,) f = z_y − z_t at ``x_boundary``.
        tight: (B,) bool, primal = dual within tolerance (Theorem 1): |f(x_boundary)| ≤
            ``TIGHT_TOL`` and η strictly inside [0, −1/m) (and x_boundary strictly inside the
            ball for local bounds). Then ``radius`` equals the distance to the boundary of t.
        paper_radius: (B,) the authors' value sqrt(max(0, ‖x − x0‖² + 2ηf(x))) at the final
            iterate: equal to ``radius`` when the inner solve converged, otherwise not a bound.
        paper_counted: (B,) bool, the authors' rule ‖η∇f(x) + (x − x0)‖ < 1e-5.
        misclassified: (B,) bool, argmax z ≠ y at x0 (radius 0, nothing solved).
        m, M: (B,) float64 curvature bounds used for the reported certificate.
        grad_evals: int, total gradient evaluations (one (input, target) gradient each).
        bounds: ``"global"``, ``"local"`` or ``"given"``.
        radius_per_target: (B, C) for ``targets="all"``, else None: inf at y; for every
            t ≠ y a sound certified radius against t: the full solve for the targets that could
            be the minimum, and for the others (pruned) the cheaper bound that already reached
            the minimum (f(x0)/Lipschitz, the one-gradient bound at x̂ = x0, or a solve stopped
            early), so every entry is ≥ ``radius``; 0 for misclassified inputs.
    """

    radius: Tensor
    target: Tensor
    eta: Tensor
    x_boundary: Tensor
    margin: Tensor
    tight: Tensor
    paper_radius: Tensor
    paper_counted: Tensor
    misclassified: Tensor
    m: Tensor
    M: Tensor
    grad_evals: int
    bounds: str
    radius_per_target: Optional[Tensor] = None


@dataclass
class AttackResult:
    """The CRC attack of a batch (Definition 2), as returned by :func:`attack`.

    Attributes:
        x: (B, D) the attack point, ‖x − x0‖ ≤ ρ always.
        margin: (B,) f = z_y − z_t at ``x``.
        tight: (B,) bool, ‖x − x0‖ = ρ within ``ATTACK_TIGHT_RTOL``·ρ with η > η_lo and a
            converged inner problem (Theorem 2: then ``margin`` is the minimum of f over the ball).
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
# Margin functions
# ================================================================================================

def margin_function(model, y: Tensor, t: Tensor) -> MarginFn:
    """The batched margin f = z_y − z_t of a model and its input gradient, as a :data:`MarginFn`.

    The forward pass runs on detached weights (``torch.func.functional_call``), so the autograd
    graph tracks x only: no parameter's ``.grad`` is touched and nothing is kept for the
    weights' gradients.

    Args:
        model: a network mapping (k, D) to logits (k, C).
        y, t: (B,) int64 labels and targets of the whole batch; ``rows`` indexes them.

    Returns:
        ``fn(x, rows) -> (f (k,), ∇f (k, D))``, detached.
    """
    weights = ({k: v.detach() for k, v in model.named_parameters()}, dict(model.named_buffers()))

    def fn(x: Tensor, rows: Tensor) -> Tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = torch.func.functional_call(model, weights, (x,))
            f = z.gather(1, y[rows, None])[:, 0] - z.gather(1, t[rows, None])[:, 0]
            grad, = torch.autograd.grad(f.sum(), x)
        return f.detach(), grad
    return fn


# ================================================================================================
# The sound bound
# ================================================================================================

def _eta_max(m: Tensor) -> Tensor:
    """Largest η of the certificate: min(ETA_CAP, (1 − MU_FLOOR)/(−m)) (ETA_CAP when m ≥ 0)."""
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


def _best_bound(u: Tensor, f: Tensor, g: Tensor, m: Tensor, eta_max: Tensor,
                extra: Sequence[Tensor] = ()) -> Tuple[Tensor, Tensor]:
    """max over η ∈ [0, η_max] of the bound of :func:`dual_lower_bound` at one point.

    S(η) = a/2 + ηf − (a + 2ηb + η²q)/(2(1 + ηm)) with a = ‖u‖², b = uᵀg, q = ‖g‖² is concave;
    S'(η) = 0 is the quadratic (2fm² − qm)η² + (4fm − 2q)η + (2f − 2b + ma) = 0. Its roots, the
    ends and ``extra`` are clipped to the range and S is evaluated at each (directly from the
    vectors): every value is sound, the largest is returned with its η.
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


def _as_batch(value, B: int, like: Tensor, name: str) -> Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        v = v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name} must be a float or a tensor of shape ({B},), got {tuple(v.shape)}")
    return v.clone()


# ================================================================================================
# Solver cores on generic functions
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
    m = _as_batch(m, B, x0, "m")
    M = _as_batch(M, B, x0, "M")
    if torch.isnan(m).any() or torch.isnan(M).any() or (m > M).any():
        raise ValueError("curvature bounds must satisfy m <= M (and not be NaN)")
    if int(max_evals) < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    R = None if ball is None else _as_batch(ball, B, x0, "ball")
    if R is not None and (torch.isnan(R).any() or (R <= 0).any()):
        raise ValueError("ball radius must be > 0")
    enough = (torch.full_like(m, float("inf")) if stop_radius is None
              else _as_batch(stop_radius, B, x0, "stop_radius"))
    if R is not None:
        enough = torch.minimum(enough, R)
    eta_max = _eta_max(m)
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
        for it in range(int(max_evals) + (first is not None)):
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
            s, _ = _best_bound(u, f, g, mr, emax, extra=(er,))
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
            if it == int(max_evals) - 1 + (first is not None):
                keep = torch.zeros_like(keep)
            x[rows] = torch.where(keep[:, None], x_new, xr)
            eta[rows] = torch.where(keep, eta_new, er)
            active[rows] = keep
        u = x - x0
        res = (u + eta[:, None] * gx).norm(dim=1)
        paper = ((u * u).sum(1) + 2 * eta * fx).clamp_min(0).sqrt()
        radius = (2 * best).clamp_min(0).sqrt()
        tight = (fx.abs() <= TIGHT_TOL) & (eta < eta_max) & (eta > 0)
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
    rho = _as_batch(rho, B, x0, "rho")
    if torch.isnan(rho).any() or (rho <= 0).any() or torch.isinf(rho).any():
        raise ValueError("rho must be finite and > 0")
    m = _as_batch(m, B, x0, "m")
    M = _as_batch(M, B, x0, "M")
    if torch.isnan(m).any() or torch.isnan(M).any() or (m > M).any():
        raise ValueError("curvature bounds must satisfy m <= M (and not be NaN)")
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
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
        for _ in range(int(steps)):
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
        kkt = (g + eta[:, None] * u).norm(dim=1)
        tight = ((dist - rho).abs() <= ATTACK_TIGHT_RTOL * rho) & (eta > eta_lo) \
            & (kkt <= ATTACK_KKT_RTOL * g.norm(dim=1))
    return AttackResult(x=x, margin=f, tight=tight, eta=eta, target=None, grad_evals=evals,
                        distance=dist)


# ================================================================================================
# The authors' fixed schedules (reference)
# ================================================================================================

def certify_reference(margin_fn: MarginFn, x0: Tensor, m, M, *, bisection_steps: int = 30,
                      inner_steps: int = 20) -> CertificateSolution:
    """The authors' certificate schedule, for comparison (facts.md).

    Bisection on η over [0, 1/|m|] (``bisection_steps``, default 30); for each η,
    ``inner_steps`` (default 20) majorize–minimize steps x ← (x0 + η(Mx − ∇f(x)))/(1 + ηM) with
    x carried over; η moves up while f(x) > 0. The reported value is their
    sqrt(max(0, ‖x − x0‖² + 2ηf(x))), counted when ‖η∇f(x) + x − x0‖ < 1e-5. About
    ``bisection_steps·inner_steps + 1`` = 601 gradient evaluations per pair (the evaluation
    that tests the sign of f at the end of one η is the first MM step of the next, and the
    residual check reuses the last).
    ``radius`` is our sound bound at the final iterate (for comparison only).

    Args:
        margin_fn, x0, m, M: as in :func:`solve_certificate`.
        bisection_steps, inner_steps: the schedule.

    Returns:
        :class:`CertificateSolution` (``paper_radius`` is the authors' value).
    """
    B = x0.shape[0]
    m = _as_batch(m, B, x0, "m")
    M = _as_batch(M, B, x0, "M")
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
        eta_max = _eta_max(m)
        e = torch.minimum(eta, eta_max)
        s, _ = _best_bound(u, f, g, m, eta_max, extra=(e,))
    evals_t = torch.full((B,), evals, dtype=torch.int64, device=x0.device)
    return CertificateSolution(
        radius=(2 * s).clamp_min(0).sqrt(), bound=s, eta=eta, x=x, margin=f, residual=res,
        paper_radius=paper, paper_counted=res < PAPER_RESIDUAL_TOL,
        tight=(f.abs() <= TIGHT_TOL) & (eta < eta_max), eta_max=top, grad_evals=evals_t)


def attack_reference(margin_fn: MarginFn, x0: Tensor, m, M, rho, *, bisection_steps: int = 30,
                     inner_steps: int = 10) -> AttackResult:
    """The authors' CRT attack schedule, for comparison (facts.md).

    Bisection on η over [|m|, |m| + 1000] (``bisection_steps``, default 30); for each η,
    ``inner_steps`` (default 10) steps x ← (Mx − ∇f(x) + ηx0)/(M + η) from x0; η moves up
    when ‖x − x0‖ > ρ. ``bisection_steps·inner_steps + 1`` gradient evaluations per batch. The
    final point is returned as is (it can lie slightly outside the ball).
    """
    B = x0.shape[0]
    m = _as_batch(m, B, x0, "m")
    M = _as_batch(M, B, x0, "M")
    rho = _as_batch(rho, B, x0, "rho")
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
        kkt = (g + eta[:, None] * (x - x0)).norm(dim=1)
        tight = ((dist - rho).abs() <= ATTACK_TIGHT_RTOL * rho) \
            & (kkt <= ATTACK_KKT_RTOL * g.norm(dim=1))
    return AttackResult(x=x, margin=f, tight=tight, eta=eta, target=None, grad_evals=evals,
                        distance=dist)


# ================================================================================================
# Networks
# ================================================================================================

def _labels(model, y, B: int, device, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape ({B},)")
    y = y.to(device=device, dtype=torch.int64).reshape(-1) if y.dim() <= 1 else y
    if y.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},) to match x, got {tuple(y.shape)}")
    C = model.num_classes
    if B and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"{name} must lie in [0, {C - 1}] (the model has {C} classes)")
    return y


def _float64_model(model, device):
    """The model in float64 (a copy unless it already is), without gradients on its weights."""
    p = next(model.parameters())
    if p.dtype == torch.float64 and p.device == device:
        return model
    return copy.deepcopy(model).to(device=device, dtype=torch.float64).requires_grad_(False)


def _bound_tables(bounds, C: int, device) -> Tuple[Tensor, Tensor]:
    m_tab, M_tab = bounds
    m_tab = torch.as_tensor(m_tab, dtype=torch.float64, device=device)
    M_tab = torch.as_tensor(M_tab, dtype=torch.float64, device=device)
    if m_tab.shape != (C, C) or M_tab.shape != (C, C):
        raise ValueError(f"bounds given as (m, M) must be two ({C}, {C}) tables indexed [y, t] "
                         f"(as curvature.all_pair_bounds returns), got {tuple(m_tab.shape)}")
    return m_tab, M_tab


def _check_bounds_arg(bounds):
    if isinstance(bounds, str):
        if bounds not in _BOUND_MODES:
            raise ValueError(f"bounds={bounds!r} is invalid: expected one of {list(_BOUND_MODES)} "
                             "or a tuple (m, M) of (C, C) tables")
        return bounds
    if isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        return "given"
    raise ValueError(f"bounds must be 'global', 'local' or a tuple (m, M) of (C, C) tables, got {bounds!r}")


class _Job(NamedTuple):
    """What every pair solve of one :func:`certify` call shares."""

    model: torch.nn.Module        # the caller's model (curvature bounds, cached per model)
    model64: torch.nn.Module      # its float64 copy on x's device (margins, gradients)
    mode: str                     # "global", "local" or "given"
    tables: Optional[Tuple[Tensor, Tensor]]
    max_evals: int
    tol: float
    local_steps: int
    lipschitz: float              # _lipschitz_scale(model) for targets="all", else nan


def _pair_bounds(job: _Job, y: Tensor, t: Tensor, like: Tensor) -> Tuple[Tensor, Tensor]:
    """Global (m, M) of the pairs (y, t): the given tables or curvature.global_bounds."""
    if job.mode == "given":
        m, M = job.tables[0][y, t], job.tables[1][y, t]
    else:
        from . import curvature
        m, M = curvature.global_bounds(job.model, y, t)
    return m.to(like), M.to(like)


def _solve_pairs(job: _Job, x0: Tensor, y: Tensor, t: Tensor, f0: Tensor, g0: Tensor,
                 stop_radius: Optional[Tensor] = None):
    """Certificates of B (input, target) pairs: (CertificateSolution, m, M, total evals).

    ``stop_radius``: a pair may stop (and skip the local refinement) once its radius reaches it.
    """
    m, M = _pair_bounds(job, y, t, x0)
    fn = margin_function(job.model64, y, t)
    sol = solve_certificate(fn, x0, m, M, max_evals=job.max_evals, tol=job.tol,
                            stop_radius=stop_radius, first=(f0, g0))
    evals = int(sol.grad_evals.sum())
    if job.mode != "local":
        return sol, m, M, evals
    return _refine_local(job, fn, x0, y, t, sol, m, M, evals, stop_radius)


def _refine_local(job: _Job, fn: MarginFn, x0, y, t, sol: CertificateSolution, m, M, evals: int,
                  stop_radius: Optional[Tensor] = None):
    """Local bounds on a few balls B(x0, R); each min(r_R, R) is sound, the best is kept.

    The balls are R = r_g (1 + s) around the global radius r_g: s = LOCAL_FIRST_STEP, doubled
    after every ball that is certified whole (r_R ≥ R) and bisected toward the last certified
    one after every ball that is not, ``local_steps`` balls at most. A solve stops as soon as
    its ball is certified whole. The result is never below the global certificate.
    """
    from . import curvature
    best = sol
    value = sol.radius.clone()
    r_g = sol.radius.clone()
    best_m, best_M = m.clone(), M.clone()
    s = torch.full_like(r_g, LOCAL_FIRST_STEP)
    s_lo = torch.zeros_like(r_g)
    s_hi = torch.full_like(r_g, float("inf"))
    active = r_g > 0
    if stop_radius is not None:
        active = active & (r_g < stop_radius)
    for _ in range(job.local_steps):
        rows = active.nonzero()[:, 0]
        if rows.numel() == 0:
            break
        R = r_g[rows] * (1 + s[rows])
        mR, MR = curvature.local_bounds(job.model, x0[rows].to(next(job.model.parameters()).device),
                                        y[rows], t[rows], R)
        mR, MR = mR.to(x0), MR.to(x0)
        loc = solve_certificate(_fn_rows(fn, rows), x0[rows], mR, MR, max_evals=job.max_evals,
                                tol=job.tol, ball=R, x_start=best.x[rows])
        evals += int(loc.grad_evals.sum())
        best.grad_evals[rows] += loc.grad_evals
        better = loc.radius > value[rows]
        if better.any():
            idx = rows[better]
            value[idx] = loc.radius[better]
            best_m[idx], best_M[idx] = mR[better], MR[better]
            for f in dataclasses.fields(CertificateSolution):
                if f.name != "grad_evals":
                    getattr(best, f.name)[idx] = getattr(loc, f.name)[better]
        whole = loc.radius >= R
        sr, lo, hi = s[rows], s_lo[rows], s_hi[rows]
        lo = torch.where(whole, sr, lo)
        hi = torch.where(whole, hi, sr)
        s[rows] = torch.where(torch.isinf(hi), 2 * sr, 0.5 * (lo + hi))
        s_lo[rows], s_hi[rows] = lo, hi
    return best, best_m, best_M, evals


def _fn_rows(fn: MarginFn, rows: Tensor) -> MarginFn:
    """``fn`` restricted to the sub-batch ``rows``: row i of the sub-batch is row rows[i]."""
    return lambda x, r: fn(x, rows[r])


def _prepare(model, x, y):
    require_curvature(model.activation)
    x = model.check_input(x)
    B = x.shape[0]
    y = _labels(model, y, B, x.device)
    return x, y, B


def certify(model, x: Tensor, y: Tensor, targets: Union[str, Tensor] = "runner-up",
            bounds: Union[str, Tuple[Tensor, Tensor]] = "global", *, batch_size: int = 256,
            progress: Optional[bool] = None, max_evals: int = 100, tol: float = 1e-6,
            local_steps: int = 3) -> Certificate:
    """The Curvature-based Robustness Certificate (Definition 1, Theorem 1).

    .. math::
        \\|x^{(cert)} - x^{(0)}\\|:\\quad \\max_{0 \\le η < -1/m} \\min_x
        \\tfrac12\\|x - x^{(0)}\\|^2 + η\\,(z_y - z_t)(x)

    Guarantee: with ``bounds="global"`` (rigorous float64 bounds from
    :func:`curvature.global_bounds`), no input within l2 distance ``radius`` of x is classified
    as the target t (as any class other than y for ``targets="all"``), up to float64 rounding;
    this holds whatever the solver's accuracy (module docstring: the radius is read from the
    strong-convexity bound F_η(x̂) − ‖∇F_η(x̂)‖²/(2μ), never from a converged iterate). When the
    network misclassifies x (argmax ≠ y) nothing is certified: ``radius`` = 0 and
    ``misclassified`` is True. ``tight`` marks the certificates that equal the distance to the
    boundary (primal = dual).

    Targets: ``"runner-up"`` (default; the largest logit other than y, the paper's choice), a
    (B,) tensor (one target per input), or ``"all"``: the minimum over all t ≠ y. For "all"
    every target keeps a sound lower bound that is refined only while it is below the running
    minimum: f(x0)/Lip from a global Lipschitz bound (free), the runner-up solved fully, one
    gradient at x0 (the bound above at x̂ = x0, maximized over η), then full solves in
    increasing order of the bound, each stopping once it reaches the minimum. The targets left
    unrefined (pruned) keep bounds at least the minimum. About 1.8–2.5× the cost of
    "runner-up" (``benchmarks/duality.py``).

    Bounds: ``"global"`` (default), ``"local"`` (Table 6: bounds valid on a ball B(x0, R) from
    :func:`curvature.local_bounds`; certificate min(r_R, R) maximized over ``local_steps``
    balls R = r_g(1 + s) around the global radius r_g, s = 5% doubled while the whole ball is
    certified and bisected otherwise; never below the global certificate), or a tuple
    ``(m, M)`` of (C, C) tables indexed [y, t] that the caller guarantees (e.g. from
    :func:`curvature.all_pair_bounds`).

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation (computations use a
            float64 copy on x's device).
        x: inputs (B, D) (or (B, ...) with D entries), finite.
        y: true labels (B,), int64.
        targets: ``"runner-up"`` (default), ``"all"`` or a (B,) int64 tensor with t ≠ y.
        bounds: ``"global"`` (default), ``"local"`` or ``(m_table, M_table)``.
        batch_size: inputs per chunk (default 256).
        progress: tqdm bar over chunks; None (default) shows it when there is more than one.
        max_evals: gradient evaluations per (input, target) solve at most (default 100).
        tol: solver tolerance on |f| and on ‖x − x0 + η∇f‖ (default 1e-6).
        local_steps: balls tried with ``bounds="local"`` (default 3).

    Returns:
        :class:`Certificate` with (B,) fields on x's device, float64. Misclassified inputs:
        radius 0, ``target`` the predicted class (the given one for a tensor of targets),
        ``x_boundary`` = x, eta 0, m = M = NaN, not tight, not counted.

    Raises:
        NoCurvatureError: ReLU network.
        ValueError: NaN or wrongly shaped x, bad labels, a target equal to y, unknown
            ``targets`` or ``bounds``.

    Example:
        >>> cert = certify(model, x, y)                        # runner-up, global bounds
        >>> certified = cert.radius >= 1.58
        >>> cert_all = certify(model, x, y, targets="all")      # all classes
        >>> bool((cert_all.radius <= cert.radius + 1e-9).all())
        True
    """
    x, y, B = _prepare(model, x, y)
    C = model.num_classes
    mode = _check_bounds_arg(bounds)
    if isinstance(targets, str):
        if targets not in _TARGET_MODES:
            raise ValueError(f"targets={targets!r} is invalid: expected one of {list(_TARGET_MODES)} "
                             "or a (B,) tensor")
    else:
        targets = _labels(model, targets, B, x.device, "targets")
        if (targets == y).any():
            raise ValueError("targets must differ from y for every input (f = z_y − z_t ≡ 0)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model64 = _float64_model(model, x.device)
    job = _Job(model, model64, mode, _bound_tables(bounds, C, x.device) if mode == "given" else None,
               int(max_evals), float(tol), int(local_steps),
               _lipschitz_scale(model) if isinstance(targets, str) and targets == "all" else float("nan"))
    x64 = x.detach().to(torch.float64)
    chunks = [slice(i, min(i + int(batch_size), B)) for i in range(0, B, int(batch_size))] or [slice(0, 0)]
    iterator = chunks
    if progress or (progress is None and len(chunks) > 1):
        from tqdm.auto import tqdm
        iterator = tqdm(chunks, desc="certify", unit="batch")
    parts = []
    for sl in iterator:
        t_sl = targets if isinstance(targets, str) else targets[sl]
        parts.append(_certify_chunk(job, x64[sl], y[sl], t_sl))
    out = parts[0]
    if len(parts) > 1:
        fields = {}
        for f in dataclasses.fields(Certificate):
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "grad_evals":
                fields[f.name] = sum(vals)
            elif f.name == "bounds":
                fields[f.name] = vals[0]
            elif vals[0] is None:
                fields[f.name] = None
            else:
                fields[f.name] = torch.cat(vals)
        out = Certificate(**fields)
    return out


def _certify_chunk(job: _Job, x0: Tensor, y: Tensor, targets) -> Certificate:
    B, D = x0.shape
    C = job.model64.num_classes
    dev = x0.device
    with torch.no_grad():
        logits = job.model64(x0) if B else torch.zeros(0, C, dtype=x0.dtype, device=dev)
    pred = logits.argmax(1)
    mis = pred != y
    # defaults for misclassified inputs: nothing is solved
    if isinstance(targets, str):
        target = torch.where(mis, pred, runner_up(logits, y)) if B else y.clone()
    else:
        target = targets.clone()
    radius = torch.zeros(B, dtype=x0.dtype, device=dev)
    eta = torch.zeros_like(radius)
    xb = x0.clone()
    marg = (logits.gather(1, y[:, None]) - logits.gather(1, target[:, None]))[:, 0] if B else radius.clone()
    tight = torch.zeros(B, dtype=torch.bool, device=dev)
    paper = torch.zeros_like(radius)
    counted = torch.zeros_like(tight)
    m_out = torch.full_like(radius, float("nan"))
    M_out = torch.full_like(radius, float("nan"))
    per_target = None
    evals = 0
    ok = (~mis).nonzero()[:, 0]

    def store(idx, sol, m, M, t):
        radius[idx], eta[idx], xb[idx], marg[idx] = sol.radius, sol.eta, sol.x, sol.margin
        tight[idx], paper[idx], counted[idx] = sol.tight, sol.paper_radius, sol.paper_counted
        m_out[idx], M_out[idx], target[idx] = m, M, t

    if isinstance(targets, str) and targets == "all":
        per_target = torch.zeros(B, C, dtype=x0.dtype, device=dev)
        per_target[torch.arange(B, device=dev), y] = float("inf")
        if ok.numel():
            evals += _certify_all(job, x0, y, ok, logits, per_target, store)
    elif ok.numel():
        t_ok = target[ok]
        f0, g0 = margin_function(job.model64, y[ok], t_ok)(x0[ok], torch.arange(ok.numel(), device=dev))
        evals += ok.numel()
        sol, m, M, e = _solve_pairs(job, x0[ok], y[ok], t_ok, f0, g0)
        evals += e
        store(ok, sol, m, M, t_ok)
    return Certificate(radius=radius, target=target, eta=eta, x_boundary=xb, margin=marg,
                       tight=tight, paper_radius=paper, paper_counted=counted, misclassified=mis,
                       m=m_out, M=M_out, grad_evals=int(evals),
                       bounds=job.mode, radius_per_target=per_target)


_LIPSCHITZ_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lipschitz_scale(model) -> float:
    """g^(L−1) ∏_{I<L} ‖W^(I)‖₂ (float64 SVD, +1e-9 relative for rounding): for every x,
    ‖∇(z_y − z_t)(x)‖ ≤ scale · ‖W^(L)_y − W^(L)_t‖ (chain rule with |σ'| ≤ g). Cached per
    model while its weights stay equal."""
    weights = [w.detach() for w in model.weights[:-1]]
    hit = _LIPSCHITZ_CACHE.get(model)
    if hit is not None and len(hit[0]) == len(weights) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(hit[0], weights)):
        return hit[1]
    scale = 1.0
    for W in weights:
        scale *= model.activation.g * float(torch.linalg.matrix_norm(W.to(torch.float64), ord=2))
    scale *= 1 + 1e-9
    _LIPSCHITZ_CACHE[model] = ([w.clone() for w in weights], scale)
    return scale


def _certify_all(job: _Job, x0, y, ok, logits, per_target, store) -> int:
    """targets="all" for the correctly classified rows ``ok``; fills per_target; returns evals.

    Every target t keeps a sound lower bound on its radius, refined only while it is below the
    running minimum over targets: (0) f(x0)/Lip_t from a global Lipschitz bound (no gradient);
    (1) the runner-up is solved fully; (2) one gradient at x0 for each target still below the
    minimum gives the bound at x̂ = x0 (maximized over η); (3) the targets still below are
    solved in increasing order of that bound, each stopping once it reaches the minimum.
    """
    C = job.model64.num_classes
    dev = x0.device
    n = ok.numel()
    rows_n = torch.arange(n, device=dev)
    others = torch.arange(C, device=dev).expand(n, C)
    ts = others[others != y[ok, None]].reshape(n, C - 1)      # (n, C−1) targets per row
    ys = y[ok, None].expand(n, C - 1)
    xs = x0[ok]
    z = logits[ok]
    f0 = z.gather(1, y[ok, None]) - z.gather(1, ts)            # (n, C−1), z_y − z_t at x0
    WL = job.model64.weights[-1].detach()
    lip = job.lipschitz * (WL[ys] - WL[ts]).norm(dim=2)
    bound = f0.clamp_min(0) / lip
    current = torch.full((n,), float("inf"), dtype=x0.dtype, device=dev)
    solved = torch.zeros(n, C - 1, dtype=torch.bool, device=dev)
    g0 = torch.zeros(n, C - 1, xs.shape[1], dtype=x0.dtype, device=dev)
    have_g = torch.zeros_like(solved)
    evals = 0

    def gradients(r, c):                       # ∇f at x0 for the pairs (row r, column c)
        nonlocal evals
        f, g = margin_function(job.model64, y[ok[r]], ts[r, c])(xs[r], torch.arange(r.numel(), device=dev))
        evals += r.numel()
        g0[r, c], have_g[r, c] = g, True
        f0[r, c] = f
        return f, g

    def solve(r, c):
        sol, mr, Mr, e = _solve_pairs(job, xs[r], y[ok[r]], ts[r, c], f0[r, c], g0[r, c],
                                      stop_radius=current[r])
        nonlocal evals
        evals += e
        solved[r, c] = True
        bound[r, c] = torch.maximum(bound[r, c], sol.radius)
        better = sol.radius < current[r]
        if better.any():
            idx = r[better]
            current[idx] = sol.radius[better]
            sub = CertificateSolution(**{f.name: getattr(sol, f.name)[better]
                                         for f in dataclasses.fields(CertificateSolution)})
            store(ok[idx], sub, mr[better], Mr[better], ts[idx, c[better]])

    # (1) the runner-up (largest other logit = smallest z_y − z_t)
    col = f0.argmin(1)
    gradients(rows_n, col)
    solve(rows_n, col)
    # (2) one gradient per target whose Lipschitz bound is below the minimum
    need = (~solved) & (bound < current[:, None])
    r, c = need.nonzero(as_tuple=True)
    if r.numel():
        gradients(r, c)
        m, M = _pair_bounds(job, y[ok[r]], ts[r, c], x0)
        cheap, _ = _best_bound(torch.zeros_like(g0[r, c]), f0[r, c], g0[r, c], m, _eta_max(m))
        bound[r, c] = torch.maximum(bound[r, c], (2 * cheap).clamp_min(0).sqrt())
    # (3) full solves in increasing order of the bound, while it is below the minimum
    while True:
        pending = torch.where(solved, torch.full_like(bound, float("inf")), bound)
        val, col = pending.min(1)
        todo = (val < current).nonzero()[:, 0]
        if todo.numel() == 0:
            break
        solve(todo, col[todo])
    per_target[ok[:, None], ts] = bound
    return evals


def attack(model, x: Tensor, y: Tensor, rho, targets: Union[str, Tensor] = "runner-up",
           bounds: Union[str, Tuple[Tensor, Tensor]] = "global", *, steps: int = 10) -> AttackResult:
    """The Curvature-based Attack (Definition 2, Theorem 2): CRT's training attack.

    .. math::
        x^{(attack)}:\\quad \\max_{η \\ge -m} \\min_x (z_y - z_t)(x) +
        \\tfrac{η}{2}\\big(\\|x - x^{(0)}\\|^2 - ρ^2\\big)

    ``steps`` model steps (module docstring), ``steps + 1`` gradient evaluations per batch, in
    the model's dtype, without autograd graphs through the weights (gradients w.r.t. x only;
    parameters' ``.grad`` untouched; the result is detached). ‖x − x0‖ ≤ ρ always. Theorem 2:
    where ``tight`` (on the sphere, converged), ``margin`` is the exact minimum of the margin over
    the ball. Otherwise x is still a point of the ball with a low margin.

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation.
        x: inputs (B, D), finite. y: labels (B,), int64.
        rho: ρ > 0, float or (B,) tensor.
        targets: ``"runner-up"`` (default: the largest logit other than y at x) or a (B,) tensor.
        bounds: ``"global"`` (default; rigorous, cached per (y, t) pair by the curvature module),
            ``"estimate"`` (``curvature.global_bounds(..., exact=False)``: a fast warm-started
            Lanczos estimate from below, the choice inside training), or ``(m, M)``: (B,)
            tensors for these pairs, or (C, C) tables indexed [y, t].
        steps: model steps (default 10; the authors' schedule is 300 gradients, see
            :func:`attack_reference`).

    Returns:
        :class:`AttackResult` (x in the model's dtype).

    Raises:
        NoCurvatureError: ReLU network. ValueError: NaN, shapes, ρ ≤ 0 or NaN, unknown targets
        or bounds, a target equal to y.

    Example:
        >>> adv = attack(model, x, y, 1.58, bounds="estimate")       # inside a training step
        >>> loss = torch.nn.functional.cross_entropy(model(adv.x), y)
    """
    x, y, B = _prepare(model, x, y)
    p = next(model.parameters())
    x = x.detach().to(p.dtype)
    rho_t = attacks.check_radius(rho, B, x.dtype, x.device)
    if isinstance(targets, str):
        if targets != "runner-up":
            raise ValueError(f"targets={targets!r} is invalid: expected 'runner-up' or a (B,) tensor")
        with torch.no_grad():
            t = runner_up(model(x), y) if B else y.clone()
    else:
        t = _labels(model, targets, B, x.device, "targets")
        if (t == y).any():
            raise ValueError("targets must differ from y for every input")
    if isinstance(bounds, str):
        if bounds not in ("global", "estimate"):
            raise ValueError(f"bounds={bounds!r} is invalid: expected 'global', 'estimate' or (m, M)")
        from . import curvature
        m, M = curvature.global_bounds(model, y, t, exact=bounds == "global")
    elif isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        m, M = (torch.as_tensor(b, device=x.device) for b in bounds)
        C = model.num_classes
        if m.shape == (C, C) and M.shape == (C, C) and m.dim() == 2:
            m, M = m[y, t], M[y, t]
        elif m.shape != (B,) or M.shape != (B,):
            raise ValueError(f"bounds (m, M) must be (B,) = ({B},) tensors or ({C}, {C}) tables")
    else:
        raise ValueError(f"bounds must be 'global', 'estimate' or a tuple (m, M), got {bounds!r}")
    m, M = m.to(x.dtype), M.to(x.dtype)
    res = solve_attack(margin_function(model, y, t), x, m, M, rho_t, steps=steps)
    return dataclasses.replace(res, target=t)
