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
``exact=True``. The final evaluation is in float64, where softplus is the exact log(1 + e^z)
that the bounds assume (:mod:`crc_core.activations`); rounding (relative ~1e-16) is not tracked.
With local bounds valid on the ball B(x^(0), R) and every x̂ inside it, the same bound holds for
the minimum over the ball, and points outside the ball are at distance ≥ R, so min(r, R) is
certified.

**Where things are.** The sound bound above: :mod:`crc_core.dual_bound`. The solvers
(Definitions 1 and 2 on any margin function, their stopping and ``tight`` rules):
:mod:`crc_core.dual_solvers`. The authors' fixed schedules, kept for comparison:
:mod:`crc_core.reference_schedules`. Their application to (input, target) pairs of a network
(f = z_y − z_t in float64 under global, given or local curvature bounds):
:mod:`crc_core.pair_certificates`. This module is the public face: :func:`certify` (runner-up,
given targets, or the minimum over all classes) and :func:`attack`; the public names of those
modules are importable from here as well.

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
from typing import Optional, Tuple, Union

import torch

from . import checks, curvature
from .dual_solvers import (ATTACK_KKT_RTOL, ATTACK_MU_FLOOR, ATTACK_TIGHT_RTOL, ETA_CAP,
                           MU_FLOOR, PAPER_RESIDUAL_TOL, TIGHT_TOL, AttackResult,
                           CertificateSolution, MarginFn, best_dual_bound, certificate_eta_max,
                           dual_lower_bound, solve_attack, solve_certificate)
from .pair_certificates import (LOCAL_FIRST_STEP, PairCertificates, PairSolver, margin_function,
                                take_rows)
from .reference_schedules import attack_reference, certify_reference

Tensor = torch.Tensor

__all__ = [
    "Certificate",
    "certify",
    "attack",
    "margin_function",
    "LOCAL_FIRST_STEP",
    # re-exported from crc_core.pair_certificates, dual_solvers and reference_schedules
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
            ``TIGHT_TOL``, the stationarity residual ‖x_boundary − x0 + η∇f‖ ≤ ``TIGHT_TOL``
            and η strictly inside (0, η_max) (and x_boundary strictly inside the ball for
            local bounds; :func:`~crc_core.dual_solvers.certificate_tight`). Then ``radius``
            equals the distance to the boundary of t.
        paper_radius: (B,) the authors' value sqrt(max(0, ‖x − x0‖² + 2ηf(x))) at the final
            iterate: equal to ``radius`` when the inner solve converged, otherwise not a bound.
        paper_counted: (B,) bool, the authors' rule ‖η∇f(x) + (x − x0)‖ < 1e-5.
        misclassified: (B,) bool, argmax z ≠ y at x0 (radius 0, nothing solved).
        m, M: (B,) float64 curvature bounds used for the reported certificate: with
            ``bounds="global"`` those of :func:`curvature.global_bounds` for (y, target)
            (rigorous; one call computes every pair the certification solves), with a pair of
            tables their entries [y, target], with ``"local"`` the local bounds of the ball
            that gave the radius (the global ones if none did better).
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
# Arguments (the shared policy of crc_core.checks)
# ================================================================================================

def _bounds_word(bounds, allowed: Tuple[str, ...], what: str) -> Optional[str]:
    """The word of a ``bounds`` argument (None for a pair); ``"estimate"`` refused by name where a
    certificate is made."""
    if isinstance(bounds, str) and bounds == "estimate" and "estimate" not in allowed:
        raise ValueError(f"bounds='estimate' is refused by {what}: the Lanczos estimate of the "
                         "curvature is a value from below, not a bound, and a certificate built on "
                         "it would not be sound; use 'global' or 'local' (rigorous), or a pair "
                         "(m, M) known to be bounds")
    if isinstance(bounds, str) or not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        return checks.bounds(bounds, allowed=allowed)        # a word, or raises
    return None


def _float64_model(model, device):
    """The model in float64 (a copy unless it already is), without gradients on its weights."""
    p = next(model.parameters())
    if p.dtype == torch.float64 and p.device == device:
        return model
    return copy.deepcopy(model).to(device=device, dtype=torch.float64).requires_grad_(False)


def _prepare(model, x, y) -> Tuple[Tensor, Tensor, int]:
    """A smooth model's inputs (B, D) and labels (B,) int64 (ints broadcast)."""
    checks.smooth_model(model)
    x = checks.check_inputs(model, x)
    B = x.shape[0]
    return x, checks.labels(model, y, B, x.device), B


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
        y: true labels (B,), int64 (an int is broadcast).
        targets: ``"runner-up"`` (default), ``"all"`` or a (B,) int64 tensor with t ≠ y.
        bounds: ``"global"`` (default), ``"local"`` or ``(m_table, M_table)``. Never
            ``"estimate"``: the training-time Lanczos estimate is not a bound.
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
            ``targets`` or ``bounds``, ``bounds="estimate"``, tables with NaN or m > M.

    Example:
        >>> cert = certify(model, x, y)                        # runner-up, global bounds
        >>> certified = cert.radius >= 1.58
        >>> cert_all = certify(model, x, y, targets="all")      # all classes
        >>> bool((cert_all.radius <= cert.radius + 1e-9).all())
        True
    """
    x, y, B = _prepare(model, x, y)
    C = model.num_classes
    word = _bounds_word(bounds, ("global", "local"), "certify")
    given = None if word else checks.bounds(bounds, allowed=(), classes=C, device=x.device)
    targets = checks.targets(model, y, targets, allowed=("runner-up", "all"))
    batch_size = checks.count(batch_size, "batch_size", 1)
    model64 = _float64_model(model, x.device)
    x64 = x.detach().to(torch.float64)
    chunks = [slice(i, min(i + batch_size, B)) for i in range(0, B, batch_size)] or [slice(0, 0)]
    with torch.no_grad():
        logits = [model64(x64[sl]) if sl.stop > sl.start else torch.zeros(0, C, dtype=x64.dtype,
                                                                          device=x.device)
                  for sl in chunks]
    tables = given if given is not None else _rigorous_tables(model, y, torch.cat(logits), targets)
    solver = PairSolver(model, model64, word or "given", tables,
                        max_evals=checks.count(max_evals, "max_evals", 1), tol=float(tol),
                        local_steps=checks.count(local_steps, "local_steps", 0))
    lipschitz = _lipschitz_scale(model) if isinstance(targets, str) and targets == "all" else None
    iterator = range(len(chunks))
    if progress or (progress is None and len(chunks) > 1):
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="certify", unit="batch")
    parts = [_certify_chunk(solver, x64[chunks[i]], y[chunks[i]], logits[i],
                            targets if isinstance(targets, str) else targets[chunks[i]], lipschitz)
             for i in iterator]
    return parts[0] if len(parts) == 1 else _concatenate(parts)


def _rigorous_tables(model, y: Tensor, logits: Tensor, targets) -> Tuple[Tensor, Tensor]:
    """The rigorous global bounds of the pairs a certification will solve, as (C, C) tables.

    The pairs (y, t) of the correctly classified inputs: t the runner-up, the given target, or
    every t ≠ y for ``targets="all"``. One call of :func:`curvature.global_bounds` computes each
    distinct pair once; the other entries are NaN (never read).

    Args:
        model: the caller's model. y: (B,) labels. logits: (B, C) float64 logits at x.
        targets: ``"runner-up"``, ``"all"`` or (B,) targets.

    Returns:
        ``(m, M)``, (C, C) float64 on the logits' device.
    """
    C = logits.shape[1]
    ok = logits.argmax(1) == y
    if isinstance(targets, str) and targets == "all":
        labels = torch.unique(y[ok])
        ys = labels.repeat_interleave(C)
        ts = torch.arange(C, device=y.device).repeat(labels.numel())
        ys, ts = ys[ys != ts], ts[ys != ts]
    else:
        ys = y[ok]
        ts = checks.runner_up(logits[ok], ys) if isinstance(targets, str) else targets[ok]
    m_tab = torch.full((C, C), float("nan"), dtype=torch.float64, device=logits.device)
    M_tab = m_tab.clone()
    if ys.numel():
        m, M = curvature.global_bounds(model, ys, ts)
        m_tab[ys, ts], M_tab[ys, ts] = m.to(m_tab), M.to(M_tab)
    return m_tab, M_tab


def _concatenate(parts) -> Certificate:
    """One :class:`Certificate` from those of consecutive chunks."""
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
    return Certificate(**fields)


def _certify_chunk(solver: PairSolver, x0: Tensor, y: Tensor, logits: Tensor, targets,
                   lipschitz: Optional[float]) -> Certificate:
    """One chunk of :func:`certify`: x0 (B, D) float64, y (B,), its float64 logits (B, C),
    targets a word or (B,); ``lipschitz`` the scale of :func:`_lipschitz_scale` for
    ``targets="all"``."""
    B, D = x0.shape
    C = solver.model64.num_classes
    dev = x0.device
    pred = logits.argmax(1)
    mis = pred != y
    # defaults for misclassified inputs: nothing is solved
    if isinstance(targets, str):
        target = torch.where(mis, pred, checks.runner_up(logits, y)) if B else y.clone()
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
            best, t_ok, per_target_ok, evals = _certify_all(solver, x0[ok], y[ok], logits[ok], lipschitz)
            per_target[ok] = per_target_ok
    elif ok.numel():
        t_ok = target[ok]
        first = margin_function(solver.model64, y[ok], t_ok)(x0[ok], torch.arange(ok.numel(), device=dev))
        best = solver.solve(x0[ok], y[ok], t_ok, first)
        evals = ok.numel() + best.evals
    if best is not None:
        sol = best.sol
        radius[ok], eta[ok], xb[ok], marg[ok] = sol.radius, sol.eta, sol.x, sol.margin
        tight[ok], paper[ok], counted[ok] = sol.tight, sol.paper_radius, sol.paper_counted
        m_out[ok], M_out[ok], target[ok] = best.m, best.M, t_ok
    return Certificate(radius=radius, target=target, eta=eta, x_boundary=xb, margin=marg,
                       tight=tight, paper_radius=paper, paper_counted=counted, misclassified=mis,
                       m=m_out, M=M_out, grad_evals=int(evals),
                       bounds=solver.bounds, radius_per_target=per_target)


# ================================================================================================
# The minimum over all classes
# ================================================================================================

def _lipschitz_scale(model) -> float:
    """g^(L−1) ∏_{I<L} ‖W^(I)‖₂ (float64 SVD, +1e-9 relative for rounding): for every x,
    ‖∇(z_y − z_t)(x)‖ ≤ scale · ‖W^(L)_y − W^(L)_t‖ (chain rule with |σ'| ≤ g)."""
    scale = 1.0
    for W in model.weights[:-1]:
        scale *= model.activation.g * float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2))
    return scale * (1 + 1e-9)


def _certify_all(solver: PairSolver, xs: Tensor, y: Tensor, logits: Tensor,
                 lipschitz: float) -> Tuple[PairCertificates, Tensor, Tensor, int]:
    """``targets="all"`` for n correctly classified inputs xs (n, D) with labels y (n,).

    Every target t keeps a sound lower bound on its radius, refined only while it is below the
    running minimum over targets: (0) f(x0)/Lip_t from the global Lipschitz bound ``lipschitz``
    · ‖W^(L)_y − W^(L)_t‖ (no gradient); (1) the runner-up is solved fully; (2) one gradient at
    x0 for each target still below the minimum gives the bound at x̂ = x0 (maximized over η);
    (3) the targets still below are solved in increasing order of that bound, each stopping
    once it reaches the minimum.

    Returns:
        ``(best, target, per_target, evals)``: the certificates of the minimizing targets
        (n rows), those targets (n,), the (n, C) sound radius per target (inf at y) and the
        gradient evaluations.
    """
    C = solver.model64.num_classes
    dev = xs.device
    n = xs.shape[0]
    rows_n = torch.arange(n, device=dev)
    others = torch.arange(C, device=dev).expand(n, C)
    ts = others[others != y[:, None]].reshape(n, C - 1)       # (n, C−1) targets per row
    f0 = logits.gather(1, y[:, None]) - logits.gather(1, ts)  # (n, C−1), z_y − z_t at x0
    WL = solver.model64.weights[-1].detach()
    bound = f0.clamp_min(0) / (lipschitz * (WL[y[:, None].expand(n, C - 1)] - WL[ts]).norm(dim=2))
    solved = torch.zeros(n, C - 1, dtype=torch.bool, device=dev)
    g0 = torch.zeros(n, C - 1, xs.shape[1], dtype=xs.dtype, device=dev)
    evals = 0

    def gradients(r, c) -> int:               # f, ∇f at x0 for the pairs (row r, column c)
        f0[r, c], g0[r, c] = margin_function(solver.model64, y[r], ts[r, c])(
            xs[r], torch.arange(r.numel(), device=dev))
        return r.numel()

    # (1) the runner-up (largest other logit = smallest z_y − z_t), solved fully
    col = f0.argmin(1)
    evals += gradients(rows_n, col)
    pairs = solver.solve(xs, y, ts[rows_n, col], (f0[rows_n, col], g0[rows_n, col]))
    evals += pairs.evals
    solved[rows_n, col] = True
    bound[rows_n, col] = torch.maximum(bound[rows_n, col], pairs.sol.radius)
    best = pairs._replace(m=pairs.m.clone(), M=pairs.M.clone())   # rows replaced below
    target = ts[rows_n, col]
    current = pairs.sol.radius.clone()
    # (2) one gradient per target whose Lipschitz bound is below the minimum
    need = (~solved) & (bound < current[:, None])
    r, c = need.nonzero(as_tuple=True)
    if r.numel():
        evals += gradients(r, c)
        m, _ = solver.curvature(y[r], ts[r, c], xs)
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
        pairs = solver.solve(xs[r], y[r], ts[r, c], (f0[r, c], g0[r, c]), stop_radius=current[r])
        evals += pairs.evals
        solved[r, c] = True
        bound[r, c] = torch.maximum(bound[r, c], pairs.sol.radius)
        better = pairs.sol.radius < current[r]
        if better.any():
            idx = r[better]
            current[idx] = pairs.sol.radius[better]
            take_rows(best.sol, idx, pairs.sol, better)
            best.m[idx], best.M[idx], target[idx] = pairs.m[better], pairs.M[better], ts[idx, c[better]]
    per_target = torch.full((n, C), float("inf"), dtype=xs.dtype, device=dev)
    per_target.scatter_(1, ts, bound)
    return best, target, per_target, evals


# ================================================================================================
# The attack
# ================================================================================================

def attack(model, x: Tensor, y: Tensor, rho, targets: Union[str, Tensor] = "runner-up",
           bounds: Union[str, Tuple[Tensor, Tensor]] = "global", *, steps: int = 10) -> AttackResult:
    """The Curvature-based Attack (Definition 2, Theorem 2): CRT's training attack.

    .. math::
        x^{(attack)}:\\quad \\max_{η \\ge -m} \\min_x (z_y - z_t)(x) +
        \\tfrac{η}{2}\\big(\\|x - x^{(0)}\\|^2 - ρ^2\\big)

    ``steps`` model steps (:func:`~crc_core.dual_solvers.solve_attack`), ``steps + 1`` gradient
    evaluations per batch, in the model's dtype, without autograd graphs through the weights
    (gradients w.r.t. x only; parameters' ``.grad`` untouched; the result is detached).
    ‖x − x0‖ ≤ ρ always. Theorem 2: where ``tight`` (on the sphere, converged), ``margin`` is the
    exact minimum of the margin over the ball. Otherwise x is still a point of the ball with a
    low margin.

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation.
        x: inputs (B, D), finite. y: labels (B,), int64 (an int is broadcast).
        rho: ρ > 0, float or (B,) tensor.
        targets: ``"runner-up"`` (default: the largest logit other than y at x) or a (B,) tensor.
        bounds: ``"global"`` (default; rigorous, cached per (y, t) pair by the curvature module),
            ``"estimate"`` (``curvature.global_bounds(..., exact=False)``: a fast warm-started
            Lanczos estimate from below, the choice inside training; the attack's point stays in
            the ball whatever m and M are), or ``(m, M)``: floats or (B,) tensors for these
            pairs, or (C, C) tables indexed [y, t].
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
    rho_t = checks.radius(rho, B, x.dtype, x.device, name="rho")
    t = checks.targets(model, y, targets, allowed=("runner-up",))
    if isinstance(t, str):
        with torch.no_grad():
            t = checks.runner_up(model(x), y) if B else y.clone()
    word = _bounds_word(bounds, ("global", "estimate"), "attack")
    if word is not None:
        m, M = curvature.global_bounds(model, y, t, exact=word == "global")
    else:
        m, M = checks.bounds(bounds, allowed=(), batch=B, classes=model.num_classes, device=x.device)
        if m.dim() == 2:
            m, M = m[y, t], M[y, t]
    m, M = m.to(x.dtype), M.to(x.dtype)
    res = solve_attack(margin_function(model, y, t), x, m, M, rho_t, steps=steps)
    return dataclasses.replace(res, target=t)
