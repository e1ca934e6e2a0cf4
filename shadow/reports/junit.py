"""JUnit XML from the report model, so any CI shows a run's expectations and static findings as test cases.

One ``<testsuite>`` named after the run, inside ``<testsuites>``:

* one test case per expectation (classname ``expectations.<target>``): a failed one carries a ``<failure>``
  whose ``message`` is the verdict's message;
* one test case per static finding (classname ``findings``, named ``<id> at <file>:<line>``): an error-level
  finding the plan does not allow is a failure; warnings, info and allowed findings pass, with their text in
  ``<system-out>``;
* when the run did not succeed and no case above says why (drift, an action failing in production, an
  infrastructure error), one more case, ``run outcome``, fails with the run's reason — so a red run is never a green
  suite.

Works from the model alone (``shadow show`` re-renders a stored ``report.json``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

# XML 1.0 allows only these characters (https://www.w3.org/TR/xml/#charsets); ElementTree escapes markup but
# writes anything else as is, which makes the document unparseable. Replace them with a visible \xNN.
_ILLEGAL_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Outcomes that mean shadow itself could not finish (JUnit <error>), rather than the change not being acceptable.
_ERROR_OUTCOMES = {"error", "interrupted", "restore_failed", "running"}


def render_junit(m: dict[str, Any]) -> str:
    """The model as a JUnit XML document (UTF-8 declared; str)."""
    cases = [_expectation_case(v) for v in m.get("expectations") or []]
    cases += [_finding_case(f) for f in m.get("findings") or []]
    failed = sum(1 for c in cases if c.find("failure") is not None)
    if m.get("exit_code", 0) != 0 and not failed:
        cases.append(_outcome_case(m))
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    seconds = f"{sum(float(s.get('seconds') or 0) for s in m.get('steps') or []):.3f}"

    root = ET.Element("testsuites", _attrs(name="shadow", tests=len(cases), failures=failures, errors=errors,
                                           skipped=0, time=seconds))
    suite = ET.SubElement(root, "testsuite", _attrs(
        name=" ".join(x for x in ("shadow", m.get("command"), m["run_id"]) if x), tests=len(cases), failures=failures,
        errors=errors, skipped=0, time=seconds, timestamp=m.get("started_at") or ""))
    props = ET.SubElement(suite, "properties")
    for name in ("run_id", "command", "outcome", "exit_code", "reason", "plan", "of_run", "format_version"):
        if m.get(name) not in (None, ""):
            ET.SubElement(props, "property", _attrs(name=name, value=m[name]))
    backend = (m.get("backend") or {}).get("name")
    if backend:
        ET.SubElement(props, "property", _attrs(name="backend", value=backend))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _expectation_case(v: dict[str, Any]) -> ET.Element:
    case = _case(f"expectations.{v.get('target') or 'run'}", f"{v['rule']} {v['subject']}")
    if v["ok"]:
        _text(case, "system-out", v["message"])
    else:
        _text(case, "failure", v["message"], message=v["message"], type=v["rule"])
    return case


def _finding_case(f: dict[str, Any]) -> ET.Element:
    case = _case("findings", f"{f['id']} at {f.get('file')}:{f.get('line')}")
    body = "\n".join(x for x in (
        f"{f['severity']}{' (allowed by policy.allow)' if f.get('allowed') else ''}: {f['message']}",
        f"fix: {f['hint']}" if f.get("hint") else "",
        f"statement: {f['statement']}" if f.get("statement") else "",
    ) if x)
    if f["severity"] == "error" and not f.get("allowed"):
        _text(case, "failure", body, message=f["message"], type=f["id"])
    else:
        _text(case, "system-out", body)
    return case


def _outcome_case(m: dict[str, Any]) -> ET.Element:
    case = _case("run", "run outcome")
    reason = m.get("reason") or m.get("outcome") or "the run did not succeed"
    kind = "error" if m.get("outcome") in _ERROR_OUTCOMES else "failure"
    _text(case, kind, f"{m.get('outcome')}: {reason}", message=reason, type=m.get("outcome") or "")
    return case


def _case(classname: str, name: str) -> ET.Element:
    return ET.Element("testcase", _attrs(classname=classname, name=name, time="0"))


def _text(parent: ET.Element, tag: str, text: str, **attrs: Any) -> None:
    ET.SubElement(parent, tag, _attrs(**attrs)).text = _clean(text)


def _attrs(**values: Any) -> dict[str, str]:
    return {k: _clean(v) for k, v in values.items()}


def _clean(value: Any) -> str:
    return _ILLEGAL_XML.sub(lambda mt: f"\\x{ord(mt.group()):02X}", str(value))
