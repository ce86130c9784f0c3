"""Global curvature bounds (crc_core.curvature): soundness against exact Hessians, closed forms,
tightness, the verified eigenvalue path, all pairs, no hidden state, rigor vs the estimate, errors.

Soundness is checked against the exact Hessian eigenvalues of f = z_y − z_t from autograd
(torch.func.hessian on an independently written forward pass, tests/curvature_audit.py), at
random points, data-like points in [0, 1]^D and points found by gradient ascent on λmax / descent
on λmin (autograd through eigvalsh). Per network: 15 + 10 + 10 + 10 = 45 points; 9 (depth,
activation) configs × 3 networks (random, briefly trained, scaled-up) = 1,215 points. Local
bounds: tests/test_local_bounds.py; the training penalty and estimate:
tests/test_curvature_estimate.py; the verified linear algebra: tests/test_verified_linalg.py.
"""
import pytest
import torch

from crc_core import MLP, curvature, verified_linalg
from crc_core import hessian as hessian_mod
from crc_core.activations import NoCurvatureError
from curvature_audit import (CONFIGS, SMOOTH, TOL, attained_net, audit_points, exact_eigs,
                             exact_hessians, extreme_points, make_net, random_pairs)


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
# Verified eigenvalue path (Lanczos + Cholesky)
def test_global_bounds_via_verified_path(monkeypatch):
    """The whole bound through the Lanczos + Cholesky path (threshold lowered) is sound and
    agrees with the dense-eigvalsh path to ~1e-6."""
    monkeypatch.setattr(verified_linalg, "_DIRECT_EIG_MAX_DIM", 0)
    model = make_net(3, "softplus", "trained")
    gen = torch.Generator().manual_seed(5)
    x, y, t = audit_points(model, gen)
    m, M = curvature.global_bounds(model, y, t)
    ev = exact_eigs(model, x, y, t)
    assert (m <= ev[:, 0] + TOL).all() and (ev[:, -1] <= M + TOL).all()
    monkeypatch.undo()
    m2, M2 = curvature.global_bounds(model, y, t)
    torch.testing.assert_close(M, M2, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(m, m2, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Rigorous bounds, never the estimate (issue 9)
def test_rigorous_bounds_hold_where_the_estimate_falls_short():
    """On a net whose λmax(∇²f) is attained and whose Lanczos estimate with the default budget
    is visibly below it, the rigorous M is above the attained value and the estimate is not: a
    global_bounds that returned the estimate (exact=False) would fail here. Same for m."""
    model, x_star = attained_net()
    y, t = torch.tensor([0]), torch.tensor([1])
    attained = exact_eigs(model, x_star, y, t)[0, -1]            # autograd Hessian at x*
    m, M = curvature.global_bounds(model, y, t)
    me, Me = curvature.global_bounds(model, y, t, exact=False)
    # The test is meaningful: the estimate is below the attained eigenvalue by > 0.1 %.
    assert float(Me) < float(attained) * (1 - 1e-3)
    assert float(attained) <= float(M) + TOL
    assert float(M) <= float(attained) * (1 + 1e-6)             # and the bound is tight
    for method in ("tightest", "theorem3", "refined"):
        assert float(curvature.global_bounds(model, y, t, method)[1]) >= float(attained)
    assert float(curvature.all_pair_bounds(model)[1][0, 1]) >= float(attained)
    assert float(curvature.theorem3_bounds(model, y, t)[1]) >= float(attained)
    # m: attained where σ'' is maximal on the negative entries of w.
    w = model.weights[1][0] - model.weights[1][1]
    z = torch.where(w < 0, 0.0, 40.0).double().detach()
    x_min = torch.linalg.solve(model.weights[0].detach(), z)[None]
    attained_min = exact_eigs(model, x_min, y, t)[0, 0]
    assert float(m) <= float(attained_min) + TOL < float(me)


# ------------------------------------------------------------------------------------------------
# All pairs; no hidden state
def test_all_pair_bounds_consistent_with_batches():
    model = make_net(3, "sigmoid", "scaled")
    for method in curvature.METHODS:
        if method == "theorem3":
            continue
        m_tab, M_tab = curvature.all_pair_bounds(model, method)
        assert m_tab.shape == (3, 3) and torch.isnan(m_tab.diagonal()).all()
        y = torch.tensor([0, 2, 1, 0, 2, 1, 0])
        t = torch.tensor([1, 0, 2, 2, 1, 0, 1])
        m, M = curvature.global_bounds(model, y, t, method)
        torch.testing.assert_close(m, m_tab[y, t], rtol=0, atol=0)
        torch.testing.assert_close(M, M_tab[y, t], rtol=0, atol=0)
    with pytest.raises(ValueError, match="two-layer"):
        curvature.all_pair_bounds(model, "theorem3")


def test_same_call_same_answer_whatever_ran_before():
    """No cache: bounds follow the weights (even changed through .data, which bumps no version
    counter) and a call repeated after other calls returns the identical tensors."""
    model = make_net(2, "softplus")
    other = make_net(3, "tanh", "scaled")
    y, t = torch.tensor([0, 2]), torch.tensor([1, 0])
    m1, M1 = curvature.global_bounds(model, y, t)
    curvature.all_pair_bounds(other)
    curvature.global_bounds(model, torch.tensor([1]), torch.tensor([2]), "theorem4")
    curvature.global_bounds(model, y, t, exact=False)
    W = model.layers[0].weight
    W0 = W.detach().clone()
    W.data.mul_(2.0)
    m2, M2 = curvature.global_bounds(model, y, t)
    torch.testing.assert_close(M2, 4 * M1, rtol=1e-6, atol=0)
    torch.testing.assert_close(m2, 4 * m1, rtol=1e-6, atol=0)
    W.data.copy_(W0)
    m3, M3 = curvature.global_bounds(model, y, t)
    assert torch.equal(m3, m1) and torch.equal(M3, M1)
    # The cold estimate too: same answer before and after other estimates.
    e1 = curvature.global_bounds(model, y, t, exact=False)
    curvature.global_bounds(model, torch.tensor([2]), torch.tensor([1]), exact=False)
    e2 = curvature.global_bounds(model, y, t, exact=False)
    assert torch.equal(e1[0], e2[0]) and torch.equal(e1[1], e2[1])


def test_no_module_level_mutable_state():
    """The curvature modules keep no mutable globals (caches, side tables)."""
    from crc_core import bound_recursions, curvature_estimate, local_bounds
    for module in (curvature, bound_recursions, curvature_estimate, local_bounds, verified_linalg):
        mutable = [name for name, value in vars(module).items() if not name.startswith("__")
                   and isinstance(value, (dict, list, set, bytearray))
                   or type(value).__name__ in ("WeakKeyDictionary", "WeakValueDictionary")]
        assert mutable == [], (module.__name__, mutable)


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
    with pytest.raises(ValueError, match=r"W\^\(1\) contains NaN"):
        curvature.global_bounds(bad_model, y, t)
    with pytest.raises(ValueError, match="method"):
        curvature.all_pair_bounds(model, "theorem5")
    with pytest.raises(ValueError, match=r"global_pair_bounds must be two \(2,\) tensors"):
        curvature.local_bounds(model, x, y, t, 0.5, global_pair_bounds=(torch.zeros(3), torch.ones(3)))


def test_label_policy_int_broadcast():
    """One label policy (crc_core.checks): an int is broadcast to the other label's batch."""
    model = make_net(2, "softplus")
    m, M = curvature.global_bounds(model, 0, torch.tensor([1, 2]))
    m2, M2 = curvature.global_bounds(model, torch.tensor([0, 0]), torch.tensor([1, 2]))
    assert torch.equal(m, m2) and torch.equal(M, M2)
    m1, M1 = curvature.global_bounds(model, 2, 1)
    assert m1.shape == (1,) and torch.equal(M1, curvature.global_bounds(model, torch.tensor([2]),
                                                                        torch.tensor([1]))[1])


# ------------------------------------------------------------------------------------------------
# Heavier audits (pytest -m slow)
@pytest.mark.slow
@pytest.mark.parametrize("L,act", CONFIGS)
def test_slow_audit_wider_nets_verified_path(monkeypatch, L, act):
    """Wider nets, 200 points per net (120 by eigenvalue ascent, 60 steps), bounds computed
    through the Lanczos + Cholesky path (threshold lowered)."""
    monkeypatch.setattr(verified_linalg, "_DIRECT_EIG_MAX_DIM", 0)
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
            m, M = curvature.global_bounds(model, y, t, method)
            assert (m <= ev[:, 0] + TOL).all() and (ev[:, -1] <= M + TOL).all(), (method, kind)
