//! The edges of the heap's contract, one test each: zero-sized and
//! over-aligned types, drops (re-entrant, panicking, exactly once), pins
//! (free and remove under a guard, borrow conflicts), handles from another
//! heap, and the memory limit.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use compact_heap::{AllocError, BorrowError, Config, Handle, Heap, RemoveError};

fn small_segments() -> Config {
    Config::default().segment_size(4096)
}

/// Small segments, and no paced compaction: only explicit calls move objects.
fn manual() -> Config {
    small_segments().no_pacing()
}

/// Counts drops in a shared counter.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Fills segments with objects and frees every other one, so compaction has work.
fn fragment(heap: &Heap, n: u64) -> Vec<Handle<[u64; 8]>> {
    let all: Vec<_> = (0..n).map(|i| heap.alloc([i; 8])).collect();
    free_every_other(heap, all)
}

/// `n` slices of `size` bytes, slice `i` filled with `i as u8`, every other
/// one freed; returns the kept ones (odd `i`).
fn half_freed_slices(heap: &Heap, n: u32, size: usize) -> Vec<Handle<[u8]>> {
    let all: Vec<_> = (0..n)
        .map(|i| heap.alloc_slice_fill(size, i as u8))
        .collect();
    free_every_other(heap, all)
}

/// Frees the objects at even positions; returns the others.
fn free_every_other<T: ?Sized + compact_heap::Object>(
    heap: &Heap,
    all: Vec<Handle<T>>,
) -> Vec<Handle<T>> {
    let mut kept = Vec::new();
    for (i, h) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            heap.free(h);
        } else {
            kept.push(h);
        }
    }
    kept
}

#[test]
fn zero_sized_values_take_no_memory_and_still_drop() {
    let drops = Arc::new(AtomicUsize::new(0));
    #[derive(Debug)]
    struct Zst;
    let heap = Heap::new();
    let unit = heap.alloc(());
    let empty = heap.alloc_slice::<u32>(&[]);
    let s = heap.alloc_str("");
    let zst_drop = heap.alloc_from_iter((0..3).map(|_| Counted(drops.clone())));
    assert_eq!(heap.stats().held_bytes, heap.stats().segment_bytes);
    assert!(heap.get(unit).is_some());
    assert_eq!(heap.get(empty).unwrap().len(), 0);
    assert_eq!(&*heap.get(s).unwrap(), "");
    let _ = heap.alloc(Zst);
    assert!(heap.free(zst_drop));
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    assert_eq!(heap.stats().live_bytes, 0);
}

#[test]
fn over_aligned_values_stay_aligned_when_moved() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    #[repr(align(64))]
    struct Line([u8; 64]);
    #[derive(Clone, Copy, Debug, PartialEq)]
    #[repr(align(4096))]
    struct Page(u32);
    #[derive(Clone, Copy, Debug, PartialEq)]
    #[repr(align(16384))]
    struct Huge(u32);

    // No pacing: the frees below leave the holes for `compact()` to close.
    let heap = Heap::with_config(manual());
    let keep = fragment(&heap, 300);
    let lines: Vec<_> = (0..40u8).map(|i| heap.alloc(Line([i; 64]))).collect();
    let pages: Vec<_> = (0..4u32).map(|i| heap.alloc(Page(i))).collect();
    let huge = heap.alloc(Huge(9));
    for h in lines.iter().step_by(2) {
        heap.free(*h);
    }
    assert!(heap.compact().objects_moved > 0);
    for (i, h) in lines.iter().enumerate().skip(1).step_by(2) {
        let r = heap.get(*h).unwrap();
        assert_eq!((&*r as *const Line).addr() % 64, 0);
        assert_eq!(*r, Line([i as u8; 64]));
    }
    for (i, h) in pages.iter().enumerate() {
        let r = heap.get(*h).unwrap();
        assert_eq!((&*r as *const Page).addr() % 4096, 0);
        assert_eq!(r.0, i as u32);
    }
    assert_eq!((&*heap.get(huge).unwrap() as *const Huge).addr() % 16384, 0);
    assert_eq!(heap.get(keep[3]).unwrap()[0], 7);
}

#[test]
fn every_value_is_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let heap = Heap::with_config(small_segments());
        let freed = heap.alloc(Counted(drops.clone()));
        let removed = heap.alloc(Counted(drops.clone()));
        let slice = heap.alloc_from_iter((0..5).map(|_| Counted(drops.clone())));
        let _kept: Vec<_> = (0..100)
            .map(|_| heap.alloc(Counted(drops.clone())))
            .collect();
        heap.free(freed);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let value = heap.remove(removed).unwrap();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "remove moves the value out, no drop"
        );
        drop(value);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        heap.compact();
        assert!(!heap.free(freed));
        heap.free(slice);
        assert_eq!(drops.load(Ordering::SeqCst), 7);
    }
    assert_eq!(
        drops.load(Ordering::SeqCst),
        107,
        "dropping the heap drops the rest once"
    );
}

thread_local! {
    static HEAP: Heap = Heap::with_config(small_segments());
}

/// A value whose Drop frees its child, allocates, and compacts — all on the same heap.
struct Parent {
    child: Handle<String>,
    flag: Rc<Cell<bool>>,
}

/// `Parent` holds an `Rc` (not `Send`); the heap wants `Send` values.
struct SendParent(Parent);
// SAFETY: the Rc inside is only cloned and used on the test's own thread.
unsafe impl Send for SendParent {}

impl Drop for SendParent {
    fn drop(&mut self) {
        HEAP.with(|heap| {
            assert!(
                heap.free(self.0.child),
                "child freed from the parent's Drop"
            );
            let tmp = heap.alloc_slice(&[1u8; 300]);
            heap.compact();
            assert_eq!(heap.get(tmp).unwrap()[299], 1);
            heap.free(tmp);
        });
        self.0.flag.set(true);
    }
}

#[test]
fn a_drop_may_call_back_into_its_heap() {
    let flag = Rc::new(Cell::new(false));
    HEAP.with(|heap| {
        let keep = fragment(heap, 200);
        let child = heap.alloc(String::from("child"));
        let parent = heap.alloc(SendParent(Parent {
            child,
            flag: flag.clone(),
        }));
        assert!(heap.free(parent));
        assert!(flag.get());
        assert!(!heap.contains(child));
        assert_eq!(heap.get(keep[10]).unwrap()[0], 21);
        // The same through a guard: the drop runs when the last guard goes.
        flag.set(false);
        let child = heap.alloc(String::from("child 2"));
        let parent = heap.alloc(SendParent(Parent {
            child,
            flag: flag.clone(),
        }));
        let guard = heap.get(parent).unwrap();
        heap.free(parent);
        assert!(!flag.get());
        drop(guard);
        assert!(flag.get());
        assert_eq!(heap.stats().live_objects, keep.len());
    });
}

#[derive(Debug)]
struct Bomb {
    _field: Counted,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("boom");
    }
}

#[test]
fn a_panicking_drop_leaves_the_heap_consistent() {
    let drops = Arc::new(AtomicUsize::new(0));
    let heap = Heap::with_config(small_segments());
    let keep = fragment(&heap, 100);
    let bomb = heap.alloc(Bomb {
        _field: Counted(drops.clone()),
    });
    let held_before = heap.stats().held_bytes;
    let result = catch_unwind(AssertUnwindSafe(|| heap.free(bomb)));
    assert!(result.is_err(), "the panic reaches the caller of free");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the Bomb's fields were still dropped"
    );
    assert!(!heap.contains(bomb));
    assert_eq!(heap.stats().live_objects, keep.len());
    assert_eq!(heap.stats().live_bytes, keep.len() * 64);
    assert!(heap.stats().held_bytes <= held_before);
    heap.compact();
    for (i, h) in keep.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[0], 2 * i as u64 + 1);
    }
}

#[test]
fn a_panicking_drop_at_the_heaps_end_does_not_stop_the_others() {
    let drops = Arc::new(AtomicUsize::new(0));
    let result = catch_unwind(AssertUnwindSafe(|| {
        let heap = Heap::new();
        heap.alloc(Counted(drops.clone()));
        heap.alloc(Bomb {
            _field: Counted(drops.clone()),
        });
        heap.alloc(Counted(drops.clone()));
    }));
    assert!(result.is_err());
    assert_eq!(drops.load(Ordering::SeqCst), 3);
}

#[test]
fn stats_count_every_pin_whatever_came_before() {
    let heap = Heap::new();
    let h = heap.alloc(1u32);
    assert_eq!(heap.stats().pinned_objects, 0, "no pin yet");
    let r = heap.get(h).unwrap();
    assert_eq!(
        heap.stats().pinned_objects,
        1,
        "a pin after a walk found none"
    );
    drop(r);
    assert_eq!(heap.stats().pinned_objects, 0);
    assert_eq!(heap.stats().pinned_objects, 0, "and again, with no walk");
    let w = heap.get_mut(h).unwrap();
    assert_eq!(heap.stats().pinned_objects, 1, "an exclusive pin");
    drop(w);
    assert_eq!(heap.stats().pinned_objects, 0);
    // A builder's pin is no guard's: counted while its closure runs.
    let seen = Cell::new(usize::MAX);
    heap.alloc_with(|| {
        seen.set(heap.stats().pinned_objects);
        2u64
    });
    assert_eq!(seen.get(), 1, "the object being built");
    assert_eq!(heap.stats().pinned_objects, 0);
    // A stale handle's failed pin pins nothing; a forgotten guard pins for good.
    let dead = heap.alloc(3u32);
    heap.free(dead);
    assert!(heap.get(dead).is_none());
    assert_eq!(heap.stats().pinned_objects, 0);
    core::mem::forget(heap.get(h).unwrap());
    assert_eq!(heap.stats().pinned_objects, 1);
    assert_eq!(heap.stats().pinned_objects, 1, "still, on the next look");
}

#[test]
fn free_under_a_guard_kills_the_handle_now_and_drops_later() {
    let drops = Arc::new(AtomicUsize::new(0));
    let heap = Heap::new();
    let h = heap.alloc(Counted(drops.clone()));
    let r1 = heap.get(h).unwrap();
    let r2 = heap.get(h).unwrap();
    assert!(heap.free(h));
    assert!(heap.get(h).is_none());
    assert!(!heap.free(h), "a second free of the dead handle");
    assert_eq!(heap.stats().live_objects, 0);
    assert_eq!(heap.stats().pinned_objects, 1);
    drop(r1);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "still borrowed");
    drop(r2);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(heap.stats().pinned_objects, 0);
}

#[test]
fn remove_under_a_guard_fails_and_changes_nothing() {
    let heap = Heap::new();
    let h = heap.alloc(String::from("stay"));
    let w = heap.get_mut(h).unwrap();
    assert_eq!(heap.remove(h), Err(RemoveError::Pinned));
    drop(w);
    assert_eq!(*heap.get(h).unwrap(), "stay");
    assert_eq!(heap.remove(h).as_deref(), Ok("stay"));
    assert_eq!(heap.remove(h), Err(RemoveError::Stale));
}

#[test]
#[should_panic(expected = "already mutably borrowed")]
fn get_while_mutably_borrowed_panics() {
    let heap = Heap::new();
    let h = heap.alloc(1u8);
    let _w = heap.get_mut(h).unwrap();
    let _r = heap.get(h);
}

#[test]
#[should_panic(expected = "already borrowed")]
fn get_mut_while_borrowed_panics() {
    let heap = Heap::new();
    let h = heap.alloc(1u8);
    let _r = heap.get(h).unwrap();
    let _w = heap.get_mut(h);
}

#[test]
fn try_get_says_which_conflict() {
    let heap = Heap::new();
    let h = heap.alloc(1u8);
    let r = heap.get(h).unwrap();
    assert_eq!(heap.try_get_mut(h).err(), Some(BorrowError::Borrowed));
    assert!(heap.try_get(h).is_ok(), "many shared borrows are fine");
    drop(r);
    let w = heap.get_mut(h).unwrap();
    assert_eq!(heap.try_get(h).err(), Some(BorrowError::BorrowedMut));
    assert_eq!(heap.try_get_mut(h).err(), Some(BorrowError::BorrowedMut));
    drop(w);
    heap.free(h);
    assert_eq!(heap.try_get(h).err(), Some(BorrowError::Stale));
}

#[test]
fn pinned_objects_do_not_move_and_the_rest_do() {
    let heap = Heap::with_config(manual());
    let keep = fragment(&heap, 400);
    let pinned = heap.get(keep[0]).unwrap();
    let addr = pinned.as_ptr().addr();
    let others: Vec<usize> = keep[1..]
        .iter()
        .map(|h| heap.get(*h).unwrap().as_ptr().addr())
        .collect();
    let report = heap.compact();
    assert!(report.objects_moved > 0);
    assert!(report.pinned_skipped >= 1);
    assert_eq!(
        heap.get(keep[0]).unwrap().as_ptr().addr(),
        addr,
        "pinned object moved"
    );
    assert_eq!(pinned[0], 1);
    let moved = keep[1..]
        .iter()
        .zip(&others)
        .filter(|(h, a)| heap.get(**h).unwrap().as_ptr().addr() != **a)
        .count();
    assert!(moved > 0);
    drop(pinned);
    // Once unpinned, a later compaction may move it too.
    heap.compact();
    assert_eq!(heap.get(keep[0]).unwrap()[0], 1);
}

#[test]
fn compaction_gives_segments_back() {
    let heap = Heap::with_config(manual());
    let keep = fragment(&heap, if cfg!(miri) { 600 } else { 2000 });
    let before = heap.stats();
    let report = heap.compact();
    let after = heap.stats();
    assert_eq!(report.bytes_released, report.segments_released * 4096);
    assert_eq!(after.bytes_released, report.bytes_released as u64);
    assert!(
        after.held_bytes < before.held_bytes * 2 / 3,
        "{before:?} -> {after:?}"
    );
    assert!(after.segments <= (keep.len() * 64).div_ceil(4096) + 1);
    for h in &keep {
        heap.free(*h);
    }
    heap.compact();
    assert_eq!(
        heap.stats().held_bytes,
        0,
        "an empty heap holds nothing after compact()"
    );
}

#[test]
fn compact_step_keeps_its_budget_and_finishes() {
    let heap = Heap::with_config(manual());
    let keep = fragment(&heap, if cfg!(miri) { 600 } else { 2000 });
    let mut steps = 0;
    loop {
        let r = heap.compact_step(600);
        assert!(r.bytes_moved <= 600);
        steps += 1;
        if r.finished {
            break;
        }
    }
    assert!(steps > 10, "the budget split the work ({steps} steps)");
    assert!(heap.stats().segments <= (keep.len() * 64).div_ceil(4096) + 2);
    for (i, h) in keep.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[7], 2 * i as u64 + 1);
    }
}

#[test]
#[cfg_attr(
    any(miri, feature = "alloc-segments", not(unix)),
    ignore = "segments from the allocator go back whole: no pages to discard"
)]
fn compact_step_gives_memory_back_a_piece_at_a_time() {
    // 1 MiB segments, half empty: a pass empties them faster than a step
    // may give them back, so the rest waits for the next steps.
    let heap = Heap::with_config(Config::default().no_pacing());
    let kept = half_freed_slices(&heap, 16 * 1024, 1024);
    let mut steps = 0;
    loop {
        let r = heap.compact_step(16 * 1024);
        // 4 × the budget, or one piece (256 KiB), plus the end of a segment.
        assert!(r.bytes_released <= 512 * 1024, "step {steps}: {r:?}");
        // Giving memory back costs a step its moves: a quarter byte per
        // byte (then a pass waits for the next step: it never skips).
        assert!(
            r.bytes_moved <= (16 * 1024usize).saturating_sub(r.bytes_released / 4),
            "step {steps}: {r:?}"
        );
        steps += 1;
        if r.finished {
            break;
        }
    }
    let st = heap.stats();
    assert!(
        st.held_bytes <= st.live_bytes + (2 << 20),
        "all given back: {st:?}"
    );
    assert_eq!(st.spare_bytes, 0, "nothing waits when finished: {st:?}");
    for (i, h) in kept.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[1023], (2 * i + 1) as u8);
    }
}

#[test]
#[cfg_attr(miri, ignore = "megabytes of objects: too slow under Miri")]
fn compact_step_pays_for_the_fresh_pages_it_writes() {
    // 8 MiB of 64-byte objects, every other one freed: no line is free, so
    // the first pass (six sources) moves into a fresh segment until it is
    // full, and then into the sources it emptied (their pages are there).
    let heap = Heap::with_config(Config::default().no_pacing());
    let kept = half_freed_slices(&heap, 128 * 1024, 64);
    let budget = 64 * 1024;
    let mut moved = Vec::new();
    loop {
        let r = heap.compact_step(budget);
        assert!(r.bytes_moved <= budget, "{r:?}");
        if r.bytes_moved > 0 {
            moved.push(r.bytes_moved);
        }
        if r.finished {
            break;
        }
    }
    // A 64-byte object costs the budget 144 bytes (its own and 80 for the
    // move), so a step with no fresh page moves 64/144 of its budget; a page
    // written for the first time costs 20 KiB more, so a step into fresh
    // pages (64 objects a page) moves about a third of that.
    assert!(
        moved[0] <= budget / 4,
        "the first moves go to fresh pages: {moved:?}"
    );
    assert!(
        moved.iter().any(|&m| m > budget * 3 / 8),
        "moves into emptied sources write no fresh page: {moved:?}"
    );
    for (i, h) in kept.iter().enumerate() {
        assert!(heap
            .get(*h)
            .unwrap()
            .iter()
            .all(|&b| b == (2 * i + 1) as u8));
    }
}

#[test]
#[cfg_attr(miri, ignore = "thousands of allocations: slow under Miri")]
fn compact_packs_scattered_free_bytes_even_when_no_segment_can_go() {
    // Two full segments of 64-byte objects, every fourth one freed: the live
    // bytes need both segments still, but the free bytes lie on every page.
    let seg = 256 * 1024;
    let heap = Heap::with_config(Config::default().segment_size(seg).no_pacing());
    let all: Vec<_> = (0..2 * seg / 64)
        .map(|i| heap.alloc_slice_fill(64, i as u8))
        .collect();
    let mut kept = Vec::new();
    for (i, h) in all.into_iter().enumerate() {
        if i % 4 == 0 {
            heap.free(h);
        } else {
            kept.push((i, h));
        }
    }
    let first = heap.compact();
    assert!(
        first.objects_moved > 0,
        "the sparsest segment is packed into the other's pages: {first:?}"
    );
    for &(i, h) in &kept {
        assert!(heap.get(h).unwrap().iter().all(|&b| b == i as u8));
    }
    let again = heap.compact();
    assert_eq!(again.objects_moved, 0, "a packed heap is not packed again");
}

#[test]
fn emptied_segments_go_back_as_the_heap_is_used() {
    // No pacing: segments that frees empty are given back a piece per later
    // alloc or free, not all in the free that empties them.
    let heap = Heap::with_config(Config::default().segment_size(1 << 20).no_pacing());
    let all: Vec<_> = (0..if cfg!(miri) { 64 } else { 8 * 1024 })
        .map(|i| heap.alloc_slice_fill(1024, i as u8))
        .collect();
    for h in &all {
        heap.free(*h);
    }
    for i in 0..64 {
        let h = heap.alloc(i as u64);
        heap.free(h);
    }
    let st = heap.stats();
    assert!(st.held_bytes <= 2 << 20, "{st:?}");
}

#[test]
fn a_handle_from_another_heap_never_reads_another_type() {
    let a = Heap::new();
    let b = Heap::new();
    let in_a: Handle<u64> = a.alloc(1);
    let _in_b: Handle<String> = b.alloc(String::from("not a u64"));
    // Same index and version, other type: None, not a String read as u64.
    assert!(b.get(in_a).is_none());
    assert!(!b.free(in_a));
    assert_eq!(b.remove(in_a), Err(RemoveError::Stale));
    assert_eq!(*b.get(b.alloc(0u8)).unwrap(), 0);
    assert_eq!(*a.get(in_a).unwrap(), 1);
}

#[test]
fn stale_handles_stay_stale_when_their_slot_is_reused() {
    let heap = Heap::new();
    let old = heap.alloc(1u32);
    heap.free(old);
    let new = heap.alloc(2u32);
    assert_ne!(old, new);
    assert!(heap.get(old).is_none());
    assert_eq!(*heap.get(new).unwrap(), 2);
}

#[test]
fn the_memory_limit_fails_cleanly_after_trying_compaction() {
    let heap = Heap::with_config(small_segments().memory_limit(8 * 4096));
    let keep = fragment(&heap, 400); // 25 600 live bytes in ~ 7 segments after frees
    let before = heap.stats();
    // Needs compaction to fit: one large object of 3 pages.
    let big = heap.try_alloc_slice(&[7u8; 3 * 4096 - 100]);
    assert!(
        big.is_ok(),
        "compaction made room: {before:?} -> {:?}",
        heap.stats()
    );
    let too_big = heap.try_alloc_slice(&[0u8; 64 * 1024]);
    assert_eq!(too_big.err(), Some(AllocError::OutOfMemory));
    let (back, err) = heap.try_alloc([1u64; 1000]).unwrap_err();
    assert_eq!(
        (back[0], err),
        (1, AllocError::OutOfMemory),
        "the value comes back"
    );
    assert!(heap.stats().held_bytes <= 8 * 4096);
    for (i, h) in keep.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[0], 2 * i as u64 + 1, "nothing lost");
    }
}

#[test]
#[should_panic(expected = "out of memory")]
fn alloc_past_the_limit_panics_with_a_clear_message() {
    let heap = Heap::with_config(small_segments().memory_limit(4096));
    heap.alloc_slice(&[0u8; 10_000]);
}

#[test]
fn guards_map_to_parts_and_keep_the_pin() {
    let heap = Heap::with_config(small_segments());
    let _keep = fragment(&heap, 200);
    let h = heap.alloc((5u32, [1u8, 2, 3]));
    let part = compact_heap::Ref::map(heap.get(h).unwrap(), |t| &t.1[1..]);
    assert_eq!(heap.try_get_mut(h).err(), Some(BorrowError::Borrowed));
    heap.compact();
    assert_eq!(&*part, &[2, 3]);
    drop(part);
    let mut w = compact_heap::RefMut::map(heap.get_mut(h).unwrap(), |t| &mut t.0);
    *w = 6;
    drop(w);
    assert_eq!(heap.get(h).unwrap().0, 6);
}

#[test]
fn a_heap_left_alone_stays_near_its_live_data() {
    // Default pacing, no compact() call: every free pays for compaction.
    // Many segments either way (the bound's slack is two of them).
    let segment = if cfg!(miri) { 8 * 1024 } else { 64 * 1024 };
    let heap = Heap::with_config(Config::default().segment_size(segment));
    let n = if cfg!(miri) { 3_000 } else { 60_000 };
    let all: Vec<_> = (0..n).map(|i| heap.alloc([i as u64; 12])).collect();
    let bound = |st: compact_heap::HeapStats| {
        st.held_bytes as f64 <= 1.10 * st.live_bytes as f64 + 2.0 * segment as f64
    };
    // Free three of every four, in an order that leaves every segment holey.
    for (i, h) in all.iter().enumerate().filter(|(i, _)| i % 4 != 0) {
        assert!(heap.free(*h));
        if i % 64 == 1 {
            let st = heap.stats();
            assert!(bound(st), "after {i} frees: {st:?}");
        }
    }
    let st = heap.stats();
    assert!(bound(st), "{st:?}");
    assert!(st.paced_steps > 0 && st.compactions == 0);
    for (i, h) in all.iter().enumerate().step_by(4) {
        assert_eq!(heap.get(*h).unwrap()[11], i as u64, "nothing lost");
    }
}

#[test]
fn extreme_pacing_settings_neither_panic_nor_lose_anything() {
    use compact_heap::Pacing;
    let settings = [
        (Pacing::default().rate(0), false),
        (Pacing::default().step(usize::MAX), false),
        (Pacing::default().rate(usize::MAX).step(1), true),
    ];
    for (pacing, steps) in settings {
        let heap = Heap::with_config(small_segments().pacing(pacing));
        let n: u64 = if cfg!(miri) { 400 } else { 2_000 };
        let all: Vec<_> = (0..n).map(|i| heap.alloc([i; 8])).collect();
        let kept = free_every_other(&heap, all);
        for h in &kept {
            let v = heap.get(*h).unwrap();
            assert_eq!(v[0], v[7], "{pacing:?}");
        }
        let st = heap.stats();
        assert_eq!(st.paced_steps > 0, steps, "{pacing:?}: {st:?}");
    }
}

#[test]
fn huge_page_segments_keep_values_through_compaction_and_give_everything_back() {
    let n: u32 = if cfg!(miri) { 64 } else { 8 * 1024 };
    let heap = Heap::with_config(
        Config::default()
            .segment_size(2 << 20)
            .huge_pages(true)
            .no_pacing(),
    );
    let kept = half_freed_slices(&heap, n, 1000);
    let report = heap.compact();
    assert!(
        n < 4096 || report.bytes_moved > 0,
        "half-empty segments were evacuated"
    );
    for (j, &h) in kept.iter().enumerate() {
        let i = 2 * j + 1;
        assert!(
            heap.get(h).unwrap().iter().all(|&b| b == i as u8),
            "object {i} kept its bytes"
        );
    }
    let stats = heap.stats();
    assert!(
        stats.held_bytes <= stats.live_bytes + 2 * (2 << 20),
        "after compact() at most two segments beyond live data: {stats:?}"
    );
    kept.into_iter().for_each(|h| assert!(heap.free(h)));
    heap.compact();
    assert_eq!(heap.stats().held_bytes, 0, "every segment given back");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "4 000 slices of up to 1 KiB to reach the registry's cap: minutes under Miri; \
              the model test covers both kinds of length there"
)]
fn slice_lengths_read_back_whether_the_type_index_or_the_table_keeps_them() {
    use std::mem::MaybeUninit;
    // Up to 1 KiB a slice's length is its slot's type index (one per type
    // and length, at most 4096 of them in a heap); past that, or once the
    // registry has no more such indices, the table keeps it. Either way
    // every length reads back, through moves and resizes.
    let heap = Heap::with_config(manual());
    // Before the cap: bytes of lengths 0..=64, and uninitialised bytes of
    // length 100 (the form a `[u8]` is built in) get indices of their own.
    let mut all: Vec<(Handle<[u8]>, usize)> = (0..=64)
        .map(|len| (heap.alloc_slice_fill(len, len as u8), len))
        .collect();
    let uninit = heap.alloc_slice_fill(100, MaybeUninit::new(1u8));
    // Up to the cap (4096 indices of lengths) with other element types.
    fn fill<T: Copy + Send + 'static>(heap: &Heap, value: T) -> usize {
        let lens = 0..=1024 / std::mem::size_of::<T>();
        lens.map(|len| heap.free(heap.alloc_slice_fill(len, value)) as usize)
            .sum()
    }
    let others = fill(&heap, 1i8)
        + fill(&heap, true)
        + fill(&heap, 1u16)
        + fill(&heap, 1i16)
        + fill(&heap, 1u32)
        + fill(&heap, 1i32)
        + fill(&heap, 1f32)
        + fill(&heap, 1u64)
        + fill(&heap, 1i64)
        + fill(&heap, 1f64);
    assert!(others + 65 + 1 >= 4096, "{others}");
    // Built in place past the cap: `[u8]` of length 100 has no index of its
    // own, its uninitialised form has: the table must keep the length.
    let built = heap.alloc_slice_with(100, |i| i as u8);
    for len in [0usize, 1, 64, 65, 100, 1023, 1024, 1025, 5000] {
        all.push((heap.alloc_slice_fill(len, len as u8), len));
    }
    let check = |heap: &Heap, all: &[(Handle<[u8]>, usize)]| {
        assert_eq!(heap.len_of(built), Some(100));
        assert!(heap
            .get(built)
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == i as u8));
        assert_eq!(heap.len_of(uninit), Some(100));
        for &(h, len) in all {
            let r = heap.get(h).unwrap();
            assert_eq!((r.len(), heap.size_of(h)), (len, Some(len)));
            assert!(r.iter().all(|&b| b == len as u8));
        }
    };
    check(&heap, &all);
    // Every other one freed, the rest moved.
    let kept: Vec<_> = all
        .iter()
        .enumerate()
        .filter_map(|(i, &(h, len))| {
            if i % 2 == 0 {
                assert!(heap.free(h));
                None
            } else {
                Some((h, len))
            }
        })
        .collect();
    assert!(heap.compact().bytes_moved > 0);
    check(&heap, &kept);
    // Resizes across 1 KiB both ways keep the handle and the bytes.
    let mut model = heap.get(built).unwrap().to_vec();
    for new_len in [1024usize, 1025, 3000, 1024, 10, 1100, 64] {
        heap.resize(built, new_len, new_len as u8).unwrap();
        model.resize(new_len, new_len as u8);
        assert_eq!(&*heap.get(built).unwrap(), &model[..]);
        assert_eq!(heap.len_of(built), Some(new_len));
    }
    let live = heap.stats().live_bytes;
    assert!(heap.free(built) && heap.free(uninit));
    assert_eq!(heap.stats().live_bytes, live - 64 - 100);
}
