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
(τ = 1e-5, then 1e-3) and finally the exact ``eigvalsh`` is used. Where Lanczos broke down (A of
rank below the step count, e.g. W with few rows: the Krylov space is invariant and the Ritz
values exact) τ = 1e-10 is tried first. Each bound then receives the safety margin

.. math::
    δ = \\max(10^{-9}, 8 u n^2)\\,(|λ| + \\|d\\|_\\infty \\|W\\|_F^2), \\qquad u = 2^{-53},

n the largest dimension, which exceeds the rounding errors of forming the matrix
(≤ γ_n ‖d‖∞‖W‖_F²), of the factorization or eigensolver (≤ c·n·u·n·|μ|) and of the float64
interval arithmetic. The same relative margin :func:`margin_factor` is added to spectral norms
(:func:`spectral_norm_upper`, SVD by ``torch.linalg.matrix_norm(ord=2)``).

**The small side** (:func:`small_side_certified`). For W (N, M) with N well below M (a first
layer of width 32 on 784 inputs) the M×M matrix has rank ≤ N, and mixed-sign rows d are proven
from N×N matrices. With s = √|d|, J = diag(sign d), H = diag(s) W Wᵀ diag(s) and μ > 0, the
Haynsworth inertia additivity of :math:`K = [[μI_M, V^T], [V, J]]`, V = diag(s) W, taken over
either diagonal block, gives :math:`μI_M - W^T\\operatorname{diag}(d)W \\succ 0` iff
:math:`Z = μJ - H` has exactly p = #{d_i ≥ 0} positive eigenvalues. Candidate: μ = λ̂ + δ, λ̂ the
largest eigenvalue of Lᵀ diag(d) L (W Wᵀ ≈ L Lᵀ, same nonzero spectrum, clamped at 0 since
N < M), δ as above: so the bound is the same number as the M×M path's up to the last bits of
λ̂. The proof is a Cholesky factorization of XᵀZX − σI on a p-dimensional subspace X (σ above
the rounding of forming it, with its own explicit bound); an ill-conditioned W Wᵀ with
cancelling signs may fail it, and such rows take the M×M path.

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
    "weighted_gram",
    "lambda_max_upper",
    "small_side_certified",
    "quad_form_extremes",
]

_F64 = torch.float64
UNIT_ROUNDOFF = 2.0 ** -53            # u, the unit roundoff of float64
_U = UNIT_ROUNDOFF
_DIRECT_EIG_MAX_DIM = 192             # matrices up to this size go straight to eigvalsh
_LANCZOS_STEPS = 40                   # Lanczos steps for the estimate that Cholesky then verifies
_VERIFY_TAUS = (1e-7, 1e-5, 1e-3)     # relative slack of μ above the Lanczos estimate
_BREAKDOWN_TAU = 1e-10                # first slack where Lanczos broke down (exact Ritz values)
_CHUNK_BYTES = 256 * 2 ** 20          # memory for a chunk of explicit (n, n) float64 matrices
_GRAM_BLOCK = 128                     # row block of weighted_gram


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

    Batched Lanczos with full reorthogonalization (two classical Gram–Schmidt passes per step)
    from a fixed start (``torch.Generator`` seeded 0), so the same operators give the same
    estimates. Ritz values lie inside the
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
        for _ in range(2):  # "twice is enough": once leaves ghost Ritz values near a breakdown
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


def weighted_gram(W: Tensor, D: Tensor) -> Tensor:
    """The matrices Wᵀ diag(D_k) W, built by row blocks of their lower triangle and mirrored.

    Each entry is one float64 inner product of length N, as in ``(Wᵀ * D_k) @ W`` (the same
    rounding bound γ_N |W|ᵀ|diag(D_k)||W|), for about (1 + b/M)/2 of its flops (b = 128).

    Args:
        W: (N, M) float64.
        D: (K, N) float64.

    Returns:
        (K, M, M) float64.
    """
    Wt = W.t()
    M = W.shape[1]
    A = torch.empty(D.shape[0], M, M, dtype=_F64, device=D.device)
    for s in range(0, M, _GRAM_BLOCK):
        e = min(M, s + _GRAM_BLOCK)
        rows = (Wt[s:e] * D[:, None, :]) @ W[:, :e]             # A[:, s:e, :e]
        A[:, s:e, :e] = rows
        A[:, :s, s:e] = rows[:, :, :s].transpose(1, 2)
    return A


def lambda_max_upper(W: Tensor, D: Tensor) -> Tensor:
    """Rigorous upper bounds of λmax(Wᵀ diag(D_k) W), one per row D_k.

    .. math::
        \\lambda_{\\max}\\big(W^T \\operatorname{diag}(D_k) W\\big) \\le \\text{out}_k

    Identical rows are computed once. Mixed-sign rows with N well below M are proven from N×N
    matrices (:func:`small_side_certified`); sign-definite rows (D_k ≥ 0) use the N×N form
    diag(√d) W Wᵀ diag(√d) (same nonzero spectrum) when cheaper; all other rows (and the
    small-side rows it cannot prove) get eigenvalues by ``eigvalsh`` (n ≤ 192) or Lanczos +
    Cholesky verification of the M×M matrix. Each bound is λ + δ with the safety margin δ of
    the module docstring.

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


def _small_side_pays(N: int, M: int) -> bool:
    """Whether mixed-sign rows go to the N×N path: N < M and about 10N³ flops per row (estimate,
    solve, products, Cholesky) below the 2NM² + M³/3 of forming and factoring the M×M matrix."""
    return N < M and 10 * N ** 3 < 2 * N * M * M + M ** 3 / 3


def _lambda_max_upper_unique(W: Tensor, D: Tensor) -> Tensor:
    N, M = W.shape
    K = D.shape[0]
    out = torch.empty(K, dtype=_F64, device=D.device)
    fro2 = (W * W).sum()
    scale = D.abs().amax(1) * fro2
    nonneg = (D >= 0).all(1)
    n_space_cheaper = N ** 3 / 3 < 2 * N * M * M + M ** 3 / 3
    mixed = ~nonneg if _small_side_pays(N, M) else torch.zeros_like(nonneg)
    small_rows = mixed.nonzero().flatten()
    G0 = W @ W.t() if n_space_cheaper and nonneg.any() else None
    todo = torch.ones(K, dtype=torch.bool, device=D.device)
    if small_rows.numel():
        mu, proven = _small_side_upper(W, D[small_rows])
        out[small_rows[proven]] = mu[proven]
        todo[small_rows[proven]] = False
    use_n = nonneg & n_space_cheaper
    raw = torch.empty(K, dtype=_F64, device=D.device)
    for space_n, rows in ((True, (use_n & todo).nonzero().flatten()),
                          (False, (~use_n & todo).nonzero().flatten())):
        if rows.numel() == 0:
            continue
        Dr = D[rows]
        dim = N if space_n else M
        if space_n:
            S = Dr.sqrt()

            def build(sl, S=S):
                return S[sl, :, None] * G0 * S[sl, None, :]

            def make_op(sl, S=S):
                Ss = S[sl]
                return lambda X: Ss * ((Ss * X) @ G0)
        else:
            Wt = W.t()

            def build(sl, Dr=Dr):
                return weighted_gram(W, Dr[sl])

            def make_op(sl, Dr=Dr, Wt=Wt):
                Ds = Dr[sl]
                return lambda X: ((X @ Wt) * Ds) @ W

        raw[rows] = _dense_lambda_max(build, make_op, dim, scale[rows])
    rest = todo.nonzero().flatten()
    out[rest] = raw[rest] + margin_factor(max(N, M)) * (raw[rest].abs() + scale[rest])
    return out


def _dense_lambda_max(build, make_op, dim: int, scale: Tensor) -> Tensor:
    """λmax of K explicit dim×dim matrices, before the safety margin: ``eigvalsh`` (dim ≤ 192),
    else the Lanczos estimate proven by a Cholesky factorization of μI − A (module docstring),
    ``eigvalsh`` where no μ is proven.

    Args:
        build: ``build(sl)`` returns the matrices of the rows ``sl``, (k, dim, dim).
        make_op: ``make_op(sl)`` returns the map (k, dim) -> (k, dim) of those matrices.
        dim: their size.
        scale: (K,) bounds of their spectral radii.

    Returns:
        (K,) float64.
    """
    K = scale.shape[0]
    device = scale.device
    res = torch.empty(K, dtype=_F64, device=device)
    if dim <= _DIRECT_EIG_MAX_DIM:
        for sl in _chunks(K, dim):
            res[sl] = torch.linalg.eigvalsh(build(sl))[:, -1]
        return res
    steps = max(2, min(_LANCZOS_STEPS, dim - 1))
    est_lo = torch.empty_like(res)
    est_hi = torch.empty_like(res)
    broke = torch.empty(K, dtype=torch.bool, device=device)
    for s in range(0, K, 128):
        sl = slice(s, min(K, s + 128))
        est_lo[sl], est_hi[sl], broke[sl] = lanczos_extremes(
            make_op(sl), sl.stop - sl.start, dim, steps, scale[sl], device)
    rho = torch.maximum(est_lo.abs(), est_hi.abs())
    for sl in _chunks(K, dim, extra=2):
        A = build(sl)
        pending = rho[sl] > 0
        val = torch.full((A.shape[0],), float("nan"), dtype=_F64, device=device)
        for tau in (_BREAKDOWN_TAU,) + _VERIFY_TAUS:
            # A breakdown (rank below the step count: the Krylov space is invariant) leaves
            # exact Ritz values, first tried with the small slack; the others start at 1e-7.
            rows = pending & broke[sl] if tau == _BREAKDOWN_TAU else pending
            if not rows.any():
                continue
            mu = est_hi[sl] + tau * rho[sl]
            idx = rows.nonzero().flatten()
            shifted = A[idx].neg_()                                 # μI − A, one copy
            shifted.diagonal(dim1=1, dim2=2).add_(mu[idx, None])
            info = torch.linalg.cholesky_ex(shifted).info
            ok = idx[info == 0]
            val[ok] = mu[ok]
            pending[ok] = False
        need = torch.isnan(val).nonzero().flatten()
        if need.numel():
            val[need] = torch.linalg.eigvalsh(A[need])[:, -1]
        res[sl] = val
    return res


def _gamma(n: int) -> float:
    """γ_n = nu / (1 − nu), the bound of n accumulated float64 roundings (Higham, eq. 3.8)."""
    return n * _U / (1 - n * _U)


def small_side_certified(W: Tensor, D: Tensor, mu: Tensor) -> Tensor:
    """Proves λmax(Wᵀ diag(D_k) W) < μ_k for each row from N×N matrices, any signs of D_k.

    The small-side lemma (module docstring): with s = √|d|, J = diag(sign d) (+1 where d = 0),
    p = #{d_i ≥ 0} and H = diag(s) W Wᵀ diag(s), for μ > 0

    .. math::
        μ I_M - W^T \\operatorname{diag}(d) W \\succ 0 \\iff
        Z = μ J - H \\text{ has } p \\text{ positive eigenvalues.}

    Z has at least q = N − p eigenvalues below −μ (its (−, −) block is −μI − H₋₋), so by
    Courant–Fischer it suffices that XᵀZX ≻ 0 on the p columns of X = [I; Y] (rows ordered
    +, −), any Y; Y = −(μI + H₋₋)⁻¹H₋₊ makes XᵀZX the Schur complement. XᵀZX is formed in
    float64 and proven positive definite by a Cholesky factorization of XᵀZX − σI (Higham,
    Theorem 10.3) with σ above every rounding error:

    .. math::
        ε_T = 2\\,\\|X\\|_1\\|X\\|_\\infty\\big(γ_{2N}\\|Z\\|_F + γ_{M+4}\\|d\\|_\\infty\\|W\\|_F^2
        + u(μ + \\max_i H_{ii})\\big)

    bounds ‖fl(XᵀẐX) − XᵀZX‖₂ (|Ĝ − G| ≤ γ_M|W||W|ᵀ, two roundings of s_i s_j, ≤ 2 of the
    square roots, one of the diagonal of Z, γ_{2N} for the two products); the factorization's
    backward error is at most γ_{N+1}/(1 − γ_{N+1}) tr(B̂) in 2-norm; the check
    (1 − u)σ > 1.01(ε_T + η + u max|T̂_ii|) is made a posteriori. A ``False`` row proves
    nothing (e.g. an ill-conditioned W Wᵀ with cancelling signs); the caller falls back.

    Args:
        W: (N, M), any float dtype (converted to float64).
        D: (K, N) diagonals, any signs.
        mu: (K,) candidates.

    Returns:
        (K,) bool: True where λmax(Wᵀ diag(D_k) W) < μ_k is proven.

    Example:
        >>> W = torch.randn(8, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> d = torch.tensor([[1.0, -2.0, 0.5, -1.0, 3.0, -0.5, 2.0, -3.0]], dtype=torch.float64)
        >>> lam = torch.linalg.eigvalsh(W.T @ (d[0, :, None] * W))[-1]
        >>> small_side_certified(W, d, (lam * (1 + 1e-6))[None]).tolist()
        [True]
        >>> small_side_certified(W, d, (lam * (1 - 1e-6))[None]).tolist()
        [False]
    """
    W, D, mu = W.to(_F64), D.to(_F64), mu.to(_F64)       # exact; the bounds are float64's
    N, M = W.shape
    K = D.shape[0]
    G = W @ W.t()
    scale = D.abs().amax(1) * (W * W).sum()
    proven = torch.zeros(K, dtype=torch.bool, device=D.device)
    eye = torch.eye(N, dtype=_F64, device=D.device)
    for sl in _chunks(K, N, extra=8):
        d, m = D[sl], mu[sl]
        pos = (d >= 0).to(_F64)
        neg = 1.0 - pos
        s = d.abs().sqrt()
        H = s[:, :, None] * G * s[:, None, :]
        Hdiag = H.diagonal(dim1=1, dim2=2)
        Z = -H
        Z.diagonal(dim1=1, dim2=2).copy_(m[:, None] * (2.0 * pos - 1.0) - Hdiag)
        C = neg[:, :, None] * H * neg[:, None, :] + m[:, None, None] * eye
        Y = torch.linalg.solve_ex(C, -(neg[:, :, None] * H * pos[:, None, :])).result
        X = torch.diag_embed(pos) + neg[:, :, None] * Y * pos[:, None, :]
        T = X.transpose(1, 2) @ (Z @ X)
        absX = X.abs()
        normX2 = absX.sum(1).amax(1) * absX.sum(2).amax(1)          # ‖X‖₁‖X‖∞ ≥ ‖|X|‖₂²
        eps = 2.0 * normX2 * (_gamma(2 * N) * Z.flatten(1).norm(dim=1)
                              + _gamma(M + 4) * scale[sl] + _U * (m + Hdiag.amax(1)))
        Tplus = T.diagonal(dim1=1, dim2=2).abs() * pos
        tmax = Tplus.amax(1)
        sigma = (2.0 * eps + 4.0 * _gamma(N + 1) * (Tplus.sum(1) + neg.sum(1) * m)
                 + 4.0 * _U * tmax)
        B = T - torch.diag_embed(sigma[:, None] * pos - m[:, None] * neg)
        info = torch.linalg.cholesky_ex(B).info
        eta = 1.01 * _gamma(N + 1) * B.diagonal(dim1=1, dim2=2).abs().sum(1)
        ok = (info == 0) & (m > 0) & ((1 - _U) * sigma > 1.01 * (eps + eta + _U * tmax))
        proven[sl] = ok & torch.isfinite(sigma) & torch.isfinite(eta)
    return proven


def _small_side_upper(W: Tensor, D: Tensor) -> Tuple[Tensor, Tensor]:
    """Upper bounds of λmax(Wᵀ diag(D_k) W) for N < M from N×N matrices, and where proven.

    Estimate: with G ≈ L Lᵀ (L = U Λ^{1/2} from ``eigh`` of the computed W Wᵀ), the nonzero
    eigenvalues of Wᵀ diag(d) W are those of diag(d) W Wᵀ, hence of Lᵀ diag(d) L; since N < M,
    λmax ≥ 0. Candidate μ = λ̂ + δ with λ̂ = max(λmax(Lᵀ diag(d) L), 0) and the module's margin
    δ = max(1e-9, 8u·max(N, M)²)(λ̂ + ‖d‖∞‖W‖_F²); :func:`small_side_certified` proves it.

    Args:
        W: (N, M) float64, N < M.
        D: (K, N) float64.

    Returns:
        (mu (K,), proven (K,) bool): mu is a rigorous upper bound where proven is True.
    """
    N, M = W.shape
    scale = D.abs().amax(1) * (W * W).sum()
    ev, U = torch.linalg.eigh(W @ W.t())
    L = U * ev.clamp_min(0).sqrt()
    lam = torch.empty(D.shape[0], dtype=_F64, device=D.device)
    for sl in _chunks(D.shape[0], N, extra=2):
        lam[sl] = torch.linalg.eigvalsh(L.t() @ (D[sl, :, None] * L))[:, -1]
    lam = lam.clamp_min(0)
    mu = lam + margin_factor(max(N, M)) * (lam + scale)
    return mu, small_side_certified(W, D, mu)


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
