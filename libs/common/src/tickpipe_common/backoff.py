"""Capped exponential backoff with full jitter, for every retry at the edges of the system."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """``next_delay()`` grows ``initial * factor**n`` up to ``maximum``, jittered in [d/2, d].

    Half-to-full ("equal") jitter keeps a floor under each wait so a crowd of clients
    restarting together spreads out without any of them hammering the peer.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")
        ratio = self.maximum / self.initial
        if ratio <= 1:
            self._attempts_to_cap = 0  # the first delay is already the cap
        elif self.factor == 1:
            self._attempts_to_cap = sys.maxsize  # never grows, never overflows
        else:
            self._attempts_to_cap = math.ceil(math.log(ratio, self.factor))

    def next_delay(self) -> float:
        # Past the attempt that reaches the cap the delay stays there; never compute
        # factor**attempts for large attempts (it overflows a float at attempt ~1,024).
        if self.attempts >= self._attempts_to_cap:
            capped = self.maximum
        else:
            capped = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return random.uniform(capped / 2, capped)

    def reset(self) -> None:
        self.attempts = 0
