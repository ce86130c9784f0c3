"""Interval bound propagation (IBP) over the l2 ball (Gowal et al. 2018), exact first layer.

For the ball :math:`\\mathcal{B} = \\{x' : \\|x' - x\\|_2 \\le ε\\}` (no pixel box) the first
layer's intervals are exact,

.. math::
    z^{(1)}_k \\in W^{(1)}_k x + b^{(1)}_k \\pm ε \\|W^{(1)}_k\\|_2,

and every later layer takes the interval image of the previous one through the monotone σ and
the affine map, in centre-radius form,

.. math::
    c, r = \\tfrac{σ(u) + σ(l)}{2}, \\tfrac{σ(u) - σ(l)}{2}, \\qquad
    z^{(I+1)} \\in W c + b \\pm |W| r.

A linear specification S of the logits is bounded with the last layer merged into it
(:math:`S W^{(L)}`), which is tighter than bounding the logits first. IBP is CROWN-IBP's
cheap part and a floor under CROWN's intervals (:mod:`crc_core.baselines.crown`).

Example:
    >>> bounds = ibp_bounds(model, x, eps=0.3)       # [(l1, u1), …, (lL, uL)]
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import checks
from ..activations import Activation
from .network import affine_layers, computation_inputs

Tensor = torch.Tensor

__all__ = ["hidden_intervals", "spec_interval_lower_bound", "ibp_bounds"]


def _image(act: Activation, lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
    """Centre and radius of σ([l, u]) (σ monotone increasing)."""
    a_lo, a_hi = act.fn(lo), act.fn(hi)
    return (a_hi + a_lo) / 2, (a_hi - a_lo) / 2


def hidden_intervals(act: Activation, Ws: Sequence[Tensor], bs: Sequence[Tensor], x: Tensor,
                     eps: Tensor) -> List[Tuple[Tensor, Tensor]]:
    """IBP intervals of the hidden pre-activations z^(1), …, z^(L−1).

    Args:
        act: σ (monotone increasing).
        Ws, bs: the affine layers (:func:`~crc_core.baselines.network.affine_layers`).
        x: (B, D) centres; eps: (B,) radii, ≥ 0.

    Returns:
        ``[(l1, u1), …, (l_{L−1}, u_{L−1})]``, each (B, N_I); differentiable in Ws, bs.
    """
    centre = x @ Ws[0].t() + bs[0]
    radius = eps[:, None] * Ws[0].norm(dim=1)[None, :]
    out = [(centre - radius, centre + radius)]
    for W, b in zip(Ws[1:-1], bs[1:-1]):
        c, r = _image(act, *out[-1])
        centre = c @ W.t() + b
        radius = r @ W.abs().t()
        out.append((centre - radius, centre + radius))
    return out


def spec_interval_lower_bound(act: Activation, W: Tensor, b: Tensor, last: Tuple[Tensor, Tensor],
                              spec: Tensor) -> Tensor:
    """IBP lower bound of S z^(L), the last layer merged into S.

    .. math::
        \\underline{s} = (S W) c - |S W| r + S b

    Args:
        act: σ; W, b: the last layer W^(L), b^(L).
        last: the interval (l, u) of z^(L−1), each (B, N_{L−1}).
        spec: S, (B, R, C).

    Returns:
        (B, R).
    """
    c, r = _image(act, *last)
    SW = spec @ W                                     # (B, R, N)
    return (SW @ c[:, :, None]).squeeze(-1) - (SW.abs() @ r[:, :, None]).squeeze(-1) + spec @ b


def ibp_bounds(model, x: Tensor, eps, *, dtype: Optional[torch.dtype] = None) -> List[Tuple[Tensor, Tensor]]:
    """Interval bounds of every pre-activation over the l2 ball (l2 first layer, then IBP).

    .. math::
        z^{(1)}_k \\in W^{(1)}_k x + b^{(1)}_k \\pm ε \\|W^{(1)}_k\\|_2, \\qquad
        z^{(I+1)} \\in W c + b \\pm |W| r, \\quad c, r = \\tfrac{σ(u) \\pm σ(l)}{2}

    Args:
        model: an MLP (relu, softplus, sigmoid or tanh: σ monotone).
        x: (B, D) centres; eps: radius, a float or (B,), ≥ 0.
        dtype: computation dtype (default: the model's).

    Returns:
        ``[(l1, u1), …, (lL, uL)]``, each (B, N_I), including the logits z^(L).

    Raises:
        ValueError: bad inputs, eps < 0 or not finite or of the wrong shape.

    Example:
        >>> lo, hi = ibp_bounds(model, x, 0.3)[-1]      # bounds of the logits, (B, C) each
    """
    x, dtype = computation_inputs(model, x, dtype)
    e = checks.radius(eps, x.shape[0], dtype, x.device, name="eps", allow_zero=True)
    Ws, bs = affine_layers(model, dtype, x.device)
    act = model.activation
    hidden = hidden_intervals(act, Ws, bs, x, e)
    c, r = _image(act, *hidden[-1])
    centre = c @ Ws[-1].t() + bs[-1]
    radius = r @ Ws[-1].abs().t()
    return hidden + [(centre - radius, centre + radius)]
