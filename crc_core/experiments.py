"""The front of the experiment pipeline: the names the notebooks use, and the command line.

The pipeline, one module per step (design notes in README.md):

- :mod:`crc_core.runs` — every network the tables need (:data:`RUNS`) and the presets;
- :mod:`crc_core.evaluation` — per-image tables of a trained net and the metrics they give;
- :mod:`crc_core.store` — train and evaluate a run into ``results/``, released weights, verify;
- :mod:`crc_core.reference` — the paper's numbers (a CSV), the reference column only;
- :mod:`crc_core.tuning` — tries beyond a preset's recipe, recorded in ``results/tuning.csv``.

Command line::

    python -m crc_core.experiments list [--preset cpu]
    python -m crc_core.experiments run mnist-softplus-2x1024-crt-g0.01-r1.58 --preset cpu [--force]
    python -m crc_core.experiments verify mnist-softplus-2x1024-crt-g0.01-r1.58 [--images 0:1000]
    python -m crc_core.experiments try mnist-relu-2x1024-crown-ibp-r1.58 --set crown_ibp_final_beta=2
    python -m crc_core.experiments try mnist-relu-2x1024-crown-ibp-r1.58 --stored   # the recipe's row
    python -m crc_core.experiments try mnist-softplus-2x1024-crt-g0.01-r1.58 --set epochs=48 --release
    python -m crc_core.experiments verify mnist-softplus-2x1024-crt-g0.01-r1.58--epochs=48   # a try
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from . import training, tuning
from .evaluation import CROWN_MODES, evaluate
from .reference import paper_reference
from .runs import (EVAL_RADII, EVAL_SEED, PRESETS, RUNS, TABLES, TRAIN_RHO, Preset, Run,
                   format_radius, get_preset, get_run, own_certificate, run_name, runs_for_table)
from .store import (RELEASED_RUNS, RESULTS_SCHEMA, load_network, load_result, load_results,
                    results_path, results_root, run_experiment, runs_root, stored_status, verify,
                    weights_path)

__all__ = [
    "EVAL_RADII", "EVAL_SEED", "TRAIN_RHO", "RESULTS_SCHEMA", "RELEASED_RUNS", "Run", "Preset",
    "RUNS", "PRESETS", "TABLES", "run_name", "get_run", "get_preset", "runs_for_table",
    "results_root", "runs_root", "results_path", "weights_path", "run_experiment", "stored_status",
    "evaluate",
    "CROWN_MODES", "load_result", "load_results", "load_network", "verify", "paper_reference",
    "list_runs", "main",
]


def _minutes(seconds) -> str:
    return "" if seconds is None else f"{seconds / 60:.0f}"


def _percent(metrics, key: str) -> str:
    entry = metrics.get(key)
    return "" if not isinstance(entry, dict) else f"{100 * entry['value']:.1f}"


def _headline(result) -> str:
    """Clean accuracy and the certified accuracy at ρ = 1.58 on the test set: a baseline's own
    certificate (CROWN for CROWN-IBP, COAP's for COAP) with CRC beside it where the net is smooth;
    sound all-classes CRC for the curvature methods. A certificate over a sample states its n."""
    m = result["metrics"]

    def key(bounds):
        return f"certified_accuracy/all-classes/{bounds}/1.58"

    own = own_certificate(result["spec"]["method"])
    shown = [b for b in dict.fromkeys((own, "global")) if key(b) in m]
    parts = [f"clean {_percent(m, 'clean_accuracy')}"]
    for bounds in shown:
        n = m[key(bounds)]["n"]
        sample = "" if n == m["clean_accuracy"]["n"] else f", n={n}"
        parts.append(f"cert@1.58 {_percent(m, key(bounds))} ({bounds}{sample})")
    return ", ".join(parts)


def list_runs(preset: Optional[str] = None, results_dir=None) -> str:
    """The text ``python -m crc_core.experiments list`` prints: every run, by method, with its
    status at each preset; for stored runs the training CPU minutes (wall minutes where CPU time
    was not recorded), the evaluation minutes and the headline numbers."""
    presets = [get_preset(preset)] if preset else list(PRESETS.values())
    order = {m: i for i, m in enumerate(training.METHODS)}
    runs = sorted(RUNS.values(), key=lambda run: (order[run.method], run.name))
    width = max(len(run.name) for run in runs)
    twidth = max(len(",".join(run.tables)) for run in runs)
    lines = []
    for p in presets:
        head = (f"[{p.name}]  {'method':<10} {'run':<{width}}  {'tables':<{twidth}}  "
                f"{'status':<8} {'train min':>9} {'eval min':>8}  headline")
        lines += [head, "-" * len(head)]
        for run in runs:
            path = results_path(run.name, p, results_dir)
            train_min = eval_min = headline = ""
            status = stored_status(run.name, p, results_dir)
            if status != "missing":
                res = load_result(path)
                prov = res["provenance"]
                cpu = prov.get("train_cpu_seconds")
                train_min = _minutes(cpu if cpu is not None else prov.get("train_seconds"))
                eval_min = _minutes(prov.get("eval_seconds"))
                headline = _headline(res)
            lines.append(f"[{p.name}]  {run.method:<10} {run.name:<{width}}  "
                         f"{','.join(run.tables):<{twidth}}  {status:<8} {train_min:>9} "
                         f"{eval_min:>8}  {headline}".rstrip())
        stored = sum(stored_status(run.name, p, results_dir) == "stored" for run in runs)
        lines += ["", f"{p.name}: {stored}/{len(runs)} stored in {results_root(results_dir) / p.name}", ""]
    return "\n".join(lines).rstrip()


def _slice(text: str) -> slice:
    start, _, stop = text.partition(":")
    try:
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP, got {text!r}") from None


def _try(args) -> int:
    try:
        if args.stored:
            if args.changes:
                raise ValueError("--stored records the stored recipe: it takes no --set")
            if args.release:
                raise ValueError("--release is for a try's weights; the stored runs whose "
                                 "weights are released are store.RELEASED_RUNS")
            row = tuning.record_stored(args.name, args.preset, note=args.note)
        else:
            if not args.changes:
                raise ValueError("a try needs at least one --set FIELD=VALUE (or --stored)")
            row = tuning.try_variant(args.name, tuning.parse_changes(args.changes), args.preset,
                                     note=args.note, device=args.device,
                                     progress=not args.no_progress, until_epoch=args.until_epoch)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if row is None:
        print(f"{args.name}: the try stopped after epoch {args.until_epoch}; run the same "
              "command again to continue")
        return 0
    print(", ".join(f"{k} {v}" for k, v in row.items()))
    if args.release:
        variant = tuning.variant_name(args.name, tuning.parse_changes(args.changes))
        try:
            path = tuning.release_try(variant, args.preset, retrain=True, device=args.device,
                                      progress=not args.no_progress)
        except (FileNotFoundError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"weights released: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m crc_core.experiments {list,run,verify,try} …``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m crc_core.experiments",
                                     description="The runs the paper's tables need: list, train, evaluate, verify.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="every run, its tables, status, times and headline numbers")
    p_list.add_argument("--preset", choices=list(PRESETS), default=None,
                        help="show one preset (default: all)")
    p_run = sub.add_parser("run", help="train (resumable) and evaluate one run into the results store")
    p_run.add_argument("name", help="a run name (see `list`)")
    p_run.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p_run.add_argument("--force", action="store_true", help="retrain from scratch and re-evaluate")
    p_run.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p_run.add_argument("--until-epoch", type=int, default=None,
                       help="stop training after this epoch (resume later with the same command)")
    p_run.add_argument("--reevaluate", action="store_true",
                       help="evaluate the finished checkpoint again (e.g. after a change of the "
                            "evaluation protocol) and overwrite the stored results; trains nothing")
    p_run.add_argument("--train-only", action="store_true",
                       help="train (resumably) but do not evaluate; a later `run` evaluates")
    p_run.add_argument("--threads", type=int, default=None,
                       help="torch.set_num_threads (default: torch's choice); 1 is much faster "
                            "when other processes share the cores")
    p_run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_ver = sub.add_parser("verify", help="re-certify a stored run (or try) from its weights and "
                                          "compare with every stored certificate")
    p_ver.add_argument("name", help="a run (see `list`) or a try, <run>--<field>=<value>[,...] "
                                    "(the name of its results file)")
    p_ver.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p_ver.add_argument("--images", type=_slice, default=None,
                       help="a slice START:STOP of the test set (default: every stored image)")
    p_ver.add_argument("--threads", type=int, default=None)
    p_try = sub.add_parser("try", help="train and evaluate a variant of a run (changed spec "
                                       "fields) and record it in results/tuning.csv")
    p_try.add_argument("name", help="the run it varies (see `list`)")
    p_try.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p_try.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                       help="a spec field to change (repeatable), e.g. crown_ibp_final_beta=2, "
                            "epochs=30, gamma=0.02, rho=2")
    p_try.add_argument("--stored", action="store_true",
                       help="record the stored run of the recipe itself (no --set; trains nothing)")
    p_try.add_argument("--note", default="", help="free text for the record's row")
    p_try.add_argument("--device", default="cpu")
    p_try.add_argument("--until-epoch", type=int, default=None,
                       help="stop training after this epoch (resume with the same command)")
    p_try.add_argument("--threads", type=int, default=None)
    p_try.add_argument("--no-progress", action="store_true")
    p_try.add_argument("--release", action="store_true",
                       help="once the try is stored, write its weights beside its results "
                            "(results/<preset>/tuning/<try>.safetensors) for `verify`; a stored "
                            "try whose checkpoint is gone is trained again, and released only if "
                            "it reproduces its stored certificates")
    args = parser.parse_args(argv)

    if args.command == "list":
        print(list_runs(args.preset))
        return 0
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 1
        torch.set_num_threads(args.threads)
    if args.command == "try":
        return _try(args)
    if args.command == "verify":
        try:
            check = tuning.verify_try if "--" in args.name else verify
            report = check(args.name, args.preset, images=args.images)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{args.name} ({args.preset}): {report['images']} images, {report['compared']} "
              f"stored values compared, largest radius difference {report['max_abs_diff']:.2e}: "
              + ("all agree" if report["ok"] else f"{len(report['mismatches'])} MISMATCHES"))
        for row in report["mismatches"][:20]:
            print("  ", row)
        return 0 if report["ok"] else 2
    try:
        result = run_experiment(args.name, args.preset, force=args.force, device=args.device,
                                progress=not args.no_progress, until_epoch=args.until_epoch,
                                evaluate=not args.train_only, reevaluate=args.reevaluate)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is None:
        print(f"{args.name}: training stopped ({'--train-only' if args.train_only else f'after epoch {args.until_epoch}'}); "
              "run the same command again (without --until-epoch / --train-only) to continue")
        return 0
    m = result["metrics"]
    print(f"{args.name} ({args.preset}): {_headline(result)}; results in "
          f"{results_path(args.name, args.preset)}")
    for rk in (format_radius(r) for r in EVAL_RADII):
        for bounds in ("global", "crown", "coap"):
            for what in ("certified_accuracy", "certified_fraction"):
                key = f"{what}/runner-up/{bounds}/{rk}"
                if key in m:
                    print(f"  {what} (runner-up, {bounds}) at {rk}: {m[key]['value']:.4f} (n = {m[key]['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
