//! Hostile programs on both heaps: allocations of every shape up to several
//! segments, memory limits, guards held across compaction, `Ref::map` with
//! panicking closures, panicking and re-entrant `Drop`s, panicking iterators
//! and clones, and a panic hook that re-enters the heap. tests/hostile/mod.rs
//! lists the ops and the properties checked after every step; the same
//! interpreter is the cargo-fuzz target fuzz/fuzz_targets/hostile.rs.

mod common;
#[path = "hostile/mod.rs"]
mod hostile;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides (CI's Miri run sets it); fewer cases under Miri.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(miri) { 8 } else { 64 }),
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_programs_keep_both_heaps_consistent(program in hostile::programs()) {
        hostile::run_both(&program);
    }
}
