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

**The solvers** (Definitions 1 and 2 on any margin function, the sound bound, the stopping and
``tight`` rules) are in :mod:`crc_core.dual_solvers`; the authors' fixed schedules, kept for
comparison, in :mod:`crc_core.reference_schedules`. This module applies them to networks:
f = z_y − z_t of an :class:`~crc_core.models.MLP`, evaluated in float64, with the curvature
bounds of :mod:`crc_core.curvature`, the runner-up or the minimum over all classes, and local
bounds on a few balls. Every public name of those two modules is importable from here as well.

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
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import torch

from . import attacks, curvature
from .activations import require_curvature
from .attacks import runner_up
from .dual_solvers import (ATTACK_KKT_RTOL, ATTACK_MU_FLOOR, ATTACK_TIGHT_RTOL, ETA_CAP,
                           MU_FLOOR, PAPER_RESIDUAL_TOL, TIGHT_TOL, AttackResult,
                           CertificateSolution, MarginFn, best_dual_bound, certificate_eta_max,
                           dual_lower_bound, solve_attack, solve_certificate)
from .reference_schedules import attack_reference, certify_reference

Tensor = torch.Tensor

__all__ = [
    "Certificate",
    "certify",
    "attack",
    "margin_function",
    "LOCAL_FIRST_STEP",
    # re-exported from crc_core.dual_solvers and crc_core.reference_schedules
    "CertificateSolution",
    "AttackResult",
    "MarginFn",
    "solve_certificate",
    "solve_attack",
    "dual_lower_bound",
    "certify_reference",
    "attack_reference",
    "MU_FLOOR",
    "ETA_CAP",
    "ATTACK_MU_FLOOR",
    "TIGHT_TOL",
    "PAPER_RESIDUAL_TOL",
    "ATTACK_TIGHT_RTOL",
    "ATTACK_KKT_RTOL",
]

#: Local bounds: the first ball tried is R = (1 + LOCAL_FIRST_STEP) × the global radius.
LOCAL_FIRST_STEP = 0.05

_BOUND_MODES = ("global", "local")
_TARGET_MODES = ("runner-up", "all")


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


# ================================================================================================
# The margin of a network
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
# Arguments
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


def _prepare(model, x, y):
    require_curvature(model.activation)
    x = model.check_input(x)
    B = x.shape[0]
    y = _labels(model, y, B, x.device)
    return x, y, B


# ================================================================================================
# Pair solves: global bounds, given tables, local bounds
# ================================================================================================

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


class _Best(NamedTuple):
    """The reported certificate of k inputs: the solution of the minimizing (or only) target, the
    curvature bounds used for it and the target."""

    sol: CertificateSolution
    m: Tensor
    M: Tensor
    target: Tensor


def _take_rows(best: CertificateSolution, idx: Tensor, new: CertificateSolution,
               mask: Tensor) -> None:
    """best[idx] = new[mask] for every per-row field but ``grad_evals`` (in place)."""
    for f in dataclasses.fields(CertificateSolution):
        if f.name != "grad_evals":
            getattr(best, f.name)[idx] = getattr(new, f.name)[mask]


def _pair_bounds(job: _Job, y: Tensor, t: Tensor, like: Tensor) -> Tuple[Tensor, Tensor]:
    """Global (m, M) of the pairs (y, t): the given tables or curvature.global_bounds."""
    if job.mode == "given":
        m, M = job.tables[0][y, t], job.tables[1][y, t]
    else:
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
            _take_rows(best, idx, loc, better)
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


# ================================================================================================
# The certificate
# ================================================================================================

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
    """One chunk of :func:`certify`: x0 (B, D) float64, y (B,), targets a word or (B,)."""
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
    best = None
    if isinstance(targets, str) and targets == "all":
        per_target = torch.zeros(B, C, dtype=x0.dtype, device=dev)
        per_target[torch.arange(B, device=dev), y] = float("inf")
        if ok.numel():
            best, per_target_ok, e = _certify_all(job, x0[ok], y[ok], logits[ok])
            per_target[ok] = per_target_ok
            evals += e
    elif ok.numel():
        t_ok = target[ok]
        f0, g0 = margin_function(job.model64, y[ok], t_ok)(x0[ok], torch.arange(ok.numel(), device=dev))
        evals += ok.numel()
        sol, m, M, e = _solve_pairs(job, x0[ok], y[ok], t_ok, f0, g0)
        evals += e
        best = _Best(sol, m, M, t_ok)
    if best is not None:
        sol = best.sol
        radius[ok], eta[ok], xb[ok], marg[ok] = sol.radius, sol.eta, sol.x, sol.margin
        tight[ok], paper[ok], counted[ok] = sol.tight, sol.paper_radius, sol.paper_counted
        m_out[ok], M_out[ok], target[ok] = best.m, best.M, best.target
    return Certificate(radius=radius, target=target, eta=eta, x_boundary=xb, margin=marg,
                       tight=tight, paper_radius=paper, paper_counted=counted, misclassified=mis,
                       m=m_out, M=M_out, grad_evals=int(evals),
                       bounds=job.mode, radius_per_target=per_target)


def _lipschitz_scale(model) -> float:
    """g^(L−1) ∏_{I<L} ‖W^(I)‖₂ (float64 SVD, +1e-9 relative for rounding): for every x,
    ‖∇(z_y − z_t)(x)‖ ≤ scale · ‖W^(L)_y − W^(L)_t‖ (chain rule with |σ'| ≤ g)."""
    scale = 1.0
    for W in model.weights[:-1]:
        scale *= model.activation.g * float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2))
    return scale * (1 + 1e-9)


def _certify_all(job: _Job, xs: Tensor, y: Tensor, logits: Tensor) -> Tuple[_Best, Tensor, int]:
    """``targets="all"`` for n correctly classified inputs xs (n, D) with labels y (n,).

    Every target t keeps a sound lower bound on its radius, refined only while it is below the
    running minimum over targets: (0) f(x0)/Lip_t from a global Lipschitz bound (no gradient);
    (1) the runner-up is solved fully; (2) one gradient at x0 for each target still below the
    minimum gives the bound at x̂ = x0 (maximized over η); (3) the targets still below are
    solved in increasing order of that bound, each stopping once it reaches the minimum.

    Returns:
        ``(best, per_target, evals)``: the certificate of the minimizing target per input,
        the (n, C) sound radius per target (inf at y) and the gradient evaluations.
    """
    C = job.model64.num_classes
    dev = xs.device
    n = xs.shape[0]
    rows_n = torch.arange(n, device=dev)
    others = torch.arange(C, device=dev).expand(n, C)
    ts = others[others != y[:, None]].reshape(n, C - 1)       # (n, C−1) targets per row
    f0 = logits.gather(1, y[:, None]) - logits.gather(1, ts)  # (n, C−1), z_y − z_t at x0
    WL = job.model64.weights[-1].detach()
    lip = job.lipschitz * (WL[y[:, None].expand(n, C - 1)] - WL[ts]).norm(dim=2)
    bound = f0.clamp_min(0) / lip
    solved = torch.zeros(n, C - 1, dtype=torch.bool, device=dev)
    g0 = torch.zeros(n, C - 1, xs.shape[1], dtype=xs.dtype, device=dev)
    evals = 0

    def gradients(r, c) -> int:               # f, ∇f at x0 for the pairs (row r, column c)
        f0[r, c], g0[r, c] = margin_function(job.model64, y[r], ts[r, c])(
            xs[r], torch.arange(r.numel(), device=dev))
        return r.numel()

    # (1) the runner-up (largest other logit = smallest z_y − z_t), solved fully
    col = f0.argmin(1)
    evals += gradients(rows_n, col)
    sol, m, M, e = _solve_pairs(job, xs, y, ts[rows_n, col], f0[rows_n, col], g0[rows_n, col])
    evals += e
    solved[rows_n, col] = True
    bound[rows_n, col] = torch.maximum(bound[rows_n, col], sol.radius)
    best = _Best(sol, m.clone(), M.clone(), ts[rows_n, col])
    current = sol.radius.clone()
    # (2) one gradient per target whose Lipschitz bound is below the minimum
    need = (~solved) & (bound < current[:, None])
    r, c = need.nonzero(as_tuple=True)
    if r.numel():
        evals += gradients(r, c)
        m, M = _pair_bounds(job, y[r], ts[r, c], xs)
        cheap, _ = best_dual_bound(torch.zeros_like(g0[r, c]), f0[r, c], g0[r, c], m,
                                   certificate_eta_max(m))
        bound[r, c] = torch.maximum(bound[r, c], (2 * cheap).clamp_min(0).sqrt())
    # (3) full solves in increasing order of the bound, while it is below the minimum
    while True:
        pending = torch.where(solved, torch.full_like(bound, float("inf")), bound)
        val, col = pending.min(1)
        r = (val < current).nonzero()[:, 0]
        if r.numel() == 0:
            break
        c = col[r]
        sol, m, M, e = _solve_pairs(job, xs[r], y[r], ts[r, c], f0[r, c], g0[r, c],
                                    stop_radius=current[r])
        evals += e
        solved[r, c] = True
        bound[r, c] = torch.maximum(bound[r, c], sol.radius)
        better = sol.radius < current[r]
        if better.any():
            idx = r[better]
            current[idx] = sol.radius[better]
            _take_rows(best.sol, idx, sol, better)
            best.m[idx], best.M[idx], best.target[idx] = m[better], M[better], ts[idx, c[better]]
    per_target = torch.full((n, C), float("inf"), dtype=xs.dtype, device=dev)
    per_target.scatter_(1, ts, bound)
    return best, per_target, evals


# ================================================================================================
# The attack
# ================================================================================================

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
