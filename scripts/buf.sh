#!/usr/bin/env bash
# Run buf (the protobuf linter, breaking-change checker and code generator), pinned in
# tools/go.mod, with the given arguments.
#
# The first call builds buf from its Go module with `go build` into a cache
# outside the checkout; later calls reuse that binary. `generate` also builds the
# protoc plugins pinned there (protoc-gen-go, protoc-gen-go-grpc) and puts them on
# PATH, so a buf.gen.yaml names them as `local:` plugins (never remote ones).
# Build progress goes to stderr; buf's own output is untouched.
#
#   scripts/buf.sh lint protos
#   scripts/buf.sh breaking protos --against protos/baseline/dagwire-v1.binpb
#   scripts/buf.sh generate protos --template protos/buf.gen.go.yaml
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

# Key the cache on everything else that decides the binaries.
key="$(
    cd "$module_dir"
    { go env GOOS GOARCH; go version; cat go.mod go.sum; } | sha256sum | cut -c1-12
)"

# tool_bin NAME PACKAGE: print the path of the cached binary NAME built from the Go PACKAGE
# (a `tool` of tools/go.mod), building it first if needed.
tool_bin() {
    local name="$1" package="$2" version bin_dir tmp_dir start
    version="$(cd "$module_dir" && go list -mod=readonly -f '{{.Module.Version}}' "$package")"
    bin_dir="$cache_root/$name-$version-$key"
    if [[ ! -x "$bin_dir/$name" ]]; then
        mkdir -p "$cache_root"
        # Build into a private directory, then rename it into place, so that
        # concurrent runs never see a half-written binary.
        tmp_dir="$(mktemp -d "$cache_root/.build-XXXXXX")"
        start=$SECONDS
        log "building $name $version into $bin_dir (first run only) ..."
        if ! (cd "$module_dir" && go build -mod=readonly -trimpath -buildvcs=false -o "$tmp_dir/$name" "$package") >&2; then
            rm -rf "$tmp_dir"
            log "could not build $name from $package (see the go output above)"
            return 1
        fi
        if ! mv -T "$tmp_dir" "$bin_dir" 2>/dev/null; then
            # Another run won the race; its binary is just as good.
            rm -rf "$tmp_dir"
            [[ -x "$bin_dir/$name" ]] || { log "cannot move build into $bin_dir"; return 1; }
        fi
        log "built $name $version in $((SECONDS - start)) s"
    fi
    printf '%s\n' "$bin_dir/$name"
}

bin="$(tool_bin buf github.com/bufbuild/buf/cmd/buf)"

if [[ "${1:-}" == "generate" ]]; then
    go_plugin="$(tool_bin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go)"
    grpc_plugin="$(tool_bin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc)"
    PATH="$(dirname "$go_plugin"):$(dirname "$grpc_plugin"):$PATH"
    export PATH
fi

exec "$bin" "$@"
