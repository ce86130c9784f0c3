"""Lemma 1: the closed-form Hessian of a fully connected network with respect to its input.

For an L-layer network (:class:`crc_core.models.MLP`) with pre-activations z^(I) and a smooth
activation σ, the Hessian of the i-th logit is

.. math::
    \\nabla^2_x z^{(L)}_i = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}\\big(F^{(L,I)}_i
    \\odot σ''(z^{(I)})\\big) B^{(I)},

with the input Jacobians :math:`B^{(I)} = \\partial z^{(I)} / \\partial x` (N_I × D),

.. math::
    B^{(1)} = W^{(1)}, \\quad B^{(I)} = W^{(I)} \\operatorname{diag}(σ'(z^{(I-1)})) B^{(I-1)},

and the output Jacobians :math:`F^{(L,I)} = \\partial z^{(L)} / \\partial a^{(I)}` (N_L × N_I),

.. math::
    F^{(L,L-1)} = W^{(L)}, \\quad F^{(L,I)} = F^{(L,I+1)} \\operatorname{diag}(σ'(z^{(I+1)}))
    W^{(I+1)}.

For the margin f = z_y − z_t the row F_i is replaced by F_y − F_t (Lemma 1 is linear in that row).

Everything is batched over B inputs and runs on the input's device. Only the rows
F_y − F_t (B, N_I) are formed, never the full F^(L,I), and the Hessian is accumulated layer by
layer so that a single B^(I) (B, N_I, D) is alive at a time. For I = 1, B^(1) = W^(1) is shared
by every sample: W1ᵀ diag(c_b) W1 for all b is one GEMM of W1ᵀ with the scaled copies
c_b ⊙ W1, never a per-sample copy of W1 as a left factor. Each term is symmetric, so only its
lower block-triangle is computed (4 column blocks for D ≥ 512: 5/8 of the multiply-adds) and
the result is mirrored, which makes it exactly symmetric.

By default the computations run under :func:`torch.no_grad` (the results are constants for the
certificate); pass ``differentiable=True`` to keep the autograd graph (to the weights and x).
"""
from __future__ import annotations

from typing import List

import torch

from . import checks

Tensor = torch.Tensor

__all__ = [
    "input_jacobians",
    "margin_output_jacobians",
    "margin_hessian",
    "margin_hessian_terms",
    "logit_hessian",
]


# ------------------------------------------------------------------------------------------------
# Argument checks (crc_core.checks) and the margin's coefficient vector
def _check_x(model, x: Tensor) -> Tensor:
    """x as (B, D) in the model's dtype: finite, floating point, on the model's device."""
    x = checks.check_inputs(model, x, same_device=True)
    return x.to(model.weights[0].dtype)


def _margin_coefficients(model, x: Tensor, y, t) -> Tensor:
    """v (B, C) with v·z^(L) = z_y − z_t (y ≠ t; ints broadcast)."""
    y, t = checks.margin_labels(model, y, t, batch=x.shape[0], device=x.device)
    v = torch.zeros(x.shape[0], model.num_classes, dtype=x.dtype, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    v[rows, y] = 1
    v[rows, t] = -1
    return v


def _logit_coefficients(model, x: Tensor, i) -> Tensor:
    """v (B, C) with v·z^(L) = z_i (an int i is broadcast)."""
    i = checks.labels(model, i, x.shape[0], x.device, "i")
    v = torch.zeros(x.shape[0], model.num_classes, dtype=x.dtype, device=x.device)
    v[torch.arange(x.shape[0], device=x.device), i] = 1
    return v


# ------------------------------------------------------------------------------------------------
# The recursions
def _rows(model, zs: List[Tensor], v: Tensor) -> List[Tensor]:
    """[v F^(L,1), …, v F^(L,L-1)]: each (B, N_I), by the backward recursion of Lemma 1."""
    weights = model.weights
    L = model.num_layers
    d1 = model.activation.d1
    row = v @ weights[L - 1]                              # v F^(L,L-1) = v W^(L)
    rows = [row]
    for I in range(L - 2, 0, -1):                         # I = L-2 … 1 (1-based)
        # v F^(L,I) = (v F^(L,I+1) ⊙ σ'(z^(I+1))) W^(I+1); zs[I] is z^(I+1), weights[I] is W^(I+1)
        row = (row * d1(zs[I])) @ weights[I]
        rows.append(row)
    rows.reverse()
    return rows


def _next_jacobian(model, zs: List[Tensor], previous: Tensor, I: int) -> Tensor:
    """B^(I) (B, N_I, D) from B^(I-1): W^(I) diag(σ'(z^(I-1))) B^(I-1), for I ≥ 2 (1-based)."""
    scaled = model.activation.d1(zs[I - 2]).unsqueeze(-1) * previous   # (B, N_{I-1}, D)
    return torch.matmul(model.weights[I - 1], scaled)                   # (N_I, N_{I-1}) @ batch


# The products (B^(I))ᵀ diag(c) B^(I) are symmetric: only the lower block-triangle is computed,
# in column blocks [r0, r1) of the D coordinates (rows r0: of the block column), and mirrored at
# the end. With k blocks this costs (k + 1) / (2k) of the full product (5/8 for k = 4).
_MAX_BLOCKS = 4
_MIN_BLOCK = 128


def _column_blocks(D: int):
    k = max(1, min(_MAX_BLOCKS, D // _MIN_BLOCK))
    step = -(-D // k)
    return [(r0, min(D, r0 + step)) for r0 in range(0, D, step)]


def _add_first_term(H: Tensor, W1: Tensor, c: Tensor, assign: bool) -> None:
    """Lower block-triangle of W1ᵀ diag(c_b) W1 for every b (B^(1) = W^(1), shared), added to H
    (or written into it if ``assign``)."""
    N, D = W1.shape
    batch = c.shape[0]
    cT = c.T.contiguous().unsqueeze(-1)                               # (N_1, B, 1)
    for r0, r1 in _column_blocks(D):
        # c_b ⊙ W1[:, r0:r1] laid out (N_1, B, r) so that all samples share one GEMM with W1ᵀ.
        scaled = (W1[:, None, r0:r1] * cT).reshape(N, batch * (r1 - r0))
        block = (W1[:, r0:].T @ scaled).view(D - r0, batch, r1 - r0).permute(1, 0, 2)
        if assign:
            H[:, r0:, r0:r1] = block
        else:
            H[:, r0:, r0:r1] += block


def _add_term(H: Tensor, jac: Tensor, c: Tensor, assign: bool) -> None:
    """Lower block-triangle of (B^(I))ᵀ diag(c) B^(I), jac = B^(I) (B, N_I, D), added to H (or
    written into it if ``assign``)."""
    for r0, r1 in _column_blocks(jac.shape[2]):
        lower = H[:, r0:, r0:r1]
        left, right = jac[:, :, r0:].transpose(1, 2), c.unsqueeze(-1) * jac[:, :, r0:r1]
        if assign:
            lower.copy_(torch.bmm(left, right))
        else:
            lower.add_(torch.bmm(left, right))


def _mirror_lower(H: Tensor) -> Tensor:
    """Fill the upper block-triangle of H from its lower one, in place: exactly symmetric."""
    blocks = _column_blocks(H.shape[-1])
    for r0, r1 in blocks:
        diag = H[:, r0:r1, r0:r1]
        diag.copy_(diag.tril() + diag.tril(-1).transpose(1, 2))
        H[:, r0:r1, r1:] = H[:, r1:, r0:r1].transpose(1, 2)
    return H


def _lemma1(model, x: Tensor, v: Tensor, per_term: bool = False):
    """∇²_x (v · z^(L)) by Lemma 1: (B, D, D), or the list of the L-1 terms if ``per_term``."""
    act = model.activation
    zs = model.preactivations(x)
    rows = _rows(model, zs, v)
    W1 = model.weights[0]
    batch, D = x.shape

    def empty():  # every entry is written before it is read (lower by the first term, upper by the mirror)
        return torch.empty(batch, D, D, dtype=x.dtype, device=x.device)

    H = empty()
    terms = []
    jac = None
    for I in range(1, model.num_layers):
        c = rows[I - 1] * act.d2(zs[I - 1])                   # F_v^(L,I) ⊙ σ''(z^(I)), (B, N_I)
        first = I == 1 or per_term
        if I == 1:
            _add_first_term(H, W1, c, assign=first)
        else:
            jac = W1.expand(batch, *W1.shape) if jac is None else jac
            jac = _next_jacobian(model, zs, jac, I)         # B^(I); B^(I-1) is released
            _add_term(H, jac, c, assign=first)
        if per_term:
            terms.append(_mirror_lower(H))
            if I < model.num_layers - 1:
                H = empty()
    return terms if per_term else _mirror_lower(H)


# ------------------------------------------------------------------------------------------------
# Public API
def input_jacobians(model, x: Tensor, *, differentiable: bool = False) -> List[Tensor]:
    """The input Jacobians B^(I) = ∂z^(I)/∂x of Lemma 1 for I = 1 … L-1.

    .. math::
        B^{(1)} = W^{(1)}, \\quad B^{(I)} = W^{(I)} \\operatorname{diag}(σ'(z^{(I-1)})) B^{(I-1)}.

    Only σ' is needed, so this also works for ReLU nets (with σ'(0) = 0).

    Args:
        model: an :class:`~crc_core.models.MLP` with L ≥ 2 layers.
        x: inputs (B, D), float; cast to the model's dtype, must be on the model's device.
        differentiable: keep the autograd graph (default ``False``: computed under no_grad).

    Returns:
        ``[B^(1), …, B^(L-1)]``, B^(I) of shape (B, N_I, D). B^(1) is ``W^(1).expand(B, N_1, D)``,
        a view of the weight with stride 0 over the batch (no copy): do not write into it; call
        ``.clone()`` for a tensor of one's own. The others are fresh tensors.

    Raises:
        ValueError: for a wrong shape, NaN/inf in x, or x on another device than the model.

    Example:
        >>> from crc_core import MLP
        >>> model = MLP([784, 64, 64, 10], activation="softplus").double()
        >>> [b.shape for b in input_jacobians(model, torch.rand(5, 784, dtype=torch.float64))]
        [torch.Size([5, 64, 784]), torch.Size([5, 64, 784])]
    """
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        x = _check_x(model, x)
        zs = model.preactivations(x)
        W1 = model.weights[0]
        jacs = [W1.expand(x.shape[0], *W1.shape)]
        for I in range(2, model.num_layers):
            jacs.append(_next_jacobian(model, zs, jacs[-1], I))
        return jacs


def margin_output_jacobians(model, x: Tensor, y, t, *, differentiable: bool = False) -> List[Tensor]:
    """The rows F^(L,I)_y − F^(L,I)_t = ∂(z_y − z_t)/∂a^(I) of Lemma 1 for I = 1 … L-1.

    .. math::
        F^{(L,L-1)} = W^{(L)}, \\quad F^{(L,I)} = F^{(L,I+1)} \\operatorname{diag}(σ'(z^{(I+1)}))
        W^{(I+1)}.

    Only σ' is needed, so this also works for ReLU nets.

    Args:
        model: an :class:`~crc_core.models.MLP` with L ≥ 2 layers.
        x: inputs (B, D), float; cast to the model's dtype, must be on the model's device.
        y: true labels (B,), int64 (a Python int or 0-dim tensor is broadcast to every sample).
        t: target labels (B,), int64, with t ≠ y for every sample.
        differentiable: keep the autograd graph (default ``False``).

    Returns:
        ``[r^(1), …, r^(L-1)]`` with r^(I) = F^(L,I)_y − F^(L,I)_t of shape (B, N_I).

    Raises:
        ValueError: for wrong shapes, NaN/inf in x, labels out of [0, C-1], or y == t anywhere.

    Example:
        >>> from crc_core import MLP
        >>> model = MLP([784, 64, 32, 10], activation="tanh")
        >>> x, y, t = torch.rand(5, 784), torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
        >>> [r.shape for r in margin_output_jacobians(model, x, y, t)]
        [torch.Size([5, 64]), torch.Size([5, 32])]
    """
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        x = _check_x(model, x)
        v = _margin_coefficients(model, x, y, t)
        return _rows(model, model.preactivations(x), v)


def margin_hessian(model, x: Tensor, y, t, *, differentiable: bool = False) -> Tensor:
    """Hessian of the margin f(x) = z^(L)_y(x) − z^(L)_t(x) at each input, by Lemma 1.

    .. math::
        \\nabla^2_x f = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}\\big((F^{(L,I)}_y
        - F^{(L,I)}_t) \\odot σ''(z^{(I)})\\big) B^{(I)}.

    Exact up to floating-point rounding (agrees with autograd to ~1e-12 in float64); the lower
    triangle is computed and mirrored, so the result is exactly symmetric. Memory: the (B, D, D)
    result (twice, briefly, when mirroring) plus, for L ≥ 3, about three (B, N_I, D) tensors
    (for B = 64, N_I = 1024, D = 784 in float32: 160 MB and 200 MB); split large batches if that
    is too much.

    Args:
        model: an :class:`~crc_core.models.MLP` with L ≥ 2 layers and a smooth activation.
        x: inputs (B, D), float; cast to the model's dtype (use ``model.double()`` and float64
            x for certification-grade accuracy); must be on the model's device.
        y: true labels (B,), int64 (a Python int or 0-dim tensor is broadcast to every sample).
        t: target labels (B,), int64, with t ≠ y for every sample.
        differentiable: keep the autograd graph to the weights and x (default ``False``:
            computed under no_grad, result detached).

    Returns:
        H, (B, D, D), in the model's dtype, on x's device.

    Raises:
        NoCurvatureError: for a ReLU network (no σ'').
        ValueError: for wrong shapes, NaN/inf in x, labels out of [0, C-1], or y == t anywhere.

    Example:
        >>> from crc_core import MLP
        >>> model = MLP([784, 64, 64, 10], activation="softplus").double()
        >>> x = torch.rand(3, 784, dtype=torch.float64)
        >>> y, t = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
        >>> H = margin_hessian(model, x, y, t)
        >>> H.shape, torch.linalg.eigvalsh(H).shape
        (torch.Size([3, 784, 784]), torch.Size([3, 784]))
    """
    checks.smooth_model(model)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        x = _check_x(model, x)
        return _lemma1(model, x, _margin_coefficients(model, x, y, t))


def margin_hessian_terms(model, x: Tensor, y, t, *, differentiable: bool = False) -> List[Tensor]:
    """The L-1 per-layer terms of Lemma 1 for the margin f = z_y − z_t; they sum to
    :func:`margin_hessian` up to rounding; each is exactly symmetric.

    .. math::
        T^{(I)} = (B^{(I)})^T \\operatorname{diag}\\big((F^{(L,I)}_y - F^{(L,I)}_t) \\odot
        σ''(z^{(I)})\\big) B^{(I)}, \\quad I = 1, …, L-1.

    Args:
        model, x, y, t, differentiable: as in :func:`margin_hessian`.

    Returns:
        ``[T^(1), …, T^(L-1)]``, each (B, D, D) (all held in memory at once: L-1 times the
        memory of :func:`margin_hessian`).

    Raises:
        NoCurvatureError, ValueError: as :func:`margin_hessian`.

    Example:
        >>> from crc_core import MLP
        >>> model = MLP([20, 8, 8, 3], activation="sigmoid").double()
        >>> x = torch.rand(2, 20, dtype=torch.float64)
        >>> terms = margin_hessian_terms(model, x, torch.tensor([0, 0]), torch.tensor([1, 2]))
        >>> len(terms), terms[0].shape
        (2, torch.Size([2, 20, 20]))
    """
    checks.smooth_model(model)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        x = _check_x(model, x)
        return _lemma1(model, x, _margin_coefficients(model, x, y, t), per_term=True)


def logit_hessian(model, x: Tensor, i, *, differentiable: bool = False) -> Tensor:
    """Hessian of the logit z^(L)_i at each input, by Lemma 1.

    .. math::
        \\nabla^2_x z^{(L)}_i = \\sum_{I=1}^{L-1} (B^{(I)})^T \\operatorname{diag}\\big(
        F^{(L,I)}_i \\odot σ''(z^{(I)})\\big) B^{(I)}.

    Args:
        model: an :class:`~crc_core.models.MLP` with L ≥ 2 layers and a smooth activation.
        x: inputs (B, D), float; cast to the model's dtype, must be on the model's device.
        i: logit index per sample (B,), int64 (a Python int or 0-dim tensor is broadcast).
        differentiable: keep the autograd graph (default ``False``).

    Returns:
        H, (B, D, D), symmetric, in the model's dtype, on x's device.

    Raises:
        NoCurvatureError: for a ReLU network.
        ValueError: for wrong shapes, NaN/inf in x, or i out of [0, C-1].

    Example:
        >>> from crc_core import MLP
        >>> model = MLP([10, 6, 4], activation="tanh").double()
        >>> logit_hessian(model, torch.rand(2, 10, dtype=torch.float64), torch.tensor([0, 3])).shape
        torch.Size([2, 10, 10])
    """
    checks.smooth_model(model)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        x = _check_x(model, x)
        return _lemma1(model, x, _logit_coefficients(model, x, i))
