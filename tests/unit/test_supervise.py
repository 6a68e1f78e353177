"""The local stack's supervision (tickpipe_localstack.supervise) on real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tickpipe_localstack import supervise
from tickpipe_localstack.supervise import NotReady, pid_alive, running_pid, terminate, wait_until

SCRIPT = Path(supervise.__file__)


def test_a_launched_process_is_found_by_its_pid_file_and_marker(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "pids" / "sleeper.pid", tmp_path / "logs" / "sleeper.log"
    pid = supervise.launch(pidfile, log, ["sleep", "37"])
    assert running_pid(pidfile, "sleep 37") == pid
    assert running_pid(pidfile, "something else") is None  # a recycled pid is not trusted
    assert terminate(pid, lambda: pid_alive(pid, "sleep 37"), timeout=10)
    assert running_pid(pidfile, "sleep 37") is None


def test_sigterm_then_sigkill(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; echo trapped; sleep 60; echo never"],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"trapped\n"  # the trap is set before we signal
    assert not terminate(stubborn.pid, lambda: stubborn.poll() is None, timeout=0.5)
    assert stubborn.returncode == -9
    stubborn.stdout.close()


def test_a_wait_fails_early_with_the_log_when_the_process_exits(tmp_path: Path) -> None:
    log = tmp_path / "boom.log"
    log.write_text("starting\nboom: no such setting\n")
    with pytest.raises(NotReady, match=r"exited while waiting for it(.|\n)*boom: no such"):
        wait_until(lambda: False, 30, "it", alive=lambda: False, log=log)
    with pytest.raises(NotReady, match=r"not within 0\.3s"):
        wait_until(lambda: False, 0.3, "it", alive=lambda: True)


def test_the_command_line_that_stack_sh_runs(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
        )

    pidfile, log = tmp_path / "x.pid", tmp_path / "x.log"
    started = run("launch", "--cwd", str(tmp_path), str(pidfile), str(log), "sleep", "41")
    assert started.returncode == 0, started.stderr
    assert run("pid", str(pidfile), "sleep 41").stdout.strip() == started.stdout.strip()
    stopped = run("stop", "sleeper", str(pidfile), "sleep 41", "10")
    assert "stopping sleeper" in stopped.stdout
    assert "stopped" in stopped.stdout
    assert not pidfile.exists()
    assert run("pid", str(pidfile), "sleep 41").returncode == 1
    assert run("http-ok", "http://127.0.0.1:1/").returncode == 1
