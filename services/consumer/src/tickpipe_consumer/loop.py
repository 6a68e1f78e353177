"""The consume → validate → write → commit loop, and everything that can interrupt it.

Order of a batch, and why it is safe:

1. Messages are read until BATCH_MAX_MESSAGES, or BATCH_MAX_SECONDS after the first one.
   Each is validated on arrival: a row to store, or a reason for the DLQ.
2. Rejected messages are sent to the DLQ (asynchronously, so delivery overlaps the write).
3. The rows are written in one database transaction (``TickWriter``), idempotently.
   The write runs on a worker thread while this thread reads and decodes the *next* batch
   (kept in ``_next``), so PostgreSQL's work overlaps the consumer's own: the next batch is
   ready when the write returns. Only one write is ever in flight, and nothing of the next
   batch is written or committed before this one has finished.
4. The DLQ sends are flushed: every letter acknowledged by the broker.
5. Only then are the batch's offsets committed, synchronously.

A crash anywhere before 5 leaves the offsets where they were, so the batch is read again and
the primary key turns the replay into no-ops: every message ends up in the table or in the
DLQ, never in neither. A failed step 3 or 4 is retried, with the assigned partitions
paused so nothing new piles up while the consumer keeps polling (and so keeps its group
membership); nothing is skipped and nothing is committed early.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tickpipe_common.backoff import Backoff
from tickpipe_common.logging import get_logger
from tickpipe_common.schema import BAR_KINDS, RejectReason, TickRejected
from tickpipe_consumer.batch import Batch, PartitionKey
from tickpipe_consumer.dlq import DlqPublisher
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_consumer.rows import Row
from tickpipe_consumer.writer import (
    RowsRejectedError,
    TickWriter,
    TransientDatabaseError,
    WriteResult,
)

log = get_logger(__name__)

# Longest single wait inside the loop: bounds how late a stop request or a retry is noticed.
_POLL_SLICE_SECONDS = 0.2
_DLQ_FLUSH_SECONDS = 2.0
_PROGRESS_LOG_SECONDS = 60.0
# While a write is in flight: how long one read of the next batch may block, so the end of
# the write is noticed within this.
_PREFETCH_SLICE_SECONDS = 0.005
# While paused, the lag gauge asks the brokers for the high watermarks: per partition at most
# this long, and for all of them together at most the budget (then the cached values).
_LAG_QUERY_SECONDS = 1.0
_LAG_QUERY_BUDGET_SECONDS = 2.0


class ConsumerLoop:
    def __init__(
        self,
        consumer: Consumer,
        writer: TickWriter,
        dlq: DlqPublisher,
        metrics: ConsumerMetrics,
        stop: threading.Event,
        *,
        batch_max_messages: int,
        batch_max_seconds: float,
        max_future_seconds: int,
        retry_initial_seconds: float,
        retry_max_seconds: float,
        shutdown_timeout_seconds: float,
        housekeeping_seconds: float = 5.0,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._dlq = dlq
        self._metrics = metrics
        self._stop = stop
        self._max_messages = batch_max_messages
        self._max_seconds = batch_max_seconds
        self._max_future_ns = max_future_seconds * 1_000_000_000
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._shutdown_timeout = shutdown_timeout_seconds
        self._housekeeping_seconds = housekeeping_seconds

        self._assigned: set[PartitionKey] = set()
        self._joined = False
        self._held = Batch()  # the batch in hand
        self._next = Batch()  # read while a write or a retry waited; first in the next batch
        self._revocations = 0  # partitions revoked or lost so far (see _store)
        self._committed: dict[PartitionKey, int] = {}  # last committed, for the lag gauge
        self._to_commit: dict[PartitionKey, int] = {}  # stored but not committed yet
        self._paused = False
        self._repause = False
        self._db_ok = True  # the service checked the database just before starting the loop
        self._db_error: str | None = None
        self._dlq_ok = True
        self._deadline: float | None = None
        now = time.monotonic()
        self._last_db_success = now
        self._next_housekeeping = now + housekeeping_seconds
        self._next_lag_update = now + housekeeping_seconds
        self._next_progress_log = now + _PROGRESS_LOG_SECONDS
        self._progress = {"batches": 0, "messages": 0, "inserted": 0, "duplicates": 0, "dlq": 0}
        # The one thread database writes run on (see step 3 above).
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-write")
        self._refresh_ready()

    # -- rebalance callbacks: librdkafka calls them from inside poll(), consume(), close() --

    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self._joined = True
        if self._paused and partitions:
            # The new partitions are not assigned until this callback returns, so they can
            # only be paused afterwards: _wait() does it after its next poll.
            self._repause = True
        log.info(
            "partitions_assigned",
            added=sorted(tp.partition for tp in partitions),
            assigned=len(self._assigned),
        )
        self._refresh_ready()

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Still ours until this returns: the last chance to commit what is already stored
        # for them (a commit refused earlier), which saves the next owner re-reading it.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        if any(key in gone for key in self._to_commit):
            self._commit_stored()
        self._forget(partitions, "partitions_revoked")

    def on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session timed out) rather than handed over: the group has already moved on,
        # and a commit for these partitions would be refused anyway. Not ready until
        # librdkafka has rejoined and on_assign runs again.
        self._joined = False
        self._forget(partitions, "partitions_lost")
        self._refresh_ready()

    def _forget(self, partitions: list[TopicPartition], event: str) -> None:
        # The batch in hand may hold messages of these partitions that are not committed yet.
        # They are dropped rather than finished: their offsets were never committed, so the
        # partition's next owner reads them again from the last commit, and anything this
        # consumer already wrote of them is skipped there as a duplicate. Finishing instead
        # would need the database inside a rebalance callback, which can be down; dropping is
        # correct in every case and costs at most one batch of rereading. (A rejected message
        # among them may reach the DLQ twice, once from each owner: the DLQ is at-least-once.)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self._revocations += 1
        dropped = self._held.drop_partitions(gone) + self._next.drop_partitions(gone)
        for topic, partition in gone:
            self._committed.pop((topic, partition), None)
            # Its new owner starts from the last successful commit and skips what is stored.
            self._to_commit.pop((topic, partition), None)
            if not any(p == partition for _, p in self._assigned):
                self._remove_lag_label(partition)
        log.info(
            event,
            removed=sorted(p for _, p in gone),
            assigned=len(self._assigned),
            uncommitted_dropped=dropped,
        )

    # -- health --

    def readiness(self) -> tuple[bool, dict[str, object]]:
        ready = self._ready()
        return ready, {
            "kafka_joined": self._joined,
            "partitions": len(self._assigned),
            "database": "ok" if self._db_ok else "unreachable",
            "database_error": self._db_error,
            "dlq": "ok" if self._dlq_ok else "undelivered",
            "paused": self._paused,
        }

    def _ready(self) -> bool:
        # In the group, the database answering, and the DLQ accepting letters: the three
        # things a batch needs to get committed.
        return self._joined and self._db_ok and self._dlq_ok

    def _refresh_ready(self) -> None:
        self._metrics.ready.set(1 if self._ready() else 0)

    def _set_db(self, ok: bool, error: str | None = None) -> None:
        self._db_ok = ok
        self._db_error = error
        if ok:
            self._last_db_success = time.monotonic()
        self._refresh_ready()

    def _set_dlq(self, ok: bool) -> None:
        self._dlq_ok = ok
        self._refresh_ready()

    # -- the loop --

    def run(self) -> None:
        """Until ``stop`` is set; then the batch in hand is finished and committed."""
        log.info(
            "consumer_loop_started",
            batch_max_messages=self._max_messages,
            batch_max_seconds=self._max_seconds,
        )
        while not self._stop.is_set():
            self._collect()
            self._process()
            self._housekeeping()
        # Messages read while a retry was waiting are in hand too: finish them the same way.
        while self._next and not self._past_deadline():
            self._held, self._next = self._next, Batch()
            self._process()
        if self._to_commit:  # a commit refused mid-rebalance: one more try before leaving
            self._commit_stored()
        self._write_thread.shutdown(wait=True)
        self._metrics.ready.set(0)
        log.info("consumer_loop_stopped", **self._progress)

    def _collect(self) -> None:
        """Fill ``self._held`` up to the batch limits (or until stop, or an idle slice)."""
        self._held, self._next = self._next, Batch()
        first_at = time.monotonic() if self._held else None
        while len(self._held) < self._max_messages and not self._stop.is_set():
            if first_at is None:
                timeout = _POLL_SLICE_SECONDS
            else:
                left = first_at + self._max_seconds - time.monotonic()
                if left <= 0:
                    break
                timeout = min(left, _POLL_SLICE_SECONDS)
            messages = self._consumer.consume(self._max_messages - len(self._held), timeout)
            # Re-read self._held after consume(): a revoke inside it replaces its lists.
            self._receive_all(messages, self._held)
            if first_at is None:
                if not self._held:
                    return  # idle: give housekeeping its turn
                first_at = time.monotonic()

    def _receive_all(self, messages: Sequence[Message], into: Batch) -> None:
        if not messages:
            return
        now_ns = time.time_ns()
        before = len(into)
        assigned, max_future_ns = self._assigned, self._max_future_ns
        for message in messages:
            if message.error() is not None:
                self._on_error_event(message)
                continue
            key = (message.topic() or "", message.partition() or 0)
            if key in assigned:
                into.add(message, key, now_ns, max_future_ns)
            # else: fetched just before its partition was revoked; the new owner reads it.
        self._metrics.messages_consumed.inc(len(into) - before)

    def _on_error_event(self, message: Message) -> None:
        error = message.error()
        if error is None or error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka_consume_error", error=str(error), code=error.name())

    def _process(self) -> None:
        batch = self._held
        if not batch:
            return
        messages = len(batch)
        self._metrics.batch_size.observe(messages)
        for message, rejected in batch.rejected:
            self._dlq.publish(message, rejected)
        if self._store(batch.rows, batch.sources) and self._deliver_dlq():
            self._commit()
        else:
            log.warning(
                "batch_abandoned",
                messages=len(self._held),
                why="stopping, and the shutdown timeout passed before the batch could be "
                "stored; its offsets stay uncommitted so it is read again after the restart",
            )
        self._progress["batches"] += 1
        self._progress["messages"] += messages
        self._progress["dlq"] += len(self._held.rejected)  # with the rows the database refused
        self._held = Batch()
        if self._paused:
            self._resume()

    def _store(self, rows: list[Row], sources: list[Message]) -> bool:
        """Write the rows (``sources[i]`` is the message of ``rows[i]``), retrying until it
        works; False only when giving up at stop."""
        backoff = Backoff(self._retry_initial, self._retry_max)
        revocations = self._revocations
        while True:
            if self._revocations != revocations:
                # A partition went away while this waited: its rows are the new owner's now.
                rows, sources = self._assigned_only(rows, sources)
                revocations = self._revocations
            if not rows:
                return True
            try:
                result = self._write_overlapped(rows)
            except RowsRejectedError as exc:
                self._metrics.db_errors.inc()
                self._set_db(True)
                return self._isolate(rows, sources, str(exc))
            except TransientDatabaseError as exc:
                self._metrics.db_errors.inc()
                self._set_db(False, str(exc))
                delay = backoff.next_delay()
                log.warning(
                    "database_write_failed",
                    error=str(exc),
                    rows=len(rows),
                    attempt=backoff.attempts,
                    retry_in_seconds=round(delay, 2),
                )
                self._pause()
                if not self._wait(delay):
                    return False
                self._metrics.db_retries.inc()
                continue
            if backoff.attempts:
                log.info("database_write_recovered", attempts=backoff.attempts + 1)
            self._set_db(True)
            self._record(len(rows), result)
            return True

    def _assigned_only(
        self, rows: list[Row], sources: list[Message]
    ) -> tuple[list[Row], list[Message]]:
        assigned = self._assigned
        kept = [i for i, m in enumerate(sources) if (m.topic(), m.partition()) in assigned]
        return [rows[i] for i in kept], [sources[i] for i in kept]

    def _isolate(self, rows: list[Row], sources: list[Message], error: str) -> bool:
        # The database refused something in the data. Retrying the same rows cannot help, so
        # halve the batch until the refused row stands alone, store everything else, and
        # dead-letter that row. (rows.py should catch all of these first; this is the net.)
        if len(rows) == 1:
            rejected = TickRejected(
                RejectReason.INVALID_VALUE, f"the database refused the row: {error}"
            )
            message = sources[0]
            self._held.rejected.append((message, rejected))
            self._dlq.publish(message, rejected)
            log.warning(
                "row_refused_by_database",
                partition=message.partition(),
                offset=message.offset(),
                error=error,
            )
            return True
        log.warning("batch_refused_by_database", rows=len(rows), error=error)
        half = len(rows) // 2
        return self._store(rows[:half], sources[:half]) and self._store(rows[half:], sources[half:])

    def _write_overlapped(self, rows: list[Row]) -> WriteResult:
        """The write on the worker thread; meanwhile, read and decode the next batch."""
        future = self._write_thread.submit(self._writer.write, rows)
        self._prefetch_until(future)
        return future.result()  # the writer's exception, if it raised one

    def _prefetch_until(self, future: Future[WriteResult]) -> None:
        while not future.done():
            room = self._max_messages - len(self._next)
            if room <= 0 or self._paused or self._stop.is_set():
                # Enough in hand (memory stays bounded), or nothing should be read now:
                # just wait. A write is bounded by the statement timeout, far below the
                # group's max.poll.interval.ms.
                with contextlib.suppress(TimeoutError):
                    future.exception(timeout=_POLL_SLICE_SECONDS)
                continue
            messages = self._consumer.consume(room, _PREFETCH_SLICE_SECONDS)
            self._receive_all(messages, self._next)

    def _record(self, rows: int, result: WriteResult) -> None:
        inserted = result.inserted
        self._metrics.batch_commit_seconds.observe(result.seconds)
        latency = self._metrics.end_to_end_latency
        for kind, tally in result.by_kind.items():
            self._metrics.rows_inserted.labels(kind=kind).inc(tally.inserted)
            if kind in BAR_KINDS:
                continue
            for ts_ns in tally.sample_ts_ns:
                latency.observe(max(0.0, (result.committed_at_ns - ts_ns) / 1e9))
        duplicates = rows - inserted
        if duplicates:
            self._metrics.duplicates_skipped.inc(duplicates)
        self._progress["inserted"] += inserted
        self._progress["duplicates"] += duplicates
        log.debug(
            "batch_stored",
            rows=rows,
            inserted=inserted,
            path=result.path,
            seconds=round(result.seconds, 4),
        )

    def _deliver_dlq(self) -> bool:
        """Wait until every DLQ letter is acknowledged; False only when giving up at stop."""
        backoff = Backoff(0.5, 5.0)
        while not self._dlq.flush(_DLQ_FLUSH_SECONDS):
            self._set_dlq(False)
            delay = backoff.next_delay()
            log.warning(
                "dlq_not_delivered",
                topic=self._dlq.topic,
                pending=self._dlq.pending,
                retry_in_seconds=round(delay, 2),
            )
            self._pause()
            if not self._wait(delay):
                return False
        self._set_dlq(True)
        return True

    def _commit(self) -> None:
        """Commit the stored batch's offsets, plus any that an earlier commit failed to."""
        for tp in self._held.next_offsets():
            key = (tp.topic, tp.partition)
            if key not in self._assigned:  # revoked meanwhile: the new owner commits it
                continue
            self._to_commit[key] = max(tp.offset, self._to_commit.get(key, -1))
        self._commit_stored()

    def _commit_stored(self) -> None:
        # Every offset in _to_commit belongs to rows already stored (or DLQ'd), so committing
        # it at any later moment is safe. A commit refused mid-rebalance (ILLEGAL_GENERATION,
        # REBALANCE_IN_PROGRESS) is tried again with the next batch, or by housekeeping when
        # the partition goes quiet; had it been dropped, the committed offset could trail a
        # quiet partition until a restart made the consumer re-read (and skip) those rows.
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(self._to_commit.items())]
        if not offsets:
            return
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The rows are stored either way. An offset not committed yet only means its
            # messages may be delivered again (to a new owner of the partition, or after a
            # restart) and skipped as duplicates: late, never lost.
            log.warning("offset_commit_failed", error=str(exc), retry="with the next commit")
            return
        for tp in results:
            key = (tp.topic, tp.partition)
            if tp.error is not None:
                log.warning("offset_commit_failed", partition=tp.partition, error=str(tp.error))
                continue
            if self._to_commit.get(key) == tp.offset:
                del self._to_commit[key]
            self._committed[key] = tp.offset

    # -- pausing and waiting --

    def _pause(self) -> None:
        if self._paused and not self._repause:
            return
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            if partitions:
                self._consumer.pause(partitions)
        except KafkaException as exc:  # a partition revoked in the meantime; pause the rest later
            log.debug("pause_failed", error=str(exc))
            self._repause = True
        else:
            self._repause = False
        if not self._paused:
            log.info("consumption_paused", partitions=len(partitions))
        self._paused = True

    def _resume(self) -> None:
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            if partitions:
                self._consumer.resume(partitions)
        except KafkaException as exc:
            log.warning("resume_failed", error=str(exc))
        self._paused = False
        self._repause = False
        log.info("consumption_resumed", partitions=len(partitions))

    def _wait(self, seconds: float) -> bool:
        """Sleep by polling the consumer, so the group sees us alive and rebalances are
        served. Messages that still arrive (fetched before the pause, or from a partition
        assigned meanwhile) are kept for the next batch. False if the shutdown timeout has
        passed."""
        end = time.monotonic() + seconds
        while True:
            if self._stop.is_set():
                deadline = self._shutdown_deadline()
                if time.monotonic() >= deadline:
                    return False
                end = min(end, deadline)
            left = end - time.monotonic()
            if left <= 0:
                return True
            message = self._consumer.poll(min(left, _POLL_SLICE_SECONDS))
            if self._repause:
                self._pause()
            if time.monotonic() >= self._next_lag_update:
                # A retry can last the whole outage: the lag gauge must keep moving through
                # it, since "lag growing" is how an outage shows on the dashboards.
                self._update_lag()
            if message is not None:
                self._receive_all([message], self._next)

    def _shutdown_deadline(self) -> float:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._shutdown_timeout
        return self._deadline

    def _past_deadline(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._shutdown_deadline()

    # -- periodic work --

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self._housekeeping_seconds
        if self._to_commit:
            self._commit_stored()
        if now >= self._next_lag_update:
            self._update_lag()
        if now - self._last_db_success >= self._housekeeping_seconds:
            # Idle: no write has proved the database alive lately, so ask it directly; the
            # readiness probe should not report a dead database as fine.
            try:
                self._writer.ping()
            except TransientDatabaseError as exc:
                self._metrics.db_errors.inc()
                if self._db_ok:
                    log.warning("database_unreachable", error=str(exc))
                self._set_db(False, str(exc))
            else:
                if not self._db_ok:
                    log.info("database_reachable")
                self._set_db(True)
        if now >= self._next_progress_log:
            self._next_progress_log = now + _PROGRESS_LOG_SECONDS
            log.info("consumer_progress", assigned=len(self._assigned), **self._progress)

    def _update_lag(self) -> None:
        self._next_lag_update = time.monotonic() + self._housekeeping_seconds
        keys = sorted(self._assigned)
        if not keys:
            return
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in keys])
        except KafkaException:
            positions = []
        position = {(tp.topic, tp.partition): tp.offset for tp in positions}
        # The cached high watermarks come with fetch responses, so they stop moving while the
        # partitions are paused: then ask the brokers instead, within a bounded time.
        ask_until = time.monotonic() + _LAG_QUERY_BUDGET_SECONDS if self._paused else None
        for key in keys:
            try:
                if ask_until is not None and time.monotonic() < ask_until:
                    _low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(*key), timeout=_LAG_QUERY_SECONDS, cached=False
                    )
                else:
                    _low, high = self._consumer.get_watermark_offsets(
                        TopicPartition(*key), cached=True
                    )
            except KafkaException:
                continue
            # Lag counts from the last commit (messages not yet safely stored); before the
            # first commit of this assignment, from the read position.
            base = self._committed.get(key, position.get(key, -1))
            if high < 0 or base < 0:
                continue
            self._metrics.lag.labels(partition=str(key[1])).set(max(0, high - base))

    def _remove_lag_label(self, partition: int) -> None:
        with contextlib.suppress(KeyError):  # no lag was ever reported for it
            self._metrics.lag.remove(str(partition))
