//! The model test: random programs run against a heap and against a plain
//! model (a map of expected values), compared after every step.
//!
//! Properties checked after every operation:
//! - every live handle reads its expected value (through a fresh guard, or
//!   through the guard the program holds on it);
//! - every stale handle reads `None`, and `free` of it returns false;
//! - a pinned object has not moved: a fresh shared guard sees the address the
//!   held guard saw when it was taken;
//! - `remove` of a pinned object fails and changes nothing;
//! - `stats()` equals the model's figures: live objects and bytes, pinned
//!   objects, large objects and their bytes, compactions and bytes moved;
//! - every `Drop` runs exactly once: when freed, when the last guard of a freed
//!   object goes, or when the heap drops — never earlier, never twice.
//!
//! Freed and moved-from bytes are poisoned in debug builds, so reading an
//! object at its old address after a move shows up as a wrong value here,
//! even where Miri sees the segment as one live allocation.

mod common;

use common::{Subject, TestHeap};
use compact_heap::{Config, Heap, SyncHeap};
use proptest::prelude::*;

fn config() -> Config {
    // Small segments: many of them, large objects from 1 KiB, lots of evacuation.
    Config::default().segment_size(4096)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES overrides (CI's Miri run sets it); fewer cases under Miri.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(miri) { 8 } else { 256 }),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sync_heap_matches_the_model(program in common::program()) {
        let heap = TestHeap(SyncHeap::with_config(config()));
        let (log, ids) = common::run(&heap, &program);
        drop(heap);
        common::all_dropped_once(&log, ids);
    }

    #[test]
    #[cfg_attr(miri, ignore = "the same unsafe code as heap_matches_the_model; run natively")]
    fn heap_with_line_aligned_objects_matches_the_model(program in common::program()) {
        // As a cache's heap: objects from 200 bytes start on a line.
        let heap = TestHeap(Heap::with_config(config().line_align(200)));
        let (log, ids) = common::run(&heap, &program);
        drop(heap);
        common::all_dropped_once(&log, ids);
    }

    #[test]
    fn heap_matches_the_model(program in common::program()) {
        let heap = TestHeap(Heap::with_config(config()));
        let (log, ids) = common::run(&heap, &program);
        drop(heap);
        common::all_dropped_once(&log, ids);
    }
}

#[test]
fn a_known_tricky_program() {
    // Hold a guard, free under it, compact around it, write through another.
    use common::Kind::*;
    use common::Op::*;
    let program = vec![
        Alloc(Tracked, 1),
        Alloc(Bytes, 900),
        Alloc(Bytes, 2000),
        Alloc(U64, 4),
        Hold(1, false),
        Hold(0, true),
        Free(1),
        Compact,
        WriteHeld(1, 77),
        Alloc(Bytes, 300),
        Free(2),
        CompactStep(256),
        Release(0),
        Compact,
        Remove(0),
        Release(0),
        Compact,
        Alloc(TrackedSlice, 3),
        Free(0),
    ];
    let heap = TestHeap(Heap::with_config(config()));
    let (log, ids) = common::run(&heap, &program);
    drop(heap);
    common::all_dropped_once(&log, ids);
}

#[allow(dead_code)]
fn _subject_is_implemented() {
    fn is<S: Subject>() {}
    is::<TestHeap<Heap>>();
    is::<TestHeap<SyncHeap>>();
}
