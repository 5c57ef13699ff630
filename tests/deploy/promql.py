"""The PromQL of deploy/: every expression the dashboard and the alerting rules hold, and the metric names each one reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "fastmta.json"
RULES = DEPLOY / "prometheus" / "fastmta-rules.yml"

# Grafana's variables, replaced by values PromQL parses, so promtool can check the dashboard's queries too.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*(?:\s*\()?")


def metric_names(expression: str) -> set[str]:
    """Identifiers that are neither functions, keywords, label names nor parts of strings, numbers or durations."""
    text = _STRING.sub('""', expression)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", text)
    names = set()
    for found in _IDENTIFIER.finditer(text):
        token = found.group()
        if token.endswith("(") or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return found


def as_promql(expression: str) -> str:
    """A dashboard expression with Grafana's variables filled in; label_values() becomes the series it lists."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    values = re.fullmatch(r"label_values\((.*),\s*\w+\)", expression)
    return values.group(1) if values else expression


def rule_expressions() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
