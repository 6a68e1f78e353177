"""Start, check and stop the local cluster's daemons (deploy/cluster/cluster.sh calls this).

Each daemon runs detached (its own session, stdin closed, stdout and stderr appended to
``<dir>/<name>.log``) so that ``make cluster-up`` can return while the cluster keeps running.
``<dir>/<name>.pid`` records the pid together with the process's start time from
``/proc/<pid>/stat``: a pid the kernel has since given to another process never matches, so a
stale pid file can never make ``stop`` signal a stranger.

``start`` is idempotent (a daemon that runs is left alone) and waits until the daemon is ready:
``--ready CMD`` is run through ``sh -c`` every half second until it exits 0. If the daemon
exits first, or the timeout passes, the end of its log is printed and the exit status is 1.
``stop`` sends SIGTERM, waits, then SIGKILL; stopping a daemon that is not running is not an
error. Only the daemon's own pid is signalled: children that must outlive it (containerd's
shims) are the caller's to clean up.

Usage:
  supervise.py start NAME --dir DIR [--ready CMD] [--timeout S] -- ARGV...
  supervise.py stop NAME --dir DIR [--timeout S]
  supervise.py running NAME --dir DIR        exit 0 if it runs, 1 if not
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.5
LOG_TAIL_LINES = 40


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] == "Z":  # a zombie has finished; only its parent's wait() is missing
        return None
    return fields[19]


def _pid_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.pid"


def running_pid(directory: Path, name: str) -> int | None:
    """The daemon's pid if the process recorded in its pid file still runs."""
    try:
        record = json.loads(_pid_file(directory, name).read_text())
        pid, started = int(record["pid"]), str(record["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _start_time(pid) == started else None


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _fail(name: str, log: Path, why: str) -> int:
    print(f"supervise: {name} {why}; the end of {log}:\n{_log_tail(log)}", file=sys.stderr)
    return 1


def start(directory: Path, name: str, argv: list[str], ready: str | None, timeout: float) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    pid = running_pid(directory, name)
    if pid is None:
        with log.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - the cluster script's own command lines
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        pid = process.pid
        started = _start_time(pid)
        if started is None:
            return _fail(name, log, "exited at once")
        record = {"pid": pid, "start_time": started, "argv": argv}
        _pid_file(directory, name).write_text(json.dumps(record) + "\n")
        print(f"==> {name}: started (pid {pid}, log {log})", file=sys.stderr)
    else:
        print(f"==> {name}: already running (pid {pid})", file=sys.stderr)
    if ready is None:
        return 0
    deadline = time.monotonic() + timeout
    while True:
        if running_pid(directory, name) is None:
            return _fail(name, log, "exited before it was ready")
        check = subprocess.run(  # noqa: S603 - the readiness command of the cluster script
            ["/bin/sh", "-c", ready], capture_output=True, check=False
        )
        if check.returncode == 0:
            return 0
        if time.monotonic() > deadline:
            detail = (check.stdout + check.stderr).decode(errors="replace").strip()
            return _fail(name, log, f"was not ready after {timeout:.0f} s ({ready}: {detail})")
        time.sleep(POLL_SECONDS)


def stop(directory: Path, name: str, timeout: float) -> int:
    pid = running_pid(directory, name)
    if pid is None:
        _pid_file(directory, name).unlink(missing_ok=True)
        return 0
    print(f"==> {name}: stopping (pid {pid})", file=sys.stderr)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while running_pid(directory, name) is not None and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS / 5)
        if running_pid(directory, name) is None:
            break
        if sig == signal.SIGTERM:
            print(
                f"==> {name}: no exit {timeout:.0f} s after SIGTERM, sending SIGKILL",
                file=sys.stderr,
            )
    if running_pid(directory, name) is not None:
        print(f"supervise: {name} (pid {pid}) survived SIGKILL", file=sys.stderr)
        return 1
    _pid_file(directory, name).unlink(missing_ok=True)
    return 0


def main(args: list[str]) -> int:
    # The daemon's command line follows "--" and is never parsed as our options.
    argv = args[args.index("--") + 1 :] if "--" in args else []
    ours = args[: args.index("--")] if "--" in args else args
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=("start", "stop", "running"))
    parser.add_argument("name")
    parser.add_argument("--dir", type=Path, required=True, help="pid and log folder")
    parser.add_argument("--ready", help="shell command that exits 0 once the daemon is ready")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    options = parser.parse_args(ours)
    if options.action == "start":
        if not argv:
            parser.error("start needs the daemon's command line after --")
        return start(options.dir, options.name, argv, options.ready, options.timeout)
    if options.action == "stop":
        return stop(options.dir, options.name, options.timeout)
    return 0 if running_pid(options.dir, options.name) is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
