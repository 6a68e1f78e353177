"""Who may stream: the credential check (402) and the per-key connection limit (406).

By default any key and secret are accepted, so producers work against the sim with dummy
credentials. With SIM_API_KEY/SIM_API_SECRET set, only that pair is. SIM_MAX_CONNECTIONS
bounds the authenticated sessions per key *per endpoint*: Alpaca limits connections "to a
single endpoint", so one key may stream stocks and crypto at the same time.
"""

from __future__ import annotations

import hmac
from collections import Counter

from tickpipe_market_sim.protocol import ErrorCode, ProtocolError

# Alpaca's header authentication: the REST API's, and the stream's alternative to the
# auth message.
KEY_HEADER = "APCA-API-KEY-ID"
SECRET_HEADER = "APCA-API-SECRET-KEY"  # noqa: S105 - a header name, not a secret


class Authenticator:
    def __init__(
        self, api_key: str | None = None, api_secret: str | None = None, max_connections: int = 0
    ) -> None:
        self._key = api_key
        self._secret = api_secret
        self._max_connections = max_connections
        self._sessions: Counter[tuple[str, str]] = Counter()

    def admit(self, key: str, secret: str, endpoint: str) -> None:
        """Take a connection slot for ``key`` on ``endpoint`` or raise 402/406."""
        if not self.credentials_ok(key, secret):
            raise ProtocolError(ErrorCode.AUTH_FAILED)
        slot = (key, endpoint)
        if self._max_connections and self._sessions[slot] >= self._max_connections:
            raise ProtocolError(ErrorCode.CONNECTION_LIMIT_EXCEEDED)
        self._sessions[slot] += 1

    def credentials_ok(self, key: str, secret: str) -> bool:
        """The key and secret are accepted (any pair when SIM_API_KEY is unset)."""
        if self._key is None or self._secret is None:
            return True
        # Constant-time comparison: the habit costs nothing, even in a simulator.
        key_ok = hmac.compare_digest(key.encode(), self._key.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self._secret.encode())
        return key_ok and secret_ok

    def release(self, key: str, endpoint: str) -> None:
        slot = (key, endpoint)
        self._sessions[slot] -= 1
        if self._sessions[slot] <= 0:
            del self._sessions[slot]
