"""Process supervision for the local stack and the tests: pid files, readiness waits, stops.

One implementation of what ``deploy/local/stack.sh`` and the tests' process helpers
(``tests/processes.py``) both need:

- a long-running process is *launched* in a session of its own (a Ctrl-C in the terminal
  that started it never reaches it), stdin from /dev/null, output appended to its log, and
  its pid written to a pid file;
- a pid file is *trusted* only while the pid is alive and its command line contains a marker
  (the config file or module it was started with), so a stale file pointing at a recycled pid
  is never mistaken for the service;
- *readiness* is a condition polled until it holds, failing early when the process exits and
  saying why with the end of its log;
- a *stop* is SIGTERM, a wait, then SIGKILL.

Only the standard library is used, so ``stack.sh`` can run this file with the system's
``python3`` before any virtualenv exists: ``python3 supervise.py COMMAND ...`` (see ``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

POLL_SECONDS = 0.2
KILL_WAIT_SECONDS = 10.0


class NotReady(Exception):
    """A readiness wait failed: the process exited, or the time ran out."""


# ------------------------------------------------------------------------------ pids


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains ``marker`` (a zombie's is empty)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    text = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return bool(text.strip()) and marker in text


def read_pid(pidfile: Path) -> int | None:
    try:
        first = pidfile.read_text().split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def running_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is the one started with ``marker``."""
    pid = read_pid(pidfile)
    return pid if pid is not None and pid_alive(pid, marker) else None


def launch(pidfile: Path, log: Path, argv: Sequence[str], cwd: Path | None = None) -> int:
    """Start ``argv`` detached (own session), output appended to ``log``; returns its pid.

    Spawned rather than Popen'd: nothing here waits for it (``stack.sh`` exits at once and
    the process is adopted by init), so no Popen object is left to complain about it."""
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
        ],
    )
    _wait_for_exec(pid)
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pidfile)
    return pid


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


# ------------------------------------------------------------------------------ stopping


def terminate(pid: int, alive: Callable[[], bool], timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. True if SIGTERM was enough.

    ``alive`` is how the caller knows the process is still there (a Popen's ``poll``, which
    also reaps it, or ``pid_alive`` for a process started elsewhere)."""
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


# ------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervise.py", description="The local stack's process supervision."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pid = commands.add_parser("pid", help="print the live pid of PIDFILE (exit 1: not running)")
    pid.add_argument("pidfile", type=Path)
    pid.add_argument("marker")
    start = commands.add_parser("launch", help="start COMMAND detached; print its pid")
    start.add_argument("--cwd", type=Path, default=None, help="its working directory")
    start.add_argument("pidfile", type=Path)
    start.add_argument("log", type=Path)
    start.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    ready = commands.add_parser("wait-http", help="until URL answers 2xx, while PIDFILE lives")
    ready.add_argument("url")
    ready.add_argument("pidfile", type=Path)
    ready.add_argument("marker")
    ready.add_argument("timeout", type=float)
    ready.add_argument("log", type=Path)
    http = commands.add_parser("http-ok", help="exit 0 when URL answers 2xx")
    http.add_argument("url")
    stop = commands.add_parser("stop", help="SIGTERM, wait, SIGKILL the process of PIDFILE")
    stop.add_argument("name")
    stop.add_argument("pidfile", type=Path)
    stop.add_argument("marker")
    stop.add_argument("timeout", type=float)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "pid":
        found = running_pid(args.pidfile, args.marker)
        if found is None:
            return 1
        print(found)  # noqa: T201 - read by stack.sh
    elif args.command == "launch":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            print("supervise.py launch: no command given", file=sys.stderr)  # noqa: T201
            return 2
        print(launch(args.pidfile, args.log, command, args.cwd))  # noqa: T201 - read by stack.sh
    elif args.command == "wait-http":
        pid = read_pid(args.pidfile)
        try:
            wait_until(
                lambda: http_ok(args.url),
                args.timeout,
                f"an answer from {args.url}",
                alive=lambda: pid is not None and pid_alive(pid, args.marker),
                log=args.log,
            )
        except NotReady as exc:
            print(f"supervise.py: {exc}", file=sys.stderr)  # noqa: T201
            return 1
    elif args.command == "http-ok":
        return 0 if http_ok(args.url) else 1
    elif args.command == "stop":
        pid = running_pid(args.pidfile, args.marker)
        if pid is not None:
            print(f"==> stopping {args.name} (pid {pid}) ... ", end="", flush=True)  # noqa: T201
            if terminate(pid, lambda: pid_alive(pid, args.marker), args.timeout):
                print("stopped")  # noqa: T201
            else:
                print(f"still running after {args.timeout:g}s: SIGKILL")  # noqa: T201
        args.pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
