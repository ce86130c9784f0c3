"""The paper's reported numbers, read from ``paper_reference.csv`` — a reference column only.

The CSV beside this module is a transcription of Tables 2-6 of Singla & Feizi (ICML 2020), one
row per reported number: the table, our registry name of the same network and training
(:data:`crc_core.runs.RUNS`), the paper's wording of the quantity, our results key closest to it
(``results/README.md``), the number as printed and its unit (``percent`` or ``radius``). The
numbers are never an input to a computation; tables show them beside ours.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .runs import RUNS, TABLES

__all__ = ["REFERENCE_CSV", "LATER_DEFENSES_CSV", "paper_records", "paper_reference",
           "later_defenses"]

#: The transcription (comment lines start with ``#``).
REFERENCE_CSV = Path(__file__).with_name("paper_reference.csv")
#: Later deterministic l2 defenses on MNIST at 1.58, as reported by their authors.
LATER_DEFENSES_CSV = Path(__file__).with_name("later_defenses.csv")
_COLUMNS = ("table", "run", "quantity", "metric", "printed", "unit")
_UNITS = {"percent": 0.01, "radius": 1.0}


@lru_cache(maxsize=1)
def paper_records() -> Tuple[Dict[str, Any], ...]:
    """The rows of :data:`REFERENCE_CSV`, checked, with ``value`` on our scale (a fraction for a
    percentage, the radius itself otherwise).

    Raises:
        ValueError: a malformed row (unknown table, run or unit; a number that does not parse),
            naming its line.
    """
    lines = REFERENCE_CSV.read_text(encoding="utf-8").splitlines()
    body = [(i + 1, line) for i, line in enumerate(lines) if line and not line.startswith("#")]
    reader = csv.reader([line for _, line in body])
    header = tuple(next(reader))
    if header != _COLUMNS:
        raise ValueError(f"{REFERENCE_CSV}: header {header} is not {_COLUMNS}")
    records = []
    for (lineno, _), row in zip(body[1:], reader):
        rec = dict(zip(_COLUMNS, row))
        where = f"{REFERENCE_CSV.name}, line {lineno}"
        if len(row) != len(_COLUMNS):
            raise ValueError(f"{where}: {len(row)} fields, expected {len(_COLUMNS)}")
        if rec["table"] not in TABLES or rec["run"] not in RUNS:
            raise ValueError(f"{where}: unknown table {rec['table']!r} or run {rec['run']!r}")
        if rec["unit"] not in _UNITS:
            raise ValueError(f"{where}: unit {rec['unit']!r} is not one of {list(_UNITS)}")
        try:
            printed = float(rec["printed"])
        except ValueError:
            raise ValueError(f"{where}: {rec['printed']!r} is not a number") from None
        rec["value"] = printed * _UNITS[rec["unit"]]
        records.append(rec)
    return tuple(records)


def paper_reference(table: Optional[str] = None):
    """The paper's numbers as a DataFrame: columns ``table``, ``run``, ``quantity``, ``metric``,
    ``printed``, ``unit``, ``value`` (a fraction for percentages); one table's rows if ``table``."""
    import pandas as pd

    if table is not None and table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {list(TABLES)}")
    frame = pd.DataFrame(list(paper_records()))
    return frame if table is None else frame[frame["table"] == table].reset_index(drop=True)


def later_defenses():
    """:data:`LATER_DEFENSES_CSV` as a DataFrame: ``method``, ``paper``, ``year``, ``network``,
    ``clean`` and ``certified`` (percent, as reported; clean may be missing), ``source``."""
    import pandas as pd

    return pd.read_csv(LATER_DEFENSES_CSV, comment="#")
