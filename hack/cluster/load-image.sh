#!/usr/bin/env bash
# Loads Docker images into the local cluster's containerd (namespace k8s.io), where the kubelet
# finds them: hack/cluster/load-image.sh TAG... (an image whose id is already loaded is skipped).
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -gt 0 ] || die "usage: $0 TAG..."
ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 || die "the local cluster is not running"
load_image "$@"
