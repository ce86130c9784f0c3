"""Verified float64 linear algebra (crc_core.verified_linalg): interval products against exact
rational arithmetic and sampled points, Lanczos estimates inside the spectrum, certified λmax
(direct, Lanczos + Cholesky and small-side paths) never below dense eigvalsh, spectral-norm
upper bounds."""
from fractions import Fraction

import pytest
import torch

from crc_core import verified_linalg as vl

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# Margins and norms
def test_margin_factor_closed_form():
    assert vl.margin_factor(1) == 1e-9
    assert vl.margin_factor(100_000) == pytest.approx(8 * 2.0 ** -53 * 1e10, rel=1e-15)
    assert vl.UNIT_ROUNDOFF == 2.0 ** -53


def test_spectral_norm_upper_is_above_and_close():
    gen = torch.Generator().manual_seed(0)
    for shape in ((5, 3), (40, 70), (1, 9)):
        W = torch.randn(*shape, generator=gen, dtype=F64)
        exact = torch.linalg.svdvals(W)[0]
        ub = vl.spectral_norm_upper(W.float())        # any dtype in, float64 out
        assert ub.dtype == F64 and ub >= torch.linalg.svdvals(W.float().double())[0]
        assert float(ub) <= float(exact) * (1 + 1e-6)
    # Closed form: a diagonal matrix.
    assert float(vl.spectral_norm_upper(torch.diag(torch.tensor([3.0, -7.0, 2.0], dtype=F64)))) \
        == pytest.approx(7.0, rel=1e-8)


# ------------------------------------------------------------------------------------------------
# Interval arithmetic
def test_interval_product_closed_form_and_widening():
    lo, hi = vl.interval_product(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([2.0, -1.0], dtype=F64),
                                 -3.0, 4.0, rigorous=False)
    assert lo.tolist() == [-6.0, -8.0] and hi.tolist() == [8.0, 6.0]
    rlo, rhi = vl.interval_product(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([2.0, -1.0], dtype=F64),
                                   -3.0, 4.0)
    assert (rlo < lo).all() and (rhi > hi).all()
    assert ((hi - lo) * 1e-14 > (rhi - hi)).all()     # widened by a few ulps only


def test_interval_product_contains_sampled_products():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 50, generator=gen, dtype=F64).sort(0).values
    b = torch.randn(2, 50, generator=gen, dtype=F64).sort(0).values
    lo, hi = vl.interval_product(a[0], a[1], b[0], b[1])
    s = torch.rand(2, 200, 50, generator=gen, dtype=F64)
    pa = a[0] + s[0] * (a[1] - a[0])
    pb = b[0] + s[1] * (b[1] - b[0])
    assert ((lo <= pa * pb) & (pa * pb <= hi)).all()


def test_interval_matvec_encloses_exact_rational_products():
    """For points u of the box, the exact (rational) u W lies in the rigorous enclosure; the
    plain one is the midpoint-radius formula."""
    gen = torch.Generator().manual_seed(2)
    n, m = 12, 5
    W = torch.randn(n, m, generator=gen, dtype=F64) * 1e3
    ulo = torch.randn(3, n, generator=gen, dtype=F64)
    uhi = ulo + torch.rand(3, n, generator=gen, dtype=F64) * torch.tensor([[0.0], [1e-12], [1.0]],
                                                                           dtype=F64)
    lo, hi = vl.interval_matvec(ulo, uhi, W)
    Wq = [[Fraction(float(W[i, j])) for j in range(m)] for i in range(n)]
    for k in range(3):
        for corner in (ulo[k], uhi[k], 0.5 * (ulo[k] + uhi[k])):
            uq = [Fraction(float(v)) for v in corner]
            for j in range(m):
                exact = sum(uq[i] * Wq[i][j] for i in range(n))
                assert Fraction(float(lo[k, j])) <= exact <= Fraction(float(hi[k, j]))
    plo, phi = vl.interval_matvec(ulo, uhi, W, rigorous=False)
    mid, rad = 0.5 * (ulo + uhi), 0.5 * (uhi - ulo)
    torch.testing.assert_close(plo, mid @ W - rad @ W.abs(), rtol=0, atol=0)
    torch.testing.assert_close(phi, mid @ W + rad @ W.abs(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Eigenvalues
def test_lanczos_extremes_inside_the_spectrum_and_exact_with_enough_steps():
    ev = torch.linspace(-2.0, 5.0, 30, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(3), dtype=F64))
    A = torch.stack([Q @ torch.diag(ev) @ Q.T, Q @ torch.diag(2 * ev) @ Q.T])

    def op(X):
        return torch.einsum("kij,kj->ki", A, X)

    size = torch.tensor([5.0, 10.0], dtype=F64)
    lo, hi, broke = vl.lanczos_extremes(op, 2, 30, 30, size, "cpu")
    torch.testing.assert_close(hi, torch.tensor([5.0, 10.0], dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(lo, torch.tensor([-2.0, -4.0], dtype=F64), rtol=1e-10, atol=0)
    lo3, hi3, _ = vl.lanczos_extremes(op, 2, 30, 3, size, "cpu")
    assert (hi3 <= hi + 1e-12).all() and (lo3 >= lo - 1e-12).all() and (hi3 < hi).any()


@pytest.mark.parametrize("steps", [30, 2])
def test_verified_path_matches_eigvalsh_and_stays_above(monkeypatch, steps):
    """With the direct-eigvalsh threshold lowered, the Lanczos + Cholesky path is used: it must
    agree with dense eigvalsh to ~1e-6 and never fall below it — also with a useless 2-step
    Lanczos estimate (then the fallbacks must catch it)."""
    torch.manual_seed(2)
    W = torch.randn(70, 50, dtype=F64)
    D = torch.cat([torch.rand(6, 70, dtype=F64),            # PSD rows
                   torch.randn(6, 70, dtype=F64)])          # mixed signs
    exact = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))[:, -1]
    direct = vl.lambda_max_upper(W, D)
    monkeypatch.setattr(vl, "_DIRECT_EIG_MAX_DIM", 0)
    monkeypatch.setattr(vl, "_LANCZOS_STEPS", steps)
    verified = vl.lambda_max_upper(W, D)
    assert (direct >= exact).all() and (verified >= exact).all()
    torch.testing.assert_close(verified, exact, rtol=2e-4 if steps == 2 else 1e-6, atol=1e-12)


def test_lambda_max_upper_shapes_duplicates_and_the_small_space():
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(8, 30, generator=gen, dtype=F64)          # N = 8 < M = 30: PSD rows in N space
    D = torch.rand(3, 8, generator=gen, dtype=F64)
    D = torch.cat([D, D[:1], -D[1:2]])                         # a duplicate row, an NSD row
    ub = vl.lambda_max_upper(W, D)
    exact = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))[:, -1]
    assert ub.shape == (5,) and (ub >= exact).all()
    # Above by at most about the documented margin δ = max(1e-9, 8un²)(|λ| + ‖d‖∞‖W‖_F²).
    delta = vl.margin_factor(30) * (exact.abs() + D.abs().amax(1) * (W * W).sum())
    assert (ub - exact <= 1.01 * delta + 1e-13).all()
    assert ub[3] == ub[0]
    assert vl.lambda_max_upper(W, D[:0]).shape == (0,)


def test_quad_form_extremes_clamp():
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(10, 6, generator=gen, dtype=F64)
    P = -torch.rand(2, 10, generator=gen, dtype=F64)           # negative definite "upper" diagonal
    N = torch.randn(2, 10, generator=gen, dtype=F64)
    lo, hi = vl.quad_form_extremes(W, P, N, clamp=False)
    assert (hi < 0).all()                                       # λmax of an NSD matrix
    assert (lo <= torch.linalg.eigvalsh(W.T @ (N[:, :, None] * W))[:, 0]).all()
    lo_c, hi_c = vl.quad_form_extremes(W, P, N, clamp=True)
    assert (hi_c == 0).all() and (lo_c <= 0).all()
    Nneg = N.clamp(max=0)
    assert (lo_c <= torch.linalg.eigvalsh(W.T @ (Nneg[:, :, None] * W))[:, 0]).all()


def test_lanczos_estimates_stay_inside_the_spectrum_near_a_breakdown():
    """Rank-24 operators of size 200, 40 steps: the Krylov space becomes invariant near step 24.
    With one Gram–Schmidt pass per step, orthogonality decays before the breakdown and rows
    whose last β stays above the 1e-10 threshold get ghost Ritz values (here 2.5% of ‖d‖∞‖W‖_F²
    above λmax); with two passes every estimate lies inside the spectrum."""
    g = torch.Generator().manual_seed(1)
    W = (torch.rand(24, 200, generator=g, dtype=F64) * 2 - 1) / 200 ** 0.5
    D = torch.randn(40, 24, generator=g, dtype=F64)

    def op(X):
        return ((X @ W.T) * D) @ W

    size = D.abs().amax(1) * (W * W).sum()
    ev = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))
    lo, hi, broke = vl.lanczos_extremes(op, 40, 200, 40, size, "cpu")
    assert (hi <= ev[:, -1] + 1e-12 * size).all() and (lo >= ev[:, 0] - 1e-12 * size).all()
    torch.testing.assert_close(hi, ev[:, -1], rtol=0, atol=1e-12 * float(size.max()))
    assert broke.all()


def test_weighted_gram_equals_the_plain_product():
    g = torch.Generator().manual_seed(6)
    W = torch.randn(40, 300, generator=g, dtype=F64)          # 300 columns: three row blocks
    D = torch.randn(3, 40, generator=g, dtype=F64)
    A = vl.weighted_gram(W, D)
    ref = (W.T * D[:, None, :]) @ W
    assert A.shape == (3, 300, 300)
    torch.testing.assert_close(A, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    assert torch.equal(A[:, :128, 128:], A[:, 128:, :128].transpose(1, 2))   # mirrored blocks


# ------------------------------------------------------------------------------------------------
# The small side: mixed-sign rows with N < M proven from N×N matrices
def _exact_and_margin(W, D):
    exact = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))[:, -1]
    scale = D.abs().amax(1) * (W * W).sum()
    return exact, scale, vl.margin_factor(max(W.shape)) * (exact.abs() + scale)


def test_small_side_closed_form_orthogonal_rows():
    """W with orthogonal rows a e₁ᵀ, b e₂ᵀ, c e₃ᵀ: Wᵀdiag(d)W = diag(d₁a², d₂b², d₃c², 0, 0), so
    λmax = max(d₁a², d₂b², d₃c², 0) whatever the signs."""
    W = torch.zeros(3, 5, dtype=F64)
    W[0, 0], W[1, 1], W[2, 2] = 2.0, 0.5, 3.0
    D = torch.tensor([[1.0, -4.0, 0.25], [-1.0, 8.0, -0.5], [-1.0, -2.0, -3.0]], dtype=F64)
    closed = torch.tensor([4.0, 2.0, 0.0], dtype=F64)
    ub = vl.lambda_max_upper(W, D)
    _, scale, _ = _exact_and_margin(W, D)
    assert (ub >= closed).all()
    assert (ub - closed <= 1.01 * vl.margin_factor(5) * (closed + scale)).all()
    assert vl.small_side_certified(W, D, closed * (1 + 1e-6) + 1e-6).all()
    assert not vl.small_side_certified(W, D[:2], closed[:2] * (1 - 1e-6)).any()


@pytest.mark.parametrize("N,M", [(32, 784), (8, 30), (50, 300)])
def test_small_side_equals_the_dense_spectrum_within_the_margin(N, M):
    """Mixed-sign (and one NSD) rows: the small side proves every row, its bound is never below
    the exact λmax of the M×M matrix and above it by at most about the margin δ."""
    g = torch.Generator().manual_seed(N)
    W = torch.randn(N, M, generator=g, dtype=F64) / M ** 0.5
    D = torch.randn(6, N, generator=g, dtype=F64)
    D[0] = -D[0].abs()
    exact, scale, delta = _exact_and_margin(W, D)
    mu, proven = vl._small_side_upper(W, D)
    assert proven.all()
    ub = vl.lambda_max_upper(W, D)
    torch.testing.assert_close(ub, mu, rtol=0, atol=0)        # the path lambda_max_upper takes
    assert (ub >= exact).all() and (ub - exact <= 1.01 * delta + 1e-15 * scale).all()


def test_small_side_refuses_candidates_below_lambda_max():
    """A μ just below λmax (or ≤ 0) is never proven; one δ above it is."""
    g = torch.Generator().manual_seed(9)
    W = torch.randn(12, 80, generator=g, dtype=F64)
    D = torch.randn(5, 12, generator=g, dtype=F64)
    exact, scale, delta = _exact_and_margin(W, D)
    assert (exact > 0).all()
    assert not vl.small_side_certified(W, D, exact * (1 - 1e-9)).any()
    assert not vl.small_side_certified(W, D, torch.zeros(5, dtype=F64)).any()
    assert vl.small_side_certified(W, D, exact + delta).all()


def test_small_side_ill_conditioned_falls_back_soundly():
    """Nearly parallel rows of W with opposite signs of d (λmax ≈ 1e-10‖W‖²): the N×N proof
    fails, the M×M path answers, the bound stays above the exact λmax."""
    g = torch.Generator().manual_seed(10)
    W = torch.randn(6, 50, generator=g, dtype=F64)
    W[1] = W[0] + 1e-11 * torch.randn(50, generator=g, dtype=F64)
    D = torch.zeros(2, 6, dtype=F64)
    D[:, 0], D[:, 1] = 1.0, -1.0
    D[1, 1] = -1.0 - 1e-9
    exact, scale, delta = _exact_and_margin(W, D)
    _, proven = vl._small_side_upper(W, D)
    assert not proven.any()
    ub = vl.lambda_max_upper(W, D)
    assert (ub >= exact).all() and (ub - exact <= 1.01 * delta).all()


def test_rank_deficient_dense_path_is_proven_without_eigvalsh(monkeypatch):
    """With the small side switched off, rank-10 matrices of size 150 go to Lanczos (40 steps:
    a breakdown) + Cholesky: proven with the small breakdown slack, no dense eigvalsh of the
    150×150 matrices, never below the exact λmax."""
    g = torch.Generator().manual_seed(11)
    W = torch.randn(10, 150, generator=g, dtype=F64)
    D = torch.randn(8, 10, generator=g, dtype=F64)
    exact, scale, delta = _exact_and_margin(W, D)
    ev = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))
    radius = torch.maximum(ev[:, 0].abs(), ev[:, -1].abs())
    sizes = []
    eigvalsh = torch.linalg.eigvalsh

    def counting(A):
        sizes.append(A.shape[-1])
        return eigvalsh(A)

    monkeypatch.setattr(vl, "_small_side_pays", lambda N, M: False)
    monkeypatch.setattr(vl, "_DIRECT_EIG_MAX_DIM", 0)
    monkeypatch.setattr(torch.linalg, "eigvalsh", counting)
    ub = vl.lambda_max_upper(W, D)
    assert 150 not in sizes and sizes
    assert (ub >= exact).all()
    assert (ub - exact <= 1.01 * (1e-10 * radius + delta)).all()     # the slack 1e-10, not 1e-7
