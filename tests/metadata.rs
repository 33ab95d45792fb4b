//! What the heap's bookkeeping costs (issue 8): per object, and after the
//! objects are gone.
//!
//! - 1 M objects of 100 bytes cost at most 16 bytes of metadata each, all
//!   in (slot table, segment line counts, every side structure), exactly as
//!   `stats().metadata_bytes` counts it: a 12-byte slot, and a count byte per
//!   128-byte line. Slices pay 4 bytes more, for their length.
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

#[test]
fn slices_pay_four_bytes_more_for_their_length() {
    let n = if cfg!(miri) { 5 * 1024 } else { 1_000_000 };
    let sized = Heap::new();
    let slices = Heap::new();
    let a: Vec<_> = (0..n).map(|i| sized.alloc([i as u8; 100])).collect();
    let b: Vec<_> = (0..n)
        .map(|i| slices.alloc_slice(&[i as u8; 100]))
        .collect();
    let (sa, sb) = (sized.stats(), slices.stats());
    let extra = (sb.metadata_bytes - sa.metadata_bytes) as f64 / n as f64;
    println!("slices cost {extra:.2} B more each");
    assert!((4.0..4.1).contains(&extra), "{extra:.2}: {sa:?} {sb:?}");
    assert_eq!(slices.get(b[n / 3]).unwrap().len(), 100);
    assert_eq!(
        slices.get(b[n / 3]).unwrap()[0],
        sized.get(a[n / 3]).unwrap()[0]
    );
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
