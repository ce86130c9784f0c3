"""Training-time curvature: the penalty K of equation (7) and a warm-started estimate of (m, M).

Neither is a bound. Both use estimates *from below* of spectral norms and eigenvalues (power
iteration, Lanczos Ritz values), which is what training can afford; certificates use the
rigorous bounds of :mod:`crc_core.curvature` instead (:func:`crc_core.curvature.global_bounds`
with ``exact=True``, the default).

- :func:`curvature_penalty`: Theorem 4's K(W, y, t) per sample, differentiable in the weights,
  with σ̂ = uᵀWv from one power-iteration step per call on the model's persistent buffers
  ``model.power_vectors(I)`` (Miyato et al. 2018). For γ-regularized training and CRT.
- :class:`CurvatureEstimator`: the curvature estimate the CRT attack needs at every training
  step. Batched Lanczos (in the weights' dtype) on the PSD parts
  :math:`W^T\\operatorname{diag}(p^+)W` and :math:`W^T\\operatorname{diag}(n^-)W` of the refined
  bound's terms (:func:`crc_core.bound_recursions.refined_recursion`), warm-started from the
  previous call's Ritz vectors, and power iteration on ‖W^(I)‖ started from the model's buffers
  (read only). The warm-start vectors are the estimator's state, in the open: ``train`` creates
  one estimator per run, saves :meth:`CurvatureEstimator.state_dict` in each checkpoint and
  restores it on resume, so a resumed run computes exactly the estimates of an uninterrupted one.

Example:
    >>> model = MLP([784, 64, 10], activation="softplus")
    >>> estimator = CurvatureEstimator()
    >>> m, M = estimator.bounds(model, torch.tensor([3, 1]), torch.tensor([5, 7]))
    >>> state = estimator.state_dict()        # saved with a training checkpoint
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from . import checks
from .bound_recursions import METHODS, refined_recursion, sigma1_global, theorem4_recursion
from .verified_linalg import interval_product

Tensor = torch.Tensor

__all__ = ["curvature_penalty", "CurvatureEstimator"]


def _flush_tiny(V: Tensor) -> Tensor:
    """Zero the entries of unit vectors below √tiny: repeated power iteration otherwise drives
    the components along small eigenvalues into subnormal numbers, which are ~100× slower."""
    return V.masked_fill(V.abs() < math.sqrt(torch.finfo(V.dtype).tiny), 0.0)


# ------------------------------------------------------------------------------------------------
# The penalty
def curvature_penalty(model, y, t, *, power_steps: int = 1) -> Tensor:
    """Theorem 4's K(W, y, t) per sample, differentiable in the weights (equation (7)).

    .. math::
        K = h \\sum_{I=1}^{L-1} (\\hat r^{(I)})^2 \\max_j S^{(L,I)}_j,\\quad
        \\hat r^{(I)} = g\\, \\hat σ_I\\, \\hat r^{(I-1)},\\quad \\hat σ_I = u_I^T W^{(I)} v_I

    The spectral norms are replaced by σ̂ = uᵀWv (Miyato et al. 2018): (u, v) come from
    ``power_steps`` power-iteration steps (default 1) started from the model's persistent
    buffers ``model.power_vectors(I)``, which are updated in place (no grad); u, v are treated
    as constants, so ∂σ̂/∂W = u vᵀ. |w| and the |W| products are differentiated directly.
    Computed once per distinct (y, t) pair, in the weights' dtype. For L = 2,
    K = h σ̂₁² max_j |w_j|. Once the buffers have converged, K equals
    :func:`crc_core.curvature.theorem4_bound` (up to its safety margin). Not a rigorous bound
    (σ̂ ≤ ‖W‖): for training only.

    Args:
        model: an MLP with a smooth activation.
        y, t: (B,) int64, t ≠ y (t: the attack target, e.g. the runner-up class); an int is
            broadcast.
        power_steps: power-iteration steps per call (≥ 0; 0 keeps the buffers frozen).

    Returns:
        K, (B,), in the weights' dtype, with an autograd graph to the weights.

    Raises:
        NoCurvatureError: ReLU. ValueError: bad labels, power_steps < 0, non-finite weights.

    Example:
        >>> model = MLP([784, 64, 10], activation="softplus")
        >>> K = curvature_penalty(model, torch.tensor([1, 2]), torch.tensor([7, 3]))
        >>> K.mean().backward()
    """
    act = checks.smooth_model(model)
    checks.finite_weights(model)
    y, t = checks.margin_labels(model, y, t)
    power_steps = checks.count(power_steps, "power_steps", 0)
    Ws = model.weights
    L, C = len(Ws), model.num_classes
    g, h = act.g, act.h
    sig = []
    for I in range(1, L):
        W = Ws[I - 1]
        u, v = model.power_vectors(I)
        if power_steps:
            with torch.no_grad():
                Wd = W.detach()
                uu, vv = u, v
                for _ in range(power_steps):
                    vv = F.normalize(Wd.t() @ uu, dim=0, eps=1e-12)
                    uu = F.normalize(Wd @ vv, dim=0, eps=1e-12)
                u.copy_(_flush_tiny(uu))
                v.copy_(_flush_tiny(vv))
        sig.append(torch.dot(u.clone(), W @ v.clone()))
    key = y * C + t
    uniq, inv = torch.unique(key, return_inverse=True)
    WL = Ws[-1]
    w = WL[uniq // C] - WL[uniq % C]
    return theorem4_recursion(Ws, sig, w, g, h)[inv]


# ------------------------------------------------------------------------------------------------
# The estimate of (m, M)
def _lanczos_top(W: Tensor, D: Tensor, V: Tensor, iters: int, tol: float) -> Tuple[Tensor, Tensor]:
    """Warm-started batched Lanczos for the top eigenvalue of Wᵀ diag(D_k) W (D_k ≥ 0).

    Starts from the rows of V (K, M) (the previous call's Ritz vectors); at most ``iters``
    operator applications; stops as soon as every top Ritz pair (θ, y) has a residual
    ‖A y − θ y‖ ≤ √tol · θ (then, for a separated top eigenvalue, θ is within ~tol·θ²/gap of
    λmax). A converged warm start therefore costs one application. Ritz values never exceed
    λmax: an estimate from below. Returns (θ (K,), Ritz vectors (K, M)) in W's dtype.
    """
    K, M = V.shape
    steps = max(1, min(int(iters), M))
    Wt = W.t()
    q = F.normalize(V, dim=1, eps=1e-30)
    Q: List[Tensor] = []
    alpha = torch.zeros(K, steps, dtype=W.dtype, device=W.device)
    beta = torch.zeros(K, steps, dtype=W.dtype, device=W.device)
    rtol = math.sqrt(tol) if tol > 0 else 0.0
    for j in range(steps):
        Q.append(q)
        Z = q @ Wt
        v = (Z * D) @ W
        alpha[:, j] = (Z * Z * D).sum(1)
        if j == 0:
            v = v - alpha[:, :1] * q
        else:
            basis = torch.stack(Q)
            v = v - torch.einsum("jk,jkm->km", torch.einsum("jkm,km->jk", basis, v), basis)
        b = v.norm(dim=1)
        T = (torch.diag_embed(alpha[:, : j + 1]) + torch.diag_embed(beta[:, :j], 1)
             + torch.diag_embed(beta[:, :j], -1))
        evals, evecs = torch.linalg.eigh(T)
        theta, s_top = evals[:, -1], evecs[:, :, -1]
        residual = b * s_top[:, -1].abs()
        if j == steps - 1 or float((residual - rtol * theta.abs()).amax()) <= 0:
            break
        tiny = b <= 1e-6 * alpha[:, : j + 1].abs().amax(1).clamp_min(1e-30)
        beta[:, j] = torch.where(tiny, torch.zeros_like(b), b)
        q = torch.where(tiny[:, None], torch.zeros_like(v), v / b.clamp_min(1e-30)[:, None])
    ritz = Q[0] if j == 0 else torch.einsum("kj,jkm->km", s_top, torch.stack(Q))
    return theta, _flush_tiny(F.normalize(ritz, dim=1, eps=1e-30))


def _norm_estimates(model, Ws: List[Tensor], count: int, iters: int, tol: float) -> List[Tensor]:
    """Power-iteration estimates (from below) of ‖W^(I)‖, I = 1 … count, started from the model's
    persistent buffers (read only)."""
    out = []
    for I in range(1, count + 1):
        W = Ws[I - 1]
        u, _ = model.power_vectors(I)
        u = u.detach().to(W.dtype)
        prev, sig = None, None
        for _ in range(max(1, iters)):
            v = _flush_tiny(F.normalize(W.t() @ u, dim=0, eps=1e-30))
            Wv = W @ v
            sig = Wv.norm()
            u = _flush_tiny(Wv / sig.clamp_min(1e-30))
            if tol > 0 and prev is not None and float((sig - prev).abs()) <= tol * float(sig):
                break
            prev = sig
        out.append(sig)
    return out


class CurvatureEstimator:
    """Fast estimates of the global curvature bounds (m, M), warm-started between calls.

    .. math::
        \\hat m \\approx m,\\ \\hat M \\approx M \\ \\text{(from below: } \\hat M \\le M_{\\text{same
        method}}\\text{)}

    The same methods as :func:`crc_core.curvature.global_bounds`, with every spectral norm and
    extreme eigenvalue replaced by an estimate from below: ‖W^(I)‖ by power iteration from the
    model's buffers; the extremes of the refined bound's terms by batched Lanczos (at most
    ``iters`` operator applications, stopping once every top Ritz pair has a relative residual
    ≤ √tol), started from the Ritz vectors of the previous call for the same (y, t) pair and
    layer. *Not* bounds: for the training-time CRT attack only, never for a certificate. Once
    the warm start has converged a call costs about one pass over the operators (2×1024,
    B = 128: ~10–20 ms on one thread).

    State: ``warm[I]`` (2C², N_{I−1}), one unit vector per (y, t, P | N) slot (row
    2(yC + t) + {0, 1}), created on first use from a ``torch.Generator`` seeded I, recreated if
    the model's shape, dtype or device changes. :meth:`state_dict` / :meth:`load_state_dict`
    save and restore it; a fresh estimator always gives the same answer for the same call.

    Args:
        iters: maximum Lanczos / power-iteration steps per call (≥ 1; default 20).
        tol: stopping tolerance (≥ 0; default 1e-4; 0 runs all ``iters``).

    Raises:
        ValueError: iters < 1, tol < 0 or not finite.

    Example:
        >>> estimator = CurvatureEstimator()
        >>> m, M = estimator.bounds(model, y, t)      # once per training step, same model
    """

    def __init__(self, iters: int = 20, tol: float = 1e-4):
        self.iters = checks.count(iters, "iters", 1)
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.tol = float(tol)
        self.warm: Dict[int, Tensor] = {}

    def __repr__(self) -> str:
        return f"CurvatureEstimator(iters={self.iters}, tol={self.tol}, layers={sorted(self.warm)})"

    # --------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Tensor]:
        """The warm-start vectors, ``{str(I): (2C², N_{I−1}) tensor}`` (copies)."""
        return {str(I): V.detach().clone() for I, V in self.warm.items()}

    def load_state_dict(self, state: Mapping[str, Tensor], device: Optional[torch.device] = None
                        ) -> None:
        """Restore warm-start vectors saved by :meth:`state_dict` (moved to ``device`` if given).

        Raises:
            ValueError: a key that is not a layer number, or a value that is not a 2-D tensor.
        """
        warm: Dict[int, Tensor] = {}
        for key, V in state.items():
            if not str(key).isdigit() or not isinstance(V, Tensor) or V.dim() != 2:
                raise ValueError(f"not a CurvatureEstimator state: entry {key!r} must map a layer "
                                 f"number to a 2-D tensor")
            warm[int(key)] = V.detach().clone() if device is None else V.detach().to(device).clone()
        self.warm = warm

    # --------------------------------------------------------------------------------------------
    def bounds(self, model, y, t, method: str = "tightest") -> Tuple[Tensor, Tensor]:
        """Estimates of (m, M) of f = z_y − z_t for each sample; advances the warm start.

        Args:
            model: an :class:`~crc_core.models.MLP` with a smooth activation.
            y, t: (B,) int64, t ≠ y (an int is broadcast).
            method: as in :func:`crc_core.curvature.global_bounds` (default ``"tightest"``).

        Returns:
            (m, M), each (B,), float64 on the model's device (computed in the weights' dtype).

        Raises:
            NoCurvatureError: ReLU. ValueError: bad labels or method, Theorem 3 with L ≠ 2.
        """
        act = checks.smooth_model(model)
        checks.finite_weights(model)
        method = checks.one_of(method, "method", METHODS)
        y, t = checks.margin_labels(model, y, t)
        C = model.num_classes
        key = y * C + t
        uniq, inv = torch.unique(key, return_inverse=True)
        with torch.no_grad():
            m, M = self._pairs(model, act, method, uniq // C, uniq % C)
        return m.to(torch.float64)[inv], M.to(torch.float64)[inv]

    def theorem3_penalty(self, model, y, t) -> Tensor:
        """Theorem 3's curvature bound as a training penalty (L = 2), differentiable in the weights.

        .. math::
            \\hat K_3 = \\max\\big(u_N^T N u_N,\\ u_P^T P u_P\\big), \\quad
            P = W_1^T \\operatorname{diag}(p^+) W_1, \\ N = W_1^T \\operatorname{diag}(n^-) W_1,

        with :math:`n \\le (w_y - w_t) \\odot σ''(z) \\le p` elementwise over σ'' ∈ [h_L, h_U]
        (so M = λmax(P), m = −λmax(N) are Theorem 3's bounds) and u_P, u_N the unit Ritz
        vectors of the pair's P and N that :meth:`bounds` has just advanced (one warm-started
        Lanczos call, no gradient). The vectors are constants: the gradient is that of the
        Rayleigh quotients, which at an eigenvector is the eigenvalue's own gradient
        (u uᵀ ⊗ …). K̂₃ ≤ max(−m, M) ≤ Theorem 4's K: the penalty acts on the bound that the
        two-layer certificate uses, where equation (7) penalizes Theorem 4's looser K (about
        2.5× K̂₃ on the released 2×1024 net). An estimate from below: for training only.

        Args:
            model: a two-layer :class:`~crc_core.models.MLP` with a smooth activation.
            y, t: (B,) int64, t ≠ y (an int is broadcast).

        Returns:
            K̂₃, (B,), in the weights' dtype, with an autograd graph to W_1 and W_2.

        Raises:
            NoCurvatureError: ReLU. ValueError: L ≠ 2, bad labels, non-finite weights.
        """
        act = checks.smooth_model(model)
        checks.finite_weights(model)
        L = len(model.weights)
        if L != 2:
            raise ValueError(f"Theorem 3's penalty is for two-layer networks (L = 2), this one has "
                             f"L = {L}")
        y, t = checks.margin_labels(model, y, t)
        self.bounds(model, y, t)              # advances the Ritz vectors of these pairs
        C = model.num_classes
        uniq, inv = torch.unique(y * C + t, return_inverse=True)
        W1, W2 = model.weights
        w = W2[uniq // C] - W2[uniq % C]                       # (K, N_1)
        n, p = interval_product(w, w, act.h_L, act.h_U, rigorous=False)   # w ⊙ σ'' ∈ [n, p]
        p, n = p.clamp(min=0), (-n).clamp(min=0)
        V = self.warm[1]                                       # rows 2k: P, 2k + 1: N
        uP = V[2 * uniq].detach().to(W1.dtype)
        uN = V[2 * uniq + 1].detach().to(W1.dtype)
        M_hat = (p * (uP @ W1.t()) ** 2).sum(1)
        m_abs = (n * (uN @ W1.t()) ** 2).sum(1)
        return torch.maximum(M_hat, m_abs)[inv]

    def _warm_start(self, I: int, rows: int, W: Tensor) -> Tensor:
        """The (rows, N_{I−1}) warm-start table of layer I (created or recreated if needed)."""
        V0 = self.warm.get(I)
        dim = W.shape[1]
        if (not isinstance(V0, Tensor) or V0.shape != (rows, dim)
                or V0.dtype != W.dtype or V0.device != W.device):
            gen = torch.Generator().manual_seed(I)
            V0 = torch.randn(rows, dim, generator=gen, dtype=W.dtype).abs().add_(0.5)
            V0 = F.normalize(V0.to(W.device), dim=1)
            self.warm[I] = V0
        return V0

    def _pairs(self, model, act, method: str, ys: Tensor, ts: Tensor) -> Tuple[Tensor, Tensor]:
        """Estimated (m, M) for distinct pairs (ys, ts), in the weights' dtype."""
        Ws = [w.detach() for w in model.weights]
        L, C = len(Ws), model.num_classes
        if method == "theorem3" and L != 2:
            raise ValueError(f"Theorem 3 is for two-layer networks (L = 2), this one has L = {L}")
        w = Ws[-1][ys] - Ws[-1][ts]
        want_ref = method in ("theorem3", "refined", "tightest")
        want_k = method == "theorem4" or (method == "tightest" and L >= 3)
        norms = _norm_estimates(model, Ws, L - 1 if want_k else L - 2, self.iters, self.tol)
        m_ref = M_ref = K_est = None
        if want_k:
            K_est = theorem4_recursion(Ws, norms, w, act.g, act.h)
        if want_ref:
            lo1, hi1 = sigma1_global(act)
            g = max(abs(lo1), abs(hi1))
            K = ys.numel()
            slots = torch.cat([2 * (ys * C + ts), 2 * (ys * C + ts) + 1])

            def extremes(I: int, p: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
                # Lanczos on the PSD parts p⁺ and n⁻ at once; identical operators (e.g.
                # N(y, t) = −P(t, y) for softplus, P = −N for sigmoid) once.
                D = torch.cat([p.clamp(min=0), (-n).clamp(min=0)], 0)
                W = Ws[I - 1]
                V0 = self._warm_start(I, C * C * 2, W)
                uniq, inv = torch.unique(D, dim=0, return_inverse=True)
                first = torch.full((uniq.shape[0],), slots.numel(), dtype=torch.int64,
                                   device=W.device)
                first = first.scatter_reduce(0, inv, torch.arange(slots.numel(), device=W.device),
                                             "amin")
                lam_u, V_u = _lanczos_top(W, uniq, V0[slots[first]], self.iters, self.tol)
                V0[slots] = V_u[inv]
                lam = lam_u[inv]
                return -lam[K:], lam[:K]

            L1 = L - 1
            m_ref, M_ref = refined_recursion(Ws, norms, w, [(lo1, hi1)] * L1,
                                             [(act.h_L, act.h_U)] * L1, [g] * L1, extremes,
                                             rigorous=False)
        if method == "theorem4":
            return -K_est, K_est
        if method == "tightest" and L >= 3:
            return torch.maximum(m_ref, -K_est), torch.minimum(M_ref, K_est)
        return m_ref, M_ref
