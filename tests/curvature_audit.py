"""Helpers of the curvature tests (test_curvature, test_local_bounds, test_curvature_estimate):
small networks and an independent reference for the Hessian of f = z_y − z_t.

The reference Hessian comes from autograd (torch.func.hessian) on a forward pass written here,
independently of MLP.preactivations and of the closed form of crc_core.hessian; the points where
the bounds are checked include points found by gradient ascent on λmax / descent on λmin.
"""
import torch
from torch.func import hessian, vmap

from crc_core import MLP
from crc_core import hessian as hessian_mod

SMOOTH = ["softplus", "sigmoid", "tanh"]
WIDTHS = {2: [20, 16, 3], 3: [20, 16, 16, 3], 4: [20, 16, 12, 16, 3]}
CONFIGS = [(L, a) for L in (2, 3, 4) for a in SMOOTH]
TOL = 1e-10  # absolute slack for comparing float64 eigenvalues of O(1)–O(100) matrices


def make_net(L, act, kind="random", seed=0):
    """A float64 net of WIDTHS[L]: ``"random"`` (default init), ``"trained"`` (50 Adam steps on
    random data) or ``"scaled"`` (weights × 4)."""
    torch.manual_seed(seed)
    model = MLP(WIDTHS[L], act).double()
    if kind == "trained":
        g = torch.Generator().manual_seed(seed + 100)
        X = torch.rand(128, WIDTHS[L][0], generator=g, dtype=torch.float64)
        Y = torch.randint(0, WIDTHS[L][-1], (128,), generator=g)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), Y).backward()
            opt.step()
    elif kind == "scaled":
        with torch.no_grad():
            for w in model.weights:
                w.mul_(4.0)
    return model


def forward(model, x):
    """Logits for one unbatched x, written independently of MLP.preactivations."""
    a = x
    ws, bs = model.weights, model.biases
    for k, (w, b) in enumerate(zip(ws, bs)):
        a = w @ a + b
        if k < len(ws) - 1:
            a = model.activation.fn(a)
    return a


def coeffs(model, y, t):
    v = torch.zeros(len(y), model.num_classes, dtype=torch.float64)
    v[torch.arange(len(y)), y] += 1
    v[torch.arange(len(y)), t] -= 1
    return v


def exact_hessians(model, x, y, t):
    """(B, D, D) autograd Hessians of z_y − z_t (torch.func, per sample)."""
    with torch.no_grad():
        v = coeffs(model, y, t)
    return vmap(hessian(lambda xb, vb: forward(model, xb) @ vb))(x.detach(), v)


def exact_eigs(model, x, y, t):
    """(B, D) eigenvalues (ascending) of the autograd Hessians."""
    with torch.no_grad():
        return torch.linalg.eigvalsh(exact_hessians(model, x, y, t))


def extreme_points(model, x0, y, t, sign, steps=30, lr=0.3, ball=None):
    """Normalized gradient ascent of sign·λ_{max/min}(∇²f(x)) from x0 (autograd through eigvalsh
    of the differentiable Lemma 1 Hessian; only a search — the checks use the autograd Hessian);
    optionally projected on the l2 ball (center, radius)."""
    idx = -1 if sign > 0 else 0
    x = x0.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        H = hessian_mod.margin_hessian(model, x, y, t, differentiable=True)
        obj = sign * torch.linalg.eigvalsh(H)[:, idx]
        (gx,) = torch.autograd.grad(obj.sum(), x)
        x = x.detach() + lr * gx / gx.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if ball is not None:
            center, radius = ball
            d = x - center
            n = d.norm(dim=1, keepdim=True)
            x = center + d * torch.clamp(radius[:, None] / n.clamp_min(1e-300), max=1.0)
    return x.detach()


def random_pairs(C, n, gen):
    """n pairs (y, t) with t ≠ y."""
    y = torch.randint(0, C, (n,), generator=gen)
    t = (y + 1 + torch.randint(0, C - 1, (n,), generator=gen)) % C
    return y, t


def audit_points(model, gen):
    """45 points: 15 Gaussian (scale 3), 10 uniform [0,1]^D, 10 + 10 by eigenvalue ascent."""
    D, C = model.input_dim, model.num_classes
    y, t = random_pairs(C, 45, gen)
    x = torch.cat([3 * torch.randn(15, D, generator=gen, dtype=torch.float64),
                   torch.rand(10, D, generator=gen, dtype=torch.float64),
                   2 * torch.randn(20, D, generator=gen, dtype=torch.float64)])
    x[25:35] = extreme_points(model, x[25:35], y[25:35], t[25:35], +1)
    x[35:45] = extreme_points(model, x[35:45], y[35:45], t[35:45], -1)
    return x, y, t


def attained_net(n=64, seed=0):
    """A two-layer softplus net, D = N_1 = n, W1 orthogonal, whose Theorem 3 bounds M (pair
    (0, 1)) is attained at a known input, and whose spectrum of P is clustered (w_k ∈ [0.9, 1]),
    so that a Lanczos estimate with the default budget stays visibly below λmax.

    Returns:
        (model, x_star (1, n)): λmax(∇²f(x*)) = λmax(P) = M up to rounding.
    """
    torch.manual_seed(seed)
    model = MLP([n, n, 3], "softplus").double()
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed + 1)
    sign = torch.where(torch.rand(n, generator=g) < 0.8, 1.0, -1.0).double()
    w = torch.linspace(1.0, 0.9, n, dtype=torch.float64) * sign
    with torch.no_grad():
        model.layers[0].weight.copy_(Q)
        model.layers[0].bias.zero_()
        model.layers[1].weight.zero_()
        model.layers[1].weight[0] = w
    # σ''(z) = 1/4 (its maximum) at z = 0 where w_k > 0, σ''(40) ≈ 4e-18 where w_k < 0.
    z = torch.where(w > 0, 0.0, 40.0).double()
    return model, torch.linalg.solve(Q, z)[None]


def ball_points(center, radius, gen, n_sphere, n_inside):
    """(B, n_sphere + n_inside, D) points on the spheres and inside the balls."""
    D = center.shape[1]
    dirs = torch.randn(center.shape[0], n_sphere + n_inside, D, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=2, keepdim=True)
    scale = torch.ones(center.shape[0], n_sphere + n_inside, 1, dtype=torch.float64)
    scale[:, n_sphere:, 0] = torch.rand(center.shape[0], n_inside, generator=gen, dtype=torch.float64)
    return center[:, None, :] + radius[:, None, None] * scale * dirs
