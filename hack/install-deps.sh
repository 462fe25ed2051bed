#!/usr/bin/env bash
# Installs the system packages CodingJob's cluster, images and tests need, on Debian/Ubuntu as root.
# Idempotent: packages already present are skipped, so a warm machine spends a second here.
set -euo pipefail

packages=(
  # Container runtime for the local kubelet, and an engine to build images without a registry.
  docker.io containerd runc containernetworking-plugins debootstrap
  # What kubelet and kube-proxy call on the node.
  iptables conntrack socat ethtool iproute2 util-linux mount
  # kube-router's network policy firewall keeps the pods each policy selects in ipsets.
  ipset
  # Certificates for the local control plane; archives; the test browser.
  openssl ca-certificates curl zip unzip chromium fonts-dejavu-core
  # The unit test that runs the scripted todo app's own tests (node --test); CI fails on a skip.
  nodejs
  python3 python3-venv python3-pip git make
  # The pause container is static C, built from the Kubernetes module's pause.c.
  gcc libc6-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Go for the cluster binaries: the machine's when new enough, else the official toolchain fetched
# once from the Go module proxy into the cache (Debian 12's golang-go, 1.19, is too old).
"$(dirname "$0")/cluster/go.sh" >/dev/null
