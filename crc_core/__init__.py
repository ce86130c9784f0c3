"""crc_core: curvature-based robustness certificates and training (Singla & Feizi, ICML 2020).

Submodules, one concept each (the map, with the direction of imports, is in README.md):

- the network: :mod:`~crc_core.activations` (σ, σ', σ'' and g, h, h_L, h_U),
  :mod:`~crc_core.models` (:class:`MLP`), :mod:`~crc_core.checks` (argument checks);
- Lemma 1: :mod:`~crc_core.hessian`;
- Theorems 3 and 4: :mod:`~crc_core.curvature` (global bounds, Figure 1's K_lb) over
  :mod:`~crc_core.bound_recursions`, :mod:`~crc_core.verified_linalg` (rigorous float64
  eigenvalue bounds) and :mod:`~crc_core.local_bounds` (Table 6); the training-time estimate
  and penalty in :mod:`~crc_core.curvature_estimate`;
- Theorems 1 and 2: :mod:`~crc_core.duality` (certificate and attack of a network) over
  :mod:`~crc_core.pair_certificates`, :mod:`~crc_core.dual_solvers`, :mod:`~crc_core.dual_bound`
  and the authors' :mod:`~crc_core.reference_schedules`;
- :mod:`~crc_core.attacks` (PGD in l2); :mod:`~crc_core.training` (CRT and the other methods,
  checkpoints, resume) with :mod:`~crc_core.train_spec` (the spec) and
  :mod:`~crc_core.atomic_files`;
  :mod:`~crc_core.baselines` (CROWN-general, CROWN-IBP, COAP);
- data: :mod:`~crc_core.data` over :mod:`~crc_core.data_sources` and :mod:`~crc_core.idx`;
- experiments: :mod:`~crc_core.runs` (registry, presets), :mod:`~crc_core.evaluation` and
  :mod:`~crc_core.metrics`, :mod:`~crc_core.store` (results, released weights, verify),
  :mod:`~crc_core.reference` (the paper's numbers), :mod:`~crc_core.tuning` (tries beyond a
  preset's recipe, recorded), :mod:`~crc_core.tables` (what the notebooks show), :mod:`~crc_core.anatomy` and :mod:`~crc_core.figures` (one certificate, drawn);
  :mod:`~crc_core.experiments` is their front and command line.

Submodules are imported on first access (``crc_core.hessian``) or explicitly
(``from crc_core import hessian``).
"""
import importlib

from .models import MLP

__all__ = ["MLP"]

_SUBMODULES = {
    "activations", "models", "checks", "train_spec", "atomic_files", "hessian", "curvature", "bound_recursions",
    "verified_linalg", "local_bounds", "curvature_estimate", "duality", "pair_certificates",
    "dual_solvers", "dual_bound", "reference_schedules", "attacks", "training", "baselines",
    "data", "data_sources", "idx", "runs", "evaluation", "metrics", "store", "reference",
    "tables", "tuning", "anatomy", "figures", "experiments",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
