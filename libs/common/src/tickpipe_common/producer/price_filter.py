"""The seed's behaviour: publish a tick only when its price moved (per symbol and kind)."""

from __future__ import annotations


class PriceChangeFilter:
    """Remembers the last published price signature of each (symbol, kind)."""

    def __init__(self, every_tick: bool = False) -> None:
        self._every_tick = every_tick
        self._last: dict[tuple[str, str], tuple[float, ...]] = {}

    @property
    def every_tick(self) -> bool:
        """Every tick is published: the caller may skip the check (and the signature)."""
        return self._every_tick

    def should_publish(self, symbol: str, kind: str, signature: tuple[float, ...] | None) -> bool:
        """``signature`` is what "the price" is for the kind (``wire.price_signature``);
        ``None`` (order books) always publishes."""
        if self._every_tick or signature is None:
            return True
        key = (symbol, kind)
        if self._last.get(key) == signature:
            return False
        self._last[key] = signature
        return True
