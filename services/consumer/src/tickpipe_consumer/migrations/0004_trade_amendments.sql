-- Schema version 3: the stock feed's trade corrections, cancel/errors, trading statuses and LULD
-- bands, stored in market_ticks like every other kind (one row per event, the same identity
-- and ON CONFLICT DO NOTHING, so a re-delivered message is stored once), and the views that
-- apply them: market_trades_corrected (the trades with cancels removed and corrections
-- applied) and market_bars_1m_corrected (1-minute OHLCV over those).
--
-- Idempotent: ADD COLUMN IF NOT EXISTS, the kind check replaced only while it lacks the new
-- kinds, CREATE INDEX IF NOT EXISTS, CREATE OR REPLACE VIEW. Nothing here needs TimescaleDB;
-- on a hypertable every step is plain DDL that TimescaleDB passes on to the chunks (columns
-- are added without constraints or defaults, which compressed hypertables allow).

ALTER TABLE market_ticks
    -- trade_correction: the trade as printed (original_*) and as corrected (corrected_*); its
    -- exchange and tape are those of the trade
    ADD COLUMN IF NOT EXISTS original_trade_id    bigint,
    ADD COLUMN IF NOT EXISTS original_price       double precision,
    ADD COLUMN IF NOT EXISTS original_size        double precision,
    ADD COLUMN IF NOT EXISTS original_conditions  text[],
    ADD COLUMN IF NOT EXISTS corrected_trade_id   bigint,
    ADD COLUMN IF NOT EXISTS corrected_price      double precision,
    ADD COLUMN IF NOT EXISTS corrected_size       double precision,
    ADD COLUMN IF NOT EXISTS corrected_conditions text[],
    -- trade_cancel: the trade is in trade_id, price, size, exchange, tape; 'C' cancel, 'E' error
    ADD COLUMN IF NOT EXISTS cancel_action        text,
    -- trading_status
    ADD COLUMN IF NOT EXISTS status_code          text,
    ADD COLUMN IF NOT EXISTS status_message       text,
    ADD COLUMN IF NOT EXISTS reason_code          text,
    ADD COLUMN IF NOT EXISTS reason_message       text,
    -- luld
    ADD COLUMN IF NOT EXISTS limit_up_price       double precision,
    ADD COLUMN IF NOT EXISTS limit_down_price     double precision,
    ADD COLUMN IF NOT EXISTS luld_indicator       text;

-- The kind check of 0001, widened to the new kinds. NOT VALID: the rows already stored are of
-- the old kinds, a subset, so there is nothing to scan for. A TimescaleDB that refuses to change
-- constraints on a compressed hypertable (older releases do) keeps the old check; the new kinds
-- are then refused row by row (to the DLQ, with the reason) and the warning says what to do.
DO $tickpipe$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'market_ticks'::regclass AND conname = 'market_ticks_kind_check'
          AND pg_get_constraintdef(oid) LIKE '%trade_correction%'
    ) THEN
        RETURN;
    END IF;
    BEGIN
        ALTER TABLE market_ticks DROP CONSTRAINT IF EXISTS market_ticks_kind_check;
        ALTER TABLE market_ticks ADD CONSTRAINT market_ticks_kind_check CHECK (
            kind IN ('trade', 'quote', 'bar', 'updated_bar', 'daily_bar', 'orderbook',
                     'trade_correction', 'trade_cancel', 'trading_status', 'luld')
        ) NOT VALID;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'market_ticks_kind_check could not be widened to the schema-version-3 kinds (%): trade corrections, cancels, statuses and LULD bands go to the DLQ until it is (decompress the hypertable, then run migrate again)', SQLERRM;
    END;
END
$tickpipe$;

-- What the corrected view looks up per trade: the corrections and cancels of a symbol's trade.
CREATE INDEX IF NOT EXISTS market_ticks_corrections_idx
    ON market_ticks (symbol, original_trade_id) WHERE kind = 'trade_correction';
CREATE INDEX IF NOT EXISTS market_ticks_cancels_idx
    ON market_ticks (symbol, trade_id) WHERE kind = 'trade_cancel';

-- The trades as they finally stand. A trade (matched by symbol, trade id, exchange and tape,
-- Alpaca's identity of a trade, within a day after it) that was cancelled or reported in error
-- is left out; a corrected trade keeps its time and place and takes the price, size, conditions
-- and trade id of its newest correction; a cancel of the corrected trade id removes it too.
-- Columns: those of a trade row, plus `corrected` (whether a correction was applied) and
-- `original_tick_id` (the tick_id of the trade as printed; tick_id is that too).
CREATE OR REPLACE VIEW market_trades_corrected AS
SELECT t.tick_id,
       t.ts,
       t.ts_ns,
       t.received_at,
       t.asset_class,
       t.symbol,
       t.feed,
       coalesce(c.corrected_price, t.price)                          AS price,
       coalesce(c.corrected_size, t.size)                            AS size,
       t.exchange,
       coalesce(c.corrected_trade_id, t.trade_id)                    AS trade_id,
       CASE WHEN c.tick_id IS NULL THEN t.conditions
            ELSE coalesce(c.corrected_conditions, t.conditions) END  AS conditions,
       t.tape,
       t.taker_side,
       c.tick_id IS NOT NULL                                         AS corrected,
       t.tick_id                                                     AS original_tick_id
FROM market_ticks t
LEFT JOIN LATERAL (
    SELECT m.tick_id, m.corrected_price, m.corrected_size, m.corrected_trade_id,
           m.corrected_conditions
    FROM market_ticks m
    WHERE m.kind = 'trade_correction'
      AND m.symbol = t.symbol
      AND m.original_trade_id = t.trade_id
      AND m.exchange IS NOT DISTINCT FROM t.exchange
      AND m.tape IS NOT DISTINCT FROM t.tape
      AND m.ts >= t.ts AND m.ts < t.ts + INTERVAL '1 day'
    ORDER BY m.ts_ns DESC, m.tick_id DESC
    LIMIT 1
) c ON TRUE
WHERE t.kind = 'trade'
  AND NOT EXISTS (
      SELECT 1
      FROM market_ticks x
      WHERE x.kind = 'trade_cancel'
        AND x.symbol = t.symbol
        AND (x.trade_id = t.trade_id OR x.trade_id = c.corrected_trade_id)
        AND x.exchange IS NOT DISTINCT FROM t.exchange
        AND x.tape IS NOT DISTINCT FROM t.tape
        AND x.ts >= t.ts AND x.ts < t.ts + INTERVAL '1 day'
  );

-- 1-minute OHLCV over the corrected trades: the columns and types of market_bars_1m, whose
-- continuous aggregate (TimescaleDB) or view counts the trades as printed. Computed when
-- queried: filter on bucket (and symbol) as with market_bars_1m.
CREATE OR REPLACE VIEW market_bars_1m_corrected AS
SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       symbol,
       (array_agg(price ORDER BY ts_ns, tick_id))[1]           AS open,
       max(price)                                              AS high,
       min(price)                                              AS low,
       (array_agg(price ORDER BY ts_ns DESC, tick_id DESC))[1] AS close,
       sum(size)                                               AS volume,
       count(*)                                                AS trade_count
FROM market_trades_corrected
GROUP BY 1, symbol;
