"""Verified float64 linear algebra for the curvature bounds: interval products, certified λmax.

The rigorous curvature bounds (:mod:`crc_core.curvature`) need, for matrices of the form
:math:`A = W^T \\operatorname{diag}(d) W` (W (N, M), d (N,)), an upper bound of λmax(A) that is
*proven*, not estimated, and upper bounds of spectral norms ‖W‖₂. Everything here is float64.

**Certified λmax** (:func:`lambda_max_upper`). Matrices up to ``_DIRECT_EIG_MAX_DIM`` = 192 go
straight to ``torch.linalg.eigvalsh``. Larger ones are (i) estimated by Lanczos with full
reorthogonalization (:func:`lanczos_extremes`, ``_LANCZOS_STEPS`` = 40 steps), then (ii)
*verified*: a Cholesky factorization of :math:`μI - A` with μ = estimate + τ·(spectral radius),
τ = 1e-7, that completes proves λmax(A) < μ up to rounding. By Higham, *Accuracy and Stability
of Numerical Algorithms* (2nd ed.), Theorem 10.3, the computed factor satisfies
:math:`\\hat R^T \\hat R = A + ΔA` with :math:`|ΔA| \\le γ_{n+1} |\\hat R^T| |\\hat R|`, hence
:math:`\\|ΔA\\|_2 \\le γ_{n+1} \\operatorname{tr}(A + ΔA)`. If the factorization fails, μ is raised
(τ = 1e-5, then 1e-3) and finally the exact ``eigvalsh`` is used. Each bound then receives the
safety margin

.. math::
    δ = \\max(10^{-9}, 8 u n^2)\\,(|λ| + \\|d\\|_\\infty \\|W\\|_F^2), \\qquad u = 2^{-53},

n the largest dimension, which exceeds the rounding errors of forming the matrix
(≤ γ_n ‖d‖∞‖W‖_F²), of the factorization or eigensolver (≤ c·n·u·n·|μ|) and of the float64
interval arithmetic. The same relative margin :func:`margin_factor` is added to spectral norms
(:func:`spectral_norm_upper`, SVD by ``torch.linalg.matrix_norm(ord=2)``).

**Interval arithmetic** (:func:`interval_product`, :func:`interval_matvec`): elementwise interval
products and interval row-vector × point-matrix products in midpoint-radius form; with
``rigorous=True`` the results are widened outward to cover float64 rounding, with
``rigorous=False`` they are the plain formulas (the training-time estimates use them).

Example:
    >>> W = torch.randn(300, 50, dtype=torch.float64)
    >>> d = torch.rand(2, 300, dtype=torch.float64)
    >>> ub = lambda_max_upper(W, d)                                       # (2,)
    >>> exact = torch.linalg.eigvalsh(W.T @ (d[:, :, None] * W))[:, -1]
    >>> bool((ub >= exact).all())
    True
"""
from __future__ import annotations

from typing import Callable, Iterator, Tuple

import torch

Tensor = torch.Tensor

__all__ = [
    "UNIT_ROUNDOFF",
    "margin_factor",
    "spectral_norm_upper",
    "widen",
    "interval_product",
    "interval_matvec",
    "lanczos_extremes",
    "lambda_max_upper",
    "quad_form_extremes",
]

_F64 = torch.float64
UNIT_ROUNDOFF = 2.0 ** -53            # u, the unit roundoff of float64
_U = UNIT_ROUNDOFF
_DIRECT_EIG_MAX_DIM = 192             # matrices up to this size go straight to eigvalsh
_LANCZOS_STEPS = 40                   # Lanczos steps for the estimate that Cholesky then verifies
_VERIFY_TAUS = (1e-7, 1e-5, 1e-3)     # relative slack of μ above the Lanczos estimate
_CHUNK_BYTES = 256 * 2 ** 20          # memory for a chunk of explicit (n, n) float64 matrices


# ------------------------------------------------------------------------------------------------
# Rounding margins and norms
def margin_factor(n: int) -> float:
    """Relative size max(1e-9, 8un²) of the rounding safety margin for dimension n."""
    return max(1e-9, 8.0 * _U * n * n)


def spectral_norm_upper(W: Tensor) -> Tensor:
    """A rigorous upper bound of ‖W‖₂: the float64 SVD value times (1 + max(1e-9, 8un²)).

    Args:
        W: (N, M), any float dtype (converted to float64).

    Returns:
        A 0-d float64 tensor ≥ ‖W‖₂.
    """
    W = W.detach().to(_F64)
    return torch.linalg.matrix_norm(W, ord=2) * (1 + margin_factor(max(W.shape)))


# ------------------------------------------------------------------------------------------------
# Interval arithmetic
def widen(lo: Tensor, hi: Tensor, rel: float = 4 * _U) -> Tuple[Tensor, Tensor]:
    """[lo, hi] widened outward by ``rel`` · max(|lo|, |hi|) (covers a few roundings)."""
    pad = rel * torch.maximum(lo.abs(), hi.abs())
    return lo - pad, hi + pad


def interval_product(alo, ahi, blo, bhi, rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """The interval product [alo, ahi]·[blo, bhi], elementwise with broadcasting.

    .. math::
        [a]\\cdot[b] = [\\min S, \\max S],\\quad S = \\{a_l b_l, a_l b_u, a_u b_l, a_u b_u\\}

    Args:
        alo, ahi, blo, bhi: tensors or floats, broadcastable to a common shape.
        rigorous: widen the result outward by 4u·max(|lo|, |hi|) (default True).

    Returns:
        (lo, hi), each of the broadcast shape.
    """
    c = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    lo, hi = c.amin(0), c.amax(0)
    return widen(lo, hi) if rigorous else (lo, hi)


def interval_matvec(ulo: Tensor, uhi: Tensor, W: Tensor,
                    rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """An enclosure [lo, hi] of {u W : u ∈ [ulo, uhi]} for interval row vectors.

    Midpoint-radius form (exact for a point matrix): (mid W) ± (rad |W|). With ``rigorous`` the
    result is widened by 2(n+2)u·(|mid| + rad)|W| + 4u|mid W|, which covers the float64 rounding
    of the midpoint, the radius and both products.

    Args:
        ulo, uhi: (K, n) row-vector intervals.
        W: (n, m).
        rigorous: widen for rounding (default True).

    Returns:
        (lo, hi), each (K, m).
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


# ------------------------------------------------------------------------------------------------
# Eigenvalues
def _chunks(total: int, n: int, extra: int = 1) -> Iterator[slice]:
    """Slices of ``total`` rows such that a chunk of ``extra`` (n, n) float64 matrices per row
    fits in ``_CHUNK_BYTES``."""
    per = max(1, int(_CHUNK_BYTES // max(1, 8 * n * n * extra)))
    for s in range(0, total, per):
        yield slice(s, min(total, s + per))


def lanczos_extremes(op: Callable[[Tensor], Tensor], K: int, n: int, steps: int, size: Tensor,
                     device) -> Tuple[Tensor, Tensor, Tensor]:
    """Ritz estimates (λmin, λmax) of K symmetric operators of size n, and a breakdown flag.

    Batched Lanczos with full reorthogonalization from a fixed start (``torch.Generator``
    seeded 0), so the same operators give the same estimates. Ritz values lie inside the
    spectrum: estimates, not bounds (:func:`lambda_max_upper` verifies them).

    Args:
        op: maps (K, n) to (K, n), the K operators applied to one vector each (one GEMM pair
            per step for all of them).
        K, n: number and size of the operators.
        steps: Lanczos steps (≥ 1).
        size: (K,) bounds of the spectral radii (for the breakdown test β ≤ 1e-10·size).
        device: where to work.

    Returns:
        (λmin estimate (K,), λmax estimate (K,), breakdown (K,) bool), float64.
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


def lambda_max_upper(W: Tensor, D: Tensor) -> Tensor:
    """Rigorous upper bounds of λmax(Wᵀ diag(D_k) W), one per row D_k.

    .. math::
        \\lambda_{\\max}\\big(W^T \\operatorname{diag}(D_k) W\\big) \\le \\text{out}_k

    Eigenvalues by ``eigvalsh`` (n ≤ 192) or Lanczos + Cholesky verification, plus the safety
    margin δ (module docstring). Identical rows are computed once; sign-definite rows
    (D_k ≥ 0) use the N×N form diag(√d) W Wᵀ diag(√d) (same nonzero spectrum) when cheaper.

    Args:
        W: (N, M) float64.
        D: (K, N) float64, any signs.

    Returns:
        (K,) float64.
    """
    K = D.shape[0]
    if K == 0:
        return torch.zeros(0, dtype=_F64, device=D.device)
    uniq, inv = torch.unique(D, dim=0, return_inverse=True)
    return _lambda_max_upper_unique(W, uniq)[inv]


def _lambda_max_upper_unique(W: Tensor, D: Tensor) -> Tensor:
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
                est_lo[sl], est_hi[sl], broke[sl] = lanczos_extremes(
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
    return out + margin_factor(max(N, M)) * (out.abs() + scale)


def quad_form_extremes(W: Tensor, P: Tensor, Nn: Tensor, clamp: bool) -> Tuple[Tensor, Tensor]:
    """Rigorous (lower bound of λmin(Wᵀdiag(n)W), upper bound of λmax(Wᵀdiag(p)W)) per row.

    .. math::
        \\text{lo}_k \\le \\lambda_{\\min}(W^T \\operatorname{diag}(N_k) W), \\quad
        \\lambda_{\\max}(W^T \\operatorname{diag}(P_k) W) \\le \\text{hi}_k

    Args:
        W: (N, M) float64.
        P, Nn: (K, N) float64 diagonals.
        clamp: use the PSD / NSD parts p⁺, n⁻, and return lo ≤ 0 ≤ hi (the outer-factor scaling
            of the refined bound's terms I ≥ 2 requires it).

    Returns:
        (lo, hi), each (K,) float64.
    """
    if clamp:
        P, Nn = P.clamp(min=0), Nn.clamp(max=0)
    K = P.shape[0]
    both = lambda_max_upper(W, torch.cat([P, -Nn], 0))
    lmax, lmin = both[:K], -both[K:]
    if clamp:
        lmax, lmin = lmax.clamp(min=0), lmin.clamp(max=0)
    return lmin, lmax
