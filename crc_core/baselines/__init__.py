"""The paper's baselines: CROWN-general, CROWN-IBP (:mod:`.crown`) and COAP (:mod:`.coap`).

:data:`TRAINING_LOSSES` maps a :class:`crc_core.training.TrainSpec` method to its loss
``fn(model, x, y, spec, epoch, step) -> (loss, clean logits)``; :mod:`crc_core.training` reads it
so that ``method="crown-ibp"`` and ``method="coap"`` train through the same
:func:`crc_core.training.train` (checkpoints, resume). COAP needs the ``convex_adversarial``
package; without it ``coap`` is absent (and reported as not implemented).
"""
from __future__ import annotations

from typing import Callable, Dict

from . import crown

__all__ = ["crown", "TRAINING_LOSSES", "HAS_COAP"]

#: method → loss function, read by crc_core.training.
TRAINING_LOSSES: Dict[str, Callable] = {"crown-ibp": crown.crown_ibp_loss}

try:
    from . import coap
except ImportError:          # convex_adversarial not installed
    coap = None
    HAS_COAP = False
else:
    HAS_COAP = True
    TRAINING_LOSSES["coap"] = coap.coap_loss
    __all__.append("coap")
