"""Deploy files (Dockerfile, compose, Kubernetes, Prometheus, Grafana) checked offline."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # it ships no type hints
import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).with_name("kubectl")
KUSTOMIZATIONS = ("k8s/base", "k8s/overlays/dev", "k8s/overlays/production")
# The oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30) and
# the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)
KEYS_DIR = PurePosixPath("/etc/apns-relay/keys")
# Secrets the production overlay references but never contains (created by the operator).
OPERATOR_SECRETS = {"apns-relay-keys", "apns-relay-redis", "apns-relay-auth"}
# Series Prometheus makes itself rather than scraping them from the relay.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
APNS_PORTS = {443, 2197}
APPLE_RANGE = "17.0.0.0/8"  # Apple's own network, where APNs lives (Apple's APNs documentation)

Manifest = dict[str, Any]


# --- pure helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerStage:
    base: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for found, arguments in self.instructions if found == keyword]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m[1] or m[2]], text)


def arg_defaults(arguments: list[str]) -> dict[str, str]:
    return dict(argument.split("=", 1) for argument in arguments if "=" in argument)


def dockerfile_stages(text: str) -> list[DockerStage]:
    instructions = dockerfile_instructions(text)
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    global_args = arg_defaults([a for k, a in instructions[:first_from] if k == "ARG"])
    stages: list[DockerStage] = []
    for keyword, arguments in instructions[first_from:]:
        if keyword == "FROM":
            base, *alias = substitute(arguments, global_args).split()
            stages.append(DockerStage(base, alias[1] if alias else None, ()))
        else:
            last = stages[-1]
            stages[-1] = DockerStage(
                last.base, last.name, (*last.instructions, (keyword, arguments))
            )
    return stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether the build context leaves `path` out: the last pattern matching it or a parent."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            excluded = not negated
    return excluded


_PROMQL_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_PROMQL_VARIABLE = re.compile(r"\$\{?\w+\}?")
_PROMQL_MATCHERS = re.compile(r"\{[^{}]*\}")
_PROMQL_RANGE = re.compile(r"\[[^\]]*\]")
_PROMQL_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A number (also 5m, 1e-9) or a name, the name followed by "(" when it is a function call.
_PROMQL_TOKEN = re.compile(r"\d[\w.]*|([A-Za-z_:][\w:]*)\s*(\()?")
_PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "inf", "nan",
    "by", "without", "on", "ignoring", "group_left", "group_right",
}  # fmt: skip


def promql_skeleton(expr: str) -> str:
    """The expression without strings, variables, label matchers, ranges and label lists."""
    skeleton = _PROMQL_VARIABLE.sub(" ", _PROMQL_STRING.sub('""', expr))
    for pattern in (_PROMQL_MATCHERS, _PROMQL_RANGE, _PROMQL_LABEL_LIST):
        skeleton = pattern.sub(" ", skeleton)
    return skeleton


def promql_metric_names(expr: str) -> set[str]:
    return {
        match[1]
        for match in _PROMQL_TOKEN.finditer(promql_skeleton(expr))
        if match[1] and not match[2] and match[1] not in _PROMQL_KEYWORDS
    }


def promql_rated_names(expr: str) -> set[str]:
    """Names that rate(), irate() or increase() are applied to directly."""
    pattern = r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)"
    return set(re.findall(pattern, promql_skeleton(expr)))


def brackets_balance(text: str) -> bool:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _PROMQL_STRING.sub('""', text):
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack


def exported_series_names() -> set[str]:
    """Every series name the relay's metrics module can put on /metrics."""
    importlib.import_module("relay.telemetry.metrics")
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    if manifest["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
        return spec
    return None


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def listener_option(app: dict[str, Any]) -> str:
    """The simulator option naming the port of the app's APNs environment."""
    return "--sandbox-port" if app["environment"] == "sandbox" else "--port"


def option_value(args: list[str], option: str) -> str:
    return args[args.index(option) + 1]


# Valkey's memory units (valkey.conf): k/m/g are powers of 1000, kb/mb/gb of 1024.
VALKEY_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "kb": 1 << 10, "mb": 1 << 20}
VALKEY_UNITS["gb"] = 1 << 30
KUBE_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 1000**2, "G": 1000**3}


def valkey_bytes(size: str) -> int:
    """A Valkey memory size ("256mb", "1gb", "1048576") in bytes."""
    number = size.rstrip("kmgbKMGB")
    return int(number) * VALKEY_UNITS[size[len(number) :].lower()]


def kube_bytes(quantity: str) -> int:
    for suffix, scale in KUBE_UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * scale
    return int(quantity)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def compose_mount(volume: str) -> tuple[str, PurePosixPath]:
    source, target, *_ = volume.split(":")
    return source, PurePosixPath(target)


def within(path: str, directory: PurePosixPath) -> bool:
    return PurePosixPath(path).is_relative_to(directory)


def expressions_in(node: Any) -> Iterator[str]:
    """Every PromQL string in a Grafana dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and value.startswith("label_values("):
                yield value.removeprefix("label_values(").split(",")[0]
            else:
                yield from expressions_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions_in(item)


# --- loaded files -------------------------------------------------------------------------------


def read_yaml(relative: str) -> Any:
    return yaml.safe_load((ROOT / relative).read_text())


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = read_yaml("docker-compose.yml")
    return loaded


@functools.cache
def stages() -> tuple[DockerStage, ...]:
    return tuple(dockerfile_stages((ROOT / "Dockerfile").read_text()))


@functools.cache
def alert_rules() -> tuple[dict[str, Any], ...]:
    groups = read_yaml("deploy/prometheus/alerts.yml")["groups"]
    return tuple(rule for group in groups for rule in group["rules"])


@functools.cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (ROOT / "deploy/grafana/dashboards/apns-relay.json").read_text()
    )
    return loaded


@functools.cache
def rendered(kustomization: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(manifests: tuple[Manifest, ...], kind: str, name_prefix: str) -> Manifest:
    matches = [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"].startswith(name_prefix)
    ]
    assert len(matches) == 1, f"expected one {kind} {name_prefix}*, found {len(matches)}"
    return matches[0]


def relay_container(manifests: tuple[Manifest, ...], role: str) -> dict[str, Any]:
    spec = pod_spec(find(manifests, "Deployment", f"apns-relay-{role}"))
    assert spec is not None
    container: dict[str, Any] = spec["containers"][0]
    assert container["args"][0] == role
    return container


def relay_config(manifests: tuple[Manifest, ...]) -> dict[str, Any]:
    config_map = find(manifests, "ConfigMap", "apns-relay-config")
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"]["relay.yaml"])
    return loaded


# --- the helpers themselves ---------------------------------------------------------------------


def test_promql_metric_names_skips_functions_labels_strings_and_numbers() -> None:
    expr = (
        'sum by (app) (rate(foo_total{reason!="a(b)", app=~"$app"}[$__rate_interval]))'
        " / on (app) group_left bar > 1e-9 and (baz or vector(0)) == 0"
    )
    assert promql_metric_names(expr) == {"foo_total", "bar", "baz"}
    quantile = "histogram_quantile(0.99, sum by (le) (rate(lat_seconds_bucket[5m])))"
    assert promql_metric_names(quantile) == {"lat_seconds_bucket"}
    assert promql_rated_names(quantile) == {"lat_seconds_bucket"}


def test_exported_series_names_come_from_relay_metrics() -> None:
    names = exported_series_names()
    assert "apns_relay_notifications_delivered_total" in names
    assert "apns_relay_delivery_latency_seconds_bucket" in names
    assert "apns_relay_queue_pending_notifications" in names
    assert "apns_relay_not_a_metric" not in names


def test_dockerignore_semantics() -> None:
    patterns = ["*", "!relay", "**/__pycache__"]
    assert not dockerignore_excludes(patterns, "relay/cli.py")
    assert dockerignore_excludes(patterns, "relay/__pycache__/cli.pyc")
    assert dockerignore_excludes(patterns, ".venv/bin/python")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_builds_in_one_stage_and_runs_from_slim_python() -> None:
    builder, *_, runtime = stages()
    assert len(stages()) >= 2
    assert runtime.base.startswith("python:3.11-slim")
    assert builder.name is not None
    assert any(
        f"--from={builder.name}" in copy and "/opt/venv" in copy
        for copy in runtime.arguments("COPY")
    )


def test_dockerfile_installs_the_hash_pinned_lock_from_wheels_only() -> None:
    installs = [run for run in stages()[0].arguments("RUN") if "pip install" in run]
    assert any(
        "--require-hashes" in run
        and "--only-binary=:all:" in run
        and "requirements/runtime.lock" in run
        for run in installs
    )
    assert any("--no-deps ." in run for run in installs)


def test_dockerfile_runtime_has_no_build_tools() -> None:
    runtime = stages()[-1]
    for run in runtime.arguments("RUN"):
        assert not re.search(r"apt-get|apk |gcc|g\+\+|build-essential|pip install", run), run


def test_dockerfile_runtime_runs_as_non_root() -> None:
    runtime = stages()[-1]
    (user,) = runtime.arguments("USER")
    resolved = substitute(user, arg_defaults(runtime.arguments("ARG")))
    uid = resolved.split(":")[0]
    assert uid.isdigit(), f"USER {resolved}: numeric, so Kubernetes can verify runAsNonRoot"
    assert int(uid) != 0


def test_dockerfile_healthcheck_is_python_hitting_healthz_on_the_default_role() -> None:
    runtime = stages()[-1]
    (healthcheck,) = runtime.arguments("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD") :])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<HEALTHCHECK>", "exec")
    env = dict(
        item.split("=", 1)
        for arguments in runtime.arguments("ENV")
        for item in shlex.split(arguments)
    )
    url = env["APNS_RELAY_HEALTHCHECK_URL"]
    assert url.endswith("/healthz")
    (entrypoint,) = runtime.arguments("ENTRYPOINT")
    (cmd,) = runtime.arguments("CMD")
    assert json.loads(entrypoint) == ["apns-relay"]
    assert f":{option_value(json.loads(cmd), '--port')}/" in url


def test_dockerfile_context_holds_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages():
        for copy in stage.arguments("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignore_excludes(patterns, source), f"COPY {source}: ignored"
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".relay-dev/x"):
        assert dockerignore_excludes(patterns, heavy), f"{heavy} is sent to the build context"


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    assert set(compose()["services"]) == {
        "valkey",
        "apns-sim",
        "api",
        "worker",
        "prometheus",
        "grafana",
    }


def test_compose_valkey_is_durable_on_a_named_volume() -> None:
    valkey = compose()["services"]["valkey"]
    assert valkey["image"].startswith("valkey/valkey:8")
    command = valkey["command"]
    assert option_value(command, "--appendonly") == "yes"
    assert option_value(command, "--appendfsync") == "everysec"
    data_dir = PurePosixPath(option_value(command, "--dir"))
    mounts = dict(compose_mount(volume)[::-1] for volume in valkey["volumes"])
    assert mounts[data_dir] in compose()["volumes"]
    # Memory is a budget: bounded, and nothing queued may be evicted (issue 22).
    assert option_value(command, "--maxmemory-policy") == "noeviction"
    assert valkey_bytes(option_value(command, "--maxmemory")) > 0


def test_compose_publishes_on_loopback_unless_told_otherwise() -> None:
    """The defaults (dev-token, admin/admin) must not face a network: every published port
    binds 127.0.0.1, or the address PUBLISH_ADDRESS names (docs/operations.md says how
    to open it up)."""
    published = [
        (name, port)
        for name, service in compose()["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} >= {"api", "prometheus", "grafana"}
    for name, port in published:
        assert isinstance(port, str), f"{name}: {port!r} (long syntax hides the host address)"
        assert port.startswith(("127.0.0.1:", "${PUBLISH_ADDRESS:-127.0.0.1}:")), (name, port)


def test_dockerfile_default_command_refuses_to_start_without_configuration() -> None:
    (cmd,) = stages()[-1].arguments("CMD")
    arguments = json.loads(cmd)
    assert arguments[0] == "serve"
    assert "--dev" not in arguments  # development mode is never the image's default


def test_compose_api_is_published_and_worker_scales() -> None:
    services = compose()["services"]
    api, worker = services["api"], services["worker"]
    assert api["command"][0] == "api"
    assert (
        f"${{PUBLISH_ADDRESS:-127.0.0.1}}:8080:{option_value(api['command'], '--port')}"
        in (api["ports"])
    )
    assert worker["command"][0] == "worker"
    assert "container_name" not in worker
    assert "ports" not in worker
    for service in services.values():
        assert "container_name" not in service


def test_compose_every_service_has_a_healthcheck_on_its_own_port() -> None:
    image_has_healthcheck = bool(stages()[-1].arguments("HEALTHCHECK"))
    for name, service in compose()["services"].items():
        built_here = service.get("build") == "."
        assert "healthcheck" in service or (built_here and image_has_healthcheck), name
    worker = compose()["services"]["worker"]
    url = worker["environment"]["APNS_RELAY_HEALTHCHECK_URL"]
    assert url == f"http://127.0.0.1:{option_value(worker['command'], '--port')}/healthz"
    for relay_service in ("api", "worker"):
        depends_on = compose()["services"][relay_service]["depends_on"]
        assert depends_on["valkey"]["condition"] == "service_healthy"
        assert depends_on["apns-sim"]["condition"] == "service_healthy"


def test_compose_relay_reads_the_simulator_key_and_ca_from_the_shared_volume() -> None:
    services = compose()["services"]
    sim = services["apns-sim"]
    sim_args = sim["command"]
    sim_mounts = dict(compose_mount(volume) for volume in sim["volumes"])
    state_volume = next(
        src
        for src, target in sim_mounts.items()
        if str(target) == option_value(sim_args, "--state-dir")
    )
    assert state_volume in compose()["volumes"]
    assert "apns-sim" in sim_args[sim_args.index("--tls-name") + 1 :]

    config = read_yaml("deploy/compose/relay.yaml")
    (app,) = config["apps"]
    token = app["auth"]["token"]
    assert token["key_id"] == option_value(sim_args, "--key-id")
    assert token["team_id"] == option_value(sim_args, "--team-id")
    assert PurePosixPath(token["key_file"]).name == f"AuthKey_{token['key_id']}.p8"
    assert app["endpoint"]["host"] == "apns-sim"
    assert app["endpoint"]["port"] == int(option_value(sim_args, listener_option(app)))

    for relay_service in ("api", "worker"):
        service = services[relay_service]
        env = service["environment"]
        mounts = dict(compose_mount(volume)[::-1] for volume in service["volumes"])
        keys_dir = next(target for target, src in mounts.items() if src == state_volume)
        assert within(token["key_file"], keys_dir)
        assert within(app["endpoint"]["ca_file"], keys_dir)
        assert mounts[PurePosixPath(env["RELAY_CONFIG"])] == "./deploy/compose/relay.yaml"
        assert env["RELAY_REDIS_URL"].startswith("redis://valkey:")


def test_compose_api_spools_on_a_named_volume_the_image_lets_it_write() -> None:
    api = compose()["services"]["api"]
    spool_dir = PurePosixPath(api["environment"]["RELAY_INGEST_SPOOL_DIR"])
    mounts = dict(compose_mount(volume)[::-1] for volume in api["volumes"])
    assert mounts[spool_dir] in compose()["volumes"]
    # A fresh named volume takes the image's ownership of its mount point.
    assert f"chown relay:relay /var/lib/apns-sim {spool_dir}" in (ROOT / "Dockerfile").read_text()
    assert "RELAY_INGEST_SPOOL_DIR" not in compose()["services"]["worker"]["environment"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_api_spools_on_a_pod_volume(kustomization: str) -> None:
    manifests = rendered(kustomization)
    container = relay_container(manifests, "api")
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volume_name = mounts[env["RELAY_INGEST_SPOOL_DIR"]]
    spec = pod_spec(find(manifests, "Deployment", "apns-relay-api"))
    assert spec is not None
    volume = next(v for v in spec["volumes"] if v["name"] == volume_name)
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, _ = compose_mount(volume)
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_compose_prometheus_scrapes_every_relay_role_and_loads_the_rules() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    mounts = {target: src for src, target in map(compose_mount, prometheus["volumes"])}
    config_file = PurePosixPath(
        next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    )
    assert mounts[config_file] == "./deploy/prometheus/prometheus.yml"
    scrape = read_yaml("deploy/prometheus/prometheus.yml")
    for rule_file in scrape["rule_files"]:
        assert mounts[PurePosixPath(rule_file)] == "./deploy/prometheus/alerts.yml"

    targets: dict[str, set[str]] = {}
    for job in scrape["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            found.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            found.update(f"{name}:{dns['port']}" for name in dns["names"])
    for role in ("api", "worker"):
        port = option_value(services[role]["command"], "--port")
        assert targets[f"apns-relay-{role}"] == {f"{role}:{port}"}


def test_compose_grafana_is_provisioned_with_the_datasource_and_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {src: target for src, target in map(compose_mount, grafana["volumes"])}
    assert mounts["./deploy/grafana/provisioning"] == PurePosixPath("/etc/grafana/provisioning")
    provider = read_yaml("deploy/grafana/provisioning/dashboards/apns-relay.yml")
    (dashboards,) = provider["providers"]
    assert PurePosixPath(dashboards["options"]["path"]) == mounts["./deploy/grafana/dashboards"]
    (datasource,) = read_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    variable = next(v for v in dashboard()["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]


# --- Kubernetes ---------------------------------------------------------------------------------


def validate_schema(manifest: Manifest) -> None:
    if manifest["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
        return  # no schema ships for CRDs; test_servicemonitor_* checks them by hand
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            pytest.fail(f"{name} invalid for Kubernetes {version} at {where}: {error.message}")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_listed_manifest_file_is_schema_valid(kustomization: str) -> None:
    directory = ROOT / kustomization
    listed = read_yaml(f"{kustomization}/kustomization.yaml")["resources"]
    files = [directory / entry for entry in listed if (directory / entry).is_file()]
    for path in files:
        for manifest in yaml.safe_load_all(path.read_text()):
            validate_schema(manifest)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_objects_are_schema_valid(kustomization: str) -> None:
    manifests = rendered(kustomization)
    kinds = {m["kind"] for m in manifests}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    } <= kinds
    for manifest in manifests:
        validate_schema(manifest)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_is_hardened_and_bounded(kustomization: str) -> None:
    for manifest in rendered(kustomization):
        spec = pod_spec(manifest)
        if spec is None:
            continue
        pod_security = spec.get("securityContext", {})
        for container in all_containers(spec):
            where = f"{manifest['metadata']['name']}/{container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("role", ["api", "worker"])
def test_relay_roles_probe_their_own_port_and_drain_on_sigterm(
    kustomization: str, role: str
) -> None:
    manifests = rendered(kustomization)
    deployment = find(manifests, "Deployment", f"apns-relay-{role}")
    container = relay_container(manifests, role)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    listen_port = int(option_value(container["args"], "--port"))
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path
        assert ports[http_get["port"]] == listen_port
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    if role == "worker":
        assert "lifecycle" not in container, "the worker drains on a plain SIGTERM"
    env = {item["name"]: item for item in container["env"]}
    assert env["RELAY_CONFIG"]["value"] == "/etc/apns-relay/relay.yaml"
    assert env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["config"]["mountPath"] == env["RELAY_CONFIG"]["value"]
    assert PurePosixPath(mounts["apns-keys"]["mountPath"]) == KEYS_DIR
    assert mounts["apns-keys"]["readOnly"] is True


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_references_between_objects_resolve(kustomization: str) -> None:
    manifests = rendered(kustomization)
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    pod_labels = [
        (m["metadata"]["name"], m["spec"]["template"]["metadata"]["labels"])
        for m in manifests
        if pod_spec(m) is not None
    ]
    for manifest in manifests:
        kind, spec = manifest["kind"], manifest.get("spec", {})
        if kind == "Service":
            assert any(labels_match(spec["selector"], labels) for _, labels in pod_labels)
        if kind == "PodDisruptionBudget":
            selector = spec["selector"]["matchLabels"]
            assert any(labels_match(selector, labels) for _, labels in pod_labels)
        if kind == "HorizontalPodAutoscaler":
            target = spec["scaleTargetRef"]
            assert (target["kind"], target["name"]) in names
        pod = pod_spec(manifest)
        if pod is None:
            continue
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert ("Secret", secret) in names or secret in OPERATOR_SECRETS
        for container in all_containers(pod):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in names or ref["name"] in OPERATOR_SECRETS


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_key_material_is_committed(kustomization: str) -> None:
    for manifest in rendered(kustomization):
        if manifest["kind"] == "Secret":
            assert not manifest["metadata"]["name"].startswith("apns-relay-keys")
            assert not any(key.endswith(".p8") for key in manifest.get("data", {}))
    for path in (ROOT / "k8s").rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(), path


def test_production_documents_every_secret_it_references() -> None:
    readme = (ROOT / "k8s/overlays/production/README.md").read_text()
    for secret in OPERATOR_SECRETS:
        assert f"create secret generic {secret}" in readme
    manifests = rendered("k8s/overlays/production")
    assert not any(m["kind"] == "Secret" for m in manifests)
    (app,) = relay_config(manifests)["apps"]
    key_file = PurePosixPath(app["auth"]["token"]["key_file"])
    assert key_file.parent == KEYS_DIR
    assert f"--from-file={key_file.name}=" in readme


def test_dev_overlay_runs_valkey_with_aof_and_the_simulator() -> None:
    manifests = rendered("k8s/overlays/dev")
    valkey = find(manifests, "StatefulSet", "valkey")
    (container,) = valkey["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("valkey/valkey:8")
    assert option_value(container["args"], "--appendonly") == "yes"
    assert option_value(container["args"], "--appendfsync") == "everysec"
    data_dir = option_value(container["args"], "--dir")
    assert option_value(container["args"], "--maxmemory-policy") == "noeviction"
    # Half the container's limit at most: an AOF rewrite forks, and the copy grows with writes.
    limit = container["resources"]["limits"]["memory"]
    assert 0 < valkey_bytes(option_value(container["args"], "--maxmemory")) <= kube_bytes(limit) / 2
    (claim,) = valkey["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (claim["metadata"]["name"], data_dir)

    sim_spec = pod_spec(find(manifests, "Deployment", "apns-sim"))
    assert sim_spec is not None
    sim_args = sim_spec["containers"][0]["args"]
    sim_service = find(manifests, "Service", "apns-sim")
    (app,) = relay_config(manifests)["apps"]
    token = app["auth"]["token"]
    assert app["endpoint"]["host"] == sim_service["metadata"]["name"]
    assert app["endpoint"]["host"] in sim_args[sim_args.index("--tls-name") + 1 :]
    assert app["endpoint"]["port"] == int(option_value(sim_args, listener_option(app)))
    assert app["endpoint"]["port"] in {port["port"] for port in sim_service["spec"]["ports"]}
    assert (token["key_id"], token["team_id"]) == (
        option_value(sim_args, "--key-id"),
        option_value(sim_args, "--team-id"),
    )
    assert PurePosixPath(token["key_file"]) == KEYS_DIR / f"AuthKey_{token['key_id']}.p8"
    assert PurePosixPath(app["endpoint"]["ca_file"]).parent == KEYS_DIR
    sim_claim = next(
        v["persistentVolumeClaim"]["claimName"]
        for v in sim_spec["volumes"]
        if "persistentVolumeClaim" in v
    )
    for role in ("api", "worker"):
        relay_spec = pod_spec(find(manifests, "Deployment", f"apns-relay-{role}"))
        assert relay_spec is not None
        keys = next(v for v in relay_spec["volumes"] if v["name"] == "apns-keys")
        assert keys == {
            "name": "apns-keys",
            "persistentVolumeClaim": {"claimName": sim_claim, "readOnly": True},
        }


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_network_policies_admit_only_gms_and_prometheus(kustomization: str) -> None:
    manifests = rendered(kustomization)
    api = find(manifests, "NetworkPolicy", "apns-relay-api")["spec"]
    worker = find(manifests, "NetworkPolicy", "apns-relay-worker")["spec"]
    for policy in (api, worker):
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    def source_namespaces(policy: dict[str, Any]) -> set[str]:
        peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
        assert all(set(peer) == {"namespaceSelector"} for peer in peers), "only namespaces"
        return {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in peers
        }

    assert source_namespaces(api) == {"gms", "monitoring"}
    assert source_namespaces(worker) == {"monitoring"}
    # The worker sends to APNs; the api probes it (GET /v1/apps/{app}/check): the same narrow
    # egress for both, and nothing else.
    for policy in (api, worker):
        ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
        assert ports == {53, 6379, 443, 2197}
        apns_rules = [rule for rule in policy["egress"] if rule_ports(rule) & APNS_PORTS]
        assert all(rule_ports(rule) <= APNS_PORTS for rule in apns_rules)
        assert rule_ports(apns_rules[0]) == APNS_PORTS
        assert apns_rules[0]["to"] == [{"ipBlock": {"cidr": APPLE_RANGE}}], "Apple's range only"
        if kustomization == "k8s/overlays/dev":  # and the simulator's pod, nothing else
            (simulator_rule,) = apns_rules[1:]
            (peer,) = simulator_rule["to"]
            simulator = pod_labels(find(manifests, "Deployment", "apns-sim"))
            assert labels_match(peer["podSelector"]["matchLabels"], simulator)
            assert {port["port"] for port in simulator_rule["ports"]} <= container_ports(
                find(manifests, "Deployment", "apns-sim")
            )
        else:
            assert len(apns_rules) == 1
    assert api["egress"] == worker["egress"]


def rule_ports(rule: dict[str, Any]) -> set[int]:
    return {port["port"] for port in rule["ports"]}


def pod_labels(manifest: Manifest) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def container_ports(manifest: Manifest) -> set[int]:
    spec = pod_spec(manifest)
    assert spec is not None
    return {port["containerPort"] for c in all_containers(spec) for port in c.get("ports", [])}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("role", ["api", "worker"])
def test_replicas_spread_over_hosts_and_zones(kustomization: str, role: str) -> None:
    deployment = find(rendered(kustomization), "Deployment", f"apns-relay-{role}")
    spec = pod_spec(deployment)
    assert spec is not None
    constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(constraints) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in constraints.values():
        assert constraint["maxSkew"] == 1
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector == deployment["spec"]["selector"]["matchLabels"], "its own pods only"
        assert labels_match(selector, pod_labels(deployment))


def test_an_overlay_pins_the_image_by_digest_and_widens_egress_for_a_gateway(
    tmp_path: Path,
) -> None:
    """What the production overlay's comments tell an operator to do, done in an overlay of it."""
    digest = "sha256:" + "0123456789abcdef" * 4
    production = ROOT / "k8s/overlays/production"
    (tmp_path / "apns-egress-gateway.yaml").write_text(
        (production / "apns-egress-gateway.yaml").read_text()
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(production, tmp_path)],  # kustomize: relative only
                "images": [{"name": "registry.example.com/gms-apns-relay", "digest": digest}],
                "patches": [
                    {
                        "path": "apns-egress-gateway.yaml",
                        "target": {"kind": "NetworkPolicy", "name": "apns-relay-(api|worker)"},
                    }
                ],
            }
        )
    )
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifests = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    for manifest in manifests:
        validate_schema(manifest)
    for role in ("api", "worker"):
        image = relay_container(manifests, role)["image"]
        assert image == f"registry.example.com/gms-apns-relay@{digest}"
    for role in ("api", "worker"):
        egress = find(manifests, "NetworkPolicy", f"apns-relay-{role}")["spec"]["egress"]
        apns_peers = [rule["to"] for rule in egress if rule_ports(rule) == APNS_PORTS]
        assert apns_peers == [
            [{"ipBlock": {"cidr": APPLE_RANGE}}],
            [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
        ], role


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_servicemonitor_scrapes_both_roles_under_the_alerting_job_names(kustomization: str) -> None:
    manifests = rendered(kustomization)
    monitor = find(manifests, "ServiceMonitor", "apns-relay")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoint_ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    assert all(endpoint["path"] == "/metrics" for endpoint in monitor["spec"]["endpoints"])
    scraped = {
        service["metadata"]["name"]
        for service in manifests
        if service["kind"] == "Service"
        and labels_match(selector, service["metadata"]["labels"])
        and endpoint_ports & {port["name"] for port in service["spec"]["ports"]}
    }
    # The job label is the Service name; the alert rules and compose use the same names.
    compose_jobs = {
        job["job_name"] for job in read_yaml("deploy/prometheus/prometheus.yml")["scrape_configs"]
    }
    assert scraped == compose_jobs == {"apns-relay-api", "apns-relay-worker"}
    down_rule = next(rule for rule in alert_rules() if rule["alert"] == "ApnsRelayDown")
    assert all(re.fullmatch(r"apns-relay-(api|worker)", job) for job in scraped)
    assert 'job=~"apns-relay-(api|worker)"' in down_rule["expr"]


# --- relay configuration files -----------------------------------------------------------------

# Where each relay config file is deployed, and so which environment it is loaded with.
RELAY_CONFIGS = {
    "deploy/compose/relay.yaml": "docker-compose.yml",
    "k8s/base/relay.yaml": "k8s/base",
    "k8s/overlays/dev/relay.yaml": "k8s/overlays/dev",
    "k8s/overlays/production/relay.yaml": "k8s/overlays/production",
}
# Stand-ins for the values Kubernetes takes from Secrets.
SECRET_VALUES = {
    "RELAY_REDIS_URL": "redis://redis:6379/0",
    "RELAY_API_TOKENS": "token-1,token-2",
    "RELAY_BASIC_AUTH": "gms:password",
}


def relay_environment(deployment: str) -> dict[str, str]:
    """The environment the api and worker get: compose's (defaults of ${VAR:-default} taken)
    or the rendered containers' (Secret values stood in for)."""
    environment: dict[str, str] = {}
    if deployment == "docker-compose.yml":
        for role in ("api", "worker"):
            for name, value in compose()["services"][role]["environment"].items():
                environment[name] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
        return environment
    for role in ("api", "worker"):
        for item in relay_container(rendered(deployment), role)["env"]:
            environment[item["name"]] = item.get("value") or SECRET_VALUES[item["name"]]
    return environment


@pytest.mark.parametrize("config_path", RELAY_CONFIGS)
def test_relay_config_loads_with_the_environment_it_is_deployed_with(
    config_path: str, tmp_path: Path
) -> None:
    """The relay's own loader accepts each file, its keys found in the mounted keys directory."""
    from relay.config.loading import load_settings

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    text = (ROOT / config_path).read_text()
    for app in yaml.safe_load(text)["apps"]:
        referenced = [app["auth"]["token"]["key_file"], app.get("endpoint", {}).get("ca_file")]
        for path in filter(None, referenced):
            assert within(path, KEYS_DIR), f"{config_path}: {path} is outside {KEYS_DIR}"
            (keys_dir / PurePosixPath(path).relative_to(KEYS_DIR)).write_text("placeholder")
    rebased = tmp_path / "relay.yaml"
    rebased.write_text(text.replace(str(KEYS_DIR), str(keys_dir)))
    environment = relay_environment(RELAY_CONFIGS[config_path])
    assert environment["RELAY_CONFIG"] == "/etc/apns-relay/relay.yaml"
    del environment["RELAY_CONFIG"]  # the file is loaded from its rebased copy instead
    settings = load_settings(rebased, env=environment)
    assert settings.http.host == "0.0.0.0"
    assert settings.logging.format == "json"
    assert settings.redis.url
    assert settings.auth.api_tokens
    assert settings.auth.basic


# --- Prometheus alerts and the Grafana dashboard ------------------------------------------------


def test_alert_rules_are_complete_and_well_formed() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert brackets_balance(rule["expr"]), rule["alert"]
    queried = {rule["alert"]: promql_metric_names(rule["expr"]) for rule in rules}
    # The five: oldest pending age, failure ratio, paused app, stalled delivery, down.
    assert queried["ApnsRelayOldestPendingHigh"] == {"apns_relay_queue_oldest_pending_age_seconds"}
    assert queried["ApnsRelayFailureRatioHigh"] == {
        "apns_relay_notifications_failed_total",
        "apns_relay_notifications_delivered_total",
    }
    assert queried["ApnsRelayAppPaused"] == {"apns_relay_app_paused"}
    assert queried["ApnsRelayNoDeliveries"] == {
        "apns_relay_queue_pending_notifications",
        "apns_relay_notifications_delivered_total",
    }
    assert queried["ApnsRelayDown"] == {"up"}
    spooling = next(rule for rule in rules if rule["alert"] == "ApnsRelaySpooling")
    assert queried["ApnsRelaySpooling"] == {"apns_relay_spool_notifications"}
    assert spooling["for"] == "1m"
    assert queried["ApnsRelayRouteOpen"] == {"apns_relay_route_state"}
    route_open = next(rule for rule in rules if rule["alert"] == "ApnsRelayRouteOpen")
    assert route_open["for"] == "2m"
    # A certificate's lifecycle: a warning 30 days ahead, then critical once it has expired.
    expiring = next(rule for rule in rules if rule["alert"] == "ApnsRelayCredentialExpiringSoon")
    expired = next(rule for rule in rules if rule["alert"] == "ApnsRelayCredentialExpired")
    for rule in (expiring, expired):
        assert queried[rule["alert"]] == {"apns_relay_credential_expiry_timestamp_seconds"}
        assert "- time()" in rule["expr"]
    assert expiring["expr"].endswith("< 30 * 86400")
    # Redis memory (issue 22): 80 % of maxmemory, the watermark, an evicting policy, no limit.
    assert queried["ApnsRelayRedisMemoryHigh"] == {
        "apns_relay_redis_memory_used_bytes",
        "apns_relay_redis_memory_max_bytes",
    }
    high = next(rule for rule in rules if rule["alert"] == "ApnsRelayRedisMemoryHigh")
    assert high["expr"].rstrip().endswith("> 0.8")
    assert queried["ApnsRelayRedisMemoryAtWatermark"] == {"apns_relay_redis_memory_watermark"}
    assert queried["ApnsRelayRedisPolicyEvicts"] == {"apns_relay_redis_maxmemory_policy_info"}
    assert queried["ApnsRelayRedisMemoryUnbounded"] == {"apns_relay_redis_memory_max_bytes"}
    # Invariant 14: delivery failing on bad records or script errors is said, not waited out.
    assert queried["ApnsRelayClaimsFailing"] == {"apns_relay_claim_errors_total"}
    assert queried["ApnsRelayMalformedRecords"] == {"apns_relay_malformed_records_total"}
    # Delivery receipts (issue 26): the confirmed ratio per app, with enough deliveries to judge.
    assert queried["ApnsRelayReceiptsConfirmedRatioLow"] == {
        "apns_relay_receipts_total",
        "apns_relay_notifications_delivered_total",
    }
    assert (expiring["labels"]["severity"], expired["labels"]["severity"]) == (
        "warning",
        "critical",
    )


def test_dashboard_panels_are_well_formed_and_cover_the_relay() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    queried: set[str] = set()
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert brackets_balance(target["expr"]), panel["title"]
            queried |= promql_metric_names(target["expr"])
    # The views: ingest, delivered/failed/expired, queue depth and oldest age, latency,
    # APNs status codes, paused apps, in-flight, HTTP errors.
    assert {
        "apns_relay_events_received_total",
        "apns_relay_notifications_delivered_total",
        "apns_relay_notifications_failed_total",
        "apns_relay_notifications_expired_total",
        "apns_relay_queue_pending_notifications",
        "apns_relay_queue_oldest_pending_age_seconds",
        "apns_relay_delivery_latency_seconds_bucket",
        "apns_relay_apns_responses_total",
        "apns_relay_app_paused",
        "apns_relay_apns_in_flight_requests",
        "apns_relay_http_requests_total",
        "apns_relay_route_state",
        "apns_relay_route_transitions_total",
        "apns_relay_credential_expiry_timestamp_seconds",
        "apns_relay_redis_memory_used_bytes",
        "apns_relay_redis_memory_max_bytes",
        "apns_relay_redis_memory_watermark",
        "apns_relay_receipts_total",
        "apns_relay_receipt_latency_seconds_bucket",
    } <= queried


def test_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def every_query() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert rule and dashboard query."""
    queries = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    queries += [("dashboard", expr) for expr in expressions_in(dashboard())]
    return queries


def test_every_queried_metric_is_exported_by_the_relay() -> None:
    exported = exported_series_names() | PROMETHEUS_SERIES
    for where, expr in every_query():
        unknown = promql_metric_names(expr) - exported
        assert not unknown, (
            f"{where} queries {sorted(unknown)}, which relay.telemetry.metrics never exports"
        )


def test_rates_are_taken_of_counters_and_quantiles_of_buckets() -> None:
    exported = exported_series_names()
    for where, expr in every_query():
        for name in promql_rated_names(expr):
            assert name.endswith(("_total", *HISTOGRAM_SUFFIXES)), f"{where}: rate of {name}"
        for name in promql_metric_names(expr):
            if name.endswith("_bucket") and name in exported:
                assert "histogram_quantile(" in expr, f"{where}: raw buckets of {name}"
