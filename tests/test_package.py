"""The package's front: every module is listed for lazy access, and the names the README's
examples use exist."""
from __future__ import annotations

import pathlib

import crc_core


def test_every_module_is_reachable_from_the_package():
    root = pathlib.Path(crc_core.__file__).parent
    modules = {p.stem for p in root.glob("*.py")} - {"__init__"} | {"baselines"}
    assert modules == crc_core._SUBMODULES
    for name in sorted(modules):
        assert getattr(crc_core, name).__name__ == f"crc_core.{name}"
