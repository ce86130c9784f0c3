"""Training-time curvature (crc_core.curvature_estimate): the penalty K of equation (7) and the
CurvatureEstimator of the CRT attack — closed forms, gradients, convergence to the rigorous values
from below, the warm start as explicit state (save / restore gives the uninterrupted numbers),
errors."""
import io
import math

import pytest
import torch

from crc_core import MLP, curvature
from crc_core.curvature_estimate import CurvatureEstimator
from curvature_audit import make_net


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
    expected = math.sqrt(3) / 18 * sig ** 2 * float((W2[2] - W2[0]).detach().abs().max())
    assert abs(float(K.detach()) - expected) <= 1e-12 * expected
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
# The estimate of (m, M)
def _converge_buffers(model, steps=300):
    """Converge the model's power-iteration buffers, as training does."""
    for _ in range(steps):
        curvature.curvature_penalty(model, torch.tensor([0]), torch.tensor([1]))


@pytest.mark.parametrize("L", [2, 3])
def test_estimate_close_to_exact_and_from_below(L):
    model = make_net(L, "softplus", "trained")
    _converge_buffers(model)
    y, t = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 2, 0])
    m, M = curvature.global_bounds(model, y, t)
    me, Me = CurvatureEstimator(iters=500, tol=0).bounds(model, y, t)
    assert me.dtype == torch.float64 and me.shape == (5,)
    torch.testing.assert_close(Me, M, rtol=1e-5, atol=0)
    torch.testing.assert_close(me, m, rtol=1e-5, atol=0)
    assert (Me <= M).all() and (me >= m).all()
    # global_bounds(exact=False) is a cold-start estimator with the same settings.
    cold = curvature.global_bounds(model, y, t, exact=False, iters=500, tol=0)
    assert torch.equal(cold[0], me) and torch.equal(cold[1], Me)
    for method in ("theorem4", "refined"):
        me4, Me4 = CurvatureEstimator(iters=500, tol=0).bounds(model, y, t, method)
        m4, M4 = curvature.global_bounds(model, y, t, method)
        torch.testing.assert_close(Me4, M4, rtol=1e-5, atol=0)
        assert (Me4 <= M4).all()


def test_warm_start_state_carries_the_convergence():
    """After a converged call, one Lanczos step from the saved vectors stays within 1e-3 of the
    exact value after a weight nudge; from a cold start one step is much farther."""
    model = make_net(3, "softplus", "trained")
    _converge_buffers(model)
    y, t = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 2, 0])
    warm = CurvatureEstimator(iters=500, tol=0)
    warm.bounds(model, y, t, "refined")
    with torch.no_grad():
        model.layers[0].weight.mul_(1.001)
    M_new = curvature.global_bounds(model, y, t, "refined")[1]
    one_step = CurvatureEstimator(iters=1)
    one_step.load_state_dict(warm.state_dict())
    Me_warm = one_step.bounds(model, y, t, "refined")[1]
    Me_cold = CurvatureEstimator(iters=1).bounds(model, y, t, "refined")[1]
    torch.testing.assert_close(Me_warm, M_new, rtol=1e-3, atol=0)
    assert float(((M_new - Me_cold) / M_new).abs().max()) > 10 * float(
        ((M_new - Me_warm) / M_new).abs().max())


def _drifting_calls(estimator, model, calls, start=0):
    """Estimates for ``calls`` training-like steps: a call, then a weight update."""
    out = []
    for k in range(start, start + calls):
        y = torch.tensor([0, 1, 2, 0]) if k % 2 else torch.tensor([2, 0, 1])
        t = (y + 1 + k % 2) % 3
        out.append(estimator.bounds(model, y, t))
        with torch.no_grad():
            for w in model.weights:
                w.mul_(1.01).add_(0.001)
    return out


@pytest.mark.parametrize("L", [2, 3])
def test_saved_and_restored_state_gives_the_uninterrupted_estimates(L):
    """Resume: estimates after state_dict → torch.save / torch.load → load_state_dict are bit
    for bit those of an estimator that ran without interruption."""
    whole = _drifting_calls(CurvatureEstimator(), make_net(L, "softplus", "trained").float(), 6)
    model = make_net(L, "softplus", "trained").float()
    first = CurvatureEstimator()
    part1 = _drifting_calls(first, model, 3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = CurvatureEstimator()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert sorted(resumed.state_dict()) == [str(I) for I in range(1, L)]
    part2 = _drifting_calls(resumed, model, 3, start=3)
    for (a, b), (c, d) in zip(whole, part1 + part2):
        assert torch.equal(a, c) and torch.equal(b, d)
    # Without the state the estimates differ (the state matters).
    model = make_net(L, "softplus", "trained").float()
    _drifting_calls(CurvatureEstimator(), model, 3)
    fresh = _drifting_calls(CurvatureEstimator(), model, 3, start=3)
    assert any(not torch.equal(a[1], c[1]) for a, c in zip(whole[3:], fresh))


def test_fresh_estimators_agree_and_state_follows_the_model_shape():
    model = make_net(2, "sigmoid", "scaled")
    y, t = torch.tensor([0, 1]), torch.tensor([2, 0])
    a = CurvatureEstimator().bounds(model, y, t)
    est = CurvatureEstimator()
    est.bounds(MLP([12, 8, 3], "sigmoid").double(), y, t)   # another input width first
    assert est.state_dict()["1"].shape == (2 * 9, 12)
    b = est.bounds(model, y, t)                              # layer 1's table does not fit: redone
    assert est.state_dict()["1"].shape == (2 * 9, 20)
    est2 = CurvatureEstimator()
    est2.load_state_dict({"1": torch.zeros(5, 7, dtype=torch.float64)})
    c = est2.bounds(model, y, t)                             # wrong shape: recreated
    for other in (b, c):
        assert torch.equal(a[0], other[0]) and torch.equal(a[1], other[1])


def test_estimator_errors():
    model = make_net(2, "softplus")
    y, t = torch.tensor([0]), torch.tensor([1])
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        CurvatureEstimator(iters=0)
    for bad in (-1e-3, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
            CurvatureEstimator(tol=bad)
    with pytest.raises(ValueError, match="layer number"):
        CurvatureEstimator().load_state_dict({"warm": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="2-D tensor"):
        CurvatureEstimator().load_state_dict({"1": torch.zeros(2)})
    with pytest.raises(ValueError, match="method"):
        CurvatureEstimator().bounds(model, y, t, "theorem5")
    with pytest.raises(ValueError, match="two-layer"):
        CurvatureEstimator().bounds(make_net(3, "softplus"), y, t, "theorem3")
    with pytest.raises(ValueError, match="differ"):
        CurvatureEstimator().bounds(model, y, y)
