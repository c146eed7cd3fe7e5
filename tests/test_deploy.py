"""deploy/: the Prometheus rules and their unit tests, the Alertmanager routing, the
Grafana dashboard and docker-compose.yml, checked with the real tools (no Docker here:
the compose file is checked for structure and for every path it mounts)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgewatch.server import Daemon
from edgewatch_testkit import stack
from edgewatch_testkit.toy import run_toy

needs_tools = pytest.mark.skipif(bool(stack.missing()), reason=stack.skip_reason())
DASHBOARD = stack.DEPLOY / "grafana" / "dashboards" / "edgewatch.json"


def tool(*command: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, cwd=stack.ROOT)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    return output


@needs_tools
def test_prometheus_config_and_rules_are_valid() -> None:
    assert "SUCCESS" in tool("promtool", "check", "config", "deploy/prometheus/prometheus.yml")
    assert "SUCCESS: 7 rules found" in tool(
        "promtool", "check", "rules", "deploy/prometheus/rules/edgewatch.yml"
    )


@needs_tools
def test_every_alert_has_unit_tests_that_pass() -> None:
    assert "SUCCESS" in tool(
        "promtool", "test", "rules", "deploy/prometheus/tests/edgewatch_test.yml"
    )
    rules = yaml.safe_load((stack.DEPLOY / "prometheus/rules/edgewatch.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((stack.DEPLOY / "prometheus/tests/edgewatch_test.yml").read_text())
    tested = Counter(
        case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])
    )
    for name in names:  # fires, stays quiet, resolves: three cases at least
        assert tested[name] >= 3, name
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == names


def test_rules_follow_the_mixin_conventions() -> None:
    rules = yaml.safe_load((stack.DEPLOY / "prometheus/rules/edgewatch.yml").read_text())
    runbook = (stack.ROOT / "docs" / "runbook.md").read_text()
    anchors = {
        "#" + re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-"))
        for h in re.findall(r"^## (.+)$", runbook, re.M)
    }
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert re.fullmatch(r"Edgewatch[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning")
        notes = rule["annotations"]
        assert notes["summary"] and "{{" in notes["description"]
        assert notes["runbook_url"].startswith("docs/runbook.md#")
        assert notes["runbook_url"].removeprefix("docs/runbook.md") in anchors


@needs_tools
def test_alertmanager_config_is_valid_and_routes_by_severity() -> None:
    assert "SUCCESS" in tool("amtool", "check-config", "deploy/alertmanager/alertmanager.yml")
    config = yaml.safe_load((stack.DEPLOY / "alertmanager/alertmanager.yml").read_text())
    assert config["route"]["group_by"] == ["job_id"]
    routes = {r["matchers"][0]: r["receiver"] for r in config["route"]["routes"]}
    assert routes == {'severity="critical"': "pager", 'severity="warning"': "ticket"}


@needs_tools
def test_live_metrics_pass_promtool(daemon: Daemon) -> None:
    run_toy("metrics-check", daemon.endpoint, 50)
    with urllib.request.urlopen(daemon.http_url + "/metrics", timeout=10) as response:
        text = response.read()
    assert text.count(b'edgewatch_state{job_id="metrics-check",state=') == 4
    # promtool exits 0 and prints nothing when the exposition has no lint problems.
    assert tool("promtool", "check", "metrics", stdin=text).strip() == ""


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_json_is_consistent_with_its_provisioning() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load(
        (stack.DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    uid = datasources[0]["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job_id"]["datasource"]["uid"] == uid
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for what in (
        "learning rate",
        "loss",
        "gradient norm",
        "sharpness",
        "stability ratio",
        "steps to instability",
        "recommended learning rate",
        "recommended warmup",
    ):
        assert what in titles, what
    exprs = " ".join(dashboard_exprs(dashboard))
    for metric in ("edgewatch_stability_threshold", "edgewatch_state", "ALERTS"):
        assert metric in exprs
    provider = yaml.safe_load(
        (stack.DEPLOY / "grafana/provisioning/dashboards/edgewatch.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


@needs_tools
def test_every_dashboard_query_is_accepted_by_prometheus(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    with stack.prometheus(tmp_path, targets=["127.0.0.1:1"]) as url:
        for expr in dashboard_exprs(dashboard):
            concrete = expr.replace("$job_id", ".*")
            answer = stack.query(url, concrete)
            assert answer["status"] == "success", (expr, answer.get("error"))


def test_compose_file_brings_up_the_whole_stack() -> None:
    compose = yaml.safe_load((stack.ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"edgewatch", "postgres", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services and how["condition"] == "service_healthy"
            assert "healthcheck" in services[dependency]
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (stack.ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "postgresql+psycopg://" in services["edgewatch"]["environment"]["EDGEWATCH_DB"]
    assert (stack.ROOT / services["edgewatch"]["build"]["dockerfile"]).exists()
    prometheus = yaml.safe_load((stack.DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert scraped == ["edgewatch:9108"]
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
