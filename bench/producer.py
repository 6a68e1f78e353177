"""Benchmark: one producer process at firehose rates, this tree's design against another ref's.

Simulator → real alpaca-py client in a producer-stocks *process* → a real Kafka broker. The
simulator is the market-sim's firehose mode (``tickpipe_market_sim.firehose``): the same
random walks, a trade/quote/bar mix over ``--symbols`` symbols, pre-generated and packed into
frames of up to 200 messages like Alpaca's, so it is not the bottleneck. Each run:

- the firehose sends ``rate x seconds`` messages at ``rate`` to the producer's connection
  (when the producer falls behind, TCP pushes back and the *achieved* send rate drops);
- the producer (``PUBLISH_MODE=every_tick``, backup on) publishes to a fresh topic;
- measured: the firehose's achieved send rate, the producer's receive rate (from its
  ``tickpipe_producer_ticks_received_total``, sampled), its peak RSS and CPU (``/proc``), and
  whether every tick was backed up and delivered (the topic's offsets, the backup's rows);
- a run *keeps up* when the firehose achieved >= 97 % of the asked rate, the producer received
  at >= 95 % of it, and every tick was backed up and in Kafka within ``--drain`` seconds;
- ``CPU µs/tick`` (the producer's CPU seconds over the ticks it received) is the figure least
  disturbed by other load on a shared machine: its inverse bounds what one core can take.

The baseline is the same producer from another git ref (default ``main``), exported with
``git archive`` into a temporary folder and run from there in the same virtualenv, in the
same session, alternating with this tree's runs. The table shows medians of ``--runs``.

    make bench-producer             # against the local stack's Kafka
    .venv/bin/python bench/producer.py --rates 25000,50000,100000 --baseline-rates 1000,2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from git_ref import export_ref

REPO = Path(__file__).resolve().parents[1]
# What the baseline ref runs from: the library and the stock producer.
BASELINE_SOURCES = ("libs/common/src", "services/producer-stocks/src")
PYTHON = sys.executable
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    design: str
    rate: int
    run: int
    sent: int
    send_rate: float
    receive_rate: float
    received: int
    delivered: int
    backed_up: int
    peak_rss_mib: float
    cpu_percent: float
    cpu_us_per_tick: float
    keeps_up: bool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def metric(port: int, name: str) -> float:
    """Sum of every sample of a metric on a producer's /metrics (0 when absent)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(interval)
    return False


def proc_sample(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds so far) of a process."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND
    rss = int(fields[21]) * PAGE / 2**20
    return rss, cpu


class Firehose:
    def __init__(self, symbols: int, messages: int, log: Path) -> None:
        self.port = free_port()
        self._log = log.open("w")
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [
                PYTHON, "-m", "tickpipe_market_sim.firehose", "--port", str(self.port),
                "--symbols", str(symbols), "--messages", str(messages),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        if not wait_until(lambda: get_json(self.stats_url) is not None, 600, 0.5):
            raise RuntimeError(f"the firehose did not start; see {log}")

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stats"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


def one_run(
    design: str,
    pythonpath: str | None,
    rate: int,
    run: int,
    args: argparse.Namespace,
    firehose: Firehose,
    workdir: Path,
) -> RunResult:
    count = int(rate * args.seconds)
    get_json(f"http://127.0.0.1:{firehose.port}/next-run?rate={rate}&count={count}")
    topic = f"bench-producer-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    http_port = free_port()
    backup = workdir / f"backup-{topic}"
    env = {
        **os.environ,
        "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{firehose.port}",
        "FEED": "sip",
        "SYMBOLS": ",".join(f"S{i:04d}" for i in range(args.symbols)),
        "CHANNELS": "trades,quotes,bars",
        "PUBLISH_MODE": "every_tick",
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        "KAFKA_TOPIC": topic,
        "BACKUP_DIR": str(backup),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(http_port),
        "LOG_FORMAT": "json",
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    log = (workdir / f"{design}-{rate}-{run}.log").open("w")
    producer = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [PYTHON, "-m", "tickpipe_producer_stocks"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        return _measure(
            design, rate, run, count, args, firehose, producer, http_port, topic, backup
        )
    except RuntimeError as exc:  # the temporary folder goes with the run: say what it logged
        log.flush()
        tail = Path(log.name).read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{exc}; its log ends:\n" + "\n".join(tail)) from exc
    finally:
        producer.send_signal(signal.SIGTERM)
        try:
            producer.wait(30)
        except subprocess.TimeoutExpired:
            producer.kill()
            producer.wait()
        log.close()
        shutil.rmtree(backup, ignore_errors=True)
        admin.delete_topics([topic])


def _measure(
    design: str,
    rate: int,
    run: int,
    count: int,
    args: argparse.Namespace,
    firehose: Firehose,
    producer: subprocess.Popen[bytes],
    port: int,
    topic: str,
    backup: Path,
) -> RunResult:
    if not wait_until(lambda: metric(port, "tickpipe_producer_ticks_received_total") > 0, 60):
        raise RuntimeError(f"{design} at {rate}/s received nothing")
    peak_rss, cpu_start = proc_sample(producer.pid)
    first_at = time.monotonic()
    received = 0.0
    last_at = first_at
    stats: dict[str, Any] = {}
    drain_deadline: float | None = None
    while True:
        rss, _ = proc_sample(producer.pid)
        peak_rss = max(peak_rss, rss)
        now_received = metric(port, "tickpipe_producer_ticks_received_total")
        if now_received > received:
            received, last_at = now_received, time.monotonic()
        stats = get_json(firehose.stats_url)
        if stats.get("finished") and drain_deadline is None:
            drain_deadline = time.monotonic() + args.drain
        if received >= count or (drain_deadline is not None and time.monotonic() > drain_deadline):
            break
        time.sleep(0.1)
    cpu_seconds = proc_sample(producer.pid)[1] - cpu_start
    wall = max(last_at - first_at, 1e-3)
    sent = int(stats.get("sent_total", 0))
    # Delivered = what the topic holds (each message once: fresh topic, idempotent producer).
    wait_until(lambda: topic_size(args.bootstrap, topic) >= sent, args.drain, 0.25)
    delivered = topic_size(args.bootstrap, topic)
    backed_up = int(metric(port, "tickpipe_producer_backup_rows_total"))
    send_rate = float(stats.get("rate") or 0.0)
    return RunResult(
        design=design,
        rate=rate,
        run=run,
        sent=sent,
        send_rate=send_rate,
        receive_rate=received / wall,
        received=int(received),
        delivered=delivered,
        backed_up=backed_up,
        peak_rss_mib=peak_rss,
        cpu_percent=100 * cpu_seconds / wall,
        cpu_us_per_tick=1e6 * cpu_seconds / max(received, 1.0),
        keeps_up=(
            send_rate >= 0.97 * rate
            and received / wall >= 0.95 * rate
            and delivered >= count
            and backed_up >= count
        ),
    )


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-producer-size"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def _rates(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def summarise(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for design, rate in sorted({(r.design, r.rate) for r in results}):
        runs = [r for r in results if r.design == design and r.rate == rate]
        rows.append(
            {
                "design": design,
                "rate": rate,
                "runs": len(runs),
                "send_rate": statistics.median(r.send_rate for r in runs),
                "receive_rate": statistics.median(r.receive_rate for r in runs),
                "delivered_all": all(r.delivered >= r.sent for r in runs),
                "peak_rss_mib": statistics.median(r.peak_rss_mib for r in runs),
                "cpu_percent": statistics.median(r.cpu_percent for r in runs),
                "cpu_us_per_tick": statistics.median(r.cpu_us_per_tick for r in runs),
                "keeps_up": sum(r.keeps_up for r in runs) > len(runs) / 2,
            }
        )
    return rows


def print_table(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"producer at firehose rates: {args.symbols} symbols, trades+quotes+bars, "
        f"{args.seconds:g} s per run, median of {args.runs} runs"
    )
    print(
        f"{'design':<10}{'asked/s':>9}{'sim sent/s':>12}{'received/s':>12}"
        f"{'all in Kafka':>14}{'RSS MiB':>9}{'CPU %':>7}{'CPU µs/tick':>13}{'keeps up':>10}"
    )
    for row in rows:
        print(
            f"{row['design']:<10}{row['rate']:>9,}{row['send_rate']:>12,.0f}"
            f"{row['receive_rate']:>12,.0f}{'yes' if row['delivered_all'] else 'NO':>14}"
            f"{row['peak_rss_mib']:>9.0f}{row['cpu_percent']:>7.0f}{row['cpu_us_per_tick']:>13.1f}"
            f"{'yes' if row['keeps_up'] else 'no':>10}"
        )
    for design in sorted({row["design"] for row in rows}):
        mine = [row for row in rows if row["design"] == design]
        kept = [row["rate"] for row in mine if row["keeps_up"]]
        top = max(mine, key=lambda row: row["receive_rate"])
        print(
            f"{design}: kept up up to {max(kept) if kept else 0:,} ticks/s asked; highest receive "
            f"rate {top['receive_rate']:,.0f}/s; load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs at the end"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--rates", type=_rates, default=_rates("25000,50000,75000,100000"))
    parser.add_argument("--baseline", default="main", help="git ref of the baseline design")
    parser.add_argument("--baseline-rates", type=_rates, default=_rates("1000,2000,4000"))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=120)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds allowed after the run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "producer.json")
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("set KAFKA_BOOTSTRAP_SERVERS or --bootstrap (make bench-producer does)")
    biggest = int(max(args.rates + args.baseline_rates) * args.seconds)
    with tempfile.TemporaryDirectory(prefix="tickpipe-bench-producer-") as tmp:
        workdir = Path(tmp)
        pythonpath = export_ref(args.baseline, BASELINE_SOURCES, workdir / "baseline")
        firehose = Firehose(args.symbols, biggest, workdir / "firehose.log")
        results: list[RunResult] = []
        try:
            plan: list[tuple[str, str | None, int]] = [
                ("tickpipe", None, rate) for rate in args.rates
            ]
            plan += [(args.baseline, pythonpath, rate) for rate in args.baseline_rates]
            for run in range(args.runs):  # alternate designs and rates: noise spreads evenly
                for design, path, rate in plan:
                    result = one_run(design, path, rate, run, args, firehose, workdir)
                    results.append(result)
                    print(
                        f"  run {run + 1}: {design} {rate:,}/s → sent {result.send_rate:,.0f}/s, "
                        f"received {result.receive_rate:,.0f}/s, rss {result.peak_rss_mib:.0f} "
                        f"MiB, cpu {result.cpu_percent:.0f} %, delivered "
                        f"{result.delivered:,}/{result.sent:,}",
                        flush=True,
                    )
        finally:
            firehose.stop()
    rows = summarise(results)
    print_table(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "producer",
                "when": datetime.now(UTC).isoformat(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "settings": {k: str(v) for k, v in vars(args).items()},
                "summary": rows,
                "runs": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
