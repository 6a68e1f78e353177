#!/usr/bin/env bash
# tickpipe's no-Docker local stack: Kafka (KRaft, jars from Maven Central), PostgreSQL
# (Debian's packages) and the pipeline services, as plain background processes.
# This script installs and configures; the supervision (pid files, readiness waits, SIGTERM
# then SIGKILL) is tickpipe_localstack.supervise, which the tests' process helpers share, and
# the Kafka admin steps are tickpipe_localstack.kafka_ready / .kafka_sasl (tools/localstack/).
#
# Usage: deploy/local/stack.sh COMMAND
#   install                         fetch/check what the stack needs (Java, Kafka jars, PostgreSQL,
#                                   Prometheus)
#   start infra|kafka|kafka-sasl|postgres|services|prometheus
#                                   start (if not running) and wait until it accepts connections
#                                   (infra also installs Prometheus/promtool: the tests use them;
#                                   kafka-sasl: the opt-in SASL_SSL broker, never part of infra)
#   stop  infra|kafka|kafka-sasl|postgres|services|prometheus|all
#                                   stop cleanly (SIGTERM, wait, then SIGKILL); idempotent
#   up                              install, start infra, the services, then Prometheus; say where
#                                   things are
#   down                            stop the services, then the infra
#   status                          what runs, pids, ports
#   env                             `export KAFKA_BOOTSTRAP_SERVERS=...` and `export DATABASE_URL=...`
#   logs [-n N] [NAME...|all]       follow the services' logs (NAME: a service, kafka, postgres)
#   psql [ARGS...]                  psql on the pipeline database (reads SQL from stdin too)
#
# Everything lives in one run folder, ${TICKPIPE_RUN_DIR:-<repo>/.run}: kafka/ (config, data),
# postgres/ (data), prometheus/ (config, data), logs/, pids/, backup/ (the producers' CSV backups).
# Ports: deploy/ports.env, each overridden by its variable: TICKPIPE_KAFKA_PORT (its controller
# listens on the next port), TICKPIPE_KAFKA_SASL_PORT (the same for the SASL broker), TICKPIPE_PG_PORT, TICKPIPE_PROMETHEUS_PORT, TICKPIPE_SIM_PORT,
# TICKPIPE_PRODUCER_STOCKS_PORT, TICKPIPE_PRODUCER_CRYPTO_PORT, TICKPIPE_CONSUMER_PORT.
# Environment: TICKPIPE_START_TIMEOUT (120 s), TICKPIPE_STOP_TIMEOUT (60 s),
# TICKPIPE_KAFKA_HEAP ("-Xms256m -Xmx768m"), TICKPIPE_PYTHON (<repo>/.venv/bin/python).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)
RUN_DIR=${TICKPIPE_RUN_DIR:-$REPO/.run}
[[ $RUN_DIR == /* ]] || RUN_DIR=$PWD/$RUN_DIR

# The ports' one definition: deploy/ports.env, each overridden by the environment variable of
# the same name (load_ports, deploy/ports.sh).
# shellcheck source=deploy/ports.sh
source "$REPO/deploy/ports.sh"
load_ports
KAFKA_PORT=$TICKPIPE_KAFKA_PORT
PG_PORT=$TICKPIPE_PG_PORT
PROM_PORT=$TICKPIPE_PROMETHEUS_PORT
SIM_PORT=$TICKPIPE_SIM_PORT
PRODUCER_STOCKS_PORT=$TICKPIPE_PRODUCER_STOCKS_PORT
PRODUCER_CRYPTO_PORT=$TICKPIPE_PRODUCER_CRYPTO_PORT
CONSUMER_PORT=$TICKPIPE_CONSUMER_PORT
CONTROLLER_PORT=$((KAFKA_PORT + 1))
SASL_PORT=$TICKPIPE_KAFKA_SASL_PORT
SASL_CONTROLLER_PORT=$((SASL_PORT + 1))
START_TIMEOUT=${TICKPIPE_START_TIMEOUT:-120}
STOP_TIMEOUT=${TICKPIPE_STOP_TIMEOUT:-60}
KAFKA_HEAP=${TICKPIPE_KAFKA_HEAP:--Xms256m -Xmx768m}
PY=${TICKPIPE_PYTHON:-$REPO/.venv/bin/python}

PG_DB=marketdata
KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB
TOPIC=market_ticks
DLQ_TOPIC=market_ticks.dlq

KAFKA_LIBS=$HERE/kafka/libs
KAFKA_STAMP=$KAFKA_LIBS/.pom.sha256
KAFKA_DIR=$RUN_DIR/kafka
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_CONF=$KAFKA_DIR/server.properties
# The opt-in SASL_SSL broker (start kafka-sasl): a separate instance, folder, logs and ports.
SASL_DIR=$RUN_DIR/kafka-sasl
SASL_CONF=$SASL_DIR/server.properties
SASL_HEAP=${TICKPIPE_KAFKA_SASL_HEAP:--Xms128m -Xmx512m}
PROM_DIR=$RUN_DIR/prometheus
PROM_CONF=$PROM_DIR/prometheus.yml
PROM_DATA=$PROM_DIR/data
# The alert rules: the same file the Helm chart and the compose stack use.
ALERT_RULES=$REPO/deploy/helm/tickpipe/files/alerts/tickpipe-alerts.yaml
LOG_DIR=$RUN_DIR/logs
PID_DIR=$RUN_DIR/pids
BACKUP_DIR=$RUN_DIR/backup
# The PostgreSQL folder; resolved by pg_locate (it may be a link when the postgres user
# cannot reach the run folder).
PG_DIR=$RUN_DIR/postgres
PG_DATA=$PG_DIR/data
PG_BIN=
JAVA=

SERVICES=(market-sim consumer producer-stocks producer-crypto)

svc_module() {
  case $1 in
    market-sim) echo tickpipe_market_sim ;;
    producer-stocks) echo tickpipe_producer_stocks ;;
    producer-crypto) echo tickpipe_producer_crypto ;;
    consumer) echo tickpipe_consumer ;;
    *) return 1 ;;
  esac
}

svc_port() {
  case $1 in
    market-sim) echo "$SIM_PORT" ;;
    producer-stocks) echo "$PRODUCER_STOCKS_PORT" ;;
    producer-crypto) echo "$PRODUCER_CRYPTO_PORT" ;;
    consumer) echo "$CONSUMER_PORT" ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------------------------- helpers

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'stack.sh: warning: %s\n' "$*" >&2; }
die() { printf 'stack.sh: error: %s\n' "$*" >&2; exit 1; }

# Show the end of a log file on stderr (after a failure).
show_log_tail() {
  local file=$1 lines=${2:-40}
  if [[ -s $file ]]; then
    printf -- '---- last %s lines of %s ----\n' "$lines" "$file" >&2
    tail -n "$lines" -- "$file" >&2
    printf -- '----\n' >&2
  else
    printf 'stack.sh: (no log at %s)\n' "$file" >&2
  fi
}

is_root() { [[ $(id -u) -eq 0 ]]; }

APT_UPDATED=false
apt_install() {
  if ! $APT_UPDATED; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=true
  fi
  say "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Supervision (pid files, readiness waits, SIGTERM then SIGKILL) is one Python module, shared
# with deploy/cluster/cluster.sh and the tests' process helpers:
# tools/localstack/src/tickpipe_localstack/supervise.py. It uses only the standard library, so
# the system's python3 runs it before any virtualenv exists.
# fd 9 (the stack lock) is closed for it, so no process it starts ever holds the lock.
SUPERVISE_PY=$REPO/tools/localstack/src/tickpipe_localstack/supervise.py
supervise() {
  local python=$PY
  [[ -x $python ]] || python=$(command -v python3) || die "python3 is needed (the stack's supervision is Python)"
  "$python" "$SUPERVISE_PY" "$@" 9>&-
}

# PIDFILE MARKER -> the pid, if that process runs and its command line contains MARKER
# (a stale pid file pointing at a recycled pid is not trusted).
live_pid() { supervise pid "$1" "$2" 2>/dev/null; }

# [--cwd DIR] PIDFILE LOG COMMAND...: start COMMAND in its own session (a Ctrl-C in the
# terminal that started it, or that runs `make logs`, does not reach it), stdin from
# /dev/null, output appended to LOG, its pid (with its start time) in PIDFILE and in LAUNCHED.
LAUNCHED=
launch() { LAUNCHED=$(supervise launch "$@") || die "could not start: $*"; }

# NAME PIDFILE MARKER SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL; idempotent.
stop_pid() { supervise stop "$@"; }

# URL PIDFILE MARKER LOG: wait until URL answers 2xx; false (the log's end on stderr) when the
# process exits first or TICKPIPE_START_TIMEOUT passes.
wait_http() { supervise wait-http "$1" "$2" "$3" "$START_TIMEOUT" "$4"; }

http_ok() { supervise http-ok "$1"; } # URL -> true on a 2xx answer

port_open() { # PORT -> true when something accepts TCP connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

now() { date +%s; }

need_python() {
  [[ -x $PY ]] || die "no Python environment at $PY: run 'make venv' first (the stack uses its confluent_kafka and runs the services from it)"
  "$PY" -c 'import confluent_kafka' 2>/dev/null ||
    die "$PY cannot import confluent_kafka: run 'make venv' (it installs the pinned packages)"
}

lock_stack() {
  mkdir -p -- "$RUN_DIR"
  exec 9>>"$RUN_DIR/.stack.lock"
  if ! flock -n 9; then
    say "another stack.sh is starting or stopping things in $RUN_DIR: waiting for it"
    flock -w 900 9 || die "gave up waiting for the lock $RUN_DIR/.stack.lock"
  fi
}

# ---------------------------------------------------------------------------------- install

java_cmd() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    echo "$JAVA_HOME/bin/java"
  else
    command -v java || true
  fi
}

java_major() { # JAVA -> its major version (8, 11, 17, ...)
  "$1" -XshowSettings:properties -version 2>&1 |
    awk -F'= *' '/java\.specification\.version/ { v = $2; sub(/^1\./, "", v); print int(v); exit }'
}

ensure_java() {
  local java major
  java=$(java_cmd)
  if [[ -n $java ]]; then
    major=$(java_major "$java")
    if [[ ${major:-0} -ge 17 ]]; then
      JAVA=$java
      return 0
    fi
    warn "$java is Java ${major:-?}; Kafka 4 needs Java 17 or newer"
  fi
  if is_root; then
    apt_install openjdk-17-jre-headless
    java=$(command -v java) || die "java is still missing after installing openjdk-17-jre-headless"
    JAVA=$java
  else
    die "Kafka needs Java 17+: run 'sudo apt-get install -y openjdk-17-jre-headless' (or set JAVA_HOME)"
  fi
}

ensure_maven() {
  command -v mvn >/dev/null && return 0
  if is_root; then
    apt_install maven
  else
    die "fetching the Kafka jars needs Maven: run 'sudo apt-get install -y maven'"
  fi
}

pom_hash() { sha256sum -- "$HERE/pom.xml" | cut -d' ' -f1; }

kafka_jars_ok() {
  [[ -r $KAFKA_STAMP && "$(cat -- "$KAFKA_STAMP")" == "$(pom_hash)" ]] &&
    compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null
}

KAFKA_JARS_CHECKED=false
ensure_kafka_jars() {
  $KAFKA_JARS_CHECKED && return 0
  KAFKA_JARS_CHECKED=true
  if kafka_jars_ok; then
    say "Kafka jars: up to date in ${KAFKA_LIBS#"$REPO"/} ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
    return 0
  fi
  ensure_maven
  say "Kafka jars: fetching the dependencies of deploy/local/pom.xml with Maven"
  local t0=$SECONDS
  rm -rf -- "$KAFKA_LIBS"
  mkdir -p -- "$KAFKA_LIBS"
  # (Debian's Maven 3.8 prints colour resets even with -B -q: strip them)
  if ! mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies "-DoutputDirectory=$KAFKA_LIBS" 2>&1 |
    sed -u 's/\x1b\[[0-9;]*m//g'; then
    die "mvn could not fetch the Kafka jars (see its messages above); Maven Central must be reachable"
  fi
  compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null || die "mvn ran but no kafka_2.13 jar is in $KAFKA_LIBS"
  pom_hash >"$KAFKA_STAMP"
  say "Kafka jars: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in ${KAFKA_LIBS#"$REPO"/} ($((SECONDS - t0))s)"
}

# Find PostgreSQL's server binaries (the newest installed version, or the version the data
# folder was made with when that is installed); PG_BIN is set.
find_pg_bin() {
  local want=
  [[ -r $PG_DATA/PG_VERSION ]] && want=$(cat -- "$PG_DATA/PG_VERSION")
  if [[ -n $want && -x /usr/lib/postgresql/$want/bin/postgres ]]; then
    PG_BIN=/usr/lib/postgresql/$want/bin
    return 0
  fi
  local found
  found=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null | sort -V | tail -n 1)
  [[ -n $found ]] || return 1
  PG_BIN=${found%/postgres}
  if [[ -n $want ]]; then
    warn "the database in $PG_DATA was made by PostgreSQL $want, which is not installed; found only $PG_BIN"
  fi
}

ensure_postgres_bins() {
  if ! find_pg_bin; then
    if is_root; then
      apt_install postgresql
      find_pg_bin || die "installed postgresql, but no /usr/lib/postgresql/*/bin/postgres is there"
    else
      die "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/postgres): run 'sudo apt-get install -y postgresql'"
    fi
  fi
  if is_root && ! id -u postgres >/dev/null 2>&1; then
    die "running as root, PostgreSQL must run as the 'postgres' system user, which does not exist (it comes with Debian's postgresql package)"
  fi
}

cmd_install() {
  local t0=$SECONDS
  ensure_java
  say "Java: $JAVA (Java $(java_major "$JAVA"))"
  ensure_kafka_jars
  ensure_postgres_bins
  say "PostgreSQL: $PG_BIN ($("$PG_BIN/postgres" --version))"
  if ensure_prometheus; then
    say "Prometheus: $(command -v prometheus) ($(prometheus_version))"
  fi
  say "install: done ($((SECONDS - t0))s)"
}

# Prometheus and promtool from Debian's package (as root; otherwise say what to install).
# The package also sets up its own system service (port 9090, /var/lib/prometheus); tickpipe
# does not use it: the stack runs its own Prometheus from the run folder (start_prometheus).
prometheus_bins_ok() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

prometheus_version() { prometheus --version 2>&1 | head -n 1; }

PROMETHEUS_CHECKED=false
ensure_prometheus() { # -> true when prometheus and promtool are there
  prometheus_bins_ok && return 0
  if $PROMETHEUS_CHECKED; then
    return 1
  fi
  PROMETHEUS_CHECKED=true
  if is_root; then
    # (called in a condition, so `set -e` does not apply here: check the outcome instead)
    if ! apt_install prometheus || ! prometheus_bins_ok; then
      warn "could not install Debian's prometheus package (see above): no Prometheus, no promtool"
      return 1
    fi
    note "Debian's prometheus package may run its own system service on :9090; tickpipe's Prometheus is a separate process (127.0.0.1:$PROM_PORT, data in $PROM_DIR)"
    return 0
  fi
  warn "Prometheus is not installed: run 'sudo apt-get install -y prometheus' (the pipeline runs without it; the alert-rule and observability tests need it)"
  return 1
}

# ------------------------------------------------------------------------------------ kafka

kafka_pid() { live_pid "$PID_DIR/kafka.pid" "$KAFKA_CONF"; }

kafka_running() { [[ -n $(kafka_pid) ]]; }

kafka_java() { # HEAP_OPTIONS [LOGS_DIR] -> the JVM command line of the Kafka tools and broker
  # shellcheck disable=SC2086 # the heap options are several words
  printf '%s\n' "$JAVA" $1 -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.xml" "-Dkafka.logs.dir=${2:-$LOG_DIR}" \
    -cp "$KAFKA_LIBS/*"
}

write_kafka_config() {
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$KAFKA_DATA|g" "$HERE/kafka/server.properties.in" >"$KAFKA_CONF.tmp"
  mv -f -- "$KAFKA_CONF.tmp" "$KAFKA_CONF"
}

format_kafka_storage() { # DIR STDOUT_LOG [MORE StorageTool ARGS] (DIR holds data/, server.properties)
  local dir=$1 log=$2
  shift 2
  [[ -f $dir/data/meta.properties ]] && return 0
  local java=() cluster_id
  mapfile -t java < <(kafka_java "-Xmx256m")
  if [[ -s $dir/cluster.id ]]; then
    cluster_id=$(cat -- "$dir/cluster.id")
  else
    local out
    out=$("${java[@]}" kafka.tools.StorageTool random-uuid 2>&1) || true
    cluster_id=$(tail -n 1 <<<"$out")
    if [[ ! $cluster_id =~ ^[A-Za-z0-9_-]{22}$ ]]; then
      printf '%s\n' "$out" >>"$log"
      show_log_tail "$log" 20
      die "kafka.tools.StorageTool random-uuid gave no cluster id"
    fi
    printf '%s\n' "$cluster_id" >"$dir/cluster.id"
  fi
  say "Kafka: formatting the storage in $dir/data (cluster id $cluster_id; done once)"
  if ! "${java[@]}" kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$dir/server.properties" "$@" \
    >>"$log" 2>&1; then
    show_log_tail "$log"
    # it was not formatted before: leave no half-formatted folder behind, the next start retries
    rm -rf -- "$dir/data"
    mkdir -p -- "$dir/data"
    die "kafka.tools.StorageTool format failed"
  fi
}

start_kafka() {
  ensure_java
  ensure_kafka_jars
  need_python
  mkdir -p -- "$KAFKA_DATA" "$LOG_DIR" "$PID_DIR"
  local pid t0=$SECONDS
  pid=$(kafka_pid || true)
  if [[ -n $pid ]]; then
    say "Kafka: already running (pid $pid) on $KAFKA_BOOTSTRAP"
  else
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is in use by another process (not this stack's Kafka); set TICKPIPE_KAFKA_PORT"
    port_open "$CONTROLLER_PORT" && die "port $CONTROLLER_PORT (the Kafka controller's) is in use by another process; set TICKPIPE_KAFKA_PORT"
    write_kafka_config
    format_kafka_storage "$KAFKA_DIR" "$LOG_DIR/kafka.stdout.log"
    local java=()
    mapfile -t java < <(kafka_java "$KAFKA_HEAP")
    printf '\n==== %s starting Kafka ====\n' "$(date -Is)" >>"$LOG_DIR/kafka.stdout.log"
    launch "$PID_DIR/kafka.pid" "$LOG_DIR/kafka.stdout.log" "${java[@]}" kafka.Kafka "$KAFKA_CONF"
    pid=$LAUNCHED
    say "Kafka: started (pid $pid), waiting for it on $KAFKA_BOOTSTRAP (up to ${START_TIMEOUT}s)"
  fi
  if ! "$PY" -m tickpipe_localstack.kafka_ready "$KAFKA_BOOTSTRAP" "$pid" "$START_TIMEOUT" "$TOPIC:3" "$DLQ_TOPIC:1" |
    sed 's/^/    /'; then
    show_log_tail "$LOG_DIR/kafka.log"
    show_log_tail "$LOG_DIR/kafka.stdout.log" 20
    die "Kafka did not become ready on $KAFKA_BOOTSTRAP (logs: $LOG_DIR/kafka.log)"
  fi
  say "Kafka: ready on $KAFKA_BOOTSTRAP, topics $TOPIC and $DLQ_TOPIC ($((SECONDS - t0))s)"
}

stop_kafka() {
  local pid
  pid=$(kafka_pid || true)
  if [[ -z $pid ]]; then
    say "Kafka: not running"
  else
    stop_pid Kafka "$PID_DIR/kafka.pid" "$KAFKA_CONF" "$STOP_TIMEOUT"
  fi
  rm -f -- "$PID_DIR/kafka.pid"
}

# ------------------------------------------------------------------------------- kafka-sasl
# The SASL_SSL broker: TLS material, passwords, config and provisioning are Python's
# (tickpipe_localstack.kafka_sasl); here it is installed, formatted, launched and stopped.

kafka_sasl_pid() { live_pid "$PID_DIR/kafka-sasl.pid" "$SASL_CONF"; }

sasl_py() { "$PY" -m tickpipe_localstack.kafka_sasl "$@"; }

start_kafka_sasl() {
  ensure_java
  ensure_kafka_jars
  need_python
  command -v openssl >/dev/null || die "the SASL broker's certificates need openssl: run 'apt-get install -y openssl'"
  local logs=$LOG_DIR/kafka-sasl pid t0=$SECONDS
  mkdir -p -- "$SASL_DIR/data" "$logs" "$PID_DIR"
  pid=$(kafka_sasl_pid || true)
  if [[ -n $pid ]]; then
    say "Kafka (SASL_SSL): already running (pid $pid) on 127.0.0.1:$SASL_PORT"
  else
    port_open "$SASL_PORT" && die "port $SASL_PORT is in use by another process; set TICKPIPE_KAFKA_SASL_PORT"
    port_open "$SASL_CONTROLLER_PORT" && die "port $SASL_CONTROLLER_PORT (the SASL broker's controller) is in use; set TICKPIPE_KAFKA_SASL_PORT"
    sasl_py prepare "$SASL_DIR" "$SASL_PORT" "$SASL_CONTROLLER_PORT" || die "could not prepare the SASL broker in $SASL_DIR"
    format_kafka_storage "$SASL_DIR" "$logs/kafka.stdout.log" --add-scram "$(sasl_py scram "$SASL_DIR")"
    local java=()
    mapfile -t java < <(kafka_java "$SASL_HEAP" "$logs")
    printf '\n==== %s starting Kafka (SASL_SSL) ====\n' "$(date -Is)" >>"$logs/kafka.stdout.log"
    launch "$PID_DIR/kafka-sasl.pid" "$logs/kafka.stdout.log" "${java[@]}" kafka.Kafka "$SASL_CONF"
    pid=$LAUNCHED
    say "Kafka (SASL_SSL): started (pid $pid), waiting for it on 127.0.0.1:$SASL_PORT"
  fi
  if ! sasl_py provision "$SASL_DIR" "$pid" "$START_TIMEOUT" | sed 's/^/    /'; then
    show_log_tail "$logs/kafka.log"
    die "the SASL_SSL broker did not become ready (logs: $logs)"
  fi
  say "Kafka (SASL_SSL): ready on 127.0.0.1:$SASL_PORT, CA $SASL_DIR/tls/ca.pem, passwords in $SASL_DIR/credentials.json ($((SECONDS - t0))s)"
}

stop_kafka_sasl() { stop_pid "Kafka (SASL_SSL)" "$PID_DIR/kafka-sasl.pid" "$SASL_CONF" "$STOP_TIMEOUT"; }

# --------------------------------------------------------------------------------- postgres

# Run a command as the user PostgreSQL runs as: the postgres system user when we are root
# (initdb and postgres refuse root), else ourselves. fd 9 (the lock) is not passed on.
as_pg() {
  if is_root; then
    runuser -u postgres -- "$@" 9>&-
  else
    "$@" 9>&-
  fi
}

# Settle where the database lives. Normally <run>/postgres; when we are root and the
# postgres user cannot reach the run folder (e.g. a repo under /root), the data go to a
# folder under /var/tmp that it can reach, linked from <run>/postgres.
pg_locate() {
  mkdir -p -- "$RUN_DIR"
  if [[ ! -e $RUN_DIR/postgres && ! -L $RUN_DIR/postgres ]]; then
    if is_root && ! runuser -u postgres -- test -x "$RUN_DIR" 2>/dev/null; then
      local alt
      alt=/var/tmp/tickpipe-postgres-$(printf '%s' "$RUN_DIR" | sha256sum | cut -c1-12)
      install -d -m 0700 -o postgres -g postgres -- "$alt"
      ln -s -- "$alt" "$RUN_DIR/postgres"
      note "the postgres user cannot reach $RUN_DIR: the database lives in $alt (linked from $RUN_DIR/postgres)"
    else
      mkdir -p -- "$RUN_DIR/postgres"
    fi
  fi
  PG_DIR=$(readlink -f -- "$RUN_DIR/postgres")
  mkdir -p -- "$PG_DIR"
  PG_DATA=$PG_DIR/data
  if is_root; then
    chown postgres:postgres -- "$PG_DIR"
    chmod 0700 -- "$PG_DIR"
  fi
}

# Read-only twin of pg_locate: where the database is, if it was ever made.
pg_resolve() {
  if [[ -e $RUN_DIR/postgres || -L $RUN_DIR/postgres ]]; then
    PG_DIR=$(readlink -f -- "$RUN_DIR/postgres")
    PG_DATA=$PG_DIR/data
  fi
}

pg_pid() { live_pid "$PG_DATA/postmaster.pid" "$PG_DATA"; }

pg_running() { [[ -n $(pg_pid) ]]; }

pg_isready_now() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t 2
}

pg_psql() { # ARGS... -> psql as postgres on 127.0.0.1 (no ~/.psqlrc)
  "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

init_postgres() {
  [[ -s $PG_DATA/PG_VERSION ]] && return 0
  say "PostgreSQL: creating the database cluster in $PG_DATA (initdb, done once)"
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    >>"$LOG_DIR/postgres.log" 2>&1; then
    show_log_tail "$LOG_DIR/postgres.log"
    die "initdb failed"
  fi
  as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<'EOF'

# the local stack's settings (deploy/local/stack.sh writes this file at each start)
include_if_exists = 'tickpipe.conf'
EOF
}

write_pg_config() {
  cat <<EOF | as_pg tee "$PG_DATA/tickpipe.conf" >/dev/null
# Written by deploy/local/stack.sh at each start: a local development/test server.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

start_postgres() {
  ensure_postgres_bins
  mkdir -p -- "$LOG_DIR" "$PID_DIR"
  pg_locate
  find_pg_bin || true
  local pid t0=$SECONDS
  pid=$(pg_pid || true)
  if [[ -n $pid ]]; then
    say "PostgreSQL: already running (pid $pid) on 127.0.0.1:$PG_PORT"
  else
    port_open "$PG_PORT" && die "port $PG_PORT is in use by another process (not this stack's PostgreSQL); set TICKPIPE_PG_PORT"
    init_postgres
    write_pg_config
    printf '\n==== %s starting PostgreSQL ====\n' "$(date -Is)" >>"$LOG_DIR/postgres.log"
    say "PostgreSQL: starting on 127.0.0.1:$PG_PORT (up to ${START_TIMEOUT}s)"
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -w -t "$START_TIMEOUT" -s \
      </dev/null >>"$LOG_DIR/postgres.log" 2>&1; then
      show_log_tail "$LOG_DIR/postgres.log"
      die "PostgreSQL did not start (log: $LOG_DIR/postgres.log)"
    fi
    pid=$(pg_pid || true)
  fi
  local deadline=$(($(now) + START_TIMEOUT))
  until pg_isready_now; do
    if (($(now) >= deadline)) || ! pg_running; then
      show_log_tail "$LOG_DIR/postgres.log"
      die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT"
    fi
    sleep 0.5
  done
  [[ -n $pid ]] && printf '%s\n' "$pid" >"$PID_DIR/postgres.pid"
  if [[ -z $(pg_psql -d postgres -qtAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") ]]; then
    pg_psql -d postgres -qc "CREATE DATABASE $PG_DB" || die "could not create the database $PG_DB"
    note "created the database $PG_DB"
  fi
  say "PostgreSQL: ready at $DATABASE_URL ($((SECONDS - t0))s)"
}

stop_postgres() {
  pg_resolve
  local pid
  pid=$(pg_pid || true)
  if [[ -z $pid ]]; then
    say "PostgreSQL: not running"
  else
    find_pg_bin || die "PostgreSQL runs (pid $pid) but its binaries are gone"
    printf '==> stopping PostgreSQL (pid %s) ... ' "$pid"
    if as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" -s >>"$LOG_DIR/postgres.log" 2>&1; then
      echo "stopped"
    else
      echo "no clean stop within ${STOP_TIMEOUT}s: immediate shutdown"
      as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 -s >>"$LOG_DIR/postgres.log" 2>&1 ||
        stop_pid PostgreSQL "$PG_DATA/postmaster.pid" "$PG_DATA" 10
    fi
  fi
  rm -f -- "$PID_DIR/postgres.pid"
}

# --------------------------------------------------------------------------------- services

svc_pid() { live_pid "$PID_DIR/$1.pid" "-m $(svc_module "$1")"; }

# Read KEY from the environment, else from the git-ignored .env at the repo root.
env_or_dotenv() {
  if [[ -n ${!1:-} ]]; then
    printf '%s' "${!1}"
  else
    env_file_value "$REPO/.env" "$1"
  fi
}

ALPACA_KEY=
ALPACA_SECRET=
load_alpaca_keys() {
  ALPACA_KEY=$(env_or_dotenv ALPACA_API_KEY)
  ALPACA_SECRET=$(env_or_dotenv ALPACA_SECRET_KEY)
}

use_sim() { [[ -z $ALPACA_KEY ]]; }

svc_wanted() { # the services `up` runs: the simulator only without Alpaca keys
  local svc
  for svc in "${SERVICES[@]}"; do
    if [[ $svc == market-sim ]] && ! use_sim; then
      continue
    fi
    printf '%s\n' "$svc"
  done
}

start_service() {
  local svc=$1 module port pid log url
  module=$(svc_module "$svc")
  port=$(svc_port "$svc")
  log=$LOG_DIR/$svc.log
  url=http://127.0.0.1:$port/healthz
  pid=$(svc_pid "$svc" || true)
  if [[ -n $pid ]]; then
    say "$svc: already running (pid $pid)"
  else
    port_open "$port" && die "port $port (of $svc) is in use by another process"
    local env=(PYTHONUNBUFFERED=1 LOG_FORMAT=json HTTP_HOST=127.0.0.1)
    case $svc in
      market-sim)
        env+=(SIM_HOST=127.0.0.1 "SIM_PORT=$SIM_PORT")
        ;;
      producer-stocks | producer-crypto)
        env+=("HTTP_PORT=$port" "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP" "BACKUP_DIR=$BACKUP_DIR")
        if use_sim; then
          env+=("ALPACA_DATA_STREAM_URL=ws://127.0.0.1:$SIM_PORT")
        else
          env+=("ALPACA_API_KEY=$ALPACA_KEY" "ALPACA_SECRET_KEY=$ALPACA_SECRET")
        fi
        ;;
      consumer)
        env+=("HTTP_PORT=$port" "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP" "DATABASE_URL=$DATABASE_URL")
        ;;
    esac
    printf '\n==== %s starting %s ====\n' "$(date -Is)" "$svc" >>"$log"
    launch --cwd "$REPO" "$PID_DIR/$svc.pid" "$log" env "${env[@]}" "$PY" -m "$module"
    say "$svc: started (pid $LAUNCHED), waiting for $url"
  fi
  wait_http "$url" "$PID_DIR/$svc.pid" "-m $module" "$log" || die "$svc did not start (log: $log)"
}

# Fail early, before anything starts, when a service has no runnable module yet.
check_service_modules() {
  need_python
  load_alpaca_keys
  local svc missing=() wanted=()
  mapfile -t wanted < <(svc_wanted)
  for svc in "${wanted[@]}"; do
    if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1] + ".__main__") is None)' \
      "$(svc_module "$svc")" 2>/dev/null; then
      missing+=("$svc ($(svc_module "$svc").__main__)")
    fi
  done
  if ((${#missing[@]})); then
    die "cannot start the pipeline: these services have no runnable module yet: ${missing[*]} (is 'make venv' up to date?)"
  fi
}

start_services() {
  check_service_modules
  mkdir -p -- "$LOG_DIR" "$PID_DIR" "$BACKUP_DIR"
  local svc wanted=()
  mapfile -t wanted < <(svc_wanted)
  if use_sim; then
    say "feed: tickpipe-market-sim (ALPACA_API_KEY is not set, neither in the environment nor in .env)"
  else
    say "feed: live Alpaca data (ALPACA_API_KEY is set)"
  fi
  for svc in "${wanted[@]}"; do
    start_service "$svc"
  done
}

stop_services() {
  local i svc pid stopped=0
  # producers first (they flush to Kafka), then the feed, then the consumer
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    svc=${SERVICES[i]}
    pid=$(svc_pid "$svc" || true)
    if [[ -n $pid ]]; then
      stop_pid "$svc" "$PID_DIR/$svc.pid" "-m $(svc_module "$svc")" "$STOP_TIMEOUT"
      stopped=$((stopped + 1))
    fi
    rm -f -- "$PID_DIR/$svc.pid"
  done
  ((stopped)) || say "services: none running"
}

# ------------------------------------------------------------------------------- prometheus

prometheus_pid() { live_pid "$PID_DIR/prometheus.pid" "$PROM_CONF"; }

write_prometheus_config() {
  mkdir -p -- "$PROM_DIR" "$PROM_DATA"
  sed -e "s|@SCRAPE_INTERVAL@|5s|g" -e "s|@SCRAPE_TIMEOUT@|4s|g" \
    -e "s|@RULES_FILE@|$ALERT_RULES|g" -e "s|@PROMETHEUS_PORT@|$PROM_PORT|g" \
    -e "s|@SIM_PORT@|$(svc_port market-sim)|g" \
    -e "s|@PRODUCER_STOCKS_PORT@|$(svc_port producer-stocks)|g" \
    -e "s|@PRODUCER_CRYPTO_PORT@|$(svc_port producer-crypto)|g" \
    -e "s|@CONSUMER_PORT@|$(svc_port consumer)|g" \
    "$HERE/prometheus/prometheus.yml.in" >"$PROM_CONF.tmp"
  if ! promtool check config "$PROM_CONF.tmp" >"$PROM_DIR/check.log" 2>&1; then
    cat -- "$PROM_DIR/check.log" >&2
    die "promtool rejects the Prometheus config or the alert rules ($ALERT_RULES)"
  fi
  mv -f -- "$PROM_CONF.tmp" "$PROM_CONF"
}

start_prometheus() {
  ensure_prometheus || die "Prometheus is not installed (see above)"
  mkdir -p -- "$LOG_DIR" "$PID_DIR"
  local pid t0=$SECONDS url=http://127.0.0.1:$PROM_PORT
  write_prometheus_config
  pid=$(prometheus_pid || true)
  if [[ -n $pid ]]; then
    kill -HUP "$pid" 2>/dev/null || true # re-read the config and the alert rules
    say "Prometheus: already running (pid $pid) on $url; configuration reloaded"
  else
    port_open "$PROM_PORT" && die "port $PROM_PORT is in use by another process (not this stack's Prometheus); set TICKPIPE_PROMETHEUS_PORT"
    printf '\n==== %s starting Prometheus ====\n' "$(date -Is)" >>"$LOG_DIR/prometheus.log"
    launch --cwd "$PROM_DIR" "$PID_DIR/prometheus.pid" "$LOG_DIR/prometheus.log" \
      "$(command -v prometheus)" "--config.file=$PROM_CONF" "--storage.tsdb.path=$PROM_DATA" \
      --storage.tsdb.retention.time=7d "--web.listen-address=127.0.0.1:$PROM_PORT"
    pid=$LAUNCHED
    say "Prometheus: started (pid $pid), waiting for $url/-/ready"
  fi
  wait_http "$url/-/ready" "$PID_DIR/prometheus.pid" "$PROM_CONF" "$LOG_DIR/prometheus.log" ||
    die "Prometheus did not start (log: $LOG_DIR/prometheus.log)"
  say "Prometheus: ready at $url ($((SECONDS - t0))s)"
}

stop_prometheus() {
  local pid
  pid=$(prometheus_pid || true)
  if [[ -z $pid ]]; then
    say "Prometheus: not running"
  else
    stop_pid Prometheus "$PID_DIR/prometheus.pid" "$PROM_CONF" "$STOP_TIMEOUT"
  fi
  rm -f -- "$PID_DIR/prometheus.pid"
}

# --------------------------------------------------------------------------------- commands

docker_answers() {
  command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

cmd_up() {
  if docker_answers; then
    say "a Docker engine answers, but TICKPIPE_STACK=local asks for the local process stack"
  else
    say "no Docker engine answers ('docker info' fails): using the local process stack (plain processes, no containers)"
  fi
  cmd_install
  check_service_modules
  start_kafka
  start_postgres
  start_services
  local prometheus=false
  if ensure_prometheus; then
    start_prometheus
    prometheus=true
  fi
  local svc port
  echo
  echo "tickpipe is up (local process stack, run folder $RUN_DIR)"
  printf '  %-16s %s\n' "Kafka" "$KAFKA_BOOTSTRAP  (topics $TOPIC, $DLQ_TOPIC)"
  printf '  %-16s %s\n' "PostgreSQL" "$DATABASE_URL  (make psql)"
  while IFS= read -r svc; do
    port=$(svc_port "$svc")
    if [[ $svc == market-sim ]]; then
      printf '  %-16s %s\n' "$svc" "ws://127.0.0.1:$SIM_PORT  health http://127.0.0.1:$port/healthz  stats http://127.0.0.1:$port/stats"
    else
      printf '  %-16s %s\n' "$svc" "health http://127.0.0.1:$port/healthz  ready /readyz  metrics http://127.0.0.1:$port/metrics"
    fi
  done < <(svc_wanted)
  if $prometheus; then
    printf '  %-16s %s\n' "Prometheus" "http://127.0.0.1:$PROM_PORT  (alerts /alerts; make status for a summary)"
  fi
  printf '  %-16s %s\n' "logs" "$LOG_DIR  (make logs)"
  printf '  %-16s %s\n' "CSV backups" "$BACKUP_DIR"
  printf '  %-16s %s\n' "status" "make ps"
  printf '  %-16s %s\n' "stop" "make down"
}

cmd_down() {
  stop_prometheus
  stop_services
  stop_kafka_sasl
  stop_kafka
  stop_postgres
}

cmd_status() {
  local pid svc port state health
  echo "tickpipe local stack (run folder $RUN_DIR)"
  pid=$(kafka_pid || true)
  printf '  %-16s %-8s %-10s %s\n' kafka "$([[ -n $pid ]] && echo running || echo stopped)" \
    "${pid:+pid $pid}" "$KAFKA_BOOTSTRAP (controller 127.0.0.1:$CONTROLLER_PORT)"
  pg_resolve
  pid=$(pg_pid || true)
  printf '  %-16s %-8s %-10s %s\n' postgres "$([[ -n $pid ]] && echo running || echo stopped)" \
    "${pid:+pid $pid}" "$DATABASE_URL"
  for svc in "${SERVICES[@]}"; do
    port=$(svc_port "$svc")
    pid=$(svc_pid "$svc" || true)
    state=stopped health=
    if [[ -n $pid ]]; then
      state=running
      if http_ok "http://127.0.0.1:$port/healthz"; then health=healthy; else health=unhealthy; fi
    fi
    printf '  %-16s %-8s %-10s %s\n' "$svc" "$state" "${pid:+pid $pid}" \
      "http://127.0.0.1:$port/healthz${health:+ ($health)}"
  done
  pid=$(kafka_sasl_pid || true)
  printf '  %-16s %-8s %-10s %s\n' kafka-sasl "$([[ -n $pid ]] && echo running || echo stopped)" \
    "${pid:+pid $pid}" "127.0.0.1:$SASL_PORT (SASL_SSL, opt-in: start kafka-sasl)"
  pid=$(prometheus_pid || true)
  printf '  %-16s %-8s %-10s %s\n' prometheus "$([[ -n $pid ]] && echo running || echo stopped)" \
    "${pid:+pid $pid}" "http://127.0.0.1:$PROM_PORT"
  echo "  logs: $LOG_DIR"
}

cmd_env() {
  echo "export KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP"
  echo "export DATABASE_URL=$DATABASE_URL"
}

cmd_logs() {
  local lines=20 names=() files=() name
  while (($#)); do
    case $1 in
      -n) lines=${2:?-n needs a number}; shift 2 ;;
      -n*) lines=${1#-n}; shift ;;
      --lines=*) lines=${1#--lines=}; shift ;;
      all) names+=("${SERVICES[@]}" kafka postgres prometheus); shift ;;
      -h | --help) echo "usage: stack.sh logs [-n N] [all|kafka|postgres|prometheus|${SERVICES[*]// /|}...]"; return 0 ;;
      *) names+=("$1"); shift ;;
    esac
  done
  [[ $lines =~ ^[0-9]+$ ]] || die "logs: -n needs a number, not '$lines'"
  ((${#names[@]})) || names=("${SERVICES[@]}")
  for name in "${names[@]}"; do
    case $name in
      kafka) files+=("$LOG_DIR/kafka.log") ;;
      kafka-sasl) files+=("$LOG_DIR/kafka-sasl/kafka.log") ;;
      postgres) files+=("$LOG_DIR/postgres.log") ;;
      prometheus) files+=("$LOG_DIR/prometheus.log") ;;
      *)
        svc_module "$name" >/dev/null || die "logs: unknown name '$name' (services: ${SERVICES[*]}; also kafka, postgres, prometheus, all)"
        files+=("$LOG_DIR/$name.log")
        ;;
    esac
  done
  local existing=()
  for name in "${files[@]}"; do
    [[ -e $name ]] && existing+=("$name")
  done
  ((${#existing[@]})) || die "no logs yet in $LOG_DIR (start the pipeline with 'make up')"
  exec tail -n "$lines" -F -- "${existing[@]}"
}

cmd_psql() {
  pg_resolve
  ensure_postgres_bins
  pg_isready_now || die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT: start it with 'make stack-up' (or 'make up')"
  exec "$PG_BIN/psql" -X "$DATABASE_URL" "$@"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

what_of() { # COMMAND WHAT -> validate the target of start/stop
  case $2 in
    infra | kafka | kafka-sasl | postgres | services | prometheus) return 0 ;;
    all) [[ $1 == stop ]] && return 0 ;;
  esac
  die "usage: stack.sh $1 infra|kafka|kafka-sasl|postgres|services|prometheus$([[ $1 == stop ]] && echo '|all')"
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    install)
      lock_stack
      cmd_install
      ;;
    start)
      what_of start "${1:-}"
      lock_stack
      case $1 in
        infra) start_kafka; start_postgres; ensure_prometheus || true ;;
        kafka) start_kafka ;;
        kafka-sasl) start_kafka_sasl ;;
        postgres) start_postgres ;;
        services) start_services ;;
        prometheus) start_prometheus ;;
      esac
      ;;
    stop)
      what_of stop "${1:-}"
      lock_stack
      case $1 in
        all) cmd_down ;;
        infra) stop_kafka; stop_postgres ;;
        kafka) stop_kafka ;;
        kafka-sasl) stop_kafka_sasl ;;
        postgres) stop_postgres ;;
        services) stop_services ;;
        prometheus) stop_prometheus ;;
      esac
      ;;
    up) lock_stack; cmd_up ;;
    down) lock_stack; cmd_down ;;
    status | ps) cmd_status ;;
    env) cmd_env ;;
    logs) cmd_logs "$@" ;;
    psql) cmd_psql "$@" ;;
    -h | --help | help) usage ;;
    '') usage >&2; exit 2 ;;
    *) printf 'stack.sh: unknown command %s\n\n' "$cmd" >&2; usage >&2; exit 2 ;;
  esac
}

main "$@"
