"""Curvature bounds of the margin f = z_y − z_t: Theorems 3 and 4, a refined bound, local bounds.

Lemma 1 (:mod:`crc_core.hessian`) writes the Hessian of the margin as a sum over hidden layers,

.. math::
    \\nabla^2_x f = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}(c^{(I)}) B^{(I)}, \\quad
    c^{(I)} = (F^{(L,I)}_y - F^{(L,I)}_t) \\odot σ''(z^{(I)}),

with :math:`B^{(I)} = \\partial z^{(I)}/\\partial x` and :math:`F^{(L,I)} = \\partial z^{(L)}/
\\partial a^{(I)}`. This module bounds its eigenvalues, :math:`m \\le λ_{\\min}(\\nabla^2_x f)` and
:math:`λ_{\\max}(\\nabla^2_x f) \\le M`, for every x (global) or every x in an l2 ball (local):

- ``theorem3_bounds``: Theorem 3 (L = 2): M = λmax(P), m = λmin(N), P, N = W1ᵀ diag(p | n) W1.
- ``theorem4_bound``: Theorem 4 (any L): K = h Σ_I (r^(I))² max_j S^(L,I)_j; m = −K, M = K.
- ``refined_bounds``: Theorem 3's sign split applied to every term of Lemma 1 (any L ≥ 2);
  equals Theorem 3 for L = 2 and is never above K (derivation below).
- ``global_bounds``: the tightest sound one (``"tightest"``) or any of the above by name; also a
  fast Lanczos *estimate* (``exact=False``) for training only.
- ``local_bounds``: the refined bound with σ', σ'' ranges over an l2 ball (Table 6), never
  looser than the global one.
- ``all_pair_bounds``: all C(C−1) ordered (y, t) pairs at once, as (C, C) tables.
- ``curvature_penalty``: Theorem 4's K, differentiable in the weights (one power-iteration step
  per call on the model's persistent buffers), for γ-regularized training and CRT.
- ``empirical_curvature``: K_lb of Figure 1, from exact Hessian eigenvalues at data points.

**The refined bound.** Write :math:`c^{(I)} \\in [n^{(I)}, p^{(I)}]` elementwise for all x.
For I = L−1 the row :math:`F^{(L,L-1)}_y - F^{(L,L-1)}_t = w = W^{(L)}_y - W^{(L)}_t` does not
depend on x, so :math:`c_k = w_k σ''(z_k) \\in [\\min(w_k h_L, w_k h_U), \\max(w_k h_L, w_k h_U)]`
(Theorem 3's diagonals). For I < L−1 the row is
:math:`φ^{(I)} = w \\operatorname{diag}(σ'(z^{(L-1)})) W^{(L-1)} \\cdots \\operatorname{diag}
(σ'(z^{(I+1)})) W^{(I+1)}`; with σ' ∈ [0, g] (σ is increasing) interval arithmetic through this
product gives :math:`φ^{(I)} \\in [φ^{lo}, φ^{hi}]`, a subset of Theorem 4's
:math:`[-S^{(L,I)}, S^{(L,I)}]`, and :math:`c = φ \\odot σ''` lies in the interval product of
:math:`[φ^{lo}, φ^{hi}]` and :math:`[h_L, h_U]`. Then, with
:math:`P_I = W^{(I)T} \\operatorname{diag}(p^{(I)}) W^{(I)}` and
:math:`N_I = W^{(I)T} \\operatorname{diag}(n^{(I)}) W^{(I)}` (matrices in the a^(I−1) space),
:math:`N_I \\preceq W^{(I)T}\\operatorname{diag}(c^{(I)})W^{(I)} \\preceq P_I`. For I = 1,
B^(1) = W^(1), so the term lies in [λmin(N_1), λmax(P_1)]. For I ≥ 2,
:math:`B^{(I)} = W^{(I)} A` with :math:`A = \\operatorname{diag}(σ'(z^{(I-1)})) B^{(I-1)}`,
:math:`\\|A\\| \\le g\\, r^{(I-1)}` (r as in Theorem 4), and for any symmetric Q,
:math:`v^T A^T Q A v \\le λ_{\\max}(Q)^+ \\|Av\\|^2 \\le λ_{\\max}(Q)^+ (g r^{(I-1)})^2 \\|v\\|^2`
(and symmetrically for λmin): the positive part is what makes the scaling valid, so P_I and N_I
are built from :math:`p^+` and :math:`n^-` for I ≥ 2 (they are PSD / NSD anyway for the global
bound). Weyl's inequality sums the terms:

.. math::
    M = \\lambda_{\\max}(P_1) + \\sum_{I \\ge 2} (g\\, r^{(I-1)})^2 \\lambda_{\\max}(P_I), \\quad
    m = \\lambda_{\\min}(N_1) + \\sum_{I \\ge 2} (g\\, r^{(I-1)})^2 \\lambda_{\\min}(N_I).

For L = 2 this is Theorem 3 exactly. Since :math:`\\max(p_k, -n_k) \\le h S^{(L,I)}_k`,
:math:`\\lambda_{\\max}(P_I) \\le h \\|W^{(I)}\\|^2 \\max_k S^{(L,I)}_k`, so every term is at most
Theorem 4's :math:`h (r^{(I)})^2 \\max_j S^{(L,I)}_j`: refined ≤ K. (Bounding the I < L−1
rows by ±S^(L,I), as Theorem 4 does, is also valid but looser: the intervals are inside ±S.)

**Rigor.** For certification, eigenvalues and spectral norms are computed in float64 and never
by a bare power iteration (which underestimates). λmax of each :math:`W^T \\operatorname{diag}
(d) W` is (i) estimated by Lanczos with full reorthogonalization, then (ii) *verified*: a
Cholesky factorization of :math:`μI - A` with μ = estimate + 1e-7·(spectral radius) that
completes proves λmax(A) < μ up to rounding (Higham, *Accuracy and Stability*, Thm 10.5: the
computed factor satisfies R̂ᵀR̂ = A + ΔA, ‖ΔA‖ ≤ γ_{n+1} tr(A)); if it fails, μ is raised
(slack 1e-5, then 1e-3) and finally the exact ``torch.linalg.eigvalsh`` is used. Matrices up to
192 × 192 go straight to eigvalsh; spectral norms use ``torch.linalg.matrix_norm(ord=2)``
(SVD). Each bound then receives the safety margin
:math:`δ = \\max(10^{-9}, 8 u n^2)(|λ| + \\|d\\|_\\infty \\|W\\|_F^2)`, u = 2⁻⁵³, n the largest
dimension, which exceeds the rounding errors of forming the matrix (≤ γ_n ‖d‖∞‖W‖_F²), of the
factorization or eigensolver (≤ c·n·u·n·|μ|) and of the float64 interval arithmetic (which is
also widened outward by γ_n times the absolute sums). Relative margins of the same size are
added to spectral norms and to K. All returned bounds are float64 on the model's device.

**Estimate mode.** ``global_bounds(..., exact=False)`` runs batched Lanczos (in the weights'
dtype) on the PSD parts :math:`W^T\\operatorname{diag}(p^+)W` and
:math:`W^T\\operatorname{diag}(n^-)W`, warm-started from the previous call's Ritz vectors (kept
per (y, t) in a side table, not in the model), and power iteration on ‖W^(I)‖ started from the
model's buffers (read only). Ritz values are estimates *from below*: not bounds, for the training
attack only.

Example:
    >>> from crc_core import MLP, curvature
    >>> model = MLP([784, 64, 10], activation="softplus")
    >>> y, t = torch.tensor([3, 1]), torch.tensor([5, 7])
    >>> m, M = curvature.global_bounds(model, y, t)      # Theorem 3 for L = 2
    >>> bool((m <= 0).all() and (M >= 0).all())
    True
"""
from __future__ import annotations

import math
import weakref
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from .activations import Activation, require_curvature

Tensor = torch.Tensor

__all__ = [
    "global_bounds",
    "local_bounds",
    "all_pair_bounds",
    "theorem3_bounds",
    "theorem4_bound",
    "refined_bounds",
    "curvature_penalty",
    "empirical_curvature",
    "EmpiricalCurvature",
    "METHODS",
]

METHODS: Tuple[str, ...] = ("tightest", "theorem3", "theorem4", "refined")

_F64 = torch.float64
_U = 2.0 ** -53                       # unit roundoff of float64
_DIRECT_EIG_MAX_DIM = 192             # matrices up to this size go straight to eigvalsh
_LANCZOS_STEPS = 40                   # Lanczos steps for the estimate that Cholesky then verifies
_VERIFY_TAUS = (1e-7, 1e-5, 1e-3)     # relative slack of μ above the Lanczos estimate
_CHUNK_BYTES = 256 * 2 ** 20          # memory for a chunk of explicit (n, n) float64 matrices


# ================================================================================================
# Argument checks
# ================================================================================================

def _check_model(model) -> Activation:
    """The model's activation if it has curvature; finite weights."""
    if not hasattr(model, "weights") or not hasattr(model, "activation"):
        raise TypeError(f"model must be a crc_core.MLP, got {type(model).__name__}")
    act = require_curvature(model.activation)
    for i, w in enumerate(model.weights, start=1):
        # A NaN / inf entry makes the sum non-finite; only then look closer (the sum may also
        # overflow on huge finite weights).
        if not bool(torch.isfinite(w.detach().sum())) and not bool(torch.isfinite(w).all()):
            raise ValueError(f"W^({i}) contains NaN or infinite values: no curvature bound exists")
    return act


def _as_labels(labels, name: str, device) -> Tensor:
    if isinstance(labels, bool):
        raise TypeError(f"{name} must be an integer tensor of shape (B,), got a bool")
    if isinstance(labels, int):
        labels = torch.tensor([labels])
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype (int64), got {labels.dtype}")
    if labels.dim() == 0:
        labels = labels.reshape(1)
    if labels.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.int64)


def _check_pairs(model, y, t, batch: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """y, t as int64 (B,) on the model's device; in range, y ≠ t; B = ``batch`` if given."""
    device = model.weights[0].device
    y = _as_labels(y, "y", device)
    t = _as_labels(t, "t", device)
    if y.shape != t.shape:
        if y.numel() == 1:
            y = y.expand_as(t)
        elif t.numel() == 1:
            t = t.expand_as(y)
        else:
            raise ValueError(f"y and t must have the same shape (B,), got {tuple(y.shape)} "
                             f"and {tuple(t.shape)}")
    if batch is not None and y.shape[0] != batch:
        if y.shape[0] == 1:
            y, t = y.expand(batch), t.expand(batch)
        else:
            raise ValueError(f"y and t must have shape ({batch},) to match x, got {tuple(y.shape)}")
    classes = model.num_classes
    for name, lab in (("y", y), ("t", t)):
        if lab.numel() and (lab.min() < 0 or lab.max() >= classes):
            raise ValueError(
                f"{name} must lie in [0, {classes - 1}] (the model has {classes} classes), "
                f"got values in [{int(lab.min())}, {int(lab.max())}]")
    same = y == t
    if same.any():
        first = int(same.nonzero()[0, 0])
        raise ValueError(
            f"y and t must differ for every sample (f = z_y - z_t would be identically 0); "
            f"y == t == {int(y[first])} at index {first}")
    return y.contiguous(), t.contiguous()


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: expected one of {list(METHODS)}")
    return method


def _check_radius(radius, batch: int, device) -> Tensor:
    if isinstance(radius, Tensor):
        r = radius.detach().to(device=device, dtype=_F64)
        if r.dim() == 0:
            r = r.expand(batch)
        if r.shape != (batch,):
            raise ValueError(f"radius must be a float or a tensor of shape ({batch},), "
                             f"got {tuple(r.shape)}")
    else:
        try:
            r = torch.full((batch,), float(radius), dtype=_F64, device=device)
        except (TypeError, ValueError):
            raise TypeError(
                f"radius must be a float or a tensor, got {type(radius).__name__}") from None
    if torch.isnan(r).any() or (r <= 0).any() or torch.isinf(r).any():
        raise ValueError(f"radius must be finite and > 0, got values in "
                         f"[{float(r.min())}, {float(r.max())}]")
    return r


# ================================================================================================
# Rigorous linear algebra (float64)
# ================================================================================================

def _margin_factor(n: int) -> float:
    """Relative size of the rounding safety margin for dimension n (see the module docstring)."""
    return max(1e-9, 8.0 * _U * n * n)


def _spectral_norm_upper(W: Tensor) -> Tensor:
    """A rigorous upper bound on ‖W‖₂: the float64 SVD value plus a relative margin."""
    W = W.detach().to(_F64)
    return torch.linalg.matrix_norm(W, ord=2) * (1 + _margin_factor(max(W.shape)))


def _widen(lo: Tensor, hi: Tensor, rel: float = 4 * _U) -> Tuple[Tensor, Tensor]:
    pad = rel * torch.maximum(lo.abs(), hi.abs())
    return lo - pad, hi + pad


def _iprod(alo, ahi, blo, bhi, rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """The interval product [alo, ahi]·[blo, bhi] (elementwise, broadcasting)."""
    c = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    lo, hi = c.amin(0), c.amax(0)
    return _widen(lo, hi) if rigorous else (lo, hi)


def _imatvec(ulo: Tensor, uhi: Tensor, W: Tensor, rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """{u W : u ∈ [ulo, uhi]} ⊂ [lo, hi] for row vectors u (K, n) and W (n, m).

    Midpoint-radius form (exact for a point matrix): (mid W) ± (rad |W|). In rigorous mode the
    result is widened by 2(n+2)u·(|mid| + rad)|W| + 4u|mid W|, which covers the float64 rounding
    of the midpoint, the radius and both products.
    """
    mid = 0.5 * (ulo + uhi)
    rad = 0.5 * (uhi - ulo)
    Wabs = W.abs()
    center = mid @ W
    if rigorous:
        spread = (mid.abs() + rad * (1 + 4 * _U)) @ Wabs
        width = rad @ Wabs * (1 + 4 * _U) + (2.0 * (W.shape[0] + 2) * _U) * spread \
            + 4 * _U * center.abs()
    else:
        width = rad @ Wabs
    return center - width, center + width


def _chunks(total: int, n: int, extra: int = 1):
    per = max(1, int(_CHUNK_BYTES // max(1, 8 * n * n * extra)))
    for s in range(0, total, per):
        yield slice(s, min(total, s + per))


def _lanczos(op, K: int, n: int, steps: int, size: Tensor, device) -> Tuple[Tensor, Tensor, Tensor]:
    """Ritz estimates (λmin, λmax) of K symmetric operators of size n, and a breakdown flag.

    Batched Lanczos with full reorthogonalization; ``op`` maps (K, n) to (K, n), one GEMM pair
    per step for all operators; ``size`` (K,) bounds the spectral radii (for the breakdown test).
    Deterministic start vectors.
    """
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(K, n, generator=gen, dtype=_F64).to(device)
    q = q / q.norm(dim=1, keepdim=True)
    Q = torch.zeros(steps, K, n, dtype=_F64, device=device)
    alpha = torch.zeros(K, steps, dtype=_F64, device=device)
    beta = torch.zeros(K, steps, dtype=_F64, device=device)
    broke = torch.zeros(K, dtype=torch.bool, device=device)
    Q[0] = q
    for j in range(steps):
        v = op(q)
        alpha[:, j] = (q * v).sum(1)
        if j == steps - 1:
            break
        basis = Q[: j + 1]
        v = v - torch.einsum("jk,jkm->km", torch.einsum("jkm,km->jk", basis, v), basis)
        b = v.norm(dim=1)
        tiny = b <= 1e-10 * size
        broke |= tiny
        beta[:, j] = torch.where(tiny, torch.zeros_like(b), b)
        q = torch.where(tiny[:, None], torch.zeros_like(v), v / b.clamp_min(1e-300)[:, None])
        Q[j + 1] = q
    T = (torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1)
         + torch.diag_embed(beta[:, :-1], -1))
    ev = torch.linalg.eigvalsh(T)
    return ev[:, 0], ev[:, -1], broke


def _quad_lmax(W: Tensor, D: Tensor) -> Tensor:
    """Rigorous upper bounds of λmax(Wᵀ diag(Dₖ) W) for each row Dₖ (K, N); W (N, M) float64.

    Rows are deduplicated; sign-definite rows (Dₖ ≥ 0) use the N×N form
    diag(√d) W Wᵀ diag(√d) (same nonzero spectrum) when that is cheaper. Returns (K,) float64.
    """
    K = D.shape[0]
    if K == 0:
        return torch.zeros(0, dtype=_F64, device=D.device)
    uniq, inv = torch.unique(D, dim=0, return_inverse=True)
    return _quad_lmax_unique(W, uniq)[inv]


def _quad_lmax_unique(W: Tensor, D: Tensor) -> Tensor:
    N, M = W.shape
    K = D.shape[0]
    out = torch.empty(K, dtype=_F64, device=D.device)
    fro2 = (W * W).sum()
    scale = D.abs().amax(1) * fro2
    nonneg = (D >= 0).all(1)
    n_space_cheaper = N ** 3 / 3 < 2 * N * M * M + M ** 3 / 3
    use_n = nonneg & n_space_cheaper
    G0 = None
    for space_n, rows in ((True, use_n.nonzero().flatten()), (False, (~use_n).nonzero().flatten())):
        if rows.numel() == 0:
            continue
        Dr = D[rows]
        dim = N if space_n else M
        if space_n:
            if G0 is None:
                G0 = W @ W.t()
            S = Dr.sqrt()

            def build(sl, S=S):
                return S[sl, :, None] * G0 * S[sl, None, :]

            def make_op(sl, S=S):
                Ss = S[sl]
                return lambda X: Ss * ((Ss * X) @ G0)
        else:
            Wt = W.t()

            def build(sl, Dr=Dr, Wt=Wt):
                return (Wt * Dr[sl, None, :]) @ W

            def make_op(sl, Dr=Dr, Wt=Wt):
                Ds = Dr[sl]
                return lambda X: ((X @ Wt) * Ds) @ W

        res = torch.empty(rows.numel(), dtype=_F64, device=D.device)
        if dim <= _DIRECT_EIG_MAX_DIM:
            for sl in _chunks(rows.numel(), dim):
                res[sl] = torch.linalg.eigvalsh(build(sl))[:, -1]
        else:
            steps = max(2, min(_LANCZOS_STEPS, dim - 1))
            est_lo = torch.empty_like(res)
            est_hi = torch.empty_like(res)
            broke = torch.empty(rows.numel(), dtype=torch.bool, device=D.device)
            for s in range(0, rows.numel(), 128):
                sl = slice(s, min(rows.numel(), s + 128))
                est_lo[sl], est_hi[sl], broke[sl] = _lanczos(
                    make_op(sl), sl.stop - sl.start, dim, steps, scale[rows][sl], D.device)
            rho = torch.maximum(est_lo.abs(), est_hi.abs())
            eye = torch.eye(dim, dtype=_F64, device=D.device)
            for sl in _chunks(rows.numel(), dim, extra=2):
                A = build(sl)
                pending = ~broke[sl] & (rho[sl] > 0)
                val = torch.full((A.shape[0],), float("nan"), dtype=_F64, device=D.device)
                for tau in _VERIFY_TAUS:
                    if not pending.any():
                        break
                    mu = est_hi[sl] + tau * rho[sl]
                    idx = pending.nonzero().flatten()
                    info = torch.linalg.cholesky_ex(mu[idx, None, None] * eye - A[idx]).info
                    ok = idx[info == 0]
                    val[ok] = mu[ok]
                    pending[ok] = False
                need = torch.isnan(val).nonzero().flatten()
                if need.numel():
                    val[need] = torch.linalg.eigvalsh(A[need])[:, -1]
                res[sl] = val
        out[rows] = res
    return out + _margin_factor(max(N, M)) * (out.abs() + scale)


def _quad_extremes(W: Tensor, P: Tensor, Nn: Tensor, clamp: bool) -> Tuple[Tensor, Tensor]:
    """(lower bound of λmin(Wᵀdiag(n)W), upper bound of λmax(Wᵀdiag(p)W)) per row.

    With ``clamp`` the PSD / NSD parts p⁺, n⁻ are used and the results are ≥ 0 / ≤ 0, as the
    outer-factor scaling of the I ≥ 2 terms requires.
    """
    if clamp:
        P, Nn = P.clamp(min=0), Nn.clamp(max=0)
    K = P.shape[0]
    both = _quad_lmax(W, torch.cat([P, -Nn], 0))
    lmax, lmin = both[:K], -both[K:]
    if clamp:
        lmax, lmin = lmax.clamp(min=0), lmin.clamp(max=0)
    return lmin, lmax


# ================================================================================================
# The bounds (float64, rigorous) for a list of pairs or images
# ================================================================================================

def _weights64(model) -> List[Tensor]:
    return [w.detach().to(_F64) for w in model.weights]


def _sigma1_global(act: Activation) -> Tuple[float, float]:
    """Global range of σ': [0, g] for an increasing σ (softplus, sigmoid, tanh), else [−g, g]."""
    inf = torch.tensor(float("inf"), dtype=_F64)
    lo, _ = act.d1_range(-inf, inf)
    return (0.0 if float(lo) >= -1e-9 else -act.g), act.g


def _refined_core(Ws: List[Tensor], norms: List[Tensor], w: Tensor, d1, d2, gbar,
                  rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """The refined bound (module docstring) for K rows.

    Args:
        Ws: [W^(1) … W^(L)].
        norms: upper bounds of ‖W^(I)‖ for I = 1 … L−2 (scalars).
        w: (K, N_{L-1}) margin rows W^(L)_y − W^(L)_t.
        d1, d2: per hidden layer J = 1 … L−1, (lo, hi) ranges of σ', σ'' broadcastable to
            (K, N_J).
        gbar: per hidden layer, (K,) or scalar bounds of |σ'|.
    Returns:
        m, M (K,).
    """
    L = len(Ws)
    K = w.shape[0]
    m = torch.zeros(K, dtype=w.dtype, device=w.device)
    M = torch.zeros(K, dtype=w.dtype, device=w.device)
    # r^(1) = ‖W^(1)‖, r^(I) = gbar_{I-1} ‖W^(I)‖ r^(I-1)  (bounds of ‖B^(I)‖).
    r = [None, norms[0] if L > 2 else None]
    for I in range(2, L - 1):
        r.append(gbar[I - 2] * norms[I - 1] * r[I - 1])
    plo = phi = w
    for I in range(L - 1, 0, -1):
        if I < L - 1:
            # φ^(I) = (φ^(I+1) ⊙ σ'(z^(I+1))) W^(I+1); d1[I] is layer I+1's σ' range.
            ulo, uhi = _iprod(plo, phi, d1[I][0], d1[I][1], rigorous)
            plo, phi = _imatvec(ulo, uhi, Ws[I], rigorous)
        n, p = _iprod(plo, phi, d2[I - 1][0], d2[I - 1][1], rigorous)
        n, p = n.expand(K, -1), p.expand(K, -1)
        if I == 1:
            lmin, lmax = _quad_extremes(Ws[0], p, n, clamp=False)
            m, M = m + lmin, M + lmax
        else:
            lmin, lmax = _quad_extremes(Ws[I - 1], p, n, clamp=True)
            coeff = (gbar[I - 2] * r[I - 1]) ** 2
            coeff = coeff * (1 + 1e-12)  # covers the rounding of the products
            m, M = m + coeff * lmin, M + coeff * lmax
    return m, M


def _theorem4_core(Ws: List[Tensor], norms: List[Tensor], w: Tensor, g: float, h: float) -> Tensor:
    """K = h Σ_I (r^(I))² max_j S^(L,I)_j for K rows w (K, N_{L-1}); norms for I = 1 … L−1."""
    L = len(Ws)
    r = [None, norms[0]]
    for I in range(2, L):
        r.append(g * norms[I - 1] * r[I - 1])
    S = w.abs()
    Kb = h * r[L - 1] ** 2 * S.amax(1)
    for I in range(L - 2, 0, -1):
        S = g * (S @ Ws[I].abs())          # S^(L,I) = S^(L,I+1) · g|W^(I+1)|
        Kb = Kb + h * r[I] ** 2 * S.amax(1)
    return Kb


def _exact_pairs(model, method: str, ys: Tensor, ts: Tensor) -> Tuple[Tensor, Tensor]:
    """Rigorous (m, M) for the given pairs (no cache)."""
    act = _check_model(model)
    Ws = _weights64(model)
    L = len(Ws)
    w = Ws[-1][ys] - Ws[-1][ts]
    if method == "theorem4":
        norms = [_spectral_norm_upper(W) for W in Ws[:-1]]
        Kb = _theorem4_core(Ws, norms, w, act.g, act.h) * (1 + _margin_factor(max(model.widths)))
        return -Kb, Kb
    # theorem3 (L = 2) and refined share the code: for L = 2 they are the same bound.
    norms = [_spectral_norm_upper(W) for W in Ws[:-2]]
    lo1, hi1 = _sigma1_global(act)
    def const(v):
        return torch.tensor(v, dtype=_F64, device=w.device)

    d1 = [(const(lo1), const(hi1))] * (L - 1)
    d2 = [(const(act.h_L), const(act.h_U))] * (L - 1)
    gbar = [const(max(abs(lo1), abs(hi1)))] * (L - 1)
    return _refined_core(Ws, norms, w, d1, d2, gbar)


# ------------------------------------------------------------------------------------------------
# Per-model cache of exact per-pair tables (valid while the weights are bit-for-bit unchanged)
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cache_entry(model) -> Dict:
    ws = [w.detach() for w in model.weights]
    entry = _CACHE.get(model)
    if entry is not None:
        old = entry["weights"]
        same = (entry["activation"] == model.activation.name and len(old) == len(ws) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(old, ws)))
        if same:
            return entry
    entry = {"weights": [w.clone() for w in ws], "activation": model.activation.name, "tables": {}}
    _CACHE[model] = entry
    return entry


def _pair_bounds(model, method: str, y: Tensor, t: Tensor,
                 cache: bool = True) -> Tuple[Tensor, Tensor]:
    """Exact (m, M) per sample, computing each distinct (y, t) pair once (and caching it)."""
    L, C = model.num_layers, model.num_classes
    if method == "theorem3" and L != 2:
        raise ValueError(f"Theorem 3 is for two-layer networks (L = 2), this one has L = {L}; "
                         "use method='refined' or 'theorem4'")
    if method == "tightest":
        if L == 2:
            return _pair_bounds(model, "theorem3", y, t, cache)
        m1, M1 = _pair_bounds(model, "refined", y, t, cache)
        m2, M2 = _pair_bounds(model, "theorem4", y, t, cache)
        return torch.maximum(m1, m2), torch.minimum(M1, M2)
    device = model.weights[0].device
    key = y * C + t
    uniq, inv = torch.unique(key, return_inverse=True)
    if not cache:
        m, M = _exact_pairs(model, method, uniq // C, uniq % C)
        return m[inv], M[inv]
    tables = _cache_entry(model)["tables"]
    if method not in tables:
        tables[method] = (torch.full((C * C,), float("nan"), dtype=_F64, device=device),
                          torch.full((C * C,), float("nan"), dtype=_F64, device=device))
    tm, tM = tables[method]
    missing = uniq[torch.isnan(tM[uniq])]
    if missing.numel():
        m, M = _exact_pairs(model, method, missing // C, missing % C)
        tm[missing], tM[missing] = m, M
    return tm[key].clone(), tM[key].clone()


# ================================================================================================
# Estimate mode (training only)
# ================================================================================================
_WARM: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _flush_tiny(V: Tensor) -> Tensor:
    """Zero the entries of unit vectors below √tiny: repeated power iteration otherwise drives
    the components along small eigenvalues into subnormal numbers, which are ~100× slower."""
    return V.masked_fill(V.abs() < math.sqrt(torch.finfo(V.dtype).tiny), 0.0)


def _lanczos_top(W: Tensor, D: Tensor, V: Tensor, iters: int, tol: float) -> Tuple[Tensor, Tensor]:
    """Warm-started batched Lanczos for the top eigenvalue of Wᵀ diag(Dₖ) W (Dₖ ≥ 0).

    Starts from the rows of V (K, M) (the previous call's Ritz vectors); at most ``iters``
    operator applications; stops as soon as every top Ritz pair (θ, y) has a residual
    ‖A y − θ y‖ ≤ √tol · θ (then, for a separated top eigenvalue, θ is within ~tol·θ²/gap of
    λmax). A converged warm start therefore costs one application. Ritz values never exceed
    λmax: an estimate from below. Returns (θ (K,), Ritz vectors (K, M)) in W's dtype.
    """
    K, M = V.shape
    steps = max(1, min(int(iters), M))
    Wt = W.t()
    q = F.normalize(V, dim=1, eps=1e-30)
    Q: List[Tensor] = []
    alpha = torch.zeros(K, steps, dtype=W.dtype, device=W.device)
    beta = torch.zeros(K, steps, dtype=W.dtype, device=W.device)
    rtol = math.sqrt(tol) if tol > 0 else 0.0
    for j in range(steps):
        Q.append(q)
        Z = q @ Wt
        v = (Z * D) @ W
        alpha[:, j] = (Z * Z * D).sum(1)
        if j == 0:
            v = v - alpha[:, :1] * q
        else:
            basis = torch.stack(Q)
            v = v - torch.einsum("jk,jkm->km", torch.einsum("jkm,km->jk", basis, v), basis)
        b = v.norm(dim=1)
        T = (torch.diag_embed(alpha[:, : j + 1]) + torch.diag_embed(beta[:, :j], 1)
             + torch.diag_embed(beta[:, :j], -1))
        evals, evecs = torch.linalg.eigh(T)
        theta, s_top = evals[:, -1], evecs[:, :, -1]
        residual = b * s_top[:, -1].abs()
        if j == steps - 1 or float((residual - rtol * theta.abs()).amax()) <= 0:
            break
        tiny = b <= 1e-6 * alpha[:, : j + 1].abs().amax(1).clamp_min(1e-30)
        beta[:, j] = torch.where(tiny, torch.zeros_like(b), b)
        q = torch.where(tiny[:, None], torch.zeros_like(v), v / b.clamp_min(1e-30)[:, None])
    ritz = Q[0] if j == 0 else torch.einsum("kj,jkm->km", s_top, torch.stack(Q))
    return theta, _flush_tiny(F.normalize(ritz, dim=1, eps=1e-30))


def _norm_estimates(model, Ws: List[Tensor], count: int, iters: int, tol: float) -> List[Tensor]:
    """Power-iteration estimates (from below) of ‖W^(I)‖, I = 1 … count, started from the model's
    persistent buffers (read only)."""
    out = []
    for I in range(1, count + 1):
        W = Ws[I - 1]
        u, _ = model.power_vectors(I)
        u = u.detach().to(W.dtype)
        prev, sig = None, None
        for _ in range(max(1, iters)):
            v = _flush_tiny(F.normalize(W.t() @ u, dim=0, eps=1e-30))
            Wv = W @ v
            sig = Wv.norm()
            u = _flush_tiny(Wv / sig.clamp_min(1e-30))
            if tol > 0 and prev is not None and float((sig - prev).abs()) <= tol * float(sig):
                break
            prev = sig
        out.append(sig)
    return out


def _estimate_pairs(model, method: str, ys: Tensor, ts: Tensor, iters: int,
                    tol: float) -> Tuple[Tensor, Tensor]:
    """Estimate-mode (m, M) for distinct pairs (ys, ts) in the weights' dtype."""
    act = _check_model(model)
    Ws = [w.detach() for w in model.weights]
    L, C = len(Ws), model.num_classes
    if method == "theorem3" and L != 2:
        raise ValueError(f"Theorem 3 is for two-layer networks (L = 2), this one has L = {L}")
    w = Ws[-1][ys] - Ws[-1][ts]
    want_ref = method in ("theorem3", "refined") or (method == "tightest")
    want_k = method == "theorem4" or (method == "tightest" and L >= 3)
    norms = _norm_estimates(model, Ws, L - 1 if want_k else L - 2, iters, tol)
    m_ref = M_ref = K_est = None
    if want_k:
        K_est = _theorem4_core(Ws, norms, w, act.g, act.h)
    if want_ref:
        lo1, hi1 = _sigma1_global(act)
        g = max(abs(lo1), abs(hi1))
        state = _WARM.setdefault(model, {})
        K = ys.numel()
        m_ref = torch.zeros(K, dtype=w.dtype, device=w.device)
        M_ref = torch.zeros(K, dtype=w.dtype, device=w.device)
        r = [None, norms[0] if L > 2 else None]
        for I in range(2, L - 1):
            r.append(g * norms[I - 1] * r[I - 1])
        plo = phi = w
        for I in range(L - 1, 0, -1):
            if I < L - 1:
                ulo, uhi = _iprod(plo, phi, lo1, hi1, rigorous=False)
                plo, phi = _imatvec(ulo, uhi, Ws[I], rigorous=False)
            n, p = _iprod(plo, phi, act.h_L, act.h_U, rigorous=False)
            D = torch.cat([p.clamp(min=0), (-n).clamp(min=0)], 0)
            W = Ws[I - 1]
            dim = W.shape[1]
            # Warm-start table: one unit vector per (y, t, P|N) slot, row 2(yC + t) + {0, 1}.
            V0 = state.get(I)
            if (not isinstance(V0, Tensor) or V0.shape != (C * C * 2, dim)
                    or V0.dtype != W.dtype or V0.device != W.device):
                gen = torch.Generator().manual_seed(I)
                V0 = torch.randn(C * C * 2, dim, generator=gen, dtype=W.dtype).abs().add_(0.5)
                V0 = F.normalize(V0.to(W.device), dim=1)
                state[I] = V0
            slots = torch.cat([2 * (ys * C + ts), 2 * (ys * C + ts) + 1])
            # Identical operators (e.g. N(y, t) = −P(t, y) for softplus, P = −N for sigmoid) once.
            uniq, inv = torch.unique(D, dim=0, return_inverse=True)
            first = torch.full((uniq.shape[0],), slots.numel(), dtype=torch.int64, device=W.device)
            first = first.scatter_reduce(0, inv, torch.arange(slots.numel(), device=W.device), "amin")
            lam_u, V_u = _lanczos_top(W, uniq, V0[slots[first]], iters, tol)
            V0[slots] = V_u[inv]
            lam = lam_u[inv]
            coeff = 1.0 if I == 1 else (g * r[I - 1]) ** 2
            M_ref = M_ref + coeff * lam[:K]
            m_ref = m_ref - coeff * lam[K:]
    if method == "theorem4":
        return -K_est, K_est
    if method == "tightest" and L >= 3:
        return torch.maximum(m_ref, -K_est), torch.minimum(M_ref, K_est)
    return m_ref, M_ref


# ================================================================================================
# Public API
# ================================================================================================

def global_bounds(model, y, t, method: str = "tightest", *, exact: bool = True, iters: int = 20,
                  tol: float = 1e-4, cache: bool = True) -> Tuple[Tensor, Tensor]:
    """Global curvature bounds of f = z_y − z_t, valid for every input x.

    .. math::
        m\\, I \\preceq \\nabla^2_x (z^{(L)}_y - z^{(L)}_t)(x) \\preceq M\\, I
        \\quad \\forall x \\in \\mathbb{R}^D

    Methods: ``"theorem3"`` (Theorem 3, L = 2 only), ``"theorem4"`` (m = −K, M = K),
    ``"refined"`` (Theorem 3's sign split on every term of Lemma 1; module docstring) and
    ``"tightest"``: Theorem 3 for L = 2; for L ≥ 3 the elementwise tighter of refined and
    Theorem 4 (both sound: max of the m's, min of the M's).

    With ``exact=True`` (default) the bounds are rigorous (float64, verified eigenvalues and
    SVD norms, safety margin; module docstring). Each distinct (y, t) pair is computed once and
    cached per model while its weights stay bit-for-bit equal (``cache=False`` disables it).
    First-call cost for all 90 pairs (1 CPU thread): about 5–10 s for a 2×1024 net, 25 s for a
    3×1024 net; a cached call costs milliseconds (see benchmarks/curvature.py).

    With ``exact=False`` the result is a Lanczos **estimate from below** (at most ``iters``
    operator applications, stopping once every top Ritz pair has a relative residual ≤ √tol;
    warm-started per (y, t) from the previous call's Ritz vectors; ‖W^(I)‖ by power iteration
    from the model's buffers): *not* a bound, for the training-time CRT attack only. Once the
    warm start has converged a call costs about one pass over the operators (2×1024, B = 128:
    ~10–20 ms on one thread). No cache is used.

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation.
        y: true labels (B,), int64 (an int is one sample).
        t: targets (B,), int64, t ≠ y.
        method: one of ``"tightest"``, ``"theorem3"``, ``"theorem4"``, ``"refined"``.
        exact: rigorous bounds (True) or a fast estimate (False). Default True.
        iters: maximum Lanczos / power-iteration steps in estimate mode (default 20).
        tol: stopping tolerance in estimate mode (default 1e-4; 0 runs all ``iters``).
        cache: reuse per-pair results (exact mode; default True).

    Returns:
        (m, M), each (B,), float64 on the model's device.

    Raises:
        NoCurvatureError: for a ReLU network.
        ValueError: bad labels (out of range, y == t, shape), unknown method, Theorem 3 with L ≠ 2.

    Example:
        >>> model = MLP([784, 64, 64, 10], activation="sigmoid")
        >>> m, M = global_bounds(model, torch.tensor([0]), torch.tensor([1]))
        >>> bool(m <= 0 <= M)
        True
    """
    _check_model(model)
    method = _check_method(method)
    y, t = _check_pairs(model, y, t)
    if exact:
        return _pair_bounds(model, method, y, t, cache)
    if int(iters) < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    C = model.num_classes
    key = y * C + t
    uniq, inv = torch.unique(key, return_inverse=True)
    with torch.no_grad():
        m, M = _estimate_pairs(model, method, uniq // C, uniq % C, int(iters), float(tol))
    return m.to(_F64)[inv], M.to(_F64)[inv]


def all_pair_bounds(model, method: str = "tightest", *, exact: bool = True,
                    iters: int = 20) -> Tuple[Tensor, Tensor]:
    """Global bounds for all C(C−1) ordered pairs (y, t) at once.

    .. math::
        m_{yt} \\le \\lambda_{\\min}\\big(\\nabla^2_x (z_y - z_t)\\big), \\quad
        \\lambda_{\\max}\\big(\\nabla^2_x (z_y - z_t)\\big) \\le M_{yt} \\quad \\forall x

    Args:
        model: an MLP with a smooth activation.
        method: as in :func:`global_bounds`.
        exact, iters: as in :func:`global_bounds`.

    Returns:
        (m, M), each (C, C) float64 on the model's device, row y, column t, NaN on the diagonal.
        Entry [y, t] equals ``global_bounds(model, y, t, method)``.
    """
    _check_model(model)
    method = _check_method(method)
    C = model.num_classes
    device = model.weights[0].device
    classes = torch.arange(C, device=device)
    yy, tt = torch.meshgrid(classes, classes, indexing="ij")
    off = yy != tt
    m_tab = torch.full((C, C), float("nan"), dtype=_F64, device=device)
    M_tab = m_tab.clone()
    m, M = global_bounds(model, yy[off], tt[off], method, exact=exact, iters=iters)
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
    _check_model(model)
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

    (derivation and soundness argument in the module docstring). Equal to Theorem 3 for L = 2;
    never above Theorem 4's K.

    Args:
        model: an MLP with a smooth activation.
        y, t: (B,) int64, t ≠ y.

    Returns:
        (m, M), each (B,), float64, rigorous.
    """
    return global_bounds(model, y, t, "refined")


# ------------------------------------------------------------------------------------------------
# Local bounds
def _local_ranges(model, act: Activation, x: Tensor, R: Tensor):
    """Per-neuron ranges of σ' and σ'' over the ball ‖x' − x‖ ≤ R, for every hidden layer.

    Layer 1: z^(1)_k ∈ z^(1)_k(x) ± ‖W^(1)_k‖ R (exact for the ball). Deeper layers: the
    intersection of interval arithmetic through σ (increasing) and a Lipschitz bound
    |Δz^(J)_k| ≤ ‖|W^(J)_k| ⊙ s̄^(J-1)‖ ρ_{J-1} (mean value theorem per neuron, s̄ the max of
    |σ'| over the previous intervals, ρ an l2 bound of Δz^(J-1)). Everything float64, widened
    outward for rounding. Returns d1, d2 (lists of (lo, hi) (B, N_J)) and gbar (list of (B,)).
    """
    Ws = _weights64(model)
    bs = [b.detach().to(_F64) for b in model.biases]
    L = len(Ws)
    x = x.to(_F64)
    D = x.shape[1]
    z = x @ Ws[0].t() + bs[0]
    err = (2.0 * (D + 2) * _U) * (x.abs() @ Ws[0].abs().t() + bs[0].abs())
    rad = Ws[0].norm(dim=1)[None, :] * R[:, None] * (1 + _margin_factor(D))
    lo, hi = z - rad - err, z + rad + err
    rho = _spectral_norm_upper(Ws[0]) * R
    d1, d2, gbar = [], [], []
    increasing = _sigma1_global(act)[0] == 0.0
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
        ibp_lo, ibp_hi = _imatvec(a_lo, a_hi, W.t())
        ibp_lo, ibp_hi = ibp_lo + b, ibp_hi + b
        a = act.fn(z)
        z = a @ W.t() + b
        lip = ((sbar * sbar) @ (W * W).t()).sqrt() * rho[:, None]
        slack = 1e-9 * (z.abs() + lip) + 1e-12
        lo = torch.maximum(ibp_lo, z - lip - slack)
        hi = torch.minimum(ibp_hi, z + lip + slack)
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)  # (guard against rounding)
        rho = _spectral_norm_upper(W) * gbar[-1] * rho
    return d1, d2, gbar


def local_bounds(model, x: Tensor, y, t, radius) -> Tuple[Tensor, Tensor]:
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
    [h_L, h_U]. Sound by the same argument as the global refined bound (module docstring).
    Cost: one verified eigenproblem per image for P and N of every hidden layer.

    The result is never looser than :func:`global_bounds` ("tightest"): the elementwise tighter of
    the two is returned. A certificate that uses these bounds must stay inside the ball.

    Args:
        model: an MLP with a smooth activation.
        x: inputs (B, D) (or (B, ...) with D entries), finite.
        y, t: (B,) int64, t ≠ y.
        radius: R > 0, a float or a (B,) tensor.

    Returns:
        (m, M), each (B,), float64 on the model's device.

    Raises:
        NoCurvatureError: ReLU. ValueError: NaN x, bad shapes or labels, radius ≤ 0 / NaN / inf.
    """
    act = _check_model(model)
    x = model.check_input(x)
    B = x.shape[0]
    device = model.weights[0].device
    if x.device != device:
        raise ValueError(f"x is on {x.device} but the model is on {device}")
    y, t = _check_pairs(model, y, t, batch=B)
    R = _check_radius(radius, B, device)
    mg, Mg = global_bounds(model, y, t, "tightest")
    if B == 0:
        return mg, Mg
    d1, d2, gbar = _local_ranges(model, act, x.detach(), R)
    Ws = _weights64(model)
    norms = [_spectral_norm_upper(W) for W in Ws[:-2]]
    w = Ws[-1][y] - Ws[-1][t]
    m, M = _refined_core(Ws, norms, w, d1, d2, gbar)
    return torch.maximum(m, mg), torch.minimum(M, Mg)


# ------------------------------------------------------------------------------------------------
# Training penalty
def curvature_penalty(model, y, t, *, power_steps: int = 1) -> Tensor:
    """Theorem 4's K(W, y, t) per sample, differentiable in the weights (equation (7)).

    .. math::
        K = h \\sum_{I=1}^{L-1} (\\hat r^{(I)})^2 \\max_j S^{(L,I)}_j,\\quad
        \\hat r^{(I)} = g\\, \\hat σ_I\\, \\hat r^{(I-1)},\\quad \\hat σ_I = u_I^T W^{(I)} v_I

    The spectral norms are replaced by σ̂ = uᵀWv (Miyato et al. 2018): (u, v) come from
    ``power_steps`` power-iteration steps (default 1) started from the model's persistent
    buffers ``model.power_vectors(I)``, which are updated in place (no grad); u, v are treated
    as constants, so ∂σ̂/∂W = u vᵀ. |w| and the |W| products are differentiated directly.
    Computed once per distinct (y, t) pair, in the weights' dtype. For L = 2,
    K = h σ̂₁² max_j |w_j|. Once the buffers have converged, K equals :func:`theorem4_bound` (up
    to its safety margin). Not a rigorous bound (σ̂ ≤ ‖W‖): for training only.

    Args:
        model: an MLP with a smooth activation.
        y, t: (B,) int64, t ≠ y (t: the attack target, e.g. the runner-up class).
        power_steps: power-iteration steps per call (≥ 0; 0 keeps the buffers frozen).

    Returns:
        K, (B,), in the weights' dtype, with an autograd graph to the weights.

    Example:
        >>> model = MLP([784, 64, 10], activation="softplus")
        >>> K = curvature_penalty(model, torch.tensor([1, 2]), torch.tensor([7, 3]))
        >>> K.mean().backward()
    """
    act = _check_model(model)
    y, t = _check_pairs(model, y, t)
    if int(power_steps) < 0:
        raise ValueError(f"power_steps must be >= 0, got {power_steps}")
    Ws = model.weights
    L, C = len(Ws), model.num_classes
    g, h = act.g, act.h
    sig = []
    for I in range(1, L):
        W = Ws[I - 1]
        u, v = model.power_vectors(I)
        if power_steps:
            with torch.no_grad():
                Wd = W.detach()
                uu, vv = u, v
                for _ in range(int(power_steps)):
                    vv = F.normalize(Wd.t() @ uu, dim=0, eps=1e-12)
                    uu = F.normalize(Wd @ vv, dim=0, eps=1e-12)
                u.copy_(_flush_tiny(uu))
                v.copy_(_flush_tiny(vv))
        sig.append(torch.dot(u.clone(), W @ v.clone()))
    key = y * C + t
    uniq, inv = torch.unique(key, return_inverse=True)
    WL = Ws[-1]
    w = WL[uniq // C] - WL[uniq % C]
    return _theorem4_core(Ws, sig, w, g, h)[inv]


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
    from . import hessian

    _check_model(model)
    if which not in ("max", "abs"):
        raise ValueError(f"which={which!r} is invalid: expected 'max' or 'abs'")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    X = model.check_input(X)
    N = X.shape[0]
    Y = _as_labels(Y, "Y", X.device)
    if Y.shape != (N,):
        raise ValueError(f"Y must have shape ({N},) to match X, got {tuple(Y.shape)}")
    C = model.num_classes
    dtype = model.weights[0].dtype
    if t is None:
        with torch.no_grad():
            logits = model(X.to(dtype)).clone()
        logits[torch.arange(N, device=X.device), Y] = -float("inf")
        t = logits.argmax(1)
    Y, t = _check_pairs(model, Y, t, batch=N)
    vals = torch.empty(N, dtype=_F64, device=X.device)
    for s in range(0, N, int(batch_size)):
        sl = slice(s, min(N, s + int(batch_size)))
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
