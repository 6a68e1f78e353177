#!/usr/bin/env bash
# `make cluster-up` / `make cluster-down`: a real single-node Kubernetes on this machine, with no
# container registry and no traffic leaving the machine (see the README, "A local Kubernetes
# without kind", and ../shared/ENGINES.md for what was found to work on these VMs).
#
# Usage: deploy/cluster/cluster.sh up|down|purge|load IMAGE...|tag SOURCE TARGET|env|status|is-up
#   up      install what is missing (Debian's containerd, runc, CNI plugins, conntrack, ebtables,
#           socat; as root), build the Kubernetes binaries (deploy/cluster/build.sh, cached per
#           machine), then start containerd, etcd, kube-apiserver, kube-controller-manager,
#           kube-scheduler, kubelet, kube-proxy and CoreDNS; waits until the node is Ready.
#           A cluster that is up is left as it is.
#   down    delete the cluster: its pods are stopped through the kubelet, every daemon stopped,
#           mounts, network, iptables chains and cgroups removed, sysctls put back. Images
#           imported into containerd are kept for the next `up`.
#   purge   down, then delete the run folder with the kept images too
#   load    copy images from the Docker engine (DOCKER_HOST) into the node:
#           docker save IMAGE | ctr -n k8s.io images import (skipped when already there)
#   tag     give an image in the node another name (ctr images tag)
#   env     print `export KUBECONFIG=...` for this cluster
#   status  what runs, and the node
#   is-up   exit 0 if this run folder's cluster runs
#
# With KUBECONFIG set to another cluster's file, `up` and `down` leave it alone and say so.
#
# Host state it changes, and puts back on `down`: a bridge tickpipe0 (pods 10.217.0.0/24, the
# node 10.217.0.1) with the service range 10.217.128.0/24 routed onto it; the iptables chain
# TICKPIPE-CLUSTER (filter FORWARD: nothing is forwarded between the bridge and any other
# interface) and kube-proxy's KUBE-* chains (removed with `kube-proxy --cleanup`); the sysctls
# the kubelet, kube-proxy and the bridge plugin set (recorded first, restored after). The
# kubelet's iptables helper chains are switched off. Everything else lives in the run folder.
#
# Environment: TICKPIPE_CLUSTER_DIR (run folder, default .run/cluster in the repository),
# TICKPIPE_CLUSTER_CACHE (binaries, default /var/lib/tickpipe/cluster), DOCKER_HOST (for load).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)
RUN=${TICKPIPE_CLUSTER_DIR:-$REPO/.run/cluster}
MACHINE_STATE=/run/tickpipe/cluster # one cluster per machine: its marker and sysctl record
ACTIVE=$MACHINE_STATE/active
SYSCTL_RECORD=$MACHINE_STATE/sysctls

NODE=tickpipe-node
BRIDGE=tickpipe0
POD_CIDR=10.217.0.0/24
NODE_IP=10.217.0.1
SERVICE_CIDR=10.217.128.0/24
API_SERVICE_IP=10.217.128.1
DNS_IP=10.217.128.10
API_PORT=16443
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
CHAIN=TICKPIPE-CLUSTER
CNI_NETWORK=tickpipe-cluster
CNI_BIN=/usr/lib/cni
PAUSE_IMAGE=tickpipe.local/stand-in-pause:1
COREDNS_IMAGE=tickpipe.local/coredns:1.12.1
# What the kubelet, kube-proxy and the CNI bridge plugin may set; recorded before, restored after.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
DEBIAN_PACKAGES=(containerd runc containernetworking-plugins conntrack ebtables socat iptables
  iproute2 openssl curl)

PKI=$RUN/pki
CONF=$RUN/conf
PROCS=$RUN/procs
SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_FILE=$RUN/kubeconfig
# The stacks' one process supervisor (stdlib only: the system's python3 runs it). Each daemon's
# pid file records its start time, so a pid the kernel has reused is never taken for it; its
# name is also the marker its command line must contain.
SUPERVISE=(python3 "$REPO/tools/localstack/src/tickpipe_localstack/supervise.py")
# Started in this order, stopped in the reverse one.
DAEMONS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

say() { printf '==> cluster: %s\n' "$*" >&2; }
die() {
  printf 'deploy/cluster/cluster.sh: error: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

k() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
c() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
running() { "${SUPERVISE[@]}" pid "$PROCS/$1.pid" "$1" >/dev/null; }
stop_daemon() { "${SUPERVISE[@]}" stop "$1" "$PROCS/$1.pid" "$1" "$2"; } # NAME TIMEOUT

other_cluster_configured() {
  [[ -n ${KUBECONFIG:-} && $(realpath -m -- "$KUBECONFIG") != "$(realpath -m -- "$KUBECONFIG_FILE")" ]]
}

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root (containerd, the kubelet and the bridge change host state)"; }

install_packages() {
  local missing=() tool
  for tool in containerd runc conntrack ebtables socat iptables ip openssl curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [[ -x $CNI_BIN/bridge && -x $CNI_BIN/host-local && -x $CNI_BIN/loopback ]] || missing+=(cni-plugins)
  ((${#missing[@]})) || return 0
  say "installing Debian packages (${missing[*]} missing)"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y \
    --no-install-recommends "${DEBIAN_PACKAGES[@]}" >&2 || die "apt-get install ${DEBIAN_PACKAGES[*]} failed"
}

# ---------------------------------------------------------------- certificates and configs
cert() { # NAME CN ORG EXT: a key and a certificate signed by the cluster CA
  local name=$1 cn=$2 org=$3 ext=$4 subject="/CN=$2"
  [[ -s $PKI/$name.crt ]] && return 0
  [[ -n $org ]] && subject="/O=$org/CN=$cn"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_pki() {
  mkdir -p "$PKI" && chmod 0700 "$PKI"
  if [[ ! -s $PKI/ca.crt ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=tickpipe-local-cluster-ca" -days 3650 \
      -sha256 -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/ca.crt" 2>/dev/null
  fi
  if [[ ! -s $PKI/sa.key ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
    openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  local client="keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  local server="keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth"
  cert apiserver kube-apiserver "" "$server\nsubjectAltName=IP:$NODE_IP,IP:$API_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "$client"
  cert admin tickpipe-admin system:masters "$client"
  cert controller-manager system:kube-controller-manager "" "$client"
  cert scheduler system:kube-scheduler "" "$client"
  cert kube-proxy system:kube-proxy "" "$client"
  cert kubelet "system:node:$NODE" system:nodes "$client"
  cert kubelet-serving "$NODE" "" "$server\nsubjectAltName=IP:$NODE_IP,DNS:$NODE"
}

# Config files are replaced only when their content changes: kube-proxy exits when its file
# is rewritten, and an idempotent `up` must not stop what runs.
put() { # FILE < CONTENT
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

kubeconfig() { # FILE CERT-NAME
  put "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: tickpipe-local
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority: $PKI/ca.crt
users:
  - name: $2
    user:
      client-certificate: $PKI/$2.crt
      client-key: $PKI/$2.key
contexts:
  - name: tickpipe-local
    context: {cluster: tickpipe-local, user: $2}
current-context: tickpipe-local
EOF
  chmod 0600 "$1"
}

write_configs() {
  mkdir -p "$CONF" "$RUN/cni/net.d" "$RUN/cni/ipam" "$RUN/containerd" "$RUN/etcd" "$RUN/kubelet" \
    "$RUN/pod-logs" "$RUN/runc" "$PROCS"
  chmod 0700 "$RUN/etcd"
  kubeconfig "$KUBECONFIG_FILE" admin
  kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager
  kubeconfig "$CONF/scheduler.kubeconfig" scheduler
  kubeconfig "$CONF/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$CONF/kubelet.kubeconfig" kubelet
  put "$CONF/resolv.conf" </dev/null # pods get the cluster's DNS only; CoreDNS asks nobody upstream

  local mirror registry mirrors=""
  for registry in '*' docker.io registry.k8s.io quay.io ghcr.io gcr.io; do
    mirror=$(printf '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."%s"]\n  endpoint = ["http://127.0.0.1:9"]' "$registry")
    mirrors+=$mirror$'\n'
  done
  put "$CONF/containerd.toml" <<EOF
# containerd of the local cluster (deploy/cluster/cluster.sh). Registry mirrors point at a
# closed local port, so nothing is ever pulled: every image is imported.
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE, runc cannot lower its own oom_score_adj (ENGINES.md).
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "$RUN/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$CNI_BIN"
  conf_dir = "$RUN/cni/net.d"
  max_conf_num = 1

$mirrors
EOF

  put "$RUN/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$RUN/cni/ipam"
      }
    }
  ]
}
EOF

  put "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
# These VMs run cgroup v1 and have no swap accounting (ENGINES.md).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $CONF/resolv.conf
podLogsDir: $RUN/pod-logs
volumePluginDir: $RUN/kubelet/volume-plugins
# No KUBE-FIREWALL / canary chains from the kubelet: kube-proxy's are enough here.
makeIPTablesUtilChains: false
# A shared, busy disk: evict only when it is really short.
evictionHard: {memory.available: 200Mi, nodefs.available: 3%, imagefs.available: 3%}
imageGCHighThresholdPercent: 97
imageGCLowThresholdPercent: 95
containerLogMaxSize: 10Mi
rotateCertificates: false
serverTLSBootstrap: false
EOF

  put "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$NODE_IP/32]
# 0 leaves the host's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 1s}
EOF
}

# ---------------------------------------------------------------- host state
record_sysctls() {
  mkdir -p "$MACHINE_STATE"
  [[ -s $SYSCTL_RECORD ]] && return 0 # a run that died before `down` recorded the originals
  local name value
  for name in "${SYSCTLS[@]}"; do
    value=$(sysctl -n "$name" 2>/dev/null) || continue
    printf '%s=%s\n' "$name" "$value"
  done >"$SYSCTL_RECORD.tmp"
  mv "$SYSCTL_RECORD.tmp" "$SYSCTL_RECORD"
}

restore_sysctls() {
  [[ -s $SYSCTL_RECORD ]] || return 0
  local line name value
  while IFS= read -r line; do
    name=${line%%=*} value=${line#*=}
    if [[ $(sysctl -n "$name" 2>/dev/null) != "$value" ]]; then
      sysctl -q -w "$name=$value" >/dev/null || printf 'cluster.sh: warning: could not restore %s=%s\n' "$name" "$value" >&2
    fi
  done <"$SYSCTL_RECORD"
  rm -f "$SYSCTL_RECORD"
  say "sysctls restored"
}

# The KUBE-* chains on the machine before the first `up`: anything else that the kubelet and
# kube-proxy leave behind (`kube-proxy --cleanup` does not remove KUBE-FIREWALL) goes on `down`.
CHAIN_RECORD=$MACHINE_STATE/kube-chains
record_chains() {
  [[ -e $CHAIN_RECORD ]] && return 0
  kube_chains >"$CHAIN_RECORD.tmp"
  mv "$CHAIN_RECORD.tmp" "$CHAIN_RECORD"
}

kube_chains() { # "TOOL TABLE CHAIN" for every KUBE-* chain now
  local tool table
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$tool" -w -t "$table" -S 2>/dev/null | awk -v p="$tool $table" '$1 == "-N" && $2 ~ /^KUBE-/ {print p, $2}'
    done
  done
}

remove_new_kube_chains() {
  [[ -e $CHAIN_RECORD ]] || return 0
  local tool table chain rule
  while read -r tool table chain; do
    grep -qxF -- "$tool $table $chain" "$CHAIN_RECORD" && continue
    # Rules that jump to it, as delete commands (-A CHAIN ... becomes -D CHAIN ...).
    while IFS= read -r rule; do
      eval "\"\$tool\" -w -t \"\$table\" -D ${rule#-A }" 2>/dev/null || true
    done < <("$tool" -w -t "$table" -S | grep -E -- "^-A .* -j $chain( |\$)")
    "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true
  done < <(kube_chains)
  while read -r tool table chain; do
    grep -qxF -- "$tool $table $chain" "$CHAIN_RECORD" || "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true
  done < <(kube_chains)
  rm -f "$CHAIN_RECORD"
}

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    local taken
    taken=$(ip -4 route show | awk -v a="${POD_CIDR%.*}" -v b="${SERVICE_CIDR%.*}" 'index($1, a) == 1 || index($1, b) == 1')
    [[ -z $taken ]] || die "the cluster's address ranges are already routed on this machine: $taken"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  local tool
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null && "$tool" -w -S >/dev/null 2>&1 || continue
    "$tool" -w -N "$CHAIN" 2>/dev/null || "$tool" -w -F "$CHAIN"
    "$tool" -w -A "$CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
    "$tool" -w -A "$CHAIN" -i "$BRIDGE" -j DROP
    "$tool" -w -A "$CHAIN" -o "$BRIDGE" -j DROP
  done
  forward_first
}

# Our jump is the first rule of FORWARD, ahead of kube-proxy's (which it inserts at the top too).
forward_first() {
  local tool
  for tool in iptables ip6tables; do
    "$tool" -w -S "$CHAIN" >/dev/null 2>&1 || continue
    while "$tool" -w -D FORWARD -j "$CHAIN" 2>/dev/null; do :; done
    "$tool" -w -I FORWARD 1 -j "$CHAIN"
  done
}

network_down() {
  local tool
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null || continue
    while "$tool" -w -D FORWARD -j "$CHAIN" 2>/dev/null; do :; done
    "$tool" -w -F "$CHAIN" 2>/dev/null || true
    "$tool" -w -X "$CHAIN" 2>/dev/null || true
  done
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
}

# ---------------------------------------------------------------- images
import_archive() { # NAME ARCHIVE-FILE-OR-DASH
  c images import - <"$2" >/dev/null || die "importing $1 into the node failed"
}

have_image() { c images ls -q "name==$1" 2>/dev/null | grep -qx -- "$1"; }

node_images() { # the stand-in sandbox image and CoreDNS, each a static binary in an image
  mkdir -p "$RUN/images"
  local name program port
  for name in "$PAUSE_IMAGE" "$COREDNS_IMAGE"; do
    have_image "$name" && continue
    if [[ $name == "$PAUSE_IMAGE" ]]; then program=pause port=(); else program=coredns port=(--port 1053/udp --port 1053/tcp); fi
    python3 "$HERE/image_archive.py" --name "$name" --out "$RUN/images/$program.tar" \
      --entrypoint "/$program" "${port[@]}" "$BIN/$program:/$program" >/dev/null
    say "importing $name"
    import_archive "$name" "$RUN/images/$program.tar"
  done
}

# docker save | ctr import, skipped for images the node has in the very version the engine has;
# one archive for all the others, so the layers they share are read once.
cmd_load() {
  (($#)) || die "load: name the images (e.g. tickpipe-consumer:local)"
  require_up
  command -v docker >/dev/null || die "load: the docker CLI is missing"
  local image id todo=() ids=()
  mkdir -p "$RUN/images"
  for image in "$@"; do
    id=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null) ||
      die "load: the Docker engine has no image $image (build it first: deploy/images/build.sh)"
    if [[ -s $(record_of "$image") && $(<"$(record_of "$image")") == "$id" ]] && have_image "$(normalise "$image")"; then
      say "$image: already in the node"
    else
      todo+=("$image") ids+=("$id")
    fi
  done
  ((${#todo[@]})) || return 0
  say "loading ${todo[*]} into the node"
  docker save "${todo[@]}" | c images import - >/dev/null || die "load: importing ${todo[*]} failed"
  local i
  for i in "${!todo[@]}"; do printf '%s\n' "${ids[i]}" >"$(record_of "${todo[i]}")"; done
}

# Another name for an image in the node (the stand-in PostgreSQL under a TimescaleDB-style tag).
cmd_tag() { # SOURCE TARGET
  (($# == 2)) || die "tag: SOURCE TARGET"
  require_up
  c images tag --force "$(normalise "$1")" "$(normalise "$2")" >/dev/null || die "tag: $1 is not in the node"
}

record_of() { printf '%s/images/%s.id' "$RUN" "$(tr '/:' '__' <<<"$1")"; }

normalise() { # the name containerd gives an image: docker.io/library/ for short names
  local name=$1 first=${1%%/*}
  if [[ $name != */* ]]; then
    name=docker.io/library/$name
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    name=docker.io/$name
  fi
  printf '%s' "$name"
}

# ---------------------------------------------------------------- daemons
start() { # NAME READY-CMD TIMEOUT ARGV...
  local name=$1 ready=$2 timeout=$3
  shift 3
  "${SUPERVISE[@]}" start --ready-command "$ready" --timeout "$timeout" \
    "$name" "$PROCS/$name.pid" "$name" "$PROCS/$name.log" -- "$@" ||
    die "$name did not start (log: $PROCS/$name.log)"
}

start_daemons() {
  start containerd "ctr --address $SOCK version" 60 \
    containerd --config "$CONF/containerd.toml"
  node_images
  start etcd "curl -fsS http://127.0.0.1:$ETCD_CLIENT_PORT/health" 60 \
    "$BIN/etcd" --name "$NODE" --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE=http://127.0.0.1:$ETCD_PEER_PORT" \
    --log-level warn --unsafe-no-fsync
  start kube-apiserver "$BIN/kubectl --kubeconfig $KUBECONFIG_FILE get --raw /readyz" 180 \
    "$BIN/kube-apiserver" --advertise-address "$NODE_IP" --bind-address "$NODE_IP" \
    --secure-port "$API_PORT" --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction --cert-dir "$RUN/conf/apiserver-certs" \
    --profiling=false
  start kube-controller-manager "curl -fsSk https://127.0.0.1:10257/healthz" 120 \
    "$BIN/kube-controller-manager" --kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cert-dir "$RUN/conf/controller-manager-certs" \
    --flex-volume-plugin-dir "$RUN/kubelet/volume-plugins" --profiling=false
  start kube-scheduler "curl -fsSk https://127.0.0.1:10259/healthz" 120 \
    "$BIN/kube-scheduler" --kubeconfig "$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --cert-dir "$RUN/conf/scheduler-certs" \
    --profiling=false
  start kubelet "curl -fsS http://127.0.0.1:10248/healthz" 120 \
    "$BIN/kubelet" --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig" \
    --root-dir "$RUN/kubelet" --cert-dir "$RUN/kubelet/pki" --hostname-override "$NODE" \
    --node-ip "$NODE_IP"
  start kube-proxy "curl -fsS http://127.0.0.1:10256/healthz" 120 \
    "$BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"
  forward_first
}

require_up() {
  running kube-apiserver && [[ -s $KUBECONFIG_FILE ]] || die "the local cluster is not up (make cluster-up)"
  BIN=$("$HERE/build.sh" --print)
}

# ---------------------------------------------------------------- commands
cmd_up() {
  if other_cluster_configured; then
    say "KUBECONFIG=$KUBECONFIG is set: using that cluster, not starting one"
    return 0
  fi
  need_root "make cluster-up"
  (($(wc -c <<<"$SOCK") < 100)) || die "run folder $RUN is too long for containerd's socket; set TICKPIPE_CLUSTER_DIR to a shorter path"
  mkdir -p "$MACHINE_STATE"
  exec 8>"$MACHINE_STATE/lock"
  flock 8
  if [[ -s $ACTIVE && $(<"$ACTIVE") != "$RUN" ]]; then
    die "another local cluster runs on this machine (run folder $(<"$ACTIVE")): stop it with its cluster.sh down first"
  fi
  local t0=$SECONDS
  install_packages
  BIN=$("$HERE/build.sh")
  mkdir -p "$RUN"
  printf '%s\n' "$RUN" >"$ACTIVE"
  record_sysctls
  record_chains
  make_pki
  write_configs
  network_up
  start_daemons
  say "waiting for the node and CoreDNS"
  local deadline=$((SECONDS + 120))
  until k get node "$NODE" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "the kubelet did not register node $NODE (log: $PROCS/kubelet.log)"
    sleep 1
  done
  k wait "node/$NODE" --for=condition=Ready --timeout=180s >/dev/null
  sed -e "s|@DNS_IP@|$DNS_IP|g" -e "s|@IMAGE@|$COREDNS_IMAGE|g" "$HERE/coredns.yaml" | k apply -f - >/dev/null
  k -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
  say "up in $((SECONDS - t0)) s: Kubernetes $(k version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n 1), node $NODE Ready"
  echo "  export KUBECONFIG=$KUBECONFIG_FILE"
  echo "  images: deploy/cluster/cluster.sh load IMAGE...   (from the Docker engine into the node)"
  echo "  stop:   make cluster-down"
}

# The pods go through the kubelet, so that their sandboxes are torn down properly (network
# namespaces, IP addresses, mounts); only what is left after that is killed.
stop_pods() {
  running kube-apiserver && running kubelet && running containerd || return 0
  stop_daemon kube-controller-manager 20
  stop_daemon kube-scheduler 20
  say "stopping every pod"
  k delete pods --all --all-namespaces --grace-period=5 --wait=false >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 120))
  while ((SECONDS < deadline)) && [[ -n $(c tasks ls -q 2>/dev/null) ]]; do sleep 1; done
}

kill_leftovers() {
  running containerd || return 0
  local id netns=()
  for id in $(c tasks ls -q 2>/dev/null); do c tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
  sleep 1
  for id in $(c containers ls -q 2>/dev/null); do
    mapfile -t -O "${#netns[@]}" netns < <(c containers info "$id" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*' | sort -u)
    c tasks delete --force "$id" >/dev/null 2>&1 || true
    c containers delete "$id" >/dev/null 2>&1 || true
  done
  for id in "${netns[@]}"; do
    [[ -e $id ]] || continue
    umount "$id" 2>/dev/null || umount -l "$id" 2>/dev/null || true
    rm -f "$id"
  done
}

kill_shims() { # containerd's shims are started by our containerd, for our socket only
  local pid
  for pid in $(grep -lsF -- "$SOCK" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *containerd-shim*"-address $SOCK "* ]] || continue
    kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_run() { # deepest first; lazily if busy
  local mount
  while IFS= read -r mount; do
    umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
  done < <(awk -v run="$RUN/" 'index($5, run) == 1 {print $5}' /proc/self/mountinfo | sort -r)
}

remove_cgroups() { # what the kubelet made under every controller, once no pod is left in it
  local dir
  for dir in /sys/fs/cgroup/*/kubepods; do
    [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

cmd_down() {
  if other_cluster_configured; then
    say "KUBECONFIG=$KUBECONFIG is set: leaving that cluster alone"
    return 0
  fi
  need_root "make cluster-down"
  if [[ -s $ACTIVE && $(<"$ACTIVE") != "$RUN" ]]; then
    say "the local cluster of $(<"$ACTIVE") runs, not this one ($RUN): nothing to stop here"
    return 0
  fi
  mkdir -p "$MACHINE_STATE"
  exec 8>"$MACHINE_STATE/lock"
  flock 8
  BIN=$("$HERE/build.sh" --print)
  if [[ ! -d $RUN && ! -s $ACTIVE ]]; then
    say "no local cluster here: nothing to stop"
    return 0
  fi
  stop_pods
  local i
  for ((i = ${#DAEMONS[@]} - 1; i > 0; i--)); do
    stop_daemon "${DAEMONS[i]}" 30
  done
  [[ -x $BIN/kube-proxy ]] && "$BIN/kube-proxy" --cleanup >"$PROCS/kube-proxy-cleanup.log" 2>&1 || true
  kill_leftovers
  stop_daemon containerd 30
  kill_shims
  unmount_run
  remove_cgroups
  find /var/log/containers -maxdepth 1 -lname "$RUN/*" -delete 2>/dev/null || true
  remove_new_kube_chains
  network_down
  restore_sysctls
  # The cluster's state goes; the images imported into containerd stay for the next `up`.
  rm -rf "$RUN/etcd" "$RUN/kubelet" "$RUN/volumes" "$RUN/pki" "$RUN/conf" "$RUN/cni" "$RUN/containerd/state" \
    "$RUN/runc" "$RUN/pod-logs" "$KUBECONFIG_FILE"
  rm -f "$ACTIVE"
  say "down: nothing of the cluster runs; host network and sysctls as before"
}

cmd_purge() {
  cmd_down
  other_cluster_configured && return 0
  unmount_run
  rm -rf "$RUN"
  say "purged $RUN"
}

cmd_env() { echo "export KUBECONFIG=$KUBECONFIG_FILE"; }

cmd_status() {
  local name
  for name in "${DAEMONS[@]}"; do
    if running "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
  if running kube-apiserver; then
    BIN=$("$HERE/build.sh" --print)
    k get nodes -o wide
  fi
}

# Sourced (to try one step by hand): define everything, run nothing.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  purge) cmd_purge ;;
  load)
    shift
    cmd_load "$@"
    ;;
  tag)
    shift
    cmd_tag "$@"
    ;;
  env) cmd_env ;;
  status) cmd_status ;;
  is-up) running kube-apiserver && running kubelet ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
