"""Vendor MathJax 3 from the npm registry, so that the book renders its math with no network.

The book's pages load MathJax from the build itself (``_config.yml``: ``mathjax_path`` and
``html_static_path``), never from a CDN. This script obtains the pinned release once:

1. ``npm pack mathjax@VERSION`` downloads the registry's tarball (npm checks it against the
   registry's metadata);
2. its SHA-512 is compared with the pinned ``INTEGRITY`` (the registry's ``dist.integrity``),
   so a different file is refused even if the registry served it;
3. the browser build the book uses is extracted into ``DEST`` (default ``_vendor/mathjax``,
   git-ignored), atomically: from ``package/es5/`` the combined ``tex-mml-chtml.js`` component
   and every sub-folder (the fonts, the TeX extensions it autoloads, the accessibility and speech
   components of its menu), but not the other combined components; and the licence.

It does nothing when ``DEST`` already holds this version (``DEST/.version``), so ``make book``
calls it every time and works offline once the files are there.

Usage::

    python tools/vendor_mathjax.py [--dest _vendor/mathjax] [--tarball mathjax-3.2.2.tgz]

``--tarball`` takes an already downloaded ``npm pack`` tarball instead of calling npm.
Only the Python standard library is used.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: The pinned release (npm ``mathjax``, the last of the 3.x line).
VERSION = "3.2.2"
#: The registry's ``dist.integrity`` of ``mathjax-3.2.2.tgz`` (``npm view mathjax@3.2.2 dist.integrity``).
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
#: The component the book loads (``mathjax_path`` in ``_config.yml`` is ``mathjax/`` + this).
ENTRY = "tex-mml-chtml.js"
#: Where the files go, relative to the repository root (``html_static_path`` reads ``_vendor``).
DEFAULT_DEST = Path(__file__).resolve().parent.parent / "_vendor" / "mathjax"

_PREFIX = "package/es5/"
_LICENSE = "package/LICENSE"


class VendorError(RuntimeError):
    """The tarball could not be obtained, or is not the pinned one."""


def integrity_of(path: Path) -> str:
    """The Subresource-Integrity string ``sha512-<base64>`` of a file, as npm writes it."""
    digest = hashlib.sha512(Path(path).read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def is_vendored(dest: Path, version: str = VERSION) -> bool:
    """True when ``dest`` holds the entry component and the stamp of ``version``."""
    stamp = Path(dest) / ".version"
    return (Path(dest) / ENTRY).is_file() and stamp.is_file() and stamp.read_text().strip() == version


def npm_pack(version: str, workdir: Path) -> Path:
    """Download ``mathjax@version`` with ``npm pack`` into ``workdir``; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm (Node.js) is needed once to fetch MathJax 3 from the npm registry: "
                          "install it (Debian: `apt-get install npm`), or download "
                          f"mathjax-{version}.tgz elsewhere and pass it with --tarball")
    proc = subprocess.run([npm, "pack", f"mathjax@{version}", "--json", "--pack-destination",
                           str(workdir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise VendorError(f"`npm pack mathjax@{version}` failed (exit {proc.returncode}):\n"
                          f"{proc.stderr.strip()[-2000:]}")
    try:
        name = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise VendorError(f"unexpected output of npm pack: {proc.stdout[:500]!r}") from exc
    return Path(workdir) / name


def extract(tarball: Path, dest: Path, integrity: str = INTEGRITY, version: str = VERSION) -> None:
    """Check ``tarball`` against ``integrity`` and extract its ``es5/`` build into ``dest``.

    ``dest`` is replaced as a whole (written beside it, then renamed), so an interrupted run
    never leaves a half-filled folder that looks vendored.

    Raises:
        VendorError: the hash differs, or the tarball has no ``package/es5/`` + ``ENTRY``.
    """
    tarball, dest = Path(tarball), Path(dest)
    found = integrity_of(tarball)
    if found != integrity:
        raise VendorError(f"{tarball.name}: integrity {found} differs from the pinned {integrity}; "
                          "refusing to vendor it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".mathjax-", dir=dest.parent))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                rel = member.name[len(_PREFIX):]
                if member.name.startswith(_PREFIX) and member.isfile() and ("/" in rel or rel == ENTRY):
                    member.name = rel
                elif member.name == _LICENSE:
                    member.name = "LICENSE"
                else:
                    continue
                members.append(member)
            if not any(m.name == ENTRY for m in members):
                raise VendorError(f"{tarball.name} has no {_PREFIX}{ENTRY}: not a MathJax 3 package")
            tar.extractall(staging, members=members, filter="data")
        (staging / ".version").write_text(version + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the build copies it for a web server
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help="target folder (default: _vendor/mathjax in the repository)")
    parser.add_argument("--tarball", type=Path, default=None,
                        help=f"a downloaded mathjax-{VERSION}.tgz instead of `npm pack`")
    args = parser.parse_args(argv)
    if is_vendored(args.dest):
        return 0
    try:
        if args.tarball is not None:
            extract(args.tarball, args.dest)
        else:
            with tempfile.TemporaryDirectory() as work:
                extract(npm_pack(VERSION, Path(work)), args.dest)
    except VendorError as exc:
        print(f"vendor_mathjax: {exc}", file=sys.stderr)
        return 1
    print(f"vendor_mathjax: MathJax {VERSION} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
