"""Benchmark of crc_core.duality against the authors' fixed schedules, on one small MNIST net.

Run: ``.venv/bin/python benchmarks/duality.py`` (about 1 minute, one thread; most of it the
authors' schedules); ``--help`` lists the settings. Writes nothing.

The net: 2-layer softplus (784 → width → 10), a few hundred Adam steps of cross-entropy plus
γ·K (``curvature.curvature_penalty``) on MNIST (``crc_core.data``; synthetic MNIST-shaped data
if the files are unavailable), optionally followed by ``--crt-steps`` CRT steps (curvature-limited
certificates become common, as in the paper's CRT models). Then, on the correctly classified
test images among the first ``--images``:

1. Certificate (runner-up target, rigorous global bounds), ours (:func:`duality.certify`)
   vs the authors' schedule (:func:`duality.certify_reference`: 30 bisection steps × 20 MM
   steps): gradient evaluations and wall time per certificate, ratios, and agreement — the
   paper-style value where theirs is counted (goal: within 1e-4), our sound radius ≤ their
   value + 1e-4, fractions counted / tight / curvature-limited. Goal: ≤ 40 evaluations.
   1b. The same on ``--widened-images`` images with m, M multiplied by ``--widen`` (sound but
   looser): most certificates then stop at η = −1/m, the regime of the paper's CRT nets.
2. Attack (Definition 2) at ρ = 0.5 and 1.58, ours (:func:`duality.attack`, 10 steps) vs the
   authors' 30 × 10 bisection (:func:`duality.attack_reference`): batched gradient evaluations,
   wall time, mean ‖x − x0‖ and mean f (goal: within 1%, ≤ 15 evaluations).
3. ``targets="all"`` against ``"runner-up"``: evaluations and wall time (goal ≤ 2.5×).

Both solvers run in float64 on the same float64 copy of the net with the same curvature bounds
(:func:`curvature.all_pair_bounds`, computed once and passed to every call), so the times compare
the solvers only. The solvers live in
:mod:`crc_core.dual_solvers` and :mod:`crc_core.reference_schedules`; :mod:`crc_core.duality`
re-exports them. ``--crt-steps 400 --images 200``
(about 2 minutes) gives a CRT-trained net: there (2 cores, one thread) 12.6 evaluations per
certificate against 601 with 29% curvature-limited and agreement 1.5e-6, and targets="all" at
2.37× the runner-up. ``--activation sigmoid --gamma 0.03`` (a Table 2 net): both solvers tight
(primal = dual, Table 2's "certificate success") on 100% of images with the rigorous bounds and on
2.6% with them widened 16× — the fraction follows the curvature bound, not the solver.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from crc_core import MLP, attacks, curvature, duality


def _data(n_train_steps_data: int, synthetic: bool):
    if not synthetic:
        try:
            from crc_core import data
            X, Y = data.load("mnist", split="train", verbose=False)
            Xt, Yt = data.load("mnist", split="test", verbose=False)
            return X, Y, Xt, Yt, "MNIST"
        except Exception as exc:  # noqa: BLE001 - any failure falls back to synthetic data
            print(f"  (MNIST unavailable: {exc!r}; using synthetic data)")
    gen = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 784, generator=gen)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=gen)
        x = (0.6 * templates[y] + 0.4 * torch.rand(n, 784, generator=gen)).clamp(0, 1)
        return x, y
    X, Y = draw(n_train_steps_data)
    Xt, Yt = draw(2000)
    return X, Y, Xt, Yt, "synthetic"


def train(X, Y, width: int, steps: int, gamma: float, crt_steps: int, rho: float, seed: int = 0,
          activation: str = "softplus"):
    torch.manual_seed(seed)
    model = MLP([784, width, 10], activation)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps + crt_steps):
        idx = torch.randint(0, len(X), (128,), generator=gen)
        x, y = X[idx], Y[idx]
        with torch.no_grad():
            t = attacks.runner_up(model(x), y)
        if step >= steps:
            x = duality.attack(model, x, y, rho, targets=t, bounds="estimate").x
        loss = F.cross_entropy(model(x), y)
        if gamma > 0:
            loss = loss + gamma * curvature.curvature_penalty(model, y, t).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_certificate(model, tables, x, y, title, widen=1.0):
    print(f"\n{title}")
    tables = (widen * tables[0], widen * tables[1])
    cert, t_ours = _timed(lambda: duality.certify(model, x, y, bounds=tables))
    ok = ~cert.misclassified
    n = int(ok.sum())
    x, y, t = x[ok], y[ok], cert.target[ok]
    model64 = copy.deepcopy(model).double()      # the float64 copy certify works on
    m, M = tables[0][y, t], tables[1][y, t]
    ref, t_ref = _timed(lambda: duality.certify_reference(
        duality.margin_function(model64, y, t), x.double(), m, M))
    ev_ours = cert.grad_evals / n
    ev_ref = float(ref.grad_evals.double().mean())
    counted = ref.paper_counted
    diff = (cert.paper_radius[ok] - ref.paper_radius)[counted].abs()
    above = (cert.radius[ok] - ref.paper_radius).max()
    limited = cert.eta[ok] >= (1 - duality.MU_FLOOR) / cert.m[ok].abs() * (1 - 1e-12)
    print(f"  {n} correctly classified images; mean m = {float(m.mean()):.3f}, "
          f"mean M = {float(M.mean()):.3f}")
    print(f"  gradient evaluations per certificate: ours {ev_ours:6.1f}   theirs {ev_ref:6.1f}"
          f"   ratio {ev_ref / ev_ours:6.1f}x   (goal: ours <= 40)")
    print(f"  wall time per certificate (ms):       ours {1e3 * t_ours / n:6.2f}   theirs "
          f"{1e3 * t_ref / n:6.2f}   ratio {t_ref / t_ours:6.1f}x")
    print(f"  mean certificate: ours (sound) {float(cert.radius[ok].mean()):.5f}, ours (paper-style)"
          f" {float(cert.paper_radius[ok].mean()):.5f}, theirs {float(ref.paper_radius.mean()):.5f}")
    print(f"  counted (residual < 1e-5): ours {float(cert.paper_counted[ok].float().mean()):.1%}, "
          f"theirs {float(counted.float().mean()):.1%}; tight (primal = dual: Table 2's certificate "
          f"success) ours {float(cert.tight[ok].float().mean()):.1%}, theirs "
          f"{float(ref.tight.float().mean()):.1%}; curvature-limited (eta = eta_max) "
          f"{float(limited.float().mean()):.1%}")
    print(f"  max |ours - theirs| (paper-style, where theirs is counted): {float(diff.max()):.2e}"
          f"   (goal: <= 1e-4)")
    print(f"  max (our sound radius - their value): {float(above):.2e}   (must be <= 1e-4)")
    print(f"  certified accuracy at 0.5 / 1.58 (of these images): "
          f"{float((cert.radius[ok] >= 0.5).float().mean()):.1%} / "
          f"{float((cert.radius[ok] >= 1.58).float().mean()):.1%}")


def bench_attack(model, tables, x, y, rhos):
    print("\n[2] Attack (Definition 2), runner-up target, global bounds, in the model's dtype")
    with torch.no_grad():
        t = attacks.runner_up(model(x), y)
    m, M = tables[0][y, t].float(), tables[1][y, t].float()
    fn = duality.margin_function(model, y, t)
    for rho in rhos:
        ours, t_ours = _timed(lambda: duality.attack(model, x, y, rho, targets=t, bounds=(m, M)))
        ref, t_ref = _timed(lambda: duality.attack_reference(fn, x, m, M, rho))
        dd = abs(float(ours.distance.mean() - ref.distance.mean())) / float(ref.distance.mean())
        df = abs(float(ours.margin.mean() - ref.margin.mean())) / float(ref.margin.abs().mean())
        print(f"  rho = {rho}: batch of {len(y)}")
        print(f"    gradient evaluations per batch: ours {ours.grad_evals:4d}   theirs "
              f"{ref.grad_evals:4d}   ratio {ref.grad_evals / ours.grad_evals:5.1f}x   (goal: ours <= 15)")
        print(f"    wall time per batch (ms):       ours {1e3 * t_ours:7.1f}   theirs "
              f"{1e3 * t_ref:7.1f}   ratio {t_ref / t_ours:5.1f}x")
        print(f"    mean ||x - x0||: ours {float(ours.distance.mean()):.4f}  theirs "
              f"{float(ref.distance.mean()):.4f}  (rel. diff {dd:.2%});  mean f: ours "
              f"{float(ours.margin.mean()):.4f}  theirs {float(ref.margin.mean()):.4f}  "
              f"(diff / mean|f| {df:.2%})   (goal: within 1%)")
        print(f"    tight (||x - x0|| = rho): ours {float(ours.tight.float().mean()):.1%}, theirs "
              f"{float(ref.tight.float().mean()):.1%}; max ||x - x0|| / rho: ours "
              f"{float((ours.distance / rho).max()):.7f}, theirs {float((ref.distance / rho).max()):.7f}")


def bench_all_targets(model, tables, x, y):
    print("\n[3] targets='all' against targets='runner-up'")
    cert_ru, t_ru = _timed(lambda: duality.certify(model, x, y, bounds=tables))
    cert_all, t_all = _timed(lambda: duality.certify(model, x, y, targets="all", bounds=tables))
    ok = ~cert_all.misclassified
    lower = (cert_all.radius < cert_ru.radius - 1e-9)[ok]
    print(f"  gradient evaluations: all {cert_all.grad_evals} vs runner-up {cert_ru.grad_evals}: "
          f"{cert_all.grad_evals / cert_ru.grad_evals:.2f}x   (goal: <= 2.5x)")
    print(f"  wall time: all {t_all:.2f} s vs runner-up {t_ru:.2f} s: {t_all / t_ru:.2f}x")
    print(f"  another class is closer than the runner-up for {float(lower.float().mean()):.1%} of "
          f"images; mean certificate all {float(cert_all.radius[ok].mean()):.4f} vs runner-up "
          f"{float(cert_ru.radius[ok].mean()):.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--width", type=int, default=1024, help="hidden width (default 1024)")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    parser.add_argument("--gamma", type=float, default=0.01, help="γ of γ·K (default 0.01)")
    parser.add_argument("--crt-steps", type=int, default=0,
                        help="CRT steps after the γ-regularized ones (default 0)")
    parser.add_argument("--widen", type=float, default=16.0,
                        help="[1b]: factor on m and M (default 16)")
    parser.add_argument("--widened-images", type=int, default=40, help="[1b]: images (default 40)")
    parser.add_argument("--activation", default="softplus", choices=("softplus", "sigmoid"),
                        help="activation (default softplus; Table 2's nets are sigmoid)")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic data")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's default). On a shared machine "
                             "one thread gives steady times: busy cores stall multi-threaded ops")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2-layer {args.activation} "
          f"[784, {args.width}, 10]; {args.steps} Adam steps, gamma = {args.gamma}, "
          f"{args.crt_steps} CRT steps (rho 1.58)")
    X, Y, Xt, Yt, name = _data(20000, args.synthetic)
    model, t_train = _timed(lambda: train(X, Y, args.width, args.steps, args.gamma,
                                          args.crt_steps, 1.58, activation=args.activation))
    x, y = Xt[:args.images], Yt[:args.images]
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    print(f"data: {name}; training {t_train:.1f} s; clean accuracy on the {len(y)} images {acc:.1%}")
    tables, t_bounds = _timed(lambda: curvature.all_pair_bounds(model))   # once, passed on
    print(f"rigorous curvature bounds of all pairs: {t_bounds:.1f} s")
    duality.certify(model, x[:4], y[:4], targets="all", bounds=tables)     # warm-up
    bench_certificate(model, tables, x, y, "[1] Certificate, runner-up target, global bounds (float64)")
    bench_certificate(model, tables, x[:args.widened_images], y[:args.widened_images],
                      f"[1b] The same with the bounds widened x{args.widen:g} (still sound; "
                      "curvature-limited certificates, as in the paper's CRT nets)", args.widen)
    bench_attack(model, tables, x, y, (0.5, 1.58))
    bench_all_targets(model, tables, x, y)


if __name__ == "__main__":
    main()
