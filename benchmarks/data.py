"""Load time of each data set from the local copy (goal: under 2 s, MD5 check included).

Run: ``.venv/bin/python benchmarks/data.py``. Prints seconds per load and the ratio to the goal.
"""
import time

from crc_core import data

GOAL_SECONDS = 2.0


def main() -> None:
    for name in ("mnist", "fashion-mnist"):
        data.fetch(name, verbose=False)
        for split in ("train", "test"):
            data.load(name, split)  # warm the page cache
            start = time.perf_counter()
            X, _ = data.load(name, split)
            seconds = time.perf_counter() - start
            print(f"{name:14s} {split:5s} {tuple(X.shape)}  {seconds:.3f} s  "
                  f"({seconds / GOAL_SECONDS:.2f} of the {GOAL_SECONDS:.0f} s goal)")


if __name__ == "__main__":
    main()
