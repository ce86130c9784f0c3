"""Tests of crc_core.baselines: CROWN-general bounds and certificates, CROWN-IBP and COAP training,
and their wiring into crc_core.training and crc_core.experiments (the relaxations and the
tightness of CROWN on tiny nets: tests/test_relaxations.py).

Soundness is checked against the attack (every lower bound ≤ the margin PGD finds in the same
ball, no box) and against random points of the ball on briefly trained nets of every
activation and depths 2 and 3; correctness against independent computations: the relaxed
two-layer network minimized in closed form through autograd, the first-order limit
f(x) − ε‖∇f(x)‖ for small ε, and the Wong & Kolter dual of the convex_adversarial package, which
equals our back-substitution with Fast-Lin's parallel ReLU lines to float64 rounding.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from crc_core import MLP, attacks, data, evaluation, experiments, training
from crc_core.baselines import TRAINING_LOSSES, crown, schedules
from crc_core.training import TrainSpec

coap = pytest.importorskip("crc_core.baselines.coap")

ACTIVATIONS = ("relu", "softplus", "sigmoid", "tanh")




@pytest.fixture(scope="module")
def mnist():
    X, Y = data.load("mnist", "train")
    return X[:2048], Y[:2048]


_NETS = {}


def trained_net(activation: str, depth: int, mnist, width: int = 32, steps: int = 60) -> MLP:
    """A small net of ``depth`` layers trained briefly on MNIST (float64), cached per module."""
    key = (activation, depth, width)
    if key not in _NETS:
        X, Y = mnist
        torch.manual_seed(depth * 10 + ACTIVATIONS.index(activation))
        model = MLP([784] + [width] * (depth - 1) + [10], activation)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for k in range(steps):
            idx = torch.randint(0, X.shape[0], (64,))
            opt.zero_grad()
            F.cross_entropy(model(X[idx]), Y[idx]).backward()
            opt.step()
        _NETS[key] = model.double().eval()
    return _NETS[key]


def _batch(model, mnist, n: int = 24, correct_only: bool = True):
    X, Y = mnist
    x, y = X[-300:].double(), Y[-300:]
    if correct_only:
        keep = model(x).argmax(1) == y
        x, y = x[keep], y[keep]
    return x[:n], y[:n]


# ------------------------------------------------------------------------------------------------
# Bounds: soundness against attacks and random points
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bounds_are_below_the_pgd_margin(activation, depth, mnist):
    model = trained_net(activation, depth, mnist)
    x, y = _batch(model, mnist, n=16)
    t = attacks.runner_up(model(x), y)
    for eps in (0.1, 0.6):
        _, pgd = attacks.pgd_l2(model, x, y, eps, steps=60, step_size=eps / 15, targets=t,
                                clip=None, return_margin=True)
        lbs = {m: crown.margin_lower_bound(model, x, y, t, eps, method=m).detach()
               for m in crown.METHODS}
        pure = crown.margin_lower_bound(model, x, y, t, eps, intersect_ibp=False).detach()
        for name, lb in {**lbs, "pure": pure}.items():
            assert bool((lb <= pgd + 1e-9).all()), (name, eps)
        # CROWN at least as tight as IBP (with the l2 first layer), with or without intersection
        assert bool((lbs["crown"] >= lbs["ibp"] - 1e-12).all())
        assert bool((pure >= lbs["ibp"] - 1e-9).all())
        assert bool((lbs["crown"] >= pure - 1e-12).all())
        # all targets at once: the runner-up column is the same bound
        all_lb = crown.margin_lower_bounds(model, x, y, eps).detach()
        assert torch.allclose(all_lb.gather(1, t[:, None])[:, 0], lbs["crown"], atol=1e-10)
        assert bool((all_lb.gather(1, y[:, None]) == 0).all())


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bounds_hold_at_random_points_of_the_ball(activation, mnist):
    model = trained_net(activation, 3, mnist)
    x, y = _batch(model, mnist, n=8)
    eps = 0.4
    lb = crown.margin_lower_bounds(model, x, y, eps).detach()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        u = torch.randn(x.shape, generator=g, dtype=x.dtype)
        r = eps * torch.rand(x.shape[0], 1, generator=g, dtype=x.dtype) ** (1 / 784)
        xp = x + r * u / u.norm(dim=1, keepdim=True)
        z = model(xp).detach()
        f = z.gather(1, y[:, None]) - z
        assert bool((lb <= f + 1e-9).all())
        # the hidden-layer intervals hold as well
        bounds = crown.preactivation_bounds(model, x, eps)
        for (lo, hi), zi in zip(bounds, model.preactivations(xp)[:-1]):
            assert bool((lo <= zi + 1e-9).all() and (zi <= hi + 1e-9).all())


# ------------------------------------------------------------------------------------------------
# Bounds: independent computations
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_two_layer_bound_is_the_minimum_of_the_relaxed_net_over_the_ball(activation, mnist):
    """For L = 2 with the first layer's exact intervals, CROWN minimizes the linear function
    g(x') = Σ_k relaxed(w_k σ(z_k(x'))) + b exactly; recompute it from scratch with autograd."""
    model = trained_net(activation, 2, mnist)
    x, y = _batch(model, mnist, n=6)
    t = attacks.runner_up(model(x), y)
    eps = 0.5
    W1, b1 = model.weights[0].detach(), model.biases[0].detach()
    W2, b2 = model.weights[1].detach(), model.biases[1].detach()
    for i in range(x.shape[0]):
        z0 = W1 @ x[i] + b1
        rad = eps * W1.norm(dim=1)
        r = crown.linear_relaxation(activation, z0 - rad, z0 + rad)
        w = W2[y[i]] - W2[t[i]]
        slope = torch.where(w >= 0, r.lower_slope, r.upper_slope)
        icpt = torch.where(w >= 0, r.lower_intercept, r.upper_intercept)

        def g(xp):
            return (w * (slope * (W1 @ xp + b1) + icpt)).sum() + b2[y[i]] - b2[t[i]]

        xp = x[i].clone().requires_grad_(True)
        grad, = torch.autograd.grad(g(xp), xp)
        x_star = x[i] - eps * grad / grad.norm()
        expected = g(x_star)
        lb = crown.margin_lower_bound(model, x[i:i + 1], y[i:i + 1], t[i:i + 1], eps,
                                      intersect_ibp=False).detach()
        assert math.isclose(float(lb), float(expected), rel_tol=1e-10, abs_tol=1e-10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_default_bound_is_never_looser_than_pure_crown_or_ibp(activation):
    """Intersecting CROWN's hidden intervals with IBP's can loosen the final bound (the lines
    move with the interval); the default keeps pure CROWN and IBP beside it. Tiny random nets,
    where the intersection does change the intervals."""
    g = torch.Generator().manual_seed(0)
    for widths in [(2, 4, 4, 3), (2, 3, 3, 3, 3)]:
        for seed in range(6):
            torch.manual_seed(seed)
            model = MLP(list(widths), activation).double()
            with torch.no_grad():
                for W, b in zip(model.weights, model.biases):
                    W.copy_(torch.randn_like(W) * 1.5)
                    b.copy_(torch.randn_like(b) * 0.5)
            x = torch.randn(8, 2, generator=g, dtype=torch.float64)
            y = model(x).argmax(1)
            for eps in (0.3, 1.0):
                with torch.no_grad():
                    default = crown.margin_lower_bounds(model, x, y, eps)
                    pure = crown.margin_lower_bounds(model, x, y, eps, intersect_ibp=False)
                    ibp = crown.margin_lower_bounds(model, x, y, eps, method="ibp")
                assert bool((default >= pure).all()) and bool((default >= ibp).all())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [2, 3])
def test_small_radius_bound_is_first_order_exact(activation, depth, mnist):
    """f̲(ε) = f(x) − ε‖∇f(x)‖ + O(ε²)."""
    model = trained_net(activation, depth, mnist)
    x, y = _batch(model, mnist, n=8)
    t = attacks.runner_up(model(x), y)
    xr = x.clone().requires_grad_(True)
    f = attacks.margin(model(xr), y, t)
    grad, = torch.autograd.grad(f.sum(), xr)
    for eps in (1e-3, 1e-4):
        lb = crown.margin_lower_bound(model, x, y, t, eps).detach()
        first = f.detach() - eps * grad.norm(dim=1)
        assert bool((lb <= first + 1e-12).all())
        assert float((first - lb).max()) <= 50 * eps ** 2


@pytest.mark.parametrize("depth", [2, 3])
def test_fastlin_back_substitution_equals_the_coap_dual(depth, mnist):
    """Our back-substitution with parallel ReLU lines is the Wong & Kolter dual (the package)."""
    model = trained_net("relu", depth, mnist)
    x, y = _batch(model, mnist, n=8, correct_only=False)
    for eps in (0.2, 1.0):
        ours = crown.margin_lower_bounds(model, x, y, eps, intersect_ibp=False,
                                         relu_lower="parallel").detach()
        theirs = coap.margin_lower_bounds(model, x, y, eps).detach()
        assert torch.allclose(ours, theirs, atol=1e-10, rtol=1e-10)


def test_lean_dual_network_equals_the_package(mnist):
    from convex_adversarial import RobustBounds
    model = trained_net("relu", 3, mnist)
    x, y = _batch(model, mnist, n=6, correct_only=False)
    net = coap.to_sequential(model)
    eps = torch.linspace(0.1, 1.0, x.shape[0], dtype=x.dtype)
    with torch.no_grad():
        assert torch.equal(RobustBounds(net, eps, norm_type="l2")(x, y),
                           coap.dual_margins(net, x, y, eps, norm_type="l2"))


@pytest.mark.parametrize("depth", [2, 3])
def test_coap_bound_is_below_the_pgd_margin(depth, mnist):
    model = trained_net("relu", depth, mnist)
    x, y = _batch(model, mnist, n=12)
    t = attacks.runner_up(model(x), y)
    _, pgd = attacks.pgd_l2(model, x, y, 0.5, steps=60, step_size=0.04, targets=t, clip=None,
                            return_margin=True)
    lb = coap.margin_lower_bound(model, x, y, t, 0.5)
    assert bool((lb <= pgd + 1e-9).all())
    assert lb.dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# The certificate
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_certified_radius_is_sound_and_tight(activation, mnist):
    model = trained_net(activation, 3, mnist)
    x, y = _batch(model, mnist, n=10)
    y = y.clone()
    y[0] = (y[0] + 1) % 10                                   # one misclassified input
    cert = crown.certify(model, x, y, targets="runner-up", tol=1e-3)
    assert cert.radius[0] == 0 and bool(cert.misclassified[0])
    r, ok = cert.radius[1:], slice(1, None)
    t = cert.target[ok]
    lb_at = crown.margin_lower_bound(model, x[ok], y[ok], t, r).detach()
    assert bool((lb_at > 0).all())
    assert torch.allclose(lb_at, cert.lower_bound[ok])
    # the search stopped with a failed ε at most tol above the radius
    assert bool(((cert.upper[ok] - r) <= 1e-3 + 1e-12).all())
    assert bool((crown.margin_lower_bound(model, x[ok], y[ok], t, cert.upper[ok]) <= 0).all())
    # PGD cannot cross the boundary within the radius
    _, pgd = attacks.pgd_l2(model, x[ok], y[ok], r, steps=80, step_size=float(r.max()) / 20,
                            targets=t, clip=None, return_margin=True)
    assert bool((pgd > 0).all())
    # bisection finds the same radius to within tol (the bound is monotone for these nets)
    bis = crown.certify(model, x, y, targets="runner-up", tol=1e-3, search="bisection")
    assert float((bis.radius - cert.radius).abs().max()) <= 2e-3
    assert cert.evaluations < bis.evaluations
    # all classes: never above the runner-up radius
    every = crown.certify(model, x, y, targets="all", tol=1e-3)
    assert bool((every.radius <= cert.radius + 1e-3).all())
    lb_all = crown.margin_lower_bounds(model, x[ok], y[ok], every.radius[ok]).detach()
    assert bool((lb_all.scatter(1, y[ok][:, None], math.inf).min(1).values > 0).all())


def test_certify_float32_and_float64_agree(mnist):
    model = trained_net("softplus", 2, mnist)
    x, y = _batch(model, mnist, n=8)
    m32 = MLP(model.widths, "softplus")
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    a = crown.certify(m32, x.float(), y)
    b = crown.certify(m32, x.float(), y, dtype=torch.float64)
    assert a.radius.dtype == torch.float32 and b.radius.dtype == torch.float64
    assert float((a.radius.double() - b.radius).abs().max()) <= 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bounds_on_cuda(mnist):
    model = trained_net("sigmoid", 3, mnist)
    x, y = _batch(model, mnist, n=8)
    cpu = crown.margin_lower_bounds(model, x, y, 0.3).detach()
    gpu = crown.margin_lower_bounds(model.cuda(), x.cuda(), y.cuda(), 0.3).detach()
    model.cpu()
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def test_training_progress():
    spec = TrainSpec(widths=(784, 16, 10), activation="relu", method="crown-ibp", rho=1.58,
                     epochs=4, batch_size=64, train_subset=640)
    steps = math.ceil(640 / 64)
    seq = [training.training_progress(spec, e, s, steps) for e in range(4) for s in range(steps)]
    assert seq[0] == 0.0 and seq[-1] == 39 / 40 and seq == sorted(seq)
    assert training.training_progress(spec, 2, 0, steps) == 0.5


def test_schedules_ramp_and_progress_checks():
    assert schedules.ramp(0.0, 0.05, 0.5) == 0.0 and schedules.ramp(0.05, 0.05, 0.5) == 0.0
    assert math.isclose(schedules.ramp(0.275, 0.05, 0.5), 0.5)
    assert schedules.ramp(0.5, 0.05, 0.5) == 1.0 and schedules.ramp(3.0, 0.05, 0.5) == 1.0
    for bad in (-0.1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="progress must be a finite number >= 0"):
            schedules.check_progress(bad)


def test_crown_ibp_schedule():
    spec = TrainSpec(widths=(784, 16, 10), activation="relu", method="crown-ibp", rho=1.58,
                     epochs=10, batch_size=64, train_subset=640, crown_ibp_final_beta=2.0)
    assert crown.crown_ibp_schedule(spec, 0.0) == (0.0, 1.0, 1.0)              # warm-up
    assert crown.crown_ibp_schedule(spec, crown.WARMUP_FRACTION) == (0.0, 1.0, 1.0)
    eps, kappa, beta = crown.crown_ibp_schedule(spec, 0.99)                     # after the ramp
    assert (eps, kappa, beta) == (1.58, crown.FINAL_KAPPA, 2.0)
    mid = (crown.WARMUP_FRACTION + crown.RAMP_END_FRACTION) / 2                  # half-way
    eps, kappa, beta = crown.crown_ibp_schedule(spec, mid)
    assert math.isclose(eps, 0.79) and math.isclose(kappa, 0.5) and math.isclose(beta, 1.5)
    values = [crown.crown_ibp_schedule(spec, training.training_progress(spec, e, s, 10))
              for e in range(10) for s in range(10)]
    eps_seq = [v[0] for v in values]
    assert eps_seq == sorted(eps_seq) and 0 < eps_seq[30] < 1.58
    cspec = TrainSpec(widths=(784, 16, 10), activation="relu", method="coap", rho=1.58, epochs=10,
                      batch_size=64, train_subset=640)
    assert coap.coap_schedule(cspec, 0.0) == coap.START_EPS
    assert math.isclose(coap.coap_schedule(cspec, coap.RAMP_END_FRACTION / 2),
                        coap.START_EPS + (1.58 - coap.START_EPS) / 2)
    assert coap.coap_schedule(cspec, 0.99) == 1.58
    with pytest.raises(ValueError, match="progress"):
        crown.crown_ibp_schedule(spec, -1)


@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_crown_ibp_loss(activation, mnist):
    X, Y = mnist
    x, y = X[:32], Y[:32]
    torch.manual_seed(0)
    model = MLP([784, 16, 16, 10], activation)
    spec = TrainSpec(widths=(784, 16, 16, 10), activation=activation, method="crown-ibp", rho=1.58,
                     epochs=1, batch_size=32, train_subset=32 * 10, crown_ibp_final_beta=0.8)
    loss0, logits = crown.crown_ibp_loss(model, x, y, spec, 0.0)               # ε = 0: plain CE
    assert torch.allclose(loss0, F.cross_entropy(model(x), y))
    loss, _ = crown.crown_ibp_loss(model, x, y, spec, 0.9)
    assert torch.isfinite(loss) and float(loss.detach()) > float(loss0.detach())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the robust term is CE at the mixed lower bounds
    eps, kappa, beta = crown.crown_ibp_schedule(spec, 0.9)
    with torch.no_grad():
        ci = crown.margin_lower_bounds(model, x, y, eps, method="crown-ibp")
        ib = crown.margin_lower_bounds(model, x, y, eps, method="ibp")
        expected = kappa * F.cross_entropy(model(x), y) + (1 - kappa) * F.cross_entropy(
            -(beta * ci + (1 - beta) * ib), y)
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_coap_loss_trains_the_mlp(mnist):
    X, Y = mnist
    torch.manual_seed(0)
    model = MLP([784, 16, 10], "relu")
    spec = TrainSpec(widths=(784, 16, 10), activation="relu", method="coap", rho=1.58, epochs=1,
                     batch_size=32, train_subset=32)
    loss, logits = coap.coap_loss(model, X[:32], Y[:32], spec, 0.0)
    loss.backward()
    assert model.layers[0].weight.grad is not None and logits.shape == (32, 10)
    with pytest.raises(ValueError, match="ReLU"):
        coap.coap_loss(MLP([784, 16, 10], "softplus"), X[:4], Y[:4], spec, 0.0)


def test_training_losses_are_registered():
    assert set(TRAINING_LOSSES) == {"crown-ibp", "coap"}
    assert training.is_implemented("crown-ibp") and training.is_implemented("coap")


def test_crown_ibp_training_resumes_exactly(tmp_path):
    spec = TrainSpec(widths=(784, 16, 10), activation="softplus", method="crown-ibp", rho=1.58,
                     epochs=2, batch_size=64, train_subset=128, crown_ibp_final_beta=1.5)
    full = training.train(spec, tmp_path / "full", progress=False)
    training.train(spec, tmp_path / "split", progress=False, until_epoch=1)
    split = training.train(spec, tmp_path / "split", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), split.state_dict().values()))
    assert len(training.read_history(tmp_path / "split")) == 2


def test_spec_final_beta_field():
    base = dict(widths=(784, 16, 10), activation="relu", rho=1.58, epochs=1)
    spec = TrainSpec(method="crown-ibp", crown_ibp_final_beta=3, **base)
    d = spec.to_dict()
    assert d["crown_ibp_final_beta"] == 3.0 and TrainSpec.from_dict(d) == spec
    # other methods: the field keeps its default and is not written (old specs unchanged)
    coap_spec = TrainSpec(method="coap", **base)
    assert "crown_ibp_final_beta" not in coap_spec.to_dict()
    assert TrainSpec.from_dict(coap_spec.to_dict()) == coap_spec
    with pytest.raises(ValueError, match="crown_ibp_final_beta"):
        TrainSpec(method="coap", crown_ibp_final_beta=2.0, **base)
    with pytest.raises(ValueError, match="crown_ibp_final_beta"):
        TrainSpec(method="crown-ibp", crown_ibp_final_beta=-1.0, **base)
    with pytest.raises(ValueError, match="crown_ibp_final_beta"):
        TrainSpec(method="crown-ibp", crown_ibp_final_beta=float("nan"), **base)


@pytest.mark.parametrize("name", ["mnist-relu-2x1024-crown-ibp-r1.58",
                                  "mnist-softplus-2x1024-crown-ibp-r1.58",
                                  "mnist-relu-2x1024-coap-r1.58"])
def test_each_baseline_runs_end_to_end(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CRC_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CRC_RUNS_DIR", str(tmp_path / "runs"))
    result = experiments.run_experiment(name, "smoke", progress=False)
    assert experiments.results_path(name, "smoke").is_file()
    assert (tmp_path / "runs" / "smoke" / name / training.CHECKPOINT).is_file()
    m, n = result["metrics"], result["evaluation"]["n_subset"]
    assert result["evaluation"]["crown_mode"] == "at-radii"
    slots = ["crown", "coap"] if "coap" in name else ["crown"]
    for rho in experiments.EVAL_RADII:
        for targets in ("runner-up", "all-classes"):
            for slot in slots:
                frac = m[f"certified_fraction/{targets}/{slot}/{rho:g}"]
                assert frac["n"] == n and 0 <= frac["value"] <= 1
                assert f"certified_accuracy/{targets}/{slot}/{rho:g}" in m
        assert f"robust_fraction_pgd/runner-up/{rho:g}" in m
    for rho in experiments.EVAL_RADII:   # all classes never certify more than the runner-up
        assert (m[f"certified_fraction/all-classes/crown/{rho:g}"]["value"]
                <= m[f"certified_fraction/runner-up/crown/{rho:g}"]["value"])
    if "crown-ibp" in name:
        assert result["spec"]["crown_ibp_final_beta"] == 1.0
    assert "mean_certificate/runner-up/crown" not in m


def test_evaluate_crown_radius_mode(mnist):
    """Table 5b's mean CROWN certificate (mode "radius"; a ReLU net keeps the CRC part out)."""
    model = copy.deepcopy(trained_net("relu", 2, mnist)).float()
    spec = TrainSpec(widths=tuple(model.widths), activation="relu", method="standard", epochs=1)
    out = experiments.evaluate(model, spec, "smoke", progress=False, crown_mode="radius")
    m, per = out["metrics"], out["per_image"]
    assert out["evaluation"]["crown_mode"] == "radius"
    assert m["mean_certificate/runner-up/crown"] > 0
    for rho in experiments.EVAL_RADII:
        radius_says = [r >= rho for r in per["radius/runner-up/crown"]]
        direct = per[f"certified/runner-up/crown/{rho:g}"]
        assert all(d or not r for d, r in zip(direct, radius_says))
        assert m[f"certified_fraction/runner-up/crown/{rho:g}"]["value"] == sum(direct) / len(direct)
    # defaults: CROWN for the baselines and Table 5's smooth nets only
    assert evaluation.default_crown_mode(spec) == "none"
    assert evaluation.default_crown_mode(spec.replace(activation="sigmoid"), ("table5",)) == "radius"
    assert evaluation.default_crown_mode(
        spec.replace(method="coap", rho=1.58)) == "at-radii"
    with pytest.raises(ValueError, match="crown_mode"):
        experiments.evaluate(model, spec, "smoke", progress=False, crown_mode="all")


def test_list_shows_baselines_as_implemented(tmp_path):
    text = experiments.list_runs("smoke", results_dir=tmp_path)
    lines = [l for l in text.splitlines() if "-crown-ibp-r" in l or "-coap-r" in l]
    assert len(lines) == 18   # 3 depths × 2 data sets × (CROWN-IBP relu, softplus; COAP relu)
    assert all("not implemented" not in l and "missing" in l for l in lines)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

def test_error_messages():
    model = MLP([784, 8, 10], "sigmoid")
    x, y, t = torch.rand(3, 784), torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        crown.margin_lower_bound(model, x, y, t, -0.1)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        crown.margin_lower_bound(model, x, y, t, float("nan"))
    with pytest.raises(ValueError, match=r"eps must be a float or a tensor of shape \(3,\)"):
        crown.margin_lower_bound(model, x, y, t, torch.ones(4))
    with pytest.raises(ValueError, match="t must differ from y"):
        crown.margin_lower_bound(model, x, y, y, 0.1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 784\)"):
        crown.margin_lower_bound(model, torch.rand(3, 10), y, t, 0.1)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        crown.margin_lower_bounds(model, x, torch.tensor([0, 1]), 0.1)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 9\]"):
        crown.margin_lower_bounds(model, x, torch.tensor([0, 1, 10]), 0.1)
    with pytest.raises(ValueError, match="method"):
        crown.margin_lower_bound(model, x, y, t, 0.1, method="lp")
    with pytest.raises(ValueError, match="spec must have shape"):
        crown.spec_lower_bound(model, x, 0.1, torch.ones(2, 7))
    with pytest.raises(ValueError, match="targets"):
        crown.certify(model, x, y, targets="others")
    with pytest.raises(ValueError, match="eps_max"):
        crown.certify(model, x, y, eps_max=0)
    with pytest.raises(ValueError, match="tol"):
        crown.certify(model, x, y, tol=-1)
    with pytest.raises(ValueError, match="search"):
        crown.certify(model, x, y, search="golden")
    with pytest.raises(ValueError, match="ReLU"):
        coap.margin_lower_bounds(model, x, y, 0.5)
    relu = MLP([784, 8, 10], "relu")
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        coap.margin_lower_bounds(relu, x, y, 0.0)
