#!/usr/bin/env bash
# Build dagwire's development servers (FerretDB v1.24.0 and MinIO, pinned in
# devservers/go.mod) into a cache outside the checkout, reusing them when
# present, and make sure PostgreSQL 15 (FerretDB's backend) is installed.
#
# Prints the directory holding `ferretdb` and `minio` on stdout (last line);
# progress goes to stderr.
#
#   DAGWIRE_DEVSERVERS_DIR  cache root (default: $HOME/.cache/dagwire/devservers)
#   DAGWIRE_SKIP_POSTGRES=1 do not check for / install PostgreSQL
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module_dir="$repo_root/devservers"
cache_root="${DAGWIRE_DEVSERVERS_DIR:-${HOME:-/tmp}/.cache/dagwire/devservers}"

log() { printf 'devservers: %s\n' "$*" >&2; }

ensure_postgres() {
    if [[ "${DAGWIRE_SKIP_POSTGRES:-0}" == "1" ]]; then
        return
    fi
    local d
    for d in "" /usr/lib/postgresql/15/bin; do
        if [[ -z "$d" ]]; then
            command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return
        elif [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            return
        fi
    done
    if [[ "$(id -u)" != "0" ]]; then
        log "PostgreSQL 15 (initdb, pg_ctl) not found and not root: install Debian's 'postgresql' package"
        exit 1
    fi
    log "installing PostgreSQL (Debian package 'postgresql')"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
}

build_servers() {
    if ! command -v go >/dev/null 2>&1; then
        log "go toolchain not found (need Go >= 1.24)"
        exit 1
    fi
    # Key the cache on everything that determines the binaries.
    local key
    key="$(
        cd "$module_dir"
        {
            go env GOOS GOARCH
            go version
            cat go.mod go.sum
            find . -name '*.go' -type f | LC_ALL=C sort | xargs cat
        } | sha256sum | cut -c1-16
    )"
    local bin_dir="$cache_root/$key"
    if [[ -x "$bin_dir/ferretdb" && -x "$bin_dir/minio" ]]; then
        log "reusing $bin_dir"
        printf '%s\n' "$bin_dir"
        return
    fi

    mkdir -p "$cache_root"
    # Build into a private directory, then rename it into place, so that
    # concurrent runs never see half-written binaries.
    # (global, not local: the EXIT trap below must still see it)
    tmp_dir="$(mktemp -d "$cache_root/.build-XXXXXX")"
    chmod 755 "$tmp_dir"
    trap 'rm -rf "$tmp_dir"' EXIT
    local start=$SECONDS
    (
        cd "$module_dir"
        log "building ferretdb (FerretDB v1.24.0) ..."
        go build -mod=readonly -trimpath -o "$tmp_dir/ferretdb" ./cmd/ferretdb
        log "building minio ..."
        go build -mod=readonly -trimpath -o "$tmp_dir/minio" github.com/minio/minio
    ) >&2
    if ! mv -T "$tmp_dir" "$bin_dir" 2>/dev/null; then
        # Another run won the race; its binaries are just as good.
        [[ -x "$bin_dir/ferretdb" && -x "$bin_dir/minio" ]] || {
            log "cannot move build into $bin_dir"
            exit 1
        }
        rm -rf "$tmp_dir"
    fi
    trap - EXIT
    log "built in $((SECONDS - start)) s: $bin_dir"
    printf '%s\n' "$bin_dir"
}

ensure_postgres
build_servers
