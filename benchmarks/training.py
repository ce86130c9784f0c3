"""Benchmark the CRT training step: our attack against the authors' 30 × 10 schedule.

Run from the repository root (under 5 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/training.py                 # 2×[1024] softplus, batch 128, ρ = 1.58
    .venv/bin/python benchmarks/training.py --threads 2 --repeats 5

Both CRT steps compute the same loss, cross-entropy at the attack point plus γ · mean K
(equation (7)), with its backward pass, on the same batch of MNIST training images and the same
network; only the attack differs (:func:`crc_core.training.crt_attack` with the two values of
``TrainSpec.attack_schedule``):

- **ours** (``"crc"``, the ``cpu`` preset): :func:`crc_core.duality.attack`, 10 model steps,
  11 gradient evaluations per batch;
- **authors'** (``"authors"``, the ``paper`` preset): :func:`crc_core.duality.attack_reference`,
  the schedule of their public code — bisection on η over [|m|, |m| + 1000], 30 steps; for each
  η, 10 majorize-minimize steps ``x ← (M x − ∇f(x) + η x0) / (M + η)`` from x0; η moves up when
  ‖x − x0‖ > ρ; 301 gradient evaluations per batch.

Both take the curvature bounds from the training-time estimate, one
:class:`crc_core.curvature.CurvatureEstimator` held across steps as ``training.train`` does
(included in the timings). The network is first
trained for ``--warmup-steps`` CRT steps (our attack) so that its margins are those of a CRT
network in training rather than of a random one. Printed: seconds per CRT step (median of ``--repeats``),
and the strength of both attacks — mean ‖x − x0‖, mean f = z_y − z_t at the attack point (lower
is stronger), fraction tight (``AttackResult.tight``: on the sphere with a converged inner
problem, so f there is the exact minimum over the ball) — with the ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crc_core import MLP, curvature, data, training  # noqa: E402
from crc_core.attacks import runner_up  # noqa: E402
from crc_core.experiments import PRESETS, RUNS  # noqa: E402

RUN = "mnist-softplus-2x1024-crt-g0.01-r1.58"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--width", type=int, default=1024, help="hidden width (default 1024)")
    p.add_argument("--activation", default="softplus")
    p.add_argument("--rho", type=float, default=1.58, help="training radius (default 1.58)")
    p.add_argument("--gamma", type=float, default=0.01, help="γ (default 0.01)")
    p.add_argument("--warmup-steps", type=int, default=150,
                   help="CRT training steps (our attack) before timing (default 150)")
    p.add_argument("--repeats", type=int, default=3, help="timed CRT steps per variant (median kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest when other processes share the cores)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def crt_step(model, x, y, t, spec, estimator):
    """One CRT loss and backward pass; returns (seconds, AttackResult)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    adv = training.crt_attack(model, x, y, t, spec, estimator)
    loss = F.cross_entropy(model(adv.x.detach()), y)
    if spec.gamma > 0:
        loss = loss + spec.gamma * curvature.curvature_penalty(model, y, t).mean()
    loss.backward()
    return time.perf_counter() - start, adv


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    X, Y = data.load("mnist", "train")
    model = MLP([784, args.width, 10], args.activation)
    ours = PRESETS["cpu"].apply(RUNS[RUN].spec).replace(
        widths=(784, args.width, 10), activation=args.activation, rho=args.rho, gamma=args.gamma,
        batch_size=args.batch)
    authors = ours.replace(attack_schedule="authors")

    # Warm-up: CRT training with our attack, so that the margins and curvature are those of a
    # CRT network in training rather than of a random one.
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    estimator = curvature.CurvatureEstimator()
    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        idx = torch.randint(0, X.shape[0], (args.batch,), generator=gen)
        x, y = X[idx], Y[idx]
        with torch.no_grad():
            t = runner_up(model(x), y)
        crt_step(model, x, y, t, ours, estimator)
        opt.step()
    print(f"warm-up: {args.warmup_steps} CRT steps in {time.perf_counter() - t0:.1f} s; "
          f"torch threads: {torch.get_num_threads()}")

    idx = torch.randperm(X.shape[0], generator=gen)[:args.batch]
    x, y = X[idx], Y[idx]
    with torch.no_grad():
        t = runner_up(model(x), y)
    m, M = estimator.bounds(model, y, t)
    print(f"network 2×[{args.width}] {args.activation}, batch {args.batch}, ρ = {args.rho}, "
          f"γ = {args.gamma}; curvature estimate: mean m {float(m.mean()):.3f}, "
          f"mean M {float(M.mean()):.3f}")

    rows = {}
    for name, spec in ((f"ours ({ours.attack_steps} steps)", ours), ("authors' (30×10)", authors)):
        crt_step(model, x, y, t, spec, estimator)  # warm the estimator on these pairs
        times = []
        for _ in range(args.repeats):
            seconds, adv = crt_step(model, x, y, t, spec, estimator)
            times.append(seconds)
        rows[name] = {"seconds": statistics.median(times), "grads": adv.grad_evals,
                      "dist": float(adv.distance.mean()), "f": float(adv.margin.mean()),
                      "tight": float(adv.tight.float().mean())}

    print(f"\n{'attack':<18} {'s / CRT step':>12} {'gradients':>9} {'mean ‖x−x0‖':>12} "
          f"{'mean f(x)':>10} {'tight':>7}")
    for name, r in rows.items():
        print(f"{name:<18} {r['seconds']:>12.3f} {r['grads']:>9d} {r['dist']:>12.4f} "
              f"{r['f']:>10.4f} {r['tight']:>7.1%}")
    a, b = rows.values()
    print(f"\nspeed-up per CRT step (authors' / ours): {b['seconds'] / a['seconds']:.1f}×")
    print(f"mean ‖x−x0‖ ratio (ours / authors'): {a['dist'] / b['dist']:.4f}")
    print(f"mean f: ours − authors' = {a['f'] - b['f']:+.2e} (negative: ours finds lower margins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
