"""Projected gradient descent in l2: the empirical attack of the paper's evaluation and audits.

The authors evaluate empirical robustness with l2 PGD toward the runner-up class: minimize the
margin

.. math::
    f(x) = z^{(L)}_y(x) - z^{(L)}_t(x) \\quad \\text{over} \\quad
    \\{x : \\|x - x^{(0)}\\|_2 \\le ρ,\\ 0 \\le x \\le 1\\}

with normalized-gradient steps of length 0.01, 200·ρ steps, a random start N(0, 0.01²), and a
projection on the ρ-ball and on the pixel box [0, 1] after every step. :func:`pgd_l2` does this,
and also attacks untargeted (the margin against the best other class) or toward given targets,
with restarts. It needs only gradients, so it works for ReLU networks (the baselines) too.

Example:
    >>> from crc_core import MLP, attacks
    >>> model = MLP([784, 64, 10], activation="softplus")
    >>> x, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
    >>> x_adv = attacks.pgd_l2(model, x, y, rho=0.5, steps=20)
    >>> bool(((x_adv - x).norm(dim=1) <= 0.5 + 1e-6).all())
    True
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from . import checks
from .checks import runner_up

Tensor = torch.Tensor

__all__ = ["pgd_l2", "pgd_success", "margin", "runner_up", "project_l2_ball", "TARGET_MODES"]

#: The words of :data:`crc_core.checks.TARGET_WORDS` that :func:`pgd_l2` accepts.
TARGET_MODES = ("runner-up", "untargeted")

#: Standard deviation of the random start (the authors' N(0, 0.01²)).
RANDOM_START_STD = 0.01

#: Steps per unit of ρ when ``steps`` is not given (the authors' 200·ρ).
STEPS_PER_RHO = 200


def margin(logits: Tensor, y: Tensor, targets: Union[str, Tensor] = "untargeted") -> Tensor:
    """The margin that the attacks minimize; negative means the label changed (toward t).

    .. math::
        \\text{targeted: } z_y - z_t, \\qquad \\text{untargeted: } z_y - \\max_{j \\ne y} z_j

    Args:
        logits: (B, C).
        y: (B,) int64 labels.
        targets: ``"untargeted"`` (default), or a (B,) int64 tensor of targets t ≠ y. (The
            runner-up of ``logits`` itself gives the untargeted margin.)

    Returns:
        (B,) margins, differentiable in ``logits``.
    """
    zy = logits.gather(1, y.view(-1, 1))[:, 0]
    if isinstance(targets, str):
        checks.one_of(targets, "targets", ("untargeted",))
        other = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
        return zy - other
    return zy - logits.gather(1, targets.view(-1, 1))[:, 0]


def check_radius(rho, batch: int, dtype: torch.dtype, device) -> Tensor:
    """An l2 radius ρ (a float or a (B,) tensor) as a (B,) tensor: :func:`crc_core.checks.radius`.

    Raises:
        TypeError, ValueError: for a wrong type or shape, or ρ that is NaN, infinite or ≤ 0.
    """
    return checks.radius(rho, batch, dtype, device, name="rho")


def _check_args(model, x, y, rho, step_size, restarts, clip):
    x = checks.check_inputs(model, x)
    B = x.shape[0]
    y = checks.labels(model, y, B, x.device)
    rho_t = checks.radius(rho, B, x.dtype, x.device, name="rho")
    checks.positive(step_size, "step_size")
    restarts = checks.count(restarts, "restarts", 1)
    if clip is not None:
        lo, hi = clip
        if not lo < hi:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
    return x, y, rho_t, restarts


def project_l2_ball(x: Tensor, x0: Tensor, rho: Tensor) -> Tensor:
    """Project each row of x onto the ball ‖x − x0‖ ≤ ρ (ρ of shape (B,)).

    A second, slightly shrinking pass absorbs the rounding of x0 + u in low precision, so the
    result is in the ball as computed (in float32 too).
    """
    tiny = torch.finfo(x.dtype).tiny
    u = x - x0
    x = x0 + u * torch.clamp(rho[:, None] / u.norm(dim=1, keepdim=True).clamp_min(tiny), max=1.0)
    d = (x - x0).norm(dim=1, keepdim=True)
    shrink = torch.clamp(rho[:, None] / d.clamp_min(tiny) * (1 - 4 * torch.finfo(x.dtype).eps), max=1.0)
    return torch.where(d > rho[:, None], x0 + (x - x0) * shrink, x)


def _project(x: Tensor, x0: Tensor, rho: Tensor, clip) -> Tensor:
    """Onto the ρ-ball around x0, then onto the box (which keeps x in the ball when x0 is in it)."""
    x = project_l2_ball(x, x0, rho)
    if clip is not None:
        x = x.clamp(clip[0], clip[1])
    return x


def pgd_l2(model, x: Tensor, y: Tensor, rho, steps: Optional[int] = None, step_size: float = 0.01,
           targets: Union[str, Tensor] = "runner-up", restarts: int = 1, random_start: bool = True,
           generator: Optional[torch.Generator] = None,
           clip: Optional[Tuple[float, float]] = (0.0, 1.0), return_margin: bool = False):
    """l2 projected gradient descent on the margin (the authors' evaluation attack).

    .. math::
        x \\leftarrow Π_{[0,1]^D}\\, Π_{\\|x - x^{(0)}\\| \\le ρ}
        \\Big(x - α \\frac{\\nabla_x \\ell(x)}{\\|\\nabla_x \\ell(x)\\|}\\Big),\\qquad
        \\ell = z_y - z_t \\text{ (targeted) or } z_y - \\max_{j \\ne y} z_j \\text{ (untargeted)}

    Each restart starts from x0 + N(0, 0.01²) (``random_start``) projected on the set, and
    runs ``steps`` normalized-gradient steps. The point returned per sample is the iterate with
    the lowest margin over all steps and restarts (the most adversarial one seen; the margin is
    measured with the same loss, so for a target t ``margin < 0`` means the label moved to t
    or elsewhere). The attack is empirical: it gives an upper bound on the distance to the
    decision boundary, never a certificate. Model parameters' ``.grad`` are left untouched.

    Args:
        model: an :class:`~crc_core.models.MLP` (any activation, ReLU included).
        x: inputs (B, D) (or (B, ...) with D entries), finite.
        y: true labels (B,), int64; an int is broadcast to every sample
            (:func:`crc_core.checks.labels`).
        rho: ball radius ρ > 0, a float or a (B,) tensor.
        steps: steps per restart; default ``ceil(200·max ρ)`` (the authors' 200·ρ).
        step_size: step length α (default 0.01).
        targets: ``"runner-up"`` (default; the largest other logit at x, fixed for the run),
            ``"untargeted"`` (margin against the best other class at each step), or a (B,)
            int64 tensor of targets t ≠ y (an int is broadcast). The words are those of
            :data:`TARGET_MODES`, a subset of :data:`crc_core.checks.TARGET_WORDS`.
        restarts: independent runs per sample (default 1); the best one is kept.
        random_start: start from x0 plus N(0, 0.01²) noise (default True); otherwise from x0.
        generator: a ``torch.Generator`` for the random start (default: the global RNG). Its
            device is used to draw the noise.
        clip: the pixel box (default (0, 1)); ``None`` for no box.
        return_margin: also return the margins at the returned points (default False).

    Returns:
        x_adv (B, D) in x's dtype, with ‖x_adv − x0‖ ≤ ρ and inside ``clip``; with
        ``return_margin``, the pair ``(x_adv, margin (B,))``.

    Raises:
        ValueError: bad shapes, NaN (naming the first bad row), labels outside [0, C), ρ ≤ 0 or
            NaN, unknown ``targets``, a target equal to y (naming the index), step_size ≤ 0,
            restarts < 1, steps < 0.
        TypeError: x, y or ρ of the wrong Python type.

    Example:
        >>> x_adv, marg = pgd_l2(model, x, y, 1.58, return_margin=True)
        >>> fooled = marg < 0
    """
    x0, y, rho_t, restarts = _check_args(model, x, y, rho, step_size, restarts, clip)
    x0 = x0.detach()
    if isinstance(targets, str) and targets == "runner-up":
        with torch.no_grad():
            logits = model(x0)
    else:
        logits = None
    t = checks.targets(model, y, targets, allowed=TARGET_MODES, logits=logits)
    if steps is None:
        steps = int(math.ceil(STEPS_PER_RHO * float(rho_t.max()))) if rho_t.numel() else 0
    steps = checks.count(steps, "steps", 0)

    def loss_and_grad(xc):
        with torch.enable_grad():
            xc = xc.detach().requires_grad_(True)
            loss = margin(model(xc), y, t)
            grad, = torch.autograd.grad(loss.sum(), xc)
        return loss.detach(), grad

    best_x = x0.clone()
    with torch.no_grad():
        best_m = margin(model(x0), y, t)
    for _ in range(restarts):
        xc = x0
        if random_start:
            dev = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
            xc = _project(x0 + RANDOM_START_STD * noise, x0, rho_t, clip)
        for k in range(steps + 1):
            loss, grad = loss_and_grad(xc)
            better = loss < best_m
            best_m = torch.where(better, loss, best_m)
            best_x = torch.where(better[:, None], xc, best_x)
            if k == steps:
                break
            gn = grad.norm(dim=1, keepdim=True)
            direction = grad / gn.clamp_min(1e-30)
            xc = _project(xc - step_size * direction, x0, rho_t, clip)
    if return_margin:
        return best_x, best_m
    return best_x


def pgd_success(model, x: Tensor, y: Tensor, rho, **kwargs) -> Tensor:
    """Whether :func:`pgd_l2` finds a point in the ρ-ball whose predicted class is not y.

    Args:
        model, x, y, rho: as in :func:`pgd_l2`.
        **kwargs: passed to :func:`pgd_l2` (``targets``, ``steps``, ``restarts``, …).

    Returns:
        (B,) bool. Empirical robust accuracy = mean of ``(model(x).argmax(1) == y) & ~success``.
    """
    x_adv = pgd_l2(model, x, y, rho, **kwargs)
    y = checks.labels(model, y, x_adv.shape[0], x_adv.device)
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y
