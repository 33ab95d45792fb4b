#!/usr/bin/env bash
# The concurrent stress test and the SyncHeap model test under ThreadSanitizer.
# Needs nightly with rust-src (-Zbuild-std: std itself must be instrumented).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="halt_on_error=1"
export STRESS_OPS="${STRESS_OPS:-10000}" PROPTEST_CASES="${PROPTEST_CASES:-16}"
cargo +nightly test -Zbuild-std --target x86_64-unknown-linux-gnu --target-dir target/tsan \
    --test stress --test model
