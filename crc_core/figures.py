"""Drawings the notebooks share, so that notebooks define no functions (matplotlib only; imported
by the notebooks, never by the method's modules).

- :func:`anatomy_panel` draws a :class:`crc_core.anatomy.Anatomy`: the image and its logits, the
  certified radius per target class (the minimum marked), the CRC attack point and the dual's
  boundary point beside the input, and the Hessian spectrum against [m, M];
- :func:`explore_image` computes and draws it for one test image (the exploration notebook's
  slider calls it).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .anatomy import Anatomy, certificate_anatomy

__all__ = ["anatomy_panel", "explore_image"]


def anatomy_panel(a: Anatomy, image_shape: Tuple[int, int] = (28, 28), classes=None):
    """A 2×3 matplotlib figure of one certificate's anatomy; returns the figure."""
    import matplotlib.pyplot as plt

    names = list(classes) if classes is not None else [str(c) for c in range(len(a.logits))]
    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5), layout="constrained")
    ax[0, 0].imshow(a.x.reshape(image_shape), cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_title(f"input: label {names[a.label]}, predicted {names[a.predicted]}")
    ax[0, 1].bar(names, a.logits.numpy(), color=["C2" if i == a.label else "C0"
                                                 for i in range(len(names))])
    ax[0, 1].set_title("logits z(x)")
    radius = a.radius.numpy()
    colors = ["C3" if i == a.target else "C0" for i in range(len(names))]
    ax[0, 2].bar(names, radius, color=colors)
    ax[0, 2].axhline(a.rho, color="k", lw=0.8, ls="--", label=f"ρ = {a.rho:g}")
    ax[0, 2].set_title(f"certified radius per target (min {radius[a.target]:.3f} at "
                       f"{names[a.target]})")
    ax[0, 2].legend()
    delta = (a.attack - a.x).norm().item()
    ax[1, 0].imshow(a.attack.clamp(0, 1).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
    ax[1, 0].set_title(f"CRC attack vs {names[a.runner_up]}: ‖δ‖ = {delta:.3f}, "
                       f"f = {a.attack_margin:.3f}")
    point = a.boundary[a.target]
    ax[1, 1].imshow(point.clamp(0, 1).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
    ax[1, 1].set_title(f"dual boundary point vs {names[a.target]}: "
                       f"‖x − x0‖ = {(point - a.x).norm().item():.3f}")
    for panel in (ax[0, 0], ax[1, 0], ax[1, 1]):
        panel.axis("off")
    ev = a.eigenvalues.numpy()
    ax[1, 2].plot(ev, ".", ms=2, color="C0", label="eigenvalues of ∇²f(x0)")
    for (m, M), style, name in ((a.global_bounds, "-", "global"),
                                (a.local_bounds, "--", f"local (R = {a.local_radius:.2f})")):
        ax[1, 2].axhline(m, color="C3", ls=style, lw=1, label=f"{name} [m, M]")
        ax[1, 2].axhline(M, color="C3", ls=style, lw=1)
    ax[1, 2].set_title(f"Hessian spectrum of z_y − z_t, t = {names[a.runner_up]} (Lemma 1)")
    ax[1, 2].set_xlabel("index (ascending)")
    ax[1, 2].legend(fontsize=8)
    return fig


def explore_image(model, X: torch.Tensor, Y: torch.Tensor, index: int = 0, rho: float = 1.58):
    """Compute :func:`crc_core.anatomy.certificate_anatomy` for test image ``index`` and draw it
    with :func:`anatomy_panel`; returns (anatomy, figure)."""
    if not 0 <= int(index) < X.shape[0]:
        raise ValueError(f"index must lie in [0, {X.shape[0] - 1}], got {index}")
    a = certificate_anatomy(model, X[int(index)], int(Y[int(index)]), rho=rho)
    return a, anatomy_panel(a)
