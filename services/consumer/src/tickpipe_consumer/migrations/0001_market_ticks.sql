-- The tick table users query. One row per tick; columns that do not apply to a kind are NULL.
-- Idempotent: every statement may run again on a database that already has it.

CREATE TABLE IF NOT EXISTS market_ticks (
    tick_id       uuid             NOT NULL,  -- Tick.tick_id: same market event, same id
    ts            timestamptz      NOT NULL,  -- exchange time, truncated to microseconds
    ts_ns         bigint           NOT NULL,  -- exchange time in epoch nanoseconds, exact
    received_at   timestamptz,               -- when the producer received it
    ingested_at   timestamptz      NOT NULL DEFAULT now(),  -- when the consumer stored it
    kind          text             NOT NULL,
    asset_class   text             NOT NULL,
    symbol        text             NOT NULL,
    feed          text             NOT NULL,
    -- trades
    price         double precision,
    size          double precision,
    exchange      text,
    trade_id      bigint,
    conditions    text[],
    tape          text,
    taker_side    text,
    -- quotes
    bid_price     double precision,
    bid_size      double precision,
    bid_exchange  text,
    ask_price     double precision,
    ask_size      double precision,
    ask_exchange  text,
    -- bars
    open          double precision,
    high          double precision,
    low           double precision,
    close         double precision,
    volume        double precision,
    vwap          double precision,
    trade_count   bigint,
    -- crypto orderbooks: [{"price": p, "size": s}, ...]
    bids          jsonb,
    asks          jsonb,
    reset         boolean,
    producer      text,                       -- the tickpipe-producer header
    -- "Symbol over a time range" is the query this table serves; the identity includes the
    -- time column because TimescaleDB requires it of every unique index on a hypertable.
    CONSTRAINT market_ticks_pkey PRIMARY KEY (symbol, ts, tick_id),
    CONSTRAINT market_ticks_kind_check CHECK (
        kind IN ('trade', 'quote', 'bar', 'updated_bar', 'daily_bar', 'orderbook')
    ),
    CONSTRAINT market_ticks_asset_class_check CHECK (asset_class IN ('stock', 'crypto'))
);

-- For "everything in a time range" across symbols; on TimescaleDB this is also the index the
-- hypertable would have created by default (it is told not to, so there is exactly one).
CREATE INDEX IF NOT EXISTS market_ticks_ts_idx ON market_ticks (ts DESC);

COMMENT ON TABLE market_ticks IS
    'Market ticks from Kafka topic market_ticks, one row per distinct tick (tickpipe consumer).';
COMMENT ON COLUMN market_ticks.ts_ns IS
    'Exchange timestamp in nanoseconds since the Unix epoch (exact; ts is its truncation to us).';
