"""Checks of the service images, without a Docker engine: the Dockerfiles (hadolint and the
image policy), the build context that .dockerignore lets through, and the kind flow that builds,
loads and runs them (deploy/kind).

The policy, per services/<service>/Dockerfile: multi-stage, every base image pinned to a specific
tag, the builder installs with `pip install --no-cache-dir -c constraints.txt`, the final stage
runs as a numeric non-root user with an exec-form ENTRYPOINT (the service's console script), a
HEALTHCHECK on /healthz, OCI labels, and a BACKUP_DIR volume for the producers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.availability import unavailable
from tests.deploy.service_settings import SERVICE_SETTINGS, known_variables

REPO = Path(__file__).resolve().parents[2]
SERVICES = tuple(SERVICE_SETTINGS)
PRODUCERS = ("producer-stocks", "producer-crypto")
BACKUP_DIR = "/var/lib/tickpipe/backup"
APP_UID = 10001
# The Python base: a specific patch release on a named Debian release, e.g. 3.12.13-slim-trixie.
PYTHON_TAG = re.compile(r"^3\.12\.\d+-slim-(bookworm|trixie)$")
OCI_LABELS = ("title", "description", "source", "licenses", "version")


# ------------------------------------------------------------------------ Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    flags: tuple[str, ...]

    def exec_form(self) -> list[str] | None:
        """The JSON-array form of the arguments (after the flags), or None for shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for name, value in re.findall(
                r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instruction.args
            ):
                values[name] = value.strip('"')
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for name, value in re.findall(r'([A-Za-z0-9_.-]+)=("[^"]*"|\S+)', instruction.args):
                values[name] = value.strip('"')
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage: continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    image = ""
    name: str | None = None
    body: list[Instruction] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM, with their defaults
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "ARG" and not image:
            arg, _, default = rest.partition("=")
            global_args[arg.strip()] = default.strip()
        elif keyword == "FROM":
            if image:
                stages.append(Stage(image, name, tuple(body)))
            parts = rest.split()
            # FROM ${BASE_IMAGE}: the image the Dockerfile builds on when no --build-arg is given
            image = re.sub(
                r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: global_args[m.group(1)], parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            body = []
        elif image:
            body.append(Instruction(keyword, rest, tuple(flags)))
    if image:
        stages.append(Stage(image, name, tuple(body)))
    return stages


def dockerfile(service: str) -> Path:
    return REPO / "services" / service / "Dockerfile"


@cache
def stages_of(service: str) -> list[Stage]:
    return parse_dockerfile(dockerfile(service).read_text())


def default_port(service: str) -> int:
    fields = SERVICE_SETTINGS[service].model_fields
    field = fields["port"] if service == "market-sim" else fields["http_port"]
    assert isinstance(field.default, int)
    return field.default


def port_variable(service: str) -> str:
    return "SIM_PORT" if service == "market-sim" else "HTTP_PORT"


# ---------------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str:
    local = REPO / ".venv" / "bin" / "hadolint"
    found = str(local) if local.is_file() else shutil.which("hadolint")
    if found is None:
        unavailable("hadolint", "neither .venv/bin/hadolint (make venv) nor hadolint on PATH")
    assert found is not None
    return found


def test_hadolint_finds_nothing_in_any_dockerfile() -> None:
    files = [str(dockerfile(s)) for s in SERVICES]
    # and the stand-ins deploy/images/build.sh makes where no registry is
    files += [str(p) for p in sorted((REPO / "deploy" / "images" / "standin").glob("*/Dockerfile"))]
    # Every level counts, style included; a .hadolint.yaml may ignore rules, each with a reason.
    result = subprocess.run(
        [hadolint_binary(), "--format", "json", "--failure-threshold", "style", *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_hadolint_configuration_explains_each_ignored_rule() -> None:
    config = REPO / ".hadolint.yaml"
    if not config.exists():
        return  # nothing is ignored
    lines = config.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\s*-\s*(DL\d+|SC\d+)\b(.*)", line)
        if match:
            reason = match.group(2).strip() or (lines[number - 1].strip() if number else "")
            assert "#" in reason, f".hadolint.yaml ignores {match.group(1)} without a reason"


# ------------------------------------------------------------------------------ the policy


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_is_built_in_two_stages_on_a_pinned_base(service: str) -> None:
    stages = stages_of(service)
    assert len(stages) >= 2, "multi-stage: a builder stage and a runtime stage"
    names = {s.name for s in stages[:-1]}
    copies = [i for i in stages[-1].all("COPY") if any(f.startswith("--from=") for f in i.flags)]
    assert copies, "the runtime stage copies its virtualenv from the builder"
    for instruction in copies:
        source = next(f for f in instruction.flags if f.startswith("--from="))
        assert source.removeprefix("--from=") in names, f"{source} is not an earlier stage"
    for stage in stages:
        repository, _, tag = stage.image.partition("@")[0].partition(":")
        assert tag, f"{stage.image}: pin a tag"
        assert tag != "latest", f"{stage.image}: 'latest' is not a pin"
        if repository == "python":
            assert PYTHON_TAG.match(tag), (
                f"{stage.image}: a Python patch release and Debian release"
            )
    # the virtualenv's interpreter links to the base image's: both stages must use the same one
    assert len({s.image for s in stages}) == 1


@pytest.mark.parametrize("service", SERVICES)
def test_the_builder_installs_the_pinned_packages_into_a_virtualenv(service: str) -> None:
    builder = stages_of(service)[0]
    runs = " && ".join(i.args for i in builder.all("RUN"))
    install = re.search(r"pip install ([^&;]*)", runs)
    assert install, "the builder runs pip install"
    words = install.group(1).split()
    assert "--no-cache-dir" in words
    assert words[words.index("-c") + 1] == "constraints.txt", "versions come from constraints.txt"
    targets = {w.removeprefix("./").rstrip("/") for w in words if "/" in w}
    assert targets == {"libs/common", f"services/{service}"}
    assert "venv" in runs, "into a virtualenv"
    # what the builder copies in is what .dockerignore lets into the context
    context = build_context()
    for instruction in builder.all("COPY"):
        for source in instruction.args.split()[:-1]:
            assert (REPO / source).exists(), source
            if (REPO / source).is_dir():
                sent = [p for p in context if p.startswith(source.rstrip("/") + "/")]
                assert sent, f"nothing of {source} is in the build context"
            else:
                assert source in context, f"{source} is kept out of the build context"


@pytest.mark.parametrize("service", SERVICES)
def test_the_runtime_stage_runs_the_service_as_a_non_root_user(service: str) -> None:
    final = stages_of(service)[-1]
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot can check it"
    assert int(user.split(":")[0]) == APP_UID
    runs = " ".join(i.args for i in final.all("RUN"))
    assert "pip install" not in runs, "nothing is installed in the runtime stage"
    assert final.env().get("PYTHONDONTWRITEBYTECODE") == "1", "a read-only root filesystem"

    entrypoint = final.all("ENTRYPOINT")
    assert len(entrypoint) == 1
    command = entrypoint[0].exec_form()
    assert command is not None, "exec form: the service is PID 1 and receives SIGTERM"
    assert command == [f"tickpipe-{service}"]
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())
    assert command[0] in scripts["project"]["scripts"], "the console script of the package"
    for cmd in final.all("CMD"):
        assert cmd.exec_form() is not None, "CMD in exec form"
    for stop in final.all("STOPSIGNAL"):
        assert stop.args == "SIGTERM"


@pytest.mark.parametrize("service", SERVICES)
def test_the_healthcheck_asks_the_services_health_endpoint(service: str) -> None:
    final = stages_of(service)[-1]
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    check = checks[0]
    assert check.args.startswith("CMD "), "HEALTHCHECK CMD (not NONE)"
    command = Instruction("CMD", check.args.removeprefix("CMD ").strip(), ()).exec_form()
    assert command is not None, "exec form: no shell in the way"
    assert command[:2] == ["python", "-c"], "Python's urllib: a slim image has no curl"
    code = command[2]
    assert "/healthz" in code
    variable, port = port_variable(service), default_port(service)
    assert f"os.environ.get('{variable}', '{port}')" in code, "the port the service listens on"
    assert variable in known_variables(service)
    assert [e.args for e in final.all("EXPOSE")] == [str(port)]


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_carries_oci_labels(service: str) -> None:
    final = stages_of(service)[-1]
    labels = final.labels()
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), f"label {name}"
    assert labels["org.opencontainers.image.title"] == f"tickpipe-{service}"
    declared = {a.args.split("=")[0] for a in final.all("ARG")}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert "VERSION" in declared


@pytest.mark.parametrize("service", SERVICES)
def test_only_settings_the_service_knows_are_baked_in(service: str) -> None:
    final = stages_of(service)[-1]
    not_settings = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert set(final.env()) - not_settings <= known_variables(service)
    volumes = [v for i in final.all("VOLUME") for v in (i.exec_form() or i.args.split())]
    if service in PRODUCERS:
        assert final.env().get("BACKUP_DIR") == BACKUP_DIR
        assert volumes == [BACKUP_DIR], "the CSV backup lives on a volume"
        runs = " ".join(i.args for i in final.all("RUN"))
        # the backup folder belongs to the service's user (a fresh named volume copies that)
        assert f"-o {APP_UID} -g {APP_UID}" in runs
        assert BACKUP_DIR in runs
    else:
        assert volumes == []


# ------------------------------------------------------------------ .dockerignore semantics


class DockerIgnore:
    """Docker's .dockerignore rules: patterns in order, the last one that matches a path or
    one of its parent folders decides; `!` re-includes; `**` spans folders."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            self.patterns.append((negated, re.compile(self._regex(pattern)), pattern))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = [], 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out.append(pattern[i : end + 1])
                i = end + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        return "^" + "".join(out) + "$"

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for negated, regex, _ in self.patterns:
            if any(regex.match(c) for c in candidates):
                excluded = not negated
        return excluded

    def may_include_below(self, folder: str) -> bool:
        """Whether some `!` pattern could re-include a path inside an excluded folder."""
        parts = folder.split("/")
        for negated, _, pattern in self.patterns:
            if not negated:
                continue
            head = pattern.split("/")
            if "**" in head[: len(parts)]:
                return True
            if len(head) > len(parts) and all(
                fnmatchcase(p, h) for p, h in zip(parts, head, strict=False)
            ):
                return True
        return False

    def context(self, root: Path) -> set[str]:
        """The files a build sends: every path under root that is not excluded."""
        kept: set[str] = set()
        for folder, dirs, files in os.walk(root):
            rel = Path(folder).relative_to(root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            dirs[:] = [
                d
                for d in dirs
                if not (self.excluded(prefix + d) and not self.may_include_below(prefix + d))
                and d != ".git"
            ]
            kept.update(prefix + f for f in files if not self.excluded(prefix + f))
        return kept


@cache
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())


def test_the_dockerignore_rules_are_read_as_docker_reads_them() -> None:
    rules = DockerIgnore("*\n!keep/\n!a/*/b.txt\n**/cache\n# comment\n")
    assert rules.excluded("x.txt")
    assert rules.excluded("deep/x.txt")
    assert not rules.excluded("keep/x.txt")
    assert not rules.excluded("keep/sub/x.txt")
    assert rules.excluded("keep/cache/x.txt"), "a later pattern wins"
    assert not rules.excluded("a/one/b.txt")
    assert rules.excluded("a/one/c.txt")
    assert rules.may_include_below("a")
    assert rules.may_include_below("a/one")
    assert not rules.may_include_below("deep")


@cache
def build_context() -> frozenset[str]:
    return frozenset(dockerignore().context(REPO))


def test_the_build_context_holds_what_the_builds_install() -> None:
    context = build_context()
    needed = {"constraints.txt", "libs/common/pyproject.toml"}
    for folder in [REPO / "libs" / "common", *(REPO / "services" / s for s in SERVICES)]:
        needed.add((folder / "pyproject.toml").relative_to(REPO).as_posix())
        for path in (folder / "src").rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sql", ".typed"}:
                rel = path.relative_to(REPO).as_posix()
                if "egg-info" not in rel and "__pycache__" not in rel:
                    needed.add(rel)
    assert needed - context == set(), "left out of the build context"


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    rules = dockerignore()
    for path in (
        ".env",
        "deploy/compose/.env",
        ".venv/bin/python",
        ".run/postgres/data/PG_VERSION",
        ".git/config",
        ".tools/bin/helm",
        "tests/conftest.py",
        "deploy/local/kafka/libs/kafka_2.13-4.3.1.jar",
        "services/consumer/src/tickpipe_consumer.egg-info/PKG-INFO",
        "libs/common/src/tickpipe_common/__pycache__/schema.cpython-312.pyc",
    ):
        assert rules.excluded(path), f"{path} reaches the build context"
    context = build_context()
    assert not [p for p in context if p.startswith(("tests/", "deploy/", ".git"))]
    assert not [p for p in context if Path(p).name == ".env" or p.endswith(".pyc")]


# ------------------------------------------------------------------------------------ kind

KIND = REPO / "deploy" / "kind"
CHART = REPO / "deploy" / "helm" / "tickpipe"


def merged(*documents: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, anything else is replaced."""
    result: dict[str, Any] = {}
    for document in documents:
        for key, value in document.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def kind_values() -> dict[str, Any]:
    files = [CHART / "values.yaml", CHART / "ci" / "single-node.yaml", KIND / "values-kind.yaml"]
    return merged(*(yaml.safe_load(f.read_text()) or {} for f in files))


def test_the_kind_node_image_is_pinned_by_digest() -> None:
    config = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    script = (KIND / "kind.sh").read_text()
    assert f"CLUSTER={config['name']}" in script


def test_kind_runs_the_images_it_builds_and_loads() -> None:
    values = kind_values()
    image = values["image"]
    assert image["pullPolicy"] == "Never", "the images come from `kind load`, not a registry"
    script = (KIND / "kind.sh").read_text()
    services = re.search(r"^SERVICES=\(([^)]*)\)", script, re.MULTILINE)
    assert services is not None
    assert sorted(services.group(1).split()) == sorted(SERVICES)
    assert '--tag "tickpipe-$svc:local"' in script
    assert 'kind load docker-image "tickpipe-$svc:local"' in script
    for key in ("marketSim", "producerStocks", "producerCrypto", "consumer"):
        assert not values[key]["image"]["repository"]
        assert not values[key]["image"]["tag"]
    assert image["registry"] == ""
    assert image["repositoryPrefix"] == "tickpipe-"
    assert image["tag"] == "local"


def test_the_kind_values_fit_the_charts_schema() -> None:
    schema_file = CHART / "values.schema.json"
    if not schema_file.exists():
        pytest.fail("the chart has no values.schema.json to check the kind values against")
    values = kind_values()
    jsonschema.validate(values, json.loads(schema_file.read_text()))
    assert values["kafka"]["nodePool"]["replicas"] == 1, "one kind node: one Kafka node"


def test_kind_installs_strimzi_from_its_chart_at_the_pinned_version() -> None:
    script = (KIND / "kind.sh").read_text()
    assert "STRIMZI_VERSION=1.2.0" in script
    assert "STRIMZI_CHART=strimzi-kafka-operator" in script
    assert '--version "$STRIMZI_VERSION"' in script
    # every cluster call goes to the kind cluster's own context
    for line in script.splitlines():
        call = line.strip()
        if call.startswith(("kubectl ", '"$HELM_BIN" ')):
            assert "--context" in call or "--kube-context" in call, call
