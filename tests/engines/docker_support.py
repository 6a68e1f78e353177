"""Talking to a real Docker engine from the live checks (tests/engines).

The engine is the one ``DOCKER_HOST`` names (``make test-deploy`` starts the project's own,
deploy/engines/docker.sh, and points ``DOCKER_HOST`` at it). The images are those
deploy/images/build.sh makes; their tags are read from it, so there is one list.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.availability import unavailable

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "deploy" / "images" / "build.sh"
TICKPIPE_SERVICES = ("producer-stocks", "producer-crypto", "consumer", "market-sim")

# How the chart and compose run every tickpipe container.
HARDENED = (
    "--read-only",
    "--tmpfs",
    "/tmp:size=64m,mode=1777",  # noqa: S108 - the container's own tmpfs
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges:true",
    "--user",
    "10001:10001",
)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stderr}")
    return result


@functools.cache
def build_script_tags() -> dict[str, str]:
    """The stand-in tags deploy/images/build.sh makes (its NAME_TAG=... lines)."""
    tags = re.findall(r"^([A-Z]+)_TAG=(\S+)$", BUILD_SH.read_text(), re.MULTILINE)
    return {name.lower(): tag for name, tag in tags}


def service_image(service: str) -> str:
    return f"tickpipe-{service}:local"


def require_engine_and_images() -> None:
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except FileNotFoundError:
        unavailable("Docker engine", "no docker CLI on PATH")
    if info.returncode != 0:
        unavailable(
            "Docker engine",
            "docker info fails; run make test-deploy (it starts deploy/engines/docker.sh)",
        )
    wanted = [*build_script_tags().values(), *(service_image(s) for s in TICKPIPE_SERVICES)]
    missing = [i for i in wanted if docker("image", "inspect", i, check=False).returncode]
    if missing:
        unavailable("images", f"{', '.join(missing)} not built; run deploy/images/build.sh")


def inspect(container: str) -> dict[str, Any]:
    data = json.loads(docker("inspect", container).stdout)
    assert isinstance(data, list)
    assert len(data) == 1
    return dict(data[0])


def health(container: str) -> str:
    state = inspect(container)["State"]
    return str(state.get("Health", {}).get("Status", state["Status"]))


def image_size_mb(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def non_json_lines(text: str) -> list[str]:
    """Lines of a log that are not one JSON object each (blank lines are not lines)."""
    bad = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict):
            bad.append(line)
    return bad
