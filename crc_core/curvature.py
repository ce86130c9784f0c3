"""Curvature bounds of the margin f = z_y − z_t: Theorems 3 and 4, the refined bound, local bounds.

Lemma 1 (:mod:`crc_core.hessian`) writes the Hessian of the margin as a sum over hidden layers,

.. math::
    \\nabla^2_x f = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}(c^{(I)}) B^{(I)}, \\quad
    c^{(I)} = (F^{(L,I)}_y - F^{(L,I)}_t) \\odot σ''(z^{(I)}).

This module bounds its eigenvalues, :math:`m \\le λ_{\\min}(\\nabla^2_x f)` and
:math:`λ_{\\max}(\\nabla^2_x f) \\le M`, for every x (global) or every x in an l2 ball (local):

- ``theorem3_bounds``: Theorem 3 (L = 2): M = λmax(P), m = λmin(N), P, N = W1ᵀ diag(p | n) W1.
- ``theorem4_bound``: Theorem 4 (any L): K = h Σ_I (r^(I))² max_j S^(L,I)_j; m = −K, M = K.
- ``refined_bounds``: Theorem 3's sign split applied to every term of Lemma 1 (any L ≥ 2);
  equals Theorem 3 for L = 2 and is never above K (derivation in
  :mod:`crc_core.bound_recursions`, which holds the one recursion that every bound here, the
  local bounds and the training estimate share).
- ``global_bounds``: the tightest sound one (``"tightest"``) or any of the above by name.
- ``all_pair_bounds``: all C(C−1) ordered (y, t) pairs at once, as (C, C) tables — compute
  them once per model and pass them on (``duality.certify(..., bounds=tables)``).
- ``local_bounds``: the refined bound with σ', σ'' ranges over an l2 ball (Table 6,
  :mod:`crc_core.local_bounds`), never looser than the global one.
- ``empirical_curvature``: K_lb of Figure 1, from exact Hessian eigenvalues at data points.
- Re-exported from :mod:`crc_core.curvature_estimate` (training only, not bounds):
  ``curvature_penalty`` (Theorem 4's K differentiable in the weights, equation (7)) and
  ``CurvatureEstimator`` (the CRT attack's warm-started estimate of (m, M)).

**Rigor.** Every bound returned here is computed in float64 from the weights alone and is a
true bound: spectral norms are SVD values plus a relative margin, λmax of each
:math:`W^T \\operatorname{diag}(d) W` is a dense ``eigvalsh`` value or a Lanczos estimate
*verified* by a Cholesky factorization, plus a safety margin, and the interval arithmetic is
widened for rounding (:mod:`crc_core.verified_linalg`). Nothing is cached: the same call gives
the same answer whatever ran before it. The only estimate is ``global_bounds(...,
exact=False)`` (a cold-start :class:`~crc_core.curvature_estimate.CurvatureEstimator`), an
estimate *from below* for training; certificates must use the default ``exact=True``.

Example:
    >>> from crc_core import MLP, curvature
    >>> model = MLP([784, 64, 10], activation="softplus")
    >>> y, t = torch.tensor([3, 1]), torch.tensor([5, 7])
    >>> m, M = curvature.global_bounds(model, y, t)      # Theorem 3 for L = 2
    >>> bool((m <= 0).all() and (M >= 0).all())
    True
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from . import checks, hessian
from .activations import Activation
from .bound_recursions import (METHODS, refined_recursion, rigorous_extremes, sigma1_global,
                               theorem4_recursion, weights64)
from .curvature_estimate import CurvatureEstimator, curvature_penalty
from .local_bounds import ball_refined_bounds
from .verified_linalg import margin_factor, spectral_norm_upper

Tensor = torch.Tensor

__all__ = [
    "global_bounds",
    "local_bounds",
    "all_pair_bounds",
    "theorem3_bounds",
    "theorem4_bound",
    "refined_bounds",
    "curvature_penalty",
    "CurvatureEstimator",
    "empirical_curvature",
    "EmpiricalCurvature",
    "METHODS",
]

_F64 = torch.float64


def _smooth_finite(model) -> Activation:
    """The model's activation if it has curvature and its weights are finite."""
    act = checks.smooth_model(model)
    checks.finite_weights(model)
    return act


# ------------------------------------------------------------------------------------------------
# Rigorous bounds for a list of pairs
def _exact_pairs(model, act: Activation, method: str, ys: Tensor, ts: Tensor) -> Tuple[Tensor, Tensor]:
    """Rigorous (m, M) for the given pairs (ys, ts), method ``"theorem3"``, ``"theorem4"`` or
    ``"refined"``."""
    Ws = weights64(model)
    L = len(Ws)
    w = Ws[-1][ys] - Ws[-1][ts]
    if method == "theorem4":
        norms = [spectral_norm_upper(W) for W in Ws[:-1]]
        Kb = theorem4_recursion(Ws, norms, w, act.g, act.h) * (1 + margin_factor(max(model.widths)))
        return -Kb, Kb
    # theorem3 (L = 2) and refined share the code: for L = 2 they are the same bound.
    norms = [spectral_norm_upper(W) for W in Ws[:-2]]
    lo1, hi1 = sigma1_global(act)

    def const(v):
        return torch.tensor(v, dtype=_F64, device=w.device)

    d1 = [(const(lo1), const(hi1))] * (L - 1)
    d2 = [(const(act.h_L), const(act.h_U))] * (L - 1)
    gbar = [const(max(abs(lo1), abs(hi1)))] * (L - 1)
    return refined_recursion(Ws, norms, w, d1, d2, gbar, rigorous_extremes(Ws))


def _pair_bounds(model, act: Activation, method: str, y: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
    """Rigorous (m, M) per sample, computing each distinct (y, t) pair once."""
    L, C = model.num_layers, model.num_classes
    if method == "theorem3" and L != 2:
        raise ValueError(f"Theorem 3 is for two-layer networks (L = 2), this one has L = {L}; "
                         "use method='refined' or 'theorem4'")
    if method == "tightest":
        if L == 2:
            return _pair_bounds(model, act, "theorem3", y, t)
        m1, M1 = _pair_bounds(model, act, "refined", y, t)
        m2, M2 = _pair_bounds(model, act, "theorem4", y, t)
        return torch.maximum(m1, m2), torch.minimum(M1, M2)
    uniq, inv = torch.unique(y * C + t, return_inverse=True)
    m, M = _exact_pairs(model, act, method, uniq // C, uniq % C)
    return m[inv], M[inv]


# ------------------------------------------------------------------------------------------------
# Global bounds
def global_bounds(model, y, t, method: str = "tightest", *, exact: bool = True, iters: int = 20,
                  tol: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """Global curvature bounds of f = z_y − z_t, valid for every input x.

    .. math::
        m\\, I \\preceq \\nabla^2_x (z^{(L)}_y - z^{(L)}_t)(x) \\preceq M\\, I
        \\quad \\forall x \\in \\mathbb{R}^D

    Methods: ``"theorem3"`` (Theorem 3, L = 2 only), ``"theorem4"`` (m = −K, M = K),
    ``"refined"`` (Theorem 3's sign split on every term of Lemma 1) and ``"tightest"``:
    Theorem 3 for L = 2; for L ≥ 3 the elementwise tighter of refined and Theorem 4 (both sound:
    max of the m's, min of the M's).

    With ``exact=True`` (default) the bounds are rigorous (float64, verified eigenvalues and
    SVD norms, safety margin; module docstring), each distinct (y, t) pair computed once per
    call. Nothing is cached: a caller that needs many batches of the same model computes
    :func:`all_pair_bounds` once and passes the tables on. Cost for all 90 pairs (1 CPU thread):
    about 5–10 s for a 2×1024 net, 25 s for a 3×1024 net (see benchmarks/curvature.py).

    With ``exact=False`` the result is an **estimate from below** by a fresh
    :class:`~crc_core.curvature_estimate.CurvatureEstimator` (cold start, ``iters``, ``tol``):
    *not* a bound, never for a certificate. Training keeps one estimator per run instead, so
    that its warm start persists (and is checkpointed).

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation.
        y: true labels (B,), int64 (an int is broadcast).
        t: targets (B,), int64, t ≠ y.
        method: one of ``"tightest"``, ``"theorem3"``, ``"theorem4"``, ``"refined"``.
        exact: rigorous bounds (True, default) or a fast estimate (False).
        iters: maximum Lanczos / power-iteration steps of the estimate (default 20).
        tol: stopping tolerance of the estimate (default 1e-4; 0 runs all ``iters``).

    Returns:
        (m, M), each (B,), float64 on the model's device.

    Raises:
        NoCurvatureError: for a ReLU network.
        ValueError: bad labels (out of range, y == t, shape), unknown method, Theorem 3 with
            L ≠ 2, non-finite weights, iters < 1.

    Example:
        >>> model = MLP([784, 64, 64, 10], activation="sigmoid")
        >>> m, M = global_bounds(model, torch.tensor([0]), torch.tensor([1]))
        >>> bool(m <= 0 <= M)
        True
    """
    if not exact:
        return CurvatureEstimator(iters=iters, tol=tol).bounds(model, y, t, method)
    act = _smooth_finite(model)
    method = checks.one_of(method, "method", METHODS)
    y, t = checks.margin_labels(model, y, t)
    return _pair_bounds(model, act, method, y, t)


def all_pair_bounds(model, method: str = "tightest") -> Tuple[Tensor, Tensor]:
    """Rigorous global bounds for all C(C−1) ordered pairs (y, t) at once.

    .. math::
        m_{yt} \\le \\lambda_{\\min}\\big(\\nabla^2_x (z_y - z_t)\\big), \\quad
        \\lambda_{\\max}\\big(\\nabla^2_x (z_y - z_t)\\big) \\le M_{yt} \\quad \\forall x

    The tables to compute once per model and pass on to every certificate of it
    (``duality.certify(model, x, y, bounds=(m, M))``).

    Args:
        model: an MLP with a smooth activation.
        method: as in :func:`global_bounds` (default ``"tightest"``).

    Returns:
        (m, M), each (C, C) float64 on the model's device, row y, column t, NaN on the diagonal.
        Entry [y, t] equals ``global_bounds(model, y, t, method)``.

    Example:
        >>> m, M = all_pair_bounds(MLP([784, 64, 10], "softplus"))
        >>> m.shape
        torch.Size([10, 10])
    """
    _smooth_finite(model)
    method = checks.one_of(method, "method", METHODS)
    C = model.num_classes
    device = model.weights[0].device
    classes = torch.arange(C, device=device)
    yy, tt = torch.meshgrid(classes, classes, indexing="ij")
    off = yy != tt
    m_tab = torch.full((C, C), float("nan"), dtype=_F64, device=device)
    M_tab = m_tab.clone()
    m, M = global_bounds(model, yy[off], tt[off], method)
    m_tab[off], M_tab[off] = m, M
    return m_tab, M_tab


def theorem3_bounds(model, y, t) -> Tuple[Tensor, Tensor]:
    """Theorem 3 (two-layer nets): M = λmax(P), m = λmin(N).

    .. math::
        P = W^{(1)T} \\operatorname{diag}(p) W^{(1)},\\ N = W^{(1)T} \\operatorname{diag}(n) W^{(1)},
        \\ p_i = \\max(w_i h_L, w_i h_U),\\ n_i = \\min(w_i h_L, w_i h_U),\\ w = W^{(2)}_y - W^{(2)}_t

    Args:
        model: an MLP with L = 2 and a smooth activation.
        y, t: (B,) int64, t ≠ y.

    Returns:
        (m, M), each (B,), float64, rigorous (verified eigenvalues plus a safety margin).

    Raises:
        ValueError: if L ≠ 2 (use :func:`refined_bounds`), or for bad labels.
    """
    checks.smooth_model(model)
    if model.num_layers != 2:
        raise ValueError(f"Theorem 3 is for two-layer networks (L = 2), this one has "
                         f"L = {model.num_layers}; use refined_bounds or theorem4_bound")
    return global_bounds(model, y, t, "theorem3")


def theorem4_bound(model, y, t) -> Tensor:
    """Theorem 4 for the margin: K ≥ |λ(∇²_x f(x))| for all x.

    .. math::
        K = h \\sum_{I=1}^{L-1} (r^{(I)})^2 \\max_j S^{(L,I)}_j,\\quad r^{(1)} = \\|W^{(1)}\\|,\\
        r^{(I)} = g \\|W^{(I)}\\| r^{(I-1)},\\ S^{(L,L-1)} = |w|,\\
        S^{(L,I)} = g\\, S^{(L,I+1)} |W^{(I+1)}|

    with w = W^(L)_y − W^(L)_t (the paper's margin version), exact float64 spectral norms and a
    relative safety margin of max(1e-9, 8un²).

    Args:
        model: an MLP with a smooth activation, any L ≥ 2.
        y, t: (B,) int64, t ≠ y.

    Returns:
        K, (B,) float64; the global bounds are m = −K, M = K.
    """
    return global_bounds(model, y, t, "theorem4")[1]


def refined_bounds(model, y, t) -> Tuple[Tensor, Tensor]:
    """The refined bound: Theorem 3's sign split applied to every term of Lemma 1 (any L ≥ 2).

    .. math::
        M = \\lambda_{\\max}(P_1) + \\sum_{I=2}^{L-1} (g\\, r^{(I-1)})^2 \\lambda_{\\max}(P_I),\\quad
        m = \\lambda_{\\min}(N_1) + \\sum_{I=2}^{L-1} (g\\, r^{(I-1)})^2 \\lambda_{\\min}(N_I)

    (derivation and soundness argument in :mod:`crc_core.bound_recursions`). Equal to Theorem 3
    for L = 2; never above Theorem 4's K.

    Args:
        model: an MLP with a smooth activation.
        y, t: (B,) int64, t ≠ y.

    Returns:
        (m, M), each (B,), float64, rigorous.
    """
    return global_bounds(model, y, t, "refined")


# ------------------------------------------------------------------------------------------------
# Local bounds
def local_bounds(model, x: Tensor, y, t, radius, *,
                 global_pair_bounds: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """Curvature bounds valid on the l2 ball around each input (Table 6).

    .. math::
        m_b \\le \\lambda_{\\min}(\\nabla^2 f(x')),\\ \\lambda_{\\max}(\\nabla^2 f(x')) \\le M_b
        \\quad \\forall x' : \\|x' - x_b\\|_2 \\le R_b

    L = 2 (the paper's local Theorem 3): z^(1)_k(x') ∈ [z^(1)_k(x) − ‖W^(1)_k‖R,
    z^(1)_k(x) + ‖W^(1)_k‖R]; σ'' over each interval exactly (``activation.d2_range``); the
    diagonals p, n are w_k times that range (sign split), and M = λmax(W1ᵀdiag(p)W1),
    m = λmin(W1ᵀdiag(n)W1) per image (verified float64 eigenvalues; p, n may have mixed signs).

    L ≥ 3: the refined bound with per-neuron ranges: intervals of z^(J) propagated layer by layer
    (interval arithmetic intersected with a per-neuron Lipschitz bound), per-neuron σ' ranges in
    the φ intervals, per-layer max |σ'| in place of g, per-neuron σ'' ranges in place of
    [h_L, h_U] (:mod:`crc_core.local_bounds`). Cost: one verified eigenproblem per image for P
    and N of every hidden layer.

    The result is never looser than :func:`global_bounds` ("tightest"): the elementwise tighter
    of the two is returned. A certificate that uses these bounds must stay inside the ball.

    Args:
        model: an MLP with a smooth activation.
        x: inputs (B, D) (or (B, ...) with D entries), finite, on the model's device.
        y, t: (B,) int64, t ≠ y (an int is broadcast).
        radius: R > 0, a float or a (B,) tensor.
        global_pair_bounds: the rigorous global (m, M) of these pairs, (B,) each, if the caller
            already holds them (e.g. ``(m_tab[y, t], M_tab[y, t])`` from
            :func:`all_pair_bounds`); computed here otherwise (default None).

    Returns:
        (m, M), each (B,), float64 on the model's device.

    Raises:
        NoCurvatureError: ReLU. ValueError: NaN x, bad shapes or labels, radius ≤ 0 / NaN / inf.
    """
    act = _smooth_finite(model)
    x = checks.check_inputs(model, x, same_device=True)
    B = x.shape[0]
    device = model.weights[0].device
    y, t = checks.margin_labels(model, y, t, batch=B, device=device)
    R = checks.radius(radius, B, _F64, device, name="radius")
    if global_pair_bounds is None:
        mg, Mg = _pair_bounds(model, act, "tightest", y, t)
    else:
        mg, Mg = (torch.as_tensor(b, dtype=_F64, device=device) for b in global_pair_bounds)
        if mg.shape != (B,) or Mg.shape != (B,):
            raise ValueError(f"global_pair_bounds must be two ({B},) tensors, got shapes "
                             f"{tuple(mg.shape)} and {tuple(Mg.shape)}")
    if B == 0:
        return mg, Mg
    m, M = ball_refined_bounds(model, act, x.detach(), y, t, R)
    return torch.maximum(m, mg), torch.minimum(M, Mg)


# ------------------------------------------------------------------------------------------------
# Figure 1's lower bound
class EmpiricalCurvature(NamedTuple):
    """K_lb of Figure 1: ``mean`` over the (y, t) pairs present of ``table`` (C, C), the largest
    per-pair eigenvalue (NaN where a pair is absent)."""

    mean: float
    table: Tensor


def empirical_curvature(model, X: Tensor, Y: Tensor, t=None, *, which: str = "max",
                        batch_size: int = 32) -> EmpiricalCurvature:
    """Figure 1's K_lb: exact Hessian eigenvalues of f = z_y − z_t at data points.

    .. math::
        K_{lb} = \\operatorname{mean}_{(y,t)} \\max_{x:\\,(y(x), t(x)) = (y, t)}
        \\lambda_{\\max}\\big(\\nabla^2_x (z_y - z_t)(x)\\big)

    For each image, y is its label and t the runner-up class (largest logit other than y)
    unless ``t`` is given. Hessians from :func:`crc_core.hessian.margin_hessian` (Lemma 1),
    eigenvalues by float64 ``eigvalsh``; cost ≈ one D×D eigendecomposition per image.

    Args:
        model: an MLP with a smooth activation.
        X: images (N, D).
        Y: labels (N,) int64.
        t: optional targets (N,) int64 (default: runner-up classes).
        which: ``"max"`` (the largest eigenvalue, as in the paper; default) or ``"abs"`` (the
            largest |eigenvalue|).
        batch_size: images per Hessian batch (default 32).

    Returns:
        EmpiricalCurvature(mean: float, table: (C, C) float64 with NaN for absent pairs).
    """
    _smooth_finite(model)
    which = checks.one_of(which, "which", ("max", "abs"))
    batch_size = checks.count(batch_size, "batch_size", 1)
    X = checks.check_inputs(model, X)
    N = X.shape[0]
    Y = checks.labels(model, Y, N, X.device, "Y", match="X")
    C = model.num_classes
    dtype = model.weights[0].dtype
    if t is None:
        with torch.no_grad():
            t = checks.runner_up(model(X.to(dtype)), Y)
    Y, t = checks.margin_labels(model, Y, t, batch=N)
    vals = torch.empty(N, dtype=_F64, device=X.device)
    for s in range(0, N, batch_size):
        sl = slice(s, min(N, s + batch_size))
        H = hessian.margin_hessian(model, X[sl].to(dtype), Y[sl], t[sl]).to(_F64)
        ev = torch.linalg.eigvalsh(H)
        vals[sl] = ev[:, -1] if which == "max" else torch.maximum(ev[:, -1], -ev[:, 0])
    table = torch.full((C * C,), -float("inf"), dtype=_F64, device=X.device)
    table = table.scatter_reduce(0, Y * C + t, vals, reduce="amax", include_self=True)
    table[torch.isinf(table)] = float("nan")
    table = table.reshape(C, C)
    present = ~torch.isnan(table)
    mean = float(table[present].mean()) if present.any() else float("nan")
    return EmpiricalCurvature(mean, table)
