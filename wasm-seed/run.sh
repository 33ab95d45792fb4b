#!/usr/bin/env bash
# The seed's loop in a real wasm runtime: builds wasm-seed for
# wasm32-unknown-unknown twice (Rust's default allocator, dlmalloc; and
# wee_alloc), then runs compact-heap and Vec<u8> on each in Node and writes
# target/wasm-seed/{results.md,results.csv,memory.svg}.
#
#   bash wasm-seed/run.sh [iterations]     # default 100000; a few minutes
#
# Installs the wasm32-unknown-unknown target with rustup if it is missing.
# Needs Node 18 or later.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-100000}
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/wasm-seed
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
mkdir -p "$out"
wasm=$target_dir/wasm32-unknown-unknown/release/wasm_seed.wasm
cargo build --release --target wasm32-unknown-unknown -p wasm-seed
cp "$wasm" "$out/dlmalloc.wasm"
cargo build --release --target wasm32-unknown-unknown -p wasm-seed --features wee_alloc
cp "$wasm" "$out/wee_alloc.wasm"
node wasm-seed/run.mjs "$iterations" "$out"
