#!/usr/bin/env bash
# Build dagwire's Java client into clients/java/target/dagwire-java-client.jar.
#
# Maven generates the grpc-java stubs from protos/ (protoc and protoc-gen-grpc-java come from
# Maven as pinned artifacts; nothing generated is committed), compiles the client and shades
# it into one runnable jar:
#
#   java -jar clients/java/target/dagwire-java-client.jar run FILE --var k=v --server host:port
#
# Idempotent: when the jar is newer than the pom, every source and every .proto, nothing
# runs. Downloads are cached in ~/.m2 (Maven's default), so only the first build fetches.
# Progress goes to stderr; stdout stays empty.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
project="$repo_root/clients/java"
jar="$project/target/dagwire-java-client.jar"

log() { printf 'build_java.sh: %s\n' "$*" >&2; }

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found on PATH: install a JDK 17+ and Maven 3.8+ (Debian: apt-get install openjdk-17-jdk-headless maven)"
        exit 1
    fi
done

if [[ -f "$jar" ]]; then
    newer="$(find "$project/pom.xml" "$project/src" "$repo_root/protos" -type f \
        \( -name pom.xml -o -path "$project/src/*" -o -name '*.proto' \) \
        -newer "$jar" -print -quit)"
    if [[ -z "$newer" ]]; then
        log "up to date: ${jar#"$repo_root"/}"
        exit 0
    fi
    log "rebuilding: $(realpath --relative-to="$repo_root" "$newer") changed"
else
    log "building ${jar#"$repo_root"/} (the first build downloads Maven plugins and gRPC into ~/.m2)"
fi

start=$SECONDS
# -q keeps Maven to warnings and errors; they go to stderr like the rest of the progress.
if ! (cd "$project" && mvn -B -q -ntp -DskipTests package) >&2; then
    # A half-finished build may have left an unshaded jar newer than the sources: drop it so
    # the next run builds again instead of skipping.
    rm -f "$jar"
    log "Maven build failed (see above)"
    exit 1
fi
log "built ${jar#"$repo_root"/} in $((SECONDS - start)) s"
