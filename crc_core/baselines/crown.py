"""CROWN-general certificates in l2 (Zhang et al. 2018), the paper's baseline (Tables 3-5).

**Bounds.** For an :class:`~crc_core.models.MLP` with relu, sigmoid, tanh or softplus and the
l2 ball :math:`\\mathcal{B} = \\{x' : \\|x' - x\\|_2 \\le ε\\}` (no pixel box, as the CRC
certificate), every function here returns *sound lower bounds* of linear specifications of
the logits,

.. math::
    \\underline{s}_r \\le \\min_{x' \\in \\mathcal{B}} (S\\, z^{(L)}(x'))_r, \\qquad
    S \\in \\mathbb{R}^{R \\times C},

in particular of the margins :math:`f_t = z_y - z_t` (rows :math:`e_y - e_t`). Three methods:

- ``"ibp"`` — interval bound propagation with an l2 first layer (:mod:`.ibp`).
- ``"crown"`` — CROWN-general: each neuron's activation on its pre-activation interval
  [l, u] is enclosed by two lines :math:`α_L z + β_L \\le σ(z) \\le α_U z + β_U`
  (:mod:`.relaxations`), and :math:`Λ z^{(m)}` is bounded by back-substitution to the input
  (:mod:`.back_substitution`). The intervals of every hidden layer come from CROWN itself,
  layer by layer (rows ±I): with ``intersect_ibp=False`` this is the authors' CROWN. By
  default (``intersect_ibp=True``) the bound is the largest of three sound bounds: that one,
  CROWN again on hidden intervals intersected with IBP's, and IBP's — never looser than any of
  them (intersecting alone is not: narrower intervals can give looser relaxations).
- ``"crown-ibp"`` — CROWN-IBP (Zhang et al. 2019): IBP intervals for the hidden layers, CROWN
  back-substitution for the specification only. Cheap enough for training (:mod:`.crown_ibp`).

**Certificate.** :func:`certify` searches ε for the largest radius whose lower bound is
positive (Table 5b's mean certificate): no x' with ‖x' − x‖ ≤ ``radius`` is classified as t
(any class ≠ y for ``targets="all"``). Misclassified inputs get radius 0.

The names of the modules this one is built on (:func:`linear_relaxation`,
:func:`ibp_bounds`, :func:`margin_matrix`, :func:`crown_ibp_loss`, …) are importable from here
too.

Floating point: the bounds are computed in ``dtype`` (default: the model's); they are sound
up to that dtype's rounding (pass ``dtype=torch.float64`` for a float64 computation).

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
from typing import List, Optional, Tuple, Union

import torch

from .. import checks
from .back_substitution import METHODS, crown_hidden_bounds, spec_bound
from .crown_ibp import (FINAL_KAPPA, RAMP_END_FRACTION, WARMUP_FRACTION, crown_ibp_loss,
                        crown_ibp_schedule, robust_cross_entropy)
from .ibp import hidden_intervals, ibp_bounds
from .network import affine_layers, computation_inputs, margin_matrix
from .relaxations import RELU_LOWER, Relaxation, linear_relaxation, tangent_bisection_steps

Tensor = torch.Tensor

__all__ = [
    "METHODS", "SEARCHES", "CrownCertificate", "preactivation_bounds", "spec_lower_bound",
    "margin_lower_bounds", "margin_lower_bound", "certify",
    # re-exported from the modules this one is built on
    "Relaxation", "linear_relaxation", "RELU_LOWER", "tangent_bisection_steps", "ibp_bounds",
    "margin_matrix", "crown_ibp_schedule", "crown_ibp_loss", "robust_cross_entropy",
    "WARMUP_FRACTION", "RAMP_END_FRACTION", "FINAL_KAPPA",
]

#: Search strategies of :func:`certify`.
SEARCHES = ("illinois", "bisection")


def _eps(eps, x: Tensor) -> Tensor:
    """ε as a (B,) tensor of x's dtype: a float or (B,), finite, ≥ 0."""
    return checks.radius(eps, x.shape[0], x.dtype, x.device, name="eps", allow_zero=True)


# ------------------------------------------------------------------------------------------------
# Bounds
# ------------------------------------------------------------------------------------------------

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
    checks.one_of(method, "method", METHODS)
    x, dtype = computation_inputs(model, x, dtype)
    e = _eps(eps, x)
    Ws, bs = affine_layers(model, dtype, x.device)
    act = model.activation
    ibp = hidden_intervals(act, Ws, bs, x, e) if (method != "crown" or intersect_ibp) else None
    if method != "crown":
        return ibp
    bounds, _ = crown_hidden_bounds(act, Ws, bs, x, e, ibp)
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
        intersect_ibp: ``"crown"`` only: also bound with IBP-intersected intervals and with
            IBP, and return the largest bound (default True; see the module docstring).
        relu_lower: lower line of unstable ReLUs, ``"adaptive"`` (CROWN, default) or
            ``"parallel"`` (Fast-Lin; with ``intersect_ibp=False`` this is exactly the Wong &
            Kolter dual bound, :mod:`crc_core.baselines.coap`).

    Returns:
        (B, R) lower bounds on x's device in ``dtype``; differentiable in the model's
        parameters (used for training).

    Raises:
        ValueError: bad shapes, NaN, eps < 0, unknown method.
    """
    checks.one_of(method, "method", METHODS)
    x, dtype = computation_inputs(model, x, dtype)
    B = x.shape[0]
    e = _eps(eps, x)
    if not isinstance(spec, Tensor) or spec.dim() not in (2, 3) or spec.shape[-1] != model.num_classes:
        raise ValueError(f"spec must have shape (R, {model.num_classes}) or (B, R, {model.num_classes}), "
                         f"got {tuple(getattr(spec, 'shape', ()))}")
    spec = spec.to(device=x.device, dtype=dtype)
    if spec.dim() == 2:
        spec = spec.unsqueeze(0).expand(B, -1, -1)
    if spec.shape[0] != B:
        raise ValueError(f"spec must have {B} rows in its first dimension to match x, got {spec.shape[0]}")
    checks.one_of(relu_lower, "relu_lower", RELU_LOWER)
    return spec_bound(model, x, e, spec, method, intersect_ibp, relu_lower)


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
    x, dtype = computation_inputs(model, x, dtype)
    y = checks.labels(model, y, x.shape[0], x.device)
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
        intersect_ibp: ``"crown"`` only: also use IBP (default True; :func:`spec_lower_bound`).

    Returns:
        (B,) lower bounds, on x's device in ``dtype``.

    Raises:
        ValueError: bad shapes, NaN, eps < 0 or NaN, t == y, unknown method.

    Example:
        >>> lb = margin_lower_bound(model, x, y, attacks.runner_up(model(x), y), eps=0.5)
        >>> certified = lb > 0
    """
    x, dtype = computation_inputs(model, x, dtype)
    y, t = checks.margin_labels(model, y, t, batch=x.shape[0], device=x.device)
    eye = torch.eye(model.num_classes, dtype=dtype, device=x.device)
    spec = (eye[y] - eye[t])[:, None, :]
    return spec_lower_bound(model, x, eps, spec, method=method, dtype=dtype,
                            intersect_ibp=intersect_ibp)[:, 0]


# ------------------------------------------------------------------------------------------------
# The certificate
# ------------------------------------------------------------------------------------------------

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
    checks.one_of(method, "method", METHODS)
    checks.one_of(search, "search", SEARCHES)
    eps_max = checks.positive(eps_max, "eps_max")
    tol = checks.positive(tol, "tol")
    x, dtype = computation_inputs(model, x, dtype)
    B = x.shape[0]
    y = checks.labels(model, y, B, x.device)
    with torch.no_grad():
        logits = model(x.to(next(model.parameters()).dtype)).to(dtype)
    wrong = logits.argmax(dim=1) != y
    C = model.num_classes
    eye = torch.eye(C, dtype=dtype, device=x.device)
    t = checks.targets(model, y, targets, allowed=("runner-up", "all"), logits=logits)
    t = None if isinstance(t, str) else t                  # "all": every class at once
    spec = margin_matrix(y, C, dtype) if t is None else (eye[y] - eye[t])[:, None, :]
    steps = max(0, math.ceil(math.log2(eps_max / tol)))
    if max_evaluations is None:
        max_evaluations = 2 * steps + 6 if search == "illinois" else steps + 1

    def bound(eps: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor]:
        """(min lower bound over the targets, arg-min target) for the rows ``keep``."""
        with torch.no_grad():
            lb = spec_bound(model, x[keep], eps, spec[keep], method, intersect_ibp)
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
