"""Running tickpipe services as real processes in tests.

The waiting and stopping is the local stack's own supervision (``tickpipe_localstack.supervise``,
what ``deploy/local/stack.sh`` runs): readiness polled while the process lives, SIGTERM then
SIGKILL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickpipe_localstack.supervise import NotReady, http_ok, terminate, wait_until


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every half second; fail saying ``what`` did not happen in time."""
    try:
        wait_until(condition, timeout, what, interval=0.5)
    except NotReady:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_json(url: str) -> Any:
    status, body = http_get(url)
    assert status == 200, f"{url} answered {status}: {body[:200]!r}"
    return json.loads(body)


@dataclass
class Service:
    """A service started with ``python -m module``; stdout+stderr go to ``log_path``."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Service:
        env = {**os.environ, "LOG_FORMAT": "json", **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until ``url`` answers 200; fails early (with the log's end) if the process exits."""
        try:
            wait_until(lambda: http_ok(url), timeout, url, alive=self._alive, log=self.log_path)
        except NotReady as exc:
            raise AssertionError(f"{self.name}: {exc}") from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code (killing it if it hangs fails the caller)."""
        assert self.process is not None
        if not terminate(self.process.pid, self._alive, timeout):
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s")
        return self.process.wait()

    def _alive(self) -> bool:
        assert self.process is not None
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
