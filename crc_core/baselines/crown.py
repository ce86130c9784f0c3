"""CROWN-general certificates and CROWN-IBP training in l2 (the paper's baselines, Tables 3-5).

**Bounds.** For an :class:`~crc_core.models.MLP` with relu, sigmoid, tanh or softplus and the
l2 ball :math:`\\mathcal{B} = \\{x' : \\|x' - x\\|_2 \\le ε\\}` (no pixel box, as the CRC
certificate), every function here returns *sound lower bounds* of linear specifications of
the logits,

.. math::
    \\underline{s}_r \\le \\min_{x' \\in \\mathcal{B}} (S\\, z^{(L)}(x'))_r, \\qquad
    S \\in \\mathbb{R}^{R \\times C},

in particular of the margins :math:`f_t = z_y - z_t` (rows :math:`e_y - e_t`). Three methods:

- ``"ibp"`` — interval bound propagation with an l2 first layer:
  :math:`z^{(1)}_k \\in W^{(1)}_k x + b^{(1)}_k \\pm ε\\|W^{(1)}_k\\|_2`, then intervals through
  each monotone activation and linear layer; the last layer is merged with S (Gowal et al. 2018).
- ``"crown"`` — CROWN-general (Zhang et al. 2018): each neuron's activation on its
  pre-activation interval [l, u] is enclosed by two lines
  :math:`α_L z + β_L \\le σ(z) \\le α_U z + β_U` (:func:`linear_relaxation`), and
  :math:`Λ z^{(m)}` is bounded by back-substitution to the input,
  :math:`Λ z^{(m)} \\ge A x' + c` on the ball, so that
  :math:`\\min_{\\mathcal{B}} A x' + c = A x + c - ε \\|A_r\\|_2` row by row. The intervals of
  every hidden layer come from CROWN itself, layer by layer (rows ±I). By default they are
  intersected with the IBP intervals and the final bound is the larger of CROWN's and IBP's
  (``intersect_ibp=True``): both are sound, so this is too, and it is never looser than either.
- ``"crown-ibp"`` — CROWN-IBP (Zhang et al. 2019): IBP intervals for the hidden layers, CROWN
  back-substitution for the specification only. Cheap enough for training.

**Certificate.** :func:`certify` bisects on ε for the largest radius whose lower bound is
positive (Table 5b's mean certificate): no x' with ‖x' − x‖ ≤ ``radius`` is classified as t
(any class ≠ y for ``targets="all"``). Misclassified inputs get radius 0.

**Training.** :func:`crown_ibp_loss` is the CROWN-IBP loss
:math:`κ\\,\\mathrm{CE}(z(x), y) + (1-κ)\\,\\mathrm{CE}(-\\underline{f}, y)` with
:math:`\\underline{f} = β\\,\\underline{f}_{\\text{CROWN-IBP}} + (1-β)\\,\\underline{f}_{\\text{IBP}}`
and the ε, κ, β schedules of :func:`crown_ibp_schedule`; :mod:`crc_core.training` calls it for
``method="crown-ibp"``.

Floating point: the bounds are computed in ``dtype`` (default: the model's); they are sound
up to that dtype's rounding (float64 in :func:`certify` by default).

Example:
    >>> from crc_core import MLP
    >>> from crc_core.baselines import crown
    >>> model = MLP([784, 64, 64, 10], "sigmoid")
    >>> x, y = torch.rand(4, 784), torch.tensor([0, 1, 2, 3])
    >>> lb = crown.margin_lower_bound(model, x, y, torch.tensor([1, 2, 3, 4]), eps=0.1)
    >>> cert = crown.certify(model, x, y, targets="runner-up")
    >>> cert.radius.shape
    torch.Size([4])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..activations import Activation, get_activation
from ..attacks import runner_up

Tensor = torch.Tensor

__all__ = [
    "METHODS", "Relaxation", "CrownCertificate", "linear_relaxation", "ibp_bounds",
    "preactivation_bounds", "spec_lower_bound", "RELU_LOWER", "margin_matrix", "margin_lower_bounds",
    "margin_lower_bound", "certify", "SEARCHES", "crown_ibp_schedule", "crown_ibp_loss",
    "training_progress", "robust_cross_entropy", "WARMUP_FRACTION", "RAMP_END_FRACTION", "FINAL_KAPPA",
]

#: Bounding methods: ``"crown"`` (CROWN-general, CROWN intervals for every layer),
#: ``"crown-ibp"`` (IBP intervals, CROWN for the specification), ``"ibp"``.
METHODS = ("crown", "crown-ibp", "ibp")

#: CROWN-IBP schedule (Zhang et al. 2019, scaled to a fraction of the training steps): ε = 0
#: and κ = 1 during the first WARMUP_FRACTION of the steps, then ε rises linearly to ρ, κ falls
#: to FINAL_KAPPA and β moves from 1 to the final β, until RAMP_END_FRACTION; constant after.
WARMUP_FRACTION = 0.05
RAMP_END_FRACTION = 0.5
FINAL_KAPPA = 0.0

#: Bisection steps for the tangent points of sigmoid / tanh on intervals that straddle 0.
TANGENT_BISECTION_STEPS = 30

#: Elements per back-substitution block (rows of Λ are processed in chunks of this many
#: batch × rows × width entries, bounding memory).
_CHUNK_ELEMENTS = 1 << 24

#: Largest gap between log(1 + e^x) and torch's softplus (which returns x for x > 20), with slack.
_SOFTPLUS_GAP = 2 * math.log1p(math.exp(-20.0))

#: Training-set size when ``TrainSpec.train_subset`` is None (MNIST and Fashion-MNIST).
_N_TRAIN = 60000


# ================================================================================================
# Linear relaxations of the activations
# ================================================================================================

class Relaxation(NamedTuple):
    """Two lines enclosing σ on [l, u], elementwise: ``lower_slope·z + lower_intercept ≤ σ(z) ≤
    upper_slope·z + upper_intercept`` for every z in [l, u]. Each field has the shape of l."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def _tangent(act: Activation, d: Tensor) -> Tuple[Tensor, Tensor]:
    k = act.d1(d)
    return k, act.fn(d) - k * d


def _relu_relaxation(lower: Tensor, upper: Tensor, relu_lower: str = "adaptive") -> Relaxation:
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


def _chord(act: Activation, l: Tensor, u: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """σ(l), σ(u) and the chord through them, slope k and intercept b (k = 0 where l = u)."""
    fl, fu = act.fn(l), act.fn(u)
    width = u - l
    k = (fu - fl) / torch.where(width > 0, width, torch.ones_like(width))
    return fl, fu, k, fl - k * l


def _s_shaped_relaxation(act: Activation, lower: Tensor, upper: Tensor) -> Relaxation:
    """CROWN-general's rules for σ convex on (−∞, 0] and concave on [0, ∞) (sigmoid, tanh)."""
    l, u = lower, upper
    fl, fu, chord_k, chord_b = _chord(act, l, u)
    mid_k, mid_b = _tangent(act, (l + u) / 2)
    convex, concave = u <= 0, l >= 0
    mixed = ~convex & ~concave
    # Straddling 0: the chord is above σ iff σ'(u) ≥ chord slope, below σ iff σ'(l) ≥ it;
    # otherwise use the tangent line through the opposite end point, touching σ at d.
    ld, ud = l.detach(), u.detach()
    fld, fud = fl.detach(), fu.detach()
    need_up = mixed & (act.d1(u) < chord_k)
    need_lo = mixed & (act.d1(l) < chord_k)
    if bool(need_up.any()):
        # φ(d) = σ(d) + σ'(d)(l − d) − σ(l), increasing on [0, u]; any d with φ(d) ≥ 0 is sound.
        def phi(d):
            return act.fn(d) + act.d1(d) * (ld - d) - fld
        d_up = _bisect_increasing(phi, torch.zeros_like(ud), ud.clamp_min(0), "hi",
                                  TANGENT_BISECTION_STEPS)
    else:
        d_up = torch.zeros_like(ud)
    if bool(need_lo.any()):
        # ψ(d) = σ(d) + σ'(d)(u − d) − σ(u), increasing on [l, 0]; any d with ψ(d) ≤ 0 is sound.
        def psi(d):
            return act.fn(d) + act.d1(d) * (ud - d) - fud
        d_lo = _bisect_increasing(psi, ld.clamp_max(0), torch.zeros_like(ld), "lo",
                                  TANGENT_BISECTION_STEPS)
    else:
        d_lo = torch.zeros_like(ld)
    up_t_k, up_t_b = _tangent(act, d_up)
    lo_t_k, lo_t_b = _tangent(act, d_lo)
    k_up = torch.where(convex, chord_k, torch.where(concave, mid_k,
                                                    torch.where(need_up, up_t_k, chord_k)))
    b_up = torch.where(convex, chord_b, torch.where(concave, mid_b,
                                                    torch.where(need_up, up_t_b, chord_b)))
    k_lo = torch.where(concave, chord_k, torch.where(convex, mid_k,
                                                     torch.where(need_lo, lo_t_k, chord_k)))
    b_lo = torch.where(concave, chord_b, torch.where(convex, mid_b,
                                                     torch.where(need_lo, lo_t_b, chord_b)))
    return _endpoint_guard(Relaxation(k_lo, b_lo, k_up, b_up), l, u, fl, fu)


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


#: Lower lines of an unstable ReLU: ``"adaptive"`` (CROWN) or ``"parallel"`` (Fast-Lin, the
#: lower line of Wong & Kolter's dual, slope u/(u − l)).
RELU_LOWER = ("adaptive", "parallel")


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
      d ∈ [l, 0] (lower), d found by bisection and taken on the sound side of the root.

    Args:
        activation: ``"relu"``, ``"softplus"``, ``"sigmoid"``, ``"tanh"`` or an Activation.
        lower, upper: intervals, same shape, lower ≤ upper (any dtype and device).
        relu_lower: ``"adaptive"`` (default) or ``"parallel"``; ReLU only.

    Returns:
        :class:`Relaxation` of slopes and intercepts, each of the shape of ``lower``;
        differentiable in ``lower``, ``upper`` (the tangent points found by bisection are
        treated as constants).

    Raises:
        ValueError: shapes differ or lower > upper somewhere.
        NotImplementedError: an activation without a relaxation rule.
    """
    act = get_activation(activation)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("every interval must satisfy lower <= upper")
    if relu_lower not in RELU_LOWER:
        raise ValueError(f"relu_lower={relu_lower!r} is invalid: expected one of {list(RELU_LOWER)}")
    if act.name == "relu":
        return _relu_relaxation(lower, upper, relu_lower)
    if act.name == "softplus":
        return _convex_relaxation(act, lower, upper)
    if act.name in ("sigmoid", "tanh"):
        return _s_shaped_relaxation(act, lower, upper)
    raise NotImplementedError(f"no CROWN relaxation for activation {act.name!r}")


# ================================================================================================
# Argument checks and parameters
# ================================================================================================

def _params(model, dtype: torch.dtype, device: torch.device) -> Tuple[List[Tensor], List[Tensor]]:
    Ws = [w.to(device=device, dtype=dtype) for w in model.weights]
    bs = [b.to(device=device, dtype=dtype) for b in model.biases]
    return Ws, bs


def _check_x(model, x: Tensor, dtype: Optional[torch.dtype]) -> Tuple[Tensor, torch.dtype]:
    x = model.check_input(x)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    return x.to(dtype), dtype


def _check_eps(eps, B: int, x: Tensor) -> Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(B)
    if e.shape != (B,):
        raise ValueError(f"eps must be a float or a tensor of shape ({B},), got shape {tuple(e.shape)}")
    if bool(torch.isnan(e).any()) or bool(torch.isinf(e).any()) or bool((e < 0).any()):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return e


def _check_labels(model, y: Tensor, B: int, device, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape ({B},)")
    y = y.to(device=device, dtype=torch.int64).reshape(-1)
    if y.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},) to match x, got {tuple(y.shape)}")
    C = model.num_classes
    if B and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"{name} must lie in [0, {C - 1}]")
    return y


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: expected one of {list(METHODS)}")
    return method


# ================================================================================================
# Interval bound propagation
# ================================================================================================

def _ibp(act: Activation, Ws: Sequence[Tensor], bs: Sequence[Tensor], x: Tensor,
         eps: Tensor) -> List[Tuple[Tensor, Tensor]]:
    """IBP intervals of z^(1), …, z^(L-1) (the hidden pre-activations)."""
    centre = x @ Ws[0].t() + bs[0]
    radius = eps[:, None] * Ws[0].norm(dim=1)[None, :]
    out = [(centre - radius, centre + radius)]
    for W, b in zip(Ws[1:-1], bs[1:-1]):
        lo, hi = out[-1]
        a_lo, a_hi = act.fn(lo), act.fn(hi)          # σ is monotone increasing
        c, r = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
        centre = c @ W.t() + b
        radius = r @ W.abs().t()
        out.append((centre - radius, centre + radius))
    return out


def _ibp_spec(act: Activation, W: Tensor, b: Tensor, last: Tuple[Tensor, Tensor],
              spec: Tensor) -> Tensor:
    """IBP lower bound of S z^(L) with the last layer merged into S: (B, R)."""
    lo, hi = last
    a_lo, a_hi = act.fn(lo), act.fn(hi)
    c, r = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
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
    """
    x, dtype = _check_x(model, x, dtype)
    e = _check_eps(eps, x.shape[0], x)
    Ws, bs = _params(model, dtype, x.device)
    act = model.activation
    hidden = _ibp(act, Ws, bs, x, e)
    lo, hi = hidden[-1]
    a_lo, a_hi = act.fn(lo), act.fn(hi)
    c, r = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
    centre = c @ Ws[-1].t() + bs[-1]
    radius = r @ Ws[-1].abs().t()
    return hidden + [(centre - radius, centre + radius)]


# ================================================================================================
# CROWN back-substitution
# ================================================================================================

def _backsub(Ws: Sequence[Tensor], bs: Sequence[Tensor], relax: Sequence[Relaxation], x: Tensor,
             eps: Tensor, Lam: Tensor, layer: int) -> Tensor:
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


def _crown_hidden_bounds(act: Activation, Ws, bs, x: Tensor, eps: Tensor,
                         ibp: Optional[List[Tuple[Tensor, Tensor]]],
                         relu_lower: str = "adaptive") -> Tuple[List[Tuple[Tensor, Tensor]], List[Relaxation]]:
    """CROWN intervals of every hidden layer (intersected with ``ibp`` when given)."""
    B = x.shape[0]
    centre = x @ Ws[0].t() + bs[0]
    radius = eps[:, None] * Ws[0].norm(dim=1)[None, :]
    bounds = [(centre - radius, centre + radius)]          # exact for the first layer
    relax = [linear_relaxation(act, *bounds[0], relu_lower=relu_lower)]
    for m in range(2, len(Ws)):                            # hidden layers 2 … L−1
        N = Ws[m - 1].shape[0]
        widest = max(W.shape[0] for W in Ws[:m])
        if ibp is not None:
            lo_i, hi_i = ibp[m - 1]
            if act.name == "relu":
                # Only neurons unstable under IBP need CROWN: a stable ReLU's relaxation is exact.
                rows = torch.nonzero(((lo_i < 0) & (hi_i > 0)).any(dim=0)).flatten()
            else:
                rows = torch.arange(N, device=x.device)
            lo, hi = lo_i.clone(), hi_i.clone()
        else:
            rows = torch.arange(N, device=x.device)
            lo = torch.full((B, N), -math.inf, dtype=x.dtype, device=x.device)
            hi = torch.full((B, N), math.inf, dtype=x.dtype, device=x.device)
        eye = torch.eye(N, dtype=x.dtype, device=x.device)
        step = max(1, _rows_per_chunk(B, widest) // 2)
        for start in range(0, rows.numel(), step):
            idx = rows[start:start + step]
            Lam = torch.cat([eye[idx], -eye[idx]], dim=0)  # lower bounds of z and of −z
            out = _backsub(Ws, bs, relax, x, eps, Lam, m)
            n = idx.numel()
            lo[:, idx] = torch.maximum(lo[:, idx], out[:, :n])
            hi[:, idx] = torch.minimum(hi[:, idx], -out[:, n:])
        hi = torch.maximum(hi, lo)   # guard: rounding can cross them on zero-width intervals
        bounds.append((lo, hi))
        relax.append(linear_relaxation(act, lo, hi, relu_lower=relu_lower))
    return bounds, relax


def _spec_bound(model, x: Tensor, e: Tensor, spec: Tensor, method: str, intersect_ibp: bool,
                relu_lower: str = "adaptive") -> Tensor:
    Ws, bs = _params(model, x.dtype, x.device)
    act = model.activation
    L = len(Ws)
    need_ibp = method in ("ibp", "crown-ibp") or intersect_ibp
    ibp = _ibp(act, Ws, bs, x, e) if need_ibp else None
    if method == "ibp":
        return _ibp_spec(act, Ws[-1], bs[-1], ibp[-1], spec)
    if method == "crown-ibp":
        relax = [linear_relaxation(act, lo, hi, relu_lower=relu_lower) for lo, hi in ibp]
    else:
        _, relax = _crown_hidden_bounds(act, Ws, bs, x, e, ibp if intersect_ibp else None, relu_lower)
    B, R = spec.shape[0], spec.shape[1]
    widest = max(W.shape[0] for W in Ws[:-1])
    step = _rows_per_chunk(B, widest)
    out = torch.cat([_backsub(Ws, bs, relax, x, e, spec[:, s:s + step], L)
                     for s in range(0, R, step)], dim=1)
    if method == "crown" and intersect_ibp:
        out = torch.maximum(out, _ibp_spec(act, Ws[-1], bs[-1], ibp[-1], spec))
    return out


def preactivation_bounds(model, x: Tensor, eps, *, method: str = "crown",
                         dtype: Optional[torch.dtype] = None,
                         intersect_ibp: bool = True) -> List[Tuple[Tensor, Tensor]]:
    """Interval bounds of the hidden pre-activations z^(1), …, z^(L−1) over the l2 ball.

    Args:
        model: an MLP; x: (B, D); eps: float or (B,), ≥ 0.
        method: ``"crown"`` (layer-by-layer CROWN, default), ``"crown-ibp"`` or ``"ibp"``
            (both: IBP intervals).
        dtype: computation dtype (default: the model's).
        intersect_ibp: for ``"crown"``, intersect each CROWN interval with IBP's (default True).

    Returns:
        ``[(l1, u1), …, (l_{L−1}, u_{L−1})]``, each (B, N_I), sound: l ≤ z^(I)(x') ≤ u on the ball.
    """
    _check_method(method)
    x, dtype = _check_x(model, x, dtype)
    e = _check_eps(eps, x.shape[0], x)
    Ws, bs = _params(model, dtype, x.device)
    act = model.activation
    ibp = _ibp(act, Ws, bs, x, e) if (method != "crown" or intersect_ibp) else None
    if method != "crown":
        return ibp
    bounds, _ = _crown_hidden_bounds(act, Ws, bs, x, e, ibp)
    return bounds


def spec_lower_bound(model, x: Tensor, eps, spec: Tensor, *, method: str = "crown",
                     dtype: Optional[torch.dtype] = None, intersect_ibp: bool = True,
                     relu_lower: str = "adaptive") -> Tensor:
    """Sound lower bounds of a linear specification of the logits over the l2 ball.

    .. math::
        \\underline{s}_{b,r} \\le \\min_{\\|x' - x_b\\|_2 \\le ε_b} (S_b\\, z^{(L)}(x'))_r

    Args:
        model: an :class:`~crc_core.models.MLP` (relu, softplus, sigmoid, tanh).
        x: (B, D) centres (or (B, ...) with D entries), finite.
        eps: the radius, a float or a (B,) tensor, finite, ≥ 0.
        spec: S, (R, C) shared or (B, R, C) per input.
        method: ``"crown"`` (default), ``"crown-ibp"`` or ``"ibp"`` (module docstring).
        dtype: computation dtype (default: the model's parameters').
        intersect_ibp: ``"crown"`` only: intersect with IBP (default True; see the module docstring).
        relu_lower: lower line of unstable ReLUs, ``"adaptive"`` (CROWN, default) or
            ``"parallel"`` (Fast-Lin; with ``intersect_ibp=False`` this is exactly the Wong &
            Kolter dual bound, :mod:`crc_core.baselines.coap`).

    Returns:
        (B, R) lower bounds on x's device in ``dtype``; differentiable in the model's
        parameters (used for training).

    Raises:
        ValueError: bad shapes, NaN, eps < 0, unknown method.
    """
    _check_method(method)
    x, dtype = _check_x(model, x, dtype)
    B = x.shape[0]
    e = _check_eps(eps, B, x)
    if not isinstance(spec, Tensor) or spec.dim() not in (2, 3) or spec.shape[-1] != model.num_classes:
        raise ValueError(f"spec must have shape (R, {model.num_classes}) or (B, R, {model.num_classes}), "
                         f"got {tuple(getattr(spec, 'shape', ()))}")
    spec = spec.to(device=x.device, dtype=dtype)
    if spec.dim() == 2:
        spec = spec.unsqueeze(0).expand(B, -1, -1)
    if spec.shape[0] != B:
        raise ValueError(f"spec must have {B} rows in its first dimension to match x, got {spec.shape[0]}")
    if relu_lower not in RELU_LOWER:
        raise ValueError(f"relu_lower={relu_lower!r} is invalid: expected one of {list(RELU_LOWER)}")
    return _spec_bound(model, x, e, spec, method, intersect_ibp, relu_lower)


def margin_matrix(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """S with rows e_y − e_t for every t: (B, C, C); row y is zero.

    Args:
        y: (B,) int64 labels; num_classes: C; dtype: of the result.
    """
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[None, :, :]


def margin_lower_bounds(model, x: Tensor, y: Tensor, eps, *, method: str = "crown",
                        dtype: Optional[torch.dtype] = None, intersect_ibp: bool = True,
                        relu_lower: str = "adaptive") -> Tensor:
    """Lower bounds of every margin f_t = z_y − z_t over the l2 ball, all targets at once.

    .. math::
        \\underline{f}_{b,t} \\le \\min_{\\|x' - x_b\\|_2 \\le ε_b} z_{y_b}(x') - z_t(x')

    Args:
        model, x, eps, method, dtype, intersect_ibp, relu_lower: as in :func:`spec_lower_bound`.
        y: (B,) int64 labels.

    Returns:
        (B, C); column y is 0 (the margin against itself). ``min`` over t ≠ y > 0 certifies
        that no point of the ball changes the label.
    """
    x, dtype = _check_x(model, x, dtype)
    y = _check_labels(model, y, x.shape[0], x.device)
    spec = margin_matrix(y, model.num_classes, dtype)
    out = spec_lower_bound(model, x, eps, spec, method=method, dtype=dtype,
                           intersect_ibp=intersect_ibp, relu_lower=relu_lower)
    return out.scatter(1, y[:, None], 0.0)


def margin_lower_bound(model, x: Tensor, y: Tensor, t: Tensor, eps, *, method: str = "crown",
                       dtype: Optional[torch.dtype] = None, intersect_ibp: bool = True) -> Tensor:
    """Sound lower bound of f = z_y − z_t over the l2 ball {x' : ‖x' − x‖₂ ≤ ε} (no box).

    .. math::
        \\underline{f}_b \\le \\min_{\\|x' - x_b\\|_2 \\le ε_b} z_{y_b}(x') - z_{t_b}(x')

    CROWN-general by default (module docstring): a positive value proves that no point of the
    ball is classified as t. The bound is exact at ε = 0 (up to rounding) and decreases as ε
    grows.

    Args:
        model: an :class:`~crc_core.models.MLP` (relu, softplus, sigmoid or tanh).
        x: (B, D) centres (or (B, ...) with D entries), finite.
        y: (B,) int64 labels; t: (B,) int64 targets, t ≠ y.
        eps: the radius ε, a float or a (B,) tensor, finite, ≥ 0.
        method: ``"crown"`` (default), ``"crown-ibp"`` or ``"ibp"``.
        dtype: computation dtype (default: the model's parameters').
        intersect_ibp: ``"crown"`` only: also use IBP (default True).

    Returns:
        (B,) lower bounds, on x's device in ``dtype``.

    Raises:
        ValueError: bad shapes, NaN, eps < 0 or NaN, t == y, unknown method.

    Example:
        >>> lb = margin_lower_bound(model, x, y, attacks.runner_up(model(x), y), eps=0.5)
        >>> certified = lb > 0
    """
    x, dtype = _check_x(model, x, dtype)
    B = x.shape[0]
    y = _check_labels(model, y, B, x.device)
    t = _check_labels(model, t, B, x.device, name="t")
    if bool((t == y).any()):
        raise ValueError("t must differ from y for every sample")
    eye = torch.eye(model.num_classes, dtype=dtype, device=x.device)
    spec = (eye[y] - eye[t])[:, None, :]
    return spec_lower_bound(model, x, eps, spec, method=method, dtype=dtype,
                            intersect_ibp=intersect_ibp)[:, 0]


# ================================================================================================
# The certificate
# ================================================================================================

@dataclass
class CrownCertificate:
    """The CROWN certificate of a batch, as returned by :func:`certify`.

    Attributes:
        radius: (B,) certified l2 radius: the bound at ε = radius is positive, so no x' with
            ‖x' − x‖ ≤ radius is classified as the target (any class ≠ y for "all"). 0 for
            misclassified inputs; at most ``eps_max``.
        target: (B,) int64: the runner-up class (or the given target), or for "all" the class
            with the smallest lower bound at ``radius`` (the predicted class for misclassified
            inputs).
        lower_bound: (B,) the margin lower bound at ε = radius (the margin itself where
            radius = 0).
        upper: (B,) the smallest ε found not certified (``inf`` if none: radius = eps_max);
            radius ≤ the largest certifiable ε < upper when the bound is monotone in ε.
        misclassified: (B,) bool.
        method: the bounding method (``"crown"`` …).
        eps_max, tol: the search range and final bracket width.
        evaluations: number of batched bound evaluations.
    """

    radius: Tensor
    target: Tensor
    lower_bound: Tensor
    upper: Tensor
    misclassified: Tensor
    method: str
    eps_max: float
    tol: float
    evaluations: int


#: Search strategies of :func:`certify`.
SEARCHES = ("illinois", "bisection")


def _first_order_radius(model, x: Tensor, y: Tensor, spec: Tensor) -> Tensor:
    """min over the spec rows of f_r(x) / ‖∇f_r(x)‖ (an estimate of the distance to the boundary)."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        logits = model(xr.to(next(model.parameters()).dtype)).to(x.dtype)
        vals = (spec @ logits[:, :, None]).squeeze(-1)          # (B, R)
        out = torch.full_like(vals, math.inf)
        for r in range(spec.shape[1]):
            if bool((spec[:, r] != 0).any()):
                g, = torch.autograd.grad(vals[:, r].sum(), xr, retain_graph=True)
                est = vals[:, r].detach() / g.norm(dim=1).clamp_min(1e-12)
                out[:, r] = torch.where((spec[:, r] != 0).any(dim=1), est, out[:, r])
    return out.min(dim=1).values


def certify(model, x: Tensor, y: Tensor, targets: Union[str, Tensor] = "runner-up", *,
            eps_max: float = 5.0, tol: float = 1e-3, method: str = "crown",
            dtype: Optional[torch.dtype] = None, intersect_ibp: bool = True,
            search: str = "illinois", max_evaluations: Optional[int] = None) -> CrownCertificate:
    """The largest l2 radius that CROWN certifies, by a bracketing search on ε (Table 5b).

    .. math::
        r = \\max \\{ε \\in [0, ε_{\\max}] : \\underline{f}(ε) > 0\\}
        \\quad \\text{to within } \\texttt{tol}

    Guarantee: the returned ``radius`` is always an ε at which the lower bound was computed and
    found positive (or 0), so it is sound whether or not the bound is monotone in ε: no x' with
    ‖x' − x‖ ≤ radius is classified as the target. When the bound is monotone, the largest
    certifiable ε lies in [radius, radius + tol] (or radius = eps_max). Misclassified inputs
    get 0. Sound up to the rounding of ``dtype`` (pass ``torch.float64`` for a float64
    computation).

    Search: ``"illinois"`` (default) brackets the root of ε ↦ f̲(ε) starting from the
    first-order estimate f(x)/‖∇f(x)‖ (doubling until a failure), then regula falsi with the
    Illinois modification, steps kept tol/2 inside the bracket and a bisection step whenever the
    bracket shrinks by less than 40%: typically 5-8 evaluations. ``"bisection"``: ε_max, then
    ⌈log2(ε_max / tol)⌉ halvings.

    Args:
        model: an :class:`~crc_core.models.MLP` (relu, softplus, sigmoid, tanh).
        x: (B, D) inputs; y: (B,) int64 labels.
        targets: ``"runner-up"`` (default: the largest other logit at x, the paper's choice),
            ``"all"`` (every t ≠ y: all margins bounded at once, the minimum certified), or a
            (B,) int64 tensor of targets ≠ y.
        eps_max: upper end of the search (default 5.0); a radius of ``eps_max`` means "at least".
        tol: final bracket width (default 1e-3).
        method: ``"crown"`` (default), ``"crown-ibp"`` or ``"ibp"``.
        dtype: computation dtype (default: the model's parameters').
        intersect_ibp: as in :func:`margin_lower_bound`.
        search: ``"illinois"`` (default) or ``"bisection"``.
        max_evaluations: cap on batched evaluations (default: 2⌈log2(ε_max/tol)⌉ + 6).

    Returns:
        :class:`CrownCertificate`.

    Raises:
        ValueError: bad shapes, unknown ``targets``, ``method`` or ``search``, eps_max ≤ 0,
            tol ≤ 0.

    Example:
        >>> cert = certify(model, x, y, targets="all")
        >>> cert.radius.mean()
    """
    _check_method(method)
    if search not in SEARCHES:
        raise ValueError(f"search={search!r} is invalid: expected one of {list(SEARCHES)}")
    if isinstance(eps_max, bool) or not (isinstance(eps_max, (int, float)) and math.isfinite(eps_max)
                                         and eps_max > 0):
        raise ValueError(f"eps_max must be a finite number > 0, got {eps_max!r}")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    x, dtype = _check_x(model, x, dtype)
    B = x.shape[0]
    y = _check_labels(model, y, B, x.device)
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).dtype)).to(dtype)
    wrong = logits.argmax(dim=1) != y
    C = model.num_classes
    eye = torch.eye(C, dtype=dtype, device=x.device)
    t = None
    if isinstance(targets, str):
        if targets == "runner-up":
            t = runner_up(logits, y)
        elif targets != "all":
            raise ValueError(f"targets={targets!r} is invalid: expected 'runner-up', 'all' or a (B,) tensor")
    else:
        t = _check_labels(model, targets, B, x.device, name="targets")
        if bool((t == y).any()):
            raise ValueError("targets must differ from y for every sample")
    spec = margin_matrix(y, C, dtype) if t is None else (eye[y] - eye[t])[:, None, :]
    steps = max(0, math.ceil(math.log2(eps_max / tol)))
    if max_evaluations is None:
        max_evaluations = 2 * steps + 6 if search == "illinois" else steps + 1

    def bound(eps: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor]:
        """(min lower bound over the targets, arg-min target) for the rows ``keep``."""
        with torch.no_grad():
            lb = _spec_bound(model, x[keep], eps, spec[keep], method, intersect_ibp)
        if t is not None:
            return lb[:, 0], t[keep]
        return lb.scatter(1, y[keep][:, None], math.inf).min(dim=1)

    inf = torch.full((B,), math.inf, dtype=dtype, device=x.device)
    lo = torch.zeros(B, dtype=dtype, device=x.device)
    hi = inf.clone()
    clean = (spec @ logits[:, :, None]).squeeze(-1)       # the bound at ε = 0 is the margin
    if t is not None:
        flo, best_t = clean[:, 0].clone(), t.clone()
    else:
        flo, best_t = clean.scatter(1, y[:, None], math.inf).min(dim=1)
    best_lb = flo.clone()
    fhi = torch.full_like(flo, -1.0)
    flo_s, fhi_s = flo.clone(), fhi.clone()                # Illinois-scaled copies
    side = torch.zeros(B, dtype=torch.int8, device=x.device)
    width_prev = inf.clone()
    bisect_next = torch.zeros(B, dtype=torch.bool, device=x.device)
    active = ~wrong
    if search == "bisection":
        p = torch.full((B,), float(eps_max), dtype=dtype, device=x.device)
    else:
        p = _first_order_radius(model, x, y, spec).clamp(min=tol, max=float(eps_max))
        p = torch.where(torch.isfinite(p), p, torch.full_like(p, float(eps_max)))
    evaluations = 0
    while bool(active.any()) and evaluations < max_evaluations:
        keep = torch.nonzero(active).flatten()
        val, arg = bound(p[keep], keep)
        evaluations += 1
        ok = val > 0
        up, down = keep[ok], keep[~ok]
        lo[up], flo[up], best_lb[up], best_t[up] = p[up], val[ok], val[ok], arg[ok]
        hi[down], fhi[down] = p[down], val[~ok]
        # Illinois: halve the stale end's value when the same end moves twice in a row.
        flo_s[up] = val[ok]
        fhi_s[up] = torch.where(side[up] == 1, fhi_s[up] / 2, fhi_s[up])
        fhi_s[down] = val[~ok]
        flo_s[down] = torch.where(side[down] == -1, flo_s[down] / 2, flo_s[down])
        side[up], side[down] = 1, -1
        width = hi - lo
        finished = (width <= tol) | (lo >= eps_max)
        active &= ~finished
        bisect_next = (width > 0.6 * width_prev) | (search == "bisection")
        width_prev = width
        # Next points.
        grow = torch.clamp(2 * lo, max=float(eps_max))
        rf = lo + (hi - lo) * flo_s / (flo_s - fhi_s)
        rf = torch.where(torch.isfinite(rf), rf, (lo + hi) / 2)
        rf = torch.minimum(torch.maximum(rf, lo + tol / 2), hi - tol / 2)
        p = torch.where(torch.isinf(hi), grow, torch.where(bisect_next, (lo + hi) / 2, rf))
    radius = torch.where(wrong, torch.zeros_like(lo), lo)
    target = torch.where(wrong, logits.argmax(dim=1), best_t)
    return CrownCertificate(radius=radius, target=target, lower_bound=best_lb, upper=hi,
                            misclassified=wrong, method=method, eps_max=float(eps_max),
                            tol=float(tol), evaluations=evaluations)


# ================================================================================================
# CROWN-IBP training
# ================================================================================================

def training_progress(spec, epoch: int, step: int) -> float:
    """Fraction of the training steps completed before this step, in [0, 1).

    Args:
        spec: a :class:`~crc_core.training.TrainSpec` (``epochs``, ``batch_size``, ``train_subset``).
        epoch: 0-based epoch; step: 0-based step within the epoch.
    """
    n = spec.train_subset if spec.train_subset is not None else _N_TRAIN
    per_epoch = math.ceil(n / spec.batch_size)
    return (epoch * per_epoch + step) / (spec.epochs * per_epoch)


def _ramp(progress: float) -> float:
    """0 before WARMUP_FRACTION, 1 after RAMP_END_FRACTION, linear between."""
    span = RAMP_END_FRACTION - WARMUP_FRACTION
    return min(1.0, max(0.0, (progress - WARMUP_FRACTION) / span))


def crown_ibp_schedule(spec, epoch: int, step: int) -> Tuple[float, float, float]:
    """(ε, κ, β) of CROWN-IBP at a training step (Zhang et al. 2019, Section 4).

    With r = the ramp fraction (0 during the first ``WARMUP_FRACTION`` of the steps, then
    linear to 1 at ``RAMP_END_FRACTION``):

    .. math::
        ε = r ρ, \\quad κ = 1 - r (1 - κ_{\\text{final}}), \\quad β = 1 + r (β_{\\text{final}} - 1)

    with ρ = ``spec.rho``, κ_final = :data:`FINAL_KAPPA` and β_final =
    ``spec.crown_ibp_final_beta`` (the paper tries final β in [0.8, 3]).
    """
    r = _ramp(training_progress(spec, epoch, step))
    beta_final = float(getattr(spec, "crown_ibp_final_beta", 1.0))
    return r * float(spec.rho), 1.0 - r * (1.0 - FINAL_KAPPA), 1.0 + r * (beta_final - 1.0)


def robust_cross_entropy(lower: Tensor, y: Tensor) -> Tensor:
    """CE(−f̲, y): the cross-entropy of the worst-case logits built from margin lower bounds
    (B, C) with column y = 0 (Wong & Kolter 2018; Zhang et al. 2019)."""
    return F.cross_entropy(-lower, y)


def crown_ibp_loss(model, x: Tensor, y: Tensor, spec, epoch: int, step: int) -> Tuple[Tensor, Tensor]:
    """The CROWN-IBP training loss of one batch (``method="crown-ibp"`` in :mod:`crc_core.training`).

    .. math::
        κ\\,\\mathrm{CE}(z(x), y) + (1 - κ)\\,\\mathrm{CE}\\big(-(β\\,\\underline{f}_{\\text{CROWN-IBP}}
        + (1 - β)\\,\\underline{f}_{\\text{IBP}}), y\\big)

    at the step's (ε, κ, β) from :func:`crown_ibp_schedule`; f̲ are the (B, C) margin lower
    bounds over the l2 ball of radius ε (column y = 0).

    Args:
        model: the MLP being trained (relu or softplus in the paper; any supported activation).
        x: (B, D) batch; y: (B,) labels.
        spec: the run's TrainSpec; epoch, step: 0-based position in training.

    Returns:
        (loss scalar, clean logits (B, C)).
    """
    eps, kappa, beta = crown_ibp_schedule(spec, epoch, step)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if eps > 0 and kappa < 1:
        Ws, bs = _params(model, logits.dtype, x.device)
        act = model.activation
        xb = model.check_input(x).to(logits.dtype)
        e = torch.full((xb.shape[0],), eps, dtype=logits.dtype, device=x.device)
        S = margin_matrix(y, model.num_classes, logits.dtype)
        ibp = _ibp(act, Ws, bs, xb, e)
        lower = 0
        if beta != 0:
            relax = [linear_relaxation(act, lo, hi) for lo, hi in ibp]
            lower = beta * _backsub(Ws, bs, relax, xb, e, S, len(Ws))
        if beta != 1:
            lower = lower + (1 - beta) * _ibp_spec(act, Ws[-1], bs[-1], ibp[-1], S)
        lower = lower.scatter(1, y[:, None], 0.0)
        loss = kappa * loss + (1 - kappa) * robust_cross_entropy(lower, y)
    return loss, logits
