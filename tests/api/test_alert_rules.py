"""The Prometheus alert rules in deploy/prometheus/stoic-alerts.yml.

- The file has the rule-file structure (groups -> rules with alert, expr, for,
  labels.severity, annotations summary/description/runbook_url), the runbook
  links point at headings that exist in docs/operations.md, and docs/alerts.md
  documents every alert.
- Every expression passes a light PromQL check (balanced brackets, known functions,
  valid durations, annotation labels that the expression keeps), and every metric,
  label and label value it selects appears in GET /metrics of a real app over a real
  SQLite store with projections, a retrying and a dead failure, and a worker.
- With ``promtool`` on the PATH (Debian package ``prometheus``): ``promtool check
  rules`` passes, and ``promtool test rules`` shows each alert firing on synthetic
  series (and not firing on healthy ones). Skipped without promtool, unless
  ``STOIC_REQUIRE_PROMTOOL=1`` (for a CI that installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.apps import FaultyLedger, LedgerProjection

import stoic
from stoic.api import ApiSettings, create_app

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "stoic-alerts.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
TOKEN = "alert-rules-test-token-31c9"

#: What the rules must cover (the brief of the alerting): alert -> the metric it reads.
REQUIRED = {
    "StoicProjectionLagEventsHigh": "stoic_projection_lag_events",
    "StoicProjectionLagSecondsHigh": "stoic_projection_lag_seconds",
    "StoicDeadFailures": "stoic_projection_failures",
    "StoicFailureRateSpike": "stoic_projection_failures",
    "StoicBreakerOpen": "stoic_projection_breaker_state",
    "StoicProjectionStalled": "stoic_projection_status",
    "StoicProjectionOffline": "stoic_projection_status",
    "StoicWorkerHeartbeatMissing": "stoic_worker_heartbeat_age_seconds",
    "StoicNoWorkersAlive": "stoic_workers_alive",
}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"info", "warning", "critical"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time", "minute",
    "month", "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar",
    "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time",
    "timestamp", "vector", "year",
}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
GROUPING = {"by", "without", "on", "ignoring"}


def load_rules() -> dict[str, Any]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "the rule file is not a YAML mapping"
    return data


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


# -- structure ------------------------------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    found = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            title = match.group(1).strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_the_file_has_the_prometheus_rule_file_structure() -> None:
    data = load_rules()
    assert set(data) == {"groups"}, set(data)
    assert isinstance(data["groups"], list) and data["groups"]
    group_names = [g.get("name") for g in data["groups"]]
    assert all(isinstance(n, str) and n for n in group_names) and len(set(group_names)) == len(group_names)
    names = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, set(group)
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
        for rule in group["rules"]:
            name = rule.get("alert")
            assert isinstance(name, str) and re.fullmatch(r"Stoic[A-Z][A-Za-z0-9]+", name), rule
            names.append(name)
            assert set(rule) <= RULE_KEYS, f"{name}: unknown keys {set(rule) - RULE_KEYS}"
            assert {"expr", "for", "labels", "annotations"} <= set(rule), f"{name}: missing keys"
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
            assert DURATION.match(str(rule["for"])) and not re.fullmatch(r"0+\D+", str(rule["for"])), (
                f"{name}: 'for' is not a positive duration: {rule['for']!r}")
            assert rule["labels"].get("severity") in SEVERITIES, f"{name}: severity {rule['labels']}"
            assert all(isinstance(v, str) for v in rule["labels"].values()), name
            notes = rule["annotations"]
            for key in ("summary", "description", "runbook_url"):
                assert isinstance(notes.get(key), str) and notes[key].strip(), f"{name}: no annotation {key}"
    assert len(set(names)) == len(names), f"duplicate alert names: {names}"
    assert set(REQUIRED) <= set(names), f"missing alerts: {set(REQUIRED) - set(names)}"
    for rule in all_rules():
        if rule["alert"] in REQUIRED:
            assert REQUIRED[rule["alert"]] in rule["expr"], rule["alert"]


def test_every_alert_has_a_runbook_in_docs_operations_md_and_a_section_in_docs_alerts_md() -> None:
    operations = anchors(OPERATIONS_DOC.read_text(encoding="utf-8"))
    alerts_doc = ALERTS_DOC.read_text(encoding="utf-8")
    for rule in all_rules():
        link = re.search(r"docs/operations\.md#([\w-]+)", rule["annotations"]["runbook_url"])
        assert link, f"{rule['alert']}: runbook_url does not point at docs/operations.md#<section>"
        assert link.group(1) in operations, f"{rule['alert']}: docs/operations.md has no heading #{link.group(1)}"
        assert re.search(rf"^#+ .*`?{rule['alert']}`?", alerts_doc, re.M), (
            f"docs/alerts.md has no section for {rule['alert']}")


# -- PromQL sanity --------------------------------------------------------------------------------


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``(metric, [(label, op, value), ...])`` for every ``metric{...}`` or bare ``metric``."""
    found = []
    for match in re.finditer(r"\b(stoic_[a-zA-Z0-9_:]*)\s*(\{([^}]*)\})?", expr):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', match.group(3) or "")
        found.append((match.group(1), matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for match in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in match.group(2).split(",") if x.strip()}
    return labels


def promql_problems(expr: str) -> list[str]:
    problems = []
    bare = strip_strings(expr)
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in bare:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return [f"unbalanced {char!r}"]
    if stack:
        return [f"unclosed {stack[-1]!r}"]
    for rng in re.findall(r"\[([^\]]*)\]", bare):
        for part in rng.split(":"):
            if part and not DURATION.match(part.strip()):
                problems.append(f"bad range duration [{rng}]")
    for match in re.finditer(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*\(", bare):
        word = match.group(1)
        if word not in FUNCTIONS | AGGREGATIONS | GROUPING | {"group_left", "group_right"}:
            problems.append(f"unknown function {word}()")
    # Every other bare word is a metric, a keyword or a label of a grouping clause.
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    rest = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    rest = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", rest)  # function calls: checked above
    for word in re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_:]*\b", rest):
        if word in FUNCTIONS | AGGREGATIONS | KEYWORDS or word.startswith("stoic_"):
            continue
        if re.fullmatch(r"\d+(ms|s|m|h|d|w|y)|e\d*|Inf|NaN", word):
            continue
        problems.append(f"unknown word {word!r}")
    if not selectors(bare):
        problems.append("selects no stoic_ metric")
    return problems


def test_the_promql_sanity_check_catches_typical_mistakes() -> None:
    assert promql_problems('max by (projection) (stoic_projection_lag_events{status="dead"}) > 1') == []
    assert promql_problems("max by (projection) (stoic_projection_lag_events > 1") == ["unclosed '('"]
    assert promql_problems("rat(stoic_retries_total[5m])") == ["unknown function rat()"]
    assert promql_problems("rate(stoic_retries_total[5x])") == ["bad range duration [5x]"]
    assert promql_problems("stoic_workers_alive == 0 orr absent(stoic_workers_alive)") == ["unknown word 'orr'"]


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r["alert"])
def test_every_expression_is_sane_promql_and_its_annotations_use_labels_it_keeps(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    assert promql_problems(expr) == [], expr
    kept = grouping_labels(expr) | set(rule["labels"])
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in kept, f"{rule['alert']}: annotation uses $labels.{label}, the expression keeps {kept}"
        assert text.count("{{") == text.count("}}"), f"{rule['alert']}: unbalanced template in {text!r}"


# -- against a real /metrics ----------------------------------------------------------------------


def fails_on_poison(event: stoic.RecordedEvent, tx: stoic.Transaction) -> None:
    if event.data.get("poison"):
        raise ValueError("poison")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[str]]]:
    """``{sample name: {label: {values}}}`` from GET /metrics of a real system: a healthy
    projection, one with a retrying failure, one with a dead failure, and a worker."""
    app = stoic.App([
        LedgerProjection("healthy"),
        FaultyLedger("retrying", fails_on_poison, retry_schedule=stoic.RetrySchedule(first_delay=3600)),
        FaultyLedger("dying", fails_on_poison, retry_schedule=stoic.RetrySchedule(first_delay=3600, max_attempts=1)),
    ], name="alert-rules")
    store = stoic.connect(f"sqlite:///{tmp_path_factory.mktemp('alerts') / 'metrics.db'}")
    try:
        store.append("acct-1", [stoic.NewEvent("Deposited", {"amount": 1}),
                                stoic.NewEvent("Deposited", {"amount": 2, "poison": True})])
        stoic.Runner(store, app).run_until_caught_up(timeout=30)
        store.register_worker("alert-rules-worker", "test-host", os.getpid(), 60.0)
        with TestClient(create_app(store, app, ApiSettings(admin_token=TOKEN))) as client:
            response = client.get("/metrics")
    finally:
        store.close()
    assert response.status_code == 200, response.text
    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                        "summary": ["_sum", "_count", ""]}.get(kind, [""])
            for suffix in suffixes:
                samples.setdefault(name + suffix, defaultdict(set))  # declared, even with no samples yet
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert match, line
        labels = samples[match.group(1)]
        for label, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""):
            labels[label].add(value)
    assert samples["stoic_projection_failures"]["status"] >= {"retrying", "dead"}
    assert samples["stoic_worker_heartbeat_age_seconds"]["worker"] == {"alert-rules-worker"}
    return samples


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r["alert"])
def test_every_metric_label_and_value_an_expression_selects_is_in_a_real_metrics_page(
        rule: dict[str, Any], exposition: dict[str, dict[str, set[str]]]) -> None:
    used = selectors(rule["expr"])
    metrics = {metric for metric, _ in used}
    for metric, matchers in used:
        assert metric in exposition, f"{rule['alert']}: {metric} is not in GET /metrics ({sorted(exposition)})"
        for label, op, value in matchers:
            assert label in exposition[metric], f"{rule['alert']}: {metric} has no label {label!r}"
            if op in ("=", "=~"):
                wanted = value.split("|") if op == "=~" else [value]
                missing = [v for v in wanted if v not in exposition[metric][label]]
                assert not missing, f"{rule['alert']}: {metric}{{{label}}} never takes the values {missing}"
    known = set().union(*(exposition[m] for m in metrics))
    for label in grouping_labels(rule["expr"]):
        assert label in known, f"{rule['alert']}: groups by {label!r}, which {sorted(metrics)} do not have"


# -- promtool -------------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("STOIC_REQUIRE_PROMTOOL") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def alert(**labels: str) -> dict[str, Any]:
    return {"exp_labels": labels}


def test_each_alert_fires_on_synthetic_series_and_not_on_healthy_ones(tmp_path: Path) -> None:
    """``promtool test rules`` over a copy of the rules without annotations (promtool
    compares annotations exactly; their templates are checked by ``check rules``)."""
    tool = promtool()
    data = load_rules()
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(data), encoding="utf-8")
    every_minute = {"interval": "1m"}
    system = [
        # Two API processes scraped ("a", "b"): one alert per projection, not one per process.
        *(series("stoic_projection_lag_events", "20000x30", projection="slow", instance=i) for i in "ab"),
        series("stoic_projection_lag_events", "5x30", projection="fine", instance="a"),
        series("stoic_projection_lag_seconds", "600x30", projection="slow", instance="a"),
        series("stoic_projection_lag_seconds", "2x30", projection="fine", instance="a"),
        series("stoic_projection_failures", "1x30", projection="bad", status="dead", instance="a"),
        series("stoic_projection_failures", "0x30", projection="fine", status="dead", instance="a"),
        series("stoic_projection_failures", "0+5x30", projection="spiky", status="retrying", instance="a"),
        series("stoic_projection_failures", "3x30", projection="fine", status="retrying", instance="a"),
        # Open for the cool-down, half-open for a probe that fails, open again, ...
        series("stoic_projection_breaker_state", "2 2 1 " * 10, projection="flaky", instance="a"),
        series("stoic_projection_breaker_state", "0x30", projection="fine", instance="a"),
        series("stoic_projection_status", "1x30", projection="stuck", status="stalled", instance="a"),
        series("stoic_projection_status", "1x30", projection="gone", status="offline", instance="a"),
        series("stoic_projection_status", "1x30", projection="halted", status="critical", instance="a"),
        series("stoic_projection_status", "1x30", projection="bad", status="critical", instance="a"),
        series("stoic_projection_status", "0x30", projection="fine", status="stalled", instance="a"),
        series("stoic_projection_status", "1x30", projection="fine", status="healthy", instance="a"),
        series("stoic_worker_heartbeat_age_seconds", "0+60x30", worker="w1", hostname="h1", instance="a"),
        series("stoic_worker_heartbeat_age_seconds", "1x30", worker="w2", hostname="h2", instance="a"),
        series("stoic_workers_alive", "1x30", instance="a"),
    ]
    at = "20m"
    expected = {
        "StoicProjectionLagEventsHigh": [alert(projection="slow", severity="warning")],
        "StoicProjectionLagSecondsHigh": [alert(projection="slow", severity="warning")],
        "StoicDeadFailures": [alert(projection="bad", severity="critical")],
        "StoicFailureRateSpike": [alert(projection="spiky", severity="warning")],
        "StoicBreakerOpen": [alert(projection="flaky", severity="critical")],
        "StoicProjectionStalled": [alert(projection="stuck", severity="critical")],
        "StoicProjectionOffline": [alert(projection="gone", severity="critical")],
        # "bad" is critical because of its dead failure: StoicDeadFailures covers it.
        "StoicProjectionCritical": [alert(projection="halted", severity="critical")],
        "StoicWorkerHeartbeatMissing": [alert(worker="w1", hostname="h1", severity="warning")],
        "StoicNoWorkersAlive": [],
    }
    assert set(expected) == {r["alert"] for r in all_rules()}, "a new alert needs a case here"
    tests = [
        {**every_minute, "input_series": system,
         "alert_rule_test": [{"eval_time": at, "alertname": n, "exp_alerts": e} for n, e in expected.items()]},
        {**every_minute, "input_series": [series("stoic_workers_alive", "0x30", instance="a")],
         "alert_rule_test": [{"eval_time": "5m", "alertname": "StoicNoWorkersAlive",
                              "exp_alerts": [alert(severity="critical")]}]},
        {**every_minute, "input_series": [series("up", "1x30", job="stoic")],
         "alert_rule_test": [{"eval_time": "5m", "alertname": "StoicNoWorkersAlive",
                              "exp_alerts": [alert(severity="critical")]}]},
    ]
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = subprocess.run([tool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
