"""The local cluster's helpers that need no cluster (deploy/cluster/): the image archive
writer and the build recipe's pins. Its daemons' supervisor is the stacks' one
(tickpipe_localstack.supervise, tests/unit/test_supervise.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"


def test_cluster_sh_runs_its_daemons_under_the_stacks_supervisor(tmp_path: Path) -> None:
    """cluster.sh's start / running / stop_daemon, sourced (no cluster, no root needed): a
    daemon started once, ready when its readiness command says so, stopped."""
    ready = tmp_path / "ready"
    script = f"""
        source {CLUSTER / "cluster.sh"}
        PROCS={tmp_path}/procs
        start sleep "test -e {ready}" 60 sh -c "sleep 1; touch {ready}; exec sleep 300"
        test -e {ready}
        running sleep && echo running
        start sleep true 60 sleep 300
        stop_daemon sleep 10
        running sleep || echo stopped
    """
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "running"
    assert out.stdout.splitlines()[-1] == "stopped"
    assert "sleep: started" in out.stderr
    assert "sleep: already running" in out.stderr  # the second start launched nothing
    assert "stopping sleep" in out.stdout
    assert (tmp_path / "procs" / "sleep.log").exists()
    assert not (tmp_path / "procs" / "sleep.pid").exists()


def test_image_archive_is_a_loadable_docker_archive(tmp_path: Path) -> None:
    program = tmp_path / "pause"
    program.write_bytes(b"\x7fELF not really a program")
    out = tmp_path / "image.tar"
    made = subprocess.run(
        [sys.executable, str(CLUSTER / "image_archive.py"), "--name", "example.local/pause:1",
         "--out", str(out), "--entrypoint", "/pause", "--port", "53/udp", f"{program}:/bin/pause"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with tarfile.open(out) as archive:
        (manifest,) = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config_bytes = archive.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        (layer_name,) = manifest["Layers"]
        layer_bytes = archive.extractfile(layer_name).read()  # type: ignore[union-attr]
    assert manifest["RepoTags"] == ["example.local/pause:1"]
    assert made.stdout.strip() == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["ExposedPorts"] == {"53/udp": {}}
    layer_path = tmp_path / "layer.tar"
    layer_path.write_bytes(layer_bytes)
    with tarfile.open(layer_path) as layer:
        assert layer.getnames() == ["bin", "bin/pause"]
        assert layer.extractfile("bin/pause").read() == program.read_bytes()  # type: ignore[union-attr]
    # The same input gives the same image.
    again = subprocess.run(
        [sys.executable, str(CLUSTER / "image_archive.py"), "--name", "example.local/pause:1",
         "--out", str(tmp_path / "again.tar"), "--entrypoint", "/pause", "--port", "53/udp",
         f"{program}:/bin/pause"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.stdout == made.stdout


def test_build_recipe_pins_every_staging_module_to_the_release() -> None:
    go_mod = (CLUSTER / "go.mod").read_text()
    assert "\tk8s.io/kubernetes v1.34.12" in go_mod
    replaced = [line.split() for line in go_mod.splitlines() if " => " in line]
    assert len(replaced) >= 30, "k8s.io/kubernetes has about 30 staging modules"
    for old, _, new, version in replaced:
        assert old == new, old
        assert old.startswith("k8s.io/"), old
        assert version == "v0.34.12", f"{old} {version}"
    build = (CLUSTER / "build.sh").read_text()
    assert "KUBE_VERSION=v1.34.12" in build
    assert "component-base/version" in build  # the servers report v1.34.12
