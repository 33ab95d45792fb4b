#!/usr/bin/env bash
# Fuzzes the hostile-program target (fuzz/fuzz_targets/hostile.rs: the
# interpreter of tests/hostile on both heaps) for FUZZ_SECONDS (default 60),
# starting from the committed seed corpus, and fails on a crash, a failed
# check or a hang. Installs the nightly toolchain and cargo-fuzz if missing.
# New inputs go to a scratch copy of the corpus, so fuzz/corpus/ stays small;
# a failing input is left in fuzz/artifacts/hostile/ (reproduce it with
# `cargo +nightly fuzz run hostile fuzz/artifacts/hostile/<file>`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp fuzz/corpus/hostile/* "$scratch"/

# -max_len: programs of up to ~120 ops; -timeout: a hang is a finding (a
# re-entry deadlock is reported after 2 s by the interpreter itself).
cargo +nightly fuzz run hostile "$scratch" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=60 -rss_limit_mb=4096 \
    -print_final_stats=1
