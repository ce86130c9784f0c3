"""Benchmark the baselines: CROWN certificates and CROWN-IBP / COAP training steps.

Run from the repository root (under 3 minutes on 2 CPU cores with the defaults)::

    .venv/bin/python benchmarks/baselines.py
    .venv/bin/python benchmarks/baselines.py --threads 2 --layers 2 3 --cert-images 20

Printed:

- **CROWN certificate** (:func:`crc_core.baselines.crown.certify`, runner-up, the default
  Illinois search to tol = 1e-3): seconds per image and evaluations per batch, on a
  ``--layers``-layer sigmoid net of width ``--width`` (default 2 × 1024), float32 and float64;
  the same with plain bisection for comparison. One evaluation of the 2-layer bound is a
  back-substitution of the C − 1 margin rows; for L ≥ 3 the hidden layers' CROWN intervals
  (rows ±I per neuron) dominate, and the default bound back-substitutes the margins twice
  (through CROWN's own intervals and through their intersection with IBP's).
- **Training steps** on one MNIST batch (``--batch``, default 128), same process, same batch,
  same network per depth: a plain cross-entropy step (forward, backward, Adam), a CROWN-IBP step
  at the end of its ramp (ε = ρ, κ = 0, β = 1: IBP + CROWN back-substitution of the margins,
  relu and softplus) and a COAP step (ε = ρ; exact l2 dual for L = 2, the authors' 50 random
  projections for L ≥ 3), with their ratios to the plain step. Median of ``--repeats``.

The networks are untrained (PyTorch's initialization); trained ReLU nets have fewer unstable
neurons, which makes CROWN and COAP faster. Nothing is written.
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

from crc_core import MLP, data  # noqa: E402
from crc_core.baselines import coap, crown  # noqa: E402
from crc_core.training import TrainSpec  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: fastest when other processes share the cores)")
    p.add_argument("--width", type=int, default=1024, help="hidden width (default 1024)")
    p.add_argument("--cert-layers", type=int, default=2, help="depth L of the certified net (default 2)")
    p.add_argument("--cert-images", type=int, default=50, help="images certified (default 50)")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 3],
                   help="depths L of the training-step comparison (default 2 3)")
    p.add_argument("--batch", type=int, default=128, help="training batch size (default 128)")
    p.add_argument("--rho", type=float, default=1.58, help="radius (default 1.58)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median kept)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _timed(fn, repeats: int) -> float:
    fn()                                   # warm-up (allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step(model, optimizer, loss_fn):
    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    return run


def bench_certificate(args, X, Y) -> None:
    widths = [784] + [args.width] * (args.cert_layers - 1) + [10]
    torch.manual_seed(args.seed)
    model = MLP(widths, "sigmoid")
    # A few standard steps so that most images are correctly classified.
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for k in range(30):
        xb, yb = X[k * 128:(k + 1) * 128], Y[k * 128:(k + 1) * 128]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    x, y = X[-args.cert_images:], Y[-args.cert_images:]
    n = x.shape[0]
    print(f"\nCROWN certificate, runner-up, {args.cert_layers}x{args.width} sigmoid, {n} images "
          f"(accuracy {float((model(x).argmax(1) == y).float().mean()):.2f}):")
    for dtype in (torch.float32, torch.float64):
        for search in ("illinois", "bisection"):
            start = time.perf_counter()
            cert = crown.certify(model, x, y, dtype=dtype, search=search)
            sec = time.perf_counter() - start
            print(f"  {str(dtype):14s} {search:9s}: {sec / n * 1000:8.1f} ms per image "
                  f"({cert.evaluations:2d} evaluations, mean radius {float(cert.radius.mean()):.4f})")


def bench_training(args, X, Y) -> None:
    x, y = X[:args.batch], Y[:args.batch]
    print(f"\nTraining step, batch {x.shape[0]}, width {args.width}, ρ = {args.rho} (ratio to the plain step):")
    for L in args.layers:
        widths = (784,) + (args.width,) * (L - 1) + (10,)
        rows = []
        for activation in ("relu", "softplus"):
            torch.manual_seed(args.seed)
            model = MLP(widths, activation)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            plain = _timed(_step(model, opt, lambda: F.cross_entropy(model(x), y)), args.repeats)
            # progress 1: past the ramp (ε = ρ, κ = FINAL_KAPPA, β = final β).
            spec = TrainSpec(widths=widths, activation=activation, method="crown-ibp", rho=args.rho,
                             epochs=1, batch_size=args.batch, train_subset=args.batch)
            eps, kappa, beta = crown.crown_ibp_schedule(spec, 1.0)
            cibp = _timed(_step(model, opt, lambda: crown.crown_ibp_loss(model, x, y, spec, 1.0)[0]),
                          args.repeats)
            rows.append((activation, "crown-ibp", plain, cibp, f"ε={eps:g} κ={kappa:g} β={beta:g}"))
            if activation == "relu":
                spec = TrainSpec(widths=widths, activation="relu", method="coap", rho=args.rho, epochs=1,
                                 batch_size=args.batch, train_subset=args.batch)
                tc = _timed(_step(model, opt, lambda: coap.coap_loss(model, x, y, spec, 1.0)[0]),
                            args.repeats)
                mode = "exact l2" if L == 2 else f"{coap.TRAIN_PROJECTIONS} projections"
                rows.append((activation, "coap", plain, tc, f"ε={coap.coap_schedule(spec, 1.0):g}, {mode}"))
        for activation, method, plain, sec, note in rows:
            print(f"  L={L} {activation:8s} {method:9s}: {sec * 1000:8.1f} ms vs plain {plain * 1000:6.1f} ms "
                  f"-> {sec / plain:6.1f}x   ({note})")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    X, Y = data.load("mnist", "train")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32 unless stated")
    bench_certificate(args, X, Y)
    bench_training(args, X, Y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
