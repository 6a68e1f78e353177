"""The sink thread: hand-off batches → normalise → filter → CSV backup → Kafka.

Everything that costs per tick runs here, on one thread of its own, never on the event loop
that reads the WebSocket (see ``handoff``). For each batch taken from the hand-off:

1. every message is normalised to its wire document (``wire``, no pydantic) and filtered;
   a message that fails is counted and logged (rate-limited) and the next one is handled;
2. the batch's rows go to the backup in one write, handed to the OS, *before* Kafka sees any
   of them: a SIGKILL after ``produce`` loses nothing;
3. the batch is produced to Kafka, whose client queue is bounded in bytes.

When the Kafka queue is full (a long outage), the sink *spills*: from the first tick that did
not fit, ticks go to the backup only, and a cursor remembers where in the backup that was.
While spilling, each round re-publishes from the cursor, in backup (= arrival) order, as much
as the queue takes; when the cursor reaches the end of what was written, the sink is live
again. So per symbol Kafka sees every tick in order, the producer needs no manual ``replay``
after an outage, and memory stays bounded by the queue however long Kafka is away.

A failing backup (disk full) never stops publishing: the rows are counted as backup errors,
the state is reported (``tickpipe_producer_backup_ok`` and ``/readyz``), and each batch tries
again, so the producer recovers by itself when space returns.

Backfilled ticks (``backfill``) take the same path: pages from the historical API wait in a
small bounded queue of their own (the backfill thread waits when it is full) and are handled
between live rounds, a budget per round, with a price filter of their own (their order is not
the stream's) and the ``tickpipe-backfill`` Kafka header.

A restart loses nothing that was in librdkafka's queue: about once a second the sink rotates
the publisher's delivery epochs (``publisher``) and keeps the resulting *delivery watermark*,
the backup position before which Kafka acknowledged every tick, in
``<backup>/<asset_class>/delivered.json``. At start-up, whatever the backup holds after that
position is re-published by the spill machinery before live ticks go out again (a few seconds'
worth after a SIGKILL; nothing after a clean stop, which moves the watermark to the end).
Copies of acknowledged ticks are harmless: the consumer stores each tick once.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections import deque
from operator import itemgetter
from pathlib import Path
from typing import Any

from tickpipe_common.logging import get_logger
from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.handoff import Batch, HandOff
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.wire import (
    COLUMNS,
    KIND_BY_TYPE,
    MalformedMessage,
    document_from_cells,
    encode,
    encode_value,
    normalise,
    price_signature,
)
from tickpipe_common.timestamps import parse_rfc3339_ns, utc_date

log = get_logger(__name__)

# At most this many backup rows re-published per round, so live batches are not starved.
REPUBLISH_PER_ROUND = 20_000
# Backfilled messages: at most this many handled per round, and queued for the sink.
BACKFILL_PER_ROUND = 20_000
BACKFILL_QUEUE_MESSAGES = 50_000
# How often the delivery watermark moves on (the publisher's epochs rotate).
CHECKPOINT_SECONDS = 1.0
_SYMBOL_AT, _KIND_AT = COLUMNS.index("symbol"), COLUMNS.index("kind")
_KEY = itemgetter(0)


class Spill:
    """Where in the backup the ticks that Kafka has not been given yet begin."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.rows = 0


class TickSink:
    def __init__(
        self,
        handoff: HandOff,
        asset_class: str,
        feed: str,
        price_filter: PriceChangeFilter,
        backup: CsvBackupWriter,
        publisher: KafkaPublisher,
        metrics: ProducerMetrics,
        idle_poll_seconds: float = 0.05,
        *,
        track_symbols: bool = False,
    ) -> None:
        """``track_symbols``: remember every symbol published (``symbols_seen``), for a
        ``*`` subscription whose symbols the backfill cannot otherwise know."""
        self._handoff = handoff
        self._asset_class = asset_class
        self._feed = feed
        self._filter = price_filter
        self._backup = backup
        self._publisher = publisher
        self._metrics = metrics
        self._idle = idle_poll_seconds
        kinds = tuple(KIND_BY_TYPE.values())
        self._received = {kind: metrics.received.labels(kind, asset_class) for kind in kinds}
        self._backfilled = {kind: metrics.backfilled.labels(kind, asset_class) for kind in kinds}
        self._backfill_filter = PriceChangeFilter(every_tick=price_filter.every_tick)
        self._backfill_queue: deque[Batch] = deque()
        self._backfill_queued = 0
        self._backfill_room = threading.Condition()
        self.symbols_seen: set[bytes] | None = set() if track_symbols else None
        self.spill: Spill | None = None
        self._spill_state = backup.folder / "spill.json"
        self._delivered_state = backup.folder / "delivered.json"
        self._delivered: tuple[str, int] | None = None  # saved in this run
        self._caught_up_at: tuple[Path, int] | None = None
        self._resume_spill()
        self._resume_delivered()
        self._watermark_at_spill()
        self._next_checkpoint = 0.0
        self.backup_ok = True
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    # --- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tick-sink", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the hand-off is closed and drained; False if the thread is still busy."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                batches = self._handoff.take(self._idle)
                if batches is None:
                    break
                if batches:
                    self.handle(batches)
                self.service()
            while self._backfill_queue:  # pages handed over before the backfill thread stopped
                self._handle_backfill()
        except BaseException as exc:  # pragma: no cover - reported by /healthz and logs
            self.failure = exc
            log.exception("sink_failed", error=str(exc))
            raise

    def service(self) -> None:
        """Between batches: Kafka callbacks, re-publishing a spill, backfilled ticks, the
        delivery watermark, gauges."""
        self._publisher.poll(0)
        if self.spill is not None:
            self.republish()
        if self._backfill_queue:
            self._handle_backfill()
        if time.monotonic() >= self._next_checkpoint:
            self._checkpoint()
        self._metrics.handoff_depth.set(self._handoff.depth)

    # --- backfilled ticks ---------------------------------------------------------------------

    def submit_backfill(self, messages: list[Any], stop: threading.Event) -> bool:
        """From the backfill thread: queue a page of messages (REST items shaped as stream
        messages); waits while the queue is full. False if stopping (nothing was queued)."""
        with self._backfill_room:
            while (
                self._backfill_queued >= BACKFILL_QUEUE_MESSAGES
                and not stop.is_set()
                and self.alive
            ):
                self._backfill_room.wait(0.5)
            if stop.is_set() or not self.alive:
                return False
            self._backfill_queue.append((time.time_ns(), messages))
            self._backfill_queued += len(messages)
        return True

    @property
    def backfill_queued(self) -> int:
        """Backfilled messages handed over and not handled yet."""
        return self._backfill_queued

    def _handle_backfill(self) -> None:
        batches: list[Batch] = []
        taken = 0
        with self._backfill_room:
            while self._backfill_queue and taken < BACKFILL_PER_ROUND:
                batch = self._backfill_queue.popleft()
                batches.append(batch)
                taken += len(batch[1])
        self.handle(batches, backfilled=True)
        with self._backfill_room:
            self._backfill_queued -= taken
            self._backfill_room.notify_all()

    # --- the delivery watermark -----------------------------------------------------------------

    def _position(self) -> tuple[Path, int] | None:
        """Where the ticks not yet given to Kafka begin: the spill cursor, else the backup's end."""
        if self.spill is not None:
            return self.spill.path, self.spill.offset
        path = self._backup.path
        if path is None:  # nothing written in this run: where a resumed spill caught up
            return self._caught_up_at
        return path, self._backup.size

    def _checkpoint(self) -> None:
        self._next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        delivered = self._publisher.rotate_epoch(self._position())
        if isinstance(delivered, tuple):
            self._save_delivered(delivered)

    def _save_delivered(self, position: tuple[Path, int]) -> None:
        state = (position[0].name, position[1])
        if state == self._delivered:
            return
        partial = self._delivered_state.with_suffix(".partial")
        try:
            partial.write_text(json.dumps({"file": state[0], "offset": state[1]}))
            partial.replace(self._delivered_state)
        except OSError as exc:  # a full disk: a restart re-publishes a little more
            log.warning("delivered_state_not_saved", error=str(exc))
            return
        self._delivered = state
        self._hold_files()

    def _hold_files(self) -> None:
        """Keep uncompressed every backup file a restart may read on from: the spill cursor's
        and the delivery watermark's, and every later day. The housekeeping gzips a finished
        day as soon as the next one begins, while the watermark still points into it for a
        checkpoint or more; a SIGKILL then left the next start nothing to re-publish from.
        A day let go is gzipped then, not at the next midnight."""
        held = [
            name
            for name in (
                self.spill and self.spill.path.name,
                self._delivered and self._delivered[0],
            )
            if name
        ]
        keep = self._backup.folder / min(held) if held else None
        before = self._backup.keep_uncompressed
        self._backup.keep_uncompressed = keep
        if before is not None and (keep is None or keep.name > before.name):
            self._backup.housekeeping()

    def _watermark_at_spill(self) -> None:
        """A resumed spill's cursor is where this run's unacknowledged ticks begin."""
        if self.spill is not None:
            self._save_delivered((self.spill.path, self.spill.offset))

    def stopped(self, undelivered: int) -> None:
        """After the final flush: with nothing left undelivered, everything given to Kafka was
        acknowledged: the watermark is the end of the backup (or the spill cursor)."""
        position = self._position()
        if undelivered == 0 and position is not None:
            self._save_delivered(position)

    def _resume_delivered(self) -> None:
        try:
            state = json.loads(self._delivered_state.read_text())
            path = self._delivered_state.parent / str(state["file"])
            offset = int(state["offset"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("delivered_state_unreadable", path=str(self._delivered_state), error=str(exc))
            return
        if not path.exists():
            # Deleted by hand, or gzipped by a release before the watermark held its file.
            log.warning("delivered_file_missing", path=str(path), action="replay by hand if needed")
            return
        spill = self.spill
        if spill is not None and (spill.path.name, spill.offset) <= (path.name, offset):
            return  # the resumed spill starts earlier and covers it
        if path.stat().st_size <= offset and _next_day_file(path) is None:
            return  # everything in the backup was acknowledged
        self.spill = Spill(path, offset)
        self._hold_files()
        self._metrics.spilling.set(1)
        log.warning(
            "republishing_unacknowledged",
            reason="the previous run ended before Kafka acknowledged these ticks",
            backup=str(path),
            offset=offset,
        )

    # --- one round of batches ---------------------------------------------------------------

    def handle(self, batches: list[Batch], *, backfilled: bool = False) -> None:
        rows: list[bytes] = []
        days: list[str] = []
        out: list[tuple[bytes, bytes, str]] = []
        asset_class, feed = self._asset_class, self._feed
        price_filter = self._backfill_filter if backfilled else self._filter
        should_publish = None if price_filter.every_tick else price_filter.should_publish
        tracks = self._metrics.tracks_symbols and not backfilled
        track = self._metrics.symbol_tick if tracks else None
        counters = self._backfilled if backfilled else self._received
        received: dict[str, int] = dict.fromkeys(self._received, 0)
        filtered: dict[str, int] = dict.fromkeys(self._received, 0)
        for received_ns, messages in batches:
            # The backup is filed by the day a batch arrived (csv_backup's docstring says why).
            day = utc_date(received_ns)
            for msg in messages:
                try:
                    doc = normalise(msg, asset_class, feed, received_ns)
                    kind = doc["kind"]
                    received[kind] += 1
                    symbol = doc["symbol"]
                    if track is not None:
                        track(symbol, parse_rfc3339_ns(doc["ts"]))
                    if should_publish is not None and not should_publish(
                        symbol, kind, price_signature(doc)
                    ):
                        filtered[kind] += 1
                        continue
                    value, row = encode(doc)
                except MalformedMessage as exc:
                    self._metrics.malformed.inc()
                    log.warning("malformed_stream_message", reason=str(exc), type=str(_type(msg)))
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad message never ends the stream
                    self._metrics.handling_errors.inc()
                    log.error("message_handling_failed", error=repr(exc)[:300])
                    continue
                rows.append(row)
                days.append(day)
                out.append((symbol.encode(), value, kind))
        # Counted once per round, not per tick (a Prometheus increment takes a lock).
        for kind, count in received.items():
            if count:
                counters[kind].inc(count)
        for kind, count in filtered.items():
            if count:
                self._metrics.filtered.labels(kind, asset_class).inc(count)
        if not out:
            return
        if self.symbols_seen is not None:
            self.symbols_seen.update(map(_KEY, out))
        self._publish(out, rows, self._write_backup(days, rows), backfilled)

    def _write_backup(self, days: list[str], rows: list[bytes]) -> list[_Written] | None:
        """Write the rows (grouped by day, nearly always one group); where each group went
        (``_position`` finds one row's place), or ``None`` if the backup could not take them."""
        groups: list[_Written] = []
        written = 0
        try:
            start = 0
            while start < len(rows):
                day = days[start]
                end = start + 1
                while end < len(rows) and days[end] == day:
                    end += 1
                offset = self._backup.append(day, rows[start:end])
                path = self._backup.path
                assert path is not None
                groups.append((start, path, offset))
                written = end
                start = end
        except OSError as exc:
            self._metrics.backup_errors.inc(len(rows) - written)
            if self.backup_ok:
                self.backup_ok = False
                self._metrics.backup_ok.set(0)
            log.error("backup_write_failed", error=str(exc), rows=len(rows) - written)
            return None
        if self._delivered is None:
            # This run's first rows: everything before them was delivered (or is in a resumed
            # spill), so that is the watermark until the first epoch is acknowledged.
            self._save_delivered((groups[0][1], groups[0][2]))
        self._metrics.backup_rows.inc(len(rows))
        self._metrics.backup_bytes.inc(sum(len(r) for r in rows))
        if not self.backup_ok:
            self.backup_ok = True
            self._metrics.backup_ok.set(1)
            log.info("backup_writing_again")
        return groups

    def _publish(
        self,
        out: list[tuple[bytes, bytes, str]],
        rows: list[bytes],
        groups: list[_Written] | None,
        backfilled: bool = False,
    ) -> None:
        if self.spill is not None and groups is not None:
            # Behind a spill: the rows wait their turn in the backup (re-published from there
            # without the backfill header: the backup has no column for it).
            return
        taken = self._publisher.produce_many(out, backfilled=backfilled)
        if taken == len(out):
            return
        if groups is None:
            # Neither Kafka nor the backup could take these: lost, and counted as such.
            self._metrics.publish_errors.labels("queue_full").inc(len(out) - taken)
            return
        self._start_spill(*_position(groups, rows, taken))

    # --- spilling -----------------------------------------------------------------------------

    def _start_spill(self, path: Path, offset: int) -> None:
        self.spill = Spill(path, offset)
        self._hold_files()
        self._metrics.spilling.set(1)
        self._save_spill()
        log.warning(
            "kafka_queue_full",
            action="backup only; re-publishing from the backup once Kafka takes ticks again",
            backup=str(path),
            offset=offset,
            kafka_pending=self._publisher.pending(),
        )

    def republish(self) -> None:
        """Re-publish from the spill cursor until the queue is full again, the round's budget
        is spent, or the cursor has caught up with the backup (then the sink is live again)."""
        spill = self.spill
        assert spill is not None
        produce = self._publisher.produce
        done = 0
        while done < REPUBLISH_PER_ROUND:
            lines = _read_lines(spill.path, spill.offset, REPUBLISH_PER_ROUND - done)
            if not lines:
                # The end of this file; this thread is the only writer, so unless a later day
                # exists, the cursor has caught up with everything written.
                following = _next_day_file(spill.path)
                if following is None:
                    self._end_spill()
                    return
                spill.path, spill.offset = following, len(_first_line(following))
                self._hold_files()
                continue
            for line in lines:
                cells = next(csv.reader(io.StringIO(line.decode())))
                doc = document_from_cells(cells)
                if not produce(cells[_SYMBOL_AT].encode(), encode_value(doc), cells[_KIND_AT]):
                    self._save_spill()
                    return
                spill.offset += len(line)
                spill.rows += 1
                done += 1
                self._metrics.republished.inc()
        self._save_spill()

    def _end_spill(self) -> None:
        spill = self.spill
        assert spill is not None
        log.info("kafka_caught_up", republished=spill.rows)
        self._caught_up_at = (spill.path, spill.offset)
        self.spill = None
        self._hold_files()
        self._metrics.spilling.set(0)
        self._spill_state.unlink(missing_ok=True)

    # A restart while spilling resumes where the re-publishing was: the cursor is kept in
    # <backup>/<asset_class>/spill.json (written per round, removed once caught up).

    def _save_spill(self) -> None:
        spill = self.spill
        if spill is None:
            return
        state = {"file": spill.path.name, "offset": spill.offset}
        partial = self._spill_state.with_suffix(".partial")
        try:
            partial.write_text(json.dumps(state))
            partial.replace(self._spill_state)
        except OSError as exc:  # a full disk: the cursor in memory still works
            log.warning("spill_state_not_saved", error=str(exc))

    def _resume_spill(self) -> None:
        try:
            state = json.loads(self._spill_state.read_text())
            path = self._spill_state.parent / str(state["file"])
            offset = int(state["offset"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("spill_state_unreadable", path=str(self._spill_state), error=str(exc))
            return
        if not path.exists():
            log.error("spill_file_missing", path=str(path), action="replay by hand if needed")
            return
        self.spill = Spill(path, offset)
        self._hold_files()
        self._metrics.spilling.set(1)
        log.warning("spill_resumed", backup=str(path), offset=offset)


# A group of rows written at once: index of its first row, the file, the offset there.
_Written = tuple[int, Path, int]


def _position(groups: list[_Written], rows: list[bytes], index: int) -> tuple[Path, int]:
    """Where in the backup row ``index`` of a round was written."""
    start, path, offset = next(group for group in reversed(groups) if group[0] <= index)
    return path, offset + sum(len(row) for row in rows[start:index])


def _type(msg: Any) -> object:
    return msg.get("T") if hasattr(msg, "get") else type(msg).__name__


def _read_lines(path: Path, offset: int, limit: int) -> list[bytes]:
    """Up to ``limit`` whole lines from ``offset``."""
    lines: list[bytes] = []
    with path.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            if not line.endswith(b"\n"):
                break
            lines.append(line)
            if len(lines) >= limit:
                break
    return lines


def _first_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.readline()


def _next_day_file(path: Path) -> Path | None:
    later = sorted(p for p in path.parent.glob("*.csv") if p.name > path.name)
    return later[0] if later else None
