#!/usr/bin/env bash
# Build dagwire's TypeScript workspace: the node client (clients/node) and the ts-reverse
# adapter (services/adapters/ts-reverse).
#
#   1. `npm ci` from the committed package-lock.json (exact versions, no install-time downloads
#      of binaries), only when the lock or a package.json changed;
#   2. types and grpc-js service stubs from protos/ with ts-proto as a local buf plugin
#      (protos/buf.gen.ts.yaml) into each package's gitignored src/gen/, only when a proto,
#      the template or the lock changed;
#   3. `tsc -b` (incremental) into each package's dist/.
#
# Idempotent; a second run with nothing changed takes about a second. Progress goes to stderr.
#
#   scripts/build_node.sh
#   node clients/node/dist/main.js --help
#   node services/adapters/ts-reverse/dist/main.js
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

log() { printf 'build_node.sh: %s\n' "$*" >&2; }

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found: install Node.js 20 or newer (with npm) and run this again"
        exit 1
    fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
    log "Node.js $(node --version) is too old: dagwire's TypeScript code needs Node.js 20 or newer"
    exit 1
fi

start=$SECONDS
packages=(package.json clients/node/package.json services/adapters/ts-reverse/package.json)
gen_dirs=(clients/node/src/gen services/adapters/ts-reverse/src/gen)

# 1. Dependencies.
deps_key="$(cat package-lock.json "${packages[@]}" | sha256sum | cut -c1-16)"
deps_stamp=node_modules/.dagwire-deps
if [[ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_key" ]]; then
    log "installing npm dependencies from package-lock.json ..."
    npm ci --no-audit --no-fund --loglevel=error >&2
    echo "$deps_key" >"$deps_stamp"
fi

# 2. Generated code.
gen_key="$(
    { find protos -name '*.proto' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
      sha256sum protos/buf.gen.ts.yaml package-lock.json; } | sha256sum | cut -c1-16
)"
stale=0
for dir in "${gen_dirs[@]}"; do
    [[ "$(cat "$dir/.dagwire-gen" 2>/dev/null)" == "$gen_key" ]] || stale=1
done
if (( stale )); then
    log "generating TypeScript from protos/ (ts-proto via buf) ..."
    scripts/buf.sh generate --template protos/buf.gen.ts.yaml protos
    for dir in "${gen_dirs[@]}"; do echo "$gen_key" >"$dir/.dagwire-gen"; done
fi

# 3. Compile.
log "compiling (tsc -b) ..."
node_modules/.bin/tsc -b
log "done in $((SECONDS - start)) s: node clients/node/dist/main.js, node services/adapters/ts-reverse/dist/main.js"
