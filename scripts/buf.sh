#!/usr/bin/env bash
# Run buf (the protobuf linter and breaking-change checker), pinned in tools/go.mod, with the
# given arguments.
#
# The first call builds buf from its Go module with `go build` into a cache
# outside the checkout; later calls reuse that binary. Build progress goes to
# stderr; buf's own output is untouched.
#
#   scripts/buf.sh lint protos
#   scripts/buf.sh breaking protos --against '.git#branch=main,subdir=protos'
#   (or, from protos/: ../scripts/buf.sh lint)
#
#   DAGWIRE_TOOLS_DIR  cache root (default: $HOME/.cache/dagwire/tools)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module_dir="$repo_root/tools"
cache_root="${DAGWIRE_TOOLS_DIR:-${HOME:-/tmp}/.cache/dagwire/tools}"

log() { printf 'buf.sh: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "go toolchain not found (buf is built from its Go module; need the Go version in tools/go.mod)"
    exit 1
fi

version="$(cd "$module_dir" && go list -mod=readonly -m -f '{{.Version}}' github.com/bufbuild/buf)"
# Key the cache on the pinned version and on everything else that decides the binary.
key="$(
    cd "$module_dir"
    { go env GOOS GOARCH; go version; cat go.mod go.sum; } | sha256sum | cut -c1-12
)"
bin_dir="$cache_root/buf-$version-$key"
bin="$bin_dir/buf"

if [[ ! -x "$bin" ]]; then
    mkdir -p "$cache_root"
    # Build into a private directory, then rename it into place, so that
    # concurrent runs never see a half-written binary.
    tmp_dir="$(mktemp -d "$cache_root/.build-XXXXXX")"
    trap 'rm -rf "$tmp_dir"' EXIT
    start=$SECONDS
    log "building buf $version into $bin_dir (first run only) ..."
    (cd "$module_dir" && go build -mod=readonly -trimpath -buildvcs=false -o "$tmp_dir/buf" github.com/bufbuild/buf/cmd/buf) >&2
    if ! mv -T "$tmp_dir" "$bin_dir" 2>/dev/null; then
        # Another run won the race; its binary is just as good.
        [[ -x "$bin" ]] || { log "cannot move build into $bin_dir"; exit 1; }
        rm -rf "$tmp_dir"
    fi
    trap - EXIT
    log "built buf $version in $((SECONDS - start)) s"
fi

exec "$bin" "$@"
