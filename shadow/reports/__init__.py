"""The run report: renderers that take only the report model (:meth:`shadow.result.RunResult.to_dict`).

``shadow show`` re-renders a stored ``report.json``, so every renderer works from the model alone, and this package
imports no part of a run: only the core and :mod:`shadow.outcome` (``tests/test_layers.py`` checks it). Formats
(:data:`FORMATS`): ``md`` (GitHub-flavoured, always small enough for one pull-request comment,
:mod:`shadow.reports.markdown`), ``json`` (the model, described by the JSON Schema shipped as
``shadow/reports/schema/report-v1.json``), ``junit`` (:mod:`shadow.reports.junit`) and ``html`` (one self-contained
page, :mod:`shadow.reports.html`).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from shadow.reports.common import summary_line, time_line, verdict_line
from shadow.reports.junit import render_junit
from shadow.reports.markdown import render_markdown

__all__ = ["FORMATS", "SCHEMA", "json_schema", "render", "render_json", "render_markdown", "summary_line",
           "time_line", "verdict_line"]

FORMATS = ("md", "json", "junit", "html")
SCHEMA = "schema/report-v1.json"  # shipped in this package: the JSON Schema of format_version 1


def render(m: dict[str, Any], fmt: str) -> str:
    """The model in one of :data:`FORMATS`."""
    from shadow.reports.html import render_html

    renderers = {"md": render_markdown, "json": render_json, "junit": render_junit, "html": render_html}
    return renderers[fmt](m)


def render_json(m: dict[str, Any]) -> str:
    return json.dumps(m, indent=2, sort_keys=False, default=str) + "\n"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every ``format_version`` 1 model validates against."""
    schema: dict[str, Any] = json.loads(resources.files(__name__).joinpath(SCHEMA).read_text(encoding="utf-8"))
    return schema
