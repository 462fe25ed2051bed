#!/usr/bin/env bash
# Prints the path of a `go` new enough for the cluster tools: the machine's when it is at least the
# highest `go` line of hack/cluster/modules/*/go.mod, else the official toolchain of exactly that
# version, fetched once from the Go module proxy (module golang.org/toolchain, the same zip that
# `GOTOOLCHAIN=goX.Y.Z` downloads) into $CODINGJOB_CACHE/go. No Go needs to be installed at all:
# Debian 12 ships 1.19, which can neither build these modules nor switch toolchains itself.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUMS="$HACK_CLUSTER/go-toolchain.sha256"

# required_version: the highest `go X.Y[.Z]` directive of the wrapper modules, as X.Y.Z.
required_version() {
  awk '$1 == "go" { print $2 }' "$HACK_CLUSTER"/modules/*/go.mod |
    awk -F. '{ printf "%s.%s.%s\n", $1, $2, ($3 == "" ? 0 : $3) }' | sort -V | tail -1
}

# version_at_least HAVE WANT succeeds when HAVE >= WANT (both X.Y.Z).
version_at_least() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$2" ]; }

# machine_go_version: X.Y.Z of the `go` on the PATH, empty when there is none.
machine_go_version() {
  local v
  v="$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null || go version 2>/dev/null | awk '{print $3}')" || true
  v="${v#go}"
  v="${v%%[^0-9.]*}" # go1.26rc1 -> 1.26
  [ -z "$v" ] && return 0
  awk -F. '{ printf "%s.%s.%s\n", $1, $2, ($3 == "" ? 0 : $3) }' <<<"$v"
}

want="$(required_version)"
have="$(machine_go_version)"
if [ -n "$have" ] && version_at_least "$have" "$want"; then
  command -v go
  exit 0
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "no Go toolchain for $(uname -m): install Go $want or newer" ;;
esac
name="go$want.linux-$arch"
goroot="$CACHE/go/go$want"
mkdir -p "$CACHE/go"
# One download at a time (parallel builds ask at once); whoever waited finds it there.
exec {lock}>"$CACHE/go/.lock"
flock "$lock"
if [ ! -x "$goroot/bin/go" ]; then
  sum="$(awk -v n="$name" '$2 == n { print $1 }' "$SUMS")"
  [ -n "$sum" ] || die "no checksum for $name in $SUMS (see its header)"
  # The first real proxy of GOPROXY (as `go` itself would use), else the public one.
  proxy="$(tr ',|' '\n\n' <<<"${GOPROXY:-https://proxy.golang.org}" | grep -E '^https?://' | head -1)"
  url="${proxy:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-$name.zip"
  log "Go ${have:-(none)} is older than the $want the cluster modules need: fetching $url"
  tmp="$(mktemp -d "$CACHE/go/.go$want.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  with_heartbeat "downloading Go $want (70 MB)" "under a minute" \
    curl -fsSL --retry 3 -o "$tmp/go.zip" "$url"
  # The zip is pinned: a proxy that serves other bytes is refused.
  echo "$sum  $tmp/go.zip" | sha256sum -c --quiet - >&2 || die "checksum mismatch for $url"
  unzip -q "$tmp/go.zip" -d "$tmp/x"
  chmod -R a+rX "$tmp/x"
  chmod a+x "$tmp/x/golang.org/toolchain@v0.0.1-$name"/bin/* \
    "$tmp/x/golang.org/toolchain@v0.0.1-$name"/pkg/tool/*/*
  rm -rf "$goroot"
  mv "$tmp/x/golang.org/toolchain@v0.0.1-$name" "$goroot"
  log "Go $want installed in $goroot"
fi
echo "$goroot/bin/go"
