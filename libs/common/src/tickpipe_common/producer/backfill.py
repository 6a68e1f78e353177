"""Backfill: every gap in the stream is fetched from the historical API and published.

A gap opens whenever the stream was not delivering: after every reconnect (a drop, a 407, a
stale stream closed by us), and at start-up after the producer was down (crashed or stopped),
from the newest tick of the CSV backup. It closes with the first live batch after the
(re)connect. The ticks of the gap are then fetched from Alpaca's historical REST API
(``historical``) and handed to the sink, which normalises, backs up and publishes them like
live ones, with the ``tickpipe-backfill`` Kafka header.

Why it is built this way:

- Nothing per tick on the hot path. The hand-off keeps one *watermark*, the newest exchange
  time it handed over, with one look per batch (``HandOff.newest_ns``); no dict of the last
  time per symbol is updated per tick. ``GapWatch`` runs on the event loop only at a connect
  and at the first batch after it: two attribute reads and a queue append.
- Windows are wide rather than exact: ``[watermark - margin, first live time + margin]``
  (``BACKFILL_MARGIN_SECONDS``) for trades and quotes, and one bar interval (a minute) more
  before it for bars, which are stamped with their minute's start and sent after it ends.
  Ticks of different symbols arrive a little out of exchange-time order, and the watermark is
  looked at once per batch; the overlap with what the stream delivered costs only duplicates,
  which the tick identity makes harmless (the consumer's ``ON CONFLICT DO NOTHING``), while a
  window too narrow would be a hole.
- The fetch runs on a thread of its own: the REST calls block (alpaca-py uses requests), and
  receiving must never wait for them. Pages go to the sink through a bounded queue, so a long
  gap holds one page in memory, not the gap.
- Pending windows are kept in ``<backup>/<asset_class>/backfill.json`` until done, so a crash
  in the middle of a backfill (or before a SIP gap's second pass) does not forget it.
- 429s and failures back off capped and jittered (``historical``); a window whose requests
  keep failing is given up after the retries, counted (``gave_up``) and logged with its bounds.

What is fetched: trades and bars of the subscribed channels always, quotes with
``BACKFILL_QUOTES`` (heavy). Updated and daily bars and order books have no history: the REST
API's bars are final, and land as the ``bar`` of their minute when the stream missed it.
Corrections, cancel/errors, statuses and LULD bands have no history endpoint either: those
of a gap are not recovered.
Symbols: the subscribed ones; with ``*`` (which cannot be enumerated) the symbols seen since
start plus those in the backup's tail. On Alpaca the SIP feed's last 15 minutes are served
only to paid plans: with ``FEED=sip`` each gap is fetched again ``BACKFILL_SIP_DELAY_SECONDS``
after it ended. The test feed (FAKEPACA) has no history, so it is not backfilled.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tickpipe_common.logging import get_logger
from tickpipe_common.producer.handoff import HandOff
from tickpipe_common.producer.historical import GiveUp, Message, Stopped
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.timestamps import NANOS_PER_SECOND, format_rfc3339_ns

log = get_logger(__name__)

BAR_NS = 60 * NANOS_PER_SECOND  # Alpaca's streamed bars are one minute
SYMBOLS_PER_REQUEST = 100


class PageSource(Protocol):
    def pages(
        self, kind: str, symbols: Sequence[str], start_ns: int, end_ns: int
    ) -> Iterator[list[Message]]: ...


class PageSink(Protocol):
    def submit_backfill(self, messages: list[Any], stop: threading.Event) -> bool: ...


@dataclass(frozen=True)
class Window:
    """A gap: from the newest exchange time before it to the first after it (epoch ns)."""

    start_ns: int
    end_ns: int
    reason: str  # reconnect | restart
    due: float = 0.0  # wall-clock seconds: when to fetch it
    second_pass: bool = False


def kinds_to_fetch(settings: ProducerSettings) -> list[str]:
    kinds = []
    if "trades" in settings.channels:
        kinds.append("trades")
    if "bars" in settings.channels:
        kinds.append("bars")
    if "quotes" in settings.channels and settings.backfill_quotes:
        kinds.append("quotes")
    return kinds


def fetch_range(settings: ProducerSettings, window: Window, kind: str) -> tuple[int, int]:
    """The exchange-time range fetched for one kind of a window: widened by the margin (and a
    bar interval before it for bars), at most ``BACKFILL_MAX_SECONDS`` long."""
    margin = round(settings.backfill_margin_seconds * NANOS_PER_SECOND)
    start = window.start_ns - margin - (BAR_NS if kind == "bars" else 0)
    end = window.end_ns + margin
    longest = round(settings.backfill_max_seconds * NANOS_PER_SECOND)
    return max(start, end - longest), end


class Backfiller:
    """The backfill thread: fetches each window when due, in order, and hands it on."""

    def __init__(
        self,
        source: PageSource,
        sink: PageSink,
        settings: ProducerSettings,
        metrics: ProducerMetrics,
        state_path: Path,
        symbols: Callable[[], Sequence[str]],
        stop: threading.Event,
    ) -> None:
        self._source = source
        self._sink = sink
        self._settings = settings
        self._metrics = metrics
        self._state_path = state_path
        self._symbols = symbols
        self._stop = stop
        self._kinds = kinds_to_fetch(settings)
        self._sip_delay = settings.backfill_sip_delay_seconds if settings.feed == "sip" else 0.0
        self._lock = threading.Condition()
        self._windows: list[Window] = self._load()
        self._awaiting = 0  # gaps opened whose first live batch has not come yet
        self._thread: threading.Thread | None = None
        self._gauge()

    # --- the other threads' side --------------------------------------------------------------

    def gap_opened(self) -> None:
        """A gap began (a connect); ``submit`` follows with its bounds at the first batch."""
        with self._lock:
            self._awaiting += 1
            self._gauge()

    def submit(self, window: Window, *, opened: bool = True) -> None:
        """Queue a window (from the event loop: never blocks for long)."""
        with self._lock:
            if opened and self._awaiting:
                self._awaiting -= 1
            self._windows.append(window)
            self._save()
            self._gauge()
            self._lock.notify_all()

    @property
    def pending(self) -> int:
        return len(self._windows) + self._awaiting

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """After ``stop`` was set. A request in flight may outlive this (daemon thread): its
        window stays in the state file and is fetched again at the next start."""
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                window = min(self._windows, key=lambda w: w.due, default=None)
                wait = 1.0 if window is None else window.due - time.time()
                if wait > 0:
                    self._lock.wait(min(wait, 1.0))
                    continue
            assert window is not None
            outcome = self._fetch(window)
            if outcome is None:
                return  # stopping; the window stays for the next start
            with self._lock:
                self._windows.remove(window)
                if outcome and self._sip_delay and not window.second_pass:
                    due = window.end_ns / NANOS_PER_SECOND + self._sip_delay
                    due += self._settings.backfill_margin_seconds
                    self._windows.append(replace(window, due=due, second_pass=True))
                self._save()
                self._gauge()
            self._metrics.backfill_passes.labels("done" if outcome else "failed").inc()

    def _fetch(self, window: Window) -> bool | None:
        """One pass over a window; True done, False given up, None stopped."""
        symbols = list(self._symbols())
        began = time.monotonic()
        fetched: dict[str, int] = {}
        ok = True
        for kind in self._kinds:
            start, end = fetch_range(self._settings, window, kind)
            for i in range(0, len(symbols), SYMBOLS_PER_REQUEST):
                chunk = symbols[i : i + SYMBOLS_PER_REQUEST]
                try:
                    for page in self._source.pages(kind, chunk, start, end):
                        if not self._sink.submit_backfill(page, self._stop):
                            return None
                        fetched[kind] = fetched.get(kind, 0) + len(page)
                except Stopped:
                    return None
                except GiveUp as exc:
                    ok = False
                    self._metrics.backfill_errors.labels("gave_up").inc()
                    log.error(
                        "backfill_gave_up",
                        kind=kind,
                        symbols=len(chunk),
                        start=format_rfc3339_ns(start),
                        end=format_rfc3339_ns(end),
                        error=str(exc),
                    )
        log.info(
            "backfill_done" if ok else "backfill_incomplete",
            reason=window.reason,
            second_pass=window.second_pass,
            start=format_rfc3339_ns(window.start_ns),
            end=format_rfc3339_ns(window.end_ns),
            symbols=len(symbols),
            fetched=fetched,
            seconds=round(time.monotonic() - began, 3),
        )
        return ok

    # --- state --------------------------------------------------------------------------------

    def _gauge(self) -> None:
        self._metrics.backfill_pending.set(self.pending)

    def _save(self) -> None:
        partial = self._state_path.with_suffix(".partial")
        try:
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps([asdict(w) for w in self._windows]))
            partial.replace(self._state_path)
        except OSError as exc:  # a full disk: the windows in memory still work
            log.warning("backfill_state_not_saved", error=str(exc))

    def _load(self) -> list[Window]:
        try:
            raw = json.loads(self._state_path.read_text())
            windows = [Window(**item) for item in raw]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as exc:
            log.error("backfill_state_unreadable", path=str(self._state_path), error=str(exc))
            return []
        if windows:
            log.info("backfill_resumed", windows=len(windows))
        return windows


class GapWatch:
    """On the event loop: a connect opens a gap, the first batch after it closes it.

    The gap's start is the watermark at the connect (the hand-off's ``newest_ns``), or, at the
    first connect of a restarted producer, the newest tick of the backup. A connect while a gap
    is still open (a reconnect before any data came) keeps the gap's earlier start.
    """

    def __init__(
        self,
        handoff: HandOff,
        backfiller: Backfiller,
        metrics: ProducerMetrics,
        restart_from_ns: int | None,
    ) -> None:
        self._handoff = handoff
        self._backfiller = backfiller
        self._metrics = metrics
        self._restart_from = restart_from_ns
        self._open: tuple[int, str] | None = None

    def on_connect(self, first: bool) -> None:
        if self._open is not None:
            return
        if first:
            start, reason = self._restart_from or 0, "restart"
        else:
            start, reason = self._handoff.newest_ns, "reconnect"
        if start <= 0:
            return  # nothing seen yet: no gap to speak of
        self._open = (start, reason)
        self._backfiller.gap_opened()
        self._handoff.after_next_batch(self._first_batch)

    def _first_batch(self, newest_ns: int) -> None:
        assert self._open is not None
        (start, reason), self._open = self._open, None
        end = max(newest_ns, start)
        self._metrics.gaps.labels(reason).inc()
        self._metrics.gap_seconds.observe((end - start) / NANOS_PER_SECOND)
        log.info(
            "stream_gap",
            reason=reason,
            start=format_rfc3339_ns(start),
            end=format_rfc3339_ns(end),
            seconds=round((end - start) / NANOS_PER_SECOND, 3),
        )
        self._backfiller.submit(Window(start, end, reason, due=time.time()))
