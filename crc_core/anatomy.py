"""The anatomy of one certificate: everything the method computes for a single test image.

For an image x⁰ with label y, :func:`certificate_anatomy` gathers, in float64:

- the logits z(x⁰) and the decision;
- the sound CRC radius against every target class t ≠ y (Theorem 1, global bounds), whose
  minimum is the all-classes certificate, and for each t the dual's boundary point
  x^(cert) (on the decision boundary f = z_y − z_t = 0 when the certificate is tight);
- the CRC attack point (Definition 2, Theorem 2) against the runner-up class at radius ρ;
- the exact Hessian spectrum of f = z_y − z_t at x⁰ for the runner-up t (Lemma 1), beside the
  global curvature bounds [m, M] (Theorems 3 and 4) and the local bounds valid on the ball of
  the certified radius (Table 6).

The exploration notebook draws these (:func:`crc_core.figures.anatomy_panel`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import curvature, duality, hessian
from .checks import runner_up

Tensor = torch.Tensor

__all__ = ["Anatomy", "certificate_anatomy"]


@dataclass(frozen=True)
class Anatomy:
    """What :func:`certificate_anatomy` returns (tensors on the CPU, float64).

    Attributes:
        x: the image (D,).
        label: y.
        logits: z(x) (C,).
        predicted: argmax of the logits.
        radius: sound CRC radius per target class (C,); NaN at y.
        tight: (C,) bool, primal = dual for that target.
        boundary: the dual's boundary point per target (C, D); NaN row at y.
        target: the class attaining the minimum radius (the all-classes certificate).
        runner_up: the runner-up class t (largest logit other than y).
        rho: the radius of the attack.
        attack: the CRC attack point against t at radius ρ (D,).
        attack_margin: f(x_attack) = z_y − z_t there (negative: the attack succeeded).
        eigenvalues: the eigenvalues of ∇²f(x) for t, ascending (D,).
        global_bounds: (m, M) for (y, t), valid everywhere.
        local_bounds: (m, M) for (y, t), valid on the ball of radius ``local_radius``.
        local_radius: the radius of that ball (the runner-up certificate, at least 0.1).
    """

    x: Tensor
    label: int
    logits: Tensor
    predicted: int
    radius: Tensor
    tight: Tensor
    boundary: Tensor
    target: int
    runner_up: int
    rho: float
    attack: Tensor
    attack_margin: float
    eigenvalues: Tensor
    global_bounds: tuple
    local_bounds: tuple
    local_radius: float

    @property
    def certificate(self) -> float:
        """The all-classes certificate: the minimum radius over t ≠ y."""
        return float(self.radius[self.target])


def certificate_anatomy(model, x: Tensor, y: int, *, rho: float = 1.58) -> Anatomy:
    """Certify one image against every class and look inside (module docstring).

    Args:
        model: an :class:`~crc_core.models.MLP` with a smooth activation.
        x: one image, (D,) or (1, D).
        y: its label.
        rho: radius of the CRC attack (default 1.58, the paper's).

    Returns:
        :class:`Anatomy`. For a misclassified image every radius is 0 (nothing is certified).

    Raises:
        NoCurvatureError: a ReLU network.
        ValueError: bad shapes or label (as :func:`crc_core.duality.certify`).
    """
    model64 = _float64(model)
    x64 = x.detach().reshape(1, -1).to("cpu", torch.float64)
    C = model64.num_classes
    y = int(y)
    if not 0 <= y < C:
        raise ValueError(f"y must lie in [0, {C - 1}] (the model has {C} classes), got {y}")
    with torch.no_grad():
        logits = model64(x64)[0]
    others = torch.tensor([t for t in range(C) if t != y])
    batch = x64.expand(C - 1, -1)
    ys = torch.full((C - 1,), y, dtype=torch.int64)
    cert = duality.certify(model64, batch, ys, targets=others, progress=False)
    radius = torch.full((C,), float("nan"), dtype=torch.float64)
    radius[others] = cert.radius.cpu()
    tight = torch.zeros(C, dtype=torch.bool)
    tight[others] = cert.tight.cpu()
    boundary = torch.full((C, x64.shape[1]), float("nan"), dtype=torch.float64)
    boundary[others] = cert.x_boundary.cpu().reshape(C - 1, -1)
    target = int(others[int(torch.argmin(cert.radius.cpu()))])
    t = int(runner_up(logits[None], torch.tensor([y]))[0])

    tt, yy = torch.tensor([t]), torch.tensor([y])
    adv = duality.attack(model64, x64, yy, rho, targets=tt)
    with torch.no_grad():
        z = model64(adv.x)[0]
    H = hessian.margin_hessian(model64, x64, yy, tt)[0]
    eigenvalues = torch.linalg.eigvalsh(H)
    m, M = curvature.global_bounds(model64, yy, tt)
    local_radius = max(float(radius[t]), 0.1)
    lm, lM = curvature.local_bounds(model64, x64, yy, tt, local_radius)
    return Anatomy(x=x64[0], label=y, logits=logits, predicted=int(logits.argmax()),
                   radius=radius, tight=tight, boundary=boundary, target=target, runner_up=t,
                   rho=float(rho), attack=adv.x[0].detach().cpu(),
                   attack_margin=float(z[y] - z[t]), eigenvalues=eigenvalues,
                   global_bounds=(float(m[0]), float(M[0])),
                   local_bounds=(float(lm[0]), float(lM[0])), local_radius=local_radius)


def _float64(model):
    import copy

    return copy.deepcopy(model).to("cpu", torch.float64).eval()
