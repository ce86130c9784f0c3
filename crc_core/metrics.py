"""The metrics of the results store, from the per-image tables: proportions with their intervals,
sound rounding, and the summary step.

A *proportion* is ``{"value", "count", "n", "se", "ci95"}``: the fraction, its numerator and
denominator, the binomial standard error and the 95% Wilson score interval. Radii (and lower
bounds) are stored rounded down, upper bounds rounded up (:func:`round_down`, :func:`round_up`),
so a stored number is never on the unsafe side of the computed one; :func:`summarize` computes
every metric from the stored columns, so a results file's metrics always equal what its
per-image arrays give (``results/README.md`` states the rules).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .runs import EVAL_RADII, format_radius

Tensor = torch.Tensor

__all__ = ["wilson_interval", "proportion", "times_clean", "round_down", "round_up", "summarize",
           "DIGITS"]

#: Decimals of stored radii and bounds.
DIGITS = 5


# ------------------------------------------------------------------------------------------------
# Proportions
# ------------------------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """The 95% Wilson score interval of k successes in n trials ((nan, nan) for n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact at the ends (k = 0 or n), where rounding would leave the point estimate outside.
    return (0.0 if k == 0 else max(0.0, min(p, centre - half)),
            1.0 if k == n else min(1.0, max(p, centre + half)))


def proportion(flags) -> Dict[str, Any]:
    """A binomial proportion of a bool sequence: ``{"value", "count", "n", "se", "ci95"}``."""
    flags = torch.as_tensor(flags).reshape(-1).bool()
    n = int(flags.numel())
    k = int(flags.sum())
    p = k / n if n else float("nan")
    lo, hi = wilson_interval(k, n)
    return {"value": p, "count": k, "n": n,
            "se": math.sqrt(p * (1 - p) / n) if n else float("nan"), "ci95": [lo, hi]}


def times_clean(frac: Mapping[str, Any], clean: Mapping[str, Any]) -> Dict[str, Any]:
    """P(correct and robust) ≈ (subset fraction) × (clean accuracy), for what is measured on the
    subset only (PGD). Delta-method standard error (both factors); the 95% interval is the subset
    fraction's Wilson interval times the clean accuracy. ``count`` is None."""
    f, c = frac["value"], clean["value"]
    se = math.sqrt((c * frac["se"]) ** 2 + (f * clean["se"]) ** 2)
    lo, hi = frac["ci95"]
    return {"value": f * c, "count": None, "n": frac["n"], "se": se, "ci95": [lo * c, hi * c]}


def round_down(values, digits: int = DIGITS) -> List[Optional[float]]:
    """Floats rounded toward −∞ to ``digits`` decimals (None for NaN / inf): for radii and lower
    bounds, so that a stored value never exceeds the computed one."""
    return _rounded(values, digits, math.floor)


def round_up(values, digits: int = DIGITS) -> List[Optional[float]]:
    """Floats rounded toward +∞ to ``digits`` decimals (None for NaN / inf): for upper bounds."""
    return _rounded(values, digits, math.ceil)


def _rounded(values, digits: int, direction) -> List[Optional[float]]:
    scale = 10 ** digits
    out: List[Optional[float]] = []
    for v in torch.as_tensor(values).detach().double().cpu().reshape(-1).tolist():
        if not math.isfinite(v):
            out.append(None)
            continue
        r = direction(v * scale) / scale
        # v * scale and the division round: step once more if that crossed v.
        if direction is math.floor and r > v:
            r = (math.floor(v * scale) - 1) / scale
        elif direction is math.ceil and r < v:
            r = (math.ceil(v * scale) + 1) / scale
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------------
# The summary
# ------------------------------------------------------------------------------------------------

def summarize(test: Mapping[str, Sequence], subset: Mapping[str, Sequence],
              pairs: Optional[Mapping[str, Sequence]] = None,
              radii: Sequence[float] = EVAL_RADII) -> Dict[str, Any]:
    """Every metric of the results store, from the per-image tables (tensors or stored lists).

    Rules (``results/README.md``): certified at ρ means radius ≥ ρ (or a baseline's flag at ρ);
    ``certified_accuracy/…`` counts correct (float32 decision = label) and certified images over
    the test-set table (over the rows of its ``sampled/<bounds>`` column where a bound was
    computed on a sample of the test set); ``certified_fraction/…`` counts certified images over
    the subset (all correctly classified); ``certificate_success`` counts ``tight``;
    ``robust_fraction_pgd`` counts ``pgd_robust``; ``robust_accuracy_pgd`` is that fraction × the
    clean accuracy.
    """
    T = {k: _column(k, vals) for k, vals in test.items()}
    S = {k: _column(k, vals) for k, vals in subset.items()}
    correct = T["predicted"] == T["label"]
    clean = proportion(correct)
    metrics: Dict[str, Any] = {"clean_accuracy": clean,
                               "float64_decisions_differ": int((T["predicted64"] != T["predicted"]).sum())}
    for key, values in T.items():
        kind, _, rest = key.partition("/")
        if kind == "radius":
            metrics[f"mean_certificate_test/{rest}"] = float(values.double().mean())
            for rho in radii:
                metrics[f"certified_accuracy/{rest}/{format_radius(rho)}"] = \
                    proportion(correct & (values >= rho))
        elif kind == "certified":
            flags = correct & values.bool()
            sampled = T.get(f"sampled/{rest.split('/')[1]}")
            if sampled is not None:
                flags = flags[sampled.bool()]   # a bound computed on a sample: n = its size
            metrics[f"certified_accuracy/{rest}"] = proportion(flags)
    for key, values in S.items():
        kind, _, rest = key.partition("/")
        if kind in ("radius", "paper_radius"):
            tname, bounds = rest.split("/") if kind == "radius" else (rest, "paper")
            metrics[f"mean_certificate/{tname}/{bounds}"] = float(values.double().mean())
            for rho in radii:
                if f"certified/{tname}/{bounds}/{format_radius(rho)}" in S:
                    continue   # a direct check at ρ (which counts radius ≥ ρ too) wins
                metrics[f"certified_fraction/{tname}/{bounds}/{format_radius(rho)}"] = \
                    proportion(values >= rho)
        elif kind == "certified":
            tname, bounds, rk = rest.split("/")
            flags = values.bool()
            radius = S.get(f"radius/{tname}/{bounds}")
            if radius is not None:
                flags = flags | (radius >= float(rk))
            metrics[f"certified_fraction/{rest}"] = proportion(flags)
        elif kind == "tight":
            metrics[f"certificate_success/{rest}"] = proportion(values)
        elif kind == "paper_counted":
            metrics[f"paper_counted_fraction/{rest}"] = proportion(values)
        elif kind == "attack_tight":
            metrics[f"attack_success/{rest}"] = proportion(values)
        elif kind == "pgd_robust":
            frac = proportion(values)
            metrics[f"robust_fraction_pgd/{rest}"] = frac
            metrics[f"robust_accuracy_pgd/{rest}"] = times_clean(frac, clean)
    for key in ("K_ub", "K_lb", "M_global", "m_global", "K_pairs"):
        metrics[key] = None
    if pairs is not None:
        for key, col in (("K_ub", "K_ub"), ("K_lb", "K_lb"), ("M_global", "M"), ("m_global", "m")):
            metrics[key] = float(torch.as_tensor(pairs[col], dtype=torch.float64).mean())
        metrics["K_pairs"] = len(pairs["y"])
    return metrics


def _column(key: str, values) -> Tensor:
    """A stored column as a tensor: radii in float64 (None → NaN; never float32, where 1.58 is
    not 1.58), the rest as they are."""
    if key.startswith(("radius/", "paper_radius/")):
        if isinstance(values, Tensor):
            return values.to(torch.float64)
        return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
    return torch.as_tensor(values)
