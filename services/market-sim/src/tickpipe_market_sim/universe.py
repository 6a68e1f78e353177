"""What the simulator serves: its feeds (WebSocket paths) and the symbols on them.

A feed is one Alpaca endpoint. Each has a *universe* (what ``"*"`` means there); on the
stock and crypto feeds any other well-formed symbol a client names is simulated too, while
the test feed is closed: like Alpaca's ``/v2/test`` it only ever carries FAKEPACA.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tickpipe_market_sim.protocol import CRYPTO_CHANNELS, STOCK_CHANNELS, STOCK_MIRRORED_CHANNELS


class AssetClass(StrEnum):
    STOCK = "stock"
    CRYPTO = "crypto"


DEFAULT_STOCK_SYMBOLS = (
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "GOOGL",
    "META",
    "TSLA",
    "SPY",
    "QQQ",
    "AMD",
)
DEFAULT_CRYPTO_SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD", "LTC/USD", "DOGE/USD")
TEST_FEED_SYMBOL = "FAKEPACA"

STOCK_FEEDS = ("iex", "sip", "delayed_sip", "test")
CRYPTO_PATH = "/v1beta3/crypto/us"

# Venue codes and rough shares of consolidated volume (off-exchange "D" is the largest).
# The IEX feed only carries IEX's own prints, so its trades and quotes all say "V".
SIP_VENUES: tuple[tuple[str, float], ...] = (
    ("D", 0.30),
    ("Q", 0.14),
    ("N", 0.10),
    ("P", 0.09),
    ("K", 0.08),
    ("Z", 0.07),
    ("V", 0.04),
    ("J", 0.04),
    ("Y", 0.03),
    ("H", 0.03),
    ("U", 0.03),
    ("A", 0.02),
    ("X", 0.02),
    ("B", 0.01),
)
IEX_VENUES: tuple[tuple[str, float], ...] = (("V", 1.0),)


@dataclass(frozen=True)
class Feed:
    path: str
    asset_class: AssetClass
    universe: tuple[str, ...]
    closed: bool
    venues: tuple[tuple[str, float], ...]

    @property
    def channels(self) -> tuple[str, ...]:
        return STOCK_CHANNELS if self.asset_class is AssetClass.STOCK else CRYPTO_CHANNELS

    @property
    def mirrored_channels(self) -> Mapping[str, str]:
        return STOCK_MIRRORED_CHANNELS if self.asset_class is AssetClass.STOCK else {}

    def carries(self, symbol: str) -> bool:
        return not self.closed or symbol in self.universe


def build_feeds(stock_symbols: Sequence[str], crypto_symbols: Sequence[str]) -> dict[str, Feed]:
    feeds: dict[str, Feed] = {}
    for name in STOCK_FEEDS:
        test = name == "test"
        feeds[f"/v2/{name}"] = Feed(
            path=f"/v2/{name}",
            asset_class=AssetClass.STOCK,
            universe=(TEST_FEED_SYMBOL,) if test else tuple(stock_symbols),
            closed=test,
            venues=IEX_VENUES if name in ("iex", "test") else SIP_VENUES,
        )
    feeds[CRYPTO_PATH] = Feed(
        path=CRYPTO_PATH,
        asset_class=AssetClass.CRYPTO,
        universe=tuple(crypto_symbols),
        closed=False,
        venues=(),
    )
    return feeds


# Plausible starting prices; anything else gets one derived from its name.
KNOWN_PRICES: Mapping[str, float] = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "NVDA": 120.0,
    "AMZN": 185.0,
    "GOOGL": 170.0,
    "META": 500.0,
    "TSLA": 250.0,
    "SPY": 550.0,
    "QQQ": 480.0,
    "AMD": 160.0,
    "FAKEPACA": 100.0,
    "BTC/USD": 65000.0,
    "ETH/USD": 3200.0,
    "SOL/USD": 150.0,
    "LTC/USD": 80.0,
    "DOGE/USD": 0.15,
}
# Tape A: NYSE-listed, B: NYSE Arca and other exchange-listed (most ETFs), C: Nasdaq-listed.
KNOWN_TAPES: Mapping[str, str] = {"SPY": "B"}
NASDAQ_LISTED = frozenset({"AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "QQQ", "AMD"})


@dataclass(frozen=True)
class SymbolProfile:
    symbol: str
    asset_class: AssetClass
    start_price: float
    # Prices are integers of 10**-price_decimals (cents for stocks above $1), so the
    # random walk never produces a price the market could not quote.
    price_decimals: int
    # Crypto sizes are fractional with this many decimals; stock sizes are whole shares.
    size_decimals: int
    tape: str


def _name_hash(symbol: str) -> float:
    """A stable number in [0, 1) from a symbol name (Python's hash() is salted per run)."""
    digest = hashlib.blake2b(symbol.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def profile_for(symbol: str, asset_class: AssetClass) -> SymbolProfile:
    h = _name_hash(symbol)
    if asset_class is AssetClass.STOCK:
        # Unknown tickers: log-uniform between $10 and $500.
        price = KNOWN_PRICES.get(symbol, round(10 * 50**h, 2))
        tape = KNOWN_TAPES.get(symbol) or ("C" if symbol in NASDAQ_LISTED else "ABC"[int(h * 3)])
        return SymbolProfile(
            symbol=symbol,
            asset_class=asset_class,
            start_price=price,
            # Reg NMS: sub-penny increments only below $1.
            price_decimals=2 if price >= 1 else 4,
            size_decimals=0,
            tape=tape,
        )
    price = KNOWN_PRICES.get(symbol, float(f"{0.1 * 10_000**h:.6g}"))
    magnitude = math.floor(math.log10(price))
    return SymbolProfile(
        symbol=symbol,
        asset_class=asset_class,
        start_price=price,
        # About seven significant digits, as crypto venues quote: BTC to the cent,
        # DOGE to 1e-7.
        price_decimals=max(0, 6 - magnitude),
        # Sizes worth roughly a cent at the smallest increment: 1e-6 BTC, 0.1 DOGE.
        size_decimals=min(8, max(0, magnitude + 2)),
        tape="",
    )
