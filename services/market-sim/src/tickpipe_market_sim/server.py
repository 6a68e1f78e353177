"""The network side: one port for the Alpaca WebSocket paths and the HTTP endpoints.

``process_request`` answers plain HTTP (/healthz, /readyz, /metrics, /stats, Alpaca's
historical API under /v2/stocks/ and /v1beta3/crypto/us/, the fault controls under
/admin/ when enabled) and 404s unknown paths before any WebSocket handshake; the feed
paths go on to ``_handle``, which runs Alpaca's session protocol: connected → auth →
subscribe/unsubscribe.

/stats says what *happened* in the market (``happened``: per feed, symbol and kind; the
older name ``generated`` is the same), what the history keeps (``history``), and what was
*sent* (``sent`` per feed, ``per_connection``); they differ as soon as anyone misses
anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import itertools
import json
import logging
import socket
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tickpipe_common.logging import get_logger
from tickpipe_market_sim import protocol
from tickpipe_market_sim.auth import KEY_HEADER, SECRET_HEADER, Authenticator
from tickpipe_market_sim.encoding import decode_frame, encoding_for
from tickpipe_market_sim.faults import PREFIX as ADMIN_PREFIX
from tickpipe_market_sim.faults import FaultControls
from tickpipe_market_sim.historical import HistoricalApi
from tickpipe_market_sim.history import History
from tickpipe_market_sim.hub import FeedHub, Hub
from tickpipe_market_sim.protocol import AuthRequest, ErrorCode, ProtocolError, SubscriptionRequest
from tickpipe_market_sim.session import POLICY_VIOLATION, Session, Silence
from tickpipe_market_sim.stats import SentStats

log = get_logger("tickpipe_market_sim.server")

# websockets logs every HTTP response and handshake at INFO; probes and scrapes would drown
# the sim's own events, so its logger is separate (and quieted in __main__).
WEBSOCKETS_LOGGER = logging.getLogger("tickpipe_market_sim.websockets")

# Seconds to wait for a client's close frame before dropping the TCP connection; short so
# that SIGTERM ends the process promptly even with unresponsive clients.
CLOSE_TIMEOUT = 2.0
# Seconds a session's writer may take to flush and close after its session ended.
WRITER_GRACE = CLOSE_TIMEOUT + 1.0
# Kernel send buffer of a session's socket. Left to itself, loopback autotunes it to megabytes:
# seconds of market data in flight to a slow client, behind which the 407 and the close frame
# wait; the close timeout then aborts the connection first and the client never learns why.
# Alpaca's slow-client cut-off is about the backlog it holds, which is the session's queue.
SESSION_SEND_BUFFER = 128 * 1024
# WebSocket close code after an unexpected failure in a session (RFC 6455 "internal error").
INTERNAL_ERROR_CLOSE = 1011

Route = Callable[[], tuple[http.HTTPStatus, str, bytes]]


class SimServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        feeds: Mapping[str, FeedHub],
        hub: Hub,
        auth: Authenticator,
        stats: SentStats,
        registry: CollectorRegistry,
        auth_timeout: float,
        symbol_limit: int,
        config: Mapping[str, Any],
        history: History,
        historical: HistoricalApi,
        faults: FaultControls,
        silence: Silence,
        connections: dict[int, tuple[Session, ServerConnection]],
        admin: bool,
    ) -> None:
        self._host = host
        self._port = port
        self._feeds = dict(feeds)
        self._hub = hub
        self._auth = auth
        self._stats = stats
        self._registry = registry
        self._auth_timeout = auth_timeout
        self._symbol_limit = symbol_limit
        self._config = dict(config)
        self._history = history
        self._historical = historical
        self._faults = faults
        self._silence = silence
        # Open sessions with their sockets: the fault controls act on them.
        self._connections = connections
        self._admin = admin
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._bound_port: int | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._routes: dict[str, Route] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/stats": self._stats_page,
        }

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._process_request,
            # Loopback and cluster-internal traffic: CPU is scarcer than bandwidth.
            compression=None,
            close_timeout=CLOSE_TIMEOUT,
            logger=WEBSOCKETS_LOGGER,
            server_header="tickpipe-market-sim",
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        self._clock_task = asyncio.create_task(self._run_clock(), name="market-clock")
        log.info(
            "sim_listening",
            host=self._host,
            port=self.port,
            endpoints=sorted(self._feeds),
            **self._config,
        )

    async def stop(self) -> None:
        """Close every connection with 1001 (going away), stop the clock."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        log.info("sim_stopping", open_connections=self._stats.open_connections())
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
        log.info("sim_stopped")

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port actually bound (SIM_PORT=0 picks a free one)."""
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return self._bound_port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"ws://{host}:{self.port}{path}"

    async def _run_clock(self) -> None:
        try:
            await self._hub.run()
        except Exception:
            # Without its clock the sim is useless: say so loudly; /readyz turns 503.
            log.exception("market_clock_failed")
            raise

    # --- plain HTTP ---------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in self._feeds:
            return None  # go on with the WebSocket handshake
        if HistoricalApi.serves(path):
            status, content_type, body, extra = self._historical.handle(
                request.path, request.headers
            )
            return _response(status, content_type, body, extra)
        if self._admin and path.startswith(ADMIN_PREFIX):
            return _response(*self._faults.handle(request.path))
        route = self._routes.get(path)
        if route is None:
            return _response(http.HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
        return _response(*route())

    def _ready(self) -> bool:
        clock_alive = self._clock_task is not None and not self._clock_task.done()
        return self._server is not None and not self._stopping and clock_alive

    def _healthz(self) -> tuple[http.HTTPStatus, str, bytes]:
        return http.HTTPStatus.OK, "application/json", b'{"status":"ok"}'

    def _readyz(self) -> tuple[http.HTTPStatus, str, bytes]:
        ready = self._ready()
        status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
        return status, "application/json", json.dumps({"ready": ready}).encode()

    def _metrics(self) -> tuple[http.HTTPStatus, str, bytes]:
        return http.HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def _stats_page(self) -> tuple[http.HTTPStatus, str, bytes]:
        body = self._stats.snapshot()
        happened = self._hub.generated()
        body["happened"] = happened
        body["generated"] = happened  # the older name, kept for its readers
        body["history"] = self._history.snapshot()
        body["faults"] = self._faults.snapshot()
        # A fixed run is over: nothing more will be generated (what was sent is above).
        body["finished"] = self._hub.finished()
        body["config"] = self._config
        return http.HTTPStatus.OK, "application/json", json.dumps(body).encode()

    # --- WebSocket sessions -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        if request is None:  # websockets only calls the handler after a handshake
            return
        feed = self._feeds[request.path.split("?", 1)[0]]
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SESSION_SEND_BUFFER)
        session = Session(
            next(self._ids),
            feed.feed,
            encoding_for(request.headers.get("Content-Type")),
            ws,
            self._stats,
            self._faults.backlog,
            self._silence,
        )
        endpoint = feed.feed.path
        self._stats.connection_opened(session.id, endpoint, session.encoding.value)
        log.info(
            "client_connected",
            conn=session.id,
            endpoint=endpoint,
            encoding=session.encoding.value,
            peer=_peer(ws),
        )
        writer = asyncio.create_task(session.run_writer(), name=f"writer-{session.id}")
        self._connections[session.id] = (session, ws)
        try:
            session.push_control(protocol.connected())
            self._header_auth(session, feed, request.headers)
            await self._converse(session, feed, ws)
        except ConnectionClosed:
            pass
        finally:
            del self._connections[session.id]
            feed.remove(session)
            session.finish()
            await _settle(writer)
            self._faults.release(session, endpoint, ws.close_code)
            self._stats.connection_closed(session.id)
            log.info(
                "client_disconnected",
                conn=session.id,
                endpoint=endpoint,
                close_code=ws.close_code,
                close_reason=ws.close_reason,
                messages_sent=self._stats.messages_sent(session.id),
            )

    async def _converse(self, session: Session, feed: FeedHub, ws: ServerConnection) -> None:
        deadline = asyncio.get_running_loop().time() + self._auth_timeout
        while not session.closing:
            try:
                if session.authenticated:
                    frame = await ws.recv()
                else:
                    async with asyncio.timeout_at(deadline):
                        frame = await ws.recv()
            except TimeoutError:
                self._reject(session, ErrorCode.AUTH_TIMEOUT)
                session.finish(POLICY_VIOLATION, "auth timeout")
                return
            try:
                self._on_frame(session, feed, frame)
            except Exception:
                # A bug in handling one client's request must cost that session, not the
                # server: answer Alpaca's 500 and close with 1011.
                log.exception("session_failed", conn=session.id, endpoint=session.feed.path)
                session.push_error(ErrorCode.INTERNAL_ERROR)
                session.finish(INTERNAL_ERROR_CLOSE, "internal error")
                return
        # Ended by a 406 or a 407: the writer flushes the error, then closes the connection.

    def _on_frame(self, session: Session, feed: FeedHub, frame: str | bytes) -> None:
        try:
            request = protocol.parse_request(decode_frame(frame, session.encoding))
            if isinstance(request, AuthRequest):
                self._authenticate(session, feed, request.key, request.secret)
            else:
                self._subscribe(session, feed, request)
        except ProtocolError as exc:
            self._reject(session, exc.code)
            if exc.code is ErrorCode.CONNECTION_LIMIT_EXCEEDED:
                session.finish(POLICY_VIOLATION, protocol.ERROR_MESSAGES[exc.code])

    def _reject(self, session: Session, code: ErrorCode) -> None:
        session.push_error(code)
        log.info(
            "protocol_error",
            conn=session.id,
            endpoint=session.feed.path,
            code=int(code),
            # not "msg": LogRecord reserves that attribute name
            text=protocol.ERROR_MESSAGES[code],
        )

    def _header_auth(self, session: Session, feed: FeedHub, headers: Headers) -> None:
        key, secret = headers.get(KEY_HEADER), headers.get(SECRET_HEADER)
        if key is None or secret is None:
            return
        try:
            self._authenticate(session, feed, key, secret)
        except ProtocolError as exc:
            self._reject(session, exc.code)
            if exc.code is ErrorCode.CONNECTION_LIMIT_EXCEEDED:
                session.finish(POLICY_VIOLATION, protocol.ERROR_MESSAGES[exc.code])

    def _authenticate(self, session: Session, feed: FeedHub, key: str, secret: str) -> None:
        if session.authenticated:
            raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED)
        self._auth.admit(key, secret, feed.feed.path)
        session.key = key
        self._stats.connection_authenticated(session.id, key)
        session.push_control(protocol.authenticated())
        # Never the key id: logs travel further than the credentials should.
        log.info("client_authenticated", conn=session.id, endpoint=feed.feed.path)

    def _subscribe(self, session: Session, feed: FeedHub, request: SubscriptionRequest) -> None:
        if not session.authenticated:
            raise ProtocolError(ErrorCode.NOT_AUTHENTICATED)
        change = session.subscriptions.apply(request, self._symbol_limit)
        # The reply first: Alpaca confirms before any data of the new subscription.
        reply = session.subscriptions.reply()
        session.push_control(protocol.subscription(reply))
        feed.apply(session, change)
        self._hub.notify()
        log.info(
            "subscription_changed",
            conn=session.id,
            endpoint=feed.feed.path,
            action=request.action,
            subscriptions={name: symbols for name, symbols in reply.items() if symbols},
        )


def _response(
    status: http.HTTPStatus,
    content_type: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(extra or []),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


async def _settle(writer: asyncio.Task[None]) -> None:
    """Give the writer a moment to flush and close; cancel it if the socket is stuck."""
    done, _ = await asyncio.wait({writer}, timeout=WRITER_GRACE)
    if not done:
        writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
