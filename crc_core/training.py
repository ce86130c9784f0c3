"""Training: standard, γ-regularized, CRT and PGD adversarial training (Section 6 of the paper).

One entry point, :func:`train`, driven by a serializable :class:`TrainSpec`. The per-sample
losses, with t the runner-up class at the clean input (the largest logit other than y):

.. math::
    \\text{standard:}\\ \\ell(z(x^{(0)}), y), \\qquad
    \\text{curvature:}\\ \\ell(z(x^{(0)}), y) + γ K(W, y, t),

.. math::
    \\text{crt:}\\ \\ell(z(x^{(attack)}), y) + γ K(W, y, t), \\qquad
    \\text{pgd:}\\ \\ell(z(x^{(pgd)}), y)\\ (+\\, γ K \\text{ if } γ > 0),

equation (7) of the paper, with ℓ the cross-entropy, K the Theorem 4 curvature bound
(:func:`crc_core.curvature.curvature_penalty`, power-iteration spectral norms advanced by one step
per call), x^(attack) the solution of the CRT attack of Definition 2
(:func:`crc_core.duality.attack`, detached: no gradient flows through the attack) and x^(pgd) a
PGD-l2 point (:func:`crc_core.attacks.pgd_l2`). The mean over the batch is minimized with Adam.

A run lives in a directory (``runs/…``, git-ignored)::

    checkpoint.pt     everything needed to resume: model, optimizer, completed epochs,
                      the data-order generator's state, the global torch RNG state, the
                      curvature estimate's warm-start vectors, history
    model-best.pt     the authors' checkpoint: best clean test accuracy so far (MLP.save format;
                      kept for comparison: the evaluation uses the last epoch, crc_core.store)
    model-last.pt     the weights after the last completed epoch (MLP.save format)
    spec.json         the TrainSpec, readable
    history.json      one row per epoch: loss, train accuracy, mean K, test accuracy, seconds, lr

Every file is written atomically (temporary file, then ``os.replace``), after each epoch. An
interrupted run resumes at the last completed epoch and ends with exactly the weights an
uninterrupted run reaches (same spec, same device; CPU tested).

Example:
    >>> spec = TrainSpec(widths=(784, 32, 10), method="curvature", gamma=0.01, epochs=1,
    ...                  train_subset=512)
    >>> model = train(spec, "runs/example", progress=False)     # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from . import attacks, baselines, checks, curvature, duality
from . import data as data_module
from .atomic_files import atomic_json as _atomic_json
from .atomic_files import atomic_torch_save as _atomic_torch_save
from .atomic_files import atomic_write_via
from .models import MLP
from .train_spec import (ATTACK_SCHEDULES, BASELINE_METHODS, LR_SCHEDULES, METHODS, PGD_TARGETS,
                         TRAINABLE_METHODS, TrainSpec)

Tensor = torch.Tensor

__all__ = [  # TrainSpec and the method lists live in train_spec; re-exported here
    "METHODS", "TRAINABLE_METHODS", "BASELINE_METHODS", "LR_SCHEDULES", "PGD_TARGETS",
    "ATTACK_SCHEDULES",
    "TrainSpec", "train", "load_model", "read_history", "is_trained", "is_implemented",
    "training_progress",
    "accuracy", "crt_attack", "CHECKPOINT", "BEST", "LAST",
]

CHECKPOINT = "checkpoint.pt"
BEST = "model-best.pt"
LAST = "model-last.pt"
_CHECKPOINT_FORMAT = "crc-train-checkpoint-1"

def is_implemented(method: str) -> bool:
    """Whether :func:`train` can train ``method`` here (False for ``"coap"`` without the
    ``convex_adversarial`` package: :data:`crc_core.baselines.TRAINING_LOSSES` lacks it)."""
    if method in TRAINABLE_METHODS:
        return True
    if method in BASELINE_METHODS:
        return method in baselines.TRAINING_LOSSES
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def training_progress(spec: "TrainSpec", epoch: int, step: int, steps_per_epoch: int) -> float:
    """Fraction of the training steps completed before this step, in [0, 1).

    .. math::
        p = \\frac{e\\,S + s}{E\\,S}

    with e the 0-based epoch, s the 0-based step within it, S the steps per epoch and E =
    ``spec.epochs``. The baselines' schedules (:mod:`crc_core.baselines.schedules`) are
    functions of p.

    Args:
        spec: the run's :class:`TrainSpec` (``epochs``).
        epoch: 0-based epoch; step: 0-based step within the epoch.
        steps_per_epoch: S = ⌈n / batch size⌉ for n training examples.

    Example:
        >>> training_progress(spec, 1, 0, 10)          # spec.epochs = 2: half-way
        0.5
    """
    return (epoch * steps_per_epoch + step) / (spec.epochs * steps_per_epoch)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def accuracy(model: MLP, X: Tensor, Y: Tensor, batch_size: int = 2000) -> float:
    """Clean accuracy of ``model`` on (X (N, D), Y (N,)), on the model's device."""
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, X.shape[0], batch_size):
        x = X[start:start + batch_size].to(device)
        y = Y[start:start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, X.shape[0])


def _train_data(spec: TrainSpec) -> Tuple[Tensor, Tensor]:
    X, Y = data_module.load(spec.dataset, "train")
    if spec.train_subset is not None and spec.train_subset < X.shape[0]:
        g = torch.Generator().manual_seed(spec.seed)
        idx = torch.randperm(X.shape[0], generator=g)[:spec.train_subset]
        X, Y = X[idx], Y[idx]
    return X, Y


def _lr_at(spec: TrainSpec, epoch: int) -> float:
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / spec.epochs))
    return spec.lr


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------

def crt_attack(model: MLP, x: Tensor, y: Tensor, t: Tensor, spec: TrainSpec,
               estimator: Optional[curvature.CurvatureEstimator] = None):
    """The CRT attack of Definition 2 for a training batch, with the spec's schedule.

    The curvature bounds are the training-time estimate of ``estimator`` (warm-started Lanczos,
    an estimate from below, not a bound); the attack only needs them to set its steps.

    Args:
        model: the network being trained.
        x: (B, D) clean inputs; y: (B,) labels; t: (B,) targets (the runner-up classes).
        spec: a ``crt`` spec (``rho``, ``attack_schedule``, ``attack_steps``).
        estimator: the run's :class:`~crc_core.curvature.CurvatureEstimator` (its warm start
            advances); None uses a fresh one (a cold start).

    Returns:
        :class:`crc_core.duality.AttackResult`; its ``x`` (B, D) is the attack point.
    """
    if estimator is None:
        estimator = curvature.CurvatureEstimator()
    m, M = estimator.bounds(model, y, t)
    if spec.attack_schedule == "crc":
        return duality.attack(model, x, y, spec.rho, targets=t, bounds=(m, M),
                              steps=spec.attack_steps)
    p = next(model.parameters())
    return duality.attack_reference(duality.margin_function(model, y, t), x.detach().to(p.dtype),
                                    m.to(p.dtype), M.to(p.dtype), spec.rho)


def _crt_loss_k_targets(model: MLP, x: Tensor, y: Tensor, logits0: Tensor, spec: TrainSpec,
                        estimator: Optional[curvature.CurvatureEstimator]) -> Tensor:
    """CRT's attack loss against k = ``spec.crt_attack_targets`` target classes.

    .. math::
        \\frac{1}{B} \\sum_i \\max_{t \\in T_k(x_i)} \\mathrm{CE}\\big(z(x_i^{(attack, t)}), y_i\\big)

    T_k(x): the k largest clean logits other than y (:func:`checks.largest_other_classes`);
    x^(attack, t): the CRT attack (:func:`crt_attack`) on z_y − z_t, all B·k problems in one
    batch. x: (B, D), y: (B,), logits0: (B, C) clean logits. Returns a scalar."""
    B, k = x.shape[0], spec.crt_attack_targets
    T = checks.largest_other_classes(logits0, y, k)                  # (B, k)
    xk = x.unsqueeze(1).expand(B, k, x.shape[1]).reshape(B * k, -1)  # row i*k + j: image i, T[i, j]
    yk = y.repeat_interleave(k)
    x_attack = crt_attack(model, xk, yk, T.reshape(-1), spec, estimator).x.detach()
    ce = F.cross_entropy(model(x_attack), yk, reduction="none").view(B, k)
    return ce.max(dim=1).values.mean()


def _theorem3_penalty_all_targets(model: MLP, y: Tensor, logits0: Tensor,
                                  estimator: Optional[curvature.CurvatureEstimator]) -> Tensor:
    """max over every t ≠ y of Theorem 3's penalty K̂₃(y, t)
    (:meth:`~crc_core.curvature.CurvatureEstimator.theorem3_penalty`), (B,): the curvature bound
    of the all-classes certificate. y: (B,), logits0: (B, C) clean logits."""
    B, others = y.shape[0], logits0.shape[1] - 1
    T = checks.largest_other_classes(logits0, y, others)               # (B, C − 1)
    K = (estimator or curvature.CurvatureEstimator()).theorem3_penalty(
        model, y.repeat_interleave(others), T.reshape(-1))
    return K.view(B, others).max(dim=1).values


def _loss(model: MLP, x: Tensor, y: Tensor, spec: TrainSpec, progress: float,
          estimator: Optional[curvature.CurvatureEstimator] = None):
    """(loss scalar, clean logits (B, C) detached, mean K or None) for one batch; ``estimator``:
    the run's curvature estimate for the CRT attack."""
    method = spec.method
    if method in BASELINE_METHODS:
        loss, logits0 = baselines.TRAINING_LOSSES[method](model, x, y, spec, progress)
        return loss, logits0.detach(), None
    need_clean_grad = method in ("standard", "curvature")
    if need_clean_grad:
        logits0 = model(x)
    else:
        with torch.no_grad():
            logits0 = model(x)
    t = attacks.runner_up(logits0, y)
    if method in ("standard", "curvature"):
        loss = F.cross_entropy(logits0, y)
    elif method == "crt" and spec.crt_attack_targets == 1:
        # The paper's attack, kept apart from the k-target loss so that the stored runs retrain
        # bit for bit (argmax and topk order tied logits differently).
        x_attack = crt_attack(model, x, y, t, spec, estimator).x.detach()
        loss = F.cross_entropy(model(x_attack), y)
    elif method == "crt":
        loss = _crt_loss_k_targets(model, x, y, logits0, spec, estimator)
    else:  # pgd
        x_adv = attacks.pgd_l2(model, x, y, spec.rho, steps=spec.pgd_steps,
                               step_size=spec.effective_pgd_step_size, targets=spec.pgd_targets,
                               restarts=1, random_start=True)
        loss = F.cross_entropy(model(x_adv.detach()), y)
    K_mean = None
    if spec.gamma > 0:
        if spec.penalty_bound == "theorem3":
            K = (estimator or curvature.CurvatureEstimator()).theorem3_penalty(model, y, t)
        elif spec.penalty_bound == "theorem3-all":
            K = _theorem3_penalty_all_targets(model, y, logits0, estimator)
        else:
            K = curvature.curvature_penalty(model, y, t)
        K_mean = K.mean()
        loss = loss + spec.gamma * K_mean
        K_mean = float(K_mean.detach())
    return loss, logits0.detach(), K_mean


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_model(model: MLP, path: Path) -> None:
    atomic_write_via(path, model.save)


def read_history(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """The per-epoch history of a run (``[]`` if it has no checkpoint yet)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return []
    return torch.load(path, map_location="cpu", weights_only=True)["history"]


def is_trained(spec: TrainSpec, run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``spec``."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["spec"] == spec.to_dict() and ckpt["epoch"] >= spec.epochs


def load_model(run_dir: str | os.PathLike, which: str = "best",
               device: str | torch.device = "cpu") -> MLP:
    """Load ``model-best.pt`` (the paper's checkpoint) or ``model-last.pt`` from a run directory."""
    if which not in ("best", "last"):
        raise ValueError(f"which={which!r} is invalid: expected 'best' or 'last'")
    path = Path(run_dir) / (BEST if which == "best" else LAST)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the run first")
    return MLP.load(path, map_location=device).to(device)


# ------------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------------

def train(spec: TrainSpec, run_dir: str | os.PathLike, *, resume: bool = True,
          progress: bool = True, device: str | torch.device = "cpu",
          until_epoch: Optional[int] = None, select: str = "best") -> MLP:
    """Train a network as ``spec`` says, checkpointing into ``run_dir`` after every epoch.

    The initialization is drawn after ``torch.manual_seed(spec.seed)``; the data order comes from
    a ``torch.Generator`` seeded with ``spec.seed``; the attacks draw from the global torch RNG.
    All three states are saved with each checkpoint and restored on resume, so an interrupted
    run ends with the same weights as an uninterrupted one (same device; on CPU bit for bit).
    The test set's clean accuracy is evaluated after each epoch; the best epoch's weights are
    kept in ``model-best.pt`` (the authors' rule) beside ``model-last.pt``.

    Args:
        spec: the run.
        run_dir: its directory (created). If it holds a checkpoint of the same spec and
            ``resume`` is True, training continues after the last completed epoch; a finished
            run is just loaded.
        resume: False starts over, overwriting any checkpoint in ``run_dir``.
        progress: show a tqdm bar per epoch with loss, accuracy and mean K.
        device: where to train (``"cpu"``, ``"cuda"``, …).
        until_epoch: stop after this epoch (1-based) even if ``spec.epochs`` is larger, e.g. to
            split a long run over sessions; a later call resumes. ``None``: run to the end.
        select: which weights to return, ``"best"`` (the paper's checkpoint) or ``"last"``.

    Returns:
        The trained :class:`MLP` on ``device`` (in eval mode).

    Raises:
        ValueError: ``run_dir`` holds a checkpoint of a different spec (with ``resume=True``),
            or a bad ``select`` / ``until_epoch``.
        NotImplementedError: for a baseline method whose training loss is not registered yet.
    """
    if select not in ("best", "last"):
        raise ValueError(f"select={select!r} is invalid: expected 'best' or 'last'")
    if until_epoch is not None and until_epoch < 1:
        raise ValueError(f"until_epoch={until_epoch!r} is invalid: expected None or an integer >= 1")
    if not is_implemented(spec.method):
        raise NotImplementedError(
            f"method {spec.method!r} is reserved for the baselines (crc_core.baselines) and is not "
            "implemented yet")
    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    last_epoch = spec.epochs if until_epoch is None else min(spec.epochs, until_epoch)

    # --- state: fresh or resumed ---------------------------------------------------------------
    torch.manual_seed(spec.seed)
    model = MLP(spec.widths, spec.activation).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    data_gen = torch.Generator().manual_seed(spec.seed)
    # The CRT attack's curvature estimate: its Lanczos warm-start vectors change the estimates
    # slightly, so they are saved with each checkpoint ("solver_state") for an exact resume.
    estimator = curvature.CurvatureEstimator()
    history: List[Dict[str, Any]] = []
    best = {"epoch": 0, "test_accuracy": -1.0}
    start_epoch = 0
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a training checkpoint ({_CHECKPOINT_FORMAT})")
        if ckpt["spec"] != spec.to_dict():
            raise ValueError(
                f"{ckpt_path} holds a run of a different spec; use another run_dir or "
                f"resume=False to start over.\n  stored: {ckpt['spec']}\n  asked:  {spec.to_dict()}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"].cpu())
        _set_rng_state({k: v.cpu() for k, v in ckpt["rng"].items()}, device)
        estimator.load_state_dict(ckpt.get("solver_state", {}), device=device)
        history = list(ckpt["history"])
        best = dict(ckpt["best"])
        start_epoch = int(ckpt["epoch"])
    _atomic_json(spec.to_dict(), run_dir / "spec.json")

    if start_epoch < last_epoch:
        X, Y = _train_data(spec)
        X, Y = X.to(device), Y.to(device)
        Xt, Yt = data_module.load(spec.dataset, "test")
        n = X.shape[0]
        steps_per_epoch = math.ceil(n / spec.batch_size)
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, last_epoch):
            lr = _lr_at(spec, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            t0, cpu0 = time.perf_counter(), time.process_time()
            perm = torch.randperm(n, generator=data_gen).to(device)
            sums = {"loss": 0.0, "correct": 0, "seen": 0, "K": 0.0, "K_batches": 0}
            bar = tqdm(range(steps_per_epoch), desc=f"{spec.method} epoch {epoch + 1}/{spec.epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True)
            for step in bar:
                idx = perm[step * spec.batch_size:(step + 1) * spec.batch_size]
                x, y = X[idx], Y[idx]
                p = training_progress(spec, epoch, step, steps_per_epoch)
                loss, logits0, K_mean = _loss(model, x, y, spec, p, estimator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                b = y.shape[0]
                sums["loss"] += float(loss.detach()) * b
                sums["correct"] += int((logits0.argmax(dim=1) == y).sum())
                sums["seen"] += b
                if K_mean is not None:
                    sums["K"] += K_mean
                    sums["K_batches"] += 1
                if progress:
                    post = {"loss": f"{sums['loss'] / sums['seen']:.3f}",
                            "acc": f"{sums['correct'] / sums['seen']:.3f}"}
                    if sums["K_batches"]:
                        post["K"] = f"{sums['K'] / sums['K_batches']:.3g}"
                    bar.set_postfix(post, refresh=False)
            bar.close()
            model.eval()
            test_acc = accuracy(model, Xt, Yt)
            seconds = time.perf_counter() - t0
            cpu_seconds = time.process_time() - cpu0
            row = {
                "epoch": epoch + 1, "lr": lr,
                "loss": sums["loss"] / sums["seen"],
                "train_accuracy": sums["correct"] / sums["seen"],
                "mean_K": sums["K"] / sums["K_batches"] if sums["K_batches"] else None,
                "test_accuracy": test_acc, "seconds": seconds, "cpu_seconds": cpu_seconds,
            }
            history.append(row)
            if progress:
                k = "" if row["mean_K"] is None else f", K {row['mean_K']:.3g}"
                print(f"{spec.method} epoch {epoch + 1}/{spec.epochs}: loss {row['loss']:.4f}, "
                      f"train acc {row['train_accuracy']:.4f}{k}, test acc {test_acc:.4f} "
                      f"({seconds:.0f} s)", flush=True)
            if test_acc > best["test_accuracy"]:
                best = {"epoch": epoch + 1, "test_accuracy": test_acc}
                _save_model(model, run_dir / BEST)
            _save_model(model, run_dir / LAST)
            _atomic_json(history, run_dir / "history.json")
            _atomic_torch_save({
                "format": _CHECKPOINT_FORMAT, "spec": spec.to_dict(), "epoch": epoch + 1,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "data_rng": data_gen.get_state(), "rng": _rng_state(device),
                "solver_state": estimator.state_dict(),
                "history": history, "best": best,
            }, ckpt_path)

    which = select if (run_dir / (BEST if select == "best" else LAST)).is_file() else "last"
    out = load_model(run_dir, which, device=device)
    out.eval()
    return out
