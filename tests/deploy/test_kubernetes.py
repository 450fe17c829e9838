"""deploy/kubernetes/: every manifest is valid against the schemas of a current Kubernetes
release (offline, `kubernetes-validate`), the configs in them load, the pods run as
docs/deploying.md promises (non-root, read-only, probes, secrets), the gateway, its Redis, the
Redis's ACL and NetworkPolicy agree with each other, and `kubectl kustomize` renders each set
where kubectl is present. Where redis-server is installed, the gateway runs within the Redis
ACL of each set: a single Redis, and a master, a replica and a sentinel through a failover."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import string
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import redis
import yaml
from aiohttp.test_utils import TestServer

from proxy.config.loader import load_config
from proxy.config.model import Config, StateBackend
from tests.support.configs import route_yaml
from tests.support.fleet import acted
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.replicas import Replica, ReplicaFactory
from tests.support.upstream import url_of
from tests.support.waiting import wait_until

K8S = ROOT / "deploy" / "kubernetes"
GATEWAY = K8S / "gateway"
VERSION = kubernetes_validate.latest_version()
MISSING = "kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)"
NO_REDIS = "redis-server is not installed (Debian: apt-get install redis-server)"
OPERATOR = K8S / "monitoring"  # the Prometheus Operator's kinds: no schemas offline
MANIFESTS = sorted(
    path
    for path in K8S.rglob("*.yaml")
    if path.name not in ("kustomization.yaml", "config.yaml") and path.parent != OPERATOR
)


@dataclass(frozen=True)
class RedisSet:
    """A kustomize set of the gateway's Redis, and the gateway's config on it."""

    folder: Path
    config: Path

    @property
    def statefulset(self) -> Path:
        return self.folder / "statefulset.yaml"


SINGLE = RedisSet(K8S / "redis", GATEWAY / "config.yaml")
SENTINEL = RedisSet(K8S / "redis-sentinel", K8S / "gateway-sentinel" / "config.yaml")
REDIS_SETS = pytest.mark.parametrize("redis_set", [SINGLE, SENTINEL], ids=["redis", "sentinel"])


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
        ("NetworkPolicy", "grayscale-redis"),
        ("StatefulSet", "grayscale-redis-sentinel"),
        ("Service", "grayscale-redis-sentinel"),
        ("PodDisruptionBudget", "grayscale-redis-sentinel"),
        ("NetworkPolicy", "grayscale-redis-sentinel"),
        ("Deployment", "sentiment"),
        ("Service", "sentiment"),
    } <= kinds


def test_the_configs_in_the_config_maps_load():
    gateway = load_config(GATEWAY / "config.yaml")
    assert gateway.state.backend is StateBackend.REDIS and gateway.server.workers == 2
    (service,) = documents(SINGLE.folder / "service.yaml")
    url = urlsplit(gateway.state.url)
    assert (url.hostname, url.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    sidecar = load_config(K8S / "sidecar" / "config.yaml")
    assert {sidecar.routes[0].stable.url, sidecar.routes[0].candidate.url} == {
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
    }


def workload(path: Path) -> dict[str, Any]:
    (found,) = [d for d in documents(path) if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def pod(path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = workload(path)["spec"]["template"]["spec"]
    return spec


def container(path: Path, name: str) -> dict[str, Any]:
    (found,) = [c for c in pod(path)["containers"] if c["name"] == name]
    spec: dict[str, Any] = found
    return spec


def template_labels(path: Path) -> dict[str, str]:
    labels: dict[str, str] = workload(path)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_sentinel_config_is_the_gateways_on_the_sentinels_of_the_redis_set():
    single, sentinel = (
        yaml.safe_load(path.read_text()) for path in (SINGLE.config, SENTINEL.config)
    )
    assert {**sentinel, "state": None} == {**single, "state": None}  # routes and all kept alike
    config = load_config(SENTINEL.config)
    assert config.state.backend is StateBackend.REDIS and config.state.sentinel is not None
    statefulset = workload(SENTINEL.statefulset)
    (service,) = documents(SENTINEL.folder / "service.yaml")
    assert service["spec"]["clusterIP"] == "None"  # headless: a name for each pod
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    pods = [
        f"{statefulset['metadata']['name']}-{i}" for i in range(statefulset["spec"]["replicas"])
    ]
    assert [(host.host, host.port) for host in config.state.sentinel.hosts] == [
        (f"{name}.{service['metadata']['name']}", ports["sentinel"]) for name in pods
    ]
    for name in ("redis", "sentinel"):  # both find the master by its sentinel name
        env = {e["name"]: e for e in container(SENTINEL.statefulset, name)["env"]}
        assert env["MASTER_NAME"]["value"] == config.state.sentinel.service
        assert env["SERVICE"]["value"] == service["metadata"]["name"]
    # find-master.sh asks the sentinel of every pod of the set, on the Service's ports
    script = (SENTINEL.folder / "find-master.sh").read_text()
    assert re.search(r"for i in ([0-9 ]+);", script).group(1).split() == [
        str(i) for i in range(statefulset["spec"]["replicas"])
    ]
    assert f"-p {ports['sentinel']}" in script and f"= {ports['redis']} ]" in script


@pytest.mark.parametrize(
    "script", sorted((K8S / "redis-sentinel").glob("*.sh")), ids=lambda p: p.name
)
def test_the_sentinel_sets_scripts_are_valid_shell_and_in_its_config_map(script: Path):
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no sh")
    done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    kustomization = yaml.safe_load((SENTINEL.folder / "kustomization.yaml").read_text())
    (scripts,) = kustomization["configMapGenerator"]
    assert script.name in scripts["files"]
    volumes = {v["name"]: v for v in pod(SENTINEL.statefulset)["volumes"]}
    (volume,) = [
        v for v in volumes.values() if v.get("configMap", {}).get("name") == scripts["name"]
    ]
    for name in ("redis", "sentinel"):
        mounts = {
            m["name"]: m["mountPath"] for m in container(SENTINEL.statefulset, name)["volumeMounts"]
        }
        assert mounts[volume["name"]] == "/scripts"  # where the commands and scripts look


# --- the gateway and its Redis: password, ACL, NetworkPolicy -------------------------------------


def acl(args: list[str]) -> dict[str, list[str]]:
    """The users that redis-server's `--user NAME RULE...` arguments declare, and their rules."""
    users: dict[str, list[str]] = {}
    rules: list[str] | None = None
    for before, arg in pairwise(["", *args]):
        if before == "--user":
            rules = users.setdefault(arg, [])
        elif arg.startswith("--"):
            rules = None
        elif rules is not None:
            rules.append(arg)
    return users


def gateway_user(config: Config) -> str:
    """The Redis user the gateway logs in as: the URL's, or `default` through Sentinel (a client
    found through the sentinels sends a password only)."""
    if config.state.sentinel is not None:
        return "default"
    return urlsplit(config.state.url).username or "default"


OPERATORS_SECRETS = {"grayscale", "grayscale-redis"}  # created by hand: never in the repository


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A container's variables from Secrets: name -> (Secret, key)."""
    refs = {}
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            refs[variable["name"]] = (ref["name"], ref["key"])
    return refs


def variable_in(rule: str) -> str:
    """`VAR` of a rule `>$(VAR)` (a password the kubelet puts in from the variable)."""
    found = re.fullmatch(r">\$\((\w+)\)", rule)
    assert found, f"a password in the manifest: {rule[:2]}..."
    return found.group(1)


@REDIS_SETS
def test_the_gateway_and_redis_read_the_same_password_from_a_secret_operators_create(
    redis_set: RedisSet,
):
    config = load_config(redis_set.config)
    assert config.state.password_env is not None
    gateway = secret_refs(container(GATEWAY / "deployment.yaml", "grayscale"))
    secret, key = gateway[config.state.password_env]  # the variable state.password_env names
    assert secret in OPERATORS_SECRETS
    kustomization = (redis_set.folder / "kustomization.yaml").read_text()
    assert f"create secret generic {secret}" in kustomization  # ...and says how to make it
    assert "secretGenerator" not in yaml.safe_load(kustomization)  # no password in the repo
    assert not [d for p in MANIFESTS for d in documents(p) if d["kind"] == "Secret"]
    redis = container(redis_set.statefulset, "redis")
    (password,) = [
        rule for rule in acl(redis["args"])[gateway_user(config)] if rule.startswith(">")
    ]
    assert secret_refs(redis)[variable_in(password)] == (secret, key)  # the gateway user's password


@REDIS_SETS
def test_the_redis_acl_gives_the_gateway_its_key_prefix_only(redis_set: RedisSet):
    config = load_config(redis_set.config)
    users = acl(container(redis_set.statefulset, "redis")["args"])
    rules = users[gateway_user(config)]
    prefix = config.state.key_prefix
    assert [rule for rule in rules if rule.startswith("~")] == [f"~{prefix}:*"]
    assert [rule for rule in rules if rule.startswith("&")] == [f"&{prefix}:*"]
    assert rules[:2] == ["reset", "on"] and "-@all" in rules  # nothing it is not given
    assert rules.index("-@all") < min(i for i, rule in enumerate(rules) if rule.startswith("+"))
    assert not {"allkeys", "allchannels", "nopass", "+@all", "~*", "&*"} & set(rules)
    if gateway_user(config) != "default":
        assert users["default"] == ["reset", "off"]  # and no one gets in as the default user
    # The two sets give the gateway the same commands.
    single = acl(container(SINGLE.statefulset, "redis")["args"])[
        gateway_user(load_config(SINGLE.config))
    ]
    assert [r for r in rules if r[0] in "+-"] == [r for r in single if r[0] in "+-"]


@REDIS_SETS
def test_only_the_gateway_and_the_set_itself_reach_redis(redis_set: RedisSet):
    (policy,) = documents(redis_set.folder / "networkpolicy.yaml")
    redis_labels = template_labels(redis_set.statefulset)
    gateway_labels = template_labels(GATEWAY / "deployment.yaml")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["spec"]["ingress"]
    peers = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"])  # this namespace's pods
    assert any(peer.items() <= gateway_labels.items() for peer in peers)
    for peer in peers:  # the gateway, or the Redis set's own pods (replicas, sentinels)
        assert peer.items() <= gateway_labels.items() or peer.items() <= redis_labels.items()
    allowed = {port["port"] for port in rule["ports"]}
    served = {
        p["containerPort"] for c in pod(redis_set.statefulset)["containers"] for p in c["ports"]
    }
    assert allowed == served  # every port of the pods, and nothing else
    config = load_config(redis_set.config)
    if config.state.sentinel is None:
        assert urlsplit(config.state.url).port in allowed
    else:
        assert {host.port for host in config.state.sentinel.hosts} <= allowed


def test_the_sidecar_keeps_its_state_on_its_volume_and_says_how_to_share_it(tmp_path: Path):
    config_path = K8S / "sidecar" / "config.yaml"
    config = load_config(config_path)
    assert config.state.backend is StateBackend.FILE
    proxy = container(K8S / "sidecar" / "deployment.yaml", "grayscale")
    (mount,) = [
        m for m in proxy["volumeMounts"] if config.state.path.startswith(m["mountPath"] + "/")
    ]
    volumes = {v["name"]: v for v in pod(K8S / "sidecar" / "deployment.yaml")["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]  # (lost with the pod: the comment says so)
    # The shared Redis the comment suggests: it loads, and the Redis set's ACL admits it.
    text = config_path.read_text()
    suggested = textwrap.dedent(
        "\n".join(line[1:] for line in text.splitlines() if line.startswith("#  "))
    )
    shared = tmp_path / "config.yaml"
    shared.write_text(re.sub(r"(?m)^state:\n(  .*\n)+", suggested + "\n", text))
    state = load_config(shared).state
    gateway = load_config(SINGLE.config).state
    assert state.backend is StateBackend.REDIS and state.password_env == gateway.password_env
    assert urlsplit(state.url).username == urlsplit(gateway.url).username
    assert state.key_prefix.startswith(gateway.key_prefix + ":")  # within ~grayscale:*, its own


@pytest.mark.parametrize(
    "path",
    [
        K8S / "gateway" / "deployment.yaml",
        SINGLE.statefulset,
        SENTINEL.statefulset,
        K8S / "sidecar" / "deployment.yaml",
    ],
    ids=["gateway", "redis", "redis-sentinel", "sidecar"],
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


@pytest.mark.parametrize(
    ("folder", "namespace"),
    [("", "grayscale"), ("gateway-sentinel", "grayscale"), ("sidecar", "models")],
    ids=["gateway-and-redis", "gateway-and-redis-sentinel", "sidecar"],
)
def test_kustomize_renders_valid_objects(folder: str, namespace: str):
    rendered = kustomize(K8S / folder)
    for doc in rendered:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    assert {doc["metadata"]["namespace"] for doc in rendered} == {namespace}
    named = {(doc["kind"], doc["metadata"]["name"]): doc for doc in rendered}
    (proxy,) = [
        (workload, c)
        for workload in rendered
        if workload["kind"] == "Deployment"
        for c in workload["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("grayscale")
    ]
    volumes = {v["name"]: v for v in proxy[0]["spec"]["template"]["spec"]["volumes"]}
    config_map = named["ConfigMap", volumes["config"]["configMap"]["name"]]
    source = K8S / (folder or "gateway") / "config.yaml"
    assert config_map["data"]["config.yaml"] == source.read_text()
    # Every Secret and ConfigMap a pod refers to is rendered under the name it has there (a
    # generated one has a hash suffix), but the Secrets that operators create.
    for workload in rendered:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = workload["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for variable in c.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and ref["name"] not in OPERATORS_SECRETS:
                    assert ref["key"] in named["Secret", ref["name"]]["data"], ref
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in named, volume


def test_kustomize_renders_the_operator_objects():
    rendered = kustomize(OPERATOR)
    assert sorted(doc["kind"] for doc in rendered) == ["PrometheusRule", "ServiceMonitor"]
    assert {doc["metadata"]["namespace"] for doc in rendered} == {"grayscale"}


# --- the gateway within the Redis ACL, on a real redis-server ------------------------------------

PROBE_USER = ("probe", "probe-password")  # the tests' own user, to read the ACL log


def made_up(secret: str, key: str) -> str:
    """The value the tests give a Secret's key: the same wherever it is read."""
    return f"pw-{secret}-{key}"


def expand(value: str, env: dict[str, str]) -> str:
    """`$(VAR)` replaced, as the kubelet does in a container's args and env."""
    return re.sub(r"\$\((\w+)\)", lambda found: env[found.group(1)], value)


def kubelet_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's variables as the kubelet sets them (a made-up value for each Secret key;
    the pod's own fields left out)."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            env[variable["name"]] = made_up(ref["name"], ref["key"])
        elif "value" in variable:
            env[variable["name"]] = expand(variable["value"], env)
    return env


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return bool(sock.recv(16))  # PONG, or NOAUTH: up either way
    except OSError:
        return False


@dataclass
class RedisProcesses:
    """redis-server processes on free loopback ports, each in a folder of its own; all killed
    after the test."""

    binary: str
    folder: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, *args: str, port: int | None = None) -> int:
        port = port or free_port()
        folder = self.folder / str(port)
        folder.mkdir()
        self.started.append(
            subprocess.Popen(
                [self.binary, *args, "--port", str(port), "--bind", "127.0.0.1"],
                cwd=folder,
                stdout=subprocess.DEVNULL,
            )
        )
        wait_until(
            lambda: answers(port) or self.started[-1].poll() is not None,
            10,
            f"redis-server {args} did not answer",
        )
        assert self.started[-1].poll() is None, f"redis-server {args} exited"
        return port

    def redis(self, args: list[str], *extra: str) -> int:
        """A Redis with the manifest's `args` and the tests' own user."""
        name, password = PROBE_USER
        probe = ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        return self.spawn(*args, "--dir", ".", "--loglevel", "warning", *probe, *extra)

    def sentinel(self, config: str, port: int) -> int:
        path = self.folder / f"sentinel-{port}.conf"
        path.write_text(config)
        return self.spawn(str(path), "--sentinel", "--loglevel", "warning", port=port)


@pytest.fixture
def redis_processes(tmp_path: Path) -> Iterator[RedisProcesses]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(NO_REDIS)
    processes = RedisProcesses(binary, tmp_path)
    try:
        yield processes
    finally:
        for process in processes.started:
            process.kill()
            process.wait()


def probe(port: int) -> redis.Redis:
    name, password = PROBE_USER
    return redis.Redis(
        port=port, username=name, password=password, socket_timeout=5, decode_responses=True
    )


def gateway_config(
    folder: Path, state: dict[str, Any], upstreams: tuple[TestServer, TestServer]
) -> Path:
    """The gateway on `state` (its config's, pointed at the tests' Redis), with analysis: its
    replicas pool their observations and one of them publishes the verdicts."""
    config = folder / "gateway.yaml"
    config.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {yaml.safe_dump(state, default_flow_style=True, width=1000)}"
        "routes:\n"
        + route_yaml(url_of(upstreams[0]), url_of(upstreams[1]))
        + "    analysis: {interval: 500ms, window: 30s, min_requests: 20}\n"
    )
    return config


async def decided(session: aiohttp.ClientSession, served: Replica) -> None:
    """Requests until the decider has published a verdict on the fleet's observations."""
    deadline = time.monotonic() + 15
    sent = 0
    while True:
        for _ in range(20):
            sent += 1
            url = f"{served.proxy_url}/v1/predict"
            async with session.get(url, headers={"X-User-Id": f"u{sent}"}) as response:
                assert response.status == 200
        async with session.get(f"{served.admin_url}/status") as response:
            analysis = (await response.json())["routes"][0]["analysis"]
        if analysis.get("decided_by") and analysis.get("last_verdict"):
            return
        assert time.monotonic() < deadline, (analysis, served.lines[-20:])
        await asyncio.sleep(0.2)


def assert_within_the_acl(ports: list[int], prefix: str, served: Replica) -> None:
    """Redis refused the gateway nothing (its ACL log is empty), and it wrote only keys of its
    prefix."""
    for port in ports:
        assert probe(port).acl_log() == [], port
        keys = [str(key) for key in probe(port).keys("*")]
        assert keys and all(key.startswith(f"{prefix}:") for key in keys), keys
    assert [line for line in served.lines if "NOPERM" in line or "ERROR" in line] == []


async def test_the_gateway_works_within_the_acl_of_the_redis_set(
    tmp_path, redis_processes: RedisProcesses, upstreams, replicas: ReplicaFactory
):
    redis_container = container(SINGLE.statefulset, "redis")
    env = kubelet_env(redis_container)
    port = redis_processes.redis([expand(arg, env) for arg in redis_container["args"]])
    state: dict[str, Any] = yaml.safe_load(SINGLE.config.read_text())["state"]
    url = urlsplit(state["url"])
    state["url"] = url._replace(netloc=f"{url.username}@127.0.0.1:{port}").geturl()
    refs = secret_refs(container(GATEWAY / "deployment.yaml", "grayscale"))
    password = made_up(*refs[state["password_env"]])
    config = gateway_config(tmp_path, state, upstreams)
    served = await replicas(config, {state["password_env"]: password})
    async with aiohttp.ClientSession() as session:
        await decided(session, served)
        for action in ("pause", "resume", "rollback"):
            assert (await acted(session, served, action, 10))["persisted"] is True
    await served.stop()
    assert_within_the_acl([port], load_config(SINGLE.config).state.key_prefix, served)
    # Nothing beyond it: not the default user, not another key, not an admin command.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password=password).ping()
    user = redis.Redis(port=port, username=url.username, password=password)
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("other:key")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.flushall()


def sentinel_config(env: dict[str, str], master_port: int, port: int) -> str:
    """start-sentinel.sh's config, for a sentinel on this host's `port` alone (quorum 1)
    watching the master at `master_port`."""
    script = (SENTINEL.folder / "start-sentinel.sh").read_text()
    (body,) = re.findall(r"<<CONFIG\n(.*?\n)CONFIG\n", script, re.DOTALL)
    text = string.Template(body).substitute(env, me="127.0.0.1", master="127.0.0.1")
    text, ports = re.subn(r"(?m)^port 26379$", f"port {port}", text)
    text, monitors = re.subn(
        r"(?m)^(sentinel monitor \S+ 127\.0\.0\.1) 6379 2$", rf"\g<1> {master_port} 1", text
    )
    assert (ports, monitors) == (1, 1), text
    return text + "bind 127.0.0.1\n"


@pytest.mark.slow  # (a failover: about 13 s)
@pytest.mark.timeout(120)
async def test_the_gateway_works_within_the_acl_of_the_sentinel_set_through_a_failover(
    tmp_path, redis_processes: RedisProcesses, upstreams, replicas: ReplicaFactory
):
    redis_container = container(SENTINEL.statefulset, "redis")
    env = kubelet_env(redis_container)
    args = [expand(arg, env) for arg in redis_container["args"]]
    # (as start-redis.sh announces the pod's name; and a replica's full sync starts at once)
    here = ("--replica-announce-ip", "127.0.0.1", "--repl-diskless-sync-delay", "0")
    first = redis_processes.redis(args, *here)
    second = redis_processes.redis(args, *here, "--replicaof", "127.0.0.1", str(first))
    sentinel_env = kubelet_env(container(SENTINEL.statefulset, "sentinel"))
    master_name = sentinel_env["MASTER_NAME"]
    sentinel_port = free_port()
    redis_processes.sentinel(sentinel_config(sentinel_env, first, sentinel_port), sentinel_port)
    sentinel = redis.Redis(port=sentinel_port, decode_responses=True)

    def master_is(port: int) -> Callable[[], bool]:
        def check() -> bool:
            master = sentinel.sentinel_get_master_addr_by_name(master_name)
            role = probe(port).info("replication")
            others = [r for r in (first, second) if r != port]
            return bool(
                master == ("127.0.0.1", port)
                and role["role"] == "master"
                and [role.get(f"slave{i}", {}).get("state") for i in range(len(others))]
                == ["online"] * len(others)
                and all(
                    probe(o).info("replication").get("master_link_status") == "up" for o in others
                )
                and [r["port"] for r in sentinel.sentinel_slaves(master_name)] == others
            )

        return check

    # (the replica logged in as the user `internal`)
    wait_until(master_is(first), 20, "no master with its replica in sync")
    state: dict[str, Any] = yaml.safe_load(SENTINEL.config.read_text())["state"]
    state["sentinel"] = {**state["sentinel"], "hosts": [f"127.0.0.1:{sentinel_port}"]}
    refs = secret_refs(container(GATEWAY / "deployment.yaml", "grayscale"))
    password = made_up(*refs[state["password_env"]])
    config = gateway_config(tmp_path, state, upstreams)
    served = await replicas(config, {state["password_env"]: password})
    async with aiohttp.ClientSession() as session:
        await decided(session, served)
        for action in ("pause", "resume"):  # each acknowledged by the replica
            assert (await acted(session, served, action, 10))["persisted"] is True
        # A failover: the sentinel (the user `internal`) makes the replica the master, and the
        # old master its replica.
        sentinel.execute_command("SENTINEL", "FAILOVER", master_name)
        await asyncio.to_thread(wait_until, master_is(second), 20, "no failover")
        assert (await acted(session, served, "rollback", 10))["persisted"] is True
    await served.stop()
    assert_within_the_acl([first, second], load_config(SENTINEL.config).state.key_prefix, served)
