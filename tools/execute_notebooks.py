"""Execute the book's notebooks with papermill and stamp each with the machine it ran on.

``make book`` runs this before ``jupyter-book build``. For each notebook it calls papermill
(the working directory is the repository root, the parameters are ``preset`` and
``train_missing``), which records
the run's start, end and duration in ``metadata.papermill``; then it adds

    metadata.crc_book.machine = {"cpu", "cores", "memory_gib", "gpu", "os", "python", "torch"}

to the executed copy. The book's execution page (``book/execution.md``, directive
``{execution-table}``) reads both. A notebook that raises stops the run (exit status 1), as
papermill's command line does.

Usage::

    python tools/execute_notebooks.py --preset smoke --out book/generated notebooks/*.ipynb
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> Optional[str]:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's guess, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> Optional[float]:
    """Physical memory in GiB (one decimal), from sysconf; None where unavailable."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_description() -> Dict[str, Any]:
    """The machine the notebooks run on: CPU model and cores, memory, GPU, OS, Python, torch.

    ``cores`` is the number of CPUs this process may use (``os.sched_getaffinity``), which is what
    a container or a CPU quota leaves to the notebooks. ``gpu`` is the name of CUDA device 0, or
    None when torch sees no GPU (or is not installed: then ``torch`` is None too).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    gpu = torch_version = None
    try:
        import torch
        torch_version = torch.__version__
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": _cpu_model(), "cores": cores, "memory_gib": _memory_gib(), "gpu": gpu,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch_version}


def stamp(path: Path, machine: Dict[str, Any]) -> None:
    """Write ``machine`` into ``metadata.crc_book.machine`` of the notebook at ``path``."""
    import nbformat
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata.setdefault("crc_book", {})["machine"] = machine
    nbformat.write(nb, str(path))


def execute(notebook: Path, out_dir: Path, preset: str, machine: Dict[str, Any],
            train_missing: bool = False, cell_timeout: Optional[int] = None) -> Path:
    """Run ``notebook`` with ``preset`` and ``train_missing`` into ``out_dir`` (same file name);
    the output's path."""
    import papermill
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    papermill.execute_notebook(str(notebook), str(output), parameters={"preset": preset,
                                                                     "train_missing": train_missing},
                               execution_timeout=cell_timeout,
                               cwd=str(REPO), progress_bar=False)
    stamp(output, machine)
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to execute, in order")
    parser.add_argument("--preset", required=True, help="papermill parameter `preset` (smoke | cpu | paper)")
    parser.add_argument("--out", type=Path, default=REPO / "book" / "generated",
                        help="folder of the executed copies (default book/generated)")
    parser.add_argument("--train-missing", action="store_true",
                        help="notebooks train the runs missing from the results store (default: "
                             "they show them as missing)")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds a cell may run before the notebook fails (default: no limit; "
                             "CI's smoke book sets one so that a hang fails instead of waiting)")
    args = parser.parse_args(argv)
    if not args.notebooks:
        print("execute_notebooks: no notebook to execute")
        return 0
    from papermill.exceptions import PapermillExecutionError
    machine = machine_description()
    for nb in args.notebooks:
        print(f"executing {nb} (preset {args.preset}, train_missing={args.train_missing})", flush=True)
        start = time.monotonic()
        try:
            out = execute(nb, args.out, args.preset, machine, args.train_missing,
                          args.cell_timeout)
        except PapermillExecutionError as exc:  # a cell raised: its error, and the partial copy
            print(f"execute_notebooks: {nb} failed (partial output in {args.out / nb.name}):\n{exc}",
                  file=sys.stderr)
            return 1
        print(f"  -> {out} in {time.monotonic() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
