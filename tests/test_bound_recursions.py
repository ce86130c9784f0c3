"""The layer recursions (crc_core.bound_recursions): Theorem 4's K against a hand-written
formula and gradcheck; the refined recursion's order, its sign-split diagonals, and its rigorous
form against a plain float64 evaluation of the same formula."""
import pytest
import torch

from crc_core import bound_recursions as br
from crc_core.activations import get_activation
from curvature_audit import make_net

F64 = torch.float64


def test_sigma1_global_ranges():
    assert br.sigma1_global(get_activation("softplus")) == (0.0, 1.0)
    assert br.sigma1_global(get_activation("sigmoid")) == (0.0, 0.25)
    assert br.sigma1_global(get_activation("tanh")) == (0.0, 1.0)


def test_theorem4_recursion_hand_formula_three_layers():
    gen = torch.Generator().manual_seed(0)
    W1, W2, W3 = (torch.randn(*s, generator=gen, dtype=F64) for s in ((5, 4), (6, 5), (3, 6)))
    norms = [torch.linalg.matrix_norm(W, ord=2) for W in (W1, W2)]
    w = (W3[0] - W3[2])[None]
    g, h = 0.25, 0.1
    r1, r2 = norms[0], g * norms[1] * norms[0]
    S2 = w.abs()
    S1 = g * S2 @ W2.abs()
    expected = h * (r1 ** 2 * S1.max() + r2 ** 2 * S2.max())
    K = br.theorem4_recursion([W1, W2, W3], norms, w, g, h)
    torch.testing.assert_close(K, expected.reshape(1), rtol=1e-14, atol=0)


def test_theorem4_recursion_gradcheck():
    gen = torch.Generator().manual_seed(1)
    Ws = [torch.randn(*s, generator=gen, dtype=F64, requires_grad=True) for s in ((4, 3), (5, 4), (3, 5))]

    def fn(W1, W2, W3):
        norms = [torch.linalg.matrix_norm(W, ord=2) for W in (W1, W2)]
        return br.theorem4_recursion([W1, W2, W3], norms, W3[:2] - W3[1:], 1.0, 0.25)

    assert torch.autograd.gradcheck(fn, tuple(Ws), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("L", [2, 3, 4])
def test_refined_recursion_order_diagonals_and_rigorous_form(L):
    """``extremes`` is called for I = L−1 … 1 with n ≤ p; with exact dense eigenvalues and plain
    arithmetic the recursion gives the same value as the rigorous one up to its margins, and the
    rigorous one is outside it."""
    model = make_net(L, "tanh", "trained")
    act = model.activation
    Ws = br.weights64(model)
    y, t = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    w = Ws[-1][y] - Ws[-1][t]
    norms = [torch.linalg.matrix_norm(W, ord=2) for W in Ws[:-2]]
    lo1, hi1 = br.sigma1_global(act)
    d1 = [(lo1, hi1)] * (L - 1)
    d2 = [(act.h_L, act.h_U)] * (L - 1)
    gbar = [act.g] * (L - 1)
    calls = []

    def dense(I, p, n):
        calls.append(I)
        assert (n <= p).all()
        if I > 1:
            p, n = p.clamp(min=0), n.clamp(max=0)
        W = Ws[I - 1]
        hi = torch.linalg.eigvalsh(W.T @ (p[:, :, None] * W))[:, -1]
        lo = torch.linalg.eigvalsh(W.T @ (n[:, :, None] * W))[:, 0]
        return lo, hi

    m, M = br.refined_recursion(Ws, norms, w, d1, d2, gbar, dense, rigorous=False)
    assert calls == list(range(L - 1, 0, -1))
    mr, Mr = br.refined_recursion(Ws, norms, w, d1, d2, gbar, br.rigorous_extremes(Ws))
    assert (Mr >= M).all() and (mr <= m).all()
    torch.testing.assert_close(Mr, M, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(mr, m, rtol=1e-6, atol=1e-9)
