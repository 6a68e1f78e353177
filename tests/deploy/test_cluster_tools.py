"""The local cluster's helpers that need no cluster (deploy/cluster/): the daemon supervisor,
the image archive writer, and the build recipe's pins."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"


def supervise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CLUSTER / "supervise.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_supervise_starts_once_waits_for_ready_and_stops(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    daemon = ["sh", "-c", f"sleep 1; touch {marker}; exec sleep 300"]
    started = supervise("start", "d", "--dir", str(tmp_path), "--ready", f"test -e {marker}",
                        "--", *daemon)  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert marker.exists()  # start returned only once the daemon was ready
    record = json.loads((tmp_path / "d.pid").read_text())
    again = supervise("start", "d", "--dir", str(tmp_path), "--", *daemon)
    assert again.returncode == 0
    assert "already running" in again.stderr
    assert json.loads((tmp_path / "d.pid").read_text())["pid"] == record["pid"]
    assert supervise("running", "d", "--dir", str(tmp_path)).returncode == 0
    stopped = supervise("stop", "d", "--dir", str(tmp_path), "--timeout", "10")
    assert stopped.returncode == 0, stopped.stderr
    assert supervise("running", "d", "--dir", str(tmp_path)).returncode == 1
    assert supervise("stop", "d", "--dir", str(tmp_path)).returncode == 0  # idempotent


def test_supervise_reports_a_daemon_that_dies_before_it_is_ready(tmp_path: Path) -> None:
    result = supervise("start", "d", "--dir", str(tmp_path), "--ready", "false", "--timeout",
                       "30", "--", "sh", "-c", "echo cannot bind; exit 3")  # fmt: skip
    assert result.returncode == 1
    assert "exited" in result.stderr
    assert "cannot bind" in result.stderr


def test_a_stale_pid_file_never_names_another_process(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "300"])
    try:
        # A recorded pid that now belongs to an unrelated process (another start time).
        record = {"pid": other.pid, "start_time": "1", "argv": ["gone"]}
        (tmp_path / "d.pid").write_text(json.dumps(record))
        assert supervise("running", "d", "--dir", str(tmp_path)).returncode == 1
        assert supervise("stop", "d", "--dir", str(tmp_path)).returncode == 0
        assert other.poll() is None, "stop signalled a process it did not start"
    finally:
        other.kill()
        other.wait()


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
