"""No tick lost and memory bounded when Kafka goes away: a private broker is stopped in the
middle of a run and started again. The producer keeps streaming into its CSV backup and reports
not-ready while the broker is down; its Kafka queue is bounded in bytes (1 MiB here, so that a
short outage at 2,000 ticks/s overflows it, as minutes would overflow the 64 MiB default), so
the overflow is in the backup only — and when Kafka is back the producer re-publishes it by
itself. Its RSS is sampled throughout: the fault this reproduces grew 3.4 KB per queued tick
until Kubernetes would have OOM-killed it. Afterwards the table holds exactly what the
simulator sent, nothing replayed by hand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import db_counts, metric_sum, sim_sent, trade_ids
from tests.processes import Service, free_port, http_get, http_json, wait_for

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.sh"
EVENTS = 3_000  # per symbol and kind: 5 x 2 x 3,000 = 30,000 ticks at 2,000/s, 15 s of market
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "TSLA")
# The outage lasts until this many ticks went to the backup only: ~20 queues' worth.
OUTAGE_TICKS = 8_000
# Growth of the producer's RSS allowed over the whole outage (the fault: 3.4 KB x 8,000 ticks
# = 27 MB here, and 630 MiB after three minutes at the default settings).
RSS_GROWTH_LIMIT_MIB = 20


class RssSampler:
    """Samples a process's resident memory every 0.2 s on a thread of its own."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self._pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) / 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _two_free_ports() -> int:
    """A port whose successor is free too (the stack puts Kafka's controller there)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


class PrivateKafka:
    """A broker of its own, started and stopped with the project's stack script."""

    def __init__(self, run_dir: Path) -> None:
        self.port = _two_free_ports()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "TICKPIPE_RUN_DIR": str(run_dir),
            "TICKPIPE_KAFKA_PORT": str(self.port),
        }

    def _stack(self, *args: str) -> None:
        done = subprocess.run(
            ["bash", str(STACK), *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"stack.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        self._stack("start", "kafka")

    def stop(self) -> None:
        self._stack("stop", "kafka")


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path / "run")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def _ready(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def test_a_broker_outage_loses_nothing(
    private_kafka: PrivateKafka, fresh_database: str, tmp_path: Path
) -> None:
    sim_port, producer_port, consumer_port = free_port(), free_port(), free_port()
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": private_kafka.bootstrap, "KAFKA_TOPIC": "market_ticks"}
    sim = Service(
        "market-sim",
        "tickpipe_market_sim",
        {
            "SIM_HOST": "127.0.0.1",
            "SIM_PORT": str(sim_port),
            "SIM_RATE_PER_SYMBOL": "200",
            "SIM_MAX_RATE": "4000",
            "SIM_MAX_EVENTS_PER_SYMBOL": str(EVENTS),
            # A fixed run that reaches its subscribers whole: symbols trade while subscribed.
            "SIM_TRADING": "while_subscribed",
        },
        tmp_path / "sim.log",
    )
    consumer = Service(
        "consumer",
        "tickpipe_consumer",
        {
            **kafka,
            "DATABASE_URL": fresh_database,
            "KAFKA_GROUP_ID": f"outage-{uuid.uuid4().hex[:8]}",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(consumer_port),
            "BATCH_MAX_SECONDS": "0.2",
        },
        tmp_path / "consumer.log",
    )
    producer = Service(
        "producer-stocks",
        "tickpipe_producer_stocks",
        {
            **kafka,
            "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{sim_port}",
            "SYMBOLS": ",".join(SYMBOLS),
            "CHANNELS": "trades,quotes",
            "PUBLISH_MODE": "every_tick",
            "BACKUP_DIR": str(tmp_path / "backup"),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(producer_port),
            "KAFKA_QUEUE_MAX_MIB": "1",
        },
        tmp_path / "producer.log",
    )
    services = (sim, consumer, producer)
    try:
        sim.start().wait_http(f"http://127.0.0.1:{sim_port}/healthz")
        consumer.start().wait_http(f"http://127.0.0.1:{consumer_port}/readyz")
        producer.start().wait_http(f"http://127.0.0.1:{producer_port}/readyz")
        wait_for(lambda: sum(db_counts(fresh_database).values()) >= 50, 30, "the first rows")

        assert producer.process is not None
        rss = RssSampler(producer.process.pid)
        wait_for(lambda: len(rss.samples) >= 3, 10, "RSS samples")
        rss_before = max(rss.samples)

        # The broker goes away while the market keeps streaming.
        private_kafka.stop()
        backed_up = metric_sum(producer_port, "tickpipe_producer_backup_rows_total")
        wait_for(lambda: not _ready(producer_port), 30, "the producer to report not-ready")
        readyz = http_json_status(f"http://127.0.0.1:{producer_port}/readyz")
        assert readyz["kafka_ok"] is False
        # The market keeps streaming into the backup while the broker is away; the queue
        # overflows and the producer spills.
        wait_for(
            lambda: (
                metric_sum(producer_port, "tickpipe_producer_backup_rows_total")
                > backed_up + OUTAGE_TICKS
            ),
            60,
            "the backup to keep growing while Kafka is down",
        )
        assert metric_sum(producer_port, "tickpipe_producer_spilling") == 1
        assert http_json_status(f"http://127.0.0.1:{producer_port}/readyz")["kafka_ok"] is False
        growth = max(rss.samples) - rss_before
        assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth:.0f} MiB during the outage"

        # It comes back: queued ticks are delivered, consumption resumes.
        private_kafka.start()
        # Generous: the deadline only bounds a failure. On a loaded machine the client's
        # reconnect backoff and the re-publishing of the spill took most of a minute.
        wait_for(lambda: _ready(producer_port), 180, "the producer to be ready again")
        stats_url = f"http://127.0.0.1:{sim_port}/stats"
        wait_for(
            lambda: all(
                sim_sent(http_json(stats_url))[(s, k)] >= EVENTS
                for s in SYMBOLS
                for k in ("trade", "quote")
            ),
            90,
            "the simulator to send every tick",
        )
        sent = sim_sent(http_json(stats_url))
        try:
            wait_for(
                lambda: sum(db_counts(fresh_database).values()) >= sum(sent.values()),
                90,
                "every tick to reach the table",
            )
        except AssertionError as exc:
            published = metric_sum(producer_port, "tickpipe_producer_ticks_published_total")
            raise AssertionError(
                f"{exc}\nsent {dict(sent)}\nstored {dict(db_counts(fresh_database))}\n"
                f"producer published {published}\n--- producer\n{producer.log_tail(15)}\n"
                f"--- consumer\n{consumer.log_tail(15)}"
            ) from None
        assert db_counts(fresh_database) == sent
        for symbol in SYMBOLS:
            assert trade_ids(fresh_database, symbol) == list(range(1, EVENTS + 1)), symbol
        assert metric_sum(producer_port, "tickpipe_producer_publish_errors_total") == 0
        assert metric_sum(producer_port, "tickpipe_producer_republished_total") > 0
        wait_for(
            lambda: metric_sum(producer_port, "tickpipe_producer_spilling") == 0,
            30,
            "the producer to be live again",
        )
        rss.stop()
        growth = max(rss.samples) - rss_before
        assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth:.0f} MiB over the run"
        for service in (producer, consumer, sim):
            assert service.stop() == 0, service.log_tail()
    finally:
        for service in services:
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()


def http_json_status(url: str) -> dict[str, object]:
    """The JSON body of an endpoint whatever its status (``/readyz`` answers 503 when not ready)."""
    _, body = http_get(url)
    document: dict[str, object] = json.loads(body)
    return document
