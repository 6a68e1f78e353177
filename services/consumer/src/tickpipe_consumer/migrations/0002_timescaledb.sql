-- TimescaleDB, where the server offers it: market_ticks becomes a hypertable on the exchange
-- time, compressed after a week. On plain PostgreSQL this migration does nothing and says so
-- (the consumer logs `database_features timescaledb=false`), so it can never break that path.
-- Retention is not here: RETENTION_DAYS is configuration, applied by the consumer at every
-- start (see migrations.py), so changing it does not need a new migration.
--
-- Idempotent: if_not_exists everywhere, and compression is only switched on once.
-- Every TimescaleDB call is dynamic or PERFORMed inside the guarded branch, so plain
-- PostgreSQL never has to resolve a function it does not have.

DO $tickpipe$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb is not available on this server: market_ticks stays a plain table';
        RETURN;
    END IF;

    -- Installed but not preloaded: CREATE EXTENSION would fail in a way no exception block
    -- here can catch (TimescaleDB refuses to load outside shared_preload_libraries), so check
    -- first. An extension already created was preloaded when it was, and is left alone.
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND NOT 'timescaledb' = ANY (string_to_array(
           replace(coalesce(current_setting('shared_preload_libraries', true), ''), ' ', ''),
           ','))
    THEN
        RAISE WARNING 'timescaledb is installed but not in shared_preload_libraries (add it and restart PostgreSQL, then run migrate again): market_ticks stays a plain table';
        RETURN;
    END IF;

    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        -- Packaged but unusable (not in shared_preload_libraries, or no permission): the
        -- plain-table schema still works, so degrade rather than refuse to start.
        RAISE WARNING 'timescaledb is available but could not be enabled (%): market_ticks stays a plain table', SQLERRM;
        RETURN;
    END;

    -- migrate_data: a database that ran without TimescaleDB before keeps its rows.
    -- create_default_indexes => false: 0001 already made the (ts DESC) index.
    PERFORM create_hypertable(
        'market_ticks', 'ts',
        chunk_time_interval => INTERVAL '1 day',
        if_not_exists => TRUE,
        migrate_data => TRUE,
        create_default_indexes => FALSE
    );

    IF NOT EXISTS (
        SELECT 1 FROM timescaledb_information.hypertables
        WHERE hypertable_name = 'market_ticks' AND compression_enabled
    ) THEN
        -- One segment per symbol, ordered by time: the shape of "symbol over a time range".
        EXECUTE $sql$
            ALTER TABLE market_ticks SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'symbol',
                timescaledb.compress_orderby = 'ts DESC'
            )
        $sql$;
    END IF;

    PERFORM add_compression_policy('market_ticks', INTERVAL '7 days', if_not_exists => TRUE);
END
$tickpipe$;
