#!/usr/bin/env bash
# Stops the local cluster and removes its state: processes, pod containers, mounts, the bridge,
# iptables rules and $CLUSTER_DIR. The binary and image caches stay. Safe to run at any time,
# also on a half-started or already stopped cluster.
set -uo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root"
shopt -s globstar nullglob
exec {lock}>"$RUN_DIR.lock"
flock -w 900 "$lock" || die "another hack/cluster/up.sh or down.sh has held $RUN_DIR.lock for 15 min"

# The kubelet first, so it restarts nothing while the rest goes down.
stop_components kubelet
stop_components kube-router kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd

# Every pod process lives in the kubelet's kubepods cgroups: kill them all, then the shims of our
# containerd (found by its socket, which no other containerd uses), then containerd itself.
for procs in /sys/fs/cgroup/*/kubepods/**/cgroup.procs; do
  { xargs -r kill -9 <"$procs"; } 2>/dev/null
done
for cmdline in /proc/[0-9]*/cmdline; do
  if { tr '\0' ' ' <"$cmdline"; } 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK "; then
    pid="${cmdline#/proc/}"
    kill -9 "${pid%/cmdline}" 2>/dev/null
  fi
done
stop_components containerd

# Mounts: pod volumes, container root filesystems, network namespaces made by our CNI.
for root in "$CLUSTER_DIR" "$RUN_DIR"; do
  findmnt -rn -o TARGET | grep -E "^$root(/|$)" | sort -r | while read -r m; do umount -l "$m"; done
done
for ns in /run/netns/cni-*; do umount -l "$ns" 2>/dev/null; rm -f "$ns"; done
# Empty pod cgroups, deepest first, so the next kubelet starts from a clean hierarchy.
for d in /sys/fs/cgroup/*/kubepods; do
  find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# Network: the bridge, kube-proxy's chains, the bridge plugin's masquerade rules, our FORWARD rules.
ip link del "$CNI_BRIDGE" 2>/dev/null
kube_proxy="$CACHE/bin/kubernetes-$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' \
  "$HACK_CLUSTER/modules/kubernetes/go.mod")/kube-proxy"
[ -x "$kube_proxy" ] && "$kube_proxy" --cleanup >/dev/null 2>&1
iptables -t nat -S POSTROUTING | grep -F 'name: \"codingjob\"' | sed 's/^-A/-D/' |
  while read -r rule; do eval "iptables -t nat $rule"; done
for chain in $(iptables -t nat -S | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}'); do
  iptables -t nat -F "$chain" && iptables -t nat -X "$chain"
done 2>/dev/null
iptables -S FORWARD | grep -- '--comment codingjob-cluster' | sed 's/^-A/-D/' |
  while read -r rule; do eval "iptables $rule"; done
# kube-router's firewall: its `--cleanup-config` panics in the service-proxy cleanup when the proxy
# never ran, so its jumps, chains and ipsets are removed here (names from its netpol controller).
iptables -S | grep -E -- '-j KUBE-(ROUTER|NWPLCY|POD-FW)-' | grep -E '^-A (INPUT|FORWARD|OUTPUT) ' |
  sed 's/^-A/-D/' | while read -r rule; do eval "iptables $rule"; done
for chain in $(iptables -S | awk '$1 == "-N" && $2 ~ /^KUBE-(ROUTER|NWPLCY|POD-FW)-/ {print $2}'); do
  iptables -F "$chain"
done 2>/dev/null
for chain in $(iptables -S | awk '$1 == "-N" && $2 ~ /^KUBE-(ROUTER|NWPLCY|POD-FW)-/ {print $2}'); do
  iptables -X "$chain"
done 2>/dev/null
if command -v ipset >/dev/null; then
  for set in $(ipset list -n | grep -E '^(inet6:)?KUBE-(SRC|DST)-'); do ipset destroy "$set"; done 2>/dev/null
fi

# Pod logs the kubelet keeps outside its root dir.
rm -rf /var/log/pods/* /var/log/containers/*
rm -rf "$CLUSTER_DIR" "$RUN_DIR"
log "cluster down"
