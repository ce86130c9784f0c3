"""Curvature bounds (crc_core.curvature): soundness against exact Hessians, closed forms,
tightness, local bounds, the training penalty, the estimate mode, errors.

Soundness is checked against the exact Hessian eigenvalues of f = z_y − z_t from autograd
(torch.func.hessian on an independently written forward pass), at random points, data-like
points in [0, 1]^D and points found by gradient ascent on λmax / descent on λmin (autograd
through eigvalsh). Per network: 15 + 10 + 10 + 10 = 45 points; 9 (depth, activation) configs
× 3 networks (random, briefly trained, scaled-up) = 1,215 points for the global bounds, plus
the local-bound points (9 configs × 2 radii × 48 = 864).
"""
import math

import pytest
import torch
from torch.func import hessian, vmap

from crc_core import MLP, curvature
from crc_core import hessian as hessian_mod
from crc_core.activations import NoCurvatureError

SMOOTH = ["softplus", "sigmoid", "tanh"]
WIDTHS = {2: [20, 16, 3], 3: [20, 16, 16, 3], 4: [20, 16, 12, 16, 3]}
CONFIGS = [(L, a) for L in (2, 3, 4) for a in SMOOTH]
TOL = 1e-10  # absolute slack for comparing float64 eigenvalues of O(1)–O(100) matrices


# ------------------------------------------------------------------------------------------------
# Helpers
def make_net(L, act, kind="random", seed=0):
    torch.manual_seed(seed)
    model = MLP(WIDTHS[L], act).double()
    if kind == "trained":
        g = torch.Generator().manual_seed(seed + 100)
        X = torch.rand(128, WIDTHS[L][0], generator=g, dtype=torch.float64)
        Y = torch.randint(0, WIDTHS[L][-1], (128,), generator=g)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), Y).backward()
            opt.step()
    elif kind == "scaled":
        with torch.no_grad():
            for w in model.weights:
                w.mul_(4.0)
    return model


def forward(model, x):
    """Logits for one unbatched x, written independently of MLP.preactivations."""
    a = x
    ws, bs = model.weights, model.biases
    for k, (w, b) in enumerate(zip(ws, bs)):
        a = w @ a + b
        if k < len(ws) - 1:
            a = model.activation.fn(a)
    return a


def coeffs(model, y, t):
    v = torch.zeros(len(y), model.num_classes, dtype=torch.float64)
    v[torch.arange(len(y)), y] += 1
    v[torch.arange(len(y)), t] -= 1
    return v


def exact_hessians(model, x, y, t):
    """(B, D, D) autograd Hessians of z_y − z_t (torch.func, per sample)."""
    with torch.no_grad():
        v = coeffs(model, y, t)
    return vmap(hessian(lambda xb, vb: forward(model, xb) @ vb))(x.detach(), v)


def exact_eigs(model, x, y, t):
    with torch.no_grad():
        return torch.linalg.eigvalsh(exact_hessians(model, x, y, t))


def extreme_points(model, x0, y, t, sign, steps=30, lr=0.3, ball=None):
    """Normalized gradient ascent of sign·λ_{max/min}(∇²f(x)) from x0 (autograd through eigvalsh
    of the differentiable Lemma 1 Hessian; only a search — the checks use the autograd Hessian);
    optionally projected on the l2 ball (center, radius)."""
    idx = -1 if sign > 0 else 0
    x = x0.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        H = hessian_mod.margin_hessian(model, x, y, t, differentiable=True)
        obj = sign * torch.linalg.eigvalsh(H)[:, idx]
        (gx,) = torch.autograd.grad(obj.sum(), x)
        x = x.detach() + lr * gx / gx.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if ball is not None:
            center, radius = ball
            d = x - center
            n = d.norm(dim=1, keepdim=True)
            x = center + d * torch.clamp(radius[:, None] / n.clamp_min(1e-300), max=1.0)
    return x.detach()


def random_pairs(C, n, gen):
    y = torch.randint(0, C, (n,), generator=gen)
    t = (y + 1 + torch.randint(0, C - 1, (n,), generator=gen)) % C
    return y, t


def audit_points(model, gen):
    """45 points: 15 Gaussian (scale 3), 10 uniform [0,1]^D, 10 + 10 by eigenvalue ascent."""
    D, C = model.input_dim, model.num_classes
    y, t = random_pairs(C, 45, gen)
    x = torch.cat([3 * torch.randn(15, D, generator=gen, dtype=torch.float64),
                   torch.rand(10, D, generator=gen, dtype=torch.float64),
                   2 * torch.randn(20, D, generator=gen, dtype=torch.float64)])
    x[25:35] = extreme_points(model, x[25:35], y[25:35], t[25:35], +1)
    x[35:45] = extreme_points(model, x[35:45], y[35:45], t[35:45], -1)
    return x, y, t


# ------------------------------------------------------------------------------------------------
# Soundness of the global bounds
@pytest.mark.parametrize("L,act", CONFIGS)
def test_global_bounds_sound_at_many_points(L, act):
    gen = torch.Generator().manual_seed(L * 10 + SMOOTH.index(act))
    checked = 0
    for kind in ("random", "trained", "scaled"):
        model = make_net(L, act, kind, seed=L)
        x, y, t = audit_points(model, gen)
        ev = exact_eigs(model, x, y, t)
        lmin, lmax = ev[:, 0], ev[:, -1]
        methods = ["tightest", "refined", "theorem4"] + (["theorem3"] if L == 2 else [])
        for method in methods:
            m, M = curvature.global_bounds(model, y, t, method)
            assert m.dtype == torch.float64 and M.shape == (45,)
            assert (m <= lmin + TOL).all(), (method, kind, (lmin - m).min())
            assert (lmax <= M + TOL).all(), (method, kind, (M - lmax).min())
        # K ≥ refined ≥ true curvature; tightest = elementwise tighter of the sound ones.
        K = curvature.theorem4_bound(model, y, t)
        mr, Mr = curvature.refined_bounds(model, y, t)
        assert (torch.maximum(mr.abs(), Mr.abs()) <= K * (1 + 1e-8)).all()
        assert (torch.maximum(lmin.abs(), lmax.abs()) <= K + TOL).all()
        mt, Mt = curvature.global_bounds(model, y, t)
        if L == 2:
            m3, M3 = curvature.theorem3_bounds(model, y, t)
            assert torch.equal(m3, mr) and torch.equal(M3, Mr)
            assert torch.equal(mt, m3) and torch.equal(Mt, M3)
        else:
            assert torch.equal(mt, torch.maximum(mr, -K)) and torch.equal(Mt, torch.minimum(Mr, K))
        checked += len(x)
    assert checked == 135


def test_lemma1_hessian_agrees_with_autograd_reference():
    """The closed-form Hessian used by empirical_curvature equals the autograd reference."""
    model = make_net(3, "tanh", "scaled")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 6, gen)
    torch.testing.assert_close(hessian_mod.margin_hessian(model, x, y, t),
                               exact_hessians(model, x, y, t), rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------------------------------------
# Closed forms, constants, tightness
def diagonal_net(act, a, W2):
    """L = 2 net with W1 = diag(a) (D = N_1), so P and N are diagonal."""
    model = MLP([len(a), len(a), W2.shape[0]], act).double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.diag(a))
        model.layers[1].weight.copy_(W2)
    return model


@pytest.mark.parametrize("act", SMOOTH)
def test_theorem3_and_4_closed_form_diagonal(act):
    from crc_core.activations import get_activation
    A = get_activation(act)
    a = torch.tensor([0.5, -2.0, 1.5, 3.0], dtype=torch.float64)
    W2 = torch.tensor([[1.0, -2.0, 0.5, 0.25], [-1.0, 1.0, 2.0, -0.5], [0.0, 0.5, -1.0, 1.0]],
                      dtype=torch.float64)
    model = diagonal_net(act, a, W2)
    for y, t in [(0, 1), (1, 0), (2, 0), (1, 2)]:
        w = W2[y] - W2[t]
        p = torch.maximum(w * A.h_L, w * A.h_U)
        n = torch.minimum(w * A.h_L, w * A.h_U)
        m, M = curvature.theorem3_bounds(model, torch.tensor([y]), torch.tensor([t]))
        torch.testing.assert_close(M, (a * a * p).max().reshape(1), rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(m, (a * a * n).min().reshape(1), rtol=1e-6, atol=1e-12)
        assert M >= (a * a * p).max() and m <= (a * a * n).min()
        K = curvature.theorem4_bound(model, torch.tensor([y]), torch.tensor([t]))
        expected = (A.h * (a * a).max() * w.abs().max()).reshape(1)
        torch.testing.assert_close(K, expected, rtol=1e-6, atol=0)


def test_constants_signs():
    """Softplus (h_L = 0): N uses only the negative part of w, so w ≥ 0 gives m ≈ 0 (f convex);
    sigmoid / tanh (h_L = −h_U): P = −N, so M = −m."""
    torch.manual_seed(0)
    W2 = torch.randn(3, 8, dtype=torch.float64)
    W2[0] = W2[1].abs() + torch.rand(8, dtype=torch.float64)  # w = W2[0] − W2[1] ≥ 0
    for act in SMOOTH:
        model = MLP([10, 8, 3], act).double()
        with torch.no_grad():
            model.layers[1].weight.copy_(W2)
        m, M = curvature.theorem3_bounds(model, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]))
        assert (m <= 0).all() and (M >= 0).all()
        if act == "softplus":
            assert abs(float(m[0])) < 1e-9 * float(M[0])  # only the safety margin
            assert float(M[1]) > 0 and float(m[1]) < 0
            # N(y, t) = −P(t, y)
            m2, M2 = curvature.theorem3_bounds(model, torch.tensor([1]), torch.tensor([0]))
            torch.testing.assert_close(M2, -m[:1], rtol=1e-12, atol=1e-15)
        else:
            torch.testing.assert_close(M, -m, rtol=1e-12, atol=0)


def _target_z(act, w):
    """Pre-activations where σ''(z_k) attains the end of [h_L, h_U] that w_k selects for P
    (or for N with −w)."""
    from crc_core.activations import get_activation
    A = get_activation(act)
    cand = torch.tensor([-40.0, 40.0] + list(A.d2_critical), dtype=torch.float64)
    vals = A.d2(cand)
    z_hi, z_lo = cand[vals.argmax()], cand[vals.argmin()]
    return torch.where(w > 0, z_hi, z_lo)


@pytest.mark.parametrize("act", SMOOTH)
def test_theorem3_is_attained_when_D_ge_N1(act):
    """For L = 2 with D ≥ N_1 every z^(1) is reachable, so M and m are attained (tightness)."""
    torch.manual_seed(1)
    model = MLP([12, 8, 3], act).double()
    W1, b1, W2 = model.weights[0], model.biases[0], model.weights[1]
    y, t = torch.tensor([0]), torch.tensor([2])
    w = (W2[0] - W2[2]).detach()
    m, M = curvature.theorem3_bounds(model, y, t)
    for sign, bound in ((1, M), (-1, m)):
        z = _target_z(act, sign * w)
        x = torch.linalg.lstsq(W1.detach(), (z - b1.detach())[:, None]).solution.T
        ev = exact_eigs(model, x, y, t)[0]
        reached = ev[-1] if sign > 0 else ev[0]
        assert abs(float(reached - bound)) <= 1e-6 * abs(float(bound)) + 1e-12


# ------------------------------------------------------------------------------------------------
# Verified eigenvalue path (Lanczos + Cholesky) and rounding margins
@pytest.mark.parametrize("steps", [30, 2])
def test_verified_path_matches_eigvalsh_and_stays_above(monkeypatch, steps):
    """With the direct-eigvalsh threshold lowered, the Lanczos + Cholesky path is used: it must
    agree with dense eigvalsh to ~1e-6 and never fall below it — also with a useless 2-step
    Lanczos estimate (then the fallbacks must catch it)."""
    torch.manual_seed(2)
    W = torch.randn(70, 50, dtype=torch.float64)
    D = torch.cat([torch.rand(6, 70, dtype=torch.float64),            # PSD rows
                   torch.randn(6, 70, dtype=torch.float64)])          # mixed signs
    exact = torch.linalg.eigvalsh(W.T @ (D[:, :, None] * W))[:, -1]
    direct = curvature._quad_lmax(W, D)
    monkeypatch.setattr(curvature, "_DIRECT_EIG_MAX_DIM", 0)
    monkeypatch.setattr(curvature, "_LANCZOS_STEPS", steps)
    verified = curvature._quad_lmax(W, D)
    assert (direct >= exact).all() and (verified >= exact).all()
    torch.testing.assert_close(verified, exact, rtol=2e-4 if steps == 2 else 1e-6, atol=1e-12)


def test_global_bounds_via_verified_path(monkeypatch):
    monkeypatch.setattr(curvature, "_DIRECT_EIG_MAX_DIM", 0)
    model = make_net(3, "softplus", "trained")
    gen = torch.Generator().manual_seed(5)
    x, y, t = audit_points(model, gen)
    m, M = curvature.global_bounds(model, y, t, cache=False)
    ev = exact_eigs(model, x, y, t)
    assert (m <= ev[:, 0] + TOL).all() and (ev[:, -1] <= M + TOL).all()
    monkeypatch.undo()
    m2, M2 = curvature.global_bounds(model, y, t, cache=False)
    torch.testing.assert_close(M, M2, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(m, m2, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# All pairs, cache
def test_all_pair_bounds_consistent_with_batches():
    model = make_net(3, "sigmoid", "scaled")
    for method in curvature.METHODS:
        if method == "theorem3":
            continue
        m_tab, M_tab = curvature.all_pair_bounds(model, method)
        assert m_tab.shape == (3, 3) and torch.isnan(m_tab.diagonal()).all()
        y = torch.tensor([0, 2, 1, 0, 2, 1, 0])
        t = torch.tensor([1, 0, 2, 2, 1, 0, 1])
        m, M = curvature.global_bounds(model, y, t, method, cache=False)
        torch.testing.assert_close(m, m_tab[y, t], rtol=0, atol=0)
        torch.testing.assert_close(M, M_tab[y, t], rtol=0, atol=0)
    with pytest.raises(ValueError, match="two-layer"):
        curvature.all_pair_bounds(model, "theorem3")


def test_cache_follows_the_weights_even_through_dot_data():
    model = make_net(2, "softplus")
    y, t = torch.tensor([0]), torch.tensor([1])
    m1, M1 = curvature.global_bounds(model, y, t)
    model.layers[0].weight.data.mul_(2.0)       # .data: no version bump; the cache must notice
    m2, M2 = curvature.global_bounds(model, y, t)
    torch.testing.assert_close(M2, 4 * M1, rtol=1e-6, atol=0)
    torch.testing.assert_close(m2, 4 * m1, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------
# Local bounds
def ball_points(center, radius, gen, n_sphere, n_inside):
    D = center.shape[1]
    dirs = torch.randn(center.shape[0], n_sphere + n_inside, D, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=2, keepdim=True)
    scale = torch.ones(center.shape[0], n_sphere + n_inside, 1, dtype=torch.float64)
    scale[:, n_sphere:, 0] = torch.rand(center.shape[0], n_inside, generator=gen, dtype=torch.float64)
    return center[:, None, :] + radius[:, None, None] * scale * dirs


@pytest.mark.parametrize("L,act", CONFIGS)
def test_local_bounds_sound_inside_the_ball(L, act):
    model = make_net(L, act, "scaled" if L == 2 else "trained", seed=L + 7)
    gen = torch.Generator().manual_seed(100 + L)
    centers = torch.rand(4, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 4, gen)
    mg, Mg = curvature.global_bounds(model, y, t)
    for R in (0.3, 2.0):
        radius = torch.full((4,), R, dtype=torch.float64)
        m, M = curvature.local_bounds(model, centers, y, t, R)
        assert (m >= mg).all() and (M <= Mg).all()
        pts = ball_points(centers, radius, gen, 6, 4)             # (4, 10, D)
        ascent = []
        for sign in (1, -1):                                       # 2 × 4 × 1 ascents per center
            start = pts[:, :1, :].reshape(-1, 20) + 0.0
            ascent.append(extreme_points(model, start, y, t, sign, steps=20, lr=0.3 * R,
                                         ball=(centers, radius)))
        xs = torch.cat([pts, torch.stack(ascent, 1)], 1)          # (4, 12, D)
        assert ((xs - centers[:, None]).norm(dim=2) <= R * (1 + 1e-12)).all()
        yy, tt = y.repeat_interleave(12), t.repeat_interleave(12)
        ev = exact_eigs(model, xs.reshape(-1, 20), yy, tt).reshape(4, 12, -1)
        assert (m[:, None] <= ev[:, :, 0] + TOL).all(), (m[:, None] - ev[:, :, 0]).max()
        assert (ev[:, :, -1] <= M[:, None] + TOL).all(), (ev[:, :, -1] - M[:, None]).max()


def test_local_bounds_tighter_for_small_radius_and_tensor_radius():
    model = make_net(2, "sigmoid", "scaled", seed=3)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(5, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 5, gen)
    mg, Mg = curvature.global_bounds(model, y, t)
    radius = torch.tensor([0.01, 0.05, 0.1, 0.5, 100.0], dtype=torch.float64)
    m, M = curvature.local_bounds(model, x, y, t, radius)
    assert (M[:3] < Mg[:3]).all() and (m[:3] > mg[:3]).all()
    # Huge radius: local = global (the tighter of the two is returned).
    assert M[4] == Mg[4] and m[4] == mg[4]
    # Per-sample radius equals separate scalar calls.
    for b in range(5):
        mb, Mb = curvature.local_bounds(model, x[b:b + 1], y[b:b + 1], t[b:b + 1], float(radius[b]))
        torch.testing.assert_close(Mb, M[b:b + 1], rtol=1e-12, atol=0)


def test_local_bounds_via_verified_path(monkeypatch):
    monkeypatch.setattr(curvature, "_DIRECT_EIG_MAX_DIM", 0)
    model = make_net(2, "tanh", "scaled", seed=4)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(3, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 3, gen)
    m, M = curvature.local_bounds(model, x, y, t, 0.5)
    monkeypatch.undo()
    m2, M2 = curvature.local_bounds(model, x, y, t, 0.5)
    torch.testing.assert_close(M, M2, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(m, m2, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Training penalty
@pytest.mark.parametrize("L", [2, 3, 4])
def test_curvature_penalty_converges_to_theorem4(L):
    model = make_net(L, "softplus", "trained")
    y, t = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    for _ in range(200):
        K = curvature.curvature_penalty(model, y, t)
    K4 = curvature.theorem4_bound(model, y, t)
    torch.testing.assert_close(K.detach(), K4, rtol=1e-6, atol=0)
    assert K.requires_grad


def test_curvature_penalty_two_layer_formula_and_buffers():
    model = make_net(2, "sigmoid", "random")
    u0 = model.power_vectors(1)[0].clone()
    K = curvature.curvature_penalty(model, torch.tensor([2]), torch.tensor([0]))
    u, v = model.power_vectors(1)
    assert not torch.equal(u, u0)                                  # one step advanced the buffer
    W1, W2 = model.weights[0], model.weights[1]
    sig = float(u @ W1.detach() @ v)
    expected = math.sqrt(3) / 18 * sig ** 2 * float((W2[2] - W2[0]).abs().max())
    assert abs(float(K) - expected) <= 1e-12 * expected
    # power_steps=0 leaves the buffers alone.
    u1 = u.clone()
    curvature.curvature_penalty(model, torch.tensor([2]), torch.tensor([0]), power_steps=0)
    assert torch.equal(model.power_vectors(1)[0], u1)


@pytest.mark.parametrize("L", [2, 3])
def test_curvature_penalty_gradcheck_frozen_buffers(L):
    model = make_net(L, "tanh", "random")
    for _ in range(5):
        curvature.curvature_penalty(model, torch.tensor([0]), torch.tensor([1]))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    y, t = torch.tensor([0, 2, 1]), torch.tensor([1, 0, 2])

    class Penalty(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, y, t):
            return curvature.curvature_penalty(self.inner, y, t, power_steps=0)

    wrapper = Penalty(model)

    def fn(*ps):
        params = {f"inner.{n}": p for n, p in zip(names, ps)}
        return torch.func.functional_call(wrapper, params, (y, t))

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-6, rtol=1e-5)
    # The gradient of σ̂ = uᵀWv w.r.t. W^(1) is u vᵀ (times the outer factor).
    W1 = model.layers[0].weight
    model.zero_grad()
    K = curvature.curvature_penalty(model, torch.tensor([0]), torch.tensor([1]), power_steps=0)
    K.sum().backward()
    u, v = model.power_vectors(1)
    if L == 2:
        w = (model.weights[1][0] - model.weights[1][1]).detach()
        sig = float(u @ W1.detach() @ v)
        expected = model.activation.h * 2 * sig * w.abs().max() * torch.outer(u, v)
        torch.testing.assert_close(W1.grad, expected, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# Estimate mode
@pytest.mark.parametrize("L", [2, 3])
def test_estimate_mode_close_to_exact_and_from_below(L):
    model = make_net(L, "softplus", "trained")
    for _ in range(300):  # converge the persistent norm buffers (as training would)
        curvature.curvature_penalty(model, torch.tensor([0]), torch.tensor([1]))
    y, t = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 2, 0])
    m, M = curvature.global_bounds(model, y, t)
    me, Me = curvature.global_bounds(model, y, t, exact=False, iters=500, tol=0)
    assert me.dtype == torch.float64
    torch.testing.assert_close(Me, M, rtol=1e-5, atol=0)
    torch.testing.assert_close(me, m, rtol=1e-5, atol=0)
    assert (Me <= M).all() and (me >= m).all()
    # Warm start: one more iteration after a weight nudge stays close.
    with torch.no_grad():
        model.layers[0].weight.mul_(1.001)
    M_new = curvature.global_bounds(model, y, t)[1]
    Me1 = curvature.global_bounds(model, y, t, exact=False, iters=1)[1]
    torch.testing.assert_close(Me1, M_new, rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------------------------
# Figure 1's K_lb
def test_empirical_curvature_table():
    model = make_net(2, "sigmoid", "scaled")
    gen = torch.Generator().manual_seed(9)
    X = torch.rand(12, 20, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, 3, (12,), generator=gen)
    res = curvature.empirical_curvature(model, X, Y, batch_size=5)
    logits = model(X).detach().clone()
    logits[torch.arange(12), Y] = -float("inf")
    T = logits.argmax(1)
    ev = exact_eigs(model, X, Y, T)
    for yv in range(3):
        for tv in range(3):
            sel = (Y == yv) & (T == tv)
            if sel.any():
                torch.testing.assert_close(res.table[yv, tv], ev[sel, -1].max(),
                                           rtol=1e-9, atol=1e-12)
            else:
                assert torch.isnan(res.table[yv, tv])
    assert res.mean == pytest.approx(float(res.table[~torch.isnan(res.table)].mean()))
    res_abs = curvature.empirical_curvature(model, X, Y, which="abs")
    assert (res_abs.table.nan_to_num() >= res.table.nan_to_num()).all()
    K = curvature.all_pair_bounds(model)[1]
    present = ~torch.isnan(res.table)
    assert (res.table[present] <= K[present]).all()


# ------------------------------------------------------------------------------------------------
# Errors
def test_errors():
    model = make_net(2, "softplus")
    x = torch.rand(2, 20, dtype=torch.float64)
    y, t = torch.tensor([0, 1]), torch.tensor([1, 2])
    relu = MLP([20, 8, 3], "relu")
    for call in (lambda: curvature.global_bounds(relu, y, t),
                 lambda: curvature.local_bounds(relu, x.float(), y, t, 0.5),
                 lambda: curvature.curvature_penalty(relu, y, t),
                 lambda: curvature.all_pair_bounds(relu)):
        with pytest.raises(NoCurvatureError, match="smooth"):
            call()
    with pytest.raises(ValueError, match="differ"):
        curvature.global_bounds(model, y, y)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        curvature.global_bounds(model, y, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="same shape"):
        curvature.global_bounds(model, y, torch.tensor([1, 2, 0]))
    with pytest.raises(ValueError, match="integer"):
        curvature.global_bounds(model, y.double(), t)
    with pytest.raises(ValueError, match="method"):
        curvature.global_bounds(model, y, t, "theorem5")
    with pytest.raises(ValueError, match="two-layer"):
        curvature.theorem3_bounds(make_net(3, "softplus"), y, t)
    with pytest.raises(ValueError, match="NaN"):
        nan_x = torch.full((2, 20), float("nan"), dtype=torch.float64)
        curvature.local_bounds(model, nan_x, y, t, 0.5)
    with pytest.raises(ValueError, match="shape"):
        curvature.local_bounds(model, torch.rand(2, 19, dtype=torch.float64), y, t, 0.5)
    with pytest.raises(ValueError, match="match x"):
        curvature.local_bounds(model, torch.rand(3, 20, dtype=torch.float64), y, t, 0.5)
    for bad in (0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.5, -0.1])):
        with pytest.raises(ValueError, match="radius"):
            curvature.local_bounds(model, x, y, t, bad)
    with pytest.raises(ValueError, match="radius"):
        curvature.local_bounds(model, x, y, t, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="iters"):
        curvature.global_bounds(model, y, t, exact=False, iters=0)
    with pytest.raises(ValueError, match="power_steps"):
        curvature.curvature_penalty(model, y, t, power_steps=-1)
    with pytest.raises(ValueError, match="which"):
        curvature.empirical_curvature(model, x, y, which="min")
    bad_model = make_net(2, "softplus")
    with torch.no_grad():
        bad_model.layers[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        curvature.global_bounds(bad_model, y, t)


# ------------------------------------------------------------------------------------------------
# Heavier audits (pytest -m slow)
@pytest.mark.slow
@pytest.mark.parametrize("L,act", CONFIGS)
def test_slow_audit_wider_nets_verified_path(monkeypatch, L, act):
    """Wider nets, 200 points per net (120 by eigenvalue ascent, 60 steps), bounds computed
    through the Lanczos + Cholesky path (threshold lowered)."""
    monkeypatch.setattr(curvature, "_DIRECT_EIG_MAX_DIM", 0)
    widths = {2: [24, 40, 5], 3: [24, 40, 32, 5], 4: [24, 40, 32, 24, 5]}[L]
    gen = torch.Generator().manual_seed(1000 + L)
    for kind, scale in (("random", 1.0), ("trained", 1.0), ("random", 5.0)):
        torch.manual_seed(L + int(scale))
        model = MLP(widths, act).double()
        if kind == "trained":
            X = torch.rand(256, widths[0], generator=gen, dtype=torch.float64)
            Y = torch.randint(0, widths[-1], (256,), generator=gen)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            for _ in range(200):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(X), Y).backward()
                opt.step()
        with torch.no_grad():
            for w in model.weights:
                w.mul_(scale)
        y, t = random_pairs(widths[-1], 200, gen)
        x = torch.cat([3 * torch.randn(40, widths[0], generator=gen, dtype=torch.float64),
                       torch.rand(40, widths[0], generator=gen, dtype=torch.float64),
                       2 * torch.randn(120, widths[0], generator=gen, dtype=torch.float64)])
        x[80:140] = extreme_points(model, x[80:140], y[80:140], t[80:140], +1, steps=60)
        x[140:] = extreme_points(model, x[140:], y[140:], t[140:], -1, steps=60)
        ev = exact_eigs(model, x, y, t)
        for method in ("tightest", "refined", "theorem4"):
            m, M = curvature.global_bounds(model, y, t, method, cache=False)
            assert (m <= ev[:, 0] + TOL).all() and (ev[:, -1] <= M + TOL).all(), (method, kind)


@pytest.mark.slow
@pytest.mark.parametrize("L,act", CONFIGS)
def test_slow_audit_local_bounds(L, act):
    gen = torch.Generator().manual_seed(2000 + L)
    for kind in ("random", "trained", "scaled"):
        model = make_net(L, act, kind, seed=L + 11)
        centers = torch.rand(6, 20, generator=gen, dtype=torch.float64)
        y, t = random_pairs(3, 6, gen)
        for R in (0.05, 0.5, 3.0):
            radius = torch.full((6,), R, dtype=torch.float64)
            m, M = curvature.local_bounds(model, centers, y, t, radius)
            pts = ball_points(centers, radius, gen, 20, 20)
            ascent = [extreme_points(model, pts[:, k, :], y, t, sign, steps=40, lr=0.2 * R,
                                     ball=(centers, radius))
                      for k, sign in ((0, 1), (1, 1), (2, -1), (3, -1))]
            xs = torch.cat([pts, torch.stack(ascent, 1)], 1)
            n = xs.shape[1]
            ev = exact_eigs(model, xs.reshape(-1, 20), y.repeat_interleave(n),
                            t.repeat_interleave(n)).reshape(6, n, -1)
            assert (m[:, None] <= ev[:, :, 0] + TOL).all()
            assert (ev[:, :, -1] <= M[:, None] + TOL).all()
