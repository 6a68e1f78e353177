"""Entry point: settings → logging → server. The only place that wires objects together.

``python -m tickpipe_market_sim`` or ``tickpipe-market-sim``. SIGTERM/SIGINT close every
client with 1001 (going away) and exit 0. A bad setting exits 2 naming the variable.
Tests start an in-process server with :func:`build_server` (same wiring, port 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection

from tickpipe_common.logging import configure_logging, get_logger
from tickpipe_common.settings import environment_variables, load_settings
from tickpipe_market_sim.auth import Authenticator
from tickpipe_market_sim.clock import EventClock
from tickpipe_market_sim.faults import FaultControls
from tickpipe_market_sim.historical import HistoricalApi, RateLimiter
from tickpipe_market_sim.history import History, HistoryBounds
from tickpipe_market_sim.hub import FeedHub, Hub, steps_per_bar
from tickpipe_market_sim.market import AmendmentRates
from tickpipe_market_sim.server import WEBSOCKETS_LOGGER, SimServer
from tickpipe_market_sim.session import Session, Silence
from tickpipe_market_sim.settings import SimSettings
from tickpipe_market_sim.stats import SentStats, SimMetrics
from tickpipe_market_sim.universe import build_feeds

SERVICE = "market-sim"
log = get_logger("tickpipe_market_sim")


def build_server(settings: SimSettings, registry: CollectorRegistry | None = None) -> SimServer:
    """Everything a running simulator consists of, from its settings. Each server gets
    its own metrics registry unless one is given, so several can live in one process."""
    registry = registry if registry is not None else CollectorRegistry()
    stats = SentStats(settings.seed, SimMetrics(registry))
    clock = EventClock()
    bar_steps = steps_per_bar(settings.bar_interval, settings.rate_per_symbol)
    bar_interval_ns = round(settings.bar_interval * 1e9)
    history = History(
        HistoryBounds(settings.history_seconds, settings.history_events), time.time_ns
    )
    feeds = {
        path: FeedHub(
            feed,
            seed=settings.seed,
            clock=clock,
            stats=stats,
            steps_per_bar=bar_steps,
            bar_interval_ns=bar_interval_ns,
            max_events=settings.max_events_per_symbol,
            history=history,
            always=settings.trading == "always",
            amendments=AmendmentRates(
                correction=settings.correction_probability,
                cancel=settings.cancel_probability,
                halt=settings.halt_probability,
            ),
        )
        for path, feed in build_feeds(settings.stock_symbols, settings.crypto_symbols).items()
    }
    hub = Hub(feeds, rate_per_symbol=settings.rate_per_symbol, max_rate=settings.max_rate)
    secret = settings.api_secret.get_secret_value() if settings.api_secret else None
    auth = Authenticator(settings.api_key, secret, settings.max_connections)
    connections: dict[int, tuple[Session, ServerConnection]] = {}
    silence = Silence()
    faults = FaultControls(
        connections,
        auth,
        silence,
        backlog=settings.send_queue_limit,
        half_dead_seconds=settings.half_dead_seconds,
    )
    historical = HistoricalApi(
        history,
        auth,
        bar_interval_ns=bar_interval_ns,
        rate_limiter=RateLimiter(settings.history_rate_limit),
    )
    return SimServer(
        host=settings.host,
        port=settings.port,
        feeds=feeds,
        hub=hub,
        auth=auth,
        stats=stats,
        registry=registry,
        auth_timeout=settings.auth_timeout,
        symbol_limit=settings.symbol_limit,
        history=history,
        historical=historical,
        faults=faults,
        silence=silence,
        connections=connections,
        admin=settings.admin,
        config={
            "seed": settings.seed,
            "rate_per_symbol": settings.rate_per_symbol,
            "max_rate": settings.max_rate,
            "max_events_per_symbol": settings.max_events_per_symbol,
            "bar_interval": settings.bar_interval,
            "steps_per_bar": bar_steps,
            "stock_symbols": list(settings.stock_symbols),
            "crypto_symbols": list(settings.crypto_symbols),
            "auth_required": settings.api_key is not None,
            "symbol_limit": settings.symbol_limit,
            "max_connections": settings.max_connections,
            "trading": settings.trading,
            "history_seconds": settings.history_seconds,
            "history_events": settings.history_events,
            "history_rate_limit": settings.history_rate_limit,
            "admin": settings.admin,
            "half_dead_seconds": settings.half_dead_seconds,
        },
    )


async def run(settings: SimSettings) -> None:
    """Serve until SIGTERM or SIGINT, then close every client with 1001."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = build_server(settings)
    await server.start()
    try:
        await stop.wait()
        log.info("signal_received")
    finally:
        await server.stop()


def _parse_args(argv: Sequence[str] | None) -> None:
    """No options: the simulator is configured by SIM_* variables, which --help lists."""
    variables = environment_variables(SimSettings)
    argparse.ArgumentParser(
        prog="tickpipe-market-sim",
        description="An Alpaca market-data WebSocket server (stocks and crypto) for tickpipe.",
        epilog="Configured by environment variables: " + ", ".join(sorted(variables)),
    ).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    _parse_args(argv)
    settings = load_settings(SimSettings)
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    # One line per probe or handshake from websockets is noise; its warnings still show.
    WEBSOCKETS_LOGGER.setLevel(max(logging.WARNING, logging.getLogger().level))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
