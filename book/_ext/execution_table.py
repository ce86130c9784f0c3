"""Sphinx extension: the ``{execution-table}`` directive (each notebook's run time and machine).

The book never executes notebooks (``execute_notebooks: "off"``): ``make book`` runs them with
papermill (``tools/execute_notebooks.py``) into ``book/generated/``. Papermill writes the run's
start, end and duration into ``metadata.papermill`` of each executed copy, and
``execute_notebooks.py`` adds the machine it ran on under ``metadata.crc_book.machine``. The
directive reads that metadata from every notebook page of the book at build time and renders
one table row per notebook:

    notebook (linked) | parameters | started (UTC) | run time | machine

so the page that holds it defines no code. With no notebook in the book it renders a sentence
saying so. The page is re-read on every build (the notebooks it describes may have changed).

Loaded through ``_config.yml`` (``sphinx.local_extensions``).
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: Columns of the table.
COLUMNS = ("Notebook", "Parameters", "Started (UTC)", "Run time", "Machine")
#: Key of env.metadata[docname] marking the pages that hold the directive.
_MARK = "execution-table"


def read_execution(path: Path) -> Optional[Dict[str, Any]]:
    """The execution record of an executed notebook, or None if papermill did not run it.

    Args:
        path: an ``.ipynb`` file.

    Returns:
        ``{"start": datetime | None, "duration": float | None (seconds), "parameters": dict,
        "exception": bool, "machine": dict | None}``, read from ``metadata.papermill`` and
        ``metadata.crc_book.machine``.
    """
    meta = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {})
    pm = meta.get("papermill")
    if not isinstance(pm, dict):
        return None
    start = pm.get("start_time")
    return {
        "start": _dt.datetime.fromisoformat(start) if start else None,
        "duration": pm.get("duration"),
        "parameters": pm.get("parameters") or {},
        "exception": bool(pm.get("exception")),
        "machine": (meta.get("crc_book") or {}).get("machine"),
    }


def format_duration(seconds: Optional[float]) -> str:
    """``"42.0 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``; an em dash when unknown."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_machine(machine: Optional[Dict[str, Any]]) -> str:
    """One line from the ``metadata.crc_book.machine`` record; an em dash when absent."""
    if not machine:
        return "—"
    parts = []
    cpu = machine.get("cpu")
    cores = machine.get("cores")
    if cpu or cores:
        parts.append(f"{cpu or 'CPU'}" + (f", {cores} cores" if cores else ""))
    if machine.get("memory_gib"):
        parts.append(f"{machine['memory_gib']} GiB")
    parts.append(f"GPU: {machine['gpu']}" if machine.get("gpu") else "no GPU")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return "; ".join(parts)


def _format_start(start: Optional[_dt.datetime]) -> str:
    if start is None:
        return "—"
    if start.tzinfo is not None:
        start = start.astimezone(_dt.timezone.utc)
    return start.strftime("%Y-%m-%d %H:%M")


def _cell(content) -> nodes.entry:
    entry = nodes.entry()
    entry += content if isinstance(content, nodes.Node) else nodes.paragraph(text=str(content))
    return entry


class ExecutionTable(SphinxDirective):
    """``{execution-table}``: one row per notebook page of the book (no arguments)."""

    has_content = False
    required_arguments = 0

    def run(self) -> List[nodes.Node]:
        env = self.env
        env.metadata[env.docname][_MARK] = True
        rows = []
        for docname in sorted(env.found_docs):
            path = Path(env.doc2path(docname))
            if path.suffix != ".ipynb":
                continue
            env.note_dependency(str(path))
            rows.append((docname, read_execution(path)))
        if not rows:
            return [nodes.paragraph(text="No notebook is part of the book yet: `make book` "
                                         "executes notebooks/*.ipynb into book/generated/.")]
        table = nodes.table(classes=["execution-table"])
        group = nodes.tgroup(cols=len(COLUMNS))
        table += group
        group.extend(nodes.colspec(colwidth=1) for _ in COLUMNS)
        head = nodes.thead()
        head += nodes.row("", *(_cell(c) for c in COLUMNS))
        group += head
        body = nodes.tbody()
        for docname, rec in rows:
            link = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname,
                                         refexplicit=True, refwarn=True)
            link += nodes.literal(text=Path(docname).name + ".ipynb")
            par = nodes.paragraph()
            par += link
            if rec is None:
                cells = ["not executed by papermill", "—", "—", "—"]
            else:
                params = ", ".join(f"{k}={v}" for k, v in sorted(rec["parameters"].items())) or "—"
                run_time = format_duration(rec["duration"])
                if rec["exception"]:
                    run_time += " (stopped by an exception)"
                cells = [params, _format_start(rec["start"]), run_time, format_machine(rec["machine"])]
            body += nodes.row("", _cell(par), *(_cell(c) for c in cells))
        group += body
        return [table]


def _always_reread(app: Sphinx, env, added, changed, removed) -> List[str]:
    """The pages holding the directive are re-read on every build."""
    return [doc for doc, md in env.metadata.items() if md.get(_MARK) and doc not in removed]


def setup(app: Sphinx) -> Dict[str, Any]:
    app.add_directive("execution-table", ExecutionTable)
    app.connect("env-get-outdated", _always_reread)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
