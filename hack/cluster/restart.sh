#!/usr/bin/env bash
# Restarts components of the running local cluster in place: stops them (SIGTERM, SIGKILL after
# 10 s) and runs up.sh, which starts every stopped component again with its usual command line
# and returns once the node is Ready and the cluster healthy.
#
#   hack/cluster/restart.sh kubelet containerd
#
# Pods keep running across it: each container belongs to its containerd shim, which neither the
# kubelet nor containerd stopping takes along; the restarted ones find them again. The fault
# campaign (tests/faults) uses this to restart the node's kubelet and runtime under a running job.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root"
[ $# -gt 0 ] || die "usage: $0 COMPONENT... (containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)"
known=" containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router "
for component in "$@"; do
  [[ "$known" == *" $component "* ]] || die "unknown component $component"
  pid_alive "$component" || die "$component is not running: start the cluster with up.sh"
done

# Under up.sh's and down.sh's lock, released before up.sh takes it.
exec {lock}>"$RUN_DIR.lock"
flock -w 900 "$lock" || die "another hack/cluster/up.sh or down.sh has held $RUN_DIR.lock for 15 min"
# The kubelet first (as down.sh does), so it does not act on a runtime going away.
if [[ " $* " == *" kubelet "* ]]; then stop_components kubelet; fi
for component in "$@"; do
  if [ "$component" != kubelet ]; then stop_components "$component"; fi
done
exec {lock}>&-
# The local cluster itself, whatever KUBECONFIG names.
exec env -u KUBECONFIG "$HACK_CLUSTER/up.sh" >/dev/null
