"""Benchmark of crc_core.curvature on the paper's architectures (MNIST-sized, random weights).

Run: ``.venv/bin/python benchmarks/curvature.py`` (about 1–3 minutes on 2 CPU cores).

1. ``all_pair_bounds`` (rigorous, all 90 pairs) for 2×1024 and 3×1024 nets (nothing is cached:
   a caller computes these tables once per model and passes them on).
2. A γ-regularized training step (cross-entropy + γ·mean K, ``curvature_penalty``) against a
   plain step: 2×1024 softplus, batch 128, Adam, same process, interleaved; the ratio (goal ≤ 1.5).
3. The training-time estimate (``CurvatureEstimator.bounds``, one estimator held across steps as
   ``training.train`` does) for a batch of 128, called once per Adam step of a γ-regularized run
   from a fresh init: cold (first call) and warm (early steps, where the weights move fast, and
   steps 41-50).
4. ``local_bounds`` for a 2×1024 sigmoid net: seconds per image.
5. The small side of ``verified_linalg.lambda_max_upper``: a 2×32 softplus net (W1 is 32×784),
   the mixed-sign diagonals P, −N of the local bound for 20 images: the N×N proof against dense
   ``eigvalsh`` of the 784×784 matrices (the previous path: Lanczos broke down on these rank-32
   matrices and fell back to it), same inputs; the ratio and the largest gap of the bounds.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from crc_core import MLP, curvature, verified_linalg
from crc_core.activations import get_activation
from crc_core.local_bounds import ball_ranges

_SKIP_DEEP = False


def _timed(fn, repeat=1):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _runner_up(logits, y):
    masked = logits.detach().clone()
    masked[torch.arange(len(y)), y] = -float("inf")
    return masked.argmax(1)


def bench_all_pairs():
    print("\n[1] all_pair_bounds (rigorous, 90 pairs, float64)")
    for widths, act in (([784, 1024, 10], "softplus"), ([784, 1024, 10], "sigmoid"),
                        ([784, 1024, 1024, 10], "softplus")):
        if _SKIP_DEEP and len(widths) > 3:
            continue
        torch.manual_seed(0)
        model = MLP(widths, act)
        (m, M), t_first = _timed(lambda: curvature.all_pair_bounds(model))
        L = len(widths) - 1
        extra = ""
        if L >= 3:
            K = curvature.all_pair_bounds(model, "theorem4")[1]
            extra = f", mean M/K = {float((M / K).nanmean()):.3f}"
        print(f"  L={L} {act:8s} {widths}: {t_first[0]:6.2f} s; "
              f"mean M = {float(M.nanmean()):.4g}, mean m = {float(m.nanmean()):.4g}{extra}")


def bench_training_step(steps=25, batch=128, gamma=0.01):
    print(f"\n[2] training step, 2x1024 softplus, batch {batch}, Adam, gamma = {gamma}")
    torch.manual_seed(0)
    model = MLP([784, 1024, 10], "softplus")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    X = torch.rand(batch * 4, 784, generator=gen)
    Y = torch.randint(0, 10, (batch * 4,), generator=gen)

    def step(i, with_penalty):
        x = X[(i % 4) * batch:(i % 4 + 1) * batch]
        y = Y[(i % 4) * batch:(i % 4 + 1) * batch]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if with_penalty:
            t = _runner_up(logits, y)
            loss = loss + gamma * curvature.curvature_penalty(model, y, t).mean()
        loss.backward()
        opt.step()

    for i in range(5):  # warm-up
        step(i, True)
        step(i, False)
    plain, reg = [], []
    for i in range(steps):
        for with_penalty, store in ((False, plain), (True, reg)):
            t0 = time.perf_counter()
            step(i, with_penalty)
            store.append(time.perf_counter() - t0)
    p, r = statistics.median(plain), statistics.median(reg)
    print(f"  plain step {p * 1e3:6.2f} ms, gamma-regularized {r * 1e3:6.2f} ms (medians of {steps}); "
          f"ratio {r / p:.2f} (goal <= 1.5)")
    yb = Y[:8]
    tb = (yb + 1) % 10
    _, t_pen = _timed(lambda: curvature.curvature_penalty(model, yb, tb), repeat=20)
    print(f"  curvature_penalty forward alone: {statistics.median(t_pen) * 1e3:.2f} ms")


def bench_estimate(batch=128, steps=50):
    print(f"\n[3] training-time estimate CurvatureEstimator.bounds, batch {batch}, called once per "
          "Adam training step (warm start)")
    for widths in ([784, 1024, 10], [784, 1024, 1024, 10]):
        torch.manual_seed(0)
        model = MLP(widths, "softplus")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(2)
        X = torch.rand(batch, 784, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        t = (y + 1 + torch.randint(0, 9, (batch,), generator=gen)) % 10
        n_pairs = int(torch.unique(y * 10 + t).numel())
        estimator = curvature.CurvatureEstimator()
        times = []
        for i in range(steps + 1):
            opt.zero_grad(set_to_none=True)
            K = curvature.curvature_penalty(model, y, t)
            loss = F.cross_entropy(model(X), y) + 0.01 * K.mean()
            loss.backward()
            opt.step()
            _, tw = _timed(lambda: estimator.bounds(model, y, t))
            times.append(tw[0])
        me, Me = estimator.bounds(model, y, t)
        m, M = curvature.global_bounds(model, y, t)
        rel = float(((M - Me) / M).abs().max())
        print(f"  L={len(widths) - 1} ({n_pairs} distinct pairs): cold {times[0] * 1e3:7.1f} ms, "
              f"warm: steps 1-10 {statistics.median(times[1:11]) * 1e3:6.1f} ms, steps "
              f"{steps - 9}-{steps} {statistics.median(times[-10:]) * 1e3:6.1f} ms (medians); "
              f"max relative gap to the rigorous M: {rel:.1e}")


def bench_local(n=4):
    print(f"\n[4] local_bounds, 2x1024 sigmoid, {n} images, radius 0.5")
    torch.manual_seed(0)
    model = MLP([784, 1024, 10], "sigmoid")
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(3))
    y = torch.arange(n) % 10
    t = (y + 3) % 10
    mg, Mg = curvature.global_bounds(model, y, t)      # held and passed on: times the local part
    (m, M), tl = _timed(lambda: curvature.local_bounds(model, x, y, t, 0.5,
                                                       global_pair_bounds=(mg, Mg)))
    print(f"  {tl[0] / n:.2f} s per image; mean M local / global = {float((M / Mg).mean()):.3f}")


def bench_small_side(n=20):
    print(f"\n[5] lambda_max_upper, small side: 2x32 softplus, P and -N of {n} local bounds "
          "(radius 0.5)")
    torch.manual_seed(0)
    model = MLP([784, 32, 10], "softplus")
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(3))
    y = torch.arange(n) % 10
    t = (y + 3) % 10
    _, d2, _ = ball_ranges(model, get_activation("softplus"), x, torch.full((n,), 0.5,
                                                                             dtype=torch.float64))
    W1, W2 = (w.detach().double() for w in model.weights)
    w = W2[y] - W2[t]
    n_lo, p_hi = verified_linalg.interval_product(w, w, d2[0][0], d2[0][1])
    D = torch.cat([p_hi, -n_lo])                               # (2n, 32), mixed signs
    new, t_new = _timed(lambda: verified_linalg.lambda_max_upper(W1, D), repeat=3)
    scale = D.abs().amax(1) * (W1 * W1).sum()

    def dense():
        lam = torch.linalg.eigvalsh(verified_linalg.weighted_gram(W1, D))[:, -1]
        return lam + verified_linalg.margin_factor(784) * (lam.abs() + scale)

    old, t_old = _timed(dense)
    a, b = min(t_new), min(t_old)
    print(f"  N×N proof {a * 1e3:7.1f} ms, dense 784×784 eigvalsh {b * 1e3:7.1f} ms "
          f"({2 * n} rows): ratio old/new {b / a:.0f}; largest |gap| / bound "
          f"{float(((new - old).abs() / old.abs()).max()):.1e}")
    (_, _), tl = _timed(lambda: curvature.local_bounds(model, x, y, t, 0.5))
    print(f"  curvature.local_bounds, 2x32 softplus: {tl[0] / n * 1e3:.1f} ms per image")


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--skip-deep", action="store_true", help="skip the 3x1024 all-pairs timing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global _SKIP_DEEP
    _SKIP_DEEP = args.skip_deep
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device cpu, default dtype {torch.get_default_dtype()}")
    t0 = time.perf_counter()
    bench_training_step()
    bench_estimate()
    bench_all_pairs()
    bench_local()
    bench_small_side()
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
