"""Helpers of the live chart test (tests/engines/test_chart_on_cluster.py): find the cluster,
run kubectl and helm against it, put the images on its node, and give it a volume.

The cluster is the one KUBECONFIG names, else the local one of ``make cluster-up``
(deploy/cluster/cluster.sh). Only on the local cluster does the test load images into the
node (``cluster.sh load``) and make a local PersistentVolume when no StorageClass is the
default: the node is this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.availability import unavailable

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "deploy" / "cluster" / "cluster.sh"
BUILD_SH = REPO / "deploy" / "cluster" / "build.sh"
DOCKER_SH = REPO / "deploy" / "engines" / "docker.sh"
HELM = REPO / ".tools" / "bin" / "helm"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl_bin: str
    local: bool  # the cluster of deploy/cluster/cluster.sh: its node is this machine

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_bin, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed:\n{result.stderr}{result.stdout}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: str, *args: str) -> str:
        return self.kubectl("apply", *args, "-f", "-", stdin=manifest).stdout

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HELM), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )


def find_cluster() -> Cluster:
    if not HELM.is_file():
        unavailable("helm", f"{HELM.relative_to(REPO)} is missing; run `make tools`")
    given = os.environ.get("KUBECONFIG", "")
    local_config = Path(
        subprocess.run(["bash", str(CLUSTER_SH), "env"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .removeprefix("export KUBECONFIG=")
    )
    local = not given or Path(given).resolve() == local_config.resolve()
    if local:
        bin_dir = subprocess.run(
            ["bash", str(BUILD_SH), "--print"], capture_output=True, text=True, check=True
        ).stdout.strip()
        kubectl = str(Path(bin_dir) / "kubectl")
        kubeconfig = local_config
        if not kubeconfig.is_file() or not Path(kubectl).is_file():
            unavailable(
                "a Kubernetes cluster", "no KUBECONFIG and no local cluster: make cluster-up"
            )
    else:
        kubectl = shutil.which("kubectl") or ""
        kubeconfig = Path(given)
        if not kubectl:
            unavailable("kubectl", "not on PATH (needed for the cluster KUBECONFIG names)")
    cluster = Cluster(kubeconfig=kubeconfig, kubectl_bin=kubectl, local=local)
    probe = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=30)
    if probe.returncode != 0:
        unavailable("a Kubernetes cluster", f"{kubeconfig} does not answer: {probe.stderr.strip()}")
    return cluster


def docker_env() -> dict[str, str]:
    """The environment for `docker` commands: the project's engine (deploy/engines/docker.sh)
    when it runs, else whatever DOCKER_HOST says."""
    env = dict(os.environ)
    if DOCKER_SH.is_file():
        out = subprocess.run(
            ["bash", str(DOCKER_SH), "env"], capture_output=True, text=True, check=False
        )
        for line in out.stdout.splitlines():
            if line.startswith("export DOCKER_HOST="):
                env["DOCKER_HOST"] = line.split("=", 1)[1].strip("'\"")
    return env


def load_images(cluster: Cluster, images: list[str]) -> None:
    """Copy the images from the Docker engine into the local cluster's node (idempotent)."""
    if not cluster.local:
        return  # another cluster pulls them from wherever its values say
    if shutil.which("docker") is None:
        unavailable("docker", "the images are loaded from a Docker engine")
    env = docker_env()
    for image in images:
        if subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, env=env, check=False
        ).returncode:
            unavailable(f"the image {image}", "build it first: deploy/images/build.sh")
    load = subprocess.run(
        ["bash", str(CLUSTER_SH), "load", *images],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert load.returncode == 0, f"cluster.sh load failed:\n{load.stderr}{load.stdout}"


def tag_image(cluster: Cluster, source: str, target: str) -> None:
    """Another name for an image in the local cluster's node."""
    if cluster.local:
        subprocess.run(["bash", str(CLUSTER_SH), "tag", source, target], check=True, timeout=60)


def default_storage_class(cluster: Cluster) -> str | None:
    for item in cluster.json("get", "storageclass")["items"]:
        annotations = item["metadata"].get("annotations") or {}
        if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
            return str(item["metadata"]["name"])
    return None


def local_volume_manifest(name: str, storage_class: str, path: Path, node: str) -> str:
    """A StorageClass without a provisioner and one local PersistentVolume on the node."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "StorageClass",
                    "metadata": {"name": storage_class},
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "WaitForFirstConsumer",
                    "reclaimPolicy": "Retain",
                },
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": name},
                    "spec": {
                        "capacity": {"storage": "2Gi"},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": storage_class,
                        "local": {"path": str(path)},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": [node],
                                            }
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                },
            ],
        }
    )


def wait_until(condition: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll ``condition`` until it returns something truthy; return that. Slower polling
    than tests.processes.wait_for: each check here is a kubectl process."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
