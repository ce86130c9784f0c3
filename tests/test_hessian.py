"""Lemma 1 (crc_core.hessian): closed form vs autograd, recursions, closed-form case, errors."""
import pytest
import torch

from crc_core import MLP, hessian
from crc_core.activations import NoCurvatureError

SMOOTH = ["softplus", "sigmoid", "tanh"]
WIDTHS = {  # L -> [D, N_1, ..., C]
    2: [6, 7, 4],
    3: [6, 7, 5, 4],
    4: [6, 7, 5, 6, 4],
    5: [6, 7, 5, 6, 5, 4],
}


def make(widths, activation, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = MLP(widths, activation).to(dtype)
    # Larger weights than the default init so that σ'' is far from 0 and every layer matters.
    with torch.no_grad():
        for w in model.weights:
            w.mul_(2.0)
    return model


def batch(model, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = model.weights[0].dtype
    x = torch.randn(n, model.input_dim, generator=g, dtype=dtype)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    t = (y + 1 + torch.randint(0, model.num_classes - 1, (n,), generator=g)) % model.num_classes
    return x, y, t


def forward_layers(model, x):
    """z^(1..L) for one unbatched x (D,), written independently of MLP.preactivations."""
    zs, a = [], x
    for w, b in zip(model.weights, model.biases):
        z = w @ a + b
        zs.append(z)
        a = model.activation.fn(z)  # unused after the last layer
    return zs


def autograd_hessian(model, x, coeff):
    """Per-sample torch.autograd.functional.hessian of coeff(b) · z^(L)."""
    out = []
    for b in range(x.shape[0]):
        def f(xb):
            return forward_layers(model, xb)[-1] @ coeff[b]
        out.append(torch.autograd.functional.hessian(f, x[b], vectorize=True))
    return torch.stack(out)


def margin_coeff(model, y, t):
    v = torch.zeros(len(y), model.num_classes, dtype=model.weights[0].dtype)
    v[torch.arange(len(y)), y] += 1
    v[torch.arange(len(y)), t] -= 1
    return v


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("L", [2, 3, 4, 5])
def test_margin_hessian_matches_autograd(L, activation):
    model = make(WIDTHS[L], activation)
    x, y, t = batch(model, 3)
    H = hessian.margin_hessian(model, x, y, t)
    ref = autograd_hessian(model, x, margin_coeff(model, y, t))
    assert H.shape == (3, model.input_dim, model.input_dim) and H.dtype == torch.float64
    assert ref.abs().max() > 1e-4  # the case is not trivially zero
    torch.testing.assert_close(H, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("L", [2, 3, 4, 5])
def test_logit_hessian_matches_autograd(L, activation):
    model = make(WIDTHS[L], activation, seed=2)
    x, y, _ = batch(model, 3, seed=3)
    H = hessian.logit_hessian(model, x, y)
    coeff = torch.nn.functional.one_hot(y, model.num_classes).to(torch.float64)
    torch.testing.assert_close(H, autograd_hessian(model, x, coeff), rtol=0, atol=1e-10)


def test_mnist_sized_input_matches_autograd():
    model = make([784, 32, 32, 10], "softplus", seed=4)
    with torch.no_grad():
        for w in model.weights:
            w.mul_(0.5)
    x, y, t = batch(model, 2, seed=5)
    x = x.abs().clamp(max=1)  # pixel-like
    H = hessian.margin_hessian(model, x, y, t)
    torch.testing.assert_close(H, autograd_hessian(model, x, margin_coeff(model, y, t)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", SMOOTH)
def test_margin_is_difference_of_logit_hessians(activation):
    model = make(WIDTHS[4], activation, seed=6)
    x, y, t = batch(model, 4, seed=7)
    H = hessian.margin_hessian(model, x, y, t)
    diff = hessian.logit_hessian(model, x, y) - hessian.logit_hessian(model, x, t)
    torch.testing.assert_close(H, diff, rtol=0, atol=1e-12)


def test_terms_sum_to_hessian():
    model = make(WIDTHS[5], "tanh", seed=8)
    x, y, t = batch(model, 3, seed=9)
    terms = hessian.margin_hessian_terms(model, x, y, t)
    assert len(terms) == model.num_layers - 1
    torch.testing.assert_close(sum(terms), hessian.margin_hessian(model, x, y, t), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [2, 3, 5])
def test_input_jacobians_match_autograd(L):
    model = make(WIDTHS[L], "sigmoid", seed=10)
    x, _, _ = batch(model, 3, seed=11)
    jacs = hessian.input_jacobians(model, x)
    assert len(jacs) == L - 1
    for I, jac in enumerate(jacs, start=1):
        assert jac.shape == (3, model.widths[I], model.input_dim)
        ref = torch.stack([
            torch.autograd.functional.jacobian(lambda xb: forward_layers(model, xb)[I - 1], x[b])
            for b in range(3)
        ])
        torch.testing.assert_close(jac, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("L", [2, 3, 5])
def test_margin_output_jacobians_match_autograd(L):
    model = make(WIDTHS[L], "tanh", seed=12)
    x, y, t = batch(model, 3, seed=13)
    rows = hessian.margin_output_jacobians(model, x, y, t)
    assert len(rows) == L - 1
    for I, row in enumerate(rows, start=1):
        assert row.shape == (3, model.widths[I])
        for b in range(3):
            # ∂(z_y − z_t)/∂a^(I): run the net from a^(I) onward.
            zI = forward_layers(model, x[b])[I - 1]
            a = model.activation.fn(zI).detach().requires_grad_(True)
            h = a
            for k in range(I, model.num_layers):
                h = model.weights[k] @ h + model.biases[k]
                if k < model.num_layers - 1:
                    h = model.activation.fn(h)
            (grad,) = torch.autograd.grad(h[y[b]] - h[t[b]], a)
            torch.testing.assert_close(row[b], grad, rtol=0, atol=1e-12)


def test_two_layer_closed_form():
    model = make([5, 8, 3], "softplus", seed=14)
    x, y, t = batch(model, 4, seed=15)
    W1, b1 = model.weights[0].detach(), model.biases[0].detach()
    W2 = model.weights[1].detach()
    for b in range(4):
        z1 = W1 @ x[b] + b1
        s = torch.sigmoid(z1)
        w = W2[y[b]] - W2[t[b]]
        expected = W1.T @ torch.diag(w * s * (1 - s)) @ W1
        torch.testing.assert_close(hessian.margin_hessian(model, x[b:b + 1], y[b:b + 1], t[b:b + 1])[0],
                                   expected, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------------------------
def test_float32_close_to_float64_and_symmetric():
    model64 = make([50, 40, 30, 10], "softplus", seed=16)
    model32 = make([50, 40, 30, 10], "softplus", seed=16, dtype=torch.float32)
    x, y, t = batch(model64, 4, seed=17)
    H64 = hessian.margin_hessian(model64, x, y, t)
    H32 = hessian.margin_hessian(model32, x.float(), y, t)
    assert H32.dtype == torch.float32
    assert torch.equal(H32, H32.transpose(1, 2)) and torch.equal(H64, H64.transpose(1, 2))
    err = (H32.double() - H64).abs().max() / H64.abs().max()
    assert err < 1e-5
    # x of another dtype is cast to the model's dtype.
    assert hessian.margin_hessian(model32, x, y, t).dtype == torch.float32


def test_label_broadcast_and_no_graph_by_default():
    model = make(WIDTHS[3], "tanh", seed=18)
    x, _, _ = batch(model, 3, seed=19)
    H = hessian.margin_hessian(model, x, 0, torch.tensor(2))
    assert H.grad_fn is None and not H.requires_grad
    full = hessian.margin_hessian(model, x, torch.zeros(3, dtype=torch.long), torch.full((3,), 2))
    assert torch.equal(H, full)


def test_differentiable_gradcheck():
    model = make([3, 4, 3, 2], "softplus", seed=20)
    x, y, t = batch(model, 2, seed=21)
    x.requires_grad_(True)
    H = hessian.margin_hessian(model, x, y, t, differentiable=True)
    assert H.requires_grad
    torch.autograd.gradcheck(lambda xx: hessian.margin_hessian(model, xx, y, t, differentiable=True), (x,))
    H.sum().backward()
    assert model.weights[0].grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    model = make(WIDTHS[4], "sigmoid", seed=22)
    x, y, t = batch(model, 5, seed=23)
    H_cpu = hessian.margin_hessian(model, x, y, t)
    H_gpu = hessian.margin_hessian(model.cuda(), x.cuda(), y.cuda(), t.cuda())
    assert H_gpu.device.type == "cuda"
    torch.testing.assert_close(H_gpu.cpu(), H_cpu, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
def test_relu_raises_no_curvature():
    model = make(WIDTHS[3], "relu")
    x, y, t = batch(model, 2)
    with pytest.raises(NoCurvatureError, match="relu"):
        hessian.margin_hessian(model, x, y, t)
    with pytest.raises(NoCurvatureError, match="relu"):
        hessian.logit_hessian(model, x, y)
    with pytest.raises(NoCurvatureError, match="relu"):
        hessian.margin_hessian_terms(model, x, y, t)
    assert len(hessian.input_jacobians(model, x)) == 2  # first-order quantities are fine


def test_argument_errors():
    model = make(WIDTHS[3], "softplus")
    x, y, t = batch(model, 3)
    with pytest.raises(ValueError, match="must differ"):
        hessian.margin_hessian(model, x, y, y)
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        hessian.margin_hessian(model, x[:, :5], y, t)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        hessian.margin_hessian(model, x, y[:2], t[:2])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        hessian.margin_hessian(model, x, y, t + 10)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        hessian.logit_hessian(model, x, torch.full((3,), -1))
    with pytest.raises(ValueError, match="integer dtype"):
        hessian.logit_hessian(model, x, y.double())
    x_nan = x.clone()
    x_nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        hessian.margin_hessian(model, x_nan, y, t)
    # the messages of crc_core.checks: the first offending index, the expected range
    with pytest.raises(ValueError, match=r"NaN or infinite values: first at row 1"):
        hessian.input_jacobians(model, x_nan)
    with pytest.raises(ValueError, match=r"y == t == .* at index 2"):
        hessian.margin_hessian(model, x, y, torch.cat([t[:2], y[2:]]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 3\] \(the model has 4 classes\), got 4 at index 0"):
        hessian.margin_hessian(model, x, y, torch.tensor([4, 0, 0]))
    with pytest.raises(ValueError, match=r"i must lie in \[0, 3\].*got 7$"):
        hessian.logit_hessian(model, x, 7)
    with pytest.raises(ValueError, match="floating-point"):
        hessian.logit_hessian(model, x.long(), y)
    with pytest.raises(TypeError, match="y must be an int or an integer tensor"):
        hessian.margin_hessian(model, x, [0, 1, 2], t)
    with pytest.raises(TypeError, match="model must be a crc_core.MLP"):
        hessian.margin_hessian(torch.nn.Linear(6, 4), x, y, t)


def test_blocked_symmetric_product_on_small_inputs(monkeypatch):
    """Force the column-block path (normally used for D >= 256) on a small net."""
    monkeypatch.setattr(hessian, "_MIN_BLOCK", 2)
    model = make([9, 7, 5, 6, 4], "sigmoid", seed=24)
    assert len(hessian._column_blocks(9)) == 3
    x, y, t = batch(model, 3, seed=25)
    H = hessian.margin_hessian(model, x, y, t)
    assert torch.equal(H, H.transpose(1, 2))
    torch.testing.assert_close(H, autograd_hessian(model, x, margin_coeff(model, y, t)), rtol=0, atol=1e-10)
    terms = hessian.margin_hessian_terms(model, x, y, t)
    torch.testing.assert_close(sum(terms), H, rtol=0, atol=1e-12)
