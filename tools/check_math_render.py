"""Browser check of the built book: every formula is typeset by MathJax, with no network.

For each page checked, headless Chromium loads the built HTML from disk with every host name
unresolvable (``--host-resolver-rules``), so a page that fetched MathJax from a CDN would show its
math as raw TeX; after ``--virtual-time-budget`` milliseconds of page time it dumps the DOM. The
page passes when

- MathJax typeset something (at least one ``<mjx-container>``);
- every math element Sphinx wrote (``class="math"``: inline ``\\(…\\)`` and display ``\\[…\\]``)
  holds an ``<mjx-container>``;
- no raw TeX is left in the visible text: no ``\\(``, ``\\[`` or ``$$`` outside ``<code>``,
  ``<pre>``, ``<script>``, ``<style>``, ``<textarea>`` and MathJax's own output.

Pages: the ones named (they must exist and contain math) plus, with ``--all-math`` (the
default of ``make book-check``), every other page of the build that contains math.

Exit status 0 when every page passes, 1 when one fails, 0 with a ``SKIP`` line when no Chromium
can be found (``chromium``, ``chromium-browser``, ``google-chrome``; Debian: ``apt-get install
chromium``); 2 for bad arguments (a named page that is missing).

Usage::

    python tools/check_math_render.py [--build _build/html] [--all-math] [PAGE.html ...]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import List, Optional, Sequence

#: Browsers tried in order.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Chromium flags: headless, offline (every host unresolvable), page time for MathJax to finish.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--virtual-time-budget=8000", "--host-resolver-rules=MAP * ~NOTFOUND")
#: Raw TeX delimiters that must not survive typesetting.
RAW_TEX = ("\\(", "\\[", "$$")
#: Elements whose text is not typeset math (literal code, scripts, MathJax's own output).
_SKIP_TEXT = {"code", "pre", "script", "style", "textarea", "mjx-container"}
#: HTML void elements (never closed in the serialized DOM).
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}
#: Marker of a math element in Sphinx's HTML (the MathJax renderer's class).
_MATH_MARKER = 'class="math'


@dataclass
class PageReport:
    """What the rendered DOM of one page holds."""

    mjx_containers: int = 0
    math_elements: int = 0
    untypeset_math: List[str] = field(default_factory=list)
    raw_tex: List[str] = field(default_factory=list)

    @property
    def problems(self) -> List[str]:
        out = []
        if self.mjx_containers == 0:
            out.append("no MathJax output (<mjx-container>) in the page")
        if self.untypeset_math:
            out.append(f"{len(self.untypeset_math)} of {self.math_elements} math elements not "
                       f"typeset, e.g. {self.untypeset_math[0]!r}")
        if self.raw_tex:
            out.append(f"raw TeX left in the text, e.g. {self.raw_tex[0]!r}")
        return out


class _DomScanner(HTMLParser):
    """Counts MathJax output, math elements without it, and raw TeX in the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.report = PageReport()
        self._stack: List[dict] = []  # {"tag", "math": bool, "typeset": bool, "text": [..]}

    def _skipping(self) -> bool:
        return any(e["tag"] in _SKIP_TEXT for e in self._stack)

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        is_math = "math" in classes
        if tag == "mjx-container":
            self.report.mjx_containers += 1
            for e in self._stack:
                if e["math"]:
                    e["typeset"] = True
        if is_math:
            self.report.math_elements += 1
        self._stack.append({"tag": tag, "math": is_math, "typeset": False, "text": []})

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        # pop to the matching element (the serialized DOM is well nested; be lenient anyway)
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i]["tag"] == tag:
                for e in reversed(self._stack[i:]):
                    if e["math"] and not e["typeset"]:
                        self.report.untypeset_math.append(" ".join("".join(e["text"]).split())[:120])
                del self._stack[i:]
                return

    def handle_data(self, data):
        for e in self._stack:
            if e["math"]:
                e["text"].append(data)
        if self._skipping():
            return
        for delim in RAW_TEX:
            at = data.find(delim)
            if at >= 0:
                self.report.raw_tex.append(" ".join(data[max(0, at - 30):at + 60].split()))
                break


def scan_dom(html: str) -> PageReport:
    """Scan a serialized DOM (Chromium's ``--dump-dom``) for typeset and raw math."""
    scanner = _DomScanner()
    scanner.feed(html)
    scanner.close()
    return scanner.report


def find_browser() -> Optional[str]:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(browser: str, page: Path, timeout: float = 120.0) -> str:
    """The DOM of ``page`` after MathJax ran, as headless Chromium serializes it (offline)."""
    with tempfile.TemporaryDirectory(prefix="crc-book-chromium-") as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
               page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"{browser} exited {proc.returncode} on {page}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def pages_with_math(build: Path) -> List[Path]:
    """Every built HTML page whose source contains a math element (Sphinx's ``class="math``)."""
    return sorted(p for p in build.rglob("*.html")
                  if "_static" not in p.relative_to(build).parts
                  and _MATH_MARKER in p.read_text(encoding="utf-8", errors="replace"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", default=[],
                        help="pages to check, relative to --build (e.g. theory.html)")
    parser.add_argument("--build", type=Path, default=Path("_build/html"),
                        help="the built HTML book (default _build/html)")
    parser.add_argument("--all-math", action="store_true",
                        help="also check every other page that contains math")
    args = parser.parse_args(argv)

    named = [args.build / p for p in args.pages]
    missing = [str(p) for p in named if not p.is_file()]
    if missing:
        print(f"check_math_render: no such page: {', '.join(missing)} (build the book first)",
              file=sys.stderr)
        return 2
    pages = list(named)
    if args.all_math:
        pages += [p for p in pages_with_math(args.build) if p not in named]
    if not pages:
        print("check_math_render: no page to check (name pages or pass --all-math)", file=sys.stderr)
        return 2

    browser = find_browser()
    if browser is None:
        print(f"SKIP browser check: no Chromium on PATH (looked for {', '.join(BROWSERS)}; "
              "Debian: apt-get install chromium)")
        return 0

    failed = 0
    for page in pages:
        name = page.relative_to(args.build).as_posix()
        try:
            report = scan_dom(dump_dom(browser, page))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"FAIL {name}: {exc}")
            failed += 1
            continue
        if page in named and report.math_elements == 0:
            problems = ["no math element in the page (a named page must contain math)"]
        else:
            problems = report.problems
        if problems:
            failed += 1
            print(f"FAIL {name}: " + "; ".join(problems))
        else:
            print(f"ok   {name}: {report.math_elements} math elements, "
                  f"{report.mjx_containers} typeset by MathJax, no raw TeX")
    print(f"browser-check: {len(pages) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
