"""Tests of crc_core.baselines.relaxations: CROWN-general's linear bounds of the activations.

Soundness on dense samples, tightness (every line touches σ), closed forms, gradients, errors.
"""
from __future__ import annotations

import pytest
import torch

from crc_core.activations import get_activation
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
