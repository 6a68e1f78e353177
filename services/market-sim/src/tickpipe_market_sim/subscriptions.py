"""One connection's subscription set, and how subscribe/unsubscribe requests change it.

Pure bookkeeping: the reply the client gets, the (channel, symbol) pairs that were added
or removed (the hub indexes those), and Alpaca's rules on what a request may ask for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tickpipe_market_sim.protocol import (
    DOCUMENTED_CHANNELS,
    LIMITED_CHANNELS,
    WILDCARD,
    ErrorCode,
    ProtocolError,
    SubscriptionRequest,
)


@dataclass(frozen=True)
class SubscriptionChange:
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()


class Subscriptions:
    def __init__(self, channels: Sequence[str], mirrored: Mapping[str, str] | None = None) -> None:
        # dicts as insertion-ordered sets: the reply lists symbols in the order subscribed.
        self._channels: dict[str, dict[str, None]] = {name: {} for name in channels}
        self._mirrored = dict(mirrored or {})

    def apply(self, request: SubscriptionRequest, symbol_limit: int = 0) -> SubscriptionChange:
        """Apply a request atomically: on any error the set is left as it was (Alpaca
        documents this for 405), so nothing is changed before everything is checked.

        Channels of this feed apply; the mirrored ones (corrections, cancelErrors) follow
        trades and are ignored; another documented channel is ignored when it names no
        symbols; anything else is Alpaca's 410.
        """
        wanted: dict[str, tuple[str, ...]] = {}
        for name, symbols in request.channels.items():
            if name in self._channels:
                wanted[name] = symbols
            elif name in self._mirrored or (name in DOCUMENTED_CHANNELS and not symbols):
                continue
            else:
                raise ProtocolError(ErrorCode.INVALID_SUBSCRIBE_ACTION)
        after = {name: dict(symbols) for name, symbols in self._channels.items()}
        for name, symbols in wanted.items():
            for symbol in symbols:
                if request.action == "subscribe":
                    after[name][symbol] = None
                else:
                    after[name].pop(symbol, None)
        if symbol_limit and any(
            len(after[name]) > symbol_limit for name in LIMITED_CHANNELS if name in after
        ):
            raise ProtocolError(ErrorCode.SYMBOL_LIMIT_EXCEEDED)
        added = tuple(
            (name, symbol)
            for name, symbols in after.items()
            for symbol in symbols
            if symbol not in self._channels[name]
        )
        removed = tuple(
            (name, symbol)
            for name, symbols in self._channels.items()
            for symbol in symbols
            if symbol not in after[name]
        )
        self._channels = after
        return SubscriptionChange(added=added, removed=removed)

    def clear(self) -> SubscriptionChange:
        removed = tuple((name, s) for name, symbols in self._channels.items() for s in symbols)
        self._channels = {name: {} for name in self._channels}
        return SubscriptionChange(removed=removed)

    def reply(self) -> dict[str, list[str]]:
        """The full current set, every channel of the feed present (empty lists included)."""
        reply = {name: list(symbols) for name, symbols in self._channels.items()}
        for name, source in self._mirrored.items():
            reply[name] = list(self._channels[source])
        return reply

    def symbols(self, channel: str) -> list[str]:
        return list(self._channels.get(channel, {}))

    def covers(self, channel: str, symbol: str) -> bool:
        """Whether this connection receives ``symbol`` on ``channel`` (named or via "*")."""
        symbols = self._channels.get(channel, {})
        return symbol in symbols or WILDCARD in symbols
