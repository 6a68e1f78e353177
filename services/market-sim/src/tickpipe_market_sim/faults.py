"""Fault controls for tests and demos: what real Alpaca streams do to their clients.

Served under ``/admin/`` only when SIM_ADMIN is true (GET, since the port's HTTP side is
the WebSocket handshake's; each answers JSON saying what it did):

- ``/admin/drop?how=close`` closes every connection with a close frame (1001 going away);
  ``how=abrupt`` drops the TCP connections without one, as a network cut does.
- ``/admin/mute?seconds=N`` keeps every socket open and sends nothing for N seconds: the
  market data of that time is never sent to anyone (it is in the history), and control
  messages wait for the mute to end. ``seconds=0`` ends a mute.
- ``/admin/slow?backlog=N`` bounds every client's unsent backlog to N messages from now
  on: a client that falls further behind gets 407 "slow client" and is disconnected, as
  Alpaca does (SIM_SEND_QUEUE_LIMIT is the bound at start).
- ``/admin/half-dead?seconds=N`` sets how long the slot of a dropped client stays taken
  (SIM_HALF_DEAD_SECONDS at start): with SIM_MAX_CONNECTIONS a reconnect within that time
  gets 406 "connection limit exceeded", like Alpaca's ~90 s half-dead connections. Dropped
  means by these controls, by a 407, or gone without a close handshake.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from tickpipe_common.logging import get_logger
from tickpipe_market_sim.auth import Authenticator
from tickpipe_market_sim.session import Session, Silence

log = get_logger("tickpipe_market_sim.faults")

GOING_AWAY = 1001
PREFIX = "/admin/"


class FaultControls:
    def __init__(
        self,
        connections: Mapping[int, tuple[Session, ServerConnection]],
        auth: Authenticator,
        silence: Silence,
        *,
        backlog: int,
        half_dead_seconds: float,
    ) -> None:
        self._connections = connections
        self._auth = auth
        self.silence = silence
        self.backlog = backlog
        self.half_dead_seconds = half_dead_seconds
        self.half_dead = 0
        self.drops = 0

    # --- the admin endpoint ------------------------------------------------------------

    def handle(self, target: str) -> tuple[http.HTTPStatus, str, bytes]:
        url = urlsplit(target)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        action = url.path[len(PREFIX) :]
        try:
            done = self._act(action, params)
        except (KeyError, ValueError) as exc:
            message = f"bad request for {url.path}: {exc}"
            body = json.dumps({"message": message}).encode()
            return http.HTTPStatus.BAD_REQUEST, "application/json", body
        if done is None:
            return http.HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"
        log.info("fault_injected", action=action, **done)
        return http.HTTPStatus.OK, "application/json", json.dumps(done).encode()

    def _act(self, action: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        if action == "drop":
            how = params.get("how", "close")
            if how not in ("close", "abrupt"):
                raise ValueError("how is close or abrupt")
            return {"how": how, "dropped": self.drop(abrupt=how == "abrupt")}
        if action == "mute":
            seconds = _non_negative(params["seconds"])
            self.silence.mute(seconds)
            return {"muted_seconds": seconds}
        if action == "slow":
            backlog = int(params["backlog"])
            if backlog < 1:
                raise ValueError("backlog is at least 1")
            self.backlog = backlog
            for session, _ in self._connections.values():
                session.queue_limit = backlog
            return {"backlog": backlog}
        if action == "half-dead":
            self.half_dead_seconds = _non_negative(params["seconds"])
            return {"half_dead_seconds": self.half_dead_seconds}
        return None

    def drop(self, *, abrupt: bool) -> int:
        sessions = list(self._connections.values())
        for session, ws in sessions:
            session.dropped = True
            if abrupt:
                ws.transport.abort()
            else:
                session.finish(GOING_AWAY, "going away")
        self.drops += len(sessions)
        return len(sessions)

    # --- connection slots ------------------------------------------------------------------

    def release(self, session: Session, endpoint: str, close_code: int | None) -> None:
        """Free the session's slot now, or after the half-dead time if it was dropped."""
        if session.key is None:
            return
        key = session.key
        lost = session.dropped or session.slow or close_code in (None, 1006)
        if lost and self.half_dead_seconds > 0:
            self.half_dead += 1
            asyncio.get_running_loop().call_later(
                self.half_dead_seconds, self._release_half_dead, key, endpoint
            )
        else:
            self._auth.release(key, endpoint)

    def _release_half_dead(self, key: str, endpoint: str) -> None:
        self.half_dead -= 1
        self._auth.release(key, endpoint)

    def snapshot(self) -> dict[str, Any]:
        return {
            "muted_seconds_left": round(self.silence.remaining(), 3),
            "backlog": self.backlog,
            "half_dead_seconds": self.half_dead_seconds,
            "half_dead_slots": self.half_dead,
            "dropped_connections": self.drops,
        }


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("seconds is a number >= 0")
    return value
