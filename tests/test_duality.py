"""Tests of crc_core.duality: Definitions 1 and 2, Theorems 1 and 2.

Closed forms (linear and quadratic margins), brute-force boundary distances of tiny D = 2 nets,
soundness audits against PGD and the CRC attack on briefly trained nets, agreement with the
authors' fixed schedules, and argument errors. The audits marked ``slow`` run ≥ 2,000
(input, target) pairs.
"""
import math

import pytest
import torch

from crc_core import MLP, attacks, curvature, dual_solvers, duality
from crc_core.activations import NoCurvatureError

F64 = torch.float64




# ------------------------------------------------------------------------------------------------
# Helpers: closed-form margins and tiny trained nets
# ------------------------------------------------------------------------------------------------

def quadratic(x0, lam, Q, g0, f0):
    """f(x) = f0 + g0ᵀu + ½ uᵀ H u with u = x − x0 and H = Q diag(lam) Qᵀ, batched (B, D)."""
    H = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)

    def fn(x, rows):
        u = x - x0[rows]
        Hu = torch.einsum("bij,bj->bi", H[rows], u)
        return f0[rows] + (g0[rows] * u).sum(1) + 0.5 * (u * Hu).sum(1), g0[rows] + Hu
    return fn


def exact_dual(lam, Q, g0, f0, eta_max, iters=200):
    """max over η ∈ [0, eta_max] of d(η) for the quadratic above, by bisection on d'(η) = f(x*(η))."""
    gl = torch.einsum("bji,bj->bi", Q, g0)

    def at(eta):
        u = -eta[:, None] * gl / (1 + eta[:, None] * lam)
        f = f0 + (gl * u).sum(1) + 0.5 * (lam * u * u).sum(1)
        return f, 0.5 * (u * u).sum(1) + eta * f

    lo, hi = torch.zeros_like(f0), eta_max.clone()
    f_hi, _ = at(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        f, _ = at(mid)
        lo, hi = torch.where(f > 0, mid, lo), torch.where(f > 0, hi, mid)
    eta = torch.where(f_hi > 0, eta_max, lo)
    _, d = at(eta)
    return eta, d, f_hi > 0


def random_quadratic(B, D, lam_lo, lam_hi, f0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lam = lam_lo + (lam_hi - lam_lo) * torch.rand(B, D, generator=gen, dtype=F64)
    lam[:, 0], lam[:, 1] = lam_lo, lam_hi
    Q = torch.linalg.qr(torch.randn(B, D, D, generator=gen, dtype=F64))[0]
    g0 = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=F64), dim=1)
    x0 = torch.rand(B, D, generator=gen, dtype=F64)
    f0 = torch.full((B,), float(f0), dtype=F64)
    return x0, lam, Q, g0, f0


def blobs(n, D, C, seed, sample_seed):
    gen = torch.Generator().manual_seed(seed)
    centers = 0.3 + 0.4 * torch.rand(C, D, generator=gen)
    gen.manual_seed(sample_seed)
    y = torch.randint(0, C, (n,), generator=gen)
    x = (centers[y] + 0.12 * torch.randn(n, D, generator=gen)).clamp(0, 1)
    return x, y


def train_net(widths, activation, gamma=0.0, steps=300, seed=0):
    """A small net trained briefly with Adam on Gaussian blobs; float64; test inputs."""
    torch.manual_seed(seed)
    D, C = widths[0], widths[-1]
    X, Y = blobs(2000, D, C, seed, 0)
    model = MLP(widths, activation)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (128,))
        z = model(X[idx])
        loss = torch.nn.functional.cross_entropy(z, Y[idx])
        if gamma:
            t = attacks.runner_up(z, Y[idx])
            loss = loss + gamma * curvature.curvature_penalty(model, Y[idx], t).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    Xt, Yt = blobs(600, D, C, seed, 1)
    return model.double(), Xt.double(), Yt


NETS = {
    "softplus-2": ([10, 32, 4], "softplus", 0.01),
    "sigmoid-3": ([10, 32, 32, 4], "sigmoid", 0.0),
    "tanh-2": ([10, 32, 4], "tanh", 0.0),
    "softplus-3": ([10, 24, 24, 4], "softplus", 0.0),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    widths, act, gamma = NETS[request.param]
    return train_net(widths, act, gamma, steps=300 if gamma == 0 else 150)


@pytest.fixture(scope="module")
def softplus_net():
    return train_net([10, 32, 4], "softplus", 0.0)


def loose_tables(model, factor):
    """Sound but loose (m, M) tables: the rigorous ones widened by ``factor``."""
    m, M = curvature.all_pair_bounds(model)
    return factor * m, factor * M


# ------------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------------

def test_linear_margin_exact():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=F64)
    b = torch.tensor([1.0, 0.25], dtype=F64)
    fn = lambda x, rows: ((x * a[rows]).sum(1) + b[rows], a[rows].clone())  # noqa: E731
    x0 = torch.zeros(2, 2, dtype=F64)
    sol = duality.solve_certificate(fn, x0, 0.0, 0.0)
    torch.testing.assert_close(sol.radius, b / a.norm(dim=1), rtol=0, atol=1e-12)
    assert sol.tight.all() and (sol.grad_evals <= 3).all()
    assert (sol.eta < duality.ETA_CAP).all()
    torch.testing.assert_close(sol.paper_radius, sol.radius, rtol=0, atol=1e-12)
    # the attack: min over the ρ-ball of a linear f is f(x0) − ρ‖a‖, on the sphere
    adv = duality.solve_attack(fn, x0, 0.0, 0.0, 0.5)
    torch.testing.assert_close(adv.margin, b - 0.5 * a.norm(dim=1), rtol=0, atol=1e-12)
    assert adv.tight.all() and adv.grad_evals <= 11


def test_constant_margin_is_capped():
    """m = M = 0 and ∇f = 0: no boundary; the certificate is sqrt(2 ETA_CAP f) and finite."""
    fn = lambda x, rows: (torch.full((x.shape[0],), 2.0, dtype=F64), torch.zeros_like(x))  # noqa: E731
    sol = duality.solve_certificate(fn, torch.zeros(1, 3, dtype=F64), 0.0, 0.0)
    assert math.isclose(float(sol.radius), math.sqrt(2 * duality.ETA_CAP * 2.0), rel_tol=1e-9)
    assert not sol.tight.any()


@pytest.mark.parametrize("c", [0.7, -0.7])
def test_isotropic_quadratic_exact(c):
    """f(x) = aᵀx + b + c/2‖x‖²: {f = 0} is a sphere; the distance is in closed form."""
    gen = torch.Generator().manual_seed(1)
    B, D = 6, 5
    a = torch.randn(B, D, generator=gen, dtype=F64)
    center = -a / c
    unit = torch.nn.functional.normalize(torch.randn(B, D, generator=gen, dtype=F64), dim=1)
    if c > 0:   # f ≤ 0 inside a ball of radius R_s; x0 outside it
        b = (c / 2) * (center * center).sum(1) - (c / 2) * 0.5 ** 2   # R_s = 0.5
        R_s = 0.5
        x0 = center + (R_s + 0.3 + torch.rand(B, 1, generator=gen, dtype=F64)) * unit
        dist = (x0 - center).norm(dim=1) - R_s
    else:       # f ≤ 0 outside a sphere of radius R_s; x0 inside it
        R_s = 2.0
        b = (c / 2) * (center * center).sum(1) - (c / 2) * R_s ** 2
        x0 = center + (0.2 + torch.rand(B, 1, generator=gen, dtype=F64)) * unit
        dist = R_s - (x0 - center).norm(dim=1)
    def fn(x, rows):
        return (x * a[rows]).sum(1) + b[rows] + c / 2 * (x * x).sum(1), a[rows] + c * x
    assert (fn(x0, torch.arange(B))[0] > 0).all()
    sol = duality.solve_certificate(fn, x0, c, c)
    torch.testing.assert_close(sol.radius, dist, rtol=0, atol=1e-8)
    assert sol.tight.all()
    torch.testing.assert_close((sol.x - x0).norm(dim=1), dist, rtol=0, atol=1e-6)
    assert (sol.grad_evals <= 8).all()
    # attack on the same f: the minimum over the ρ-ball lies at x0 − ρ ∇f(x0)/‖∇f(x0)‖ (isotropic)
    rho = 0.3
    g0 = fn(x0, torch.arange(B))[1]
    x_exp = x0 - rho * torch.nn.functional.normalize(g0, dim=1)
    f_exp = fn(x_exp, torch.arange(B))[0]
    if c > 0:   # unless the unconstrained minimizer −a/c lies inside the ball
        assert ((center - x0).norm(dim=1) > rho).all()
    adv = duality.solve_attack(fn, x0, c, c, rho)
    torch.testing.assert_close(adv.margin, f_exp, rtol=0, atol=1e-9)
    assert adv.tight.all()


@pytest.mark.parametrize("lam_lo,lam_hi,f0,factor", [
    (-1.0, 1.0, 1.0, 1.0),     # tight bounds: interior optimum
    (-1.0, 1.0, 3.0, 1.0),
    (-0.5, 0.8, 4.0, 2.0),     # loose bounds (m = 2 λmin): curvature-limited rows
    (0.2, 1.0, 1.0, 1.0),      # convex f
])
def test_anisotropic_quadratic_reaches_dual_optimum(lam_lo, lam_hi, f0, factor):
    B, D = 12, 40
    x0, lam, Q, g0, f0t = random_quadratic(B, D, lam_lo, lam_hi, f0)
    fn = quadratic(x0, lam, Q, g0, f0t)
    m = torch.full((B,), factor * lam_lo if lam_lo < 0 else lam_lo, dtype=F64)
    M = torch.full((B,), factor * lam_hi, dtype=F64)
    sol = duality.solve_certificate(fn, x0, m, M, max_evals=300)
    _, d_star, limited = exact_dual(lam, Q, g0, f0t, dual_solvers.certificate_eta_max(m))
    r_star = (2 * d_star).sqrt()
    assert (sol.radius <= r_star + 1e-9).all()                 # weak duality: never above
    torch.testing.assert_close(sol.radius, r_star, rtol=0, atol=1e-6)
    assert (sol.tight == ~limited).all()
    if factor > 1:
        assert limited.any()                                   # the η = η_max path is exercised


@pytest.mark.parametrize("lam_lo,lam_hi,rho", [(-1.0, 1.0, 0.5), (-0.3, 2.0, 1.0), (0.5, 2.0, 3.0)])
def test_attack_on_anisotropic_quadratic(lam_lo, lam_hi, rho):
    """min over the ρ-ball of gᵀu + ½uᵀHu: u = −(H + ηI)⁻¹g with ‖u‖ = ρ (trust region)."""
    B, D = 10, 30
    x0, lam, Q, g0, f0 = random_quadratic(B, D, lam_lo, lam_hi, 1.0, seed=5)
    fn = quadratic(x0, lam, Q, g0, f0)
    gl = torch.einsum("bji,bj->bi", Q, g0)
    lo = (-lam.min(1).values).clamp_min(0) + 1e-12
    hi = lo + 100.0
    for _ in range(200):                     # ‖u(η)‖ decreases in η
        mid = (lo + hi) / 2
        big = (gl / (lam + mid[:, None])).norm(dim=1) > rho
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    u = -gl / (lam + lo[:, None])
    interior = u.norm(dim=1) < rho * (1 - 1e-6)    # convex f with its minimizer inside the ball
    f_exact = f0 + (gl * u).sum(1) + 0.5 * (lam * u * u).sum(1)
    adv = duality.solve_attack(fn, x0, lam_lo, lam_hi, rho, steps=40)
    assert ((adv.x - x0).norm(dim=1) <= rho * (1 + 1e-12)).all()
    torch.testing.assert_close(adv.margin, f_exact, rtol=0, atol=1e-6)
    assert (adv.tight == ~interior).all()
    if lam_lo > 0:
        assert interior.all()


def test_inexact_inner_solves_stay_sound():
    B, D = 12, 40
    x0, lam, Q, g0, f0t = random_quadratic(B, D, -1.0, 1.0, 2.0)
    fn = quadratic(x0, lam, Q, g0, f0t)
    full = duality.solve_certificate(fn, x0, -1.0, 1.0)
    for k in (1, 2, 3, 5):
        part = duality.solve_certificate(fn, x0, -1.0, 1.0, max_evals=k)
        assert (part.grad_evals <= k).all()
        assert (part.radius <= full.radius + 1e-12).all()
        assert (part.radius >= 0).all()


def test_dual_lower_bound_matches_definition():
    """d(η) ≥ the bound at any point; equality at the exact minimizer of F_η."""
    B, D = 5, 8
    x0, lam, Q, g0, f0 = random_quadratic(B, D, -1.0, 1.0, 1.0, seed=3)
    fn = quadratic(x0, lam, Q, g0, f0)
    eta = torch.full((B,), 0.4, dtype=F64)
    gl = torch.einsum("bji,bj->bi", Q, g0)
    u_star = torch.einsum("bij,bj->bi", Q, -eta[:, None] * gl / (1 + eta[:, None] * lam))
    x_star = x0 + u_star
    f, g = fn(x_star, torch.arange(B))
    d = 0.5 * (u_star * u_star).sum(1) + eta * f
    torch.testing.assert_close(duality.dual_lower_bound(x_star, x0, f, g, eta, -1.0), d)
    x_hat = x_star + 0.1 * torch.randn(B, D, dtype=F64)
    f, g = fn(x_hat, torch.arange(B))
    assert (duality.dual_lower_bound(x_hat, x0, f, g, eta, -1.0) <= d + 1e-12).all()
    with pytest.raises(ValueError):
        duality.dual_lower_bound(x_hat, x0, f, g, 1.5, -1.0)   # 1 + ηm < 0


def test_ball_mode_caps_radius():
    """Local mode: min(r, R), points kept in the ball."""
    a = torch.tensor([[1.0, 0.0]], dtype=F64)
    fn = lambda x, rows: ((x * a).sum(1) + 1.0, a.expand_as(x).clone())  # noqa: E731
    x0 = torch.zeros(1, 2, dtype=F64)
    sol = duality.solve_certificate(fn, x0, 0.0, 0.0, ball=0.4)
    assert math.isclose(float(sol.radius), 0.4, rel_tol=0, abs_tol=1e-12)
    assert float((sol.x - x0).norm()) <= 0.4 + 1e-12
    assert not sol.tight.any()
    sol = duality.solve_certificate(fn, x0, 0.0, 0.0, ball=2.0)
    assert math.isclose(float(sol.radius), 1.0, abs_tol=1e-10) and sol.tight.all()


# ------------------------------------------------------------------------------------------------
# Tiny nets: brute-force boundary distance in D = 2
# ------------------------------------------------------------------------------------------------

def ray_distance(model, x0, y, t=None, directions=360, r_max=3.0, steps=150, refine=40):
    """Smallest r such that x0 + r d crosses {z_y ≤ z_t} ({argmax ≠ y} for t None), d on a
    circle of ``directions`` unit vectors: a radial grid, then bisection in the first cell."""
    theta = torch.arange(directions, dtype=F64) * (2 * math.pi / directions)
    d = torch.stack([theta.cos(), theta.sin()], 1)
    r = torch.linspace(0, r_max, steps + 1, dtype=F64)

    def bad(i, radii):                       # radii (k, n) along directions (n,)
        pts = x0[i] + radii[..., None] * d
        z = model(pts.reshape(-1, 2)).reshape(*radii.shape, -1)
        return z.argmax(-1) != y[i] if t is None else z[..., y[i]] <= z[..., t[i]]

    out = []
    with torch.no_grad():
        for i in range(x0.shape[0]):
            hit = bad(i, r[:, None].expand(-1, directions))
            found = hit.any(0)
            if not found.any():
                out.append(float("inf"))
                continue
            k = hit.to(torch.int8).argmax(0)[found]
            lo, hi = r[k - 1], r[k]
            dd = d[found]
            for _ in range(refine):
                mid = (lo + hi) / 2
                pts = x0[i] + mid[:, None] * dd
                z = model(pts)
                b = z.argmax(-1) != y[i] if t is None else z[:, y[i]] <= z[:, t[i]]
                lo, hi = torch.where(b, lo, mid), torch.where(b, mid, hi)
            out.append(float(hi.min()))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("activation", ["softplus", "tanh"])
def test_tiny_net_against_brute_force(activation):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(600, 2, generator=gen)
    Y = (X[:, 0] + 0.6 * torch.sin(5 * X[:, 1]) > 0.7).long() + (X[:, 1] > 0.75).long()
    model = MLP([2, 16, 3], activation)
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = model.double()
    x0, y = X[:40].double(), Y[:40]
    cert = duality.certify(model, x0, y)
    ok = ~cert.misclassified
    assert ok.sum() >= 20
    true = ray_distance(model, x0[ok], y[ok], cert.target[ok])
    slack = true * (math.pi / 360) ** 2       # the closest direction is at most π/360 away
    assert (cert.radius[ok] <= true + 1e-9).all()
    tight = cert.tight[ok]
    assert tight.sum() >= 5
    torch.testing.assert_close(cert.radius[ok][tight], true[tight], rtol=0, atol=float(slack.max()) + 1e-6)
    # all classes: never above the runner-up and never above the true distance to a label change
    cert_all = duality.certify(model, x0, y, targets="all")
    assert (cert_all.radius <= cert.radius + 1e-12).all()
    true_all = ray_distance(model, x0[ok], y[ok])
    assert (cert_all.radius[ok] <= true_all + 1e-9).all()


# ------------------------------------------------------------------------------------------------
# Trained nets: soundness audits
# ------------------------------------------------------------------------------------------------

def audit(model, X, Y, cert, all_classes, rho_factor=0.999, restarts=2, steps=60):
    """PGD with restarts and the CRC attack inside the certified balls find no violation: no
    label change for an all-classes certificate, z_y > z_t for a certificate against t."""
    keep = cert.radius > 1e-6
    x, y, r, t = X[keep], Y[keep], cert.radius[keep], cert.target[keep]
    rho = rho_factor * r
    x_adv, marg = attacks.pgd_l2(model, x, y, rho, steps=steps, step_size=float(rho.mean()) / 15,
                                 targets="untargeted" if all_classes else t, restarts=restarts,
                                 generator=torch.Generator().manual_seed(0), clip=None,
                                 return_margin=True)
    assert ((x_adv - x).norm(dim=1) <= rho * (1 + 1e-9)).all()
    assert (marg > 0).all(), "PGD crossed the boundary inside a certified ball"
    if all_classes:
        with torch.no_grad():
            assert (model(x_adv).argmax(1) == y).all()
    adv = duality.attack(model, x, y, rho, targets=t, steps=30)
    assert (adv.margin > 0).all(), "the CRC attack reached the boundary inside a certified ball"
    return keep.sum().item()


def test_soundness_audit(net):
    model, X, Y = net
    x, y = X[:60], Y[:60]
    cert = duality.certify(model, x, y)
    assert (cert.radius[cert.misclassified] == 0).all()
    pairs = audit(model, x, y, cert, False)
    cert_all = duality.certify(model, x, y, targets="all")
    pairs += audit(model, x, y, cert_all, True) * (model.num_classes - 1)
    assert pairs >= 150
    # tight ⇒ x_boundary is (nearly) on the boundary at the certified distance
    tight = cert.tight
    assert tight.any()
    torch.testing.assert_close((cert.x_boundary[tight] - x[tight]).norm(dim=1), cert.radius[tight],
                               rtol=0, atol=1e-5)
    assert (cert.margin[tight].abs() <= duality.TIGHT_TOL).all()
    # ... so the CRC attack just beyond the radius crosses the boundary
    adv = duality.attack(model, x[tight], y[tight], cert.radius[tight] * 1.001,
                         targets=cert.target[tight], steps=30)
    assert (adv.margin < 0).all()


def test_certificate_rests_on_the_rigorous_bounds(softplus_net):
    """cert.m, cert.M are exactly curvature.global_bounds (exact=True), never the training-time
    Lanczos estimate, which differs from them on this net (so the comparison can fail)."""
    model, X, Y = softplus_net
    x, y = X[:40], Y[:40]
    for targets in ("runner-up", "all"):
        cert = duality.certify(model, x, y, targets=targets)
        ok = ~cert.misclassified
        assert ok.sum() >= 20
        m, M = curvature.global_bounds(model, y[ok], cert.target[ok])
        m_est, M_est = curvature.global_bounds(model, y[ok], cert.target[ok], exact=False)
        differ = ((m_est - m).abs() > 1e-9 * m.abs()) | ((M_est - M).abs() > 1e-9 * M.abs())
        assert differ.any(), "the estimate equals the rigorous bounds here: the test is void"
        assert torch.equal(cert.m[ok], m) and torch.equal(cert.M[ok], M)
        assert cert.m[cert.misclassified].isnan().all()
    tables = loose_tables(model, 2.0)
    given = duality.certify(model, x, y, bounds=tables)
    ok = ~given.misclassified
    assert torch.equal(given.m[ok], tables[0][y[ok], given.target[ok]])
    assert torch.equal(given.M[ok], tables[1][y[ok], given.target[ok]])
    with pytest.raises(ValueError, match="bounds='estimate' is refused by certify.*not a bound"):
        duality.certify(model, x, y, bounds="estimate")


@pytest.mark.parametrize("max_evals", [2, 3, 4])
def test_tight_means_the_dual_optimum_even_when_stopped_early(net, max_evals):
    """``tight`` (primal = dual) needs a converged solve: |f| and the stationarity residual
    ‖x − x0 + η∇f(x)‖ both ≤ TIGHT_TOL. Stopped after a few evaluations, a tight certificate is
    the dual optimum (the radius of a 300-evaluation solve) to 1e-6, relative."""
    model, X, Y = net
    x, y = X[:200], Y[:200]
    full = duality.certify(model, x, y, max_evals=300)
    cert = duality.certify(model, x, y, max_evals=max_evals)
    t = cert.tight
    assert t.sum() >= 10
    assert not (cert.tight & ~full.tight).any()
    gap = (full.radius[t] - cert.radius[t]).abs() / full.radius[t]
    assert gap.max() <= 1e-6, f"a tight certificate {float(gap.max()):.1e} below the dual optimum"
    f, g = duality.margin_function(model, y[t], cert.target[t])(cert.x_boundary[t], torch.arange(int(t.sum())))
    residual = (cert.x_boundary[t] - x[t] + cert.eta[t, None] * g).norm(dim=1)
    assert (residual <= duality.TIGHT_TOL).all() and (f.abs() <= duality.TIGHT_TOL).all()


def test_loose_bounds_and_inexact_solves_stay_sound(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:60], Y[:60]
    exact = duality.certify(model, x, y)
    loose = duality.certify(model, x, y, bounds=loose_tables(model, 10.0))
    assert loose.bounds == "given"
    assert (loose.radius <= exact.radius + 1e-9).all()
    limited = (~loose.misclassified) & (loose.eta >= (1 - duality.MU_FLOOR) / loose.m.abs() * (1 - 1e-12))
    assert limited.any()                                     # curvature-limited certificates occur
    assert not loose.tight[limited].any()
    rough = duality.certify(model, x, y, max_evals=2)
    assert (rough.radius <= exact.radius + 1e-12).all()
    audit(model, x, y, loose, False)
    audit(model, x, y, rough, False)


def test_targets_all_is_min_over_explicit_targets(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:30], Y[:30]
    cert_all = duality.certify(model, x, y, targets="all")
    C = model.num_classes
    per = torch.full((30, C), float("inf"), dtype=F64)
    for k in range(1, C):
        t = (y + k) % C
        per[torch.arange(30), t] = duality.certify(model, x, y, targets=t).radius
    ok = ~cert_all.misclassified
    torch.testing.assert_close(cert_all.radius[ok], per[ok].min(1).values, rtol=0, atol=1e-6)
    rpt = cert_all.radius_per_target
    assert rpt.shape == (30, C)
    assert torch.isinf(rpt[torch.arange(30), y]).all()
    # every entry is a sound lower bound: never above the fully solved per-target radius
    assert (rpt[ok] <= per[ok] + 1e-6).all()
    torch.testing.assert_close(rpt[ok].min(1).values, cert_all.radius[ok], rtol=0, atol=0)
    assert (cert_all.target[ok] != y[ok]).all()
    cert_ru = duality.certify(model, x, y)
    assert (cert_all.radius <= cert_ru.radius + 1e-12).all()
    assert cert_all.grad_evals <= 3 * cert_ru.grad_evals


def test_same_call_same_answer_whatever_ran_before(softplus_net):
    """No hidden state in certify: after a call on other weights of the same module object, a
    call gives what a fresh copy gives (the Lipschitz scale of targets="all" and the curvature
    bounds are computed from the weights passed, not remembered)."""
    model, X, Y = softplus_net
    x, y = X[:20], Y[:20]
    fresh = MLP(model.widths, model.activation).double()
    fresh.load_state_dict(model.state_dict())
    first = duality.certify(fresh, x, y, targets="all")
    scaled = MLP(model.widths, model.activation).double()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.layers[0].weight.mul_(3.0)              # other weights, then back in place
        duality.certify(scaled, x, y, targets="all")
        scaled.layers[0].weight.div_(3.0)
    scaled.load_state_dict(model.state_dict())         # bit-for-bit the original weights
    again = duality.certify(scaled, x, y, targets="all")
    torch.testing.assert_close(again.radius, first.radius, rtol=0, atol=0)
    torch.testing.assert_close(again.radius_per_target, first.radius_per_target, rtol=0, atol=0)
    assert again.grad_evals == first.grad_evals


def test_misclassified_inputs_get_zero(softplus_net):
    model, X, Y = softplus_net
    x = X[:20]
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (pred + 1) % model.num_classes
    for targets in ("runner-up", "all"):
        cert = duality.certify(model, x, wrong, targets=targets)
        assert cert.misclassified.all()
        assert (cert.radius == 0).all() and not cert.tight.any()
        assert (cert.target == pred).all()


@pytest.mark.parametrize("widen", [1.0, 10.0])
def test_matches_authors_certificate_schedule(softplus_net, widen):
    """Same values as 30 bisection × 20 MM steps, interior (widen 1) or curvature-limited."""
    model, X, Y = softplus_net
    x, y = X[:40], Y[:40]
    tables = loose_tables(model, widen)
    cert = duality.certify(model, x, y, bounds=tables)
    ok = ~cert.misclassified
    x, y, t = x[ok], y[ok], cert.target[ok]
    m, M = tables[0][y, t], tables[1][y, t]
    ref = duality.certify_reference(duality.margin_function(model, y, t), x, m, M)
    assert ref.grad_evals[0] == 601
    counted = ref.paper_counted
    assert counted.sum() >= 10
    if widen > 1:
        assert (ref.eta > 0.99 / m.abs()).any()
    assert ((cert.paper_radius[ok] - ref.paper_radius)[counted].abs() <= 1e-4).all()
    assert (cert.radius[ok] <= ref.paper_radius + 1e-4).all()
    assert cert.paper_counted[ok][counted].all()
    assert cert.grad_evals / ok.sum() <= 40


def test_local_bounds_never_below_global(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:12], Y[:12]
    glob = duality.certify(model, x, y)
    loc = duality.certify(model, x, y, bounds="local", local_steps=2)
    assert loc.bounds == "local"
    assert (loc.radius >= glob.radius - 1e-12).all()
    assert (loc.m >= glob.m - 1e-9)[~loc.misclassified].all()
    audit(model, x, y, loc, False)


def test_chunks_and_dtypes_agree(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:25], Y[:25]
    ref = duality.certify(model, x, y)
    chunked = duality.certify(model, x, y, batch_size=7, progress=False)
    torch.testing.assert_close(chunked.radius, ref.radius)
    assert chunked.grad_evals == ref.grad_evals
    m32 = MLP(model.widths, model.activation).double()
    m32.load_state_dict(model.state_dict())
    m32 = m32.float()
    c32 = duality.certify(m32, x.float(), y)
    assert c32.radius.dtype == F64 and c32.x_boundary.dtype == F64
    torch.testing.assert_close(c32.radius, ref.radius, rtol=0, atol=1e-5)
    assert next(m32.parameters()).dtype == torch.float32     # the caller's model is not changed


# ------------------------------------------------------------------------------------------------
# The attack (Definition 2)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attack_stays_in_ball(softplus_net, dtype):
    model, X, Y = softplus_net
    model = MLP(model.widths, model.activation).to(dtype).requires_grad_(True)
    x, y = X[:64].to(dtype), Y[:64]
    for rho in (0.05, 0.3, 1.0, 3.0):
        adv = duality.attack(model, x, y, rho, bounds="estimate")
        assert adv.x.dtype == dtype
        dist = (adv.x - x).norm(dim=1)
        assert (dist <= rho * (1 + 1e-6)).all()
        torch.testing.assert_close(dist, adv.distance)
        assert ((adv.distance[adv.tight] - rho).abs() <= duality.ATTACK_TIGHT_RTOL * rho * 1.01).all()
        with torch.no_grad():
            z = model(adv.x)
        torch.testing.assert_close(adv.margin, z[torch.arange(64), y] - z[torch.arange(64), adv.target])
    per_row = torch.linspace(0.1, 2.0, 64, dtype=dtype)
    adv = duality.attack(model, x, y, per_row, bounds="estimate")
    assert ((adv.x - x).norm(dim=1) <= per_row * (1 + 1e-6)).all()


def test_attack_leaves_parameters_alone(softplus_net):
    model, X, Y = softplus_net
    model = MLP(model.widths, model.activation)
    for p in model.parameters():
        assert p.grad is None
    adv = duality.attack(model, X[:16].float(), Y[:16], 0.5, bounds="estimate")
    assert all(p.grad is None for p in model.parameters())
    assert not adv.x.requires_grad and adv.x.grad_fn is None
    assert adv.grad_evals == 11


def test_attack_matches_authors_schedule(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:64], Y[:64]
    with torch.no_grad():
        t = attacks.runner_up(model(x), y)
    m, M = curvature.global_bounds(model, y, t)
    fn = duality.margin_function(model, y, t)
    for rho in (0.1, 0.3):
        ours = duality.attack(model, x, y, rho, targets=t)
        ref = duality.attack_reference(fn, x, m, M, rho)
        assert ours.grad_evals <= 15 and ref.grad_evals == 301
        assert abs(ours.distance.mean() - ref.distance.mean()) <= 0.01 * ref.distance.mean()
        assert abs(ours.margin.mean() - ref.margin.mean()) <= 0.01 * ref.margin.abs().mean()
        both = ours.tight & ref.tight
        torch.testing.assert_close(ours.margin[both], ref.margin[both], rtol=0, atol=1e-3)


def test_attack_bounds_arguments(softplus_net):
    model, X, Y = softplus_net
    x, y = X[:10], Y[:10]
    with torch.no_grad():
        t = attacks.runner_up(model(x), y)
    m, M = curvature.global_bounds(model, y, t)
    a = duality.attack(model, x, y, 0.2, bounds=(m, M))
    b = duality.attack(model, x, y, 0.2)
    c = duality.attack(model, x, y, 0.2, bounds=curvature.all_pair_bounds(model))
    torch.testing.assert_close(a.x, b.x)
    torch.testing.assert_close(a.x, c.x)
    assert (a.target == t).all()


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_attack_tight_means_converged(net, steps):
    """The attack's ``tight`` (Theorem 2: the margin is the minimum over the ball) needs the
    point on the sphere, η > η_lo and the residual ‖∇f + η(x − x0)‖ ≤ 1e-2 ‖∇f‖; stopped after
    a few steps, a tight margin is the 200-step minimum to 1e-3. The authors' schedule uses the
    same rule."""
    model, X, Y = net
    x, y = X[:200], Y[:200]
    with torch.no_grad():
        t = attacks.runner_up(model(x), y)
    m, M = curvature.global_bounds(model, y, t)
    fn = duality.margin_function(model, y, t)
    eta_lo = (duality.ATTACK_MU_FLOOR - m).clamp_min(0)
    seen = 0
    for rho in (0.1, 0.5):
        full = duality.solve_attack(fn, x, m, M, rho, steps=200)
        for adv in (duality.solve_attack(fn, x, m, M, rho, steps=steps),
                    duality.attack_reference(fn, x, m, M, rho, bisection_steps=10, inner_steps=steps)):
            k = adv.tight
            seen += int(k.sum())
            assert (adv.eta[k] > eta_lo[k]).all()
            _, g = fn(adv.x[k], torch.arange(len(y))[k])
            kkt = (g + adv.eta[k, None] * (adv.x[k] - x[k])).norm(dim=1)
            assert (kkt <= duality.ATTACK_KKT_RTOL * g.norm(dim=1)).all()
            assert ((adv.distance[k] - rho).abs() <= duality.ATTACK_TIGHT_RTOL * rho).all()
            assert ((adv.margin[k] - full.margin[k]).abs() <= 1e-3 * (1 + full.margin[k].abs())).all()
    assert seen >= 50


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

def test_errors():
    relu = MLP([4, 8, 3], "relu")
    smooth = MLP([4, 8, 3], "softplus")
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    with pytest.raises(NoCurvatureError):
        duality.certify(relu, x, y)
    with pytest.raises(NoCurvatureError):
        duality.attack(relu, x, y, 0.5)
    bad = x.clone()
    bad[0, 0] = float("nan")
    for call in (lambda: duality.certify(smooth, bad, y), lambda: duality.attack(smooth, bad, y, 0.5)):
        with pytest.raises(ValueError, match="NaN"):
            call()
    with pytest.raises(ValueError, match="shape"):
        duality.certify(smooth, torch.rand(2, 5), y)
    with pytest.raises(ValueError, match="shape"):
        duality.certify(smooth, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="differ"):
        duality.certify(smooth, x, y, targets=y.clone())
    with pytest.raises(ValueError, match="targets"):
        duality.certify(smooth, x, y, targets="most-likely")
    with pytest.raises(ValueError, match="bounds"):
        duality.certify(smooth, x, y, bounds="tight")
    with pytest.raises(ValueError, match="targets"):
        duality.attack(smooth, x, y, 0.5, targets="all")
    with pytest.raises(ValueError, match="bounds"):
        duality.attack(smooth, x, y, 0.5, bounds="local")
    for rho in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            duality.attack(smooth, x, y, rho)
    with pytest.raises(ValueError, match="m <= M"):
        duality.solve_certificate(lambda x, r: (None, None), torch.zeros(1, 2), 1.0, 0.0)
    # the checks of crc_core.checks: messages name the argument, the range and the first bad index
    never = lambda x, r: (None, None)  # noqa: E731 - never called: the arguments are refused first
    x0 = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"m <= M.*at index 1"):
        duality.solve_attack(never, x0, torch.tensor([0.0, 2.0, 0.0]), 1.0, 0.5)
    with pytest.raises(ValueError, match=r"max_evals must be an integer >= 1, got 0"):
        duality.solve_certificate(never, x0, 0.0, 0.0, max_evals=0)
    with pytest.raises(ValueError, match=r"ball must be finite and > 0, got -1.0 at index 2"):
        duality.solve_certificate(never, x0, 0.0, 0.0, ball=torch.tensor([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match=r"rho must be finite and > 0, got inf"):
        duality.solve_attack(never, x0, 0.0, 0.0, float("inf"))
    with pytest.raises(ValueError, match=r"steps must be an integer >= 0"):
        duality.solve_attack(never, x0, 0.0, 0.0, 0.5, steps=-1)
    with pytest.raises(ValueError, match=r"curvature bounds must satisfy m <= M.*at index \(0, 1\)"):
        table = torch.zeros(3, 3)
        table[0, 1] = float("nan")              # off the diagonal (the diagonal may be NaN)
        duality.certify(smooth, x, y, bounds=(table, torch.ones(3, 3)))
    with pytest.raises(ValueError, match=r"bounds given as \(m, M\) must be two \(3, 3\) tables"):
        duality.certify(smooth, x, y, bounds=(torch.zeros(2), torch.ones(2)))
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1"):
        duality.certify(smooth, x, y, batch_size=0)


# ------------------------------------------------------------------------------------------------
# Heavier audits
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_soundness_audit_many_pairs(net):
    """Thousands of (input, target) pairs per net: runner-up, all classes (3 pairs per input),
    loose bounds and local bounds, against PGD (5 restarts × 200 steps) and the CRC attack."""
    model, _, _ = net
    X, Y = blobs(2000, model.widths[0], model.num_classes, 0, 2)
    X = X.double()
    pairs = 0
    for sl in (slice(i, i + 500) for i in range(0, 2000, 500)):
        x, y = X[sl], Y[sl]
        pairs += audit(model, x, y, duality.certify(model, x, y), False, restarts=5, steps=200)
        pairs += audit(model, x, y, duality.certify(model, x, y, targets="all"), True, restarts=5,
                       steps=200) * (model.num_classes - 1)
        pairs += audit(model, x, y, duality.certify(model, x, y, bounds=loose_tables(model, 3.0)), False)
    x, y = X[:200], Y[:200]
    pairs += audit(model, x, y, duality.certify(model, x, y, bounds="local"), False)
    assert pairs >= 2000
