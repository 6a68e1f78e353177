"""The stacks' process supervision (tickpipe_localstack.supervise) on real processes: what
deploy/local/stack.sh and deploy/cluster/cluster.sh run, and what tests/processes.py uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickpipe_localstack import supervise
from tickpipe_localstack.supervise import (
    CommandCheck,
    NotReady,
    is_running,
    pid_alive,
    read_record,
    running_pid,
    start_time,
    terminate,
    wait_until,
)

SCRIPT = Path(supervise.__file__)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line, as the shell scripts run it (the system's python3 would do too)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process nobody asked the supervisor to start. Popen can return before the kernel has
    set the new program's command line (still empty): wait for it."""
    other = subprocess.Popen(["sleep", "300"])
    wait_until(lambda: pid_alive(other.pid, "sleep 300"), 10, "sleep to show its command line")
    yield other
    other.kill()
    other.wait()


def test_a_launched_process_is_found_by_its_pid_file_and_marker(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "pids" / "sleeper.pid", tmp_path / "logs" / "sleeper.log"
    pid = supervise.launch(pidfile, log, ["sleep", "37"])
    assert running_pid(pidfile, "sleep 37") == pid
    assert running_pid(pidfile, "something else") is None  # a recycled pid is not trusted
    assert terminate(pid, lambda: pid_alive(pid, "sleep 37"), timeout=10)
    assert running_pid(pidfile, "sleep 37") is None


def test_the_pid_file_records_the_start_time(tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    pid = supervise.launch(pidfile, tmp_path / "sleeper.log", ["sleep", "38"])
    try:
        started = start_time(pid)
        assert started is not None
        assert started.isdigit()
        assert pidfile.read_text() == f"{pid} {started}\n"
        assert read_record(pidfile) == (pid, started)
        assert is_running(pid, started, "sleep 38")
        assert not is_running(pid, str(int(started) + 1), "sleep 38")
    finally:
        assert terminate(pid, lambda: pid_alive(pid, "sleep 38"), timeout=10)
    assert not is_running(pid, started, "sleep 38")
    os.waitpid(pid, 0)  # our child: reaped here


def _open_files(pid: int) -> set[str]:
    """What the descriptors of ``pid`` point to (one may close while we read: skipped)."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            held.add(os.readlink(fd))
        except FileNotFoundError:
            continue
    return held


def test_a_launched_process_inherits_no_descriptor_of_its_caller(tmp_path: Path) -> None:
    """cluster.sh and stack.sh hold a flock on fd 8 / 9 while they start things: a daemon
    that inherited it would keep the lock taken (the next cluster.sh down waited forever)."""
    lock = (tmp_path / "lock").open("w")
    os.set_inheritable(lock.fileno(), True)
    try:
        ours = _open_files(os.getpid())  # the lock, pytest's capture files, ...
        pid = supervise.launch(tmp_path / "x.pid", tmp_path / "x.log", ["sleep", "39"])
        try:
            # Judged once it runs sleep, not while the launch is still between fork and exec.
            wait_until(lambda: pid_alive(pid, "sleep 39"), 10, "sleep to run")
            held = _open_files(pid)
            assert str(tmp_path / "lock") not in held
            # What it holds of ours is only what launch gave it; what it opens itself (sleep
            # reads locale files at start) is none of our business.
            assert held & ours <= {os.devnull, str(tmp_path / "x.log")}
        finally:
            assert terminate(pid, lambda: pid_alive(pid, "sleep 39"), timeout=10)
            os.waitpid(pid, 0)
    finally:
        lock.close()


def test_a_reused_pid_is_not_the_recorded_process(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    """The recorded pid now belongs to another process whose command line even contains the
    marker: its other start time gives it away, and a stop leaves it alone."""
    pidfile = tmp_path / "d.pid"
    pidfile.write_text(f"{stranger.pid} 1\n")
    assert running_pid(pidfile, "sleep") is None
    assert run("pid", str(pidfile), "sleep").returncode == 1
    stopped = run("stop", "d", str(pidfile), "sleep", "10")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopping" not in stopped.stdout
    assert not pidfile.exists()
    assert stranger.poll() is None, "stop signalled a process it did not start"


def test_pid_files_without_a_start_time_fall_back_to_the_marker(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    """PostgreSQL's postmaster.pid: the pid on the first line, the data directory on the
    second; the marker alone decides."""
    pidfile = tmp_path / "postmaster.pid"
    pidfile.write_text(f"{stranger.pid}\n/var/lib/data\n1700000000\n")
    assert read_record(pidfile) == (stranger.pid, None)
    assert running_pid(pidfile, "sleep 300") == stranger.pid
    assert running_pid(pidfile, "postgres") is None
    for junk in ("", "\n", "not a pid\n"):
        pidfile.write_text(junk)
        assert read_record(pidfile) is None
    assert read_record(tmp_path / "absent.pid") is None


def test_the_former_cluster_pid_record_is_still_read(
    tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    """A cluster started before the supervisors were merged can still be stopped."""
    started = start_time(stranger.pid)
    pidfile = tmp_path / "etcd.pid"
    record = {"pid": stranger.pid, "start_time": started, "argv": ["sleep", "300"]}
    pidfile.write_text(json.dumps(record) + "\n")
    assert running_pid(pidfile, "sleep") == stranger.pid
    pidfile.write_text(json.dumps({**record, "start_time": "1"}) + "\n")
    assert running_pid(pidfile, "sleep") is None
    pidfile.write_text("{broken\n")
    assert read_record(pidfile) is None


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


def test_a_readiness_command(tmp_path: Path) -> None:
    assert CommandCheck("test -d /")()
    failing = CommandCheck("echo not listening yet >&2; exit 3")
    assert not failing()
    assert failing.last_output == "not listening yet"
    silent = CommandCheck("exit 4")
    assert not silent()
    assert silent.last_output == "exit 4"
    # A check that hangs is cut off, with whatever it started in the background.
    hanging = CommandCheck(f"sleep 60 & echo $! >{tmp_path}/child; wait", timeout=0.5)
    assert not hanging()
    assert hanging.last_output == "no answer within 0.5s"
    child = int((tmp_path / "child").read_text())
    wait_until(lambda: not pid_alive(child, "sleep 60"), 10, "the check's child to be killed")


def test_start_launches_once_waits_until_ready_and_stop_is_idempotent(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    daemon = ["sh", "-c", f"sleep 1; touch {ready}; exec sleep 300"]
    pidfile, log = tmp_path / "d.pid", tmp_path / "d.log"
    started = run("start", "--ready-command", f"test -e {ready}", "--timeout", "60",
                  "d", str(pidfile), "sleep", str(log), "--", *daemon)  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert "d: started" in started.stderr
    assert ready.exists()  # start returned only once the daemon was ready
    record = read_record(pidfile)
    assert record is not None
    assert record[1] is not None
    again = run("start", "d", str(pidfile), "sleep", str(log), "--", *daemon)
    assert again.returncode == 0, again.stderr
    assert f"already running (pid {record[0]})" in again.stderr
    assert read_record(pidfile) == record
    assert run("pid", str(pidfile), "sleep").stdout.strip() == str(record[0])
    stopped = run("stop", "d", str(pidfile), "sleep", "10")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopping d (pid {record[0]}) ... stopped" in stopped.stdout
    assert run("pid", str(pidfile), "sleep").returncode == 1
    assert run("stop", "d", str(pidfile), "sleep", "10").returncode == 0  # idempotent


def test_start_reports_a_daemon_that_dies_before_it_is_ready(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "d.pid", tmp_path / "d.log"
    daemon = ["sh", "-c", "echo cannot bind; exit 3"]
    result = run("start", "--ready-command", "false", "--timeout", "60",
                 "d", str(pidfile), "sh", str(log), "--", *daemon)  # fmt: skip
    assert result.returncode == 1
    assert "exited while waiting for d to be ready" in result.stderr
    assert "cannot bind" in result.stderr  # the end of its log
    assert run("pid", str(pidfile), "sh").returncode == 1


def test_start_gives_up_after_its_timeout_saying_what_the_check_said(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "d.pid", tmp_path / "d.log"
    result = run("start", "--ready-command", "echo connection refused; false", "--timeout",
                 "1", "d", str(pidfile), "sleep", str(log), "--", "sleep", "300")  # fmt: skip
    try:
        assert result.returncode == 1
        assert "d to be ready: not within 1s" in result.stderr
        assert "(last check: connection refused)" in result.stderr
    finally:
        assert run("stop", "d", str(pidfile), "sleep", "10").returncode == 0
    assert not pidfile.exists()


def test_the_command_line_that_stack_sh_runs(tmp_path: Path) -> None:
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
    assert run("launch", str(pidfile), str(log)).returncode == 2  # no command
    assert run("start", "x", str(pidfile), "m", str(log), "--").returncode == 2
