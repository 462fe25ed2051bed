# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for the local cluster scripts (sourced, not executed).
# Everything the scripts write lives in $CLUSTER_DIR (state, wiped by down.sh) or in
# $CODINGJOB_CACHE/bin (binaries keyed by version, kept across clusters).

HACK_CLUSTER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_CLUSTER/../.." && pwd)"
CACHE="${CODINGJOB_CACHE:-$HOME/.cache/codingjob}"
CLUSTER_DIR="${CODINGJOB_CLUSTER_DIR:-/var/lib/codingjob-cluster}"
# Sockets and pid files live under /run so a reboot never leaves stale ones behind; the name is
# derived from the state dir so two clusters with different dirs do not share a runtime.
RUN_DIR="${CODINGJOB_CLUSTER_RUN_DIR:-/run/codingjob-cluster}"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"

# Addresses: pods on a bridge, services on a separate range, DNS at the tenth service address.
POD_CIDR="10.244.0.0/16"
NODE_POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SERVICE_IP="10.96.0.1"
DNS_SERVICE_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
# The kubelet's per-pod pids bound (tests/integration/test_sandbox_limits.py reads it back).
POD_PIDS_LIMIT="${CODINGJOB_POD_PIDS_LIMIT:-4096}"
APISERVER_PORT=6443
ETCD_CLIENT_URL="http://127.0.0.1:2379"
CNI_BRIDGE="cni0"
# kube-router's health endpoint (its default port; it answers once its first policy sync is done).
KUBE_ROUTER_HEALTH_PORT=20244

NODE_NAME="$(hostname | tr '[:upper:]' '[:lower:]')"
BASE_IMAGE="${BASE_IMAGE:-codingjob/base:bookworm}"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# with_heartbeat WHAT USUALLY COMMAND...: runs COMMAND (a function too) and, every
# $HEARTBEAT_SECONDS (30), logs that WHAT is still running, for how long, and how long it usually
# takes, so long quiet steps (Go builds, image builds) never leave the terminal silent.
with_heartbeat() {
  local what="$1" usually="$2" start beat rc=0
  shift 2
  start=$(date +%s)
  # No stdout for the beat (callers capture it: `$(build.sh kubectl)`), and it takes its sleep
  # along when stopped, so no stray process holds a caller's pipe open.
  (
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep "${HEARTBEAT_SECONDS:-30}" &
      nap=$!
      wait "$nap"
      elapsed=$(($(date +%s) - start))
      log "$what: still running, $((elapsed / 60))m$(printf %02d $((elapsed % 60)))s so far (usually $usually)"
    done
  ) >&2 </dev/null &
  beat=$!
  "$@" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}

# node_ip prints the address of the interface that carries the default route.
node_ip() {
  ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}'
}

# kube_router_healthy: kube-router's health endpoint answers (its controllers are up and syncing).
kube_router_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$KUBE_ROUTER_HEALTH_PORT/healthz" >/dev/null; }

# tool_path NAME builds NAME if it is not cached yet and prints the binary's path.
tool_path() { "$HACK_CLUSTER/build.sh" "$1"; }

# ctr_k8s runs ctr against the cluster's containerd in the namespace the kubelet uses.
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# pid_alive NAME succeeds when the pid file of component NAME names a live process of that binary.
pid_alive() {
  local pidfile="$RUN_DIR/$1.pid" pid exe
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -d "/proc/$pid" ] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  [ "$(basename "${exe% (deleted)}")" = "$(basename "$1")" ]
}

# stop_components NAME...: SIGTERM the components, SIGKILL whatever still runs after 10 s, and
# remove their pid files (up.sh then starts them again).
stop_components() {
  local name pids=() pid i
  for name in "$@"; do
    if pid_alive "$name"; then
      pid="$(cat "$RUN_DIR/$name.pid")"
      log "stopping $name (pid $pid)"
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  for ((i = 0; i < 20; i++)); do
    any_alive "${pids[@]}" || break
    sleep 0.5
  done
  # Gone already is fine (set -e would end the caller on the failed kill).
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  return 0
}

# any_alive PID...: one of the processes still exists.
any_alive() {
  local p
  for p in "$@"; do [ -d "/proc/$p" ] && return 0; done
  return 1
}

# wait_for DESCRIPTION SECONDS COMMAND... polls COMMAND once a second until it succeeds.
wait_for() {
  local what="$1" timeout="$2" i
  shift 2
  for ((i = 0; i < timeout; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}

# load_image TAG...: copies the TAGs from Docker into the kubelet's containerd, skipping those whose
# image id was loaded already (a marker next to the image store), so a warm start imports nothing.
# One `docker save` carries them all, so layers they share (the base image) are copied once.
load_image() {
  local tag id marker todo=() ids=() i
  for tag in "$@"; do
    id="$(docker image inspect --format '{{.Id}}' "$tag")" || return 1
    marker="$CLUSTER_DIR/containerd/codingjob-images/${tag//[\/:]/_}"
    if [ "$(cat "$marker" 2>/dev/null)" = "$id" ] &&
      ctr_k8s images ls -q "name==docker.io/$tag" | grep -q .; then
      continue
    fi
    todo+=("$tag")
    ids+=("$id")
  done
  [ ${#todo[@]} -gt 0 ] || return 0
  log "loading ${todo[*]} into the cluster"
  docker save "${todo[@]}" | ctr_k8s images import - >/dev/null || return 1
  mkdir -p "$CLUSTER_DIR/containerd/codingjob-images"
  for i in "${!todo[@]}"; do
    echo "${ids[$i]}" >"$CLUSTER_DIR/containerd/codingjob-images/${todo[$i]//[\/:]/_}"
  done
}

# ensure_dockerd starts Docker (Debian's docker.io, which builds the images) when nobody has.
ensure_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  # A containerd that was killed leaves its socket behind, and dockerd then dials that dead socket
  # instead of starting a containerd of its own: remove it when nothing answers there.
  local docker_containerd=/run/containerd/containerd.sock
  if [ -S "$docker_containerd" ] && ! ctr --address "$docker_containerd" version >/dev/null 2>&1; then
    rm -f "$docker_containerd"
  fi
  log "starting dockerd"
  # Detached, and without the caller's lock ($lock, see up.sh and images.sh), or the next caller
  # would wait for dockerd to exit.
  (
    if [ -n "${lock:-}" ]; then exec {lock}>&-; fi
    exec setsid dockerd </dev/null >>/var/log/codingjob-dockerd.log 2>&1
  ) &
  wait_for dockerd 60 docker info || die "dockerd did not start: /var/log/codingjob-dockerd.log"
}

# binary_image TAG BINARY: the base image plus one binary (hack/cluster/images/Dockerfile).
binary_image() {
  local tag="$1" bin="$2" ctx
  docker image inspect "$tag" >/dev/null 2>&1 && return 0
  log "building image $tag"
  ctx="$(mktemp -d)"
  cp "$bin" "$ctx/" && cp "$HACK_CLUSTER/images/Dockerfile" "$ctx/"
  if ! docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg BINARY="$(basename "$bin")" \
    -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    die "building image $tag failed"
  fi
  rm -rf "$ctx"
}
