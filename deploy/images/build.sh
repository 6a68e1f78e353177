#!/usr/bin/env bash
# Builds tickpipe's images with no container registry: the base and infrastructure images are
# STAND-INS made here from Debian packages and Maven jars, and the four service images are
# built on the stand-in base. The engine is the one DOCKER_HOST names; unset, the default
# socket, else the project's own (deploy/engines/docker.sh start).
#
# Usage: deploy/images/build.sh [all|standins|services]...   (default: all)
#
# Tags (stable: the compose override deploy/compose/standins.yaml, the tests and the cluster
# scripts use them):
#   tickpipe-standin/debian:trixie       debootstrap --variant=minbase trixie, imported
#   tickpipe-standin/python:3.13-trixie  stands in for python:3.12.13-slim-trixie (Debian's Python 3.13)
#   tickpipe-standin/kafka:4.3.1         stands in for apache/kafka:4.3.1 (the Maven jars of
#                                        deploy/local/pom.xml on Debian's JRE)
#   tickpipe-standin/postgres:17         stands in for timescale/timescaledb:2.29.2-pg17 (Debian's
#                                        PostgreSQL 17, no TimescaleDB)
#   tickpipe-standin/prometheus:trixie   stands in for prom/prometheus:v3.15.0 (Debian's Prometheus)
#   tickpipe-{producer-stocks,producer-crypto,consumer,market-sim}:local
#                                        the services, as compose names them, built from the
#                                        repository root with BASE_IMAGE=the stand-in Python
# Every stand-in carries the label io.tickpipe.standin-for=<the upstream image>.
# Grafana has no Debian package and no stand-in: it is not built.
#
# Cache-friendly: the debootstrap base is made only when its tag is missing (delete the tag, or
# TICKPIPE_REBUILD_BASE=1, to refresh it); every other image is a `docker build` whose layers
# the engine caches, so a second run with unchanged sources takes seconds; the images a rebuild
# replaced are removed (the layer cache is kept). Builds use the
# host's network (`--network host`): pip and apt inside them reach the package registries the
# way this machine does, and an engine started with --bridge=none has no other network.
#
# Environment: TICKPIPE_VERSION, TICKPIPE_REVISION (image labels; default from the repository).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)
STANDIN=$HERE/standin

DEBIAN_TAG=tickpipe-standin/debian:trixie
PYTHON_TAG=tickpipe-standin/python:3.13-trixie
KAFKA_TAG=tickpipe-standin/kafka:4.3.1
POSTGRES_TAG=tickpipe-standin/postgres:17
PROMETHEUS_TAG=tickpipe-standin/prometheus:trixie
SERVICES=(producer-stocks producer-crypto consumer market-sim)

say() { printf '==> images: %s\n' "$*" >&2; }
die() {
  printf 'deploy/images/build.sh: error: %s\n' "$*" >&2
  exit 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build() { # TAG CONTEXT-ARGS... (the rest of a `docker build` command line)
  local tag=$1 t0=$SECONDS
  shift
  say "building $tag"
  # The classic builder (the engine may be older than BuildKit's CLI plugin): quiet except on
  # failure, so a CI log shows the step that broke and not 500 lines of pip.
  local log
  log=$(mktemp)
  if ! DOCKER_BUILDKIT=0 docker build --force-rm --network host --tag "$tag" "$@" >"$log" 2>&1; then
    tail -n 60 -- "$log" >&2
    rm -f -- "$log"
    die "docker build of $tag failed (its last lines above)"
  fi
  rm -f -- "$log"
  say "built $tag in $((SECONDS - t0))s ($(size_of "$tag"))"
}

size_of() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

debian_base() {
  if have_image "$DEBIAN_TAG" && [[ -z ${TICKPIPE_REBUILD_BASE:-} ]]; then
    say "$DEBIAN_TAG is there ($(size_of "$DEBIAN_TAG"))"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root (to make $DEBIAN_TAG)"
  if ! command -v debootstrap >/dev/null; then
    say "installing Debian's debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y debootstrap >&2 ||
      die "apt-get install debootstrap failed"
  fi
  local root t0=$SECONDS
  root=$(mktemp -d /var/tmp/tickpipe-debootstrap.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the folder is this run's
  trap "rm -rf -- '$root'" EXIT
  say "debootstrap --variant=minbase trixie (Debian's mirror, as this machine's apt uses)"
  if ! debootstrap --variant=minbase trixie "$root" >"$root.log" 2>&1; then
    tail -n 30 -- "$root.log" >&2
    die "debootstrap failed (last lines above)"
  fi
  rm -f -- "$root.log"
  # Slim like the upstream slim images: no docs, man pages or translations, now or later.
  cat >"$root/etc/dpkg/dpkg.cfg.d/tickpipe-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90tickpipe-no-recommends"
  # Files only: the folders stay, as packages' scripts expect (update-alternatives links a
  # man page into /usr/share/man/man1 and fails when that folder is gone).
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$root"/usr/share/{man,info,locale} ! -type d -delete
  rm -rf -- "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  find "$root/var/log" -type f -delete
  tar --numeric-owner -C "$root" -c . |
    docker import \
      --change 'LABEL io.tickpipe.standin-for="debian:trixie-slim"' \
      --change 'LABEL org.opencontainers.image.description="STAND-IN base: debootstrap --variant=minbase trixie, built locally"' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      - "$DEBIAN_TAG" >/dev/null
  rm -rf -- "$root"
  trap - EXIT
  say "made $DEBIAN_TAG in $((SECONDS - t0))s ($(size_of "$DEBIAN_TAG"))"
}

kafka_jars() {
  # The local stack's installer keeps deploy/local/kafka/libs in step with deploy/local/pom.xml
  # (fetching with Maven only when the pom changed): the image gets exactly the local stack's jars.
  local libs=$REPO/deploy/local/kafka/libs
  "$REPO/deploy/local/stack.sh" install >&2 || die "deploy/local/stack.sh install failed"
  compgen -G "$libs/kafka-tools-*.jar" >/dev/null || die "no kafka-tools jar in ${libs#"$REPO"/}"
}

python_base() { # its context: the Dockerfile and this machine's local CA certificates
  local context
  context=$(mktemp -d)
  mkdir -p -- "$context/local-ca"
  cp -- "$STANDIN/python/Dockerfile" "$context/"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp -- /usr/local/share/ca-certificates/*.crt "$context/local-ca/"
  fi
  touch -d @0 -- "$context"/local-ca/* "$context/local-ca" 2>/dev/null || true
  # shellcheck disable=SC2064 # expand now: the folder is this call's
  trap "rm -rf -- '$context'" EXIT
  build "$PYTHON_TAG" --build-arg "DEBIAN_IMAGE=$DEBIAN_TAG" "$context"
  rm -rf -- "$context"
  trap - EXIT
}

standins() {
  debian_base
  python_base
  build "$POSTGRES_TAG" --build-arg "DEBIAN_IMAGE=$DEBIAN_TAG" "$STANDIN/postgres"
  build "$PROMETHEUS_TAG" --build-arg "DEBIAN_IMAGE=$DEBIAN_TAG" "$STANDIN/prometheus"
  kafka_jars
  # The context: this folder's files plus the jars, streamed as one tar (no copies on disk).
  # Sorted names and fixed times: the same jars give the same context, so the layer is reused.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$STANDIN/kafka" -c Dockerfile bin log4j2.xml tools-log4j2.xml -C "$REPO/deploy/local/kafka" libs |
    build "$KAFKA_TAG" --build-arg "DEBIAN_IMAGE=$DEBIAN_TAG" -
}

services() {
  have_image "$PYTHON_TAG" || die "$PYTHON_TAG is missing: run '$0 standins' first"
  local version revision service
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/libs/common/pyproject.toml" | head -n 1)
  version=${TICKPIPE_VERSION:-${version:-0.1.0}}
  revision=${TICKPIPE_REVISION:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}
  for service in "${SERVICES[@]}"; do
    build "tickpipe-$service:local" --file "$REPO/services/$service/Dockerfile" \
      --build-arg "BASE_IMAGE=$PYTHON_TAG" --build-arg "VERSION=$version" \
      --build-arg "REVISION=$revision" "$REPO"
  done
}

# The images a rebuild replaced (untagged now). Not the classic builder's cache: the builder
# stages carry none of these labels (the services' labels are set in their runtime stage only).
prune_replaced() {
  local label
  for label in org.opencontainers.image.vendor=tickpipe \
    org.opencontainers.image.title=tickpipe-standin/kafka \
    org.opencontainers.image.title=tickpipe-standin/postgres \
    org.opencontainers.image.title=tickpipe-standin/prometheus; do
    docker image prune --force --filter "label=$label" >/dev/null
  done
}

report() {
  say "image sizes:"
  local tag
  for tag in "$@"; do
    have_image "$tag" && printf '  %-40s %s\n' "$tag" "$(size_of "$tag")" >&2
  done
}

main() {
  command -v docker >/dev/null || die "no docker CLI on PATH"
  if ! docker info >/dev/null 2>&1 && [[ -z ${DOCKER_HOST:-} ]]; then
    # the project's own engine (deploy/engines/docker.sh), on its own socket
    eval "$("$REPO/deploy/engines/docker.sh" env)"
  fi
  docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); start one with: deploy/engines/docker.sh start"
  say "engine: ${DOCKER_HOST:-the default socket}"
  (($#)) || set -- all
  local what t0=$SECONDS
  for what in "$@"; do
    case $what in
      all) standins; services ;;
      standins) standins ;;
      services) services ;;
      *) die "unknown target '$what' (all, standins or services)" ;;
    esac
  done
  prune_replaced
  local images=("$DEBIAN_TAG" "$PYTHON_TAG" "$KAFKA_TAG" "$POSTGRES_TAG" "$PROMETHEUS_TAG") service
  for service in "${SERVICES[@]}"; do images+=("tickpipe-$service:local"); done
  report "${images[@]}"
  say "done in $((SECONDS - t0))s"
}

main "$@"
