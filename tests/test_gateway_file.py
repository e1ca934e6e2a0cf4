"""The gateway file (issue 17, §1): the plan's loader and rules, every mistake reported at once with its line and
key, credentials only through ${VAR}, and an actor's own entry over ``default``. Pure loading, plus the real CLI
for the exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadow.errors import PlanError
from shadow.gateway.config import load_gateway
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent

BAD = """version: 1
targets:
  app: {kind: postgres, dsn: "postgresql://app:hunter2@db.internal/app"}
agents:
  default:
    scope:
      app: {may: ["* rows public.*"]}
      nowhere: {may: ["*"]}
    limits: {rows: -1, drops: maybe, max_lock: {TOTAL: 2s}}
    rate: {proposals: lots}
    breaker: {failures: 0, window: soon}
    apply: always
    isolation: vm
    resources: {memory: huge, timeout: never}
    colour: blue
  "bad actor!": {}
state: {store: "/var/shadow"}
"""

# (line, key, what the message says) for each mistake above
EXPECTED = [
    (3, "targets.app.dsn", "password"),
    (8, "agents.default.scope.nowhere", "nowhere"),
    (9, "agents.default.limits.rows", "not a count"),
    (9, "agents.default.limits.drops", ""),
    (9, "agents.default.limits.max_lock.TOTAL", "lock mode"),
    (10, "agents.default.rate.proposals", "not a rate"),
    (11, "agents.default.breaker.failures", "at least 1"),
    (11, "agents.default.breaker.window", "not a duration"),
    (12, "agents.default.apply", ""),
    (13, "agents.default.isolation", ""),
    (14, "agents.default.resources.memory", "not a size"),
    (14, "agents.default.resources.timeout", "not a duration"),
    (15, "agents.default.colour", "unknown key"),
    (16, "bad actor!", ""),
    (17, "state.store", "s3://"),
]


def test_every_mistake_in_a_gateway_file_is_named_with_its_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(BAD)
    with pytest.raises(PlanError) as caught:
        load_gateway(path, {})
    text = str(caught.value)
    missing = [f"{line}: {key} ({words})" for line, key, words in EXPECTED
               if not any(f":{line}:" in problem and key in problem and words in problem
                          for problem in text.splitlines())]
    assert not missing, f"not reported: {missing}\n{text}"
    assert "hunter2" not in text


def test_an_actor_without_an_entry_gets_default_and_its_own_entrys_keys_override_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("""version: 1
targets: {app: {kind: postgres, dsn: "${APP_URL}"}}
agents:
  default: {limits: {rows: 10}, breaker: {failures: 2, window: 1h}}
  reporting-bot: {scope: {app: {may: ["insert rows public.reports"]}}, apply: within-limits}
""")
    gateway = load_gateway(path, {"APP_URL": "postgresql://app@127.0.0.1:1/app"})
    anyone = gateway.rules_for("someone")
    assert (anyone.rows, anyone.breaker_failures, anyone.breaker_window) == (10, 2, 3600.0)
    bot = gateway.rules_for("reporting-bot")
    assert bot.apply == "within-limits" and bot.scope["app"].may == ("insert rows public.reports",)
    assert (bot.rows, bot.breaker_failures) == (10, 2)  # the keys it does not set: default's
    assert anyone.apply == "approval" and anyone.isolation == "container"  # the fail-safe defaults
    assert gateway.raw_targets["app"]["dsn"] == "${APP_URL}"  # what a proposal's plan holds: no secret on disk


def test_the_cli_refuses_a_bad_gateway_file_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(BAD)
    r = run_cli("agents", "-f", "gateway.yaml", state=tmp_path / "state", cwd=tmp_path, backend=None)
    assert r.code == 2, r.text
    assert "gateway.yaml:11: agents.default.breaker.failures" in r.err and "Traceback" not in r.text
    assert "hunter2" not in r.text
