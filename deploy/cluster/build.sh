#!/usr/bin/env bash
# Build the local cluster's binaries from their Go modules (see the README, "A local
# Kubernetes without kind"): kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy and kubectl from k8s.io/kubernetes and etcd from go.etcd.io/etcd/server/v3 (both
# pinned by this folder's go.mod/go.sum), CoreDNS with `go install` at a pinned version, and the
# stand-in sandbox program (pause/).
#
# The binaries go to a machine-level folder (default /var/lib/tickpipe/cluster/bin-<version>-<recipe
# hash>), so a fresh clone on the same machine finds them, or relinks from Go's build cache in
# minutes. The hash covers go.mod, go.sum, the sandbox program and the versions and flags below;
# a build writes into a temporary folder and renames it into place, so an interrupted build never
# looks finished, and a lock lets two clones share one build.
#
# Usage: deploy/cluster/build.sh            build if needed, print the binary folder
#        deploy/cluster/build.sh --print    print the binary folder, build nothing
# Environment: TICKPIPE_CLUSTER_CACHE (default /var/lib/tickpipe/cluster).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUBE_VERSION=v1.34.12
COREDNS_VERSION=v1.12.1
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
CACHE_ROOT="${TICKPIPE_CLUSTER_CACHE:-/var/lib/tickpipe/cluster}"

# The servers report this version (Helm's kubeVersion checks and kubectl's skew warning read it).
KUBE_MINOR="$(cut -d. -f2 <<<"$KUBE_VERSION")"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$KUBE_MINOR"
    LDFLAGS+=" -X $pkg.gitTreeState=clean"
done

recipe_hash() {
    { cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/pause/main.go"
      echo "$KUBE_VERSION $COREDNS_VERSION ${KUBE_CMDS[*]} $LDFLAGS"; } | sha256sum | cut -c1-12
}
BIN_DIR="$CACHE_ROOT/bin-$KUBE_VERSION-$(recipe_hash)"

if [[ "${1:-}" == "--print" ]]; then
    echo "$BIN_DIR"
    exit 0
fi

complete() {
    local name
    for name in "${KUBE_CMDS[@]}" etcd coredns pause; do
        [[ -x "$BIN_DIR/$name" ]] || return 1
    done
}

command -v go >/dev/null || { echo "build.sh: Go is needed to build the cluster binaries" >&2; exit 1; }
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9 # another clone may be building the same recipe: wait for it, then reuse its result

if complete; then
    echo "$BIN_DIR"
    exit 0
fi

started=$SECONDS
work="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$HERE"
echo "build.sh: building Kubernetes $KUBE_VERSION into $BIN_DIR (cold: ~20 min of CPU)" >&2
go build -trimpath -ldflags "$LDFLAGS" -o "$work/" "${KUBE_CMDS[@]/#/k8s.io/kubernetes/cmd/}"
echo "build.sh: building etcd" >&2
go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3
echo "build.sh: building the stand-in sandbox program" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause" ./pause
echo "build.sh: building CoreDNS $COREDNS_VERSION" >&2
# Static, because it runs alone in an image of its own (no libc there).
(cd "$work" && CGO_ENABLED=0 GOBIN="$work" go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION")

chmod 0755 "$work"
rm -rf "$BIN_DIR"
mv "$work" "$BIN_DIR"
trap - EXIT
echo "build.sh: built in $((SECONDS - started)) s" >&2
echo "$BIN_DIR"
