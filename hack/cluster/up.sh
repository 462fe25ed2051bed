#!/usr/bin/env bash
# Starts a real single-node Kubernetes from the official binaries, the way Kubernetes' own
# hack/local-up-cluster.sh does: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# a kubelet on its own containerd (runc, bridge CNI), kube-proxy, kube-router's network policy
# firewall (so NetworkPolicies are enforced), CoreDNS and a default StorageClass. Needs root on
# Debian/Ubuntu (see hack/install-deps.sh); no registry is used.
#
# Idempotent: components already running are kept, dead ones (stale pid files, a half-started
# component) are started again, and a healthy cluster returns at once. The last line on stdout
# is the kubeconfig path.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root (kubelet, containerd, iptables)"
start_time=$SECONDS

PKI="$CLUSTER_DIR/pki"
CONF="$CLUSTER_DIR/config"
LOGS="$CLUSTER_DIR/logs"
NODE_IP="$(node_ip)"
[ -n "$NODE_IP" ] || die "no default route: cannot pick the node address"

# A cluster the user brought (kind, a real one) is used as it is.
if [ -n "${KUBECONFIG:-}" ] && [ "$KUBECONFIG" != "$KUBECONFIG_PATH" ]; then
  log "KUBECONFIG is set: using that cluster, not starting the local one"
  echo "$KUBECONFIG"
  exit 0
fi

# Fast path: everything running and the node Ready means there is nothing to do.
already_up() {
  "$HACK_CLUSTER/status.sh" --quiet || return 1
  log "cluster already up"
  echo "$KUBECONFIG_PATH"
}
already_up && exit 0

# One up or down at a time: test sessions of several developers may call this concurrently;
# whoever waited finds the cluster up.
exec {lock}>"$RUN_DIR.lock"
flock -w 900 "$lock" || die "another hack/cluster/up.sh or down.sh has held $RUN_DIR.lock for 15 min"
already_up && exit 0

# --- binaries ----------------------------------------------------------------------------------

KUBE_BIN="$(tool_path kubernetes)"
ETCD="$(tool_path etcd)"
PAUSE="$(tool_path pause)"
COREDNS="$(tool_path coredns)"
LOCAL_PATH="$(tool_path local-path-provisioner)"
KUBE_ROUTER="$(tool_path kube-router)"
KUBECTL=("$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH")

# version_of BINARY_PATH: the cache dir name carries the version (coredns-v1.14.7/coredns).
version_of() { local d n; d="$(basename "$(dirname "$1")")"; n="$(basename "$1")"; echo "${d#"$n"-}"; }
PAUSE_IMAGE="codingjob/pause:$(version_of "$PAUSE")"
COREDNS_IMAGE="codingjob/coredns:$(version_of "$COREDNS")"
LOCAL_PATH_IMAGE="codingjob/local-path-provisioner:$(version_of "$LOCAL_PATH")"

mkdir -p "$CLUSTER_DIR" "$RUN_DIR" "$PKI" "$CONF" "$LOGS" "$CLUSTER_DIR/local-path"

# put PATH: writes stdin to PATH only when the content differs, so that components that watch
# their files (kube-proxy exits when its configuration changes) keep running on a re-run.
put() {
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else chmod 600 "$tmp" && mv "$tmp" "$1"; fi
}

# --- host settings -----------------------------------------------------------------------------

# Pods on the bridge must pass through iptables (kube-proxy's service rules) and be forwarded.
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 \
  net.ipv4.ip_forward=1 >/dev/null

# --- certificates ------------------------------------------------------------------------------

# sign NAME SUBJECT [SANS]: a key and a certificate signed by the cluster CA (kept when present).
sign() {
  local name="$1" subject="$2" sans="${3:-}" ext="$PKI/$1.ext"
  [ -s "$PKI/$name.crt" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$ext" -out "$PKI/$name.crt.tmp" 2>/dev/null
  mv "$PKI/$name.crt.tmp" "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}

if [ ! -s "$PKI/ca.crt" ]; then
  log "generating certificates"
  rm -f "$PKI"/*
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
    -subj "/CN=codingjob-cluster-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/service-account.key"
  openssl ec -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null
fi
sign kube-apiserver "/CN=kube-apiserver" \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,IP:$NODE_IP"
sign kubelet-serving "/CN=system:node:$NODE_NAME/O=system:nodes" "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
# The API server reaches kubelets (logs, exec, port-forward) with full rights, as kubeadm sets up.
sign apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters"
sign admin "/CN=codingjob-admin/O=system:masters"
sign kube-controller-manager "/CN=system:kube-controller-manager"
sign kube-scheduler "/CN=system:kube-scheduler"
sign kubelet "/CN=system:node:$NODE_NAME/O=system:nodes"
sign kube-proxy "/CN=system:kube-proxy"
# kube-router's rights come from the ClusterRole in addons/kube-router.yaml (read-only watches).
sign kube-router "/CN=system:kube-router"

# write_kubeconfig NAME: a kubeconfig that authenticates with NAME's client certificate.
write_kubeconfig() {
  local name="$1" out="$2"
  put "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: codingjob
    cluster:
      server: https://127.0.0.1:$APISERVER_PORT
      certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
  - name: $name
    user:
      client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
      client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
  - name: codingjob
    context: {cluster: codingjob, user: $name}
current-context: codingjob
EOF
}
for c in kube-controller-manager kube-scheduler kubelet kube-proxy kube-router; do
  write_kubeconfig "$c" "$CONF/$c.kubeconfig"
done
write_kubeconfig admin "$KUBECONFIG_PATH"

# --- processes ---------------------------------------------------------------------------------

# kill_orphans NAME: a NAME process of this cluster (its arguments name the state dir) that lost
# its pid file would hold the ports and sockets the new one needs.
kill_orphans() {
  local cmdline pid exe
  for cmdline in /proc/[0-9]*/cmdline; do
    pid="${cmdline#/proc/}"
    pid="${pid%/cmdline}"
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || continue
    [ "$(basename "${exe% (deleted)}")" = "$1" ] || continue
    if { tr '\0' '\n' <"$cmdline"; } 2>/dev/null | grep -q "^$CLUSTER_DIR/"; then
      log "stopping a leftover $1 (pid $pid)"
      kill -9 "$pid" 2>/dev/null
    fi
  done
}

# start NAME BINARY ARGS...: runs BINARY detached (own session, survives the caller). A live NAME
# started with the same command line and config files is kept; a stale pid file is replaced, and
# a component whose command or config changed is restarted.
start() {
  local name="$1" signature arg pid
  shift
  signature="$(for arg in "$@"; do echo "$arg"; if [ -f "$arg" ]; then cat "$arg"; fi; done | sha256sum)"
  if pid_alive "$name"; then
    [ "$(cat "$RUN_DIR/$name.signature" 2>/dev/null)" = "$signature" ] && return 0
    pid="$(cat "$RUN_DIR/$name.pid")"
    log "restarting $name (its command or configuration changed)"
    kill "$pid"
    wait_for "$name to stop" 20 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  else
    kill_orphans "$name"
    log "starting $name"
  fi
  # The daemon must not inherit the lock, or the next up.sh would wait for it forever.
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 {lock}>&- &
  echo $! >"$RUN_DIR/$name.pid"
  echo "$signature" >"$RUN_DIR/$name.signature"
}

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}

# containerd for the kubelet alone: Docker keeps its own, so image builds and the cluster never
# restart each other. Its image store is part of the cluster state.
mkdir -p "$CLUSTER_DIR/cni/net.d" "$(dirname "$CONTAINERD_SOCK")"
put "$CONF/containerd.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  # Built from pause.c and imported below: the kubelet must never try to pull it.
  sandbox_image = "$PAUSE_IMAGE"
  # Hosts (VMs, containers) may withhold CAP_SYS_RESOURCE, so the negative oom_score_adj the kubelet
  # asks for (-998 for every pod sandbox) fails in runc; clamp it to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # The kubelet uses the cgroupfs driver: there is no systemd on these hosts.
        SystemdCgroup = false
        Root = "$RUN_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CLUSTER_DIR/containerd/opt"
EOF
put "$CLUSTER_DIR/cni/net.d/10-codingjob.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "codingjob",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$CLUSTER_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
start containerd containerd --config "$CONF/containerd.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version || die "containerd did not start: $LOGS/containerd.log"

# Docker (Debian's docker.io) builds the images; start it when nobody has.
ensure_dockerd

# --- images (loaded in the background while the control plane starts) ---------------------------

# cluster_images builds the add-on images and loads them into the kubelet's containerd.
cluster_images() {
  "$REPO_ROOT/hack/base-image.sh" >&2
  if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
    log "building image $PAUSE_IMAGE"
    tar -C "$(dirname "$PAUSE")" -c pause |
      docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' - "$PAUSE_IMAGE" >/dev/null
  fi
  binary_image "$COREDNS_IMAGE" "$COREDNS"
  binary_image "$LOCAL_PATH_IMAGE" "$LOCAL_PATH"
  # The base image (storage helper pods, tests) shares its layer with the add-on images.
  load_image "$PAUSE_IMAGE" "$COREDNS_IMAGE" "$LOCAL_PATH_IMAGE" "$BASE_IMAGE"
}
cluster_images &
images_pid=$!

start etcd "$ETCD" --name codingjob --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster codingjob=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --log-level warn
# (--unsafe-no-fsync: a throwaway test cluster trades crash safety for speed.)

start kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers "$ETCD_CLIENT_URL" \
  --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --client-ca-file "$PKI/ca.crt" \
  --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/service-account.pub" \
  --service-account-signing-key-file "$PKI/service-account.key" \
  --api-audiences "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --profiling=false --v=1
wait_for kube-apiserver 90 apiserver_ready || die "kube-apiserver is not ready: $LOGS/kube-apiserver.log"

start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
  --kubeconfig "$CONF/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CONF/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CONF/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file "$PKI/service-account.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --controllers '*,bootstrapsigner,tokencleaner' --enable-garbage-collector=true \
  --service-cluster-ip-range "$SERVICE_CIDR" --v=1

start kube-scheduler "$KUBE_BIN/kube-scheduler" \
  --kubeconfig "$CONF/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig "$CONF/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig "$CONF/kube-scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --v=1

put "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
# Hosts without systemd, on the cgroup v1 hierarchy (1.35+ refuses v1 unless told otherwise).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# Images cannot be pulled again (no registry), so the kubelet must never delete one.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Evict only when the node is really out of room: a developer's disk is often fuller than 85%.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# Keep our own oom_score_adj: lowering it needs CAP_SYS_RESOURCE, which some hosts withhold.
oomScoreAdj: 0
serializeImagePulls: false
# A pids bound on every pod: a fork bomb in a sandbox exhausts its own pod, not the node. A
# changed value restarts the kubelet on the next up.sh (start() compares this file's content).
podPidsLimit: $POD_PIDS_LIMIT
EOF
start kubelet "$KUBE_BIN/kubelet" --config "$CONF/kubelet.yaml" \
  --kubeconfig "$CONF/kubelet.kubeconfig" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
  --root-dir "$CLUSTER_DIR/kubelet" --v=1

put "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
mode: iptables
# Leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0, min: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: [primary]
oomScoreAdj: 0
EOF
start kube-proxy "$KUBE_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml" --v=1

# Docker sets the FORWARD policy to DROP; let pod traffic through the cluster bridge.
for dir in -i -o; do
  iptables -C FORWARD "$dir" "$CNI_BRIDGE" -j ACCEPT 2>/dev/null ||
    iptables -I FORWARD 1 "$dir" "$CNI_BRIDGE" -j ACCEPT -m comment --comment codingjob-cluster
done

# --- add-ons -----------------------------------------------------------------------------------

node_ready() {
  [ "$("${KUBECTL[@]}" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for node 90 node_ready || die "node $NODE_NAME is not Ready: $LOGS/kubelet.log"
wait "$images_pid" || die "building or loading the add-on images failed"

export CLUSTER_DOMAIN DNS_SERVICE_IP COREDNS_IMAGE LOCAL_PATH_IMAGE BASE_IMAGE
export LOCAL_PATH_DIR="$CLUSTER_DIR/local-path"
for addon in "$HACK_CLUSTER"/addons/*.yaml; do
  # Only our placeholders: the add-ons also carry shell variables ($VOL_DIR) for their pods.
  # shellcheck disable=SC2016
  envsubst '${CLUSTER_DOMAIN} ${DNS_SERVICE_IP} ${COREDNS_IMAGE} ${LOCAL_PATH_IMAGE} ${BASE_IMAGE} ${LOCAL_PATH_DIR}' \
    <"$addon" | "${KUBECTL[@]}" apply -f - >/dev/null
done

# NetworkPolicy enforcement: kube-router's firewall alone (iptables + ipset), beside the bridge CNI
# and kube-proxy; it routes nothing and proxies nothing. Started after the add-ons, which carry its
# RBAC. Why this engine: hack/cluster/README.md.
command -v ipset >/dev/null || die "ipset is missing (kube-router needs it): run hack/install-deps.sh"
start kube-router "$KUBE_ROUTER" --kubeconfig "$CONF/kube-router.kubeconfig" \
  --hostname-override "$NODE_NAME" \
  --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
  --service-cluster-ip-range "$SERVICE_CIDR" --metrics-port 0 \
  --health-port "$KUBE_ROUTER_HEALTH_PORT" --v=0
wait_for kube-router 60 kube_router_healthy || die "kube-router is not healthy: $LOGS/kube-router.log"

"${KUBECTL[@]}" -n kube-system rollout status deployment/coredns --timeout=120s >&2
"${KUBECTL[@]}" -n local-path-storage rollout status deployment/local-path-provisioner --timeout=120s >&2

# Users follow the README with plain `kubectl` and `helm`; offer ours when none is installed.
for tool in "$KUBE_BIN/kubectl" "$(tool_path helm)"; do
  command -v "$(basename "$tool")" >/dev/null || ln -sf "$tool" "/usr/local/bin/$(basename "$tool")"
done

"$HACK_CLUSTER/status.sh" --quiet || { "$HACK_CLUSTER/status.sh" >&2; die "the cluster is not healthy: see $LOGS"; }
log "cluster up in $((SECONDS - start_time))s (kubectl $("$KUBE_BIN/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1))"
log "use it with: export KUBECONFIG=$KUBECONFIG_PATH"
echo "$KUBECONFIG_PATH"
