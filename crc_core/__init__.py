"""crc_core: curvature-based robustness certificates and training (Singla & Feizi, ICML 2020).

Submodules, each one concept of the paper:

- :mod:`crc_core.activations` — σ, σ', σ'' and the constants g, h, h_L, h_U;
- :mod:`crc_core.models` — :class:`MLP`, fully connected nets of any depth L ≥ 2;
- :mod:`crc_core.hessian` — Lemma 1, the closed-form Hessian;
- :mod:`crc_core.curvature` — Theorems 3 and 4, refined and local curvature bounds;
- :mod:`crc_core.duality` — Theorems 1 and 2: the CRC certificate and the CRC attack;
- :mod:`crc_core.attacks` — PGD in l2;
- :mod:`crc_core.data` — MNIST and Fashion-MNIST.

Submodules are imported on first access (``crc_core.hessian``) or explicitly
(``from crc_core import hessian``).
"""
import importlib

from .models import MLP

__all__ = ["MLP"]

_SUBMODULES = {
    "activations", "models", "hessian", "curvature", "duality", "attacks", "training",
    "data", "experiments", "baselines",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
