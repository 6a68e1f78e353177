#!/usr/bin/env bash
# `make kind-up` and `make kind-down`: tickpipe on a local Kubernetes cluster made by kind.
#
# Usage: deploy/kind/kind.sh up|down
#   up    create the cluster (deploy/kind/kind-config.yaml; kept if it exists), build the four
#         service images and load them into its node, install the Strimzi operator from
#         Strimzi's Helm chart, install the tickpipe chart (deploy/helm/tickpipe) with one-node
#         values, then run `helm test`, which passes once ticks keep arriving in market_ticks
#   down  delete the cluster (and everything in it)
#
# Needs docker (with a running engine), kind, kubectl and helm. It only ever talks to the
# cluster's own kubectl context (kind-tickpipe), never to the current context.
# Environment: HELM (the helm binary; default .tools/bin/helm from `make tools`, else helm on
# PATH), TICKPIPE_KIND_TIMEOUT (how long each install may take, default 20m).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)

CLUSTER=tickpipe # also the name in kind-config.yaml
CONTEXT=kind-$CLUSTER
NAMESPACE=tickpipe
RELEASE=tickpipe
CHART=$REPO/deploy/helm/tickpipe
KIND_CONFIG=$HERE/kind-config.yaml
# The chart's own one-node values (one Kafka node, replication factors of 1), then ours.
VALUES=("$CHART/ci/single-node.yaml" "$HERE/values-kind.yaml")
KIND_VERSION=v0.33 # the node image in kind-config.yaml is this kind release's default
STRIMZI_NAMESPACE=strimzi
STRIMZI_RELEASE=strimzi-cluster-operator
STRIMZI_CHART=strimzi-kafka-operator
STRIMZI_REPO=https://strimzi.io/charts/
STRIMZI_VERSION=1.2.0
SERVICES=(market-sim producer-stocks producer-crypto consumer)
TIMEOUT=${TICKPIPE_KIND_TIMEOUT:-20m}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'kind.sh: warning: %s\n' "$*" >&2; }
die() {
  printf 'kind.sh: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

HELM_BIN=
find_helm() {
  if [[ -n ${HELM:-} ]]; then
    HELM_BIN=$HELM
  elif [[ -x $REPO/.tools/bin/helm ]]; then
    HELM_BIN=$REPO/.tools/bin/helm
  else
    HELM_BIN=$(command -v helm || true)
  fi
  [[ -n $HELM_BIN && -x $HELM_BIN ]]
}

# Every missing tool is named at once, with how to get it.
check_prerequisites() { # TOOL...
  local tool missing=()
  for tool in "$@"; do
    case $tool in
      docker)
        if ! command -v docker >/dev/null; then
          missing+=("docker: kind runs the cluster's node as a Docker container; install Docker Engine")
        elif ! timeout 20 docker info >/dev/null 2>&1; then
          missing+=("a running Docker engine: 'docker info' fails; start the engine (or fix the permissions on its socket)")
        fi
        ;;
      kind)
        command -v kind >/dev/null ||
          missing+=("kind $KIND_VERSION: e.g. 'go install sigs.k8s.io/kind@${KIND_VERSION}.0' (then put \$(go env GOPATH)/bin on PATH)")
        ;;
      kubectl)
        command -v kubectl >/dev/null ||
          missing+=("kubectl: install a kubectl within one minor version of Kubernetes 1.37")
        ;;
      helm)
        find_helm ||
          missing+=("helm: 'make tools' builds the pinned helm into .tools/bin (needs Go), or install helm 3 and put it on PATH")
        ;;
    esac
  done
  if ((${#missing[@]})); then
    printf 'kind.sh: error: missing prerequisites:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
  fi
  if [[ " $* " == *" kind "* ]]; then
    local version
    version=$(kind version 2>/dev/null | awk '{print $2}')
    [[ $version == "$KIND_VERSION".* ]] ||
      warn "kind is ${version:-of an unknown version}; kind-config.yaml pins the node image of kind $KIND_VERSION"
  fi
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx -- "$CLUSTER"
}

k() { kubectl --context "$CONTEXT" "$@"; }
h() { "$HELM_BIN" --kube-context "$CONTEXT" "$@"; }

build_images() {
  local version revision svc
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/libs/common/pyproject.toml" | head -n 1)
  revision=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  for svc in "${SERVICES[@]}"; do
    say "building tickpipe-$svc:local"
    docker build --file "$REPO/services/$svc/Dockerfile" --tag "tickpipe-$svc:local" \
      --build-arg "VERSION=${version:-0.1.0}" --build-arg "REVISION=$revision" "$REPO"
  done
  for svc in "${SERVICES[@]}"; do
    say "loading tickpipe-$svc:local into the cluster's node"
    kind load docker-image "tickpipe-$svc:local" --name "$CLUSTER"
  done
}

diagnose() {
  echo "---- pods in $NAMESPACE ----" >&2
  k get pods --namespace "$NAMESPACE" -o wide >&2 || true
  echo "---- Strimzi resources in $NAMESPACE ----" >&2
  k get kafkas,kafkanodepools,kafkatopics,kafkausers --namespace "$NAMESPACE" >&2 || true
}

cmd_up() {
  check_prerequisites docker kind kubectl helm
  say "helm: $HELM_BIN ($("$HELM_BIN" version --short 2>/dev/null || echo 'version unknown'))"
  if cluster_exists; then
    say "kind cluster '$CLUSTER' exists: using it"
  else
    say "creating the kind cluster '$CLUSTER' (${KIND_CONFIG#"$REPO"/})"
    kind create cluster --name "$CLUSTER" --config "$KIND_CONFIG" --wait 5m
  fi
  build_images

  # The operator watches the release's namespace, which must exist before its RoleBindings.
  k create namespace "$NAMESPACE" --dry-run=client -o yaml | k apply -f -
  say "installing the Strimzi operator $STRIMZI_VERSION (Strimzi's Helm chart) into '$STRIMZI_NAMESPACE', watching '$NAMESPACE'"
  h upgrade --install "$STRIMZI_RELEASE" "$STRIMZI_CHART" --repo "$STRIMZI_REPO" \
    --version "$STRIMZI_VERSION" --namespace "$STRIMZI_NAMESPACE" --create-namespace \
    --set "watchNamespaces={$NAMESPACE}" --wait --timeout "$TIMEOUT"

  local values=() file
  for file in "${VALUES[@]}"; do
    if [[ -f $file ]]; then
      values+=(--values "$file")
    else
      warn "${file#"$REPO"/} is missing: installing without it"
    fi
  done
  local upgrade=false
  h status "$RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1 && upgrade=true
  say "installing the tickpipe chart (release '$RELEASE' in '$NAMESPACE'); Kafka and TimescaleDB start first, up to $TIMEOUT"
  if ! h upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${values[@]}" \
    --wait --timeout "$TIMEOUT"; then
    diagnose
    die "the tickpipe release did not become ready (above: its pods and Strimzi resources)"
  fi
  if $upgrade; then
    # The rebuilt images keep their tag (local), so the pods must be replaced to run them.
    local selector="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/managed-by=Helm"
    say "restarting the tickpipe services onto the images just loaded"
    k rollout restart deployment --namespace "$NAMESPACE" --selector "$selector"
    local deployment
    for deployment in $(k get deployment --namespace "$NAMESPACE" --selector "$selector" -o name); do
      k rollout status "$deployment" --namespace "$NAMESPACE" --timeout "$TIMEOUT"
    done
  fi

  say "helm test: waiting until ticks keep arriving in market_ticks"
  if ! h test "$RELEASE" --namespace "$NAMESPACE" --timeout 10m --logs; then
    diagnose
    die "helm test failed: no ticks arrive in market_ticks"
  fi

  echo
  echo "tickpipe runs on kind (cluster '$CLUSTER', kubectl context '$CONTEXT', namespace '$NAMESPACE'); ticks are arriving."
  echo "  pods:      kubectl --context $CONTEXT -n $NAMESPACE get pods"
  echo "  logs:      kubectl --context $CONTEXT -n $NAMESPACE logs -f deploy/$RELEASE-consumer"
  echo "  psql:      kubectl --context $CONTEXT -n $NAMESPACE exec -it statefulset/$RELEASE-timescaledb -- psql -U tickpipe -d marketdata"
  echo "  again:     make kind-up   (rebuilds and reloads the images, upgrades the release)"
  echo "  delete:    make kind-down"
}

cmd_down() {
  check_prerequisites docker kind
  if cluster_exists; then
    say "deleting the kind cluster '$CLUSTER'"
    kind delete cluster --name "$CLUSTER"
  else
    say "no kind cluster '$CLUSTER': nothing to delete"
  fi
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
