//! What the heap's bookkeeping costs (issue 8): per object, and after the
//! objects are gone.
//!
//! - 1 M objects of 100 bytes cost at most 16 bytes of metadata each, all
//!   in (slot table, segment line counts, every side structure), exactly as
//!   `stats().metadata_bytes` counts it: a 12-byte slot, and a count byte per
//!   128-byte line. Slices of at most 1 KiB cost the same (the slot's type
//!   index says their length); longer ones pay 4 bytes more, for their length.
//! - after a cache is cleared and compacted, the table gives its memory back.

use compact_heap::{Config, Heap};

#[test]
fn a_million_small_objects_cost_at_most_16_bytes_of_metadata_each() {
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
