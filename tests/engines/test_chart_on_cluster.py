"""The Helm chart installed on a real Kubernetes: the local cluster of ``make cluster-up``
(deploy/cluster/), or the cluster KUBECONFIG names.

What runs where:
- the chart's four services and its TimescaleDB StatefulSet, in a namespace that enforces the
  restricted Pod Security Standard; TimescaleDB on the STAND-IN PostgreSQL image (Debian's
  PostgreSQL 17, no TimescaleDB extension), the services on the images built on the stand-in
  Python base (deploy/images/build.sh);
- Kafka: the STAND-IN Kafka image (Kafka's Maven jars on Debian's JRE) as a plain pod and
  Service in a namespace of its own, reached through the chart's external-Kafka values.
  Strimzi's operator image is not reachable here, so Strimzi cannot reconcile: its CRDs are
  installed, and the chart's Strimzi objects, rendered with the default values, must be
  accepted by the API server in a server-side dry run;
- the simulator is the feed, and the producers publish every tick (PUBLISH_MODE=every_tick),
  so that the table can be reconciled exactly against the simulator's /stats.

The tests share one release and run in file order, each a stage of its life: installed and
Ready; JSON logs; rows reconciled while the consumer pod is deleted mid-stream; the
NetworkPolicies accepted; `helm upgrade` rolling what changed, then `helm test --logs`
passing; `helm uninstall` leaving only what the README says it keeps.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart_support import CHART, CRDS
from tests.e2e.support import sim_run_over, sim_sent
from tests.engines.cluster_support import (
    Cluster,
    default_storage_class,
    find_cluster,
    load_images,
    local_volume_manifest,
    tag_image,
    wait_until,
)

# Each stage waits on the cluster (an install, a whole feed, a rollout): minutes, not seconds.
pytestmark = pytest.mark.timeout(900)

SERVICES = ("market-sim", "producer-stocks", "producer-crypto", "consumer")
SERVICE_IMAGES = [f"tickpipe-{service}:local" for service in SERVICES]
# Stands in for timescale/timescaledb; the chart's schema wants a <timescaledb>-pg<major> tag,
# and the stand-in has no TimescaleDB: 0.0.0.
POSTGRES_IMAGE = ("tickpipe-standin/postgres", "17")
POSTGRES_NODE_TAG = "0.0.0-pg17"
KAFKA_IMAGE = "tickpipe-standin/kafka:4.3.1"  # stands in for apache/kafka (Strimzi's too)
STOCKS = ("AAPL", "MSFT")
SUBSCRIBED_KINDS = ("trade", "quote", "bar")  # the producers' CHANNELS below
CRYPTO = ("BTC/USD", "ETH/USD")
EVENTS_PER_SYMBOL = 3000  # per symbol and kind: two minutes of feed at the rate below
RATE_PER_SYMBOL = 25
RELEASE = "tickpipe"
STRIMZI_CRDS = CRDS / "strimzi-1.2.0"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
# One line per watch event: the exit code once the container has terminated, else empty.
EXIT_CODE = 'jsonpath={.status.containerStatuses[0].state.terminated.exitCode}{"\\n"}'


@dataclass
class Release:
    cluster: Cluster
    namespace: str
    values_file: Path
    kafka_namespace: str
    log: list[str] = field(default_factory=list)

    def k(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("--namespace", self.namespace, *args, **kwargs)

    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = INSTANCE + (f",app.kubernetes.io/component={component}" if component else "")
        items: list[dict[str, Any]] = self.cluster.json(
            "--namespace", self.namespace, "get", "pods", "-l", selector
        )["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def sql(self, query: str) -> list[list[str]]:
        out = self.k(
            "exec",
            f"statefulset/{RELEASE}-timescaledb",
            "-c",
            "timescaledb",
            "--",
            "sh",
            "-c",
            'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" '
            '-d "$POSTGRES_DB" --no-psqlrc -At -F "|" -v ON_ERROR_STOP=1 -c "$0"',
            query,
        ).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def sim_stats(self) -> dict[str, Any]:
        out = self.k(
            "exec",
            f"deployment/{RELEASE}-market-sim",
            "--",
            "python",
            "-c",
            "import sys, urllib.request;"
            " sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8765/stats').read().decode())",
        ).stdout
        stats: dict[str, Any] = json.loads(out)
        return stats


def db_counts(release: Release) -> Counter[tuple[str, str]]:
    rows = release.sql("SELECT symbol, kind, count(*) FROM market_ticks GROUP BY 1, 2")
    return Counter({(symbol, kind): int(n) for symbol, kind, n in rows})


def values(kafka_bootstrap: str, storage_class: str | None) -> dict[str, Any]:
    config = {"CHANNELS": "trades,quotes,bars", "PUBLISH_MODE": "every_tick"}
    chart_values: dict[str, Any] = {
        "image": {"registry": "", "tag": "local", "pullPolicy": "Never"},
        "kafka": {
            "enabled": False,
            "external": {"bootstrapServers": kafka_bootstrap, "securityProtocol": "PLAINTEXT"},
        },
        "timescaledb": {
            "image": {
                "registry": "docker.io",
                "repository": POSTGRES_IMAGE[0],
                "tag": POSTGRES_NODE_TAG,
                "pullPolicy": "Never",
            },
            "tune": False,
            "persistence": {"size": "1Gi"},
        },
        "marketSim": {
            "config": {
                "SIM_RATE_PER_SYMBOL": RATE_PER_SYMBOL,
                "SIM_MAX_EVENTS_PER_SYMBOL": EVENTS_PER_SYMBOL,
                "SIM_BAR_INTERVAL": 1,
                # Every event of the fixed run reaches a producer, so the table must equal what
                # was sent; the market mode (trading while nobody listens) needs the producers'
                # backfill to reconcile, which is issue 8's proof, not this one.
                "SIM_TRADING": "while_subscribed",
            }
        },
        "producerStocks": {"config": {**config, "SYMBOLS": ",".join(STOCKS)}},
        "producerCrypto": {"config": {**config, "SYMBOLS": ",".join(CRYPTO)}},
        "networkPolicy": {"enabled": True, "externalKafka": {"ports": [9092]}},
        "tests": {"intervalSeconds": 10},
    }
    if storage_class:
        chart_values["storageClass"] = storage_class
    return chart_values


def kafka_manifest(namespace: str) -> str:
    """One KRaft node of the stand-in Kafka image, as restricted as the chart's pods."""
    bootstrap = f"kafka.{namespace}.svc.cluster.local:9092"
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "CLUSTER_ID": "dGlja3BpcGUtY2x1c3Rlcg",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@127.0.0.1:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{bootstrap}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_HEAP_OPTS": "-Xms256m -Xmx512m",
    }
    labels = {"app.kubernetes.io/name": "kafka", "app.kubernetes.io/part-of": "tickpipe-test"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kafka", "namespace": namespace, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "kafka",
                    "image": KAFKA_IMAGE,
                    "imagePullPolicy": "Never",
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "ports": [{"name": "kafka", "containerPort": 9092}],
                    "readinessProbe": {"tcpSocket": {"port": 9092}, "periodSeconds": 2},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/kafka/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kafka", "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "kafka", "port": 9092}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [pod, service]})


def restricted_namespace(cluster: Cluster, name: str) -> None:
    labels = {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")
    }
    cluster.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {**labels, "tickpipe-test": "engines"}},
            }
        )
    )


def diagnose(release: Release) -> str:
    out = release.k("get", "pods,pvc,events", "-o", "wide", check=False)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    cluster = find_cluster()
    load_images(cluster, [*SERVICE_IMAGES, f"{POSTGRES_IMAGE[0]}:{POSTGRES_IMAGE[1]}", KAFKA_IMAGE])
    tag_image(cluster, ":".join(POSTGRES_IMAGE), f"{POSTGRES_IMAGE[0]}:{POSTGRES_NODE_TAG}")
    suffix = uuid.uuid4().hex[:6]
    namespace, kafka_namespace = f"tickpipe-e2e-{suffix}", f"tickpipe-e2e-kafka-{suffix}"
    created_crds: list[str] = []
    storage: list[str] = []
    tmp = tmp_path_factory.mktemp("cluster")
    try:
        for name in (namespace, kafka_namespace):
            restricted_namespace(cluster, name)

        # A cluster without a default StorageClass (the local one has none): the chart's
        # storageClass value names one, here a local PersistentVolume on this machine's node.
        storage_class = None
        if default_storage_class(cluster) is None:
            assert cluster.local, "no default StorageClass on the KUBECONFIG cluster"
            storage_class = f"tickpipe-e2e-local-{suffix}"
            volume = Path(cluster.kubeconfig).parent / "volumes" / suffix
            volume.mkdir(parents=True)
            node = cluster.json("get", "nodes")["items"][0]["metadata"]["name"]
            cluster.apply(local_volume_manifest(storage_class, storage_class, volume, node))
            storage = [f"pv/{storage_class}", f"storageclass/{storage_class}", str(volume)]

        for crd in sorted(STRIMZI_CRDS.glob("*.yaml")):
            doc = yaml.safe_load(crd.read_text())
            name = doc["metadata"]["name"]
            if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
                created_crds.append(name)
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        for name in created_crds:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")

        cluster.apply(kafka_manifest(kafka_namespace))
        cluster.kubectl(
            "--namespace", kafka_namespace, "wait", "pod/kafka", "--for=condition=Ready",
            "--timeout=180s",
        )  # fmt: skip
        for topic, partitions in (("market_ticks", 3), ("market_ticks.dlq", 1)):
            cluster.kubectl(
                "--namespace", kafka_namespace, "exec", "kafka", "--",
                "/opt/kafka/bin/kafka-topics.sh", "--bootstrap-server", "127.0.0.1:9092",
                "--create", "--if-not-exists", "--topic", topic,
                "--partitions", str(partitions), "--replication-factor", "1",
            )  # fmt: skip

        values_file = tmp / "values.yaml"
        bootstrap = f"kafka.{kafka_namespace}.svc.cluster.local:9092"
        values_file.write_text(yaml.safe_dump(values(bootstrap, storage_class)))
        yield Release(cluster, namespace, values_file, kafka_namespace)
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", timeout=300)
        for name in (namespace, kafka_namespace):
            cluster.kubectl(
                "delete", "namespace", name, "--wait=true", "--timeout=180s", check=False
            )
        for name in created_crds:
            cluster.kubectl("delete", "crd", name, check=False)
        if storage:
            cluster.kubectl("delete", storage[0], storage[1], check=False)
            subprocess.run(["rm", "-rf", storage[2]], check=False)


def test_strimzi_objects_are_accepted_by_the_api_server(release: Release) -> None:
    """The chart's default Kafka (Strimzi) objects, in a server-side dry run against the real
    CRDs: admitted and schema-valid, although no operator runs to reconcile them."""
    rendered = release.cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", release.namespace, timeout=120
    )
    assert rendered.returncode == 0, rendered.stderr
    strimzi = [
        doc
        for doc in yaml.safe_load_all(rendered.stdout)
        if doc and str(doc["apiVersion"]).startswith("kafka.strimzi.io/")
    ]
    kinds = Counter(doc["kind"] for doc in strimzi)
    assert kinds == {"Kafka": 1, "KafkaNodePool": 1, "KafkaTopic": 2, "KafkaUser": 3}, kinds
    out = release.k(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-",
        stdin=yaml.safe_dump_all(strimzi),
    ).stdout  # fmt: skip
    for doc in strimzi:
        assert f"{doc['metadata']['name']} created (server dry run)" in out, out


def test_install_every_pod_ready(release: Release) -> None:
    started = time.monotonic()
    install = release.cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", release.namespace,
        "--values", str(release.values_file), "--wait", "--timeout", "10m",
    )  # fmt: skip
    assert install.returncode == 0, f"{install.stderr}\n{diagnose(release)}"
    assert "PodSecurity" not in install.stderr, install.stderr  # no restricted warnings
    release.log.append(f"install → all Ready in {time.monotonic() - started:.0f} s")
    pods = release.pods()
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert components == {*SERVICES, "timescaledb"}, components
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True", pod["metadata"]["name"]
    claims = release.cluster.json("--namespace", release.namespace, "get", "pvc")["items"]
    assert [c["status"]["phase"] for c in claims] == ["Bound"]


def _json_log_problems(text: str, service: str) -> list[str]:
    problems = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"not JSON: {line[:200]}")
            continue
        if not {"time", "level", "service", "event"} <= record.keys():
            problems.append(f"fields missing: {line[:200]}")
        elif record["service"] != service:
            problems.append(f"service {record['service']!r}: {line[:200]}")
    return problems


def test_every_service_logs_json(release: Release) -> None:
    for service in SERVICES:
        pods = release.pods(service)
        assert pods, f"no {service} pod"
        for pod in pods:
            text = release.k("logs", pod["metadata"]["name"], "--all-containers").stdout
            assert text.strip(), f"{service}: no log lines"
            assert _json_log_problems(text, service) == [], service


def test_rows_reconcile_while_the_consumer_pod_is_replaced(release: Release) -> None:
    # 1. Mid-stream: the first rows are in, the simulator is far from done.
    wait_until(lambda: sum(db_counts(release).values()) >= 200, 180, "the first rows")
    (old,) = release.pods("consumer")
    old_name = old["metadata"]["name"]
    watch = subprocess.Popen(
        [release.cluster.kubectl_bin, "--namespace", release.namespace, "get", "pod", old_name,
         "--watch", "-o", EXIT_CODE],
        stdout=subprocess.PIPE, text=True, env=release.cluster.env(),
    )  # fmt: skip
    old_log = subprocess.Popen(
        [release.cluster.kubectl_bin, "--namespace", release.namespace, "logs", "-f", old_name],
        stdout=subprocess.PIPE, text=True, env=release.cluster.env(),
    )  # fmt: skip
    release.k("delete", "pod", old_name, "--wait=false")
    sent_at_delete = sim_sent(release.sim_stats())
    assert min(sent_at_delete[(s, "trade")] for s in STOCKS + CRYPTO) < EVENTS_PER_SYMBOL * 0.9, (
        "the feed was nearly over when the consumer was deleted: not mid-stream"
    )

    def replaced() -> bool:
        pods = release.pods("consumer")
        return bool(pods) and all(
            p["metadata"]["name"] != old_name
            and {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready")
            == "True"
            for p in pods
        )

    wait_until(replaced, 120, "the replacement consumer to be Ready")
    old_text = old_log.communicate(timeout=60)[0]
    watch.terminate()
    exit_codes = {line.strip() for line in watch.communicate(timeout=30)[0].splitlines()} - {""}
    assert exit_codes == {"0"}, f"the deleted consumer exited with {exit_codes or 'nothing seen'}"
    assert _json_log_problems(old_text, "consumer") == []

    # 2. The feed ends: every trade and quote sent, and the simulator says its run is over
    #    (the last bars closed on its clock and sent), so what it sent no longer changes.
    def feed_done() -> dict[str, Any] | None:
        stats = release.sim_stats()
        sent = sim_sent(stats)
        every_trade_and_quote = all(
            sent[(s, kind)] >= EVENTS_PER_SYMBOL
            for s in STOCKS + CRYPTO
            for kind in ("trade", "quote")
        )
        return stats if every_trade_and_quote and sim_run_over(stats, SUBSCRIBED_KINDS) else None

    stats = wait_until(feed_done, 300, "the simulator to send its whole feed", interval=2)
    sent = sim_sent(stats)

    # 3. Exactly what was sent is stored: nothing lost, nothing twice.
    def landed() -> bool:
        return sum(db_counts(release).values()) >= sum(sent.values())

    wait_until(landed, 180, "every sent tick to reach market_ticks", interval=2)
    assert db_counts(release) == sent
    for symbol in STOCKS + CRYPTO:
        rows = release.sql(  # the symbols are this module's constants
            "SELECT count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id)"  # noqa: S608
            f" FROM market_ticks WHERE kind = 'trade' AND symbol = '{symbol}'"
        )
        assert rows == [
            [str(EVENTS_PER_SYMBOL), str(EVENTS_PER_SYMBOL), "1", str(EVENTS_PER_SYMBOL)]
        ]


def test_network_policies_are_accepted(release: Release) -> None:
    """Every workload has its NetworkPolicy in the cluster. The local cluster's CNI (Debian's
    bridge plugin) does not enforce NetworkPolicies: accepted here, not proven."""
    manifest = release.cluster.helm("get", "manifest", RELEASE, "--namespace", release.namespace)
    expected = {
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(manifest.stdout)
        if doc and doc["kind"] == "NetworkPolicy"
    }
    assert len(expected) == len(SERVICES) + 1  # one per workload
    found = release.cluster.json("--namespace", release.namespace, "get", "networkpolicy")
    assert {item["metadata"]["name"] for item in found["items"]} == expected


def test_upgrade_rolls_what_changed_and_helm_test_passes(release: Release) -> None:
    before = {p["metadata"]["uid"]: p["metadata"]["labels"]["app.kubernetes.io/component"]
              for p in release.pods()}  # fmt: skip
    upgrade = release.cluster.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", release.namespace,
        "--values", str(release.values_file),
        "--set", "marketSim.config.SIM_MAX_EVENTS_PER_SYMBOL=0",  # a feed without end
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    assert upgrade.returncode == 0, f"{upgrade.stderr}\n{diagnose(release)}"
    wait_until(
        lambda: (
            not release.k("get", "pods", "-l", INSTANCE, "-o", "name").stdout.count("\n")
            > len(SERVICES) + 1
        ),
        120,
        "the old simulator pod to go",
    )
    after = {p["metadata"]["uid"] for p in release.pods()}
    replaced = {component for uid, component in before.items() if uid not in after}
    assert replaced == {"market-sim"}, f"replaced: {replaced}"

    # The feed flows again; `helm test --logs` passes and prints the test pod's log.
    test = release.cluster.helm(
        "test", RELEASE, "--namespace", release.namespace, "--logs", "--timeout", "5m"
    )
    assert test.returncode == 0, f"helm test --logs failed:\n{test.stdout}\n{test.stderr}"
    assert "OK: ticks are arriving in market_ticks" in test.stdout, test.stdout


def test_uninstall_keeps_only_the_data_volume_and_its_secret(release: Release) -> None:
    uninstall = release.cluster.helm(
        "uninstall", RELEASE, "--namespace", release.namespace, "--wait", "--timeout", "5m"
    )
    assert uninstall.returncode == 0, uninstall.stderr
    kinds = release.cluster.kubectl(
        "api-resources", "--verbs=list", "--namespaced", "-o", "name"
    ).stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]

    def left() -> set[tuple[str, str]] | None:
        items = release.cluster.json(
            "--namespace", release.namespace, "get", ",".join(kinds), "-l", INSTANCE
        )["items"]
        remaining = {(item["kind"], item["metadata"]["name"]) for item in items}
        pods = release.cluster.json("--namespace", release.namespace, "get", "pods")["items"]
        return remaining if not pods and len(remaining) <= 2 else None

    remaining = wait_until(left, 120, "the release's objects to go")
    assert remaining == {
        ("PersistentVolumeClaim", f"data-{RELEASE}-timescaledb-0"),
        ("Secret", f"{RELEASE}-timescaledb"),
    }
