#!/usr/bin/env bash
# A Docker engine of the project's own, for CI and for machines with no init system
# (../shared/ENGINES.md): Debian's dockerd (docker.io), started with its own socket, no
# iptables, no IP forwarding and no default bridge, so it changes nothing on the host.
#
# Usage: deploy/engines/docker.sh start|stop|status|env
#   start   install Debian's docker.io when root and dockerd is missing, start dockerd, wait
#           until it answers; an engine that already answers on the socket is reused as it is
#   stop    stop the dockerd this script started (its containers stop with it); a no-op when
#           none runs; an engine the script did not start (no pid file of ours) is left alone
#   status  "running" (exit 0) or "stopped" (exit 1), with the socket
#   env     prints `export DOCKER_HOST=...` for the engine: eval "$(deploy/engines/docker.sh env)"
#
# Environment (all optional):
#   TICKPIPE_DOCKER_ROOT  data root: images, build cache, volumes
#                         (default /var/lib/tickpipe/docker: machine-wide, so build caches
#                         outlive a fresh clone on the same machine)
#   TICKPIPE_DOCKER_RUN   exec root, socket, pid file, log (default /run/tickpipe/docker)
#
# The socket is not /var/run/docker.sock on purpose: an engine on the default socket changes
# what every `docker` command on the machine talks to. Use `env` to point a shell at it.
# Any docker CLI works with it: the client negotiates the API version down to the daemon's
# (Debian bookworm's dockerd 20.10 speaks API 1.41).
set -euo pipefail

DATA_ROOT=${TICKPIPE_DOCKER_ROOT:-/var/lib/tickpipe/docker}
RUN_DIR=${TICKPIPE_DOCKER_RUN:-/run/tickpipe/docker}
SOCKET=$RUN_DIR/docker.sock
PID_FILE=$RUN_DIR/dockerd.pid
LOG_FILE=$RUN_DIR/dockerd.log
HOST=unix://$SOCKET
START_TIMEOUT=${TICKPIPE_DOCKER_START_TIMEOUT:-90}
STOP_TIMEOUT=60

say() { printf '==> docker engine: %s\n' "$*" >&2; }
die() {
  printf 'deploy/engines/docker.sh: error: %s\n' "$*" >&2
  exit 1
}

answers() {
  command -v docker >/dev/null && DOCKER_HOST=$HOST timeout 20 docker info >/dev/null 2>&1
}

our_pid() { # the pid of the dockerd this script started, if it still runs
  local pid
  [[ -r $PID_FILE ]] || return 1
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

find_dockerd() {
  DOCKERD=$(command -v dockerd || true)
  [[ -n $DOCKERD ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "dockerd is missing: install Debian's docker.io (apt-get install docker.io) as root, then run this again"
  fi
  say "installing Debian's docker.io (dockerd, containerd, runc)"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends \
    docker.io >&2 || die "apt-get install docker.io failed"
  DOCKERD=$(command -v dockerd) || die "docker.io is installed but dockerd is not on PATH"
  command -v docker >/dev/null || die "no docker CLI on PATH"
}

start() {
  if answers; then
    say "already answers on $SOCKET"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "starting dockerd needs root (it mounts overlay filesystems and namespaces)"
  find_dockerd
  if pid=$(our_pid); then
    die "dockerd (pid $pid) runs but does not answer on $SOCKET: see $LOG_FILE, or '$0 stop' and start again"
  fi
  mkdir -p -- "$DATA_ROOT" "$RUN_DIR"
  rm -f -- "$SOCKET" "$PID_FILE"
  say "starting $($DOCKERD --version) (data root $DATA_ROOT, socket $SOCKET, log $LOG_FILE)"
  # setsid: the daemon is not in the caller's process group, so a Ctrl-C of `make` does not
  # kill it half-way; `stop` ends it.
  setsid "$DOCKERD" \
    --iptables=false --ip-forward=false --bridge=none \
    --data-root "$DATA_ROOT" --exec-root "$RUN_DIR/exec" \
    -H "$HOST" --pidfile "$PID_FILE" \
    --storage-driver overlay2 \
    >>"$LOG_FILE" 2>&1 </dev/null &
  local deadline=$((SECONDS + START_TIMEOUT)) launched=$!
  until answers; do
    if ! kill -0 "$launched" 2>/dev/null; then
      tail -n 20 -- "$LOG_FILE" >&2 || true
      die "dockerd exited during start-up (log above, all of it in $LOG_FILE)"
    fi
    ((SECONDS < deadline)) || {
      tail -n 20 -- "$LOG_FILE" >&2 || true
      die "dockerd did not answer within ${START_TIMEOUT}s (log above, all of it in $LOG_FILE)"
    }
    sleep 0.5
  done
  say "up: $(DOCKER_HOST=$HOST docker version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}, client {{.Client.Version}}')"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    answers && say "an engine answers on $SOCKET but this script did not start it (no pid file): left alone"
    return 0
  fi
  say "stopping dockerd (pid $pid); its containers get their stop signal first"
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "dockerd did not stop within ${STOP_TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
  rm -f -- "$PID_FILE"
}

status() {
  if answers; then
    echo "running  $HOST"
  else
    echo "stopped  $HOST"
    return 1
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) printf 'export DOCKER_HOST=%s\n' "$HOST" ;;
  *)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
