"""The HTML report of real runs: what it shows, that data cannot inject markup, and how a real browser renders it.

The browser test drives Debian's headless chromium through selenium with the local chromedriver (Selenium Manager
is kept offline). Without chromium it skips locally and fails under CI=true, like the Docker tests.
"""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from shadow import reports
from tests.conftest import write_plan

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

SQL = """
SET lock_timeout = '5s';
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
UPDATE users SET email_verified = true WHERE id % 3 = 0;
UPDATE users SET full_name = upper(full_name);
DELETE FROM orders WHERE id > 1990;
CREATE INDEX users_full_name_idx ON users (full_name);
"""

PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: migrations/0042_add_email_verified.sql
expect:
  app:
    must: [add column public.users.email_verified]
    may: [update rows public.users, add index public.*]
    checks:
      - sql: select count(*) from public.users where email_verified
        equals: 5
policy:
  allow: [create-index-blocking]
"""


def _plan_and_show(shadow_cli: Any, prod_db: Any, tmp_path: Path, plan: str, sql: str) -> tuple[str, str, dict[str, Any]]:
    """`shadow plan` on a real database, then `shadow show --format html -o`: (run id, the html, the model)."""
    write_plan(tmp_path, plan, {"migrations/0042_add_email_verified.sql": sql})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    planned = shadow_cli("plan", env=env)
    assert planned.code == 1, planned.text
    run_id = json.loads(shadow_cli("runs", "--json").out)[0]["id"]
    shown = shadow_cli("show", run_id, "--format", "html", "-o", "report.html")
    assert shown.code == 0, shown.text
    html = (tmp_path / "report.html").read_text()
    run_dir = shadow_cli.state_dir / "runs" / run_id
    assert (run_dir / "report.html").read_text() == html  # written next to report.md by the run itself
    return run_id, html, json.loads((run_dir / "report.json").read_text())


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser


def test_html_report_of_a_real_run_shows_verdict_changes_sample_rows_timing_and_checkpoints(prod_db, shadow_cli,
                                                                                          tmp_path):
    run_id, html, m = _plan_and_show(shadow_cli, prod_db, tmp_path, PLAN, SQL)
    parsed = _parse(html)
    tags = {tag for tag, _ in parsed.tags}
    assert "script" not in tags and "link" not in tags and "img" not in tags and "iframe" not in tags
    assert all(not (attrs.get("src") or "").strip() for _, attrs in parsed.tags)
    text = " ".join(" ".join(parsed.text).split())

    assert html.index('id="verdict"') < html.index("<main>")
    assert 'class="verdict bad"' in html and "FAILED" in text and run_id in text
    assert "returned 166, expected 5" in text
    for address in ("add column public.users.email_verified", "add index public.users_full_name_idx",
                    "update rows public.users", "delete rows public.orders"):
        assert f'data-address="{address}"' in html, address
    assert "500 rows" in text and "10 rows" in text

    # The changed cells of an updated row are marked, before and after.
    users = next(c for c in m["targets"][0]["changes"] if c["address"] == "update rows public.users")
    sample = users["detail"]["sample_rows"][0]
    n = sample["key"]["id"]
    assert sample["before"]["full_name"] == f"User {n}" and sample["after"]["full_name"] == f"USER {n}"
    assert "email_verified" not in sample["before"] and sample["after"]["email_verified"] in ("true", "false")
    assert f'<td class="chg">User {n}</td>' in html and f'<td class="chg">USER {n}</td>' in html
    assert f'<td class="">user{n}@example.com</td>' in html  # unchanged, not marked
    deleted = next(c for c in m["targets"][0]["changes"] if c["address"] == "delete rows public.orders")
    assert [s["after"] for s in deleted["detail"]["sample_rows"]] == [None] * 5

    # Schema change as before/after; lock trace; timing of each step; checkpoint ids in full.
    assert "<td>type</td><td><span class=\"muted\">—</span></td><td><code>boolean</code></td>" in html
    assert "ACCESS EXCLUSIVE" in text
    for step in ("checkpoint", "shadow", "rehearse", "observe", "judge"):
        assert f"<td>{step}</td>" in html, step
    cp = m["targets"][0]["checkpoint"]
    assert cp["fingerprint"] in text and all(a["sha256"] in text for a in cp["artifacts"].values())


HOSTILE_SQL = """
SET lock_timeout = '5s';
CREATE TABLE public."<b>evil</b>" (id int PRIMARY KEY);
INSERT INTO public."<b>old</b>" VALUES (2, '<script>alert(1)</script>'), (3, '</td></tr></table><img src=x onerror=alert(2)>');
UPDATE public."<b>old</b>" SET "<i>col" = '"><svg onload=alert(3)>' WHERE id = 1;
"""

HOSTILE_PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: migrations/0042_add_email_verified.sql
expect:
  app:
    may: [update rows public.users]
"""


def test_html_report_escapes_hostile_names_and_values_from_the_data(prod_db, shadow_cli, tmp_path):
    prod_db.execute("""CREATE TABLE public."<b>old</b>" (id int PRIMARY KEY, "<i>col" text);
                       INSERT INTO public."<b>old</b>" VALUES (1, '<u>before</u>')""")
    _run_id, html, m = _plan_and_show(shadow_cli, prod_db, tmp_path, HOSTILE_PLAN, HOSTILE_SQL)
    parsed = _parse(html)
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "header", "div", "br", "span", "main", "h1",
                    "h2", "h3", "dl", "dt", "dd", "code", "pre", "section", "table", "thead", "tbody", "tr", "th",
                    "td", "a", "p", "ul", "li", "details", "summary", "footer"}, tags
    assert not any(k.startswith("on") for _, attrs in parsed.tags for k in attrs)
    text = " ".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(2)>" in text
    assert '"><svg onload=alert(3)>' in text and 'add table public."<b>evil</b>"' in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<td class="chg">&lt;u&gt;before&lt;/u&gt;</td>' in html and "<th>&lt;i&gt;col</th>" in html
    # The model is intact; only the page escapes it.
    changes = {c["address"]: c for c in m["targets"][0]["changes"]}
    inserted = changes['insert rows public."<b>old</b>"']["detail"]["sample_rows"]
    assert inserted[0] == {"key": {"id": "2"}, "before": None, "after": {"id": "2", "<i>col": "<script>alert(1)</script>"}}
    updated = changes['update rows public."<b>old</b>"']["detail"]["sample_rows"]
    assert updated == [{"key": {"id": "1"}, "before": {"id": "1", "<i>col": "<u>before</u>"},
                        "after": {"id": "1", "<i>col": '"><svg onload=alert(3)>'}}]


def test_html_report_of_a_huge_model_is_cut_with_counts(prod_db, shadow_cli, tmp_path):
    _run_id, _html, m = _plan_and_show(shadow_cli, prod_db, tmp_path, PLAN, SQL)
    target = m["targets"][0]
    target["changes"] += [{"address": f"modify object b/k{i}.txt", "op": "modify", "kind": "object",
                           "name": f"b/k{i}.txt", "detail": {"content_diff": ["--- before", "+++ after", "@@ -1 +1 @@",
                                                                             "-old <x>", "+new & improved"]}}
                          for i in range(20_000)]
    m["steps"] *= 300
    html = reports.render(m, "html")
    assert html.count('<li class="change"') == report_html_max_changes()
    total = sum(1 for _ in _walk(target["changes"]))
    assert f"… and {total - report_html_max_changes():,} more changes — report.json has them all" in html
    assert f"… and {len(m['steps']) - 1_000:,} more steps" in html
    assert '<span class="del">-old &lt;x&gt;</span><span class="add">+new &amp; improved</span>' in html
    assert len(html) < 20_000_000


def report_html_max_changes() -> int:
    from shadow.reports.html_changes import MAX_CHANGES

    return MAX_CHANGES


def _walk(changes: list[dict[str, Any]]) -> Any:
    for c in changes:
        yield c
        yield from _walk(c.get("implied") or [])


# --- in a real browser --------------------------------------------------------------------------------------------


def _chromium_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}: the browser test must run in CI")
        pytest.skip(f"browser: {why}")


def _artifacts(tmp_path: Path) -> Path:
    chosen = os.environ.get("SHADOW_TEST_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_path / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    _chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--window-size=1280,900", "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_html_report_renders_in_chromium_with_the_verdict_above_the_fold(prod_db, shadow_cli, tmp_path, browser):
    from selenium.webdriver.common.by import By

    run_id, _html, _m = _plan_and_show(shadow_cli, prod_db, tmp_path, PLAN, SQL)
    browser.get((tmp_path / "report.html").as_uri())
    assert run_id in browser.title and "FAILED" in browser.title

    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and "FAILED" in verdict.text
    rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", verdict)
    viewport = browser.execute_script("return window.innerHeight")
    assert 0 <= rect["top"] < viewport and rect["bottom"] <= viewport and rect["height"] > 40
    colour = browser.execute_script("return getComputedStyle(arguments[0]).backgroundColor", verdict)
    assert colour == "rgb(207, 34, 46)"  # the inline stylesheet applied: red for a failed run

    failed = [r for r in browser.find_elements(By.CSS_SELECTOR, "#expectations tr.failed")
              if "returned 166, expected 5" in r.text]
    assert len(failed) == 1 and failed[0].is_displayed()
    changed = browser.find_elements(By.CSS_SELECTOR, "tr.after td.chg")
    assert changed and all(c.is_displayed() or not c.text for c in changed[:3])
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    folder = _artifacts(tmp_path)
    shot = folder / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 100, 2400))
    full = folder / "report-full.png"
    browser.save_screenshot(str(full))
    shutil.copy(tmp_path / "report.html", folder / "report.html")
    print(f"\nscreenshots: {shot} {full}")
