"""Checks of the Helm chart deploy/helm/tickpipe, with the pinned helm of `make tools`.

For the default values and every values file in the chart's ci/ folder (rendered once each):
`helm lint --strict`; every object valid against the Kubernetes schemas (kubernetes-validate,
strict) or, for Strimzi and Prometheus Operator objects, against their CRD schemas from
../shared/crds; the restricted Pod Security Standard, resources and probes on every container;
no secret material inline; the services' environment matches their settings classes; and the
wiring between the objects (Services, Secrets, Kafka users and ACLs, monitors, policies).
values.schema.json must reject unknown keys and wrong types.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.availability import unavailable
from tests.deploy.chart_support import (
    CHART,
    CRDS,
    NAMESPACE,
    RELEASE,
    Manifest,
    Render,
    SchemaNotFound,
    ValidationError,
    component,
    containers,
    crd_validators,
    decoded_secret_data,
    env_of,
    helm_binary,
    is_custom_resource,
    label_selector_matches,
    name_problems,
    pod_spec,
    render,
    run_helm,
    template_args,
    validate_custom_resource,
    validate_kubernetes,
)
from tests.deploy.service_settings import known_variables, required_variables

CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
CASES: dict[str, Path | None] = {"default": None} | {p.stem: p for p in CI_FILES}
FULLNAME = f"{RELEASE}-tickpipe"
SERVICES = ("market-sim", "producer-stocks", "producer-crypto", "consumer")
PRODUCERS = ("producer-stocks", "producer-crypto")


class ChartRenders:
    """The chart rendered per case, on first use: helm template runs once per values file."""

    def __init__(self) -> None:
        self._cache: dict[str, Render] = {}

    def __call__(self, case: str) -> Render:
        if case not in self._cache:
            self._cache[case] = render(case, CASES[case])
        return self._cache[case]


@pytest.fixture(scope="module")
def rendered() -> ChartRenders:
    helm_binary()
    return ChartRenders()


def test_ci_values_files_cover_the_documented_scenarios() -> None:
    expected = {"live-alpaca", "external-database", "monitoring", "networkpolicy", "external-kafka"}
    assert expected <= set(CASES), f"missing ci/ values files: {expected - set(CASES)}"


# -- helm lint and template -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str) -> None:
    values_file = CASES[case]
    args = ["lint", "--strict", str(CHART)]
    if values_file is not None:
        args += ["--values", str(values_file)]
    result = run_helm(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"helm lint --strict ({case}):\n{output}"
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output


@pytest.mark.parametrize("case", CASES)
def test_renders_valid_names(case: str, rendered: ChartRenders) -> None:
    objects = rendered(case).objects
    assert objects, f"{case}: nothing rendered"
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        assert {"apiVersion", "kind", "metadata"} <= obj.keys()
        # A hook may share its name with a hook of another event (the test pod's remover).
        hook = (obj["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
        key = (obj["kind"], obj["metadata"]["name"], hook)
        assert key not in seen, f"{case}: two objects {key}"
        seen.add(key)
        assert name_problems(obj) == []
        # Everything goes to the release's namespace except, on request, the dashboards.
        namespace = obj["metadata"].get("namespace")
        assert namespace in (None, NAMESPACE) or obj["kind"] == "ConfigMap"


# -- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_kubernetes_schemas(case: str, rendered: ChartRenders) -> None:
    for obj in rendered(case).objects:
        if is_custom_resource(obj):
            continue
        where = f"{case}: {obj['kind']} {obj['metadata']['name']}"
        try:
            validate_kubernetes(obj)
        except SchemaNotFound as exc:
            pytest.fail(f"{where}: {exc.message}")
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid at {path}: {exc.message}")


def _crd_validators_or_skip() -> None:
    if not CRDS.is_dir():
        unavailable("CRD schemas", f"{CRDS} does not exist (CI clones shared/ beside the repo)")
    assert crd_validators(), f"no CustomResourceDefinitions found under {CRDS}"


@pytest.mark.parametrize("case", CASES)
def test_custom_resources_match_crd_schemas(case: str, rendered: ChartRenders) -> None:
    _crd_validators_or_skip()
    for obj in rendered(case).objects:
        if not is_custom_resource(obj):
            continue
        try:
            validate_custom_resource(obj)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{case}: {obj['kind']} {obj['metadata']['name']} at {path}: {exc.message}")


def test_validators_reject_broken_objects(rendered: ChartRenders) -> None:
    """The schema checks above can fail: a misspelt field is caught in both kinds of objects."""
    default = rendered("default")
    deployment = json.loads(json.dumps(default.of_kind("Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValidationError):
        validate_kubernetes(deployment)
    _crd_validators_or_skip()
    kafka = json.loads(json.dumps(default.of_kind("Kafka")[0]))
    kafka["spec"]["kafka"]["replicas"] = 3  # gone from the v1 API: node pools have replicas
    with pytest.raises(ValidationError):
        validate_custom_resource(kafka)
    user = json.loads(json.dumps(default.of_kind("KafkaUser")[0]))
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"  # v1 has only "operations"
    with pytest.raises(ValidationError):
        validate_custom_resource(user)


# -- values.schema.json -----------------------------------------------------------------------

BAD_VALUES = {
    "unknown top-level key": ["--set", "replicas=2"],
    "unknown nested key": ["--set", "consumer.replicas=2"],
    "misspelt key": ["--set", "kafka.topics.ticks.partition=3"],
    "wrong type (string for integer)": ["--set-string", "consumer.replicaCount=two"],
    "wrong type (string for boolean)": ["--set-string", "networkPolicy.enabled=yes"],
    "wrong type (number for object)": ["--set", "consumer.resources=1"],
    "not a setting of the service": ["--set", "consumer.config.SYMBOLS=AAPL"],
    "chart-managed setting": ["--set", "consumer.config.DATABASE_URL=postgresql://x"],
    "unknown setting": ["--set", "producerStocks.config.NOT_A_SETTING=1"],
    "bad enum value": ["--set", "producerStocks.config.FEED=nasdaq"],
    "resources without limits": ["--set", "consumer.resources.limits=null"],
    "bad quantity": ["--set", "timescaledb.persistence.size=lots"],
}


@pytest.mark.parametrize("args", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values(args: list[str]) -> None:
    result = run_helm(*template_args(None, *args))
    assert result.returncode != 0, f"helm template accepted {args}"
    assert "schema" in result.stderr.lower(), result.stderr


IMPOSSIBLE_VALUES = {
    "no feed": (["--set", "marketSim.enabled=false"], "no market data feed"),
    "no database": (["--set", "timescaledb.enabled=false"], "externalDatabase.existingSecret"),
    "two databases": (
        ["--set", "externalDatabase.existingSecret=db"],
        "timescaledb.enabled=false",
    ),
    "no kafka": (["--set", "kafka.enabled=false"], "kafka.external.bootstrapServers"),
    "kafka without credentials": (
        ["--set", "kafka.enabled=false", "--set", "kafka.external.bootstrapServers=k:9093"],
        "kafka.external.sasl.existingSecret",
    ),
}


@pytest.mark.parametrize(
    ("args", "message"), IMPOSSIBLE_VALUES.values(), ids=IMPOSSIBLE_VALUES.keys()
)
def test_impossible_combinations_fail_with_a_message(args: list[str], message: str) -> None:
    result = run_helm(*template_args(None, *args))
    assert result.returncode != 0, f"helm template accepted {args}"
    assert message in result.stderr, result.stderr


def _walk_schema(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append((path, node))
        for key, value in node.items():
            found += _walk_schema(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk_schema(value, f"{path}/{index}")
    return found


def test_schema_is_closed_everywhere() -> None:
    """Every object in values.schema.json either forbids unknown keys, is a typed map
    (labels, annotations, Kafka configuration), or is a Kubernetes pass-through that the API
    server validates (said in a $comment)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    for path, node in _walk_schema(schema, "#"):
        extra = node.get("additionalProperties")
        if extra is False:
            continue
        if isinstance(extra, dict) and "type" in extra:
            continue
        assert extra is True, f"{path} accepts unknown keys"
        assert "Kubernetes" in node.get("$comment", ""), f"{path}: say what validates it"


CHART_MANAGED = {
    "HTTP_HOST",
    "HTTP_PORT",
    "SIM_HOST",
    "SIM_PORT",
    "BACKUP_DIR",
    "DATABASE_URL",
    "ALPACA_API_KEY",
    "ALPACA_SECRET_KEY",
    "ALPACA_DATA_STREAM_URL",
    "ALPACA_DATA_REST_URL",
    "SIM_API_KEY",
    "SIM_API_SECRET",
    "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC",
}
VALUES_KEYS = {
    "market-sim": "marketSim",
    "producer-stocks": "producerStocks",
    "producer-crypto": "producerCrypto",
    "consumer": "consumer",
}


@pytest.mark.parametrize("service", SERVICES)
def test_schema_config_keys_are_the_services_settings(service: str) -> None:
    """A service's `config` accepts only settings it reads, never the ones the chart manages
    (connections, secrets, ports, paths)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"][VALUES_KEYS[service]]["properties"]["config"]["properties"]
    names = set(config)
    assert names <= known_variables(service), names - known_variables(service)
    managed = {n for n in names if n in CHART_MANAGED or n.startswith("KAFKA_")}
    assert not managed, f"{service}: config may not set {managed}"


def test_values_are_documented_key_by_key() -> None:
    """Each key of values.yaml has a comment right above it, except the entries of maps
    whose own key is documented (resources, security contexts, probes, settings, labels)."""
    data_parents = {
        "requests",
        "limits",
        "resources",
        "podSecurityContext",
        "containerSecurityContext",
        "seccompProfile",
        "capabilities",
        "config",
        "strategy",
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "labels",
        "matchLabels",
        "namespaceSelector",
        "podSelector",
        "topicOperatorResources",
        "userOperatorResources",
    }
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.\-\"]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        parents.append((indent, key))
        if parent in data_parents:
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(f"line {number + 1}: {key}")
    assert undocumented == []


# -- policy: restricted pods, resources, probes, no inline secrets --------------------------


def _workloads(render_: Render) -> list[tuple[Manifest, dict[str, Any]]]:
    found = []
    for obj in render_.objects:
        spec = pod_spec(obj)
        if spec is not None:
            found.append((obj, spec))
    return found


@pytest.mark.parametrize("case", CASES)
def test_pods_meet_the_restricted_standard(case: str, rendered: ChartRenders) -> None:
    workloads = _workloads(rendered(case))
    assert workloads
    for obj, spec in workloads:
        where = f"{case}: {obj['kind']} {obj['metadata']['name']}"
        assert spec.get("automountServiceAccountToken") is False, where
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{where}: {flag}"
        for volume in spec.get("volumes") or []:
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        pod_context = spec.get("securityContext") or {}
        for container in containers(spec):
            here = f"{where} container {container['name']}"
            context = container.get("securityContext") or {}

            # A container's own setting wins over the pod's.
            setting = {**pod_context, **context}
            assert setting.get("runAsNonRoot") is True, f"{here}: runAsNonRoot"
            for id_field in ("runAsUser", "runAsGroup"):
                value = setting.get(id_field)
                assert isinstance(value, int), f"{here}: {id_field} must be numeric"
                assert value > 0, f"{here}: {id_field} must not be root"
            assert context.get("readOnlyRootFilesystem") is True, f"{here}: read-only root"
            assert context.get("allowPrivilegeEscalation") is False, f"{here}: escalation"
            assert not context.get("privileged"), f"{here}: privileged"
            capabilities = context.get("capabilities") or {}
            assert "ALL" in (capabilities.get("drop") or []), f"{here}: drop ALL"
            assert set(capabilities.get("add") or []) <= {"NET_BIND_SERVICE"}, here
            seccomp = (setting.get("seccompProfile") or {}).get("type")
            assert seccomp in ("RuntimeDefault", "Localhost"), f"{here}: seccomp {seccomp}"
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind) or {}), f"{here}: {kind}"


@pytest.mark.parametrize("case", CASES)
def test_long_running_containers_have_probes(case: str, rendered: ChartRenders) -> None:
    for obj, spec in _workloads(rendered(case)):
        if obj["kind"] == "Pod":
            continue  # the `helm test` pod runs to completion
        for container in spec["containers"]:
            here = f"{case}: {obj['metadata']['name']} container {container['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{here}: no {probe}"
            if obj["kind"] == "Deployment":
                ports = {p["name"] for p in container["ports"]}
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", here
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", here
                assert container["startupProbe"]["httpGet"]["path"] == "/healthz", here
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert container[probe]["httpGet"]["port"] in ports, f"{here}: {probe}"


@pytest.mark.parametrize("case", CASES)
def test_pods_are_graceful_and_write_only_to_volumes(case: str, rendered: ChartRenders) -> None:
    for obj, spec in _workloads(rendered(case)):
        if obj["kind"] == "Pod":
            continue
        where = f"{case}: {obj['metadata']['name']}"
        assert spec.get("terminationGracePeriodSeconds", 0) >= 10, where
        mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: /tmp must be a volume (read-only root)"  # noqa: S108


SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|DATABASE_URL|DSN|CREDENTIAL")


@pytest.mark.parametrize("case", CASES)
def test_secret_values_never_inline(case: str, rendered: ChartRenders) -> None:
    for obj, spec in _workloads(rendered(case)):
        for container in containers(spec):
            for name, var in env_of(container).items():
                if SECRET_NAME.search(name):
                    where = f"{case}: {obj['metadata']['name']}/{container['name']} {name}"
                    assert "value" not in var, f"{where} has a literal value"
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{where}: not a Secret"
    for config_map in rendered(case).of_kind("ConfigMap"):
        text = json.dumps(config_map.get("data", {})).lower()
        assert "password=" not in text
        assert "postgresql://" not in text


def _scalar_strings(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_scalar_strings(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_scalar_strings(v) for v in node)) if node else set()
    return {str(node)} if node not in (None, "") else set()


@pytest.mark.parametrize("case", CASES)
def test_only_the_generated_database_secret_is_rendered(case: str, rendered: ChartRenders) -> None:
    """The one Secret the chart may render is the TimescaleDB password it generates (when no
    existingSecret is given); nothing in it comes from the values."""
    render_ = rendered(case)
    values = render_.values()
    secrets = render_.of_kind("Secret")
    database = values["timescaledb"]
    if not database["enabled"] or database["auth"]["existingSecret"]:
        assert secrets == [], f"{case}: unexpected Secrets"
        return
    assert [s["metadata"]["name"] for s in secrets] == [f"{FULLNAME}-timescaledb"]
    secret = secrets[0]
    assert "stringData" not in secret
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = decoded_secret_data(secret)
    assert set(data) == {"password", "database-url"}
    password = data["password"]
    assert len(password) >= 24
    from_values = {s for s in _scalar_strings(values) if len(s) >= 6}
    assert not [s for s in from_values if s in password], "password made from values"
    dsn = urllib.parse.urlsplit(data["database-url"])
    assert dsn.scheme == "postgresql"
    assert urllib.parse.unquote(dsn.password or "") == password
    assert dsn.username == database["username"]
    assert (dsn.hostname, dsn.port) == (f"{FULLNAME}-timescaledb", database["port"])
    assert dsn.path == f"/{database['database']}"
    statefulset = render_.named("StatefulSet", f"{FULLNAME}-timescaledb")
    env = env_of(statefulset["spec"]["template"]["spec"]["containers"][0])
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{FULLNAME}-timescaledb", "key": "password"}


@pytest.mark.parametrize("case", CASES)
def test_service_accounts_do_not_mount_tokens(case: str, rendered: ChartRenders) -> None:
    accounts = rendered(case).of_kind("ServiceAccount")
    assert accounts
    for account in accounts:
        assert account.get("automountServiceAccountToken") is False


# -- drift between the chart and the services' settings -------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_environment_matches_the_settings_classes(case: str, rendered: ChartRenders) -> None:
    deployments = rendered(case).of_kind("Deployment")
    assert deployments
    for deployment in deployments:
        service = component(deployment)
        assert service in SERVICES, f"{deployment['metadata']['name']}: unknown component"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        names = set(env_of(container))
        unknown = names - known_variables(service)
        assert not unknown, f"{case}: {service} sets variables it does not read: {unknown}"
        missing = required_variables(service) - names
        assert not missing, f"{case}: {service} lacks required variables: {missing}"


# -- wiring ----------------------------------------------------------------------------------


def _deployment(render_: Render, service: str) -> Manifest:
    return render_.named("Deployment", f"{FULLNAME}-{service}")


def _container_env(render_: Render, service: str) -> dict[str, dict[str, Any]]:
    (container,) = _deployment(render_, service)["spec"]["template"]["spec"]["containers"]
    return env_of(container)


@pytest.mark.parametrize("case", CASES)
def test_feed_is_the_simulator_unless_alpaca_keys_are_given(
    case: str, rendered: ChartRenders
) -> None:
    render_ = rendered(case)
    alpaca_secret = render_.values()["alpaca"]["existingSecret"]
    sim_objects = [o for o in render_.objects if component(o) == "market-sim"]
    for producer in PRODUCERS:
        env = _container_env(render_, producer)
        if alpaca_secret:
            assert sim_objects == [], f"{case}: simulator deployed next to live keys"
            for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["name"] == alpaca_secret
            assert "market-sim" not in env.get("ALPACA_DATA_STREAM_URL", {}).get("value", "")
        else:
            assert "ALPACA_API_KEY" not in env
            assert env["ALPACA_DATA_STREAM_URL"]["value"] == f"ws://{FULLNAME}-market-sim:8765"
            # Gaps are backfilled from the simulator's history, on the same port.
            assert env["ALPACA_DATA_REST_URL"]["value"] == f"http://{FULLNAME}-market-sim:8765"
            service = render_.named("Service", f"{FULLNAME}-market-sim")
            assert service["spec"]["ports"][0]["port"] == 8765


@pytest.mark.parametrize("case", CASES)
def test_services_expose_a_named_metrics_port(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    for deployment in render_.of_kind("Deployment"):
        service = render_.named("Service", deployment["metadata"]["name"])
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert label_selector_matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_ports = {p["name"] for p in container["ports"]}
        (port,) = service["spec"]["ports"]
        assert port["name"] in ("http-metrics", "metrics")
        assert port["targetPort"] in container_ports


@pytest.mark.parametrize("case", CASES)
def test_pod_disruption_budgets_cover_the_deployments(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    budgets = render_.of_kind("PodDisruptionBudget")
    for deployment in render_.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if label_selector_matches(b["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{case}: {deployment['metadata']['name']}"


@pytest.mark.parametrize("case", CASES)
def test_kafka_connection_is_secured(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    kafka = render_.values()["kafka"]
    for service in ("producer-stocks", "producer-crypto", "consumer"):
        deployment = _deployment(render_, service)
        spec = deployment["spec"]["template"]["spec"]
        env = _container_env(render_, service)
        assert env["KAFKA_TOPIC"]["value"] == kafka["topics"]["ticks"]["name"]
        if not kafka["enabled"]:
            external = kafka["external"]
            assert env["KAFKA_BOOTSTRAP_SERVERS"]["value"] == external["bootstrapServers"]
            assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == external["securityProtocol"]
            continue
        cluster = render_.of_kind("Kafka")[0]["metadata"]["name"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"]["value"] == f"{cluster}-kafka-bootstrap:9093"
        assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        user = env["KAFKA_SASL_USERNAME"]["value"]
        render_.named("KafkaUser", user)
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": user,
            "key": "password",
        }
        ca_file = Path(env["KAFKA_SSL_CA_LOCATION"]["value"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [
            m
            for m in spec["containers"][0]["volumeMounts"]
            if Path(m["mountPath"]) == ca_file.parent
        ]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == f"{cluster}-cluster-ca-cert"
        assert secret["items"] == [{"key": "ca.crt", "path": ca_file.name}]


@pytest.mark.parametrize("case", CASES)
def test_strimzi_resources(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    if not render_.values()["kafka"]["enabled"]:
        assert [o for o in render_.objects if o["apiVersion"].startswith("kafka.strimzi.io")] == []
        return
    (kafka,) = render_.of_kind("Kafka")
    cluster = kafka["metadata"]["name"]
    spec = kafka["spec"]
    assert spec["kafka"]["version"].startswith("4.3.")
    assert spec["kafka"]["authorization"]["type"] == "simple"
    listeners = spec["kafka"]["listeners"]
    assert all(listener["tls"] for listener in listeners)
    assert all(listener["authentication"]["type"] == "scram-sha-512" for listener in listeners)
    metrics = spec["kafka"]["metricsConfig"]
    assert metrics["type"] == "jmxPrometheusExporter"
    ref = metrics["valueFrom"]["configMapKeyRef"]
    config_map = render_.named("ConfigMap", ref["name"])
    assert "rules" in yaml.safe_load(config_map["data"][ref["key"]])
    assert "kafkaExporter" in spec
    (pool,) = render_.of_kind("KafkaNodePool")
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    topics = {t["spec"]["topicName"]: t for t in render_.of_kind("KafkaTopic")}
    assert set(topics) == {"market_ticks", "market_ticks.dlq"}
    for owned in [pool, *render_.of_kind("KafkaTopic"), *render_.of_kind("KafkaUser")]:
        assert owned["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    for topic in topics.values():
        assert "retention.ms" in topic["spec"]["config"]


def _acls(render_: Render, service: str) -> set[tuple[str, str, str]]:
    user = render_.named("KafkaUser", f"{FULLNAME}-{service}")
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    granted = set()
    for acl in user["spec"]["authorization"]["acls"]:
        assert acl.get("type", "allow") == "allow"
        assert acl["resource"].get("patternType", "literal") == "literal"
        assert acl["resource"].get("name") not in (None, "*")
        for operation in acl["operations"]:
            granted.add((acl["resource"]["type"], acl["resource"]["name"], operation))
    return granted


def test_kafka_users_have_least_privilege(rendered: ChartRenders) -> None:
    render_ = rendered("default")
    for producer in PRODUCERS:
        assert _acls(render_, producer) == {
            ("topic", "market_ticks", "Write"),
            ("topic", "market_ticks", "Describe"),
        }
    assert _acls(render_, "consumer") == {
        ("topic", "market_ticks", "Read"),
        ("topic", "market_ticks", "Describe"),
        ("group", "tickpipe-consumer", "Read"),
        ("topic", "market_ticks.dlq", "Write"),
        ("topic", "market_ticks.dlq", "Describe"),
    }
    env = _container_env(render_, "consumer")
    assert env["KAFKA_GROUP_ID"]["value"] == "tickpipe-consumer"
    assert env["KAFKA_DLQ_TOPIC"]["value"] == "market_ticks.dlq"


@pytest.mark.parametrize("case", CASES)
def test_consumer_database_url_comes_from_a_secret(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    values = render_.values()
    ref = _container_env(render_, "consumer")["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    external = values["externalDatabase"]
    if external["existingSecret"]:
        assert ref == {"name": external["existingSecret"], "key": external["databaseUrlKey"]}
        assert render_.of_kind("StatefulSet") == []
    elif values["timescaledb"]["auth"]["existingSecret"]:
        auth = values["timescaledb"]["auth"]
        assert ref == {"name": auth["existingSecret"], "key": auth["databaseUrlKey"]}
    else:
        assert ref == {"name": f"{FULLNAME}-timescaledb", "key": "database-url"}


@pytest.mark.parametrize("case", CASES)
def test_timescaledb(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    values = render_.values()["timescaledb"]
    if not values["enabled"]:
        return
    statefulset = render_.named("StatefulSet", f"{FULLNAME}-timescaledb")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(
        r"timescale/timescaledb:2\.\d+\.\d+-pg\d+", container["image"].split("/", 1)[1]
    )
    assert container["livenessProbe"]["exec"]["command"][0] == "pg_isready"
    env = env_of(container)
    assert env["POSTGRES_DB"]["value"] == "marketdata"
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    service = render_.named("Service", f"{FULLNAME}-timescaledb")
    assert service["spec"]["ports"][0]["port"] == 5432


@pytest.mark.parametrize("case", CASES)
def test_backup_volume(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    for producer, key in (
        ("producer-stocks", "producerStocks"),
        ("producer-crypto", "producerCrypto"),
    ):
        backup = render_.values()[key]["backup"]
        spec = _deployment(render_, producer)["spec"]["template"]["spec"]
        env = _container_env(render_, producer)
        assert env["BACKUP_DIR"]["value"] == backup["mountPath"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volume = {v["name"]: v for v in spec["volumes"]}[mounts[backup["mountPath"]]]
        persistence = backup["persistence"]
        if not persistence["enabled"]:
            assert "emptyDir" in volume
            continue
        claim = volume["persistentVolumeClaim"]["claimName"]
        if persistence["existingClaim"]:
            assert claim == persistence["existingClaim"]
        else:
            render_.named("PersistentVolumeClaim", claim)


def _hook_pods(render_: Render, event: str) -> list[Manifest]:
    return [
        p
        for p in render_.of_kind("Pod")
        if (p["metadata"].get("annotations") or {}).get("helm.sh/hook") == event
    ]


def _delete_policies(obj: Manifest) -> set[str]:
    policy = obj["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "")
    return {p.strip() for p in policy.split(",") if p.strip()}


def test_test_hook_checks_rows_arriving(rendered: ChartRenders) -> None:
    render_ = rendered("default")
    (pod,) = _hook_pods(render_, "test")
    (container,) = pod["spec"]["containers"]
    script = container["command"][-1]
    assert "market_ticks" in script
    assert "psql" in script
    assert pod["spec"]["restartPolicy"] == "Never"
    ref = env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    consumer_ref = _container_env(render_, "consumer")["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == consumer_ref


def test_test_pod_outlives_the_test_for_helm_test_logs(rendered: ChartRenders) -> None:
    """`helm test --logs` reads the pod's log after the test: a hook-succeeded (or -failed)
    policy deletes the pod first and makes the command fail although the test passed."""
    (pod,) = _hook_pods(rendered("default"), "test")
    assert _delete_policies(pod) == {"before-hook-creation"}
    runs = {
        "NOTES.txt": (CHART / "templates" / "NOTES.txt").read_text(),
        "README.md": (CHART.parents[2] / "README.md").read_text(),
        "deploy/kind/kind.sh": (CHART.parents[1] / "kind" / "kind.sh").read_text(),
    }
    for where, text in runs.items():
        commands = re.findall(r"(?m)^\s*(?:if ! )?(?:\S*helm|h) test .*$", text)
        assert commands, f"{where} runs no helm test"
        for command in commands:
            assert "--logs" in command, f"{where}: {command}"


def test_uninstall_removes_the_test_pod(rendered: ChartRenders) -> None:
    """Helm leaves hooks behind on uninstall; the pre-delete hook of the same name replaces
    the test pod (before-hook-creation), exits at once and is deleted in turn."""
    render_ = rendered("default")
    (test_pod,) = _hook_pods(render_, "test")
    (remover,) = _hook_pods(render_, "pre-delete")
    assert remover["metadata"]["name"] == test_pod["metadata"]["name"]
    assert {"before-hook-creation", "hook-succeeded"} <= _delete_policies(remover)
    (container,) = remover["spec"]["containers"]
    assert container["command"] == ["python", "-c", "pass"]
    consumer_image = _deployment(render_, "consumer")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == consumer_image[0]["image"]
    assert remover["spec"]["automountServiceAccountToken"] is False
    # Without the test pod there is nothing to remove.
    no_tests = run_helm(*template_args(None, "--set", "tests.enabled=false"))
    assert no_tests.returncode == 0, no_tests.stderr
    assert "helm.sh/hook: pre-delete" not in no_tests.stdout


def _claim_classes(objects: list[Manifest]) -> dict[str, str | None]:
    """Every claim the chart makes → its StorageClass (None: the cluster's default)."""
    classes: dict[str, str | None] = {}
    for obj in objects:
        if obj["kind"] == "PersistentVolumeClaim":
            classes[obj["metadata"]["name"]] = obj["spec"].get("storageClassName")
        elif obj["kind"] == "StatefulSet":
            for claim in obj["spec"].get("volumeClaimTemplates") or []:
                name = f"{obj['metadata']['name']}/{claim['metadata']['name']}"
                classes[name] = claim["spec"].get("storageClassName")
        elif obj["kind"] == "KafkaNodePool":
            for volume in obj["spec"]["storage"].get("volumes") or [obj["spec"]["storage"]]:
                classes[f"kafka/{obj['metadata']['name']}"] = volume.get("class")
    return classes


def test_storage_class_for_every_claim() -> None:
    """A cluster without a default StorageClass: one value names the class of every claim
    the chart makes, and a claim's own class still wins."""
    persistence = [
        "--set",
        "producerStocks.backup.persistence.enabled=true",
        "--set",
        "producerCrypto.backup.persistence.enabled=true",
    ]

    def classes(*extra: str) -> dict[str, str | None]:
        result = run_helm(*template_args(None, *persistence, *extra))
        assert result.returncode == 0, result.stderr
        return _claim_classes([d for d in yaml.safe_load_all(result.stdout) if d])

    default = classes()
    assert len(default) == 4, default  # TimescaleDB, two backups, the Kafka node pool
    assert set(default.values()) == {None}
    assert set(classes("--set", "storageClass=local-disk").values()) == {"local-disk"}
    mixed = classes(
        "--set", "storageClass=local-disk", "--set", "timescaledb.persistence.storageClass=ssd"
    )
    assert mixed == {name: ("ssd" if "timescaledb" in name else "local-disk") for name in default}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["storageClass"] == ""
    assert "storageClass" in (CHART / "templates" / "NOTES.txt").read_text()


# -- monitoring --------------------------------------------------------------------------------


def test_monitoring_objects(rendered: ChartRenders) -> None:
    render_ = rendered("monitoring")
    release_label = {"release": "kube-prometheus-stack"}
    (monitor,) = render_.of_kind("ServiceMonitor")
    assert release_label.items() <= monitor["metadata"]["labels"].items()
    selected = [
        s
        for s in render_.of_kind("Service")
        if label_selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {component(s) for s in selected} == set(SERVICES)
    for endpoint in monitor["spec"]["endpoints"]:
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    (pod_monitor,) = render_.of_kind("PodMonitor")
    assert release_label.items() <= pod_monitor["metadata"]["labels"].items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "tcp-prometheus"

    (rule,) = render_.of_kind("PrometheusRule")
    assert release_label.items() <= rule["metadata"]["labels"].items()
    rule_file = yaml.safe_load((CHART / "files" / "alerts" / "tickpipe-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == rule_file["groups"]

    dashboards = render_.named("ConfigMap", f"{FULLNAME}-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert sorted(dashboards["data"]) == [f.name for f in files]
    for name, text in dashboards["data"].items():
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / name).read_text())


def test_monitoring_is_off_by_default(rendered: ChartRenders) -> None:
    kinds = {o["kind"] for o in rendered("default").objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [
        c for c in rendered("default").of_kind("ConfigMap") if "dashboards" in c["metadata"]["name"]
    ]


# -- network policies --------------------------------------------------------------------------


def _policies_for(render_: Render, labels: dict[str, str]) -> list[Manifest]:
    return [
        p
        for p in render_.of_kind("NetworkPolicy")
        if label_selector_matches(p["spec"]["podSelector"], labels)
    ]


def _egress_ports(policy: Manifest) -> set[int | str]:
    return {port["port"] for rule in policy["spec"]["egress"] for port in rule.get("ports", [])}


@pytest.mark.parametrize("case", ["networkpolicy", "external-kafka"])
def test_network_policies(case: str, rendered: ChartRenders) -> None:
    render_ = rendered(case)
    values = render_.values()
    kafka_ports = (
        {9093}
        if values["kafka"]["enabled"]
        else set(values["networkPolicy"]["externalKafka"]["ports"])
    )
    workloads = [*render_.of_kind("Deployment"), *render_.of_kind("StatefulSet")]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        (policy,) = _policies_for(render_, labels)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        name = component(workload)
        egress = _egress_ports(policy)
        if name in PRODUCERS:
            assert {53} | kafka_ports <= egress
            assert (8765 in egress) != bool(values["alpaca"]["existingSecret"])
        elif name == "consumer":
            assert {53, 5432} | kafka_ports <= egress
        else:
            assert policy["spec"]["egress"] == [], f"{name} needs no egress"
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("ports"), f"{name}: ingress must name its ports"
    sim = [w for w in workloads if component(w) == "market-sim"]
    if sim:
        (policy,) = _policies_for(render_, sim[0]["spec"]["template"]["metadata"]["labels"])
        (rule,) = policy["spec"]["ingress"]
        sources = [
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            for peer in rule["from"]
        ]
        assert set(PRODUCERS) <= set(sources)
