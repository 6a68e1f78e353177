"""Process supervision for the local stacks and the tests: pid files, readiness waits, stops.

One implementation of what ``deploy/local/stack.sh``, the local Kubernetes of
``deploy/cluster/cluster.sh`` and the tests' process helpers (``tests/processes.py``) need:

- a long-running process is *launched* in a session of its own (a Ctrl-C in the terminal
  that started it never reaches it), stdin from /dev/null, output appended to its log, no
  other descriptor of its caller's (a script's lock must not outlive the script), and its
  pid written to a pid file together with its *start time* (field 22 of
  ``/proc/<pid>/stat``, clock ticks since boot): ``<pid> <start time>`` on one line;
- a pid file is *trusted* only while that pid runs, started at the recorded time, and its
  command line contains a marker (the config file, module or program it was started with),
  so a stale file pointing at a pid the kernel has since given to another process is never
  mistaken for the service, and a stop never signals a stranger. A pid file written by the
  program itself (PostgreSQL's ``postmaster.pid``) has no start time: the marker alone decides;
- *readiness* is a condition polled until it holds (an HTTP answer, or a shell command that
  exits 0), failing early when the process exits and saying why with the end of its log;
- a *start* is idempotent: a process that runs is left alone, otherwise it is launched; then
  its readiness is awaited;
- a *stop* is SIGTERM, a wait, then SIGKILL. Only the recorded pid is signalled: children
  that outlive it (containerd's shims) are the caller's to clean up.

Only the standard library is used, so the shell scripts can run this file with the system's
``python3`` before any virtualenv exists: ``python3 supervise.py COMMAND ...`` (see ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

POLL_SECONDS = 0.2
KILL_WAIT_SECONDS = 10.0
COMMAND_CHECK_SECONDS = 30.0  # one run of a readiness command; longer counts as "not ready"
COMMAND_POLL_SECONDS = 0.5  # a readiness command is a process (curl, kubectl): not too often


class NotReady(Exception):
    """A readiness wait failed: the process exited, or the time ran out."""


# ------------------------------------------------------------------------------ pids


def start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat``: when ``pid`` started (clock ticks since boot), which
    no later process with the same pid can share; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ")"
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (a zombie's is empty)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    text = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return bool(text.strip()) and marker in text


def is_running(pid: int, started: str | None, marker: str) -> bool:
    """``pid`` runs, is the process that started at ``started`` (when known), and its command
    line contains ``marker``."""
    if started is not None and start_time(pid) != started:
        return False
    return pid_alive(pid, marker)


def read_record(pidfile: Path) -> tuple[int, str | None] | None:
    """The pid and start time of ``pidfile``'s first line; the start time is None when the
    line has none (a pid file the program wrote itself); None for no pid at all."""
    try:
        line = pidfile.read_text().split("\n", 1)[0]
    except OSError:
        return None
    if line.startswith("{"):  # written by the cluster's former supervisor: a JSON record
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            return int(record["pid"]), str(record["start_time"])
        return None
    first = line.split()
    if not first or not first[0].isdigit():
        return None
    started = first[1] if len(first) > 1 and first[1].isdigit() else None
    return int(first[0]), started


def read_pid(pidfile: Path) -> int | None:
    record = read_record(pidfile)
    return record[0] if record is not None else None


def running_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is the one that was started (its
    recorded start time, and ``marker`` in its command line)."""
    record = read_record(pidfile)
    if record is None:
        return None
    pid, started = record
    return pid if is_running(pid, started, marker) else None


def launch(pidfile: Path, log: Path, argv: Sequence[str], cwd: Path | None = None) -> int:
    """Start ``argv`` detached (own session), output appended to ``log``; returns its pid,
    recorded in ``pidfile`` with its start time.

    Spawned rather than Popen'd: nothing here waits for it (the script that asked exits at
    once and the process is adopted by init), so no Popen object is left to complain."""
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = list(argv) if cwd is None else ["env", "-C", str(cwd), *argv]
    pid = os.posix_spawnp(
        command[0],
        command,
        dict(os.environ),
        setsid=True,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()),
        ],
    )
    # Our child cannot be gone before we wait for it (at worst a zombie, whose stat remains).
    started = start_time(pid)
    _wait_for_exec(pid)
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{pid} {started}\n" if started else f"{pid}\n")
    tmp.replace(pidfile)
    return pid


def _inherited_fds() -> list[int]:
    """Our descriptors above 2 that a spawned process would inherit: a caller's lock (the
    cluster's and the stack's flock on fds 8 and 9), a pipe it reads until EOF. A daemon
    holding one would keep the lock taken, or the pipe open, for as long as it runs."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if fd > 2 and os.get_inheritable(fd):
                fds.append(fd)
    return fds


def _wait_for_exec(pid: int, timeout: float = 5.0) -> None:
    """Until the new process shows its own command line (the kernel sets it a moment after
    the spawn returns, and until then a marker check would call it dead), or it has exited."""
    ours = Path("/proc/self/cmdline").read_bytes()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return  # gone
        if state == "Z" or (cmdline and cmdline != ours):
            return
        time.sleep(0.005)


# ------------------------------------------------------------------------------ waiting


def log_tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return f"(no log at {log})" if log is not None else ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"---- last {len(text)} lines of {log} ----\n" + "\n".join(text) + "\n----"


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
    log: Path | None = None,
    interval: float = POLL_SECONDS,
) -> None:
    """Poll ``condition`` until it holds; raise NotReady when ``alive`` says the process
    exited, or after ``timeout`` seconds (with the end of ``log``)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if alive is not None and not alive():
            raise NotReady(f"exited while waiting for {what}\n{log_tail(log)}".rstrip())
        if time.monotonic() >= deadline:
            raise NotReady(f"{what}: not within {timeout:g}s\n{log_tail(log)}".rstrip())
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True on a 2xx answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class CommandCheck:
    """A readiness condition given as a shell command: true when ``sh -c COMMAND`` exits 0.

    Each run may take ``COMMAND_CHECK_SECONDS`` (then its whole process group is killed and
    it counts as not ready); ``last_output`` keeps what the last failed run printed, for the
    message that says why a wait failed."""

    def __init__(self, command: str, timeout: float = COMMAND_CHECK_SECONDS) -> None:
        self.command = command
        self.timeout = timeout
        self.last_output = ""

    def __call__(self) -> bool:
        check = subprocess.Popen(  # noqa: S603 - the calling script's own readiness command
            ["/bin/sh", "-c", self.command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = check.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(check.pid, signal.SIGKILL)
            out, _ = check.communicate()
            self.last_output = f"no answer within {self.timeout:g}s"
            return False
        if check.returncode == 0:
            return True
        self.last_output = out.decode(errors="replace").strip() or f"exit {check.returncode}"
        return False


def start(
    name: str,
    pidfile: Path,
    log: Path,
    argv: Sequence[str],
    marker: str,
    ready: Callable[[], bool] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    interval: float = POLL_SECONDS,
) -> int:
    """Launch ``argv`` unless the process of ``pidfile`` runs already, then poll ``ready``
    every ``interval`` seconds until it holds, while that process lives (NotReady if it
    exits first or ``timeout`` passes). Returns the pid; says on stderr which it was."""
    pid = running_pid(pidfile, marker)
    if pid is None:
        pid = launch(pidfile, log, argv, cwd)
        _say(f"==> {name}: started (pid {pid}, log {log})")
    else:
        _say(f"==> {name}: already running (pid {pid})")
    if ready is not None:
        started = start_time(pid)

        def alive() -> bool:
            return is_running(pid, started, marker)

        wait_until(ready, timeout, f"{name} to be ready", alive, log, interval)
    return pid


# ------------------------------------------------------------------------------ stopping


def terminate(pid: int, alive: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. True if SIGTERM was enough.

    ``alive`` is how the caller knows the process is still there (a Popen's ``poll``, which
    also reaps it, or ``is_running`` for a process started elsewhere)."""
    if not alive():
        return True
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive():
        if time.monotonic() >= deadline:
            _signal(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + KILL_WAIT_SECONDS
            while alive():
                if time.monotonic() >= kill_deadline:
                    raise RuntimeError(f"pid {pid} survived SIGKILL")
                time.sleep(POLL_SECONDS)
            return False
        time.sleep(POLL_SECONDS)
    return True


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone already: nothing to stop
        os.kill(pid, signum)


def stop(name: str, pidfile: Path, marker: str, timeout: float) -> bool:
    """Stop the process of ``pidfile`` if it runs (SIGTERM, wait, SIGKILL), saying so on
    stdout, and remove the pid file; idempotent. True if SIGTERM was enough (or there was
    nothing to stop); RuntimeError if it survives SIGKILL (the pid file is kept)."""
    record = read_record(pidfile)
    if record is not None and is_running(*record, marker):
        pid, started = record
        print(f"==> stopping {name} (pid {pid}) ... ", end="", flush=True)  # noqa: T201
        gentle = terminate(pid, lambda: is_running(pid, started, marker), timeout)
        print("stopped" if gentle else f"still running after {timeout:g}s: SIGKILL")  # noqa: T201
    else:
        gentle = True
    pidfile.unlink(missing_ok=True)
    return gentle


def _say(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201 - progress for the script's user


# ------------------------------------------------------------------------------ command line


def _command(words: Sequence[str]) -> list[str]:
    return list(words[1:]) if words[:1] == ["--"] else list(words)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervise.py",
        description="Process supervision of the local stacks (deploy/local/stack.sh, "
        "deploy/cluster/cluster.sh). MARKER: a text the process's command line contains.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pid = commands.add_parser("pid", help="print the live pid of PIDFILE (exit 1: not running)")
    pid.add_argument("pidfile", type=Path)
    pid.add_argument("marker")
    spawn = commands.add_parser("launch", help="start COMMAND detached; print its pid")
    spawn.add_argument("--cwd", type=Path, default=None, help="its working directory")
    spawn.add_argument("pidfile", type=Path)
    spawn.add_argument("log", type=Path)
    spawn.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    begin = commands.add_parser(
        "start",
        help="start COMMAND detached unless PIDFILE's process runs, then wait until "
        "--ready-command exits 0 (exit 1, with the end of LOG, if it exits first or "
        "--timeout passes)",
    )
    begin.add_argument("--cwd", type=Path, default=None, help="its working directory")
    begin.add_argument("--ready-command", help="shell command that exits 0 once it is ready")
    begin.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    begin.add_argument("name")
    begin.add_argument("pidfile", type=Path)
    begin.add_argument("marker")
    begin.add_argument("log", type=Path)
    begin.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    ready = commands.add_parser("wait-http", help="until URL answers 2xx, while PIDFILE lives")
    ready.add_argument("url")
    ready.add_argument("pidfile", type=Path)
    ready.add_argument("marker")
    ready.add_argument("timeout", type=float)
    ready.add_argument("log", type=Path)
    http = commands.add_parser("http-ok", help="exit 0 when URL answers 2xx")
    http.add_argument("url")
    halt = commands.add_parser("stop", help="SIGTERM, wait, SIGKILL the process of PIDFILE")
    halt.add_argument("name")
    halt.add_argument("pidfile", type=Path)
    halt.add_argument("marker")
    halt.add_argument("timeout", type=float)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "pid":
            found = running_pid(args.pidfile, args.marker)
            if found is None:
                return 1
            print(found)  # noqa: T201 - read by the calling script
        elif args.command == "launch":
            command = _command(args.argv)
            if not command:
                _say("supervise.py launch: no command given")
                return 2
            print(launch(args.pidfile, args.log, command, args.cwd))  # noqa: T201
        elif args.command == "start":
            command = _command(args.argv)
            if not command:
                _say("supervise.py start: no command given")
                return 2
            check = CommandCheck(args.ready_command) if args.ready_command else None
            try:
                start(
                    args.name,
                    args.pidfile,
                    args.log,
                    command,
                    args.marker,
                    ready=check,
                    timeout=args.timeout,
                    cwd=args.cwd,
                    interval=COMMAND_POLL_SECONDS,
                )
            except NotReady as exc:
                why = f" (last check: {check.last_output})" if check and check.last_output else ""
                _say(f"supervise.py: {exc}{why}")
                return 1
        elif args.command == "wait-http":
            record = read_record(args.pidfile)
            try:
                wait_until(
                    lambda: http_ok(args.url),
                    args.timeout,
                    f"an answer from {args.url}",
                    alive=lambda: record is not None and is_running(*record, args.marker),
                    log=args.log,
                )
            except NotReady as exc:
                _say(f"supervise.py: {exc}")
                return 1
        elif args.command == "http-ok":
            return 0 if http_ok(args.url) else 1
        elif args.command == "stop":
            stop(args.name, args.pidfile, args.marker, args.timeout)
    except RuntimeError as exc:  # a process that survived SIGKILL
        _say(f"supervise.py: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
