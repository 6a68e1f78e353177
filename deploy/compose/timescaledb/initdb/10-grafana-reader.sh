#!/usr/bin/env bash
# Runs once, when the TimescaleDB container initialises an empty data volume (the image's
# /docker-entrypoint-initdb.d): makes grafana_reader, the login role of Grafana's TimescaleDB
# datasource, which may only read. Its password is GRAFANA_DB_PASSWORD (deploy/compose/.env).
# The consumer creates the tables later, as POSTGRES_USER; the default privileges below give
# grafana_reader SELECT on each of them (TimescaleDB passes that on to the chunks).
#
# The entrypoint executes this file, or sources it when it lost its executable bit: hence a
# subshell, so that neither the shell options nor an early end leak into the entrypoint.
(
  set -euo pipefail
  if [[ -z ${GRAFANA_DB_PASSWORD:-} ]]; then
    echo "10-grafana-reader.sh: GRAFANA_DB_PASSWORD is empty: no grafana_reader role, so Grafana's TimescaleDB datasource cannot log in" >&2
  else
    psql --no-psqlrc -v ON_ERROR_STOP=1 -v reader_password="$GRAFANA_DB_PASSWORD" \
      --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"DBNAME" TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '30s';
SQL
  fi
)
