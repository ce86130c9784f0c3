"""Benchmark Lemma 1: ``hessian.margin_hessian`` against per-sample autograd Hessians.

Run from the repository root::

    .venv/bin/python benchmarks/hessian.py          # B = 64, D = 784, width 1024, L = 2 and 3
    .venv/bin/python benchmarks/hessian.py --layers 4 --batch 16 --baseline-samples 2

The baseline is what a user would write without Lemma 1: for each sample,
``torch.autograd.functional.hessian`` of f(x) = z_y(x) − z_t(x) (default ``vectorize=False``,
one double-backward pass per input coordinate). It is slow, so it runs on
``--baseline-samples`` samples and its time is scaled per sample to the batch (the output says
so). The vmap variant (``vectorize=True``) is timed the same way for reference. The two results
are compared on the baseline samples.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crc_core import MLP, hessian  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="B, the batch size (default 64)")
    p.add_argument("--input-dim", type=int, default=784, help="D (default 784)")
    p.add_argument("--width", type=int, default=1024, help="hidden width N_I (default 1024)")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 3],
                   help="L, number of linear layers; several values run one after the other (default 2 3)")
    p.add_argument("--classes", type=int, default=10, help="C (default 10)")
    p.add_argument("--activation", default="softplus", help="softplus, sigmoid or tanh")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of margin_hessian (best is kept)")
    p.add_argument("--baseline-samples", type=int, default=3,
                   help="samples the autograd baselines run on (time scaled to the batch)")
    p.add_argument("--no-vectorized", action="store_true", help="skip the vectorize=True baseline")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _functional_forward(model, x):
    """z^(L) for one unbatched x (D,), without MLP's input checks (which vmap cannot trace)."""
    a = x
    for k, layer in enumerate(model.layers):
        a = layer(a)
        if k < model.num_layers - 1:
            a = model.activation.fn(a)
    return a


def autograd_baseline(model, x, y, t, vectorize):
    """Per-sample torch.autograd.functional.hessian of z_y − z_t: (n, D, D) and seconds."""
    out = []
    start = time.perf_counter()
    for b in range(x.shape[0]):
        if vectorize:
            def f(xb, b=b):
                z = _functional_forward(model, xb)
                return z[y[b]] - z[t[b]]
        else:
            def f(xb, b=b):
                z = model(xb.unsqueeze(0))[0]
                return z[y[b]] - z[t[b]]
        out.append(torch.autograd.functional.hessian(f, x[b], vectorize=vectorize))
    return torch.stack(out), time.perf_counter() - start


def run(args, layers):
    """Time margin_hessian and the autograd baselines for one depth; returns the speed-ups."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    widths = [args.input_dim] + [args.width] * (layers - 1) + [args.classes]
    model = MLP(widths, args.activation).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, args.input_dim, dtype=dtype)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    t = logits.scatter(1, y[:, None], float("-inf")).argmax(1)  # runner-up class

    print(f"\n== L = {layers}: widths {widths}, activation {args.activation}, B = {args.batch}")
    hessian.margin_hessian(model, x[:2], y[:2], t[:2])  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        H = hessian.margin_hessian(model, x, y, t)
        times.append(time.perf_counter() - start)
    ours = min(times)
    print(f"margin_hessian (Lemma 1): {ours:.3f} s for {args.batch} samples "
          f"({1e3 * ours / args.batch:.1f} ms/sample; best of {args.repeats}: "
          f"{', '.join(f'{s:.3f}' for s in times)})")

    n = min(args.baseline_samples, args.batch)
    variants = [("autograd hessian, vectorize=False", False)]
    if not args.no_vectorized:
        variants.append(("autograd hessian, vectorize=True", True))
    ratios = {}
    for label, vectorize in variants:
        ref, seconds = autograd_baseline(model, x[:n], y[:n], t[:n], vectorize)
        per_sample = seconds / n
        scaled = per_sample * args.batch
        err = (H[:n] - ref).abs().max().item()
        rel = err / max(ref.abs().max().item(), 1e-300)
        ratios[vectorize] = scaled / ours
        print(f"{label}: {seconds:.3f} s on {n} samples = {1e3 * per_sample:.1f} ms/sample; "
              f"scaled to {args.batch} samples: {scaled:.2f} s "
              f"(timed on {n} of the {args.batch} samples, scaled per sample)")
        print(f"  agreement on those {n} samples: max |diff| = {err:.2e} (relative {rel:.2e})")
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        if rel > tol:
            raise SystemExit(f"margin_hessian and autograd disagree: relative {rel:.2e} > {tol:g}")
    print(f"speed-up vs autograd (vectorize=False): {ratios[False]:.1f}x (goal >= 10x)")
    if True in ratios:
        print(f"speed-up vs autograd (vectorize=True):  {ratios[True]:.1f}x")
    return ratios


def main(argv=None):
    args = parse_args(argv)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"device cpu, load average {load} (wall-clock times; other processes slow both sides)")
    print(f"B = {args.batch}, D = {args.input_dim}, width = {args.width}, L = {args.layers}, "
          f"C = {args.classes}, repeats = {args.repeats}, baseline samples = {args.baseline_samples}")
    results = {layers: run(args, layers) for layers in args.layers}
    print("\nsummary (speed-up of margin_hessian over per-sample autograd, vectorize=False):")
    for layers, ratios in results.items():
        print(f"  L = {layers}: {ratios[False]:.1f}x")
    return results


if __name__ == "__main__":
    main()
