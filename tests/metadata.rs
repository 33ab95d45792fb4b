//! What the heap's bookkeeping costs (issue 8): per object, and after the
//! objects are gone.
//!
//! - 1 M objects of 100 bytes cost at most 16 bytes of metadata each, all
//!   in (slot table, segment line counts, every side structure), exactly as
//!   `stats().metadata_bytes` counts it: a 12-byte slot, and a count byte per
//!   128-byte line. Slices of at most 1 KiB cost the same (the slot's type
//!   index says their length); longer ones pay 4 bytes more, for their length.
//! - after a cache is cleared and compacted, the table gives its memory back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use compact_heap::{Config, Heap};

/// The global allocator, counting the bytes it has out. This test binary's
/// threads all share it: every test holds `COUNTING`, so they run one at a
/// time.
struct Counting;

static OUT: AtomicIsize = AtomicIsize::new(0);
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: `System`'s, passed through; the counter only adds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        OUT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        OUT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_million_small_objects_cost_at_most_16_bytes_of_metadata_each() {
    let _only_us = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let n = if cfg!(miri) { 20_000 } else { 1_000_000 };
    let heap = Heap::new();
    let hs: Vec<_> = (0..n).map(|i| heap.alloc([i as u8; 100])).collect();
    let st = heap.stats();
    let per_object = st.metadata_bytes as f64 / st.live_objects as f64;
    println!("{n} objects of 100 B: {per_object:.2} B of metadata each ({st:?})");
    if !cfg!(miri) {
        assert!(per_object <= 16.0, "{per_object:.2} B per object: {st:?}");
        // Packed back to back: 100-byte objects leave no gap in their segments.
        assert!(
            st.held_bytes as f64 <= st.live_bytes as f64 * 1.01,
            "{st:?}"
        );
    }
    assert_eq!(heap.get(hs[n / 2]).unwrap()[99], (n / 2) as u8);
}

/// Metadata bytes per object that `n` slices of `N` bytes cost beyond `n`
/// arrays of `N` bytes (sized objects of the same size), after checking
/// that both read back.
fn slice_extra<const N: usize>(n: usize) -> f64 {
    let sized = Heap::new();
    let slices = Heap::new();
    let a: Vec<_> = (0..n).map(|i| sized.alloc([i as u8; N])).collect();
    let b: Vec<_> = (0..n).map(|i| slices.alloc_slice(&[i as u8; N])).collect();
    let (sa, sb) = (sized.stats(), slices.stats());
    assert_eq!(slices.get(b[n / 3]).unwrap().len(), N);
    assert_eq!(slices.len_of(b[n / 3]), Some(N));
    assert_eq!(
        slices.get(b[n / 3]).unwrap()[N - 1],
        sized.get(a[n / 3]).unwrap()[N - 1]
    );
    (sb.metadata_bytes as f64 - sa.metadata_bytes as f64) / n as f64
}

#[test]
fn short_slices_cost_what_sized_objects_do_and_long_ones_four_bytes_more() {
    let _only_us = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    // Up to 1 KiB, a slice's length is said by its slot's type index: the
    // table keeps nothing for it (the registry's 2 KiB for the type's
    // lengths is all).
    let n = if cfg!(miri) { 5 * 1024 } else { 1_000_000 };
    let short = slice_extra::<100>(n);
    println!("slices of 100 B cost {short:.3} B more each");
    assert!(
        (0.0..=4096.0).contains(&(short * n as f64)),
        "{short:.3} B each: more than the registry's few KiB in all"
    );
    // Past it, the table keeps the length: 4 bytes.
    let long = slice_extra::<1100>(if cfg!(miri) { 2 * 1024 } else { 100_000 });
    println!("slices of 1100 B cost {long:.3} B more each");
    assert!((4.0..4.1).contains(&long), "{long:.3}");
}

#[test]
fn a_cleared_and_compacted_heap_gives_its_table_back() {
    let _only_us = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let n = if cfg!(miri) { 5_000 } else { 200_000 };
    let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
    let hs: Vec<_> = (0..n).map(|i| heap.alloc(i as u64)).collect();
    let full = heap.stats().metadata_bytes;
    let keep = hs[..n / 100].to_vec(); // the first 1% stay
    for h in &hs[n / 100..] {
        heap.free(*h);
    }
    heap.compact();
    let after = heap.stats();
    // What stays: the chunk of table that holds the 1%, and the line counts
    // of the segment they were packed into.
    let floor = 16 * 1024 + 8 * 1024;
    assert!(
        after.metadata_bytes < full / 20 + floor,
        "metadata {full} -> {} for 1% of the objects",
        after.metadata_bytes
    );
    for (i, h) in keep.iter().enumerate() {
        assert_eq!(*heap.get(*h).unwrap(), i as u64);
    }
    // The table grows again where it shrank, and old handles stay stale.
    let again: Vec<_> = (0..n / 2).map(|i| heap.alloc(i as u32)).collect();
    assert!(hs[n / 100..].iter().all(|h| heap.get(*h).is_none()));
    assert_eq!(*heap.get(again[n / 4]).unwrap(), (n / 4) as u32);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every mapping comes from the global allocator"
)]
fn a_segments_line_counts_are_not_left_in_malloc() {
    // A 1 MiB segment's 8 KiB of line counts are a mapping of their own,
    // which goes back to the OS with the segment: from `malloc`, the counts
    // of the segments that a compaction gives back stayed in its arena,
    // free but resident, between blocks still in use.
    let _only_us = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let heap = Heap::with_config(Config::default().no_pacing());
    let out = || OUT.load(Ordering::Relaxed);
    let mut hs = Vec::with_capacity(70 * 1024);
    let before = out();
    // 64 segments of 1 KiB slices (short enough that their lengths are in
    // their type index: the table keeps none).
    hs.extend((0..70 * 1024).map(|i| heap.alloc_slice_fill(1000, i as u8)));
    let segments = heap.stats().segments;
    assert!(segments >= 64, "{segments}");
    let per_segment = (out() - before) as f64 / segments as f64;
    println!("{per_segment:.0} B of malloc per segment");
    // The segment's bitmap of free lines (1 KiB) and its share of the
    // heap's vectors; the counts themselves would be 8 KiB more.
    assert!(
        per_segment < 3000.0,
        "{per_segment:.0} B of malloc per segment"
    );
    assert_eq!(heap.get(hs[12345]).unwrap()[999], 12345u32 as u8);
}
