"""Activations (σ, σ', σ'' and the constants g, h, h_L, h_U) and the MLP (shapes, save/load,
weights trained elsewhere, errors)."""
import math

import pytest
import torch
from torch import nn

from crc_core import MLP
from crc_core.activations import ACTIVATIONS, NoCurvatureError, get_activation, require_curvature

SMOOTH = ["softplus", "sigmoid", "tanh"]
DENSE = torch.linspace(-30, 30, 600_001, dtype=torch.float64)


# ---------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("name", SMOOTH)
def test_derivatives_match_autograd(name):
    act = get_activation(name)
    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(act.fn(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    torch.testing.assert_close(act.d1(x.detach()), d1.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(act.d2(x.detach()), d2, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", SMOOTH)
def test_constants_by_dense_sampling(name):
    """g, h, h_L, h_U bound σ', σ'' everywhere and are attained (to the grid's resolution)."""
    act = get_activation(name)
    d1, d2 = act.d1(DENSE), act.d2(DENSE)
    assert d1.abs().max() <= act.g + 1e-15
    assert act.g - d1.abs().max() < 1e-9
    assert act.h_L - 1e-15 <= d2.min() and d2.max() <= act.h_U + 1e-15
    assert d2.max() - act.h_U > -1e-9
    assert act.h == max(abs(act.h_L), abs(act.h_U))
    assert d2.min() - act.h_L < 1e-9 or act.h_L == 0.0


def test_constants_closed_forms():
    assert ACTIVATIONS["softplus"].g == 1 and ACTIVATIONS["softplus"].h_U == 0.25
    assert ACTIVATIONS["softplus"].h_L == 0.0
    assert ACTIVATIONS["sigmoid"].g == 0.25
    assert ACTIVATIONS["sigmoid"].h == pytest.approx(math.sqrt(3) / 18, rel=1e-15)
    assert ACTIVATIONS["tanh"].h == pytest.approx(4 / (3 * math.sqrt(3)), rel=1e-15)
    assert ACTIVATIONS["sigmoid"].h == pytest.approx(0.0962250, abs=1e-7)
    assert ACTIVATIONS["tanh"].h == pytest.approx(0.7698004, abs=1e-7)


@pytest.mark.parametrize("name", SMOOTH)
def test_interval_ranges_contain_dense_samples(name):
    act = get_activation(name)
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(200, generator=g, dtype=torch.float64) * 3
    hi = lo + torch.rand(200, generator=g, dtype=torch.float64) * 4
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    pts = lo[:, None] + (hi - lo)[:, None] * t[None, :]
    for values, (rlo, rhi) in ((act.d1(pts), act.d1_range(lo, hi)), (act.d2(pts), act.d2_range(lo, hi))):
        assert torch.all(rlo[:, None] <= values) and torch.all(values <= rhi[:, None])
        # tight: the range is attained up to the sampling resolution and the slack
        assert torch.all(values.min(1).values - rlo < 1e-5)
        assert torch.all(rhi - values.max(1).values < 1e-5)


def test_relu_has_no_curvature():
    relu = get_activation("relu")
    assert not relu.has_curvature
    with pytest.raises(NoCurvatureError, match="relu"):
        require_curvature("relu")
    with pytest.raises(NoCurvatureError):
        relu.d2_range(torch.zeros(1), torch.ones(1))


def test_unknown_activation_and_bad_intervals():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        get_activation("gelu")
    with pytest.raises(ValueError, match="lower <= upper"):
        get_activation("tanh").d2_range(torch.ones(2), torch.zeros(2))


# ------------------------------------------------------------------------------------------ MLP
@pytest.mark.parametrize("widths", [[784, 1024, 10], [784, 1024, 1024, 10], [5, 4, 3, 3, 2]])
def test_shapes_and_depth(widths):
    model = MLP(widths, "softplus")
    assert model.num_layers == len(widths) - 1
    assert model(torch.rand(3, widths[0])).shape == (3, widths[-1])
    zs = model.preactivations(torch.rand(2, widths[0]))
    assert [z.shape[1] for z in zs] == widths[1:]


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_forward_matches_sequential(name):
    torch.manual_seed(3)
    model = MLP([6, 5, 4, 3], name)
    torch.manual_seed(3)
    act = {"softplus": nn.Softplus(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "relu": nn.ReLU()}[name]
    seq = nn.Sequential(nn.Linear(6, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 3))
    x = torch.randn(7, 6)
    torch.testing.assert_close(model(x), seq(x))  # same default init, same function


def test_float64_and_image_input():
    model = MLP([784, 16, 10], "tanh").double()
    out = model(torch.rand(2, 1, 28, 28, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda():
    model = MLP([8, 6, 3], "sigmoid").cuda()
    assert model(torch.rand(4, 8, device="cuda")).device.type == "cuda"


def test_save_load_roundtrip(tmp_path):
    model = MLP([10, 7, 7, 4], "sigmoid")
    with torch.no_grad():
        model.power_u_1.mul_(-1)  # buffers are saved too
    model.save(tmp_path / "net.pt")
    loaded = MLP.load(tmp_path / "net.pt")
    assert loaded.spec == model.spec
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_rejects_plain_state_dict(tmp_path):
    torch.save(MLP([4, 3, 2]).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="from_state_dict"):
        MLP.load(tmp_path / "sd.pt")


def _fc_state_dict(seq: nn.Sequential):
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    sd = {}
    for i, lin in enumerate(linears, start=1):
        sd[f"fc{i}.weight"], sd[f"fc{i}.bias"] = lin.weight, lin.bias
    return sd


@pytest.mark.parametrize("layout", ["sequential", "fc", "module-prefix", "own"])
def test_from_state_dict_layouts(layout):
    seq = nn.Sequential(nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, 3))
    sd = {
        "sequential": seq.state_dict(),
        "fc": _fc_state_dict(seq),
        "module-prefix": {f"module.{k}": v for k, v in seq.state_dict().items()},
        "own": {f"layers.{i}.{p}": v for i, lin in enumerate([seq[0], seq[2], seq[4]])
                for p, v in lin.state_dict().items()},
    }[layout]
    model = MLP.from_state_dict(sd, activation="softplus")
    assert model.widths == [6, 5, 4, 3]
    x = torch.randn(5, 6)
    torch.testing.assert_close(model(x), seq(x))


def test_from_state_dict_errors():
    with pytest.raises(ValueError, match="unrecognized state dict layout"):
        MLP.from_state_dict({"conv.weight": torch.zeros(2, 2)}, "tanh")
    with pytest.raises(ValueError, match="do not chain"):
        MLP.from_state_dict({"fc1.weight": torch.zeros(5, 6), "fc1.bias": torch.zeros(5),
                             "fc2.weight": torch.zeros(3, 4), "fc2.bias": torch.zeros(3)}, "tanh")
    with pytest.raises(ValueError, match="weight and a bias"):
        MLP.from_state_dict({"fc1.weight": torch.zeros(5, 6)}, "tanh")


def test_input_errors():
    model = MLP([6, 5, 3])
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        model(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((2, 6), float("nan")))
    x = torch.zeros(3, 6)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite values: first at row 2 \(1 row\(s\) in all\)"):
        model.check_input(x)
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.int64"):
        model(torch.zeros(2, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model([[0.0] * 6])
    with pytest.raises(ValueError, match="at least three"):
        MLP([784, 10])
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([4, 3, 2], "swish")
