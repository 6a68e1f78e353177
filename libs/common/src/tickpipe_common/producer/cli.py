"""Command line of a producer service: ``run`` (the default) and ``replay``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tickpipe_common.logging import configure_logging
from tickpipe_common.producer.app import run_producer
from tickpipe_common.producer.replay import replay_backup
from tickpipe_common.producer.spec import ProducerSpec
from tickpipe_common.settings import load_settings
from tickpipe_common.timestamps import NANOS_PER_SECOND, parse_rfc3339_ns


def parse_instant(text: str) -> int:
    """``2026-11-25`` (midnight UTC) or an RFC 3339 timestamp → epoch nanoseconds."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(day.timestamp()) * NANOS_PER_SECOND
        return parse_rfc3339_ns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use YYYY-MM-DD or an RFC 3339 time like 2026-11-25T14:30:00Z"
        ) from exc


def _parser(spec: ProducerSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"tickpipe-{spec.service}",
        description=f"tickpipe {spec.service}: Alpaca {spec.asset_class.value} stream → Kafka.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="stream ticks to Kafka (the default)")
    replay = commands.add_parser(
        "replay", help="re-publish a time range of the CSV backup (safe to repeat)"
    )
    replay.add_argument("--since", type=parse_instant, required=True, help="start, inclusive")
    replay.add_argument("--until", type=parse_instant, help="end, exclusive (default: now + 1 day)")
    replay.add_argument("--symbols", help="comma-separated symbols (default: all)")
    return parser


def producer_main(spec: ProducerSpec, argv: Sequence[str] | None = None) -> int:
    args = _parser(spec).parse_args(argv)
    settings = load_settings(spec.settings_class)
    configure_logging(spec.service, settings.log_level, settings.log_format)
    if args.command == "replay":
        until = (
            args.until
            or int((datetime.now(UTC) + timedelta(days=1)).timestamp()) * NANOS_PER_SECOND
        )
        symbols = tuple(s.strip() for s in args.symbols.split(",")) if args.symbols else None
        result = replay_backup(settings, spec.service, spec.asset_class, args.since, until, symbols)
        print(f"replayed {result.read} ticks: {result.delivered} delivered, {result.failed} failed")
        return 0 if result.failed == 0 else 1
    asyncio.run(run_producer(spec, settings))
    return 0
