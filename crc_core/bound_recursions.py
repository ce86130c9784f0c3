"""The layer recursions behind every curvature bound: Theorem 4's K and the refined bound.

Lemma 1 (:mod:`crc_core.hessian`) writes the Hessian of the margin f = z_y − z_t as a sum over
hidden layers,

.. math::
    \\nabla^2_x f = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}(c^{(I)}) B^{(I)}, \\quad
    c^{(I)} = (F^{(L,I)}_y - F^{(L,I)}_t) \\odot σ''(z^{(I)}),

with :math:`B^{(I)} = \\partial z^{(I)}/\\partial x` and :math:`F^{(L,I)} = \\partial z^{(L)}/
\\partial a^{(I)}`. Both recursions here work on *margin rows* w = W^(L)_y − W^(L)_t, (K, N_{L−1}),
one row per (y, t) pair or per image, and are shared by the rigorous global bounds
(:mod:`crc_core.curvature`), the local bounds (:mod:`crc_core.local_bounds`) and the
training-time estimates (:mod:`crc_core.curvature_estimate`). What differs between those callers
is passed in: the spectral norms (rigorous upper bounds or power-iteration estimates), the
ranges of σ' and σ'' (global constants or per-neuron ranges over a ball), and how the extreme
eigenvalues of each term are obtained (verified float64 eigenvalues or warm-started Lanczos).

**Theorem 4** (:func:`theorem4_recursion`):
:math:`K = h \\sum_I (r^{(I)})^2 \\max_j S^{(L,I)}_j` with :math:`r^{(1)} = \\|W^{(1)}\\|`,
:math:`r^{(I)} = g \\|W^{(I)}\\| r^{(I-1)}`, :math:`S^{(L,L-1)} = |w|`,
:math:`S^{(L,I)} = g\\, S^{(L,I+1)} |W^{(I+1)}|`.

**The refined bound** (:func:`refined_recursion`). Write :math:`c^{(I)} \\in [n^{(I)}, p^{(I)}]`
elementwise. For I = L−1 the row :math:`F^{(L,L-1)}_y - F^{(L,L-1)}_t = w` does not depend on x,
so :math:`c_k = w_k σ''(z_k) \\in [\\min(w_k h_L, w_k h_U), \\max(w_k h_L, w_k h_U)]` (Theorem 3's
diagonals). For I < L−1 the row is :math:`φ^{(I)} = w \\operatorname{diag}(σ'(z^{(L-1)}))
W^{(L-1)} \\cdots \\operatorname{diag}(σ'(z^{(I+1)})) W^{(I+1)}`; with σ' ∈ [0, g] (σ increasing)
interval arithmetic through this product gives :math:`φ^{(I)} \\in [φ^{lo}, φ^{hi}]`, a subset of
Theorem 4's :math:`[-S^{(L,I)}, S^{(L,I)}]`, and :math:`c = φ \\odot σ''` lies in the interval
product of :math:`[φ^{lo}, φ^{hi}]` and :math:`[h_L, h_U]`. Then, with
:math:`P_I = W^{(I)T} \\operatorname{diag}(p^{(I)}) W^{(I)}` and
:math:`N_I = W^{(I)T} \\operatorname{diag}(n^{(I)}) W^{(I)}`,
:math:`N_I \\preceq W^{(I)T}\\operatorname{diag}(c^{(I)})W^{(I)} \\preceq P_I`. For I = 1,
B^(1) = W^(1), so the term lies in [λmin(N_1), λmax(P_1)]. For I ≥ 2,
:math:`B^{(I)} = W^{(I)} A` with :math:`A = \\operatorname{diag}(σ'(z^{(I-1)})) B^{(I-1)}`,
:math:`\\|A\\| \\le g\\, r^{(I-1)}`, and for any symmetric Q,
:math:`v^T A^T Q A v \\le λ_{\\max}(Q)^+ \\|Av\\|^2 \\le λ_{\\max}(Q)^+ (g r^{(I-1)})^2 \\|v\\|^2`
(symmetrically for λmin): the positive part makes the scaling valid, so for I ≥ 2 the extremes
are those of :math:`p^+` and :math:`n^-` (PSD / NSD anyway for the global bound). Weyl's
inequality sums the terms:

.. math::
    M = \\lambda_{\\max}(P_1) + \\sum_{I \\ge 2} (g\\, r^{(I-1)})^2 \\lambda_{\\max}(P_I), \\quad
    m = \\lambda_{\\min}(N_1) + \\sum_{I \\ge 2} (g\\, r^{(I-1)})^2 \\lambda_{\\min}(N_I).

For L = 2 this is Theorem 3 exactly. Since :math:`\\max(p_k, -n_k) \\le h S^{(L,I)}_k`,
:math:`\\lambda_{\\max}(P_I) \\le h \\|W^{(I)}\\|^2 \\max_k S^{(L,I)}_k`, so every term is at most
Theorem 4's :math:`h (r^{(I)})^2 \\max_j S^{(L,I)}_j`: refined ≤ K. With per-neuron ranges of σ'
and σ'' over a ball and per-layer bounds ḡ of |σ'| in place of g, the same argument gives the
local bounds (Table 6).
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch

from .activations import Activation
from .verified_linalg import interval_matvec, interval_product, quad_form_extremes

Tensor = torch.Tensor

__all__ = [
    "METHODS",
    "Extremes",
    "weights64",
    "sigma1_global",
    "theorem4_recursion",
    "refined_recursion",
    "rigorous_extremes",
]

#: The global bounds' methods: ``"tightest"`` (Theorem 3 for L = 2, else the tighter of the refined
#: bound and Theorem 4), ``"theorem3"`` (L = 2 only), ``"theorem4"``, ``"refined"``.
METHODS: Tuple[str, ...] = ("tightest", "theorem3", "theorem4", "refined")

#: ``extremes(I, p, n) -> (lo, hi)``: for hidden layer I and diagonals p, n (K, N_I), a lower
#: value of λmin(W^(I)ᵀ diag(n) W^(I)) and an upper value of λmax(W^(I)ᵀ diag(p) W^(I)) per row —
#: bounds (clamped to lo ≤ 0 ≤ hi for I ≥ 2) for the rigorous bounds, estimates in training.
Extremes = Callable[[int, Tensor, Tensor], Tuple[Tensor, Tensor]]


def weights64(model) -> List[Tensor]:
    """[W^(1), …, W^(L)] detached, in float64."""
    return [w.detach().to(torch.float64) for w in model.weights]


def sigma1_global(act: Activation) -> Tuple[float, float]:
    """Global range of σ': [0, g] for an increasing σ (softplus, sigmoid, tanh), else [−g, g]."""
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    lo, _ = act.d1_range(-inf, inf)
    return (0.0 if float(lo) >= -1e-9 else -act.g), act.g


def theorem4_recursion(Ws: Sequence[Tensor], norms: Sequence[Tensor], w: Tensor, g: float,
                       h: float) -> Tensor:
    """Theorem 4's K for K margin rows (module docstring), in w's dtype, differentiable.

    .. math::
        K = h \\sum_{I=1}^{L-1} (r^{(I)})^2 \\max_j S^{(L,I)}_j

    Args:
        Ws: [W^(1) … W^(L)].
        norms: the spectral norms (or their estimates) of W^(1) … W^(L−1), 0-d tensors.
        w: (K, N_{L−1}) margin rows.
        g, h: the activation's constants sup|σ'|, sup|σ''|.

    Returns:
        (K,), no safety margin (the caller adds it when K must be rigorous).
    """
    L = len(Ws)
    r = [None, norms[0]]
    for I in range(2, L):
        r.append(g * norms[I - 1] * r[I - 1])
    S = w.abs()
    Kb = h * r[L - 1] ** 2 * S.amax(1)
    for I in range(L - 2, 0, -1):
        S = g * (S @ Ws[I].abs())          # S^(L,I) = S^(L,I+1) · g|W^(I+1)|
        Kb = Kb + h * r[I] ** 2 * S.amax(1)
    return Kb


def rigorous_extremes(Ws: Sequence[Tensor]) -> Extremes:
    """The rigorous ``extremes`` for float64 weights: verified eigenvalues
    (:func:`crc_core.verified_linalg.quad_form_extremes`), PSD / NSD parts for I ≥ 2."""
    def extremes(I: int, p: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
        return quad_form_extremes(Ws[I - 1], p, n, clamp=I > 1)

    return extremes


def refined_recursion(Ws: Sequence[Tensor], norms: Sequence[Tensor], w: Tensor, d1, d2, gbar,
                      extremes: Extremes, *, rigorous: bool = True) -> Tuple[Tensor, Tensor]:
    """The refined bound (module docstring) for K margin rows: the one recursion over the layers.

    .. math::
        M = \\lambda_{\\max}(P_1) + \\sum_{I=2}^{L-1} (\\bar g_{I-1} r^{(I-1)})^2
        \\lambda_{\\max}(P_I), \\quad
        m = \\lambda_{\\min}(N_1) + \\sum_{I=2}^{L-1} (\\bar g_{I-1} r^{(I-1)})^2 \\lambda_{\\min}(N_I)

    Args:
        Ws: [W^(1) … W^(L)] in the working dtype (float64 for bounds).
        norms: ‖W^(I)‖ for I = 1 … L−2 (0-d tensors): upper bounds, or estimates in training.
        w: (K, N_{L−1}) margin rows W^(L)_y − W^(L)_t.
        d1, d2: per hidden layer J = 1 … L−1, (lo, hi) ranges of σ' and σ'' (floats or tensors
            broadcastable to (K, N_J)).
        gbar: per hidden layer, a bound of |σ'| (a float, a 0-d or a (K,) tensor).
        extremes: how the extremes of each term are obtained (:data:`Extremes`), e.g.
            :func:`rigorous_extremes`.
        rigorous: interval arithmetic widened for float64 rounding and the coefficients padded
            by 1e-12 (default True); False for the training-time estimate.

    Returns:
        (m, M), each (K,) in w's dtype.
    """
    L = len(Ws)
    K = w.shape[0]
    m = torch.zeros(K, dtype=w.dtype, device=w.device)
    M = torch.zeros(K, dtype=w.dtype, device=w.device)
    # r^(1) = ‖W^(1)‖, r^(I) = gbar_{I-1} ‖W^(I)‖ r^(I-1)  (bounds of ‖B^(I)‖).
    r = [None, norms[0] if L > 2 else None]
    for I in range(2, L - 1):
        r.append(gbar[I - 2] * norms[I - 1] * r[I - 1])
    plo = phi = w
    for I in range(L - 1, 0, -1):
        if I < L - 1:
            # φ^(I) = (φ^(I+1) ⊙ σ'(z^(I+1))) W^(I+1); d1[I] is layer I+1's σ' range.
            ulo, uhi = interval_product(plo, phi, d1[I][0], d1[I][1], rigorous)
            plo, phi = interval_matvec(ulo, uhi, Ws[I], rigorous)
        n, p = interval_product(plo, phi, d2[I - 1][0], d2[I - 1][1], rigorous)
        n, p = n.expand(K, -1), p.expand(K, -1)
        lmin, lmax = extremes(I, p, n)
        if I == 1:
            m, M = m + lmin, M + lmax
        else:
            coeff = (gbar[I - 2] * r[I - 1]) ** 2
            if rigorous:
                coeff = coeff * (1 + 1e-12)  # covers the rounding of the products
            m, M = m + coeff * lmin, M + coeff * lmax
    return m, M
