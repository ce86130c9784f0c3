"""Load time of each data set from the local copy (goal: under 2 s, MD5 check included).

Two numbers per split, each the best of ``REPEATS`` runs: a first load in the process (read,
MD5 check, conversion; the page cache warmed beforehand) and a load served from
:func:`crc_core.data.load`'s in-process cache (conversion of the cached bytes to new tensors
only). Measured on a 2-core machine shared with training jobs: a cached load takes 0.5–0.6 of
a first one (MNIST train 0.40 s first, 0.25 s cached; test 0.068 s and 0.036 s).

Run: ``.venv/bin/python benchmarks/data.py``. Prints seconds per load and the ratio to the goal.
"""
import time

from crc_core import data

GOAL_SECONDS = 2.0
REPEATS = 3


def _seconds(name: str, split: str) -> float:
    start = time.perf_counter()
    data.load(name, split)
    return time.perf_counter() - start


def main() -> None:
    for name in ("mnist", "fashion-mnist"):
        data.fetch(name, verbose=False)
        for split in ("train", "test"):
            data.load(name, split)  # warm the page cache
            first, cached = float("inf"), float("inf")
            for _ in range(REPEATS):
                data.clear_cache()
                first = min(first, _seconds(name, split))
                cached = min(cached, _seconds(name, split))
            print(f"{name:14s} {split:5s}  first {first:.3f} s "
                  f"({first / GOAL_SECONDS:.2f} of the {GOAL_SECONDS:.0f} s goal), "
                  f"cached {cached:.3f} s ({cached / first:.2f} of the first)")


if __name__ == "__main__":
    main()
