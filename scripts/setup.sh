# Sourced by scripts/dev and scripts/test: makes sure a fresh machine can build Strata.
#
# RocksDB's bindings are generated at build time and need libclang; everything
# else (protoc, librdkafka, RocksDB itself) is built by cargo from crates.

set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Build outside the work tree so that a new checkout reuses earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata-target}"

have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1
}

if ! have_libclang; then
    echo "strata: installing libclang (needed to build RocksDB's bindings)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev >/dev/null
fi

# RocksDB's C++ takes about 20 minutes to compile on two cores, and cargo
# compiles it again whenever the set of build-time dependency features changes
# (clippy, a single-crate build, a new dependency). So the first build's static
# library is kept, without debug info, per RocksDB version, and every later
# build links it instead of compiling it again.
rocksdb_version="$(grep -A1 '^name = "librocksdb-sys"$' "$repo_root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')"
rocksdb_cache="${STRATA_ROCKSDB_CACHE:-$HOME/.cache/strata-rocksdb}/$rocksdb_version"
if [ ! -f "$rocksdb_cache/librocksdb.a" ]; then
    built="$(ls -t "$CARGO_TARGET_DIR"/*/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)"
    if [ -n "$built" ]; then
        echo "strata: keeping the compiled RocksDB $rocksdb_version for later builds" >&2
        mkdir -p "$rocksdb_cache"
        strip --strip-debug -o "$rocksdb_cache/librocksdb.a.tmp" "$built"
        mv "$rocksdb_cache/librocksdb.a.tmp" "$rocksdb_cache/librocksdb.a"
    fi
fi
if [ -f "$rocksdb_cache/librocksdb.a" ]; then
    export ROCKSDB_LIB_DIR="$rocksdb_cache" ROCKSDB_STATIC=1
fi
