#!/usr/bin/env bash
# Build dagwire's Go parts from the repository's own files (idempotent; quick when nothing
# changed):
#
#   1. Go stubs from protos/ with `buf generate` and the local protoc-gen-go/-go-grpc pinned
#      in tools/go.mod, into clients/go/gen/ (gitignored; regenerated when a proto changes);
#   2. build/bin/dagwire-go           the Go client command (clients/go/cmd/dagwire-go)
#      build/bin/go-wordcount         the Go `wordcount` adapter (services/adapters/go-wordcount)
#      build/bin/go-upcase            the Go `upcase` adapter (services/adapters/go-upcase)
#
# Modules come through the ordinary Go module proxy, pinned by the committed go.mod/go.sum
# files (-mod=readonly: a missing or changed checksum fails instead of being rewritten).
# Progress goes to stderr. Needs the Go toolchain named in the go.mod files.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
log() { printf 'build_go.sh: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "go toolchain not found: install Go (see the go line of clients/go/go.mod) and retry"
    exit 1
fi
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" GOWORK=off
start=$SECONDS

mkdir -p build/bin
# One build at a time (two test sessions may start together).
exec 9>build/.build_go.lock
flock 9

gen_dir=clients/go/gen
stamp="$gen_dir/.inputs.sha256"
inputs_hash="$(
    { find protos/dagwire -name '*.proto' -type f | LC_ALL=C sort | xargs sha256sum
      sha256sum protos/buf.yaml protos/buf.gen.go.yaml tools/go.mod tools/go.sum; } | sha256sum | cut -c1-64
)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$inputs_hash" ]]; then
    log "Go stubs up to date ($gen_dir)"
else
    log "generating Go stubs from protos/ into $gen_dir ..."
    scripts/buf.sh generate protos --template protos/buf.gen.go.yaml
    printf '%s\n' "$inputs_hash" >"$stamp"
fi

log "building build/bin/dagwire-go ..."
(cd clients/go && go build -o "$repo_root/build/bin/dagwire-go" ./cmd/dagwire-go)
log "building build/bin/go-wordcount ..."
(cd services/adapters/go-wordcount && go build -o "$repo_root/build/bin/go-wordcount" .)
log "building build/bin/go-upcase ..."
(cd services/adapters/go-upcase && go build -o "$repo_root/build/bin/go-upcase" .)
log "done in $((SECONDS - start)) s"
