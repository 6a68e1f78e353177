"""Helpers of the Helm chart checks (tests/deploy/test_chart.py): run the pinned helm, render
the chart once per values file, and validate objects against the Kubernetes schemas
(kubernetes-validate) and the CRD schemas of Strimzi and the Prometheus Operator."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml
from kubernetes_validate import utils as kubernetes_validate  # type: ignore[import-untyped]

from tests.availability import unavailable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "tickpipe"
HELM = REPO / ".tools" / "bin" / "helm"
# CI clones the repository beside shared/, so the CRD schemas are at ../shared/crds.
CRDS = REPO.parent / "shared" / "crds"

# The Kubernetes version the chart is rendered for and validated against.
KUBE_VERSION = "1.34"
RELEASE = "demo"
NAMESPACE = "markets"

Manifest = dict[str, Any]

# API groups whose objects are checked against CRD schemas instead of Kubernetes' own.
CRD_GROUPS = ("kafka.strimzi.io", "monitoring.coreos.com")


def helm_binary() -> Path:
    if not HELM.is_file():
        unavailable("helm", f"{HELM.relative_to(REPO)} is missing; run `make tools`")
    return HELM


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, check=False, timeout=120
    )


def template_args(values_file: Path | None, *extra: str) -> list[str]:
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        f"{KUBE_VERSION}.0",
    ]
    if values_file is not None:
        args += ["--values", str(values_file)]
    return args + list(extra)


@dataclass
class Render:
    """The chart rendered with one values file (None: the defaults)."""

    name: str
    values_file: Path | None
    objects: list[Manifest] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def values(self) -> dict[str, Any]:
        """The values the chart saw: values.yaml with the values file merged over it."""
        merged = yaml.safe_load((CHART / "values.yaml").read_text())
        if self.values_file is not None:
            _merge(merged, yaml.safe_load(self.values_file.read_text()) or {})
        assert isinstance(merged, dict)
        return merged


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def render(name: str, values_file: Path | None) -> Render:
    result = run_helm(*template_args(values_file))
    assert result.returncode == 0, f"helm template ({name}) failed:\n{result.stderr}"
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Render(name=name, values_file=values_file, objects=objects)


# -- pods and containers ------------------------------------------------------------------


def pod_spec(obj: Manifest) -> dict[str, Any] | None:
    """The pod spec of a workload or Pod, else None."""
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        template: dict[str, Any] = obj["spec"]["template"]["spec"]
        return template
    if obj["kind"] == "CronJob":
        job: dict[str, Any] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return job
    return None


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {}
    for var in container.get("env") or []:
        assert var["name"] not in env, f"{container['name']}: {var['name']} is set twice"
        env[var["name"]] = var
    return env


def component(obj: Manifest) -> str:
    return str(obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def decoded_secret_data(secret: Manifest) -> dict[str, str]:
    return {
        key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()
    }


def label_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# -- schemas ------------------------------------------------------------------------------


def validate_kubernetes(obj: Manifest) -> None:
    """Strict validation against the Kubernetes OpenAPI schema of KUBE_VERSION (unknown
    fields are errors). Raises jsonschema.ValidationError or SchemaNotFoundError."""
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


SchemaNotFound = kubernetes_validate.SchemaNotFoundError
ValidationError = jsonschema.ValidationError


def _closed(schema: Any) -> Any:
    """A CRD openAPIV3Schema made strict the way the API server is: fields a structural
    schema does not declare are pruned there (and rejected by `kubectl apply
    --validate=strict`); here they are errors, so a misspelt field cannot pass unnoticed."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        closed.get("type") == "object"
        and "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@cache
def crd_validators() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) → a jsonschema validator, for every served version of every CRD
    in ../shared/crds. Empty when that folder is absent."""
    validators: dict[tuple[str, str], Any] = {}
    if not CRDS.is_dir():
        return validators
    for path in sorted(CRDS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if not version.get("served"):
                    continue
                schema = _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                cls = jsonschema.validators.validator_for(schema, jsonschema.Draft7Validator)
                validators[(f"{group}/{version['name']}", kind)] = cls(schema)
    return validators


def is_custom_resource(obj: Manifest) -> bool:
    return str(obj["apiVersion"]).split("/")[0] in CRD_GROUPS


def validate_custom_resource(obj: Manifest) -> None:
    validator = crd_validators().get((obj["apiVersion"], obj["kind"]))
    assert validator is not None, (
        f"no served CRD version for {obj['apiVersion']} {obj['kind']} in {CRDS}"
    )
    validator.validate(obj)


# Object names: DNS-1123 subdomains; Services and the like: DNS-1123 labels.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def name_problems(obj: Manifest) -> list[str]:
    problems = []
    name = str(obj["metadata"].get("name", ""))
    if obj["kind"] in ("Service", "Namespace"):
        if not DNS_LABEL.match(name) or len(name) > 63:
            problems.append(f"{obj['kind']} name {name!r} is not a DNS-1123 label")
    elif not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problems.append(f"{obj['kind']} name {name!r} is not a DNS-1123 subdomain")
    for key, value in (obj["metadata"].get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"{obj['kind']} {name}: label {key}={value!r} is not a valid value")
    return problems
