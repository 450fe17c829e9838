"""deploy/kubernetes/: every manifest is valid against the schemas of a current Kubernetes
release (offline, `kubernetes-validate`), the configs in them load, the pods run as the README
promises (non-root, read-only, probes, secrets), and `kubectl kustomize` renders each set where
kubectl is present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config.loader import load_config
from proxy.config.model import StateBackend
from tests.integration.conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes"
VERSION = kubernetes_validate.latest_version()
MISSING = "kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)"
OPERATOR = K8S / "monitoring"  # the Prometheus Operator's kinds: no schemas offline
MANIFESTS = sorted(
    path
    for path in K8S.rglob("*.yaml")
    if path.name not in ("kustomization.yaml", "config.yaml") and path.parent != OPERATOR
)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_valid_for_a_current_kubernetes(path: Path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises on any invalid field


def test_the_sets_hold_the_expected_objects():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for p in MANIFESTS for doc in documents(p)}
    assert {
        ("Deployment", "grayscale"),
        ("Service", "grayscale"),
        ("Service", "grayscale-admin"),
        ("PodDisruptionBudget", "grayscale"),
        ("StatefulSet", "grayscale-redis"),
        ("Service", "grayscale-redis"),
        ("Deployment", "sentiment"),
        ("Service", "sentiment"),
    } <= kinds


def test_the_configs_in_the_config_maps_load():
    gateway = load_config(K8S / "gateway" / "config.yaml")
    assert gateway.state.backend is StateBackend.REDIS and gateway.server.workers == 2
    assert gateway.state.url == "redis://grayscale-redis:6379/0"  # the Redis set's Service
    sidecar = load_config(K8S / "sidecar" / "config.yaml")
    assert {sidecar.routes[0].stable.url, sidecar.routes[0].candidate.url} == {
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
    }


def pod(path: Path) -> dict[str, Any]:
    (workload,) = [d for d in documents(path) if d["kind"] in ("Deployment", "StatefulSet")]
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    "path",
    [
        K8S / "gateway" / "deployment.yaml",
        K8S / "redis" / "statefulset.yaml",
        K8S / "sidecar" / "deployment.yaml",
    ],
    ids=["gateway", "redis", "sidecar"],
)
def test_pods_run_as_non_root_on_read_only_file_systems_without_privileges(path: Path):
    spec = pod(path)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]


@pytest.mark.parametrize(
    "path", [K8S / "gateway" / "deployment.yaml", K8S / "sidecar" / "deployment.yaml"]
)
def test_the_proxy_is_probed_on_its_admin_endpoints_and_reloads_its_config(path: Path):
    spec = pod(path)
    (proxy,) = [c for c in spec["containers"] if c["image"] == "grayscale"]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"name": "admin", "containerPort": 9901} in proxy["ports"]
    token = {e["name"]: e for e in proxy["env"]}["GRAYSCALE_ADMIN_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "admin-token"  # never a value in git
    (mount,) = [m for m in proxy["volumeMounts"] if m["name"] == "config"]
    # A directory mount (no subPath): the kubelet swaps its symlink and the proxy reloads.
    assert mount == {"name": "config", "mountPath": "/etc/grayscale", "readOnly": True}
    (workload,) = [d for d in documents(path) if d["kind"] == "Deployment"]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9901"


def test_the_gateway_survives_disruption_and_drains():
    (deployment,) = documents(K8S / "gateway" / "deployment.yaml")
    assert deployment["spec"]["replicas"] == 3
    (budget,) = documents(K8S / "gateway" / "poddisruptionbudget.yaml")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    config = load_config(K8S / "gateway" / "config.yaml")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.server.shutdown_delay + config.server.drain_timeout


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(MISSING)
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_the_prometheus_rule_holds_the_rules_file_and_the_monitor_scrapes_the_gateway():
    (rule,) = documents(OPERATOR / "prometheusrule.yaml")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "grayscale-rules.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"]  # the same rules, promtool-tested
    (monitor,) = documents(OPERATOR / "servicemonitor.yaml")
    assert monitor["kind"] == "ServiceMonitor"
    (admin,) = [
        d
        for d in documents(K8S / "gateway" / "service.yaml")
        if d["metadata"]["name"] == "grayscale-admin"
    ]
    labels = admin["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] in [p["name"] for p in admin["spec"]["ports"]]
    # job = the Service's app.kubernetes.io/name: "grayscale", as the alerts expect
    assert labels[monitor["spec"]["jobLabel"]] == "grayscale"


@pytest.mark.parametrize("folder", ["", "sidecar"], ids=["gateway-and-redis", "sidecar"])
def test_kustomize_renders_valid_objects(folder: str):
    rendered = kustomize(K8S / folder)
    for doc in rendered:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    namespace = "models" if folder else "grayscale"
    assert {doc["metadata"]["namespace"] for doc in rendered} == {namespace}
    (config_map,) = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    source = K8S / (folder or "gateway") / "config.yaml"
    assert config_map["data"]["config.yaml"] == source.read_text()


def test_kustomize_renders_the_operator_objects():
    rendered = kustomize(OPERATOR)
    assert sorted(doc["kind"] for doc in rendered) == ["PrometheusRule", "ServiceMonitor"]
    assert {doc["metadata"]["namespace"] for doc in rendered} == {"grayscale"}
