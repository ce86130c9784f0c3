"""The softplus the network computes is the softplus the curvature bounds assume (issue 9.4).

torch's ``softplus`` returns z itself above z = 20 (a 2e-9 jump, not monotone across it); the
curvature bounds (Theorems 3, 4 and the local bounds) assume log(1 + e^z). Certificates run in
float64, where :mod:`crc_core.activations` computes the exact function; in float32 torch's kernel
is kept (there it already rounds to the exact value), so training results do not change.
"""
import math

import torch

from crc_core import MLP
from crc_core.activations import get_activation

F64 = torch.float64


def identity_net(dtype):
    """MLP([1, 1, 1]) with W = 1, b = 0 in both layers: the logit is softplus(x)."""
    model = MLP([1, 1, 1], "softplus").to(dtype)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    return model


def ulps(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|value − reference| in units in the last place of the reference."""
    spacing = torch.tensor([math.ulp(float(r)) for r in reference], dtype=F64)
    return (value - reference).abs() / spacing


def test_float64_forward_is_the_exact_softplus_across_20():
    model = identity_net(F64)
    z = torch.cat([torch.linspace(19, 21, 4001, dtype=F64),
                   20 + torch.arange(-200, 201, dtype=F64) * 1e-11])   # a fine grid at the switch
    z = z.sort().values.unique()
    with torch.no_grad():
        out = model(z[:, None])[:, 0]
    exact = torch.log1p(torch.exp(z))        # finite and accurate for z ≤ 21 in float64
    assert ulps(out, exact).max() <= 1.0
    assert (out.diff() >= 0).all(), "the float64 forward is not monotone"
    # the point of the test: torch's own softplus fails both checks here
    plain = torch.nn.functional.softplus(z)
    assert ulps(plain, exact).max() > 1e5 and (plain.diff() < 0).any()


def test_float64_derivatives_are_those_of_the_exact_softplus():
    act = get_activation("softplus")
    z = torch.tensor([-800.0, -30.0, 0.0, 19.99, 20.0, 20.01, 35.0, 800.0], dtype=F64, requires_grad=True)
    (d1,) = torch.autograd.grad(act(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    torch.testing.assert_close(d1.detach(), act.d1(z.detach()), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(d2, act.d2(z.detach()), rtol=1e-12, atol=1e-15)
    assert torch.isfinite(act(z)).all()


def test_float32_keeps_torch_softplus_bit_for_bit():
    """Training runs in float32: its forward (hence its results) must not change."""
    z = torch.linspace(-40, 40, 100_001)
    assert torch.equal(get_activation("softplus")(z), torch.nn.functional.softplus(z))
    model = identity_net(torch.float32)
    with torch.no_grad():
        assert torch.equal(model(z[:, None])[:, 0], torch.nn.functional.softplus(z))
