"""Tests of crc_core.baselines.relaxations: CROWN-general's linear bounds of the activations.

Soundness on dense samples, tightness (every line touches σ), closed forms, a neuron-by-neuron
comparison with an independent scalar implementation of the same rules, gradients, errors, and
the tightness of the whole CROWN bound on tiny sigmoid / tanh nets (2-D inputs): never above the
true minimum of the margin over the disc (dense polar grid), never below the bound of an
independent implementation of CROWN's rules (midpoint tangents on one-sided intervals, exact
tangent points through the end points on intervals that straddle 0).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crc_core import MLP
from crc_core.activations import get_activation
from crc_core.baselines import crown
from crc_core.baselines.relaxations import linear_relaxation

ACTIVATIONS = ("relu", "softplus", "sigmoid", "tanh")


def _intervals(n: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lower = torch.randn(n, generator=g, dtype=dtype) * 5
    widths = torch.tensor([0.0, 1e-9, 1e-4, 0.1, 1.0, 4.0, 15.0, 40.0], dtype=dtype)
    width = widths[torch.randint(0, len(widths), (n,), generator=g)]
    width = width * torch.rand(n, generator=g, dtype=dtype)
    # straddling 0 on purpose for a third of them
    third = n // 3
    lower[:third] = -torch.rand(third, generator=g, dtype=dtype) * 8
    width[:third] = -lower[:third] + torch.rand(third, generator=g, dtype=dtype) * 8
    return lower, lower + width


# ------------------------------------------------------------------------------------------------
# An independent scalar implementation of CROWN-general's rules (Zhang et al. 2018, Sec. 3.2)
# ------------------------------------------------------------------------------------------------

def _sigma(name: str):
    if name == "tanh":
        return math.tanh, lambda z: 1.0 / math.cosh(z) ** 2 if abs(z) < 350 else 0.0
    if name == "sigmoid":
        s = lambda z: 0.5 * (1.0 + math.tanh(z / 2))       # noqa: E731 (σ(z) = (1 + tanh(z/2))/2)
        return s, lambda z: s(z) * s(-z)
    raise ValueError(name)


def _root(g, lo: float, hi: float) -> float:
    """The root of an increasing g on [lo, hi] by bisection until the bracket stops shrinking."""
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            return mid
        if g(mid) >= 0:
            hi = mid
        else:
            lo = mid


def _reference_lines(name: str, l: float, u: float):
    """(k_lo, b_lo, k_up, b_up) of CROWN's rules on [l, u] for sigmoid / tanh, in floats, with
    auto_LiRPA's choice on straddling intervals: the midpoint tangent where it is valid."""
    f, df = _sigma(name)
    if u - l < 1e-12:                                       # a point: the tangent, both sides
        k = df(l)
        return k, f(l) - k * l, k, f(l) - k * l
    k = (f(u) - f(l)) / (u - l)
    chord = (k, f(l) - k * l)
    m = 0.5 * (l + u)
    mid = (df(m), f(m) - df(m) * m)
    if u <= 0:                                               # convex: chord above
        return mid + chord
    if l >= 0:                                               # concave: chord below
        return chord + mid
    if df(u) >= k:
        up = chord
    else:                                    # tangent at d ≥ 0 through (l, σ(l)), or at m if valid
        d = _root(lambda d: f(d) + df(d) * (l - d) - f(l), 0.0, u)
        up = mid if d < m else (df(d), f(d) - df(d) * d)
    if df(l) >= k:
        lo = chord
    else:                                    # tangent at d ≤ 0 through (u, σ(u)), or at m if valid
        d = _root(lambda d: f(d) + df(d) * (u - d) - f(u), l, 0.0)
        lo = mid if d >= m else (df(d), f(d) - df(d) * d)
    return lo + up


def _reference_crown(name: str, Ws, bs, x, eps: float, c) -> float:
    """Lower bound of c · z^(L) over {‖x' − x‖ ≤ ε}: CROWN intervals for every hidden layer
    (no IBP), then back-substitution of c, written out with numpy loops."""
    Ws = [np.asarray(W, dtype=np.float64) for W in Ws]
    bs = [np.asarray(b, dtype=np.float64) for b in bs]
    x = np.asarray(x, dtype=np.float64)

    def lower_bound(lam, m, lines):                          # min of lam · z^(m) over the ball
        A, const = lam @ Ws[m - 1], float(lam @ bs[m - 1])
        for k in range(m - 1, 0, -1):
            kl, bl, ku, bu = lines[k - 1]
            slope = np.where(A >= 0, kl, ku)
            const += float(np.sum(A * np.where(A >= 0, bl, bu)))
            A = A * slope
            const += float(A @ bs[k - 1])
            A = A @ Ws[k - 1]
        return float(A @ x) + const - eps * float(np.linalg.norm(A))

    lines = []
    for m in range(1, len(Ws)):
        N = Ws[m - 1].shape[0]
        lo = [lower_bound(np.eye(N)[j], m, lines) for j in range(N)]
        hi = [-lower_bound(-np.eye(N)[j], m, lines) for j in range(N)]
        rules = [_reference_lines(name, a, max(a, b)) for a, b in zip(lo, hi)]
        lines.append(tuple(np.array(v) for v in zip(*rules)))
    return lower_bound(np.asarray(c, dtype=np.float64), len(Ws), lines)


# ------------------------------------------------------------------------------------------------
# Lines
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_relaxation_encloses_the_activation_on_dense_samples(activation, dtype, tol):
    lower, upper = _intervals(4000, dtype)
    r = linear_relaxation(activation, lower, upper)
    s = torch.linspace(0, 1, 301, dtype=dtype)
    z = lower[:, None] + (upper - lower)[:, None] * s[None, :]
    z = torch.minimum(z, upper[:, None])
    f = get_activation(activation).fn(z)
    lo = r.lower_slope[:, None] * z + r.lower_intercept[:, None]
    hi = r.upper_slope[:, None] * z + r.upper_intercept[:, None]
    scale = 1 + f.abs()
    assert float(((lo - f) / scale).max()) <= tol
    assert float(((f - hi) / scale).max()) <= tol


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_relaxation_lines_touch_the_activation(activation):
    """Each line is tight: it meets σ somewhere on [l, u] (no slack beyond rounding)."""
    lower, upper = _intervals(600, torch.float64, seed=1)
    keep = (upper - lower) > 1e-3
    lower, upper = lower[keep], upper[keep]
    r = linear_relaxation(activation, lower, upper)
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)
    z = lower[:, None] + (upper - lower)[:, None] * s[None, :]
    f = get_activation(activation).fn(z)
    gap_lo = (f - (r.lower_slope[:, None] * z + r.lower_intercept[:, None])).min(dim=1).values
    gap_hi = ((r.upper_slope[:, None] * z + r.upper_intercept[:, None]) - f).min(dim=1).values
    width = upper - lower
    # a tangent point on the grid is within width/20000 of the true one: gap O((width/2e4)^2)
    assert float((gap_lo / (1e-8 + (width / 2e4) ** 2 * 10)).max()) <= 1.0
    assert float((gap_hi / (1e-8 + (width / 2e4) ** 2 * 10)).max()) <= 1.0


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_s_shaped_lines_equal_the_reference_rules(activation):
    """Neuron by neuron, the lines are CROWN's: midpoint tangents on one-sided intervals, the
    chord where valid, else the tangent through the far end point at its exact tangent point."""
    lower, upper = _intervals(900, torch.float64, seed=2)
    r = linear_relaxation(activation, lower, upper)
    f, df = _sigma(activation)
    cases = {"convex": 0, "concave": 0, "chord-up": 0, "chord-lo": 0, "tangent-up": 0,
             "tangent-lo": 0, "midpoint-up": 0, "midpoint-lo": 0}
    for i, (l, u) in enumerate(zip(lower.tolist(), upper.tolist())):
        k_lo, b_lo, k_up, b_up = _reference_lines(activation, l, u)
        if u - l >= 1e-12:
            m, k = 0.5 * (l + u), (f(u) - f(l)) / (u - l)
            cases["convex"] += u <= 0
            cases["concave"] += l >= 0
            if l < 0 < u:
                cases["chord-up" if df(u) >= k else
                      "midpoint-up" if (k_up, b_up) == (df(m), f(m) - df(m) * m) else "tangent-up"] += 1
                cases["chord-lo" if df(l) >= k else
                      "midpoint-lo" if (k_lo, b_lo) == (df(m), f(m) - df(m) * m) else "tangent-lo"] += 1
        # compare the lines as functions on [l, u]: their values at both end points
        for z in (l, u):
            assert abs((float(r.lower_slope[i]) * z + float(r.lower_intercept[i]))
                       - (k_lo * z + b_lo)) <= 1e-9 * (1 + abs(z)), (l, u, "lower")
            assert abs((float(r.upper_slope[i]) * z + float(r.upper_intercept[i]))
                       - (k_up * z + b_up)) <= 1e-9 * (1 + abs(z)), (l, u, "upper")
    assert min(cases.values()) >= 10, cases              # every rule was exercised


def test_relaxation_closed_forms():
    sig = torch.sigmoid
    l, u = torch.tensor([-3.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    r = linear_relaxation("sigmoid", l, u)                 # convex part: chord above
    chord = (sig(u) - sig(l)) / (u - l)
    assert torch.allclose(r.upper_slope, chord)
    m = torch.tensor([-2.0], dtype=torch.float64)            # tangent at the midpoint below
    assert torch.allclose(r.lower_slope, sig(m) * (1 - sig(m)))
    # relu: stable intervals exact, unstable: chord above, adaptive line below
    lo = torch.tensor([1.0, -2.0, -1.0, -3.0], dtype=torch.float64)
    hi = torch.tensor([2.0, -1.0, 3.0, 1.0], dtype=torch.float64)
    r = linear_relaxation("relu", lo, hi)
    assert r.upper_slope.tolist() == [1.0, 0.0, 0.75, 0.25]
    assert r.upper_intercept.tolist() == [0.0, 0.0, 0.75, 0.75]
    assert r.lower_slope.tolist() == [1.0, 0.0, 1.0, 0.0]
    p = linear_relaxation("relu", lo, hi, relu_lower="parallel")
    assert p.lower_slope.tolist() == p.upper_slope.tolist()
    # tanh on a symmetric interval: odd function, the two lines are mirror images
    a = torch.tensor([2.5], dtype=torch.float64)
    r = linear_relaxation("tanh", -a, a)
    assert torch.allclose(r.lower_slope, r.upper_slope)
    assert torch.allclose(r.lower_intercept, -r.upper_intercept)
    # ... and the upper line passes through (−a, tanh(−a)), tangent to tanh at some d > 0
    assert math.isclose(float(r.upper_slope * -a + r.upper_intercept), math.tanh(-2.5),
                        abs_tol=1e-12)


def test_relaxation_gradients_by_finite_differences():
    """Chords and midpoint tangents are differentiable in (l, u) (one-sided intervals)."""
    l = torch.tensor([-3.0, 0.5, -2.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([-1.0, 2.5, 4.0], dtype=torch.float64, requires_grad=True)
    for name in ("softplus", "sigmoid", "tanh"):
        fn = (lambda a, b, name=name: torch.cat(linear_relaxation(name, a, b)))
        if name != "softplus":            # straddling intervals: tangent points are constants
            a, b = l[:2].detach().requires_grad_(True), u[:2].detach().requires_grad_(True)
        else:
            a, b = l, u
        assert torch.autograd.gradcheck(fn, (a, b), eps=1e-6, atol=1e-7)


def test_relaxation_errors():
    with pytest.raises(ValueError, match="lower <= upper"):
        linear_relaxation("sigmoid", torch.tensor([1.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="same shape"):
        linear_relaxation("sigmoid", torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="relu_lower"):
        linear_relaxation("relu", torch.zeros(2), torch.ones(2), relu_lower="zero")
    with pytest.raises(ValueError, match="unknown activation"):
        linear_relaxation("gelu", torch.zeros(2), torch.ones(2))


# ------------------------------------------------------------------------------------------------
# Tightness of the CROWN bound on tiny nets (issue 9: the tanh baseline must be fair)
# ------------------------------------------------------------------------------------------------

def _tiny_net(activation: str, widths, seed: int) -> MLP:
    torch.manual_seed(seed)
    model = MLP(list(widths), activation).double()
    with torch.no_grad():
        for W, b in zip(model.weights, model.biases):
            W.copy_(torch.randn_like(W) * 1.5)
            b.copy_(torch.randn_like(b) * 0.5)
    return model.eval()


def _disc_minimum(model, x, y, t, eps: float) -> float:
    """min of z_y − z_t over the disc {‖x' − x‖ ≤ ε} in 2-D, on a dense polar grid (≥ the
    true minimum, so a sound bound must lie below it)."""
    r = torch.linspace(0, eps, 121, dtype=torch.float64)
    th = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
    pts = x + torch.stack([r[:, None] * th.cos()[None, :], r[:, None] * th.sin()[None, :]],
                          dim=-1).reshape(-1, 2)
    with torch.no_grad():
        z = model(pts)
    return float((z[:, y] - z[:, t]).min())


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("widths", [(2, 4, 3), (2, 4, 4, 3), (2, 3, 3, 3), (2, 3, 3, 3, 3)])
def test_crown_bound_is_sound_and_as_tight_as_the_reference_rules(activation, widths):
    """On tiny nets: true minimum over the disc ≥ our bound ≥ the reference CROWN bound − 1e-9
    (pure CROWN, no IBP intersection, float64), for several nets, centres, radii and targets."""
    compared, gaps = 0, []
    for seed in range(4):
        model = _tiny_net(activation, widths, seed)
        Ws = [W.detach().numpy() for W in model.weights]
        bs = [b.detach().numpy() for b in model.biases]
        g = torch.Generator().manual_seed(100 + seed)
        for x in torch.randn(2, 2, generator=g, dtype=torch.float64):
            y = int(model(x[None]).argmax())
            for t in (c for c in range(widths[-1]) if c != y):
                for eps in (0.3, 1.0):
                    ours = float(crown.margin_lower_bound(
                        model, x[None], torch.tensor([y]), torch.tensor([t]), eps,
                        intersect_ibp=False, dtype=torch.float64).detach())
                    c = np.eye(widths[-1])[y] - np.eye(widths[-1])[t]
                    reference = _reference_crown(activation, Ws, bs, x.numpy(), eps, c)
                    exact = _disc_minimum(model, x, y, t, eps)
                    assert ours <= exact + 1e-12, ("unsound", seed, x, t, eps, ours, exact)
                    assert ours >= reference - 1e-9, ("looser than CROWN", seed, x, t, eps,
                                                      ours, reference)
                    # with the IBP intersection (the default) never looser still
                    default = float(crown.margin_lower_bound(
                        model, x[None], torch.tensor([y]), torch.tensor([t]), eps,
                        dtype=torch.float64).detach())
                    assert exact + 1e-12 >= default >= ours - 1e-12
                    compared += 1
                    gaps.append(exact - ours)
    assert compared >= 16
    assert max(gaps) > 1e-3       # the radii are large enough for the relaxation to matter
