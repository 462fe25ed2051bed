#!/usr/bin/env bash
# Shows which parts of the local cluster run. Exit status 0 only when every component runs, the
# API server is ready and the node is Ready. With --quiet it prints nothing (for scripts).
set -uo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quiet=false
[ "${1:-}" = --quiet ] && quiet=true
say() { $quiet || printf '%-26s %s\n' "$1" "$2"; }
ok=true
PKI="$CLUSTER_DIR/pki"

for c in containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router; do
  if pid_alive "$c"; then say "$c" "running (pid $(cat "$RUN_DIR/$c.pid"))"; else say "$c" "stopped"; ok=false; fi
done

# api GET PATH: a request to the API server as the cluster admin.
api() {
  curl -sf --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}
if $ok && api /readyz >/dev/null; then
  say "api server" "ready at https://127.0.0.1:$APISERVER_PORT"
  # The node's Ready condition, read without kubectl so this works before anything is built.
  ready="$(api "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
print(next((c["status"] for c in conds if c["type"] == "Ready"), "Unknown"))' 2>/dev/null)"
  say "node $NODE_NAME" "Ready=${ready:-unknown}"
  [ "$ready" = True ] || ok=false
  # CoreDNS and the storage provisioner each need an available replica.
  for d in kube-system/coredns local-path-storage/local-path-provisioner; do
    avail="$(api "/apis/apps/v1/namespaces/${d%/*}/deployments/${d#*/}" | python3 -c '
import json, sys
print(json.load(sys.stdin).get("status", {}).get("availableReplicas", 0))' 2>/dev/null)"
    say "${d#*/}" "available=${avail:-0}"
    [ "${avail:-0}" -ge 1 ] 2>/dev/null || ok=false
  done
else
  say "api server" "not ready"
  ok=false
fi
$ok && say kubeconfig "$KUBECONFIG_PATH"
$ok
