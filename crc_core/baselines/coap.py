"""COAP: the convex outer adversarial polytope in l2 (Wong et al. 2018), a baseline of Tables 3-4.

A thin adapter over the ``convex_adversarial`` package (0.4.4, the authors' code): our
:class:`~crc_core.models.MLP` (ReLU) becomes the ``nn.Sequential`` of ``Linear`` / ``ReLU`` the
package expects — sharing the same ``nn.Linear`` modules, so gradients reach the MLP — and the
package's dual network gives, for the l2 ball :math:`\\{x' : \\|x' - x\\|_2 \\le ε\\}` (no box),

.. math::
    J_t(x, ε) \\le \\min_{\\|x' - x\\|_2 \\le ε} z_y(x') - z_t(x'),

the dual objective of the LP relaxation of the ReLU network (Wong & Kolter 2018, Theorem 1),
evaluated at the feasible dual point the package constructs: a sound lower bound of every margin
(with ``norm_type="l2"``, the exact dual norm). :func:`margin_lower_bounds` returns it.

Training (:func:`coap_loss`, ``method="coap"`` in :mod:`crc_core.training`) minimizes the robust
cross-entropy CE(−J, y) at the step's ε (:func:`coap_schedule`: linear from
:data:`START_EPS` to ρ over the first :data:`RAMP_END_FRACTION` of the steps, as the authors'
``starting_epsilon`` / ``schedule_length``). For nets with more than two layers the training
bound uses the authors' random-projection estimate (``norm_type="l2_normal"``,
:data:`TRAIN_PROJECTIONS` projections): an estimate, not a bound, used for training only; the
certificate always uses the exact dual norm.

The package runs unmodified under torch 2.x here (checked on torch 2.13; it uses the deprecated
``torch.autograd.Variable``, still an alias of Tensor). Its ``DualNetwork`` constructor, however,
also pushes every cached dual variable through the *last* ReLU and builds that ReLU's own
per-neuron cache, although no later layer needs bounds: for a 2-layer net that is three
quarters of a training step. :class:`LeanDualNetwork` builds the same dual network from the
package's own layers without that work (same bound, checked against ``DualNetwork`` in the
tests); every bound here goes through it.

Example:
    >>> from crc_core import MLP
    >>> from crc_core.baselines import coap
    >>> model = MLP([784, 64, 10], "relu")
    >>> lb = coap.margin_lower_bounds(model, torch.rand(4, 784), torch.tensor([0, 1, 2, 3]), 0.5)
    >>> lb.shape
    torch.Size([4, 10])
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from convex_adversarial import DualNetwork
from convex_adversarial.dual_inputs import select_input
from convex_adversarial.dual_layers import DualLayer, DualReLU, select_layer

from .. import checks
from .network import computation_inputs
from .schedules import check_progress, ramp

Tensor = torch.Tensor

__all__ = ["LeanDualNetwork", "dual_margins", "to_sequential", "margin_lower_bounds", "margin_lower_bound", "coap_schedule",
           "coap_loss", "START_EPS", "RAMP_END_FRACTION", "TRAIN_PROJECTIONS"]

#: ε at the first training step (the authors' ``starting_epsilon``).
START_EPS = 1e-3
#: ε reaches ρ after this fraction of the training steps (the authors' ``schedule_length``).
RAMP_END_FRACTION = 0.5
#: Random projections of the training bound for nets with L ≥ 3 (the authors' ``--proj 50``).
TRAIN_PROJECTIONS = 50


class _LastDualReLU(DualReLU):
    """The package's DualReLU for the last ReLU: the same ``d``, ``I``, ``zl`` (all that its
    ``forward``, ``T`` and ``objective`` use) without the per-neuron cache that only its
    ``bounds`` and ``apply`` need — never called for the last ReLU."""

    def __init__(self, zl: Tensor, zu: Tensor):
        DualLayer.__init__(self)
        d = (zl >= 0).detach().type_as(zl)
        I = (zu > 0).detach() * (zl < 0).detach()
        if I.sum().item() > 0:
            d[I] += zu[I] / (zu[I] - zl[I])
        self.I_empty = I.sum().item() == 0
        self.d, self.I, self.zl, self.zu = d, I, zl, zu

    def apply(self, dual_layer):   # pragma: no cover - no layer after the last ReLU needs it
        raise RuntimeError("the last ReLU's dual layer is never applied")

    def bounds(self, network=None):   # pragma: no cover
        raise RuntimeError("no bounds are needed after the last ReLU")


class LeanDualNetwork(DualNetwork):
    """``convex_adversarial.DualNetwork`` without the work after the last ReLU.

    The package's constructor, layer by layer: ``select_input`` for the l2 ball, then
    ``select_layer`` for each layer with the intervals of every earlier dual object; here each
    new dual layer is applied to the earlier objects only while a ReLU follows (whose intervals
    need them), and the last ReLU is a :class:`_LastDualReLU`. ``forward(c)`` (inherited) is the
    dual objective J(c) ≤ min over the ball of cᵀ z^(L).

    Args:
        net: ``nn.Sequential`` of ``Linear`` / ``ReLU`` (:func:`to_sequential`).
        X: (B, D) centres; epsilon: float or (B,) tensor.
        proj, norm_type: as in the package (``"l2"`` exact, ``"l2_normal"`` with ``proj``
            random projections, an estimate for training).
    """

    def __init__(self, net: nn.Sequential, X: Tensor, epsilon, proj: Optional[int] = None,
                 norm_type: str = "l2"):
        nn.Module.__init__(self)
        layers = list(net)
        relus = [i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)]
        last_relu = relus[-1] if relus else -1
        with torch.no_grad():
            zs = [X[:1]]
            for layer in layers:
                zs.append(layer(zs[-1]))
            nf = [z.size() for z in zs]
        dual_net = [select_input(X, epsilon, proj, norm_type, False)]
        for i, (in_f, out_f, layer) in enumerate(zip(nf[:-1], nf[1:], layers)):
            if i == len(layers) - 1:
                self.last_layer = select_layer(layer, dual_net, X, proj, norm_type, in_f, out_f, zs[i])
                break
            if i == last_relu:
                zl, zu = zip(*[obj.bounds() for obj in dual_net])
                dual_layer = _LastDualReLU(sum(zl), sum(zu))
            else:
                dual_layer = select_layer(layer, dual_net, X, proj, norm_type, in_f, out_f, zs[i])
            if i < last_relu:
                for obj in dual_net:
                    obj.apply(dual_layer)
            dual_net.append(dual_layer)
        self.dual_net = dual_net


def dual_margins(net: nn.Sequential, X: Tensor, y: Tensor, epsilon, **kwargs) -> Tensor:
    """The package's ``RobustBounds`` output through :class:`LeanDualNetwork`: (B, C) with
    f_t = −J(e_y − e_t) ≥ max over the ball of z_t − z_y (f_y = 0)."""
    C = net[-1].out_features
    eye = torch.eye(C, dtype=X.dtype, device=X.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    return -LeanDualNetwork(net, X, epsilon, **kwargs)(c)


def _require_relu(model) -> None:
    if model.activation.name != "relu":
        raise ValueError(f"COAP bounds ReLU networks only, got activation {model.activation.name!r}; "
                         "use crc_core.baselines.crown for other activations")


def to_sequential(model, dtype: Optional[torch.dtype] = None) -> nn.Sequential:
    """The MLP as ``nn.Sequential(Linear, ReLU, …, Linear)`` for ``convex_adversarial``.

    Args:
        model: a ReLU :class:`~crc_core.models.MLP`.
        dtype: None (default) shares the MLP's own ``nn.Linear`` modules (gradients flow into
            the MLP); a dtype makes a detached copy in that dtype (for certification).

    Raises:
        ValueError: the activation is not ReLU.
    """
    _require_relu(model)
    mods = []
    for i, layer in enumerate(model.layers):
        if dtype is not None:
            copy = nn.Linear(layer.in_features, layer.out_features).to(device=layer.weight.device,
                                                                      dtype=dtype)
            with torch.no_grad():
                copy.weight.copy_(layer.weight)
                copy.bias.copy_(layer.bias)
            copy.requires_grad_(False)
            layer = copy
        mods.append(layer)
        if i < len(model.layers) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def margin_lower_bounds(model, x: Tensor, y: Tensor, eps, *, dtype: Optional[torch.dtype] = torch.float64,
                        batch_size: int = 32) -> Tensor:
    """COAP's sound lower bounds of every margin z_y − z_t over the l2 ball (exact dual norm).

    .. math::
        \\underline{f}_{b,t} = -J(x_b, ε_b)_t \\le \\min_{\\|x' - x_b\\|_2 \\le ε_b} z_{y_b}(x') - z_t(x')

    Args:
        model: a ReLU :class:`~crc_core.models.MLP`.
        x: (B, D) centres; y: (B,) int64 labels.
        eps: ε, a float or (B,) tensor, finite, > 0.
        dtype: computation dtype (default float64; None: the model's own, with gradients).
        batch_size: inputs per dual network (memory: the exact l2 dual carries a D × N matrix per
            input and hidden layer).

    Returns:
        (B, C), column y = 0; certified against t where > 0.

    Raises:
        ValueError: not ReLU, bad shapes, eps ≤ 0 or not finite.
    """
    _require_relu(model)
    x, dtype = computation_inputs(model, x, dtype)
    B = x.shape[0]
    y = checks.labels(model, y, B, x.device)
    e = checks.radius(eps, B, x.dtype, x.device, name="eps")
    batch_size = checks.count(batch_size, "batch_size", minimum=1)
    net = to_sequential(model, None if dtype == next(model.parameters()).dtype else dtype)
    out = []
    for s in range(0, B, int(batch_size)):
        xb, yb, eb = x[s:s + batch_size], y[s:s + batch_size], e[s:s + batch_size]
        out.append(-dual_margins(net, xb, yb, eb, norm_type="l2"))   # −f_t ≤ min (z_y − z_t)
    return torch.cat(out).scatter(1, y[:, None], 0.0)


def margin_lower_bound(model, x: Tensor, y: Tensor, t: Tensor, eps, **kwargs) -> Tensor:
    """COAP's lower bound of f = z_y − z_t over the l2 ball: (B,). Keyword arguments as in
    :func:`margin_lower_bounds`."""
    lb = margin_lower_bounds(model, x, y, eps, **kwargs)
    y, t = checks.margin_labels(model, y, t, batch=lb.shape[0], device=lb.device)
    return lb.gather(1, t[:, None])[:, 0]


def coap_schedule(spec, progress: float) -> float:
    """ε of COAP training at a point of training: linear from :data:`START_EPS` to ρ over the
    first :data:`RAMP_END_FRACTION` of the steps, then ρ.

    .. math::
        ε = ε_0 + \\min(1, p / p_{\\text{ramp}}) (ρ - ε_0), \\qquad ε_0 = \\min(\\texttt{START\\_EPS}, ρ)

    Args:
        spec: the run's TrainSpec (``rho``).
        progress: p, the fraction of the training steps done before this one, ≥ 0
            (:func:`crc_core.training.training_progress`).

    Raises:
        ValueError: progress negative or not a finite number.
    """
    r = ramp(check_progress(progress), 0.0, RAMP_END_FRACTION)
    start = min(START_EPS, float(spec.rho))
    return start + r * (float(spec.rho) - start)


def coap_loss(model, x: Tensor, y: Tensor, spec, progress: float) -> Tuple[Tensor, Tensor]:
    """The COAP training loss of one batch: CE(−J(x, ε), y), Wong et al. 2018 (robust loss only).

    Args:
        model: a ReLU MLP being trained; x: (B, D); y: (B,).
        spec: the run's TrainSpec; progress: the fraction of the training steps done (for
            :func:`coap_schedule`).

    Returns:
        (loss scalar, clean logits (B, C) detached).
    """
    _require_relu(model)
    eps = coap_schedule(spec, progress)
    net = to_sequential(model)
    xb = model.check_input(x)
    if model.num_layers >= 3:
        f = dual_margins(net, xb, y, eps, norm_type="l2_normal", proj=TRAIN_PROJECTIONS)
    else:
        f = dual_margins(net, xb, y, eps, norm_type="l2")
    with torch.no_grad():
        logits = model(xb)
    return F.cross_entropy(f, y), logits
