"""Definition 1 on (input, target) pairs of a network: f = z_y − z_t under curvature bounds.

:mod:`crc_core.dual_solvers` solves the certificate dual for any margin function;
this module supplies a network's margin (:func:`margin_function`) and the curvature bounds
m ≤ λ(∇²f) ≤ M of each pair (y, t): (C, C) tables indexed [y, t], computed once per
certification and passed on, either

- ``"global"``: rigorous for every x (:func:`curvature.global_bounds`, Theorems 3 and 4), or
- ``"given"``: tables that the caller guarantees;
- ``"local"``: the global certificate first, then bounds valid on balls B(x^(0), R) around it
  (:func:`curvature.local_bounds`, Table 6): min(r_R, R) is certified for every R, and the
  largest value over a few balls is kept, never below the global one.

A :class:`PairSolver` holds what every pair solve of one :func:`crc_core.duality.certify` call
shares (the model and its float64 copy, the bound tables, the solver settings) as explicit,
immutable fields; :meth:`PairSolver.solve` returns :class:`PairCertificates`.

Example:
    >>> model = MLP([10, 16, 3], "softplus").double()
    >>> solver = PairSolver(model, model, "global", curvature.all_pair_bounds(model))
    >>> x0, y, t = torch.rand(2, 10, dtype=torch.float64), torch.tensor([0, 1]), torch.tensor([1, 2])
    >>> f0, g0 = margin_function(model, y, t)(x0, torch.arange(2))
    >>> pairs = solver.solve(x0, y, t, (f0, g0))
    >>> pairs.sol.radius.shape, pairs.m.dtype
    (torch.Size([2]), torch.float64)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

from . import curvature
from .dual_solvers import CertificateSolution, MarginFn, solve_certificate

Tensor = torch.Tensor

__all__ = ["margin_function", "PairSolver", "PairCertificates", "take_rows", "LOCAL_FIRST_STEP",
           "BOUND_SOURCES"]

#: Local bounds: the first ball tried is R = (1 + LOCAL_FIRST_STEP) × the global radius.
LOCAL_FIRST_STEP = 0.05

#: Where a :class:`PairSolver` takes its curvature bounds from.
BOUND_SOURCES = ("global", "local", "given")


def margin_function(model, y: Tensor, t: Tensor) -> MarginFn:
    """The batched margin f = z_y − z_t of a model and its input gradient, as a :data:`MarginFn`.

    .. math::
        f(x) = z^{(L)}_y(x) - z^{(L)}_t(x), \\qquad \\nabla_x f(x) \\text{ by autograd}

    The forward pass runs on detached weights (``torch.func.functional_call``), so the autograd
    graph tracks x only: no parameter's ``.grad`` is touched and nothing is kept for the
    weights' gradients. It runs in the model's dtype.

    Args:
        model: a network mapping (k, D) to logits (k, C).
        y, t: (B,) int64 labels and targets of the whole batch; ``rows`` indexes them.

    Returns:
        ``fn(x, rows) -> (f (k,), ∇f (k, D))``, detached.
    """
    weights = ({k: v.detach() for k, v in model.named_parameters()}, dict(model.named_buffers()))

    def fn(x: Tensor, rows: Tensor) -> Tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = torch.func.functional_call(model, weights, (x,))
            f = z.gather(1, y[rows, None])[:, 0] - z.gather(1, t[rows, None])[:, 0]
            grad, = torch.autograd.grad(f.sum(), x)
        return f.detach(), grad
    return fn


def take_rows(best: CertificateSolution, idx: Tensor, new: CertificateSolution,
              mask: Tensor) -> None:
    """``best[idx] = new[mask]`` for every per-row field but ``grad_evals`` (in place).

    Args:
        best: the solution updated in place. idx: (k,) int64 rows of ``best``.
        new: another solution. mask: bool over ``new``'s rows, k of them True.
    """
    for f in dataclasses.fields(CertificateSolution):
        if f.name != "grad_evals":
            getattr(best, f.name)[idx] = getattr(new, f.name)[mask]


class PairCertificates(NamedTuple):
    """What :meth:`PairSolver.solve` returns for k (input, target) pairs.

    Attributes:
        sol: the :class:`~crc_core.dual_solvers.CertificateSolution` of the k pairs (the best
            ball's for local bounds).
        m, M: (k,) the curvature bounds the reported radius rests on (global, given, or local
            on the best ball).
        evals: int, gradient evaluations spent (the ``first`` one not counted).
    """

    sol: CertificateSolution
    m: Tensor
    M: Tensor
    evals: int


@dataclass(frozen=True)
class PairSolver:
    """The shared settings of the pair solves of one certification.

    Attributes:
        model: the caller's :class:`~crc_core.models.MLP` (local bounds are computed on it).
        model64: its float64 copy on the inputs' device (margins and gradients).
        bounds: one of :data:`BOUND_SOURCES`.
        tables: ``(m, M)``, (C, C) float64 tables indexed [y, t] on the inputs' device: the
            rigorous global bounds (``"global"``, ``"local"``; only the pairs that will be
            solved need to be filled) or the caller's (``"given"``).
        max_evals: gradient evaluations per pair and solve at most (default 100).
        tol: solver tolerance (default 1e-6), see :func:`~crc_core.dual_solvers.solve_certificate`.
        local_steps: balls tried with ``bounds="local"`` (default 3).
    """

    model: torch.nn.Module
    model64: torch.nn.Module
    bounds: str
    tables: Tuple[Tensor, Tensor]
    max_evals: int = 100
    tol: float = 1e-6
    local_steps: int = 3

    def __post_init__(self):
        if self.bounds not in BOUND_SOURCES:
            raise ValueError(f"bounds={self.bounds!r} is invalid: expected one of {list(BOUND_SOURCES)}")

    def curvature(self, y: Tensor, t: Tensor, like: Tensor) -> Tuple[Tensor, Tensor]:
        """Global (m, M) of the pairs (y, t) from the tables, each (k,) like ``like``."""
        return self.tables[0][y, t].to(like), self.tables[1][y, t].to(like)

    def solve(self, x0: Tensor, y: Tensor, t: Tensor, first: Tuple[Tensor, Tensor],
              stop_radius: Optional[Tensor] = None) -> PairCertificates:
        """Certified radii of k (input, target) pairs (Definition 1, Theorem 1).

        Args:
            x0: (k, D) float64 inputs. y, t: (k,) int64 labels and targets.
            first: ``(f, ∇f)`` at x0, (k,) and (k, D) (already evaluated by the caller).
            stop_radius: None (default) or (k,): a pair may stop (and skip the local
                refinement) once its radius reaches it.

        Returns:
            :class:`PairCertificates`.
        """
        m, M = self.curvature(y, t, x0)
        fn = margin_function(self.model64, y, t)
        sol = solve_certificate(fn, x0, m, M, max_evals=self.max_evals, tol=self.tol,
                                stop_radius=stop_radius, first=first)
        pairs = PairCertificates(sol, m, M, int(sol.grad_evals.sum()))
        if self.bounds != "local":
            return pairs
        return self._refine_local(fn, x0, y, t, pairs, stop_radius)

    def _refine_local(self, fn: MarginFn, x0: Tensor, y: Tensor, t: Tensor,
                      pairs: PairCertificates, stop_radius: Optional[Tensor]) -> PairCertificates:
        """Local bounds on a few balls B(x0, R); each min(r_R, R) is sound, the best is kept.

        The balls are R = r_g (1 + s) around the global radius r_g: s = LOCAL_FIRST_STEP,
        doubled after every ball that is certified whole (r_R ≥ R) and bisected toward the last
        certified one after every ball that is not, ``local_steps`` balls at most. A solve stops
        as soon as its ball is certified whole. The result is never below the global one.
        """
        best, evals = pairs.sol, pairs.evals
        value = best.radius.clone()
        r_g = best.radius.clone()
        best_m, best_M = pairs.m.clone(), pairs.M.clone()
        s = torch.full_like(r_g, LOCAL_FIRST_STEP)
        s_lo = torch.zeros_like(r_g)
        s_hi = torch.full_like(r_g, float("inf"))
        active = r_g > 0
        if stop_radius is not None:
            active = active & (r_g < stop_radius)
        device = next(self.model.parameters()).device
        for _ in range(self.local_steps):
            rows = active.nonzero()[:, 0]
            if rows.numel() == 0:
                break
            R = r_g[rows] * (1 + s[rows])
            mR, MR = curvature.local_bounds(self.model, x0[rows].to(device), y[rows], t[rows], R,
                                            global_pair_bounds=(pairs.m[rows], pairs.M[rows]))
            mR, MR = mR.to(x0), MR.to(x0)
            loc = solve_certificate(_fn_rows(fn, rows), x0[rows], mR, MR, max_evals=self.max_evals,
                                    tol=self.tol, ball=R, x_start=best.x[rows])
            evals += int(loc.grad_evals.sum())
            best.grad_evals[rows] += loc.grad_evals
            better = loc.radius > value[rows]
            if better.any():
                idx = rows[better]
                value[idx] = loc.radius[better]
                best_m[idx], best_M[idx] = mR[better], MR[better]
                take_rows(best, idx, loc, better)
            whole = loc.radius >= R
            sr, lo, hi = s[rows], s_lo[rows], s_hi[rows]
            lo = torch.where(whole, sr, lo)
            hi = torch.where(whole, hi, sr)
            s[rows] = torch.where(torch.isinf(hi), 2 * sr, 0.5 * (lo + hi))
            s_lo[rows], s_hi[rows] = lo, hi
        return PairCertificates(best, best_m, best_M, evals)


def _fn_rows(fn: MarginFn, rows: Tensor) -> MarginFn:
    """``fn`` restricted to the sub-batch ``rows``: row i of the sub-batch is row rows[i]."""
    return lambda x, r: fn(x, rows[r])
