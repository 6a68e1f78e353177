"""`make up` and `make down` for real: the compose stack on a real Docker engine, on stand-ins.

``make up`` runs deploy/compose/run.sh, which finds the upstream images missing and the
stand-ins built (deploy/images/build.sh) and runs compose with deploy/compose/standins.yaml.
The stack runs under a project name of its own and on free ports, so it meets no other stack on
the machine. The simulator sends a fixed number of events per symbol (advancing only while
subscribed) and the producers publish
every tick (PUBLISH_MODE=every_tick), so what lands in market_ticks must equal, per symbol and
kind, what the simulator's /stats says it sent. Prometheus must scrape every target and load
every rule the chart ships. ``make down`` must leave nothing running. A failing compose command
(here: pulling upstream images where no registry answers) must fail ``make up``.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.support import sim_run_over, sim_sent
from tests.engines.docker_support import REPO, docker, inspect, require_engine_and_images
from tests.processes import free_port, http_json, wait_for

PROJECT = "tickpipe-engines"
EVENTS_PER_SYMBOL = 150
ALERT_RULES = REPO / "deploy" / "helm" / "tickpipe" / "files" / "alerts"
SERVICES = {
    "kafka",
    "kafka-topics",
    "timescaledb",
    "market-sim",
    "producer-stocks",
    "producer-crypto",
    "consumer",
    "prometheus",
}
PORT_VARIABLES = (
    "TICKPIPE_KAFKA_PORT",
    "TICKPIPE_PG_PORT",
    "TICKPIPE_PROMETHEUS_PORT",
    "TICKPIPE_SIM_PORT",
    "TICKPIPE_PRODUCER_STOCKS_PORT",
    "TICKPIPE_PRODUCER_CRYPTO_PORT",
    "TICKPIPE_CONSUMER_PORT",
    "TICKPIPE_GRAFANA_PORT",
)


def make(
    target: str, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def containers(project: str) -> dict[str, str]:
    """The project's containers (running or not): service name -> container id."""
    out = docker(
        "ps",
        "--all",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={project}",
    ).stdout.split()
    found = {}
    for container in out:
        labels = inspect(container)["Config"]["Labels"]
        found[labels["com.docker.compose.service"]] = container
    return found


def environment(project: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKPIPE_", "ALPACA_"))}
    env.update({name: str(free_port()) for name in PORT_VARIABLES})
    env.update(
        TICKPIPE_STACK="compose",
        TICKPIPE_COMPOSE_PROJECT=project,
        PUBLISH_MODE="every_tick",
        SIM_MAX_EVENTS_PER_SYMBOL=str(EVENTS_PER_SYMBOL),
        SIM_TRADING="while_subscribed",  # every event of the fixed run reaches a producer
        SIM_RATE_PER_SYMBOL="20",
        **extra,
    )
    return env


def remove_project(env: dict[str, str]) -> None:
    subprocess.run(
        ["bash", str(REPO / "deploy" / "compose" / "run.sh"), "down", "--volumes"],
        capture_output=True,
        check=False,
        timeout=300,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    require_engine_and_images()
    env = environment(PROJECT)
    if containers(PROJECT):  # a run that died half-way: this project is the test's own
        remove_project(env)
    try:
        up = make("up", env)
        assert up.returncode == 0, f"make up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        yield {"env": env, "up": up}
    finally:
        remove_project(env)


def port(stack: dict[str, Any], variable: str) -> str:
    return str(stack["env"][variable])


def test_make_up_runs_the_stack_on_the_standins(stack: dict[str, Any]) -> None:
    out = stack["up"].stdout
    assert "images: standin" in out
    assert "tickpipe is up" in out
    assert "Grafana          not running: it has no stand-in image" in out


def test_every_service_goes_healthy(stack: dict[str, Any]) -> None:
    found = containers(PROJECT)
    assert set(found) == SERVICES, "every service of the stand-in stack, Grafana left out"
    for service, container in found.items():
        state = inspect(container)["State"]
        if service == "kafka-topics":  # a job: created the topics and exited
            assert (state["Status"], state["ExitCode"]) == ("exited", 0)
        else:
            assert state["Status"] == "running", service
            assert state["Health"]["Status"] == "healthy", service


def stored(stack: dict[str, Any]) -> Counter[tuple[str, str]]:
    out = docker(
        "exec",
        containers(PROJECT)["timescaledb"],
        "psql",
        "-X",
        "-At",
        "-F",
        "|",
        "-U",
        "tickpipe",
        "-d",
        "marketdata",
        "-c",
        "SELECT symbol, kind, count(*) FROM market_ticks GROUP BY 1, 2",
    ).stdout
    rows: Counter[tuple[str, str]] = Counter()
    for line in out.splitlines():
        symbol, kind, count = line.split("|")
        rows[(symbol, kind)] = int(count)
    return rows


def test_rows_match_the_simulators_stats(stack: dict[str, Any]) -> None:
    stats_url = f"http://127.0.0.1:{port(stack, 'TICKPIPE_SIM_PORT')}/stats"

    # The run is over when the simulator says nothing more will be generated and it has sent
    # every generated event of the kinds it sends the producers (sim_run_over).
    def run_finished() -> bool:
        return sim_run_over(http_json(stats_url))

    wait_for(run_finished, 180, f"the simulator to finish its run of {EVENTS_PER_SYMBOL} events")
    stats = http_json(stats_url)
    sent = sim_sent(stats)
    assert sum(sent.values()) == stats["totals"]["messages"]
    assert {symbol for symbol, _ in sent} >= {"AAPL", "BTC/USD"}, "stocks and crypto"
    wait_for(lambda: stored(stack) == sent, 120, "market_ticks to hold what the simulator sent")
    assert sim_sent(http_json(stats_url)) == sent, "the feed had ended"


def rule_count() -> int:
    total = 0
    for path in sorted(ALERT_RULES.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        groups = document.get("spec", document)["groups"]
        total += sum(len(group["rules"]) for group in groups)
    return total


def test_prometheus_has_every_target_up_and_the_rules_loaded(stack: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{port(stack, 'TICKPIPE_PROMETHEUS_PORT')}/api/v1"
    jobs = {"prometheus", "market-sim", "producer-stocks", "producer-crypto", "consumer"}

    def targets_up() -> bool:
        targets = http_json(f"{base}/targets")["data"]["activeTargets"]
        return {t["labels"]["job"] for t in targets} == jobs and all(
            t["health"] == "up" for t in targets
        )

    wait_for(targets_up, 120, "every Prometheus target to be up")

    def rules_evaluated() -> bool:
        groups = http_json(f"{base}/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == rule_count() and all(rule["health"] == "ok" for rule in rules)

    wait_for(rules_evaluated, 120, f"Prometheus to load and evaluate all {rule_count()} rules")


def test_make_down_leaves_nothing_running(stack: dict[str, Any]) -> None:
    down = make("down", stack["env"], timeout=300)
    assert down.returncode == 0, down.stderr
    assert containers(PROJECT) == {}
    networks = docker(
        "network", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT}"
    ).stdout.split()
    assert networks == []


def test_a_failing_compose_command_fails_make_up() -> None:
    """Upstream images where no registry answers: the pull fails, and so does make up."""
    require_engine_and_images()
    project = f"{PROJECT}-fails"
    env = environment(project, TICKPIPE_IMAGES="upstream")
    missing = [
        image
        for image in ("apache/kafka:4.3.1", "timescale/timescaledb:2.29.2-pg17")
        if docker("image", "inspect", image, check=False).returncode != 0
    ]
    if not missing:
        pytest.fail("the upstream images are on this engine: this check needs them absent")
    try:
        up = make("up", env, timeout=300)
        assert up.returncode != 0, "make up failed"
        assert "tickpipe is up" not in up.stdout
        assert "deploy/images/build.sh standins" in up.stderr
        assert containers(project) == {}
    finally:
        remove_project(env)
