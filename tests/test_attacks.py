"""Tests of crc_core.attacks: l2 PGD (the authors' evaluation attack)."""
import pytest
import torch

from crc_core import MLP, attacks

F64 = torch.float64




def linear_relu_net(D=6, C=4, seed=0):
    """A ReLU MLP that is affine on [0, 1]^D: W1 = I, b1 = 10 keeps every unit active."""
    gen = torch.Generator().manual_seed(seed)
    model = MLP([D, D, C], "relu").double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.eye(D, dtype=F64))
        model.layers[0].bias.fill_(10.0)
        model.layers[1].weight.copy_(torch.randn(C, D, generator=gen, dtype=F64))
        model.layers[1].bias.copy_(-10.0 * model.layers[1].weight.sum(1))
    return model


def distances(model, x, y):
    """Exact l2 distance to the boundary of each class t ≠ y for the affine net: (B, C)."""
    W = model.layers[1].weight
    z = model(x)
    w = W[y][:, None, :] - W[None]                 # (B, C, D): ∇(z_y − z_t)
    f = z.gather(1, y[:, None]) - z                 # (B, C)
    d = f / w.norm(dim=2)
    d[torch.arange(len(y)), y] = float("inf")
    return d


def test_stays_in_ball_and_box():
    torch.manual_seed(0)
    model = MLP([8, 16, 3], "softplus").double()
    x, y = torch.rand(20, 8, dtype=F64), torch.randint(0, 3, (20,))
    for targets in ("runner-up", "untargeted"):
        for rho in (0.05, 0.5, 2.0):
            x_adv = attacks.pgd_l2(model, x, y, rho, steps=30, step_size=0.1, targets=targets,
                                   restarts=2, generator=torch.Generator().manual_seed(1))
            assert ((x_adv - x).norm(dim=1) <= rho * (1 + 1e-12)).all()
            assert (x_adv >= 0).all() and (x_adv <= 1).all()
    x_adv = attacks.pgd_l2(model, x, y, 0.3, steps=10, clip=None, random_start=False)
    assert ((x_adv - x).norm(dim=1) <= 0.3 * (1 + 1e-12)).all()


def test_finds_the_boundary_of_an_affine_net():
    model = linear_relu_net()
    x = 0.25 + 0.5 * torch.rand(30, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
        d = distances(model, x, y)
    t = d.argmin(1)
    dmin = d.min(1).values
    # targeted toward the nearest class, a ball 10% larger than the distance is enough
    x_adv, marg = attacks.pgd_l2(model, x, y, 1.1 * dmin, steps=200, step_size=0.01, targets=t,
                                 clip=None, random_start=False, return_margin=True)
    assert (marg < 0).all()
    # untargeted (a local method: it follows the currently largest other logit) changes the label
    # once every class is within reach; 10% below the distance it never does
    dmax = torch.where(torch.isinf(d), 0, d).max(1).values
    x_adv = attacks.pgd_l2(model, x, y, 1.1 * dmax, steps=200, step_size=0.01,
                           targets="untargeted", clip=None)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    assert attacks.pgd_success(model, x, y, 1.1 * dmax, steps=200, targets="untargeted", clip=None).all()
    assert not attacks.pgd_success(model, x, y, 0.9 * dmin, steps=200, targets="untargeted", clip=None).any()
    # the default number of steps is the authors' 200·ρ
    rho = float(dmin.max()) * 1.1
    x_adv, marg = attacks.pgd_l2(model, x, y, rho, targets=t, clip=None, return_margin=True)
    assert (marg < 0).all()


def test_deterministic_with_generator_and_restarts_keep_best():
    torch.manual_seed(0)
    model = MLP([8, 16, 3], "tanh").double()
    x, y = torch.rand(16, 8, dtype=F64), torch.randint(0, 3, (16,))
    run = lambda restarts, seed: attacks.pgd_l2(model, x, y, 0.4, steps=15, restarts=restarts,  # noqa: E731
                                                targets="untargeted", return_margin=True,
                                                generator=torch.Generator().manual_seed(seed))
    a, ma = run(1, 5)
    b, mb = run(1, 5)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    c, mc = run(3, 5)            # the first restart repeats the single run: never worse
    assert (mc <= ma).all()
    with torch.no_grad():
        torch.testing.assert_close(mc, attacks.margin(model(c), y, "untargeted"))


def test_margins_and_runner_up():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    y = torch.tensor([0, 2])
    assert attacks.runner_up(logits, y).tolist() == [2, 1]
    torch.testing.assert_close(attacks.margin(logits, y), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(attacks.margin(logits, y, torch.tensor([1, 0])), torch.tensor([2.0, 4.0]))


def test_parameters_untouched():
    model = MLP([8, 16, 3], "relu")
    x, y = torch.rand(4, 8), torch.randint(0, 3, (4,))
    x_adv = attacks.pgd_l2(model, x, y, 0.5, steps=5)
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad


def test_errors():
    model = MLP([8, 16, 3], "softplus")
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    for rho in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            attacks.pgd_l2(model, x, y, rho)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attacks.pgd_l2(model, bad, y, 0.5)
    with pytest.raises(ValueError, match="shape"):
        attacks.pgd_l2(model, torch.rand(4, 9), y, 0.5)
    with pytest.raises(ValueError, match="shape"):
        attacks.pgd_l2(model, x, y[:3], 0.5)
    with pytest.raises(ValueError, match="targets"):
        attacks.pgd_l2(model, x, y, 0.5, targets="all")
    with pytest.raises(ValueError, match="differ"):
        attacks.pgd_l2(model, x, y, 0.5, targets=y.clone())
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd_l2(model, x, y, 0.5, restarts=0)


def test_int_label_and_target_broadcast():
    """One policy (crc_core.checks.labels): an int label or target is broadcast to every sample."""
    torch.manual_seed(0)
    model = MLP([8, 16, 3], "tanh").double()
    x = torch.rand(5, 8, dtype=F64)
    kw = dict(steps=5, random_start=False, return_margin=True)
    a, ma = attacks.pgd_l2(model, x, 1, 0.3, targets=2, **kw)
    b, mb = attacks.pgd_l2(model, x, torch.full((5,), 1), 0.3, targets=torch.full((5,), 2), **kw)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert torch.equal(attacks.pgd_success(model, x, 1, 0.3, steps=5, random_start=False),
                       attacks.pgd_success(model, x, torch.full((5,), 1), 0.3, steps=5, random_start=False))


def test_error_messages():
    model = MLP([8, 16, 3], "softplus")
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    bad = x.clone()
    bad[2, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite values: first at row 2"):
        attacks.pgd_l2(model, bad, y, 0.5)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\] \(the model has 3 classes\), got 3 at index 1"):
        attacks.pgd_l2(model, x, torch.tensor([0, 3, 1, 1]), 0.5)
    with pytest.raises(ValueError, match=r"y must have shape \(4,\) to match x, got \(4, 1\)"):
        attacks.pgd_l2(model, x, y[:, None], 0.5)
    with pytest.raises(ValueError, match=r"rho must be finite and > 0, got -0.5 at index 3"):
        attacks.pgd_l2(model, x, y, torch.tensor([0.5, 0.5, 0.5, -0.5]))
    with pytest.raises(ValueError, match=r"rho must be a float or a tensor of shape \(4,\)"):
        attacks.check_radius(torch.ones(3), 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"targets='all' is invalid: expected one of \['runner-up', 'untargeted'\]"):
        attacks.pgd_l2(model, x, y, 0.5, targets="all")
    with pytest.raises(ValueError, match="targets must differ from y.*at index 0"):
        attacks.pgd_l2(model, x, y, 0.5, targets=torch.tensor([0, 2, 0, 1]))
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        attacks.pgd_l2(model, x, y, 0.5, step_size=0.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -1"):
        attacks.pgd_l2(model, x, y, 0.5, steps=-1)
    with pytest.raises(ValueError, match="clip must be"):
        attacks.pgd_l2(model, x, y, 0.5, clip=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"targets='runner-up' is invalid: expected one of \['untargeted'\]"):
        attacks.margin(model(x), y, "runner-up")
