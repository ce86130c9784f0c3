"""Linear relaxations of the activations: CROWN-general's lines (Zhang et al. 2018, Sec. 3.2).

For every neuron whose pre-activation z is known to lie in [l, u], two lines enclose σ,

.. math::
    α_L z + β_L \\le σ(z) \\le α_U z + β_U \\qquad \\forall z \\in [l, u],

and bound propagation (:mod:`crc_core.baselines.crown`) replaces σ by them. One rule per shape
of σ:

- **relu** (piecewise linear): exact on stable intervals; on l < 0 < u the chord above and
  CROWN's adaptive line (z if u ≥ −l, else 0) or Fast-Lin's parallel line below.
- **softplus** (convex): the chord above, the tangent at the midpoint (l + u)/2 below.
- **sigmoid, tanh** (S-shaped: convex on (−∞, 0], concave on [0, ∞)): on a purely convex
  (u ≤ 0) or concave (l ≥ 0) interval, the chord on one side and the tangent at the midpoint
  on the other; on l < 0 < u the chord where it is valid, else the line through one end point
  tangent to σ on the other side of 0 (its tangent point found by bisection to the dtype's
  resolution).

Every line is sound in exact arithmetic; :func:`_endpoint_guard` absorbs the rounding of the
chords at the end points. The rules are those of the authors' code (the original CROWN
release and auto_LiRPA's non-optimized ``CROWN``: midpoint tangents on one-sided intervals),
without their approximations of the tangent points (a 0.01 offset and 10 bisection steps in
the former, a lookup table on a 0.01 grid in the latter).

Example:
    >>> r = linear_relaxation("tanh", torch.tensor([-1.0]), torch.tensor([2.0]))
    >>> r.lower_slope.shape
    torch.Size([1])
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple, Union

import torch

from .. import checks
from ..activations import Activation, get_activation

Tensor = torch.Tensor

__all__ = ["Relaxation", "linear_relaxation", "RELU_LOWER", "tangent_bisection_steps"]

#: Lower lines of an unstable ReLU: ``"adaptive"`` (CROWN) or ``"parallel"`` (Fast-Lin, the
#: lower line of Wong & Kolter's dual, slope u/(u − l)).
RELU_LOWER = ("adaptive", "parallel")

#: Halvings beyond the dtype's mantissa bits in the search for a tangent point
#: (:func:`tangent_bisection_steps`): a bracket of width up to 2^7 = 128 shrinks to the dtype's
#: resolution.
_EXTRA_BISECTION_STEPS = 7

#: Largest gap between log(1 + e^x) and torch's softplus (which returns x for x > 20), with slack.
_SOFTPLUS_GAP = 2 * math.log1p(math.exp(-20.0))


class Relaxation(NamedTuple):
    """Two lines enclosing σ on [l, u], elementwise: ``lower_slope·z + lower_intercept ≤ σ(z) ≤
    upper_slope·z + upper_intercept`` for every z in [l, u]. Each field has the shape of l."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


# ------------------------------------------------------------------------------------------------
# Lines: tangents and chords
# ------------------------------------------------------------------------------------------------

def _tangent(act: Activation, d: Tensor) -> Tuple[Tensor, Tensor]:
    """The tangent of σ at d: slope σ'(d), intercept σ(d) − σ'(d) d."""
    k = act.d1(d)
    return k, act.fn(d) - k * d


def _chord(act: Activation, l: Tensor, u: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """σ(l), σ(u) and the chord through them, slope k and intercept b (k = 0 where l = u)."""
    fl, fu = act.fn(l), act.fn(u)
    width = u - l
    k = (fu - fl) / torch.where(width > 0, width, torch.ones_like(width))
    return fl, fu, k, fl - k * l


@torch.no_grad()
def _bisect_increasing(phi, lo: Tensor, hi: Tensor, keep: str, steps: int) -> Tensor:
    """Bisection for the root of an increasing ``phi`` on [lo, hi]; returns the bracket end
    where phi ≥ 0 (``keep="hi"``) or phi ≤ 0 (``keep="lo"``)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        pos = phi(mid) >= 0
        hi = torch.where(pos, mid, hi)
        lo = torch.where(pos, lo, mid)
    return hi if keep == "hi" else lo


def tangent_bisection_steps(dtype: torch.dtype) -> int:
    """Bisection steps for the tangent points of sigmoid / tanh on intervals that straddle 0.

    The mantissa bits of ``dtype`` plus 7: 30 in float32, 59 in float64. A bracket [0, u] with
    u ≤ 128 then shrinks below the dtype's resolution, so the tangent line through the end
    point is the exact one up to rounding (with a fixed 30 steps, a float64 line through
    (l, σ(l)) with u ≈ 26 was 5e-9 looser than the exact tangent).

    Example:
        >>> tangent_bisection_steps(torch.float64)
        59
    """
    mantissa_bits = round(-math.log2(torch.finfo(dtype).eps))
    return mantissa_bits + _EXTRA_BISECTION_STEPS


def _endpoint_guard(r: Relaxation, l: Tensor, u: Tensor, fl: Tensor, fu: Tensor) -> Relaxation:
    """Shift each line by its rounding-level violation at the end points (chords touch σ there;
    this makes the float computation exact at l and u, a no-op in exact arithmetic)."""
    with torch.no_grad():
        up_gap = torch.maximum(fl - (r.upper_slope * l + r.upper_intercept),
                               fu - (r.upper_slope * u + r.upper_intercept)).clamp_min(0)
        lo_gap = torch.maximum((r.lower_slope * l + r.lower_intercept) - fl,
                               (r.lower_slope * u + r.lower_intercept) - fu).clamp_min(0)
    return Relaxation(r.lower_slope, r.lower_intercept - lo_gap, r.upper_slope,
                      r.upper_intercept + up_gap)


# ------------------------------------------------------------------------------------------------
# One rule per shape of σ
# ------------------------------------------------------------------------------------------------

def _relu_relaxation(lower: Tensor, upper: Tensor, relu_lower: str = "adaptive") -> Relaxation:
    """ReLU: 0 / identity on stable intervals; chord above and the adaptive or parallel line below."""
    zero, one = torch.zeros_like(lower), torch.ones_like(lower)
    active, dead = lower >= 0, upper <= 0
    unstable = ~active & ~dead
    width = torch.where(unstable, upper - lower, one)
    k_up = torch.where(unstable, upper / width, torch.where(active, one, zero))
    b_up = torch.where(unstable, -k_up * lower, zero)
    if relu_lower == "parallel":
        # Fast-Lin / Wong & Kolter: the lower line parallel to the upper one, through 0.
        k_lo = k_up
    else:
        # CROWN's adaptive lower line: slope 1 if u ≥ −l, else 0 (the smaller-area choice).
        k_lo = torch.where(unstable, (upper >= -lower).to(lower.dtype), torch.where(active, one, zero))
    return Relaxation(k_lo, zero, k_up, b_up)


def _convex_relaxation(act: Activation, lower: Tensor, upper: Tensor) -> Relaxation:
    """σ convex (softplus): the chord above, the tangent at the midpoint below.

    ``torch.nn.functional.softplus`` returns x itself above x = 20, up to log(1 + e^−20) ≈ 2.1e-9
    below the convex function; both lines are widened by :data:`_SOFTPLUS_GAP` to enclose the
    function the network actually computes.
    """
    l, u = lower, upper
    fl, fu, chord_k, chord_b = _chord(act, l, u)
    mid_k, mid_b = _tangent(act, (l + u) / 2)
    gap = _SOFTPLUS_GAP if act.name == "softplus" else 0.0
    return _endpoint_guard(Relaxation(mid_k, mid_b - gap, chord_k, chord_b + gap), l, u, fl, fu)


def _s_shaped_relaxation(act: Activation, lower: Tensor, upper: Tensor) -> Relaxation:
    """CROWN-general's rules for σ convex on (−∞, 0] and concave on [0, ∞) (sigmoid, tanh).

    With m = (l + u)/2 and T_p the tangent of σ at p:

    - u ≤ 0 (convex): the chord above, T_m below;
    - l ≥ 0 (concave): T_m above, the chord below;
    - l < 0 < u, above: the chord if σ'(u) ≥ its slope k; else the line through (l, σ(l))
      tangent at d_U ∈ [0, u], the root of φ(d) = σ(d) + σ'(d)(l − d) − σ(l) — or T_m where
      d_U < m (T_m is then valid too, φ(m) ≥ 0);
    - l < 0 < u, below: the chord if σ'(l) ≥ k; else the line through (u, σ(u)) tangent at
      d_L ∈ [l, 0], the root of ψ(d) = σ(d) + σ'(d)(u − d) − σ(u) — or T_m where d_L ≥ m.

    T_m, wherever it is valid, is the line of least area between it and σ on [l, u]: the
    integral of a line over [l, u] is (u − l) times its value at m, and T_m(m) = σ(m). The
    switch to T_m on straddling intervals is auto_LiRPA's default rule for S-shaped functions
    (its "smoothness enhancement"), and the reason this relaxation matches auto_LiRPA's CROWN:
    without it, CROWN bounds of tanh nets were 1-3% of the margin looser.
    """
    l, u = lower, upper
    fl, fu, chord_k, chord_b = _chord(act, l, u)
    m = (l + u) / 2
    mid_k, mid_b = _tangent(act, m)
    convex, concave = u <= 0, l >= 0
    mixed = ~convex & ~concave
    # Straddling 0: the chord is above σ iff σ'(u) ≥ chord slope, below σ iff σ'(l) ≥ it;
    # otherwise use the tangent line through the opposite end point, touching σ at d.
    ld, ud = l.detach(), u.detach()
    fld, fud = fl.detach(), fu.detach()
    need_up = mixed & (act.d1(u) < chord_k)
    need_lo = mixed & (act.d1(l) < chord_k)
    if bool(need_up.any()):
        # φ increasing on [0, u] (σ'' ≤ 0 there, l − d < 0); any d with φ(d) ≥ 0 is sound.
        def phi(d):
            return act.fn(d) + act.d1(d) * (ld - d) - fld
        d_up = _bisect_increasing(phi, torch.zeros_like(ud), ud.clamp_min(0), "hi",
                                  tangent_bisection_steps(ud.dtype))
    else:
        d_up = torch.zeros_like(ud)
    if bool(need_lo.any()):
        # ψ increasing on [l, 0] (σ'' ≥ 0 there, u − d > 0); any d with ψ(d) ≤ 0 is sound.
        def psi(d):
            return act.fn(d) + act.d1(d) * (ud - d) - fud
        d_lo = _bisect_increasing(psi, ld.clamp_max(0), torch.zeros_like(ld), "lo",
                                  tangent_bisection_steps(ld.dtype))
    else:
        d_lo = torch.zeros_like(ld)
    up_t_k, up_t_b = _tangent(act, d_up)
    lo_t_k, lo_t_b = _tangent(act, d_lo)
    # T_m where it is valid: m ≥ d_up ≥ the root of φ (above), m ≤ d_lo ≤ the root of ψ (below).
    mid_up = concave | (need_up & (d_up < m.detach()))
    mid_lo = convex | (need_lo & (d_lo >= m.detach()))
    k_up = torch.where(mid_up, mid_k, torch.where(need_up, up_t_k, chord_k))
    b_up = torch.where(mid_up, mid_b, torch.where(need_up, up_t_b, chord_b))
    k_lo = torch.where(mid_lo, mid_k, torch.where(need_lo, lo_t_k, chord_k))
    b_lo = torch.where(mid_lo, mid_b, torch.where(need_lo, lo_t_b, chord_b))
    return _endpoint_guard(Relaxation(k_lo, b_lo, k_up, b_up), l, u, fl, fu)


def linear_relaxation(activation: Union[str, Activation], lower: Tensor, upper: Tensor, *,
                      relu_lower: str = "adaptive") -> Relaxation:
    """CROWN-general's linear bounds of σ on each interval [l, u] (Zhang et al. 2018, Sec. 3.2).

    .. math::
        α_L z + β_L \\le σ(z) \\le α_U z + β_U \\qquad \\forall z \\in [l, u]

    - relu: 0 / identity on stable intervals; on l < 0 < u the chord u(z − l)/(u − l) above
      and the adaptive line z (if u ≥ −l) or 0 below (``relu_lower="adaptive"``), or the
      parallel line u z/(u − l) (``"parallel"``: Fast-Lin, equal to the Wong & Kolter dual).
    - softplus (convex): the chord above, the tangent at (l + u)/2 below.
    - sigmoid, tanh (convex on (−∞, 0], concave on [0, ∞)): u ≤ 0: chord above, tangent at the
      midpoint below; l ≥ 0: tangent at the midpoint above, chord below; l < 0 < u: the chord
      where it is valid (above iff σ'(u) ≥ its slope, below iff σ'(l) ≥ it), otherwise the line
      through (l, σ(l)) tangent to σ at some d ∈ [0, u] (upper) or through (u, σ(u)) tangent at
      d ∈ [l, 0] (lower), d found by bisection (:func:`tangent_bisection_steps`: to the
      dtype's resolution) and taken on the sound side of the root.

    Args:
        activation: ``"relu"``, ``"softplus"``, ``"sigmoid"``, ``"tanh"`` or an Activation.
        lower, upper: intervals, same shape, lower ≤ upper (any dtype and device).
        relu_lower: ``"adaptive"`` (default) or ``"parallel"``; ReLU only.

    Returns:
        :class:`Relaxation` of slopes and intercepts, each of the shape of ``lower``;
        differentiable in ``lower``, ``upper`` (the tangent points found by bisection are
        treated as constants).

    Raises:
        ValueError: shapes differ or lower > upper somewhere; an unknown ``relu_lower``.
        NotImplementedError: an activation without a relaxation rule.

    Example:
        >>> r = linear_relaxation("relu", torch.tensor([-1.0]), torch.tensor([3.0]))
        >>> r.upper_slope, r.upper_intercept
        (tensor([0.7500]), tensor([0.7500]))
    """
    act = get_activation(activation)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("every interval must satisfy lower <= upper")
    checks.one_of(relu_lower, "relu_lower", RELU_LOWER)
    if act.name == "relu":
        return _relu_relaxation(lower, upper, relu_lower)
    if act.name == "softplus":
        return _convex_relaxation(act, lower, upper)
    if act.name in ("sigmoid", "tanh"):
        return _s_shaped_relaxation(act, lower, upper)
    raise NotImplementedError(f"no CROWN relaxation for activation {act.name!r}")
