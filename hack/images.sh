#!/usr/bin/env bash
# Builds the project's images on the Debian base image and loads them into the local cluster:
#   codingjob/base:bookworm   hack/base-image.sh (debootstrap + docker import)
#   codingjob/agent:dev       agent-image/Dockerfile (context agent-image/)
#   codingjob/operator:dev    operator/Dockerfile (context: the repository root)
#   codingjob/gateway:dev     gateway/Dockerfile (context gateway/)
#   codingjob/minio:dev       hack/cluster/images/Dockerfile + the MinIO server from build.sh
# Docker's layer cache and an image-id check before each import make a warm run take seconds.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster/lib.sh"

ensure_dockerd
# One build at a time (CI starts one early, in the background): whoever waited reuses its layers.
mkdir -p "$CACHE"
exec {lock}>"$CACHE/.images.lock"
flock -n "$lock" || with_heartbeat "waiting for another image build" "a few minutes" flock "$lock"
"$REPO_ROOT/hack/base-image.sh" >&2

# Behind a TLS-intercepting proxy, apt and pip inside the build must trust the host's extra CAs
# (Debian keeps locally added ones in /usr/local/share/ca-certificates).
if [ -z "${EXTRA_CA_CERTS+set}" ]; then
  EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)"
fi

# build TAG DOCKERFILE CONTEXT: skipped when the Dockerfile does not exist (yet).
built=("$BASE_IMAGE")
# How long a first build (no cached layers) usually takes; later builds reuse the layers.
declare -A USUALLY=(
  [codingjob/agent:dev]="about 6 min the first time, seconds later"
  [codingjob/operator:dev]="about 1 min the first time, seconds later"
)
build() {
  local tag="$1" dockerfile="$REPO_ROOT/$2" context="$REPO_ROOT/$3" start=$SECONDS
  if [ ! -f "$dockerfile" ]; then
    log "skipping $tag: no $2"
    return 0
  fi
  log "building $tag"
  with_heartbeat "building $tag" "${USUALLY[$tag]:-a few minutes the first time}" docker build --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRA_CA_CERTS="$EXTRA_CA_CERTS" \
    -t "$tag" -f "$dockerfile" "$context" >&2
  log "built $tag in $((SECONDS - start))s"
  built+=("$tag")
}
build codingjob/agent:dev agent-image/Dockerfile agent-image
build codingjob/operator:dev operator/Dockerfile .
build codingjob/gateway:dev gateway/Dockerfile gateway
# The bundled MinIO of the chart (development default): the base image plus the pinned server.
binary_image codingjob/minio:dev "$("$HACK_CLUSTER/build.sh" minio)"
built+=(codingjob/minio:dev)

if [ -S "$CONTAINERD_SOCK" ] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
  load_image "${built[@]}"
  log "images loaded into the local cluster: ${built[*]}"
else
  log "the local cluster is not running: images built but not loaded (run make cluster-up, then make images)"
fi
