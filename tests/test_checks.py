"""Tests of crc_core.checks: the shared argument checks, their vocabulary and their messages."""
import numpy as np
import pytest
import torch

from crc_core import MLP, attacks, checks
from crc_core.activations import NoCurvatureError

F64 = torch.float64


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MLP([6, 5, 4], "softplus")          # D = 6, C = 4


# ------------------------------------------------------------------------------------------------
# Inputs
def test_inputs_flatten_and_pass_through(model):
    x = torch.rand(3, 6)
    assert checks.check_inputs(model, x) is x
    images = torch.rand(2, 2, 3)
    out = checks.check_inputs(model, images)
    assert out.shape == (2, 6)
    assert torch.equal(out, images.reshape(2, 6))
    assert checks.check_inputs(model, torch.zeros(0, 6)).shape == (0, 6)


def test_inputs_errors(model):
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        checks.check_inputs(model, [[0.0] * 6])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\).*got \(3, 5\)"):
        checks.check_inputs(model, torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\).*got \(6,\)"):
        checks.check_inputs(model, torch.rand(6))
    with pytest.raises(ValueError, match="floating-point.*torch.int64"):
        checks.check_inputs(model, torch.zeros(2, 6, dtype=torch.int64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_inputs_reject_non_finite_naming_first_row(model, bad):
    x = torch.rand(5, 6)
    x[2, 4] = bad
    x[4, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values: first at row 2 \(2 row\(s\) in all\)"):
        checks.check_inputs(model, x)


def test_inputs_same_device(model):
    x = torch.rand(2, 6)
    assert checks.check_inputs(model, x, same_device=True) is x
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="x is on cuda:0 but the model is on cpu"):
            checks.check_inputs(model, x.cuda(), same_device=True)
        assert checks.check_inputs(model, x.cuda()).is_cuda       # not required by default


# ------------------------------------------------------------------------------------------------
# Labels: one policy for an int
@pytest.mark.parametrize("label", [2, np.int64(2), torch.tensor(2), torch.tensor(2, dtype=torch.int32)])
def test_int_label_broadcast(model, label):
    y = checks.labels(model, label, 5, "cpu")
    assert y.dtype == torch.int64 and y.shape == (5,)
    assert y.tolist() == [2] * 5
    assert y.is_contiguous()


def test_tensor_labels_kept(model):
    y = torch.tensor([0, 3, 1])
    assert checks.labels(model, y, 3, "cpu") is y               # no copy when canonical
    y32 = checks.labels(model, y.int(), 3, "cpu")
    assert y32.dtype == torch.int64 and torch.equal(y32, y)
    assert checks.labels(model, torch.zeros(0, dtype=torch.int64), 0, "cpu").shape == (0,)
    assert checks.labels(model, 1, 0, "cpu").shape == (0,)


def test_labels_errors(model):
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\] \(the model has 4 classes\), got 4 at index 1"):
        checks.labels(model, torch.tensor([0, 4, 7]), 3, "cpu")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 3\].*got -1 at index 0"):
        checks.labels(model, torch.tensor([-1, 0]), 2, "cpu", name="t")
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\].*got 4$"):
        checks.labels(model, 4, 3, "cpu")
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\].*got -1$"):
        checks.labels(model, torch.tensor(-1), 3, "cpu")
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) to match x, got \(2,\)"):
        checks.labels(model, torch.tensor([0, 1]), 3, "cpu")
    with pytest.raises(ValueError, match=r"y must have shape \(1,\) to match x, got \(1, 1\)"):
        checks.labels(model, torch.tensor([[0]]), 1, "cpu")
    with pytest.raises(ValueError, match=r"y must have shape \(3,\).*got \(1,\)"):   # (1,) is a batch of one
        checks.labels(model, torch.tensor([1]), 3, "cpu")
    with pytest.raises(ValueError, match="y must have an integer dtype \\(int64\\), got torch.float64"):
        checks.labels(model, torch.tensor([0.0, 1.0], dtype=F64), 2, "cpu")
    with pytest.raises(ValueError, match="integer dtype.*torch.bool"):
        checks.labels(model, torch.tensor([True, False]), 2, "cpu")
    with pytest.raises(TypeError, match=r"y must be an int or an integer tensor of shape \(2,\), got list"):
        checks.labels(model, [0, 1], 2, "cpu")
    with pytest.raises(TypeError, match="got bool"):
        checks.labels(model, True, 2, "cpu")
    with pytest.raises(TypeError, match="got float"):
        checks.labels(model, 1.0, 2, "cpu")


def test_margin_labels(model):
    y, t = checks.margin_labels(model, torch.tensor([0, 1, 2]), 3)
    assert y.tolist() == [0, 1, 2] and t.tolist() == [3, 3, 3]
    y, t = checks.margin_labels(model, 0, 1)                      # no x: a batch of one
    assert y.tolist() == [0] and t.tolist() == [1]
    y, t = checks.margin_labels(model, 2, torch.tensor([0, 1]), batch=2, device="cpu")
    assert y.tolist() == [2, 2] and t.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"t must differ from y for every sample.*y == t == 1 at index 1 "
                                         r"\(2 sample\(s\) in all\)"):
        checks.margin_labels(model, torch.tensor([0, 1, 2]), torch.tensor([3, 1, 2]))
    with pytest.raises(ValueError, match=r"y and t must have the same shape \(B,\), got \(2,\) and \(3,\)"):
        checks.margin_labels(model, torch.tensor([0, 1]), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) to match x, got \(2,\)"):
        checks.margin_labels(model, torch.tensor([0, 1]), torch.tensor([1, 2]), batch=3)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 3\]"):
        checks.margin_labels(model, torch.tensor([0, 1]), torch.tensor([1, 9]))


# ------------------------------------------------------------------------------------------------
# Targets
def test_runner_up_is_the_largest_other_logit():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0], [1.0, 1.0, 0.0], [9.0, -1.0, 8.0]])
    y = torch.tensor([0, 1, 1, 2])
    assert checks.runner_up(logits, y).tolist() == [1, 2, 0, 0]     # ties: smallest index
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(50, 7, generator=gen)
    y = torch.randint(0, 7, (50,), generator=gen)
    t = checks.runner_up(z, y)
    assert (t != y).all()
    naive = [max((j for j in range(7) if j != int(y[b])), key=lambda j: float(z[b, j])) for b in range(50)]
    assert t.tolist() == naive
    assert attacks.runner_up is checks.runner_up                  # one definition, re-exported


def test_largest_other_classes_are_sorted_exclude_y_and_start_at_the_runner_up():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(40, 10, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    for k in (1, 3, 9):
        T = checks.largest_other_classes(z, y, k)
        assert T.shape == (40, k) and (T != y[:, None]).all()
        values = z.gather(1, T)
        assert (values[:, :-1] >= values[:, 1:]).all()
        assert T[:, 0].tolist() == checks.runner_up(z, y).tolist()
    every = checks.largest_other_classes(z, y, 9)
    for b in range(40):
        assert sorted(every[b].tolist()) == [j for j in range(10) if j != int(y[b])]
    for bad in (0, 10, 2.0, True):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\]"):
            checks.largest_other_classes(z, y, bad)


def test_targets_vocabulary(model):
    y = torch.tensor([0, 1])
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 5.0, 4.0, 6.0]])
    assert checks.TARGET_WORDS == ("runner-up", "all", "untargeted")
    for word in checks.TARGET_WORDS:
        assert checks.targets(model, y, word) == word             # without logits: the word
    assert checks.targets(model, y, "runner-up", logits=logits).tolist() == [1, 3]
    assert checks.targets(model, y, "all", logits=logits) == "all"
    t = checks.targets(model, y, 3)                               # an int target is broadcast
    assert t.tolist() == [3, 3]
    assert checks.targets(model, y, torch.tensor([2, 0])).tolist() == [2, 0]


def test_targets_errors(model):
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"targets='all' is invalid: expected one of \['runner-up', "
                                         r"'untargeted'\] or a \(B,\) integer tensor"):
        checks.targets(model, y, "all", allowed=("runner-up", "untargeted"))
    with pytest.raises(ValueError, match="targets='most-likely' is invalid"):
        checks.targets(model, y, "most-likely")
    with pytest.raises(ValueError, match=r"targets must differ from y for every sample.*"
                                         r"targets == y == 1 at index 1"):
        checks.targets(model, y, torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\) to match x, got \(2,\)"):
        checks.targets(model, y, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\].*got 4 at index 2"):
        checks.targets(model, y, torch.tensor([1, 2, 4]))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        checks.targets(model, y, "all", allowed=("all", "some"))


# ------------------------------------------------------------------------------------------------
# Curvature bounds
def test_bounds_vocabulary():
    assert checks.BOUND_WORDS == ("global", "local", "estimate")
    for word in checks.BOUND_WORDS:
        assert checks.bounds(word) == word
    assert checks.bounds("estimate", allowed=("global", "estimate")) == "estimate"


def test_bounds_pairs():
    m, M = checks.bounds((-0.5, 0.25), batch=3)
    assert m.dtype == M.dtype == F64
    assert m.tolist() == [-0.5] * 3 and M.tolist() == [0.25] * 3
    m32, M32 = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    m, M = checks.bounds([m32, M32], batch=2)
    assert m.dtype == F64 and torch.equal(m, m32.double()) and torch.equal(M, M32.double())
    table = -torch.rand(4, 4, dtype=F64)
    m, M = checks.bounds((table, -table), classes=4, batch=2)
    assert m.shape == (4, 4) and torch.equal(m, table)
    m, M = checks.bounds((torch.zeros(2, 3), torch.ones(2, 3)))    # no shape asked: any, alike
    assert m.shape == (2, 3)
    m, M = checks.bounds((0.0, 0.0), batch=2)                      # m = M allowed (a linear f)
    assert m.tolist() == [0.0, 0.0]


def test_bounds_errors():
    with pytest.raises(ValueError, match=r"bounds='tight' is invalid: expected one of \['global', 'local'\] "
                                         r"or a pair \(m, M\) of two \(10, 10\) tables"):
        checks.bounds("tight", allowed=("global", "local"), classes=10)
    with pytest.raises(ValueError, match=r"bounds='local' is invalid: expected one of \['global', 'estimate'\]"):
        checks.bounds("local", allowed=("global", "estimate"), batch=3)
    with pytest.raises(ValueError, match=r"bounds must be one of .* or a pair \(m, M\).*got float"):
        checks.bounds(0.5)
    with pytest.raises(ValueError, match=r"got tuple"):
        checks.bounds((1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"bounds given as \(m, M\) must be two \(10, 10\) tables.*"
                                         r"got shapes \(3,\) and \(3,\)"):
        checks.bounds((torch.zeros(3), torch.zeros(3)), classes=10)
    with pytest.raises(ValueError, match=r"must be floats or \(3,\) tensors.*got shapes \(2,\) and \(2,\)"):
        checks.bounds((torch.zeros(2), torch.zeros(2)), batch=3)
    with pytest.raises(ValueError, match=r"got shapes \(4,\) and \(4, 4\)"):
        checks.bounds((torch.zeros(4), torch.zeros(4, 4)), batch=4, classes=4)
    with pytest.raises(ValueError, match="must have the same shape"):
        checks.bounds((torch.zeros(2), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"m <= M \(and not be NaN\): m = 1.0, M = 0.5 at index 1"):
        checks.bounds((torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])), batch=2)
    with pytest.raises(ValueError, match=r"m <= M.*at index \(1, 2\)"):
        table = torch.zeros(3, 3)
        table[1, 2] = float("nan")
        checks.bounds((table, torch.ones(3, 3)), classes=3)
    with pytest.raises(ValueError, match=r"bounds must be a pair"):
        checks.bounds(("a", "b"))


# ------------------------------------------------------------------------------------------------
# Radii
def test_radius_values():
    r = checks.radius(0.5, 3, torch.float32, "cpu")
    assert r.dtype == torch.float32 and r.tolist() == [0.5] * 3 and r.is_contiguous()
    rho = torch.tensor([0.1, 0.2], dtype=F64, requires_grad=True)
    r = checks.radius(rho, 2, F64, "cpu")
    assert not r.requires_grad and torch.equal(r, rho.detach())
    r = checks.radius(torch.tensor(1.5), 2, F64, "cpu")
    assert r.tolist() == [1.5, 1.5]
    assert checks.radius(0.0, 2, F64, "cpu", name="eps", allow_zero=True).tolist() == [0.0, 0.0]
    assert checks.radius(2.0, 0, F64, "cpu").shape == (0,)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_radius_rejects_scalars(bad):
    with pytest.raises(ValueError, match=r"rho must be finite and > 0, got " + repr(bad).replace("(", r"\(")):
        checks.radius(bad, 3, F64, "cpu")


def test_radius_errors():
    with pytest.raises(ValueError, match=r"rho must be finite and > 0, got -0.1 at index 1"):
        checks.radius(torch.tensor([0.5, -0.1, 0.0], dtype=F64), 3, F64, "cpu")
    with pytest.raises(ValueError, match=r"radius must be finite and > 0, got nan at index 0"):
        checks.radius(torch.tensor([float("nan"), 1.0]), 2, F64, "cpu", name="radius")
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0, got -0.1"):
        checks.radius(-0.1, 2, F64, "cpu", name="eps", allow_zero=True)
    with pytest.raises(ValueError, match=r"rho must be a float or a tensor of shape \(3,\), got \(2,\)"):
        checks.radius(torch.ones(2), 3, F64, "cpu")
    with pytest.raises(TypeError, match=r"rho must be a float or a tensor of shape \(3,\), got str"):
        checks.radius("big", 3, F64, "cpu")
    with pytest.raises(TypeError, match="got a bool"):
        checks.radius(True, 3, F64, "cpu")


# ------------------------------------------------------------------------------------------------
# Models and scalars
def test_smooth_model(model):
    assert checks.smooth_model(model).name == "softplus"
    with pytest.raises(NoCurvatureError, match="activation 'relu' has no second derivative.*CROWN"):
        checks.smooth_model(MLP([6, 5, 4], "relu"))
    with pytest.raises(TypeError, match="model must be a crc_core.MLP, got Linear"):
        checks.smooth_model(torch.nn.Linear(6, 4))


def test_finite_weights(model):
    checks.finite_weights(model)
    with torch.no_grad():
        model.layers[1].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"W\^\(2\) contains NaN or infinite values"):
        checks.finite_weights(model)


def test_scalars():
    assert checks.count(3, "steps") == 3
    assert checks.count(4.0, "steps") == 4
    assert checks.count(np.int64(2), "steps") == 2
    assert checks.count(torch.tensor(5), "steps") == 5
    assert checks.count(0, "steps") == 0
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"restarts must be an integer >= 1, got {bad}"):
            checks.count(bad, "restarts", 1)
    for bad in (2.5, "3", None, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 0"):
            checks.count(bad, "steps")
    assert checks.positive(0.01, "step_size") == 0.01
    assert checks.positive(2, "tol") == 2.0
    for bad in (0, -1.0, float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ValueError, match="tol must be a finite number > 0"):
            checks.positive(bad, "tol")
    assert checks.one_of("abs", "which", ("max", "abs")) == "abs"
    with pytest.raises(ValueError, match=r"which='min' is invalid: expected one of \['max', 'abs'\]"):
        checks.one_of("min", "which", ("max", "abs"))
    with pytest.raises(ValueError, match="method=None is invalid"):
        checks.one_of(None, "method", ("a",))
