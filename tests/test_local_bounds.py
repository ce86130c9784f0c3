"""Local curvature bounds (crc_core.local_bounds via curvature.local_bounds, Table 6): soundness
inside the ball against exact Hessians (autograd, tests/curvature_audit.py), the closed form for a
diagonal two-layer net, the σ', σ'' ranges over the ball against sampled points, the relation
to the global bounds, the verified eigenvalue path."""
import pytest
import torch

from crc_core import MLP, curvature, verified_linalg
from crc_core.activations import get_activation
from crc_core.local_bounds import ball_ranges
from curvature_audit import (CONFIGS, SMOOTH, TOL, ball_points, exact_eigs, extreme_points,
                             make_net, random_pairs)


# ------------------------------------------------------------------------------------------------
# Local bounds
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
    monkeypatch.setattr(verified_linalg, "_DIRECT_EIG_MAX_DIM", 0)
    model = make_net(2, "tanh", "scaled", seed=4)
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(3, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 3, gen)
    m, M = curvature.local_bounds(model, x, y, t, 0.5)
    monkeypatch.undo()
    m2, M2 = curvature.local_bounds(model, x, y, t, 0.5)
    torch.testing.assert_close(M, M2, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(m, m2, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("act", SMOOTH)
def test_local_theorem3_closed_form_diagonal(act):
    """L = 2 with W1 = diag(a): M = max_k a_k² max(w_k σ''(I_k)), m = min_k a_k² min(w_k σ''(I_k))
    over the intervals I_k = a_k x_k + b_k ± |a_k| R, the ranges of σ'' taken from a dense grid
    (from inside, so the bound may exceed them only by the grid error and the safety margin)."""
    A = get_activation(act)
    a = torch.tensor([0.5, -2.0, 1.5, 3.0], dtype=torch.float64)
    W2 = torch.tensor([[1.0, -2.0, 0.5, 0.25], [-1.0, 1.0, 2.0, -0.5], [0.0, 0.5, -1.0, 1.0]],
                      dtype=torch.float64)
    model = MLP([4, 4, 3], act).double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.diag(a))
        model.layers[0].bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
        model.layers[1].weight.copy_(W2)
    x = torch.tensor([[0.2, 0.7, -0.4, 0.1]], dtype=torch.float64)
    R = 0.6
    y, t = torch.tensor([0]), torch.tensor([2])
    m, M = curvature.local_bounds(model, x, y, t, R)
    z = (a * x[0] + model.biases[0].detach())
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    s = A.d2(z[:, None] + (2 * grid[None, :] - 1) * a.abs()[:, None] * R)   # (4, 20001)
    w = W2[0] - W2[2]
    p = torch.maximum(w * s.amin(1), w * s.amax(1))
    n = torch.minimum(w * s.amin(1), w * s.amax(1))
    M_ref, m_ref = (a * a * p).max(), (a * a * n).min()
    assert float(M_ref) <= float(M) <= float(M_ref) * (1 + 1e-6) + 1e-9
    assert float(m_ref) * (1 + 1e-6) - 1e-9 <= float(m) <= float(m_ref)


@pytest.mark.parametrize("L", [2, 3, 4])
def test_ball_ranges_contain_sampled_derivatives(L):
    """Every σ'(z^(J)), σ''(z^(J)) at points of the ball lies in the ranges of ball_ranges, and
    gbar bounds |σ'| per layer."""
    model = make_net(L, "sigmoid", "trained", seed=L)
    act = model.activation
    gen = torch.Generator().manual_seed(30 + L)
    centers = torch.rand(3, 20, generator=gen, dtype=torch.float64)
    R = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    d1, d2, gbar = ball_ranges(model, act, centers, R)
    assert len(d1) == len(d2) == len(gbar) == L - 1
    pts = ball_points(centers, R, gen, 30, 30)                       # (3, 60, D)
    zs = model.preactivations(pts.reshape(-1, 20))[:-1]
    for J, z in enumerate(zs):
        z = z.detach().reshape(3, 60, -1)
        s1, s2 = act.d1(z), act.d2(z)
        assert (d1[J][0][:, None] <= s1).all() and (s1 <= d1[J][1][:, None]).all()
        assert (d2[J][0][:, None] <= s2).all() and (s2 <= d2[J][1][:, None]).all()
        assert (s1.abs().amax(2) <= gbar[J][:, None]).all()
        # Narrower than the global ranges for the small ball.
        assert float((d2[J][1] - d2[J][0])[0].max()) < act.h_U - act.h_L


def test_local_bounds_accept_the_global_bounds_they_hold():
    """Passing the global bounds (from all_pair_bounds tables) gives the identical result."""
    model = make_net(3, "softplus", "trained", seed=2)
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(4, 20, generator=gen, dtype=torch.float64)
    y, t = random_pairs(3, 4, gen)
    m_tab, M_tab = curvature.all_pair_bounds(model)
    m1, M1 = curvature.local_bounds(model, x, y, t, 0.5)
    m2, M2 = curvature.local_bounds(model, x, y, t, 0.5,
                                    global_pair_bounds=(m_tab[y, t], M_tab[y, t]))
    assert torch.equal(m1, m2) and torch.equal(M1, M2)



# ------------------------------------------------------------------------------------------------
# Heavier audit (pytest -m slow)
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
