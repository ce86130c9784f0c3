"""Atomic file writes: a reader (or a crash) never sees half a file.

Each writer writes a temporary file in the target's folder, then ``os.replace``s it onto the
target (atomic on POSIX and Windows). Checkpoints, results files and released weights are
written this way.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_write_via", "atomic_torch_save", "atomic_json", "atomic_text"]


def atomic_write_via(path: Path, writer) -> None:
    """Call ``writer(tmp_path)`` then ``os.replace(tmp_path, path)``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write_via(path, lambda p: torch.save(obj, p))


def atomic_json(obj, path: Path) -> None:
    def write(p: Path):
        p.write_text(json.dumps(obj, indent=2) + "\n")
    atomic_write_via(path, write)


def atomic_text(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_via(Path(path), lambda p: Path(p).write_text(text, encoding="utf-8"))
