-- market_bars_1m: one-minute OHLCV bars built from the stored trades.
-- With TimescaleDB: a continuous aggregate (real-time, so the newest minute is included)
-- refreshed every minute. Without: a plain view with the same columns and types, so every
-- query written against it works on either database.
--
-- Columns: bucket timestamptz, symbol text, open/high/low/close/volume double precision,
-- trade_count bigint.

DO $tickpipe$
DECLARE
    is_hypertable boolean := FALSE;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- Nested, not AND-ed: this view only exists once the extension does.
        is_hypertable := EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'market_ticks'
        );
    END IF;

    IF is_hypertable THEN
        -- A plain view of that name would block the aggregate (the database ran without
        -- TimescaleDB before); an existing continuous aggregate is kept as it is.
        IF NOT EXISTS (
            SELECT 1 FROM timescaledb_information.continuous_aggregates
            WHERE view_name = 'market_bars_1m'
        ) THEN
            DROP VIEW IF EXISTS market_bars_1m;
        END IF;
        -- WITH NO DATA: a continuous aggregate cannot be filled from inside a function (this
        -- DO block); the refresh policy fills it, and real-time aggregation covers the rest.
        EXECUTE $sql$
            CREATE MATERIALIZED VIEW IF NOT EXISTS market_bars_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket,
                   symbol,
                   first(price, ts_ns)  AS open,
                   max(price)           AS high,
                   min(price)           AS low,
                   last(price, ts_ns)   AS close,
                   sum(size)            AS volume,
                   count(*)             AS trade_count
            FROM market_ticks
            WHERE kind = 'trade'
            GROUP BY time_bucket(INTERVAL '1 minute', ts), symbol
            WITH NO DATA
        $sql$;
        -- Re-materialise a week back, so replays of older ticks (from the producers' CSV
        -- backups) are reflected too; older buckets are left as they are.
        PERFORM add_continuous_aggregate_policy(
            'market_bars_1m',
            start_offset => INTERVAL '7 days',
            end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute',
            if_not_exists => TRUE
        );
    ELSE
        -- date_bin on the epoch gives the same minute boundaries as time_bucket, in any
        -- session time zone. Filter on bucket *and* ts for index use on large ranges.
        CREATE OR REPLACE VIEW market_bars_1m AS
        SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
               symbol,
               (array_agg(price ORDER BY ts_ns, tick_id))[1]           AS open,
               max(price)                                              AS high,
               min(price)                                              AS low,
               (array_agg(price ORDER BY ts_ns DESC, tick_id DESC))[1] AS close,
               sum(size)                                               AS volume,
               count(*)                                                AS trade_count
        FROM market_ticks
        WHERE kind = 'trade'
        GROUP BY 1, symbol;
    END IF;
END
$tickpipe$;
