"""The evaluation of a trained network: per-image tables, the audit, and their metrics.

Two tables, one row per image (columns of equal length, as ``locuslab/smoothing`` stores one row
per certified example), then one summary step (:func:`summarize`) that turns them into every
metric of the results store (``results/README.md``):

- the **test-set table** (:func:`test_set_table`): every test image (the first ``preset.test_n``
  at ``smoke``): label, the float32 and float64 decisions, and the certificates — sound CRC radii
  (all classes and runner-up, rigorous global curvature bounds) for smooth nets, and the
  baselines' own certificates (CROWN-general bounds; the COAP dual for COAP nets) at each ρ.
  Certified accuracy = the fraction of *all* test images that are correctly classified and
  certified at ρ: the headline metric, the one later deterministic defenses report;
- the **subset table** (:func:`subset_table`): ``preset.eval_n`` randomly chosen correctly
  classified test images (:func:`evaluation_subset`; the paper used 150): the
  paper's metric (certified fraction of the subset), certificate and attack success (Table 2),
  the authors' residual rule, local bounds (two-layer nets), PGD-l2 and the CRC attack;
- the **soundness audit** (:func:`soundness_audit`): untargeted PGD with restarts against every
  certified subset image at 0.999 × its all-classes certified radius. A success would be a
  certificate violated: the count must be 0.

Radii are stored rounded *down* to 1e-5 (a stored radius never exceeds the sound one), upper
curvature bounds rounded up and lower bounds down.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from . import attacks, curvature, data, duality
from .attacks import runner_up
from .metrics import (DIGITS, proportion, round_down, round_up, summarize, times_clean,
                      wilson_interval)
from .runs import EVAL_RADII, EVAL_SEED, Preset, format_radius, get_preset
from .train_spec import BASELINE_METHODS, TrainSpec

Tensor = torch.Tensor

__all__ = ["CROWN_MODES", "evaluation_subset", "AUDIT_SCALE", "wilson_interval", "proportion",
           "times_clean", "default_crown_mode", "test_sample", "test_set_table",
           "subset_table", "soundness_audit", "curvature_table", "summarize", "evaluate",
           "round_down", "round_up"]

#: What is computed with CROWN-general (``crown_mode``): nothing; the certified flags at each ρ
#: (one bound of all C − 1 margins per ρ gives runner-up and all-classes); or also the runner-up
#: certified radius by search (Table 5b's mean certificate).
CROWN_MODES = ("none", "at-radii", "radius")
#: The soundness audit attacks at this fraction of each certified radius.
AUDIT_SCALE = 0.999


# ------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------

def evaluation_subset(model: Callable[[Tensor], Tensor], X: Tensor, Y: Tensor, n: int,
                      seed: int, batch_size: int = 1000) -> Tensor:
    """n randomly chosen, correctly classified images: the paper's evaluation subset.

    A permutation of ``range(N)`` is drawn with ``torch.randperm`` from
    ``torch.Generator().manual_seed(seed)``; the model is evaluated along it (in batches,
    under ``torch.no_grad()``, in eval mode, on the device and dtype of its first floating
    parameter) and the first ``n`` indices whose predicted class (argmax of the logits)
    equals the label are returned. The result depends only on (N, seed, model, data), not
    on ``batch_size``, and ``evaluation_subset(…, n)`` is a prefix of
    ``evaluation_subset(…, n + k)``.

    Args:
        model: callable (usually an ``nn.Module``) mapping (B, 784) inputs to (B, C) logits.
            If it is a module, it is put in eval mode during the call and its previous
            mode is restored afterwards.
        X: inputs, float of shape (N, 784).
        Y: labels, integer of shape (N,).
        n: number of indices wanted, 1 ≤ n ≤ number of correctly classified images.
        seed: seed of the permutation.
        batch_size: images per forward pass.

    Returns:
        int64 tensor of shape (n,), distinct indices into X, **in permutation order**
        (not sorted).

    Raises:
        ValueError: n <= 0, mismatched shapes, or fewer than n correctly classified images.
    """
    n = int(n)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    N = X.shape[0]
    if Y.shape != (N,):
        raise ValueError(f"Y must have shape ({N},), got {tuple(Y.shape)}")
    if n > N:
        raise ValueError(f"n={n} exceeds the number of images N={N}")

    device, dtype = X.device, X.dtype if X.is_floating_point() else torch.float32
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                device, dtype = p.device, p.dtype
                break

    perm = torch.randperm(N, generator=torch.Generator().manual_seed(int(seed)))
    labels = Y.detach().to("cpu", torch.int64)
    chosen: List[Tensor] = []
    count = 0
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, N, batch_size):
                idx = perm[start:start + batch_size]
                logits = model(X[idx.to(X.device)].to(device=device, dtype=dtype))
                pred = logits.argmax(dim=1).to("cpu")
                ok = idx[pred == labels[idx]]
                chosen.append(ok)
                count += ok.numel()
                if count >= n:
                    break
    finally:
        if was_training:
            model.train(True)
    if count < n:
        raise ValueError(f"only {count} of {N} images are correctly classified; n={n} requested")
    return torch.cat(chosen)[:n].to(torch.int64)



def default_crown_mode(spec: TrainSpec, tables: Sequence[str] = ()) -> str:
    """``"radius"`` for the smooth nets of Table 5 (CROWN's mean certificate), ``"at-radii"`` for
    the baselines (their certified accuracy), ``"none"`` for the others (certified by CRC)."""
    from .activations import get_activation

    if "table5" in tables and get_activation(spec.activation).has_curvature:
        return "radius"
    if spec.method in BASELINE_METHODS:
        return "at-radii"
    return "none"


def _batches(n: int, size: int):
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _baseline_flags(module, model, x: Tensor, y: Tensor, t: Tensor, rho: float,
                    correct: Tensor) -> Tuple[Tensor, Tensor]:
    """(runner-up, all-classes) certified flags of a bound-propagation baseline at ρ: every margin
    lower bound over the ball positive (and the centre correctly classified)."""
    rows = torch.arange(x.shape[0], device=x.device)
    with torch.no_grad():
        lb = module.margin_lower_bounds(model, x, y, rho)
    runner = (lb[rows, t] > 0) & correct
    every = (lb.scatter(1, y[:, None], math.inf).amin(1) > 0) & correct
    return runner, every


def _baseline_flags_nested(module, model, x: Tensor, y: Tensor, t: Tensor,
                           radii: Sequence[float], correct: Tensor
                           ) -> Dict[float, Tuple[Tensor, Tensor]]:
    """(runner-up, all-classes) certified flags at every ρ of ``radii``, bounding only what is
    still open.

    A certificate at ρ proves that no point of the ball B(x, ρ) changes the label, so it proves
    it for every ball B(x, ρ') with ρ' ≤ ρ: the radii are taken from the largest down, and an
    image is bounded at ρ' only if it is correctly classified and not yet certified against
    every class at a larger ρ (a runner-up certificate carries over the same way). Misclassified
    images are never certified, so they are never bounded. The flags are the same as those of
    :func:`_baseline_flags` at each ρ except where a bound method would certify at a larger
    radius and fail at a smaller one (tighter inputs give tighter bounds, so this does not
    happen with CROWN or COAP); either way every flag is sound. On the test set this saves the
    bound of every misclassified image and of every image certified at the largest ρ.

    Returns:
        {ρ: (runner-up (B,) bool, all-classes (B,) bool)} for every ρ of ``radii``.
    """
    runner = torch.zeros_like(correct)
    every = torch.zeros_like(correct)
    out: Dict[float, Tuple[Tensor, Tensor]] = {}
    for rho in sorted(radii, reverse=True):
        open_rows = torch.nonzero(correct & ~every).flatten()
        if open_rows.numel():
            ru, ev = _baseline_flags(module, model, x[open_rows], y[open_rows], t[open_rows], rho,
                                     correct[open_rows])
            runner = runner.clone()
            every = every.clone()
            runner[open_rows] |= ru
            every[open_rows] |= ev
        out[rho] = (runner, every)
    return out


def _baseline_modules(spec: TrainSpec, crown_mode: str, where: str) -> Dict[str, Any]:
    """The baselines' certificates to compute: ``{"crown": module, "coap": module}``.

    On the test set (``where="test"``) only the baselines' own certificates are computed (CROWN
    for CROWN-IBP and COAP nets; Table 5's CROWN radii of smooth nets are a subset metric; COAP's
    dual for COAP nets; each on a sample of the test set where the preset says so:
    :func:`test_sample`)."""
    out: Dict[str, Any] = {}
    if crown_mode != "none" and (where == "subset" or spec.method in BASELINE_METHODS):
        from .baselines import crown
        out["crown"] = crown
    if spec.method == "coap":
        from .baselines import coap
        out["coap"] = coap
    return out


def test_sample(spec: TrainSpec, certificate: str, n_test: int, preset: Preset) -> Optional[Tensor]:
    """The test images a baseline ``certificate`` is computed on, as an (n_test,) bool mask, or
    None for every one.

    Where a certificate is too slow for the whole test set on a CPU (``preset.test_samples``:
    COAP's exact dual on 3- and 4-layer nets, CROWN on 4-layer ones at ``cpu``) it is computed
    on a uniform random sample of k test images, seeded by ``EVAL_SEED`` (one permutation of the
    test set: a smaller sample is a prefix of a larger one, the same for every run). Its
    certified accuracy is then an unbiased estimate of the whole test set's, stated with n and
    its Wilson interval."""
    k = preset.test_samples.get((certificate, spec.depth))
    if k is None or k >= n_test:
        return None
    gen = torch.Generator().manual_seed(EVAL_SEED)
    mask = torch.zeros(n_test, dtype=torch.bool)
    mask[torch.randperm(n_test, generator=gen)[:k]] = True
    return mask


def test_set_table(model, spec: TrainSpec, X: Tensor, Y: Tensor, preset: Preset, *,
                   bounds: Optional[Tuple[Tensor, Tensor]] = None, crown_mode: str = "none",
                   progress: bool = True) -> Dict[str, Tensor]:
    """One row per test image: the decisions and the certificates at each ρ.

    Columns (each (N,)): ``label``; ``predicted`` (argmax of the float32 net: accuracy and PGD
    use it) and ``predicted64`` (of its float64 copy: the certificates are for that network);
    for smooth nets ``radius/all-classes/global`` and ``radius/runner-up/global`` (sound CRC
    radii, 0 for misclassified images) and ``target/all-classes/global`` (the minimizing class);
    for baselines ``certified/<targets>/<crown|coap>/<ρ>`` (bool: correct and every margin bound
    positive on the ball of radius ρ or of a larger ρ of ``EVAL_RADII``: misclassified images
    and images already certified at a larger ρ are not bounded again, see
    :func:`_baseline_flags_nested`); ``sampled/<crown|coap>`` (bool) where that certificate
    covers a sample of the test set only (:func:`test_sample`; its flags are False off it).

    Args:
        model: the trained MLP (on the device of X).
        spec: its training spec (method, depth).
        X, Y: test images (N, D) and labels (N,).
        preset: batch size (``test_batch_size``) and the samples (``test_samples``).
        bounds: rigorous per-pair curvature tables (m, M), each (C, C), for smooth nets
            (default: :func:`crc_core.curvature.all_pair_bounds`, computed once here).
        crown_mode: one of :data:`CROWN_MODES` (``"radius"`` adds nothing here: the mean CROWN
            certificate is a subset metric).
        progress: a tqdm bar over batches.
    """
    from tqdm.auto import tqdm

    model = model.eval()
    smooth = model.activation.has_curvature
    if smooth and bounds is None:
        bounds = curvature.all_pair_bounds(model)
    baselines = _baseline_modules(spec, crown_mode, "test")
    cols: Dict[str, List[Tensor]] = {}
    samples = {name: test_sample(spec, name, X.shape[0], preset) for name in baselines}
    for name, mask in samples.items():
        if mask is not None:
            cols[f"sampled/{name}"] = [mask]
    model64 = _float64_copy(model)

    def put(key: str, value: Tensor) -> None:
        cols.setdefault(key, []).append(value.detach().cpu())

    for sl in tqdm(_batches(X.shape[0], preset.test_batch_size), desc="certify test set",
                   disable=not progress, dynamic_ncols=True):
        x, y = X[sl], Y[sl]
        with torch.no_grad():
            logits = model(x)
            pred = logits.argmax(1)
            pred64 = model64(x.double()).argmax(1)
        put("label", y)
        put("predicted", pred)
        put("predicted64", pred64)
        if smooth:
            for targets, tname in (("all", "all-classes"), ("runner-up", "runner-up")):
                cert = duality.certify(model, x, y, targets=targets, bounds=bounds, progress=False)
                put(f"radius/{tname}/global", cert.radius)
                if targets == "all":
                    put(f"target/{tname}/global", cert.target)
        correct = pred == y
        t = runner_up(logits, y)
        for name, module in baselines.items():
            mask = samples.get(name)
            todo = correct if mask is None else correct & mask[sl].to(correct.device)
            flags = _baseline_flags_nested(module, model, x, y, t, EVAL_RADII, todo)
            for rho in EVAL_RADII:
                ru, every = flags[rho]
                put(f"certified/runner-up/{name}/{format_radius(rho)}", ru)
                put(f"certified/all-classes/{name}/{format_radius(rho)}", every)
    return {k: torch.cat(v) for k, v in cols.items()}


def _float64_copy(model):
    import copy

    return copy.deepcopy(model).double().eval()


def subset_table(model, spec: TrainSpec, X: Tensor, Y: Tensor, preset: Preset, *,
                 bounds: Optional[Tuple[Tensor, Tensor]] = None, crown_mode: str = "none",
                 progress: bool = True) -> Dict[str, Tensor]:
    """One row per image of the evaluation subset (correctly classified images).

    Columns (each (n,)): ``label``, ``runner_up``; for smooth nets, per certificate kind
    ``radius/<targets>/<bounds>``, ``tight/<targets>/<bounds>`` (primal = dual),
    ``target/<targets>/global``, ``paper_radius/<targets>`` (the authors' formula where their
    residual rule counts it, else 0) and ``paper_counted/<targets>``; ``radius/runner-up/local``
    and ``tight/runner-up/local`` for two-layer nets; ``attack_tight/runner-up/<ρ>`` (the CRC
    attack reaches ‖x − x0‖ = ρ); for baselines ``certified/<targets>/<crown|coap>/<ρ>`` and, with
    ``crown_mode="radius"``, ``radius/runner-up/crown``; ``pgd_robust/<runner-up|untargeted>/<ρ>``.
    Arguments as in :func:`test_set_table`.
    """
    from tqdm.auto import tqdm

    model = model.eval()
    smooth = model.activation.has_curvature
    if smooth and bounds is None:
        bounds = curvature.all_pair_bounds(model)
    baselines = _baseline_modules(spec, crown_mode, "subset")
    pgd_gen = torch.Generator(device=X.device).manual_seed(EVAL_SEED)
    cols: Dict[str, List[Tensor]] = {}

    def put(key: str, value: Tensor) -> None:
        cols.setdefault(key, []).append(value.detach().cpu())

    for sl in tqdm(_batches(X.shape[0], preset.eval_batch_size), desc="evaluate subset",
                   disable=not progress, dynamic_ncols=True):
        x, y = X[sl], Y[sl]
        with torch.no_grad():
            t = runner_up(model(x), y)
        put("label", y)
        put("runner_up", t)
        if smooth:
            for targets, tname in (("runner-up", "runner-up"), ("all", "all-classes")):
                cert = duality.certify(model, x, y, targets=targets, bounds=bounds, progress=False)
                put(f"radius/{tname}/global", cert.radius)
                put(f"tight/{tname}/global", cert.tight)
                put(f"target/{tname}/global", cert.target)
                put(f"paper_radius/{tname}", torch.where(cert.paper_counted, cert.paper_radius,
                                                         torch.zeros_like(cert.paper_radius)))
                put(f"paper_counted/{tname}", cert.paper_counted)
            if model.num_layers == 2:
                cert = duality.certify(model, x, y, targets="runner-up", bounds="local",
                                       progress=False)
                put("radius/runner-up/local", cert.radius)
                put("tight/runner-up/local", cert.tight)
            for rho in EVAL_RADII:
                adv = duality.attack(model, x, y, rho, targets="runner-up")
                put(f"attack_tight/runner-up/{format_radius(rho)}", adv.tight)
        correct = torch.ones_like(y, dtype=torch.bool)
        for name, module in baselines.items():
            if name == "crown" and crown_mode == "radius":
                put("radius/runner-up/crown", module.certify(model, x, y, targets="runner-up").radius)
            flags = _baseline_flags_nested(module, model, x, y, t, EVAL_RADII, correct)
            for rho in EVAL_RADII:
                ru, every = flags[rho]
                put(f"certified/runner-up/{name}/{format_radius(rho)}", ru)
                put(f"certified/all-classes/{name}/{format_radius(rho)}", every)
        for rho in EVAL_RADII:
            steps, size = preset.pgd_eval(rho)
            for targets in ("runner-up", "untargeted"):
                x_adv = attacks.pgd_l2(model, x, y, rho, steps=steps, step_size=size,
                                       targets=targets, restarts=1, random_start=True,
                                       generator=pgd_gen)
                with torch.no_grad():
                    put(f"pgd_robust/{targets}/{format_radius(rho)}", model(x_adv).argmax(1) == y)
    return {k: torch.cat(v) for k, v in cols.items()}


def soundness_audit(model, X: Tensor, Y: Tensor, radius: Tensor, *, restarts: int, steps: int,
                    scale: float = AUDIT_SCALE, batch_size: int = 100,
                    seed: int = EVAL_SEED) -> Dict[str, Any]:
    """Attack every certified image inside its certificate; a success is a violated certificate.

    Untargeted PGD-l2 (:func:`crc_core.attacks.pgd_l2`, ``restarts`` random starts of ``steps``
    steps of 2.5 r/steps) at radius ``scale`` × r for each image whose all-classes radius r is
    positive; a point counts as a violation where the float64 network (the one certified)
    classifies it otherwise than y. Returns ``{"violations", "images", "pairs", "restarts", "steps", "scale",
    "violating_indices"}`` (indices into X); ``pairs`` = images × restarts.
    """
    keep = torch.nonzero(radius > 0).reshape(-1)
    model64 = _float64_copy(model)
    violating: List[int] = []
    gen = torch.Generator(device=X.device).manual_seed(seed)
    for sl in _batches(int(keep.numel()), batch_size):
        rows = keep[sl]
        x, y = X[rows], Y[rows]
        rho = (radius[rows] * scale).to(X.dtype)
        x_adv = attacks.pgd_l2(model, x, y, rho, steps=steps, step_size=float(2.5 * rho.max() / steps),
                               targets="untargeted", restarts=restarts, random_start=True,
                               generator=gen)
        with torch.no_grad():   # the certificate is for the float64 network
            wrong = model64(x_adv.double()).argmax(1) != y
        violating.extend(rows[wrong.cpu()].tolist())
    return {"violations": len(violating), "images": int(keep.numel()),
            "pairs": int(keep.numel()) * int(restarts), "restarts": int(restarts),
            "steps": int(steps), "scale": scale, "violating_indices": violating}


def curvature_table(model, Y: Tensor, t: Tensor, X: Tensor) -> Dict[str, Any]:
    """Figure 1's numbers per distinct (label, runner-up) pair of the subset: ``y``, ``t``,
    ``K_ub`` (Theorem 4), ``K_lb`` (largest exact Hessian eigenvalue seen for the pair), ``m``,
    ``M`` (the tightest rigorous global bounds); each a list over pairs."""
    pairs = torch.unique(torch.stack([Y.cpu(), t.cpu()], dim=1), dim=0)
    device = X.device
    py, pt = pairs[:, 0].to(device), pairs[:, 1].to(device)
    K_ub = curvature.theorem4_bound(model, py, pt).double().cpu()
    m, M = (v.double().cpu() for v in curvature.global_bounds(model, py, pt))
    emp = curvature.empirical_curvature(model, X, Y, t.to(device))
    K_lb = emp.table.cpu()[pairs[:, 0], pairs[:, 1]].double()
    return {"y": pairs[:, 0].tolist(), "t": pairs[:, 1].tolist(), "K_ub": round_up(K_ub),
            "K_lb": [round(v, DIGITS) for v in K_lb.tolist()], "m": round_down(m),
            "M": round_up(M)}


def _stored(table: Mapping[str, Tensor]) -> Dict[str, list]:
    """A table's columns as JSON lists: radii rounded down, bools and ints as such."""
    out: Dict[str, list] = {}
    for key, values in table.items():
        if values.dtype == torch.bool:
            out[key] = [bool(v) for v in values.tolist()]
        elif values.is_floating_point():
            out[key] = round_down(values)
        else:
            out[key] = [int(v) for v in values.tolist()]
    return out


def evaluate(model, spec: TrainSpec, preset: str | Preset = "cpu", *, tables: Sequence[str] = (),
             progress: bool = True, device: str | torch.device = "cpu",
             crown_mode: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate a trained network: the two per-image tables, the audit, the metrics.

    Args:
        model: the trained :class:`crc_core.MLP` (the last epoch's weights; moved to ``device``).
        spec: its training spec (data set, method).
        preset: the evaluation budget (subset size, batch sizes, PGD steps, audit).
        tables: the tables the run serves (Table 5's smooth nets get CROWN radii).
        progress: tqdm bars.
        device: where to evaluate.
        crown_mode: one of :data:`CROWN_MODES`; None: :func:`default_crown_mode`.

    Returns:
        ``{"evaluation": settings, "metrics": ..., "per_test_image": ..., "per_image": ...,
        "curvature_pairs": ... or None, "audit": ... or None}``, JSON-serializable, keys
        documented in ``results/README.md``; per-image radii rounded down to 1e-5, and the
        metrics computed from those stored columns (so a file's metrics always equal what its
        per-image arrays give).
    """
    preset = get_preset(preset)
    if crown_mode is None:
        crown_mode = default_crown_mode(spec, tables)
    if crown_mode not in CROWN_MODES:
        raise ValueError(f"crown_mode={crown_mode!r} is invalid: expected None or one of {list(CROWN_MODES)}")
    device = torch.device(device)
    model = model.to(device).eval()
    smooth = model.activation.has_curvature
    seconds: Dict[str, float] = {}

    start = time.perf_counter()
    bounds = curvature.all_pair_bounds(model) if smooth else None
    seconds["bounds"] = time.perf_counter() - start

    Xt, Yt = data.load(spec.dataset, "test")
    n_test = Xt.shape[0] if preset.test_n is None else min(preset.test_n, Xt.shape[0])
    Xt, Yt = Xt[:n_test].to(device), Yt[:n_test].to(device)
    start = time.perf_counter()
    test = test_set_table(model, spec, Xt, Yt, preset, bounds=bounds, crown_mode=crown_mode,
                          progress=progress)
    seconds["test_set"] = time.perf_counter() - start

    start = time.perf_counter()
    idx = evaluation_subset(model, Xt, Yt, preset.eval_n, seed=EVAL_SEED).to(device)
    X, Y = Xt[idx], Yt[idx]
    subset = subset_table(model, spec, X, Y, preset, bounds=bounds, crown_mode=crown_mode,
                          progress=progress)
    seconds["subset"] = time.perf_counter() - start

    pairs = audit = None
    if smooth:
        start = time.perf_counter()
        pairs = curvature_table(model, Y, subset["runner_up"].to(device), X)
        seconds["curvature"] = time.perf_counter() - start
        start = time.perf_counter()
        audit = soundness_audit(model, X, Y, subset["radius/all-classes/global"].to(device),
                                restarts=preset.audit_restarts, steps=preset.audit_steps)
        audit["violating_indices"] = [int(idx[i]) for i in audit["violating_indices"]]
        seconds["audit"] = time.perf_counter() - start

    per_test = _stored(test)
    per_image = {"index": [int(i) for i in idx.tolist()], **_stored(subset)}
    settings = {
        "n_test": int(n_test), "n_subset": int(X.shape[0]), "subset_seed": EVAL_SEED,
        "radii": list(EVAL_RADII), "local_bounds": bool(smooth and model.num_layers == 2),
        "pgd": {format_radius(r): dict(zip(("steps", "step_size"), preset.pgd_eval(r)))
                for r in EVAL_RADII},
        "pgd_restarts": 1, "crown_mode": crown_mode,
        "test_set_certificates": sorted({k.split("/")[2] for k in test if k.count("/") >= 2}),
        "subset_certificates": sorted({k.split("/")[2] for k in subset if k.count("/") >= 2
                                       and k.startswith(("radius/", "certified/"))}),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    return {"evaluation": settings,
            "metrics": summarize(per_test, per_image, pairs),
            "per_test_image": per_test, "per_image": per_image,
            "curvature_pairs": pairs, "audit": audit}
