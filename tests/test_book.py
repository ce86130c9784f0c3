"""Tests of the book's infrastructure: vendored MathJax, the browser check's DOM scan, the
notebook execution table, and the consistency of _config.yml, _toc.yml and references.bib.

The strict build itself (``jupyter-book build -W -n``) and the browser check on the real pages run
in CI (``.ci/run``: ``make book PRESET=smoke``, ``make book-check``).
"""
from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"


def _load(name: str, path: Path):
    """Import a script of tools/ or book/_ext/ (they are not part of the crc_core package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


vendor = _load("vendor_mathjax", REPO / "tools" / "vendor_mathjax.py")
check = _load("check_math_render", REPO / "tools" / "check_math_render.py")
execnb = _load("execute_notebooks", REPO / "tools" / "execute_notebooks.py")
table = _load("execution_table", BOOK / "_ext" / "execution_table.py")


# ------------------------------------------------------------------------------------------------
# Vendored MathJax
# ------------------------------------------------------------------------------------------------

def _fake_package(path: Path, files: dict) -> Path:
    """An npm-pack-like .tgz holding ``files`` ({name under package/: bytes})."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FAKE = {"es5/tex-mml-chtml.js": b"/* entry */", "es5/tex-svg.js": b"/* other component */",
        "es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff": b"font",
        "es5/input/tex/extensions/physics.js": b"/* ext */", "LICENSE": b"Apache-2.0",
        "package.json": b"{}", "README.md": b"readme"}


def test_vendor_extracts_the_browser_build_and_stamps_the_version(tmp_path):
    tgz = _fake_package(tmp_path / "mathjax.tgz", FAKE)
    dest = tmp_path / "_vendor" / "mathjax"
    vendor.extract(tgz, dest, integrity=vendor.integrity_of(tgz), version="9.9.9")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [".version", "LICENSE", "input/tex/extensions/physics.js",
                     "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff", "tex-mml-chtml.js"]
    assert vendor.is_vendored(dest, "9.9.9") and not vendor.is_vendored(dest, "3.2.2")
    assert (dest.stat().st_mode & 0o777) == 0o755
    # a second extraction replaces the folder whole, and leaves no staging folder behind
    vendor.extract(tgz, dest, integrity=vendor.integrity_of(tgz), version="9.9.8")
    assert vendor.is_vendored(dest, "9.9.8")
    assert [p.name for p in dest.parent.iterdir()] == ["mathjax"]


def test_vendor_refuses_a_tarball_with_another_hash(tmp_path):
    tgz = _fake_package(tmp_path / "mathjax.tgz", FAKE)
    dest = tmp_path / "mathjax"
    with pytest.raises(vendor.VendorError, match="differs from the pinned"):
        vendor.extract(tgz, dest)                      # the pinned 3.2.2 integrity
    assert not dest.exists()
    assert vendor.main(["--dest", str(dest), "--tarball", str(tgz)]) == 1
    assert not dest.exists()


def test_vendor_refuses_a_package_without_the_entry_component(tmp_path):
    tgz = _fake_package(tmp_path / "other.tgz", {"es5/tex-svg.js": b"x", "LICENSE": b"l"})
    with pytest.raises(vendor.VendorError, match="not a MathJax 3 package"):
        vendor.extract(tgz, tmp_path / "mathjax", integrity=vendor.integrity_of(tgz))
    assert not (tmp_path / "mathjax").exists()


def test_integrity_is_npm_sri_sha512(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    # sha512("abc"), base64, as `npm view ... dist.integrity` writes it
    assert vendor.integrity_of(f) == ("sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa"
                                      "6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==")


def test_vendor_main_is_a_no_op_when_vendored(tmp_path, monkeypatch):
    dest = tmp_path / "mathjax"
    dest.mkdir()
    (dest / vendor.ENTRY).write_text("x")
    (dest / ".version").write_text(vendor.VERSION + "\n")
    monkeypatch.setattr(vendor, "npm_pack", lambda *a: pytest.fail("must not fetch"))
    assert vendor.main(["--dest", str(dest)]) == 0


def test_vendor_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(vendor.shutil, "which", lambda name: None)
    with pytest.raises(vendor.VendorError, match="npm .* is needed"):
        vendor.npm_pack(vendor.VERSION, tmp_path)


# ------------------------------------------------------------------------------------------------
# The browser check's DOM scan
# ------------------------------------------------------------------------------------------------

TYPESET = """<html><head><script>var s = "\\\\(";</script></head><body>
<p>The margin <span class="math notranslate nohighlight"><mjx-container class="MathJax">
<mjx-math>f</mjx-math><mjx-assistive-mml><math><mi>f</mi></math></mjx-assistive-mml>
</mjx-container></span> is positive.</p>
<div class="math notranslate nohighlight" id="eq1"><mjx-container display="true">x</mjx-container></div>
<p>Literal TeX in code is fine: <code>$$x$$</code> and <pre>\\[ y \\]</pre></p><br><img src="a.png">
</body></html>"""


def test_scan_passes_a_typeset_page():
    report = check.scan_dom(TYPESET)
    assert report.mjx_containers == 2 and report.math_elements == 2
    assert report.problems == []


@pytest.mark.parametrize("raw", ["\\(f\\)", "\\[ z^{(l)} = W^{(l)} a^{(l-1)} \\]", "$$x$$"])
def test_scan_flags_raw_tex_left_in_the_text(raw):
    report = check.scan_dom(TYPESET.replace("is positive.", f"is positive, {raw}."))
    assert report.raw_tex and "raw TeX" in report.problems[0]


def test_scan_flags_math_that_mathjax_did_not_typeset():
    page = TYPESET.replace('<mjx-container display="true">x</mjx-container>', "\\[ x \\]")
    report = check.scan_dom(page)
    assert report.untypeset_math == ["\\[ x \\]"]
    assert any("1 of 2 math elements not typeset" in p for p in report.problems)


def test_scan_flags_a_page_without_mathjax_output():
    report = check.scan_dom('<html><body><span class="math">\\(x\\)</span></body></html>')
    assert report.mjx_containers == 0
    assert len(report.problems) == 3


def test_check_skips_without_a_browser(tmp_path, monkeypatch, capsys):
    (tmp_path / "theory.html").write_text('<div class="math">\\[x\\]</div>')
    monkeypatch.setattr(check, "find_browser", lambda: None)
    assert check.main(["--build", str(tmp_path), "theory.html"]) == 0
    assert capsys.readouterr().out.startswith("SKIP browser check: no Chromium")


def test_check_rejects_a_missing_named_page(tmp_path):
    assert check.main(["--build", str(tmp_path), "generated/table2.html"]) == 2


def test_pages_with_math_skips_static_and_pages_without_math(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "x.html").write_text('<span class="math">\\(x\\)</span>')
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "table2.html").write_text('<span class="math notranslate">\\(x\\)</span>')
    (tmp_path / "search.html").write_text("<p>no math</p>")
    assert check.pages_with_math(tmp_path) == [tmp_path / "generated" / "table2.html"]


# ------------------------------------------------------------------------------------------------
# Notebook execution records and the {execution-table} directive
# ------------------------------------------------------------------------------------------------

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5, "gpu": None, "os": "Linux 6",
           "python": "3.11.7", "torch": "2.13.0+cpu"}


def _executed_notebook(path: Path, duration=83.4, machine=MACHINE) -> Path:
    nb = {"cells": [{"cell_type": "markdown", "id": "a1", "metadata": {}, "source": "# Table 2"}],
          "metadata": {"papermill": {"start_time": "2026-12-01T04:08:34.598166+00:00",
                                     "end_time": "2026-12-01T04:09:57.998166+00:00",
                                     "duration": duration, "exception": None,
                                     "parameters": {"preset": "smoke"}},
                       "kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    if machine is not None:
        nb["metadata"]["crc_book"] = {"machine": machine}
    path.write_text(json.dumps(nb))
    return path


def test_read_execution(tmp_path):
    rec = table.read_execution(_executed_notebook(tmp_path / "t.ipynb"))
    assert rec["duration"] == 83.4 and rec["parameters"] == {"preset": "smoke"}
    assert rec["start"].isoformat().startswith("2026-12-01T04:08:34") and not rec["exception"]
    assert rec["machine"] == MACHINE
    plain = tmp_path / "plain.ipynb"
    plain.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert table.read_execution(plain) is None


@pytest.mark.parametrize("seconds, text", [(None, "—"), (4.26, "4.3 s"), (83.4, "1 min 23 s"),
                                           (3725, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert table.format_duration(seconds) == text


def test_format_machine():
    assert table.format_machine(MACHINE) == "AMD EPYC, 2 cores; 23.5 GiB; no GPU; torch 2.13.0+cpu"
    gpu = dict(MACHINE, gpu="NVIDIA H200")
    assert "GPU: NVIDIA H200" in table.format_machine(gpu)
    assert table.format_machine(None) == "—"


def test_stamp_writes_the_machine_into_the_notebook(tmp_path):
    path = _executed_notebook(tmp_path / "t.ipynb", machine=None)
    execnb.stamp(path, MACHINE)
    meta = json.loads(path.read_text())["metadata"]
    assert meta["crc_book"]["machine"] == MACHINE
    assert meta["papermill"]["duration"] == 83.4          # papermill's record is kept


def test_machine_description_fields():
    machine = execnb.machine_description()
    assert set(machine) == set(MACHINE)
    assert machine["cores"] >= 1 and machine["torch"]
    json.dumps(machine)                                   # storable in notebook metadata


def _build(src: Path, out: Path) -> str:
    """A strict (-W -n) HTML build of a tiny Sphinx project with myst-nb and the directive."""
    from sphinx.cmd.build import build_main
    warnings = out / "warnings.txt"
    rc = build_main(["-b", "html", "-W", "-n", "-q", "-w", str(warnings), str(src), str(out)])
    assert rc == 0, warnings.read_text()
    return (out / "execution.html").read_text()


def _project(tmp_path: Path, notebooks: dict) -> Path:
    src = tmp_path / "src"
    (src / "generated").mkdir(parents=True)
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(BOOK / '_ext')!r})\n"
        "extensions = ['myst_nb', 'execution_table']\nnb_execution_mode = 'off'\n"
        "exclude_patterns = ['_build']\n")
    toc = "\n".join(f"generated/{name}" for name in notebooks)
    (src / "index.md").write_text(f"# Book\n\n```{{toctree}}\nexecution\n{toc}\n```\n")
    (src / "execution.md").write_text("# Execution\n\n```{execution-table}\n```\n")
    for name, machine in notebooks.items():
        _executed_notebook(src / "generated" / f"{name}.ipynb", machine=machine)
    return src


def test_execution_table_renders_one_row_per_notebook(tmp_path):
    src = _project(tmp_path, {"table2": MACHINE, "figure1": None})
    html = _build(src, tmp_path / "out")
    assert html.count("<tr") == 3                          # header + 2 notebooks
    assert "table2.ipynb" in html and 'href="generated/table2.html"' in html
    assert "<p>preset=smoke</p>" in html and "1 min 23 s" in html and "2026-12-01 04:08" in html
    assert "AMD EPYC, 2 cores; 23.5 GiB; no GPU; torch 2.13.0+cpu" in html
    figure1 = next(r for r in re.findall(r"<tr.*?</tr>", html, re.S) if "figure1" in r)
    assert re.search(r"<td><p>—</p></td>\s*</tr>$", figure1)  # no machine record: a dash


def test_execution_table_without_notebooks_says_so(tmp_path):
    html = _build(_project(tmp_path, {}), tmp_path / "out")
    assert "No notebook is part of the book yet" in html and "<table" not in html


# ------------------------------------------------------------------------------------------------
# Configuration: _config.yml, _toc.yml, references.bib
# ------------------------------------------------------------------------------------------------

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
TOC = yaml.safe_load((BOOK / "_toc.yml").read_text())


def test_mathjax_is_served_from_the_build_not_a_cdn():
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["mathjax_path"] == "mathjax/" + vendor.ENTRY     # relative: under _static/
    static = [(BOOK / p).resolve() for p in sphinx["html_static_path"]]
    assert vendor.DEFAULT_DEST.parent in static                     # _vendor/ → _static/
    # Jupyter Book turns every .js under book/_static into a <script> tag: MathJax must not be there
    assert not (BOOK / "_static").exists()


def test_launch_buttons_off():
    launch = CONFIG["launch_buttons"]
    assert not any(launch.get(k) for k in ("binderhub_url", "jupyterhub_url", "colab_url",
                                           "deepnote_url", "thebe"))


def _toc_files(node) -> list:
    if isinstance(node, dict):
        return ([node["file"]] if "file" in node else []) + [
            f for key in ("chapters", "parts", "sections") for f in _toc_files(node.get(key, []))]
    return [f for item in node for f in _toc_files(item)]


def test_every_toc_page_exists_or_is_generated():
    files = [TOC["root"]] + _toc_files(TOC)
    assert "theory" in files and "bibliography" in files and "execution" in files
    for f in files:
        if f.startswith("generated/"):
            continue                                                 # written by `make book`
        assert any((BOOK / (f + ext)).is_file() for ext in (".md", ".ipynb")), f


def test_every_citation_is_in_references_bib():
    keys = set(re.findall(r"@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text()))
    assert {"singla2020second", "zhang2018crown", "zhang2020crownibp", "wong2018scaling",
            "leino2021gloro", "lee2020bcp", "tsuzuku2018lmt", "higham2002accuracy",
            "cohen2019smoothing"} <= keys
    cited = set()
    for page in BOOK.glob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    assert cited and cited <= keys, cited - keys


def _book_text() -> str:
    return "\n".join(p.read_text() for p in sorted(BOOK.glob("*.md")))


def test_every_function_the_book_names_exists():
    """The theory chapter links each result to its function by public name: they must resolve."""
    import importlib
    names = sorted(set(re.findall(r"`(crc_core(?:\.\w+)+)", _book_text())))
    assert "crc_core.duality.certify" in names and "crc_core.curvature.local_bounds" in names
    missing = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):           # longest importable module prefix
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, missing


def test_every_file_the_book_names_exists():
    paths = set(re.findall(r"`((?:tests|benchmarks|tools|book)/[\w/.-]+\.(?:py|md|yml))`", _book_text()))
    assert "tests/test_duality.py" in paths
    assert not [p for p in paths if not (REPO / p).is_file()]
