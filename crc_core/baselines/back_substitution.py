"""CROWN's back-substitution: linear bounds of a specification of one layer, pushed to the input.

To bound :math:`Λ z^{(m)}` from below over the ball
:math:`\\mathcal{B} = \\{x' : \\|x' - x\\|_2 \\le ε\\}`, write :math:`z^{(m)} = W^{(m)} σ(z^{(m-1)})
+ b^{(m)}` and replace each σ by the line of its relaxation that bounds the product from below —
the lower line where the coefficient is ≥ 0, the upper line where it is < 0
(:func:`~crc_core.baselines.relaxations.linear_relaxation`) — down to the input:

.. math::
    Λ z^{(m)}(x') \\ge A x' + c \\quad \\forall x' \\in \\mathcal{B}, \\qquad
    \\min_{x' \\in \\mathcal{B}} A x' + c = A x + c - ε \\|A_r\\|_2 \\ \\text{row by row}.

The relaxations need intervals of every hidden layer; ``"crown"`` computes them with CROWN
itself, layer by layer (Λ = ±I), ``"crown-ibp"`` takes IBP's (:mod:`crc_core.baselines.ibp`),
``"ibp"`` skips back-substitution. This module holds the engine; :mod:`crc_core.baselines.crown`
checks arguments and builds the certificate on it.

Example:
    >>> lb = spec_bound(model, x, eps, spec, "crown", intersect_ibp=True)    # (B, R)
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from ..activations import Activation
from .ibp import hidden_intervals, spec_interval_lower_bound
from .network import affine_layers
from .relaxations import Relaxation, linear_relaxation

Tensor = torch.Tensor

__all__ = ["METHODS", "back_substitute", "crown_hidden_bounds", "spec_bound"]

#: Bounding methods: ``"crown"`` (CROWN-general, CROWN intervals for every layer),
#: ``"crown-ibp"`` (IBP intervals, CROWN for the specification), ``"ibp"``.
METHODS = ("crown", "crown-ibp", "ibp")

#: Elements per back-substitution block (rows of Λ are processed in chunks of this many
#: batch × rows × width entries, bounding memory).
_CHUNK_ELEMENTS = 1 << 24


def back_substitute(Ws: Sequence[Tensor], bs: Sequence[Tensor], relax: Sequence[Relaxation],
                    x: Tensor, eps: Tensor, Lam: Tensor, layer: int) -> Tensor:
    """Lower bound of Λ z^(layer) over the ball, by back-substitution.

    Args:
        Ws, bs: the weights and biases (0-based lists).
        relax: relaxations of the hidden layers 1 … layer − 1 (``relax[k-1]`` for layer k).
        x: (B, D); eps: (B,).
        Lam: (R, N_layer) shared or (B, R, N_layer) per-sample specification.
        layer: 1-based index m of the pre-activation z^(m) that Λ acts on.

    Returns:
        (B, R).
    """
    A = Lam @ Ws[layer - 1]                               # (…, R, N_{m-1})
    c = Lam @ bs[layer - 1]                               # (…, R)
    for k in range(layer - 1, 0, -1):                     # through σ(z^(k)) then z^(k)
        r = relax[k - 1]
        pos = A >= 0
        slope = torch.where(pos, r.lower_slope[:, None, :], r.upper_slope[:, None, :])
        icpt = torch.where(pos, r.lower_intercept[:, None, :], r.upper_intercept[:, None, :])
        c = c + (A * icpt).sum(-1)
        Lam_k = A * slope                                  # (B, R, N_k)
        A = Lam_k @ Ws[k - 1]
        c = c + Lam_k @ bs[k - 1]
    if A.dim() == 2:
        A = A.unsqueeze(0).expand(x.shape[0], -1, -1)
    return (A @ x[:, :, None]).squeeze(-1) + c - eps[:, None] * A.norm(dim=-1)


def _rows_per_chunk(B: int, width: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, B * width))


def _crown_rows(Ws, bs, relax: Sequence[Relaxation], x: Tensor, eps: Tensor, m: int,
                rows: Tensor, lo: Tensor, hi: Tensor) -> None:
    """Tighten ``lo``, ``hi`` (B, N_m) in place by CROWN bounds of the rows ``rows`` of z^(m)."""
    N = Ws[m - 1].shape[0]
    widest = max(W.shape[0] for W in Ws[:m])
    eye = torch.eye(N, dtype=x.dtype, device=x.device)
    step = max(1, _rows_per_chunk(x.shape[0], widest) // 2)
    for start in range(0, rows.numel(), step):
        idx = rows[start:start + step]
        Lam = torch.cat([eye[idx], -eye[idx]], dim=0)      # lower bounds of z and of −z
        out = back_substitute(Ws, bs, relax, x, eps, Lam, m)
        n = idx.numel()
        lo[:, idx] = torch.maximum(lo[:, idx], out[:, :n])
        hi[:, idx] = torch.minimum(hi[:, idx], -out[:, n:])


def crown_hidden_bounds(act: Activation, Ws, bs, x: Tensor, eps: Tensor,
                        ibp: Optional[List[Tuple[Tensor, Tensor]]],
                        relu_lower: str = "adaptive", *,
                        second: Optional[Tuple[Tensor, Tensor]] = None,
                        ) -> Tuple[List[Tuple[Tensor, Tensor]], List[Relaxation]]:
    """CROWN intervals of every hidden layer, layer by layer (intersected with ``ibp`` when given).

    Args:
        act: σ; Ws, bs: the affine layers; x: (B, D); eps: (B,).
        ibp: IBP intervals of the hidden layers to intersect with, or None (pure CROWN).
        relu_lower: the lower line of unstable ReLUs.
        second: CROWN's own (not intersected) interval of z^(2), if already computed: the
            relaxation of the exact first layer is the same with or without ``ibp``, so the
            CROWN interval of z^(2) is too, and only its intersection with IBP's is taken.

    Returns:
        (intervals ``[(l1, u1), …]`` of z^(1), …, z^(L−1), their relaxations).
    """
    B = x.shape[0]
    centre = x @ Ws[0].t() + bs[0]
    radius = eps[:, None] * Ws[0].norm(dim=1)[None, :]
    bounds = [(centre - radius, centre + radius)]          # exact for the first layer
    relax = [linear_relaxation(act, *bounds[0], relu_lower=relu_lower)]
    for m in range(2, len(Ws)):                            # hidden layers 2 … L−1
        N = Ws[m - 1].shape[0]
        if ibp is not None:
            lo, hi = ibp[m - 1][0].clone(), ibp[m - 1][1].clone()
        else:
            lo = torch.full((B, N), -math.inf, dtype=x.dtype, device=x.device)
            hi = torch.full((B, N), math.inf, dtype=x.dtype, device=x.device)
        if m == 2 and second is not None:
            lo, hi = torch.maximum(lo, second[0]), torch.minimum(hi, second[1])
        else:
            if ibp is not None and act.name == "relu":
                # Only neurons unstable under IBP need CROWN: a stable ReLU's relaxation is exact.
                rows = torch.nonzero(((lo < 0) & (hi > 0)).any(dim=0)).flatten()
            else:
                rows = torch.arange(N, device=x.device)
            _crown_rows(Ws, bs, relax, x, eps, m, rows, lo, hi)
        hi = torch.maximum(hi, lo)   # guard: rounding can cross them on zero-width intervals
        bounds.append((lo, hi))
        relax.append(linear_relaxation(act, lo, hi, relu_lower=relu_lower))
    return bounds, relax


def spec_bound(model, x: Tensor, e: Tensor, spec: Tensor, method: str, intersect_ibp: bool,
               relu_lower: str = "adaptive") -> Tensor:
    """Lower bounds of S z^(L) over the ball, arguments already checked.

    ``"crown"`` with ``intersect_ibp`` returns the largest of three sound bounds: CROWN's own
    (pure CROWN, the authors' method), CROWN on intervals intersected with IBP's, and IBP's.
    Intersecting is not monotone — a narrower interval moves the midpoint tangents and the
    tangent points, and can make the back-substituted bound looser — so the pure bound is kept
    beside it. For L = 2 the three chains share the (exact) first-layer intervals and the two
    CROWN bounds coincide.

    Args:
        model: the MLP; x: (B, D) in the computation dtype; e: (B,) radii.
        spec: S, (B, R, C) in x's dtype.
        method: one of :data:`METHODS`.
        intersect_ibp: ``"crown"`` only: also bound with IBP-intersected intervals and with IBP,
            and return the largest bound.
        relu_lower: the lower line of unstable ReLUs.

    Returns:
        (B, R) lower bounds.
    """
    Ws, bs = affine_layers(model, x.dtype, x.device)
    act = model.activation
    L = len(Ws)
    need_ibp = method in ("ibp", "crown-ibp") or intersect_ibp
    ibp = hidden_intervals(act, Ws, bs, x, e) if need_ibp else None
    if method == "ibp":
        return spec_interval_lower_bound(act, Ws[-1], bs[-1], ibp[-1], spec)
    if method == "crown-ibp":
        chains = [[linear_relaxation(act, lo, hi, relu_lower=relu_lower) for lo, hi in ibp]]
    else:
        own, relax = crown_hidden_bounds(act, Ws, bs, x, e, None, relu_lower)
        chains = [relax]
        if intersect_ibp and L >= 3:
            chains.append(crown_hidden_bounds(act, Ws, bs, x, e, ibp, relu_lower,
                                              second=own[1])[1])
    B, R = spec.shape[0], spec.shape[1]
    widest = max(W.shape[0] for W in Ws[:-1])
    step = _rows_per_chunk(B, widest)
    out = None
    for relax in chains:
        lb = torch.cat([back_substitute(Ws, bs, relax, x, e, spec[:, s:s + step], L)
                        for s in range(0, R, step)], dim=1)
        out = lb if out is None else torch.maximum(out, lb)
    if method == "crown" and intersect_ibp:
        out = torch.maximum(out, spec_interval_lower_bound(act, Ws[-1], bs[-1], ibp[-1], spec))
    return out
