"""The network as bound propagation sees it: affine layers in a computation dtype, and the
margin specification.

The baselines bound an :class:`~crc_core.models.MLP`
:math:`z^{(I)} = W^{(I)} σ(z^{(I-1)}) + b^{(I)}` (with :math:`σ(z^{(0)}) = x`) layer by layer;
they read its weights once, in the dtype the bound is computed in (float64 for a rigorous
certificate of a float32 model), and the inputs in the same dtype. What they bound is a linear
specification :math:`S z^{(L)}` of the logits, for the margins :math:`f_t = z_y - z_t` the
rows :math:`e_y - e_t` (:func:`margin_matrix`).

Example:
    >>> x, dtype = computation_inputs(model, torch.rand(4, 784), torch.float64)
    >>> Ws, bs = affine_layers(model, dtype, x.device)
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .. import checks

Tensor = torch.Tensor

__all__ = ["affine_layers", "computation_inputs", "margin_matrix"]


def affine_layers(model, dtype: torch.dtype, device) -> Tuple[List[Tensor], List[Tensor]]:
    """The weights W^(1), …, W^(L) and biases b^(1), …, b^(L), as ``dtype`` on ``device``.

    Returns:
        (Ws, bs): W^(I) of shape (N_I, N_{I−1}), b^(I) of shape (N_I,); differentiable in the
        model's parameters (a cast, not a copy that detaches them).
    """
    Ws = [w.to(device=device, dtype=dtype) for w in model.weights]
    bs = [b.to(device=device, dtype=dtype) for b in model.biases]
    return Ws, bs


def computation_inputs(model, x: Tensor, dtype: Optional[torch.dtype]) -> Tuple[Tensor, torch.dtype]:
    """Validate a batch of centres and cast it to the computation dtype.

    Args:
        model: the MLP.
        x: (B, D) inputs (or (B, ...) with D entries each), finite
            (:func:`crc_core.checks.check_inputs`).
        dtype: the computation dtype; None: the model's parameters'.

    Returns:
        (x as (B, D) in ``dtype``, ``dtype``).

    Raises:
        ValueError: bad inputs (as :func:`~crc_core.checks.check_inputs`), a non-floating dtype.
    """
    x = checks.check_inputs(model, x)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    return x.to(dtype), dtype


def margin_matrix(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S with rows e_y − e_t for every t: (B, C, C); row y is zero.

    .. math::
        (S_b z)_t = z_{y_b} - z_t = f_t

    Args:
        y: (B,) int64 labels; num_classes: C; dtype: of the result.

    Example:
        >>> margin_matrix(torch.tensor([1]), 3)[0]
        tensor([[-1.,  1.,  0.],
                [ 0.,  0.,  0.],
                [ 0.,  1., -1.]])
    """
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[None, :, :]
