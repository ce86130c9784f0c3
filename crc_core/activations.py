"""Smooth activations and the curvature constants of Theorems 3 and 4.

Each activation carries σ, σ', σ'' and the constants the curvature bounds use:

.. math::
    g = \\sup_x |σ'(x)|, \\quad h = \\sup_x |σ''(x)|, \\quad h_L \\le σ''(x) \\le h_U.

| activation | g   | [h_L, h_U]                 | h          |
|------------|-----|----------------------------|------------|
| softplus   | 1   | [0, 1/4]                   | 1/4        |
| sigmoid    | 1/4 | [−√3/18, √3/18]            | √3/18      |
| tanh       | 1   | [−4/(3√3), 4/(3√3)]        | 4/(3√3)    |

Softplus is the exact log(1 + e^x) in float64, where certificates are computed (torch's
``softplus`` switches to the identity above x = 20, a 2e-9 jump the curvature bounds do not
cover); in float32 torch's kernel is kept, since there it already rounds to the exact value.

ReLU is available for the baselines (CROWN, COAP) but has no curvature information: asking a
curvature quantity of it raises :class:`NoCurvatureError`.

Besides the global constants, :meth:`Activation.d1_range` and :meth:`Activation.d2_range` give
the exact range of σ' and σ'' over an interval ``[l, u]`` (endpoints plus interior critical
points), which the local curvature bounds (Table 6) use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

Tensor = torch.Tensor

__all__ = [
    "Activation",
    "NoCurvatureError",
    "ACTIVATIONS",
    "get_activation",
    "require_curvature",
]


class NoCurvatureError(ValueError):
    """Raised when a curvature quantity is asked of an activation without σ'' (ReLU)."""


# Guard added to interval ranges of σ', σ'' so that float64 rounding at the candidate points can
# never make a range too narrow (values are O(1); rounding is O(1e-16)).
_RANGE_SLACK = 1e-12


#: Above this z torch's softplus returns z itself (``threshold=20``), below it log1p(exp(z)).
_SOFTPLUS_THRESHOLD = 20.0


def _softplus(z: Tensor) -> Tensor:
    """σ(z) = log(1 + e^z): exact in float64, torch's softplus in lower precisions.

    torch's softplus returns z for z > 20, off by log1p(e^−z) ≤ 2.1e-9 and not monotone across
    20 — in float64 a jump that the curvature bounds (which assume the exact softplus) do not
    cover. In float64, z ≥ 20 is computed as z + log1p(e^−z) (the stable form; exact to an ulp),
    z < 20 by torch's own log1p(e^z). In float32 and below the gap is less than half an ulp of
    z (ulp(20) = 1.9e-6 in float32), so torch's value is already the correctly rounded exact
    softplus there and is kept: training keeps its fused kernel and its bit-for-bit results.
    Gradients (autograd, any order) are those of the exact function (σ' = sigmoid).
    """
    if z.dtype != torch.float64:
        return torch.nn.functional.softplus(z)
    big = z.clamp_min(_SOFTPLUS_THRESHOLD)     # the branch for z ≥ 20, finite gradients elsewhere
    return torch.where(z >= _SOFTPLUS_THRESHOLD, big + torch.log1p(torch.exp(-big)),
                       torch.nn.functional.softplus(z))


def _softplus_d1(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _softplus_d2(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _sigmoid_d1(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _sigmoid_d2(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s) * (1 - 2 * s)


def _tanh_d1(x: Tensor) -> Tensor:
    th = torch.tanh(x)
    return 1 - th * th


def _tanh_d2(x: Tensor) -> Tensor:
    th = torch.tanh(x)
    return -2 * th * (1 - th * th)


def _relu_d1(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation σ with its derivatives and curvature constants.

    Attributes:
        name: ``"softplus"``, ``"sigmoid"``, ``"tanh"`` or ``"relu"``.
        fn: σ.
        d1: σ'.
        d2: σ'' (``None`` for ReLU).
        g: sup |σ'|.
        h: sup |σ''| (``None`` for ReLU).
        h_L, h_U: inf and sup of σ'' (``None`` for ReLU).
        d1_critical: points where σ'' = 0 (interior extrema of σ').
        d2_critical: points where σ''' = 0 (interior extrema of σ'').
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    d1: Callable[[Tensor], Tensor]
    d2: Callable[[Tensor], Tensor] | None
    g: float
    h: float | None
    h_L: float | None
    h_U: float | None
    d1_critical: Tuple[float, ...] = ()
    d2_critical: Tuple[float, ...] = ()

    @property
    def has_curvature(self) -> bool:
        """Whether σ'' exists everywhere (False for ReLU)."""
        return self.d2 is not None

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def d1_range(self, lower: Tensor, upper: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact range of σ' over each interval ``[lower, upper]`` (elementwise, any shape)."""
        return _range_over_interval(self.d1, self.d1_critical, lower, upper)

    def d2_range(self, lower: Tensor, upper: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact range of σ'' over each interval ``[lower, upper]`` (elementwise, any shape).

        Raises:
            NoCurvatureError: for ReLU.
        """
        require_curvature(self)
        return _range_over_interval(self.d2, self.d2_critical, lower, upper)


def _range_over_interval(fn, critical, lower: Tensor, upper: Tensor) -> Tuple[Tensor, Tensor]:
    """min and max of a smooth ``fn`` over ``[lower, upper]``: endpoints and interior critical points."""
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}")
    if torch.any(lower > upper):
        raise ValueError("every interval must satisfy lower <= upper")
    lo = torch.minimum(fn(lower), fn(upper))
    hi = torch.maximum(fn(lower), fn(upper))
    for c in critical:
        inside = (lower <= c) & (c <= upper)
        value = fn(torch.full((), c, dtype=lower.dtype, device=lower.device))
        lo = torch.where(inside, torch.minimum(lo, value), lo)
        hi = torch.where(inside, torch.maximum(hi, value), hi)
    return lo - _RANGE_SLACK, hi + _RANGE_SLACK


_SIGMOID_H = math.sqrt(3) / 18
_TANH_H = 4 / (3 * math.sqrt(3))

ACTIVATIONS = {
    "softplus": Activation(
        "softplus", _softplus, _softplus_d1, _softplus_d2,
        g=1.0, h=0.25, h_L=0.0, h_U=0.25, d1_critical=(), d2_critical=(0.0,),
    ),
    "sigmoid": Activation(
        "sigmoid", torch.sigmoid, _sigmoid_d1, _sigmoid_d2,
        g=0.25, h=_SIGMOID_H, h_L=-_SIGMOID_H, h_U=_SIGMOID_H,
        d1_critical=(0.0,), d2_critical=(-math.log(2 + math.sqrt(3)), math.log(2 + math.sqrt(3))),
    ),
    "tanh": Activation(
        "tanh", torch.tanh, _tanh_d1, _tanh_d2,
        g=1.0, h=_TANH_H, h_L=-_TANH_H, h_U=_TANH_H,
        d1_critical=(0.0,), d2_critical=(-math.atanh(1 / math.sqrt(3)), math.atanh(1 / math.sqrt(3))),
    ),
    "relu": Activation(
        "relu", torch.relu, _relu_d1, None, g=1.0, h=None, h_L=None, h_U=None,
    ),
}


def get_activation(activation: str | Activation) -> Activation:
    """Look an activation up by name (an :class:`Activation` passes through).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(activation, Activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


def require_curvature(activation: str | Activation) -> Activation:
    """Return the activation if it has bounded σ''; raise :class:`NoCurvatureError` otherwise."""
    act = get_activation(activation)
    if not act.has_curvature:
        raise NoCurvatureError(
            f"activation {act.name!r} has no second derivative: the curvature bounds and the CRC "
            "certificate apply only to smooth activations (softplus, sigmoid, tanh); use the "
            "CROWN baseline (crc_core.baselines.crown) for ReLU networks"
        )
    return act
