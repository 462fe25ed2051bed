#!/usr/bin/env bash
# Builds a cluster tool from its Go module (or C source) once and prints the cached binary's path.
#
#   hack/cluster/build.sh TOOL...     TOOL: kubernetes | kube-apiserver | kube-controller-manager |
#                                     kube-scheduler | kubelet | kube-proxy | kubectl | etcd |
#                                     coredns | pause | helm | minio | local-path-provisioner |
#                                     kube-router | all
#
# Binaries land in $CODINGJOB_CACHE/bin/<tool>-<version>/ and are reused while that directory
# exists, so only the first run compiles. Versions come from the wrapper modules in
# hack/cluster/modules (one go.mod per tool), which is where to bump them. Progress goes to
# stderr; stdout carries only the paths, one per line, so callers can use $(build.sh kubectl).
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODULES="$HACK_CLUSTER/modules"
BIN_CACHE="$CACHE/bin"
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# MinIO publishes no tags the module proxy accepts as semver, so it is pinned by pseudo-version.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"

# How long each first build usually takes on 2 cores, for the heartbeat of a long silent build.
declare -A USUALLY=(
  [kubernetes]="about 20 min on 2 cores"
  [etcd]="about 3 min on 2 cores"
  [coredns]="about 6 min on 2 cores"
  [helm]="about 4 min on 2 cores"
  [minio]="about 8 min on 2 cores"
  [local-path-provisioner]="about 6 min on 2 cores"
  [kube-router]="about 5 min on 2 cores"
  [pause]="a few seconds"
)

# go_path: a Go new enough for the modules (the machine's, or one fetched once by go.sh); the
# modules pin their versions, so Go is told not to switch toolchains on its own.
go_path() {
  local go
  [ -z "${GO_PATH_SET:-}" ] || return 0
  go="$("$HACK_CLUSTER/go.sh")" || die "no usable Go toolchain"
  GO_PATH_SET=1
  PATH="$(dirname "$go"):$PATH"
  export PATH GOTOOLCHAIN=local
}

# module_version DIR MODULE prints the version of MODULE that the wrapper module in DIR requires.
module_version() {
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == "require" ? $3 : $2); exit }' \
    "$MODULES/$1/go.mod"
}

kube_version() { module_version kubernetes k8s.io/kubernetes; }

# cached NAME VERSION FILE... succeeds when every FILE is already in NAME-VERSION's cache dir.
cached() {
  local dir="$BIN_CACHE/$1-$2" f
  shift 2
  for f in "$@"; do [ -x "$dir/$f" ] || return 1; done
}

# build_into NAME VERSION FUNC runs FUNC with a scratch dir, then moves it into the cache
# atomically, under a lock so concurrent callers (parallel test sessions) build only once.
build_into() {
  local name="$1" version="$2" func="$3" dir tmp start
  dir="$BIN_CACHE/$name-$version"
  mkdir -p "$BIN_CACHE"
  exec {lock}>"$BIN_CACHE/.$name.lock"
  flock -n "$lock" ||
    with_heartbeat "waiting for another build of $name" "${USUALLY[$name]:-a few minutes}" flock "$lock"
  if [ ! -d "$dir" ]; then
    tmp="$(mktemp -d "$BIN_CACHE/.$name-$version.XXXXXX")"
    start=$SECONDS
    log "building $name $version (first time only; logs below)"
    [ "$name" = pause ] || go_path
    if ! with_heartbeat "building $name" "${USUALLY[$name]:-a few minutes}" "$func" "$tmp" "$version" >&2; then
      rm -rf "$tmp"
      die "building $name $version failed"
    fi
    chmod 755 "$tmp"
    mv "$tmp" "$dir"
    log "built $name $version in $((SECONDS - start))s"
  fi
  flock -u "$lock"
}

build_kubernetes() {
  local out="$1" v="$2" pkgs=() b minor major ldflags
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  # The same -X flags as Kubernetes' own hack/lib/version.sh, so `kubectl version` is truthful.
  ldflags="-s -w"
  ldflags+=" -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=$major"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=$major"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for b in "${KUBE_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$MODULES/kubernetes" && nice go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
}

# build_tool MODULE_DIR PACKAGE BINARY: a `tool` of a wrapper module (its go.mod pins the version
# and ignores the replace lines that stop a plain `go install` of these modules).
build_tool() {
  local out="$1" dir="$2" pkg="$3" bin="$4"
  (cd "$MODULES/$dir" && nice go build -trimpath -ldflags "-s -w" -o "$out/$bin" "$pkg")
}
build_etcd() { build_tool "$1" etcd go.etcd.io/etcd/server/v3 etcd; }
build_coredns() { build_tool "$1" coredns github.com/coredns/coredns coredns; }
build_helm() { build_tool "$1" helm helm.sh/helm/v3/cmd/helm helm; }
build_local_path_provisioner() {
  build_tool "$1" local-path-provisioner github.com/rancher/local-path-provisioner local-path-provisioner
}
build_kube_router() {
  build_tool "$1" kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router kube-router
}
build_minio() { GOBIN="$1" nice go install -trimpath -ldflags "-s -w" "github.com/minio/minio@$2"; }

# The pause container of every pod: static C from the Kubernetes module, as upstream builds it.
build_pause() {
  local out="$1" v="$2"
  gcc -Os -Wall -Werror -static -DVERSION="v$v-codingjob" -o "$out/pause" \
    "$(kube_source_dir)/build/pause/linux/pause.c" && strip "$out/pause"
}
# kube_source_dir downloads the k8s.io/kubernetes module if needed and prints its directory.
kube_source_dir() {
  go_path
  (cd "$MODULES/kubernetes" && go mod download -json k8s.io/kubernetes) |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
# The pause version is the TAG of upstream's build/pause/Makefile in that module.
pause_version() { awk '$1 == "TAG" { print $3; exit }' "$(kube_source_dir)/build/pause/Makefile"; }

# ensure TOOL builds TOOL if needed and prints the path of its binary (or dir for kubernetes).
ensure() {
  local tool="$1" v
  case "$tool" in
    kubernetes | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl)
      v="$(kube_version)"
      cached kubernetes "$v" "${KUBE_BINARIES[@]}" || build_into kubernetes "$v" build_kubernetes
      if [ "$tool" = kubernetes ]; then echo "$BIN_CACHE/kubernetes-$v"; else echo "$BIN_CACHE/kubernetes-$v/$tool"; fi
      return
      ;;
    etcd) v="$(module_version etcd go.etcd.io/etcd/server/v3)" ;;
    coredns) v="$(module_version coredns github.com/coredns/coredns)" ;;
    helm) v="$(module_version helm helm.sh/helm/v3)" ;;
    local-path-provisioner) v="$(module_version local-path-provisioner github.com/rancher/local-path-provisioner)" ;;
    kube-router) v="$(module_version kube-router github.com/cloudnativelabs/kube-router/v2)" ;;
    minio) v="$MINIO_VERSION" ;;
    pause) v="$(pause_version)" ;;
    all)
      for tool in kubernetes etcd coredns pause helm minio local-path-provisioner kube-router; do ensure "$tool"; done
      return
      ;;
    *) die "unknown tool '$tool' (see the header of $0)" ;;
  esac
  if [ -n "${v:-}" ]; then
    cached "$tool" "$v" "$tool" || build_into "$tool" "$v" "build_${tool//-/_}"
    echo "$BIN_CACHE/$tool-$v/$tool"
  fi
}

[ $# -gt 0 ] || die "usage: $0 TOOL... (see the header of this script)"
for t in "$@"; do ensure "$t"; done
