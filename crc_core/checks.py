"""Argument checks shared by every public function: inputs, labels, targets, bounds, radii.

One vocabulary and one policy, so that ``hessian``, ``curvature``, ``duality``, ``attacks`` and
the baselines accept the same arguments and refuse them with the same messages. Each check is a
small pure function: it returns the argument in canonical form (a (B,) int64 tensor on the
right device, a (B,) radius, a word of the vocabulary) or raises with a message that names the
argument, the expected range and, for a batch, the first offending index.

Policies:

- **Inputs** ``x``: a floating-point tensor of shape (B, D), D the model's input width (images
  (B, ...) with D entries each are flattened), finite; NaN and ±inf are refused naming the
  first bad row.
- **Labels** (``y``, ``t``, ``targets``, ``i``): a 1-D integer tensor of length B with values
  in [0, C). A Python int or a 0-d integer tensor is **broadcast** to (B,) — everywhere, in
  every function (one label for the whole batch). A (1,) tensor is not broadcast: it is a batch
  of one.
- **Targets**: one of :data:`TARGET_WORDS` or a tensor of labels with t ≠ y for every sample.
  A function that does not accept some word passes ``allowed=``, a subset of the vocabulary.
- **Curvature bounds**: one of :data:`BOUND_WORDS` or a pair (m, M) of floats / tensors with
  m ≤ M and no NaN (subsets again through ``allowed=``).
- **Radii** (ρ, R, ε): a float or a (B,) tensor, finite and > 0 (≥ 0 where zero makes sense).

Python-type mistakes (a list where a tensor is expected, a bool) raise :class:`TypeError`;
wrong shapes, dtypes and values raise :class:`ValueError`; a ReLU network given to a curvature
quantity raises :class:`~crc_core.activations.NoCurvatureError` (a ``ValueError``).

Example:
    >>> import torch
    >>> from crc_core import MLP, checks
    >>> model = MLP([6, 5, 3])
    >>> checks.labels(model, 2, batch=4, device="cpu")          # an int is broadcast
    tensor([2, 2, 2, 2])
    >>> checks.targets(model, torch.tensor([0, 1]), "runner-up",
    ...                logits=torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0]]))
    tensor([1, 2])
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

from .activations import Activation, require_curvature

Tensor = torch.Tensor

__all__ = [
    "TARGET_WORDS",
    "BOUND_WORDS",
    "check_inputs",
    "labels",
    "margin_labels",
    "runner_up",
    "largest_other_classes",
    "targets",
    "bounds",
    "radius",
    "smooth_model",
    "finite_weights",
    "count",
    "positive",
    "one_of",
]

#: Every word a ``targets`` argument may take:
#: ``"runner-up"`` — the largest logit other than y at x (the paper's choice);
#: ``"all"`` — every class t ≠ y (a certificate is the minimum over them);
#: ``"untargeted"`` — PGD against the best other class at each step (:func:`attacks.pgd_l2`).
TARGET_WORDS: Tuple[str, ...] = ("runner-up", "all", "untargeted")

#: Every word a ``bounds`` argument (curvature bounds m ≤ λ(∇²f) ≤ M) may take:
#: ``"global"`` — rigorous bounds valid for all x (Theorems 3, 4);
#: ``"local"`` — rigorous bounds valid on a ball around x;
#: ``"estimate"`` — a fast estimate from below, for training only (not sound).
BOUND_WORDS: Tuple[str, ...] = ("global", "local", "estimate")


# ------------------------------------------------------------------------------------------------
# Inputs
def check_inputs(model, x, *, same_device: bool = False) -> Tensor:
    """Validate a batch of inputs and flatten images: returns x as (B, D).

    Args:
        model: an :class:`~crc_core.models.MLP` (``model.input_dim`` is D).
        x: a floating-point tensor (B, D), or (B, ...) with D entries per sample.
        same_device: also require x on the model's device (default False; functions that copy
            the model to x's device do not need it).

    Returns:
        x with shape (B, D), same dtype and device (a view when it was flattened).

    Raises:
        TypeError: x is not a tensor.
        ValueError: wrong shape, integer dtype, NaN or ±inf (naming the first bad row), or
            (``same_device``) x on another device than the model.

    Example:
        >>> check_inputs(MLP([6, 5, 3]), torch.zeros(2, 2, 3)).shape
        torch.Size([2, 6])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    D = model.input_dim
    if x.dim() > 2 and x[0].numel() == D:
        x = x.reshape(x.shape[0], -1)
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(f"x must have shape (B, {D}) (or (B, ...) with {D} entries per sample), "
                         f"got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.all(dim=1)
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"x contains NaN or infinite values: first at row {first} "
                         f"({int(bad.sum())} row(s) in all)")
    if same_device:
        device = next(model.parameters()).device
        if x.device != device:
            raise ValueError(f"x is on {x.device} but the model is on {device}; move one of them "
                             "(e.g. model.to(x.device))")
    return x


# ------------------------------------------------------------------------------------------------
# Labels and targets
def _first(mask: Tensor) -> Optional[int]:
    """Index of the first True entry of a 1-D bool tensor, or None (one sync)."""
    if mask.numel() == 0 or not bool(mask.any()):
        return None
    return int(mask.nonzero()[0, 0])


def labels(model, y, batch: int, device, name: str = "y", *, match: str = "x") -> Tensor:
    """Validate class labels and return them as a (B,) int64 tensor on ``device``.

    One policy for an integer: a Python int (or numpy integer) or a 0-d integer tensor is
    broadcast to (B,), the same label for every sample. A 1-D tensor must have length B.

    Args:
        model: the network (``model.num_classes`` is C).
        y: an int, a 0-d or (B,) integer tensor, values in [0, C).
        batch: B.
        device: where the result lives.
        name: the argument's name in messages (default ``"y"``).
        match: what B comes from, for the shape message (default ``"x"``).

    Returns:
        (B,) int64 on ``device`` (``y`` itself when it already is one).

    Raises:
        TypeError: y is neither an integer nor a tensor (a bool, a float, a list).
        ValueError: non-integer dtype, wrong shape, a value outside [0, C) (naming the first
            bad index).

    Example:
        >>> labels(MLP([6, 5, 3]), torch.tensor([0, 2]), 2, "cpu")
        tensor([0, 2])
    """
    C = model.num_classes
    expect = f"[0, {C - 1}] (the model has {C} classes)"
    if isinstance(y, Tensor):
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"{name} must have an integer dtype (int64), got {y.dtype}")
        if y.dim() == 0:
            y = int(y)                                   # one label for the whole batch
    if isinstance(y, numbers.Integral) and not isinstance(y, bool):
        if not 0 <= int(y) < C:
            raise ValueError(f"{name} must lie in {expect}, got {int(y)}")
        return torch.full((batch,), int(y), dtype=torch.int64, device=device)
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor of shape ({batch},), "
                        f"got {type(y).__name__}")
    if y.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match {match}, got {tuple(y.shape)}")
    y = y.to(device=device, dtype=torch.int64)
    first = _first((y < 0) | (y >= C))
    if first is not None:
        raise ValueError(f"{name} must lie in {expect}, got {int(y[first])} at index {first}")
    return y


def margin_labels(model, y, t, *, batch: Optional[int] = None, device=None) -> Tuple[Tensor, Tensor]:
    """Validate the pair (y, t) of the margin f = z_y − z_t: two (B,) int64 tensors, y ≠ t.

    Args:
        model: the network.
        y, t: labels as in :func:`labels` (ints broadcast).
        batch: B when there are inputs x; None to take it from y and t (the length of the 1-D
            tensor among them, 1 when both are ints).
        device: where the result lives (default: the model's device).

    Returns:
        (y, t), each (B,) int64 on ``device``.

    Raises:
        TypeError, ValueError: as :func:`labels`; y and t of different lengths; y == t for some
            sample (naming the first index).

    Example:
        >>> margin_labels(MLP([6, 5, 3]), torch.tensor([0, 1]), 2)
        (tensor([0, 1]), tensor([2, 2]))
    """
    if device is None:
        device = next(model.parameters()).device
    match = "x"
    if batch is None:
        match = "the other label"
        lengths = [v.shape[0] for v in (y, t) if isinstance(v, Tensor) and v.dim() == 1]
        if len(set(lengths)) > 1:
            raise ValueError(f"y and t must have the same shape (B,), got {tuple(y.shape)} "
                             f"and {tuple(t.shape)}")
        batch = lengths[0] if lengths else 1
    y = labels(model, y, batch, device, "y", match=match)
    t = labels(model, t, batch, device, "t", match=match)
    first = _first(y == t)
    if first is not None:
        raise ValueError(f"t must differ from y for every sample (the margin f = z_y - z_t would be "
                         f"identically 0): y == t == {int(y[first])} at index {first} "
                         f"({int((y == t).sum())} sample(s) in all)")
    return y, t


def runner_up(logits: Tensor, y: Tensor) -> Tensor:
    """The runner-up class: the largest logit other than the true class.

    .. math::
        t = \\arg\\max_{j \\ne y} z^{(L)}_j

    The one definition used everywhere ("runner-up" targets, the paper's choice of t). Ties
    go to the smallest index (``argmax``).

    Args:
        logits: (B, C), C ≥ 2.
        y: (B,) int64 labels.

    Returns:
        (B,) int64, never equal to ``y``.

    Example:
        >>> runner_up(torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0]]), torch.tensor([0, 1]))
        tensor([1, 2])
    """
    return _without_label(logits, y).argmax(dim=1)


def largest_other_classes(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """The k classes of largest logit other than the true class, largest first.

    .. math::
        t_1, …, t_k:\\ z_{t_1} \\ge … \\ge z_{t_k} \\ge z_j \\ \\text{for every other } j \\ne y

    Column 0 is the runner-up (:func:`runner_up`, up to the order of tied logits); k = C − 1
    lists every class t ≠ y.

    Args:
        logits: (B, C), C ≥ 2.
        y: (B,) int64 labels.
        k: 1 ≤ k ≤ C − 1.

    Returns:
        (B, k) int64, no entry equal to its row's ``y``.

    Raises:
        ValueError: k out of range.

    Example:
        >>> largest_other_classes(torch.tensor([[3.0, 2.0, 1.0, 4.0]]), torch.tensor([0]), 2)
        tensor([[3, 1]])
    """
    C = logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= C - 1:
        raise ValueError(f"k must be an integer in [1, {C - 1}] (C = {C} classes), got {k!r}")
    return _without_label(logits, y).topk(k, dim=1).indices


def _without_label(logits: Tensor, y: Tensor) -> Tensor:
    """A detached copy of ``logits`` (B, C) with each row's label entry set to −∞."""
    masked = logits.detach().clone()
    masked.scatter_(1, y.view(-1, 1), float("-inf"))
    return masked


def _words(allowed: Iterable[str], vocabulary: Sequence[str], what: str) -> Tuple[str, ...]:
    allowed = tuple(allowed)
    unknown = [w for w in allowed if w not in vocabulary]
    if unknown:
        raise ValueError(f"allowed {what} words {unknown} are not in the vocabulary {list(vocabulary)}")
    return allowed


def targets(model, y: Tensor, targets, *, allowed: Iterable[str] = TARGET_WORDS,
            logits: Optional[Tensor] = None) -> Union[str, Tensor]:
    """Validate a ``targets`` argument: a word of :data:`TARGET_WORDS` or a tensor of classes.

    Args:
        model: the network.
        y: (B,) int64 labels, already checked (their device is the result's).
        targets: a word of ``allowed``, or labels as in :func:`labels` (an int is broadcast)
            with t ≠ y for every sample.
        allowed: the words this function accepts (default: the whole vocabulary).
        logits: (B, C) logits at x; when given, ``"runner-up"`` is resolved to
            :func:`runner_up` ``(logits, y)`` (computed by the caller in the precision it
            certifies in). Without them the word is returned.

    Returns:
        The word, or a (B,) int64 tensor of targets.

    Raises:
        ValueError: a word outside ``allowed``; bad labels; t == y for some sample (naming the
            first index).
        TypeError: targets neither a word nor labels.

    Example:
        >>> targets(MLP([6, 5, 3]), torch.tensor([0, 1]), "all", allowed=("runner-up", "all"))
        'all'
    """
    allowed = _words(allowed, TARGET_WORDS, "targets")
    if isinstance(targets, str):
        if targets not in allowed:
            raise ValueError(f"targets={targets!r} is invalid: expected one of {list(allowed)} or "
                             "a (B,) integer tensor of classes t != y")
        if targets == "runner-up" and logits is not None:
            return runner_up(logits, y)
        return targets
    t = labels(model, targets, y.shape[0], y.device, "targets")
    first = _first(t == y)
    if first is not None:
        raise ValueError(f"targets must differ from y for every sample (the margin z_y - z_t would "
                         f"be identically 0): targets == y == {int(y[first])} at index {first}")
    return t


# ------------------------------------------------------------------------------------------------
# Curvature bounds
def bounds(bounds, *, allowed: Iterable[str] = BOUND_WORDS, batch: Optional[int] = None,
           classes: Optional[int] = None, device=None) -> Union[str, Tuple[Tensor, Tensor]]:
    """Validate a ``bounds`` argument: a word of :data:`BOUND_WORDS` or a pair (m, M).

    A pair gives curvature bounds m ≤ λ_min(∇²f) and λ_max(∇²f) ≤ M of the margins; the caller
    must know them to be true bounds (nothing here can check that). Accepted shapes: with
    ``batch`` = B, floats (broadcast) or (B,) tensors, one pair per sample; with ``classes`` = C,
    two (C, C) tables indexed [y, t] (as :func:`curvature.all_pair_bounds` returns).

    Args:
        bounds: a word of ``allowed`` or a pair (m, M).
        allowed: the words this function accepts (default: the whole vocabulary).
        batch: B if per-sample bounds (floats, (B,)) are accepted, else None.
        classes: C if (C, C) tables are accepted, else None. With neither, any shape (m and M
            alike).
        device: where the tensors of a pair go (default: where they are; CPU for floats).

    Returns:
        The word, or (m, M) as float64 tensors ((B,) or (C, C)).

    Raises:
        ValueError: a word outside ``allowed``; not a pair; a shape not accepted; NaN or m > M
            (naming the first index).

    Example:
        >>> bounds((-0.5, 0.5), batch=3)
        (tensor([-0.5000, -0.5000, -0.5000], dtype=torch.float64), tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64))
    """
    allowed = _words(allowed, BOUND_WORDS, "bounds")
    shapes, accepted = [], []
    if batch is not None:
        shapes.append(f"floats or ({batch},) tensors")
        accepted += [(), (batch,)]
    if classes is not None:
        shapes.append(f"two ({classes}, {classes}) tables indexed [y, t] (as "
                      "curvature.all_pair_bounds returns)")
        accepted.append((classes, classes))
    pair = "a pair (m, M)" + (" of " + " or ".join(shapes) if shapes else "")
    if isinstance(bounds, str):
        if bounds not in allowed:
            raise ValueError(f"bounds={bounds!r} is invalid: expected one of {list(allowed)} or {pair}")
        return bounds
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError(f"bounds must be one of {list(allowed)} or {pair}, got {type(bounds).__name__}")
    try:
        m, M = (torch.as_tensor(b.detach() if isinstance(b, Tensor) else b, dtype=torch.float64,
                                device=device) for b in bounds)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"bounds must be {pair}, got {bounds!r}") from None
    if accepted:
        if m.shape not in accepted or M.shape not in accepted or (m.dim() == 2) != (M.dim() == 2):
            raise ValueError(f"bounds given as (m, M) must be {' or '.join(shapes)}, got shapes "
                             f"{tuple(m.shape)} and {tuple(M.shape)}")
        if batch is not None and m.dim() < 2:
            m, M = m.expand(batch).contiguous(), M.expand(batch).contiguous()
    elif m.shape != M.shape:
        raise ValueError(f"bounds (m, M) must have the same shape, got {tuple(m.shape)} and {tuple(M.shape)}")
    bad = torch.isnan(m) | torch.isnan(M) | (m > M)
    if classes is not None and m.dim() == 2:     # [y, y] is never used (NaN in all_pair_bounds)
        bad &= ~torch.eye(classes, dtype=torch.bool, device=m.device)
    if bool(bad.any()):
        index = tuple(bad.nonzero()[0].tolist())
        where = f" at index {index[0] if len(index) == 1 else index}" if index else ""
        raise ValueError(f"curvature bounds must satisfy m <= M (and not be NaN): m = {float(m[index])}, "
                         f"M = {float(M[index])}{where}")
    return m, M


# ------------------------------------------------------------------------------------------------
# Radii
def radius(rho, batch: int, dtype: torch.dtype, device, *, name: str = "rho",
           allow_zero: bool = False) -> Tensor:
    """Validate an l2 radius (ρ of an attack, R of a ball, ε of CROWN) and return it as (B,).

    Args:
        rho: a float or a 0-d or (B,) tensor; finite and > 0 (≥ 0 with ``allow_zero``).
        batch: B.
        dtype, device: of the result.
        name: the argument's name in messages (default ``"rho"``).
        allow_zero: accept 0 (default False).

    Returns:
        (B,) tensor of ``dtype`` on ``device`` (detached, contiguous).

    Raises:
        TypeError: not a number or a tensor (a bool, a string).
        ValueError: wrong shape; NaN, ±inf, negative or (unless ``allow_zero``) zero, naming
            the first bad index of a tensor.

    Example:
        >>> radius(0.5, 3, torch.float64, "cpu")
        tensor([0.5000, 0.5000, 0.5000], dtype=torch.float64)
    """
    if isinstance(rho, bool):
        raise TypeError(f"{name} must be a float or a tensor of shape ({batch},), got a bool")
    try:
        r = torch.as_tensor(rho.detach() if isinstance(rho, Tensor) else rho, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a float or a tensor of shape ({batch},), "
                        f"got {type(rho).__name__}") from None
    scalar = r.dim() == 0
    if scalar:
        r = r.expand(batch)
    if r.shape != (batch,):
        raise ValueError(f"{name} must be a float or a tensor of shape ({batch},), got {tuple(r.shape)}")
    bad = ~torch.isfinite(r) | ((r < 0) if allow_zero else (r <= 0))
    first = _first(bad)
    if first is not None:
        where = f"{rho!r}" if scalar else f"{float(r[first])} at index {first}"
        raise ValueError(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {where}")
    return r.contiguous() if not scalar else r.clone()


# ------------------------------------------------------------------------------------------------
# Models
def smooth_model(model) -> Activation:
    """The model's activation if the curvature certificate applies to it (σ'' exists).

    Raises:
        TypeError: not an MLP (no ``weights`` / ``activation``).
        NoCurvatureError: a ReLU network (use the CROWN baseline).

    Example:
        >>> smooth_model(MLP([6, 5, 3], "tanh")).name
        'tanh'
    """
    if not hasattr(model, "weights") or not hasattr(model, "activation"):
        raise TypeError(f"model must be a crc_core.MLP, got {type(model).__name__}")
    return require_curvature(model.activation)


def finite_weights(model) -> None:
    """Refuse weights with NaN or ±inf entries (no curvature bound exists for them).

    Raises:
        ValueError: naming the first layer W^(I) (1-based) with a non-finite entry.
    """
    for i, w in enumerate(model.weights, start=1):
        # A NaN / inf entry makes the sum non-finite; only then look closer (the sum may also
        # overflow on huge finite weights).
        if not bool(torch.isfinite(w.detach().sum())) and not bool(torch.isfinite(w).all()):
            raise ValueError(f"W^({i}) contains NaN or infinite values: no curvature bound exists")


# ------------------------------------------------------------------------------------------------
# Scalars
def count(value, name: str, minimum: int = 0) -> int:
    """An integer ≥ ``minimum`` (steps, restarts, batch sizes); integral floats are accepted.

    Raises:
        ValueError: not an integer, or below ``minimum``.

    Example:
        >>> count(3, "steps")
        3
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        n = int(value.__index__())
    except (AttributeError, TypeError, RuntimeError):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return n


def positive(value, name: str) -> float:
    """A finite real number > 0 (step sizes, tolerances); a 0-d real tensor counts as one.

    Raises:
        ValueError: not a real number, NaN, ±inf or ≤ 0.

    Example:
        >>> positive(0.01, "step_size")
        0.01
    """
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype.is_floating_point:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def one_of(value, name: str, options: Iterable) -> object:
    """``value`` if it is one of ``options`` (a method, a search rule).

    Raises:
        ValueError: ``name=value is invalid: expected one of [...]``.

    Example:
        >>> one_of("max", "which", ("max", "abs"))
        'max'
    """
    options = tuple(options)
    if isinstance(value, Tensor) or value not in options:
        raise ValueError(f"{name}={value!r} is invalid: expected one of {list(options)}")
    return value
