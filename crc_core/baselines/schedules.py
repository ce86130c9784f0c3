"""Training schedules of the baselines as functions of the training progress.

The baselines' losses (CROWN-IBP, COAP) grow their training radius ε — and CROWN-IBP its
weights κ, β — along training. Their schedules are written in the training progress

.. math::
    p = \\frac{\\text{steps done before this one}}{\\text{all steps of the run}} \\in [0, 1),

computed by :func:`crc_core.training.training_progress`, so that a schedule depends on no
data-set size nor step counter: the same p gives the same ε whatever the batch size.

Example:
    >>> ramp(0.3, start=0.05, end=0.5)
    0.5555555555555556
"""
from __future__ import annotations

import math

__all__ = ["check_progress", "ramp"]


def check_progress(progress) -> float:
    """The training progress p as a float: a finite number ≥ 0 (above 1 acts as the end).

    Raises:
        ValueError: a bool, not a number, NaN, ±inf or negative.

    Example:
        >>> check_progress(0.25)
        0.25
    """
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) \
            or not math.isfinite(progress) or progress < 0:
        raise ValueError(f"progress must be a finite number >= 0 (the fraction of the training "
                         f"steps done), got {progress!r}")
    return float(progress)


def ramp(progress: float, start: float, end: float) -> float:
    """0 before ``start``, 1 after ``end``, linear between (0 ≤ start < end ≤ 1).

    .. math::
        r(p) = \\min\\big(1, \\max(0, (p - p_0) / (p_1 - p_0))\\big)
    """
    return min(1.0, max(0.0, (progress - start) / (end - start)))
