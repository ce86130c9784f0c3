"""The paper's baselines: CROWN-general (:mod:`.crown`), CROWN-IBP (:mod:`.crown_ibp`) and COAP
(:mod:`.coap`).

Modules, one concept each, imported one way (none imports :mod:`crc_core.training`):

- :mod:`.relaxations` — linear relaxations of relu, softplus, sigmoid and tanh;
- :mod:`.network` — the MLP's affine layers in a computation dtype, the margin specification;
- :mod:`.ibp` — interval bound propagation with an exact l2 first layer;
- :mod:`.back_substitution` — CROWN's back-substitution, hidden-layer intervals;
- :mod:`.schedules` — training progress and ramps of the training schedules;
- :mod:`.crown_ibp` — the CROWN-IBP schedule and loss;
- :mod:`.crown` — the public bounds and the CROWN certificate (re-exports the names above);
- :mod:`.coap` — COAP (needs the ``convex_adversarial`` package; absent without it).

:data:`TRAINING_LOSSES` maps a :class:`crc_core.training.TrainSpec` method to its loss
``fn(model, x, y, spec, progress) -> (loss, clean logits)``, with ``progress`` the fraction of
the training steps done (:func:`crc_core.training.training_progress`); :mod:`crc_core.training`
imports it so that ``method="crown-ibp"`` and ``method="coap"`` train through the same
:func:`crc_core.training.train` (checkpoints, resume).
"""
from __future__ import annotations

from typing import Callable, Dict

from . import crown
from .crown_ibp import crown_ibp_loss

__all__ = ["crown", "TRAINING_LOSSES", "HAS_COAP"]

#: method → loss function, read by crc_core.training.
TRAINING_LOSSES: Dict[str, Callable] = {"crown-ibp": crown_ibp_loss}

try:
    from . import coap
except ImportError:          # convex_adversarial not installed
    coap = None
    HAS_COAP = False
else:
    HAS_COAP = True
    TRAINING_LOSSES["coap"] = coap.coap_loss
    __all__.append("coap")
