"""Alerts and the Grafana dashboard, checked with the real tools and the real predictor.

`promtool` unit-tests every alert on sample series. Every PromQL expression of the rules and the
dashboard must name metrics that exist: the predictor's, read from a live `/metrics` scrape of
`python -m serving` on 127.0.0.1, or the drift check's, from the exposition text that
`visionops.monitoring.publish.prometheus_metrics` produces. A real Prometheus on 127.0.0.1 then
scrapes both and must return data for every dashboard query. Only Grafana itself (not
installable here) and the Prometheus operator (which turns the CRs into this config) are absent.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import ROOT, Doc, example_tree, find, render, run, tool
from tests.servers import (
    Predictor,
    http_status,
    predictor_server,
    prometheus_family_server,
    pushgateway_server,
    wait_until,
)

MONITORING = ROOT / "manifests" / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "visionops.json"
MODEL_NAME = "visionops-yolov8n"
# Stand-ins for Grafana's variables when the dashboard's queries run against Prometheus.
GRAFANA_VARIABLES = {"$namespace": "visionops", "$__rate_interval": "15s"}
PROMQL_WORDS = {
    # aggregations, functions, keywords and modifiers that look like metric names
    *("sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk", "quantile", "group"),
    *("rate", "irate", "increase", "delta", "histogram_quantile", "absent", "label_values"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"),
    *("bool", "offset", "inf", "nan", "le", "e"),
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    return render("kind", example_tree(tmp_path_factory.mktemp("k8s-tree")))


@pytest.fixture(scope="module")
def rules(docs: list[Doc]) -> list[Doc]:
    return find(docs, "PrometheusRule", "visionops")["spec"]["groups"]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs(rules: list[Doc]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rules for r in g["rules"]}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not functions, keywords, labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", text)  # Grafana: metric, label
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = {
        m[0]
        for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text)
        if not text[m.end() :].lstrip().startswith("(")  # a function call
    }
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def test_promql_metric_names_finds_selected_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(x_bucket{a="b:c"}[5m])))'
        " / on(namespace) group_left y_total > 0.5 and absent(z) or label_values(w, pod)"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y_total", "z", "w"}


def test_alert_rules_pass_promtool_check_and_unit_tests(rules: list[Doc], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
    shutil.copyfile(MONITORING / "tests" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    checked = run(tool("promtool"), "check", "rules", "rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(rule_exprs(rules))} rules found" in checked.stdout
    tested = run(tool("promtool"), "test", "rules", "alerts.test.yaml", cwd=tmp_path, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr

    # Every alert is shown to fire on some series, and to stay silent on others.
    cases = yaml.safe_load((MONITORING / "tests" / "alerts.test.yaml").read_text())["tests"]
    checks = [c for case in cases for c in case["alert_rule_test"]]
    for alert in rule_exprs(rules):
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == alert}
        assert outcomes == {True, False}, alert


def test_the_required_alerts_exist(rules: list[Doc]) -> None:
    exprs = rule_exprs(rules)
    assert {
        "VisionOpsPredictorErrorRateHigh",
        "VisionOpsPredictorLatencyP99High",
        "VisionOpsPredictorNoTraffic",
        "VisionOpsDriftDetected",
        "VisionOpsPredictionLogNotWriting",
        "VisionOpsPredictionLogLosingRecords",
    } <= set(exprs)
    assert "histogram_quantile(0.99" in exprs["VisionOpsPredictorLatencyP99High"]
    for group in rules:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])


def test_dashboard_is_a_sidecar_configmap_covering_the_required_views(docs: list[Doc]) -> None:
    config = find(docs, "ConfigMap", "visionops-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(config["data"]["visionops.json"])
    assert board == json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    by_metric = {
        "visionops_request_duration_seconds_bucket": "latency",
        "visionops_requests_total": "throughput and errors",
        "visionops_detections_total": "detections by class",
        "visionops_detection_confidence_bucket": "confidence distribution",
        "visionops_model_info": "model version",
        "visionops_prediction_log_oldest_unwritten_age_seconds": "a prediction log falling behind",
        "visionops_prediction_log_spool_records": "records waiting in the spool",
        "visionops_prediction_log_write_errors_total": "prediction log write errors",
        "visionops_prediction_log_dropped_total": "prediction log losses",
    }
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    for metric, view in by_metric.items():
        assert metric in used, f"no panel shows {view}"
    # Panels do not overlap on Grafana's 24-column grid.
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert pos["x"] + pos["w"] <= 24 and not cells & area, panel["title"]
        cells |= area


# ----------------------------------------------------------------- live predictor and Prometheus


@pytest.fixture(scope="module")
def predictor(
    untrained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Predictor]:
    """`python -m serving` on 127.0.0.1 with an untrained YOLOv8n, as the cluster runs it."""
    args = [f"--model_name={MODEL_NAME}", f"--model-dir={untrained_model}", "--prediction-log=off"]
    with predictor_server(tmp_path_factory.mktemp("predictor"), args) as server:
        yield server


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")


def _send_traffic(predictor: Predictor) -> None:
    """Successful v1 and v2 requests (with a low threshold so the untrained model detects
    something) and a client error, so every panel has something to show."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    image = base64.b64encode(buffer.getvalue()).decode()
    params = {"conf": 0.0001, "max_det": 5}
    v1 = {"instances": [{"image": {"b64": image}}], "parameters": params}
    v2 = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}],
        "parameters": params,
    }
    for _ in range(3):
        status, body = _post(f"{predictor.http}/v1/models/{MODEL_NAME}:predict", v1)
        assert status == 200, body
        status, body = _post(f"{predictor.http}/v2/models/{MODEL_NAME}/infer", v2)
        assert status == 200, body
    status, _ = _post(f"{predictor.http}/v1/models/{MODEL_NAME}:predict", {"instances": [{}]})
    assert status == 400


def _scraped_names(url: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _drift_result():  # type: ignore[no-untyped-def]
    """A drift check that decided drift, as the monitoring pipeline's step produces it."""
    from visionops.monitoring.drift import DRIFT, DriftResult

    return DriftResult(
        decision=DRIFT, reason="3 of 12 columns drifted", reference_rows=500, current_rows=200,
        min_rows=50, drift_share_threshold=0.1, drifted_share=0.25,
    )  # fmt: skip


def _drift_exposition() -> str:
    """What the monitoring pipeline's drift check pushes to the Pushgateway, for a drift."""
    from visionops.monitoring.publish import prometheus_metrics

    return prometheus_metrics(_drift_result(), MODEL_NAME)


def test_every_expression_names_a_metric_the_platform_exports(
    predictor: Predictor, rules: list[Doc]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _send_traffic(predictor)
    exported = _scraped_names(predictor.http)
    drift = {s.name for f in text_string_to_metric_families(_drift_exposition()) for s in f.samples}
    for where, expr in [*(("dashboard", e) for e in dashboard_exprs()), *rule_exprs(rules).items()]:
        names = promql_metric_names(expr)
        assert names, f"{where}: {expr}"
        unknown = names - exported - drift
        assert not unknown, f"{where} uses {sorted(unknown)}, which nothing exports: {expr}"
    # The predictor's side of the contract: its metrics, the drift gauge only from the drift check.
    assert "visionops_requests_total" in exported and "visionops_drift_detected" in drift


@pytest.fixture(scope="module")
def drift_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway holding what the drift check pushes for a drift (Prometheus scrapes it
    with honor_labels, as the ServiceMonitor says)."""
    from visionops.monitoring.publish import push_drift_metrics

    with pushgateway_server(tmp_path_factory.mktemp("pushgateway")) as url:
        push_drift_metrics(_drift_result(), MODEL_NAME, url)
        yield url.removeprefix("http://")


@pytest.fixture(scope="module")
def prometheus(
    predictor: Predictor, drift_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1 scraping the predictor every second, with the target
    labels the Prometheus operator adds from the ServiceMonitor (namespace, service)."""
    work = tmp_path_factory.mktemp("prometheus")
    target = predictor.http.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "visionops-predictor",
                "static_configs": [
                    {
                        "targets": [target],
                        "labels": {"namespace": "visionops", "service": "visionops-predictor"},
                    }
                ],
            },
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [drift_target]}],
            },
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    args = [f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}"]
    with prometheus_family_server(tool("prometheus"), args, work, "prometheus") as url:
        yield url


def _query(prometheus: str, expr: str) -> dict[str, Any]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def _grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_prometheus_scraping_the_predictor_answers_every_dashboard_query(
    predictor: Predictor, prometheus: str, rules: list[Doc]
) -> None:
    # Two scrapes bracket fresh traffic, so every rate() sees an increase.
    wait_until(
        lambda: bool(_query(prometheus, "visionops_model_ready")["data"]["result"]),
        timeout=30, what="first scrape",
    )  # fmt: skip
    _send_traffic(predictor)
    sent = time.time()

    def scraped_after_traffic() -> bool:  # two 1-s scrapes: new series get a rate() too
        result = _query(prometheus, "timestamp(visionops_model_ready)")["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= sent + 1.5

    wait_until(scraped_after_traffic, timeout=60, what="two scrapes after the traffic")
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr).groups()  # type: ignore[union-attr]
            answer = _query(prometheus, f"count by ({label}) ({metric})")
        else:
            answer = _query(prometheus, _grafana(expr))
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["result"], f"no data for {expr}"
    # Traffic-driven views hold real numbers, not just series.
    for expr in (
        'sum(rate(visionops_requests_total{namespace=~"visionops"}[15s]))',
        "histogram_quantile(0.99, sum by (le) "
        "(rate(visionops_request_duration_seconds_bucket[15s])))",
        "sum(rate(visionops_detection_confidence_count[15s]))",
    ):
        (sample,) = _query(prometheus, expr)["data"]["result"]
        value = float(sample["value"][1])
        assert math.isfinite(value) and value > 0, (expr, value)
    # The alert expressions are valid PromQL for this Prometheus (they are quiet here).
    for alert, expr in rule_exprs(rules).items():
        assert _query(prometheus, expr)["status"] == "success", alert
    drift = _query(prometheus, "max by (model_name) (visionops_drift_detected)")["data"]["result"]
    assert drift == [{"metric": {"model_name": MODEL_NAME}, "value": drift[0]["value"]}]
    assert drift[0]["value"][1] == "1"


def test_the_inferenceservice_probes_answer_on_the_live_predictor(
    predictor: Predictor, docs: list[Doc]
) -> None:
    isvc = find(docs, "InferenceService", "visionops-predictor")
    (container,) = isvc["spec"]["predictor"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert http_status(predictor.http + container[probe]["httpGet"]["path"]) == 200, probe
