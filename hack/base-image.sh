#!/usr/bin/env bash
# Builds the Debian bookworm base image without a registry: debootstrap a minimal root filesystem
# and `docker import` it. The tarball is cached outside the repository, so later runs only import.
set -euo pipefail
CACHE="${CODINGJOB_CACHE:-$HOME/.cache/codingjob}"
SUITE="${BASE_SUITE:-bookworm}"
TAG="${BASE_IMAGE:-codingjob/base:${SUITE}}"
tarball="$CACHE/base/${SUITE}-minbase.tar"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG present"
  exit 0
fi
mkdir -p "$CACHE/base"
# One debootstrap at a time (the cluster's and the images' scripts both ask for the base image).
exec {lock}>"$CACHE/base/.lock"
flock "$lock"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG present"
  exit 0
fi
if [ ! -s "$tarball" ]; then
  root=$(mktemp -d "$CACHE/base/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  "$(dirname "$0")/heartbeat.sh" "debootstrap of the $SUITE base image" "about 3 min, once" \
    debootstrap --variant=minbase "$SUITE" "$root" http://deb.debian.org/debian >/dev/null
  # Keep the image small and reproducible: no apt lists or caches in the layer.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tarball" "$TAG" >/dev/null
echo "base image $TAG imported"
