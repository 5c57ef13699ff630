"""deploy/kubernetes/: valid against the Kubernetes schemas offline (kubernetes-validate ships them),
and shaped as fastmta needs: a PVC per pod, probes on /health, a drain that fits the grace period."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The supervisor waits shutdown_grace_seconds for its workers, then 10 s more before SIGKILL (supervisor.py).
SUPERVISOR_EXTRA_SECONDS = 10

validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
needs_validator = pytest.mark.skipif(validator is None, reason="kubernetes-validate is not installed (pip install -e '.[test]')")


def manifests() -> list[Path]:
    return sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")


def resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in manifests():
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert validator is not None
    return subprocess.run([validator, "--strict", *map(str, paths)], capture_output=True, text=True)


@needs_validator
def test_every_manifest_is_valid_against_the_schemas() -> None:
    result = validate(*manifests())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(resources())


@needs_validator
def test_the_validator_refuses_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "statefulset.yaml"
    broken.write_text((KUBERNETES / "statefulset.yaml").read_text().replace("terminationGracePeriodSeconds", "terminationGracePeriod"))
    assert validate(broken).returncode != 0


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in manifests() if p.name != "secret.example.yaml")


def test_each_node_keeps_its_queue_and_drains_within_the_grace_period() -> None:
    found = resources()
    statefulset = found["StatefulSet/fastmta"]["spec"]
    pod = statefulset["template"]["spec"]
    (claim,) = statefulset["volumeClaimTemplates"]
    (container,) = pod["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/fastmta"} in container["volumeMounts"]

    config = tomllib.loads(found["ConfigMap/fastmta"]["data"]["fastmta.toml"])
    assert config["server"]["data_dir"] == "/var/lib/fastmta"
    assert pod["terminationGracePeriodSeconds"] >= config["server"]["shutdown_grace_seconds"] + SUPERVISOR_EXTRA_SECONDS

    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    assert {"name": "admin", "containerPort": admin_port} in container["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "admin"}
    assert {"name": "smtp", "containerPort": int(config["smtp"]["listen"][0].rsplit(":", 1)[1])} in container["ports"]

    # Secrets come from the Secret, the config from the ConfigMap.
    assert any(env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "fastmta" for env in container["env"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "fastmta" and volumes["secret"]["secret"]["secretName"] == "fastmta"


def test_smtp_on_port_25_and_a_headless_service_per_node() -> None:
    found = resources()
    entry = found["Service/fastmta"]["spec"]
    assert {"name": "smtp", "port": 25, "targetPort": "smtp"} in entry["ports"]
    headless = found["Service/fastmta-nodes"]["spec"]
    assert headless["clusterIP"] == "None"
    assert found["StatefulSet/fastmta"]["spec"]["serviceName"] == "fastmta-nodes"
    budget = found["PodDisruptionBudget/fastmta"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"] == found["StatefulSet/fastmta"]["spec"]["selector"]["matchLabels"]
