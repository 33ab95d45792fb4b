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

/// Programs that reach the four defects fixed in the commits that followed
/// the fuzzer's arrival: each must run clean now.
mod reaches {
    use super::hostile::{How, Op, Program, SegmentSize, Setup, Size};

    fn program(segment: SegmentSize, limit_segments: Option<u8>, ops: Vec<Op>) -> Program {
        Program {
            setup: Setup {
                segment,
                limit_segments,
            },
            ops,
        }
    }

    /// A freed over-aligned large object's mapping, kept as a spare, is
    /// reused by a byte slice of the same mapping length.
    #[test]
    fn spare_mapping_of_an_over_aligned_object() {
        for huge in [false, true] {
            let mut ops = Vec::new();
            for _ in 0..4 {
                ops.push(Op::AllocLarge {
                    huge,
                    seed: 7,
                    fallible: true,
                });
                ops.push(Op::Reuse {
                    i: 0,
                    shorter: 0,
                    how: How::Fill,
                });
                ops.push(Op::Get(0));
            }
            super::hostile::run_both(&program(SegmentSize::K4, None, ops));
        }
    }

    /// `alloc_from_iter` fails at the memory limit; the panic hook re-enters.
    #[test]
    fn alloc_from_iter_fails_at_the_limit_with_a_reentrant_hook() {
        let big = Op::AllocBytes {
            size: Size::Multi(u16::MAX),
            seed: 1,
            how: How::Iter,
        };
        let p = program(
            SegmentSize::K4,
            Some(0),
            vec![big.clone(), big.clone(), big],
        );
        super::hostile::run_both(&p);
    }

    /// `Ref::map` / `RefMut::map` whose closure panics.
    #[test]
    fn map_closure_panics() {
        for exclusive in [false, true] {
            let p = program(
                SegmentSize::K4,
                None,
                vec![
                    Op::AllocBytes {
                        size: Size::Tiny(9),
                        seed: 3,
                        how: How::Slice,
                    },
                    Op::Map {
                        i: 0,
                        exclusive,
                        panic: true,
                    },
                    Op::Remove(0),
                    Op::Free(0),
                ],
            );
            super::hostile::run_both(&p);
        }
    }

    /// Under a limit, a heap full of fragmented segments (live data a
    /// quarter of it, one object in every segment) must still make room for
    /// a large object.
    #[test]
    fn large_object_in_a_fragmented_heap_at_the_limit() {
        let p = program(
            SegmentSize::K4,
            Some(28),
            vec![Op::Fragment {
                count: 255,
                size: 984,
                keep_every: 2,
                then: Some((Size::Multi(100), How::TrySlice)),
            }],
        );
        super::hostile::run_both(&p);
    }
}
