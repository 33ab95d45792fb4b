//! Regression tests for the soundness defects found by a hostile review
//! (issue 7). Each test failed before its fix; the ones that touch `unsafe`
//! also run under Miri with strict provenance (`.ci/run`).
//!
//! 1. A spare large-object mapping is reused only where the new object fits
//!    from the mapping's aligned start, never by its length alone.
//! 2. No panic is raised while the heap's engine is held: a panic hook that
//!    calls back into the heap works (no second `&mut`, no deadlock).
//! 3. `Ref::map` / `RefMut::map` with a panicking closure unpin the object.
//! 4. Under a memory limit, a fragmented heap with live data at half the
//!    limit still allocates: compaction evacuates into the holes it has.
//!
//! And: values behind a forgotten guard are dropped when the heap drops.

use std::cell::RefCell;
use std::panic::{self, catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::time::Duration;

use compact_heap::{AllocError, Config, Heap, Ref, RefMut, RemoveError, SyncHeap};

/// An element aligned to 64 KiB (above the page size): a slice of them is a
/// large object in an over-aligned mapping.
#[derive(Clone, Copy)]
#[repr(align(65536))]
struct Block(#[allow(dead_code)] u8);

/// Counts its drops in a shared counter.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_spare_mapping_never_takes_an_object_that_overflows_it() {
    let heap = Heap::new();
    // Neighbours first: mappings are usually placed below earlier ones, so
    // an overflow of a later mapping runs into these.
    let neighbours: Vec<_> = (0..if cfg!(miri) { 1u8 } else { 4 })
        .map(|i| heap.alloc_slice_fill(300 * 1024, i))
        .collect();
    // Miri reports an out-of-bounds write itself; natively, the neighbours'
    // contents tell. (Reading every byte under Miri would take minutes.)
    let intact = |bytes: &[u8], v: u8| {
        if cfg!(miri) {
            bytes.iter().step_by(4096).all(|&b| b == v) && bytes[bytes.len() - 1] == v
        } else {
            bytes.iter().all(|&b| b == v)
        }
    };
    for round in 0..if cfg!(miri) { 2 } else { 16 } {
        // ~320 KiB aligned to 64 KiB: its mapping has 60 KiB of slack, and
        // its usable bytes start wherever the 64 KiB boundary falls.
        let over = heap.alloc_slice_fill(5, Block(round));
        heap.free(over); // kept as a spare
                         // A byte slice as long as that whole mapping (5 × 64 KiB + 60 KiB):
                         // before the fix it took the spare and ran past its end.
        let len = 5 * 65536 + 65536 - 4096;
        let buffer = heap.alloc_slice_fill(len, 0xAB_u8);
        assert!(intact(&heap.get(buffer).unwrap(), 0xAB));
        for (i, n) in neighbours.iter().enumerate() {
            assert!(
                intact(&heap.get(*n).unwrap(), i as u8),
                "round {round}: neighbour {i} was overwritten"
            );
        }
        heap.free(buffer);
    }
}

// ---- 2. panics are raised with the engine let go ----

thread_local! {
    /// What the panic hook does on this thread (nothing if unset).
    static ON_PANIC: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that runs this thread's [`ON_PANIC`], and
/// the default hook only where none is set (so other tests still print).
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let ran = ON_PANIC.with(|f| f.borrow().as_ref().map(|f| f()).is_some());
            if !ran {
                default(info);
            }
        }));
    });
}

#[test]
fn a_panic_hook_may_use_the_heap_that_panicked() {
    install_hook();
    let heap = Rc::new(Heap::with_config(
        Config::default()
            .segment_size(64 * 1024)
            .memory_limit(64 * 1024),
    ));
    let keep = heap.alloc(5u64);
    let hook_saw = Rc::new(RefCell::new(Vec::new()));
    {
        let (heap, saw) = (Rc::clone(&heap), Rc::clone(&hook_saw));
        ON_PANIC.with(|f| {
            *f.borrow_mut() = Some(Box::new(move || {
                // Before the fix this made a second `&mut` to the engine
                // while the first was alive (Miri: undefined behaviour).
                let h = heap.alloc(7u64);
                saw.borrow_mut().push((heap.len(), *heap.get(h).unwrap()));
                heap.free(h);
            }))
        });
    }
    let too_big = catch_unwind(AssertUnwindSafe(|| heap.alloc_from_iter(0..100_000u64)));
    let too_big_clone = catch_unwind(AssertUnwindSafe(|| {
        heap.alloc_slice_clone(&vec![String::new(); 10_000])
    }));
    ON_PANIC.with(|f| f.borrow_mut().take());
    assert!(too_big.is_err() && too_big_clone.is_err());
    assert_eq!(*hook_saw.borrow(), [(2, 7), (2, 7)], "the hook ran, twice");
    assert_eq!(heap.len(), 1, "nothing was lost or added");
    assert_eq!(*heap.get(keep).unwrap(), 5);
}

#[test]
fn a_panic_hook_may_use_the_sync_heap_that_panicked() {
    install_hook();
    // On its own thread, so that a deadlock (the defect) fails the test
    // instead of hanging it.
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let heap = Arc::new(SyncHeap::with_config(
            Config::default()
                .segment_size(64 * 1024)
                .memory_limit(64 * 1024),
        ));
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let (heap, calls) = (Arc::clone(&heap), Arc::clone(&calls));
            ON_PANIC.with(|f| {
                *f.borrow_mut() = Some(Box::new(move || {
                    let h = heap.alloc(1u8); // takes the write lock
                    calls.fetch_add(heap.stats().live_objects, Ordering::Relaxed);
                    heap.free(h);
                }))
            });
        }
        let failed = catch_unwind(AssertUnwindSafe(|| heap.alloc_from_iter(0..100_000u64)));
        ON_PANIC.with(|f| f.borrow_mut().take());
        done.send((failed.is_err(), calls.load(Ordering::Relaxed), heap.len()))
            .unwrap();
    });
    let outcome = result
        .recv_timeout(Duration::from_secs(if cfg!(miri) { 600 } else { 30 }))
        .expect("the panic hook deadlocked on the heap's lock");
    assert_eq!(outcome, (true, 1, 0));
}

#[test]
fn a_failed_alloc_from_iter_drops_its_items_once_with_the_heap_unchanged() {
    let drops = Arc::new(AtomicUsize::new(0));
    let heap = Heap::with_config(Config::default().segment_size(4096).memory_limit(4096));
    let keep = heap.alloc_slice(&[1u8; 100]);
    let items = (0..1000).map(|_| Counted(Arc::clone(&drops)));
    let failed = catch_unwind(AssertUnwindSafe(|| heap.alloc_from_iter(items)));
    let message = failed.unwrap_err();
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(message.contains("out of memory"), "{message}");
    assert_eq!(drops.load(Ordering::Relaxed), 1000);
    assert_eq!((heap.len(), heap.get(keep).unwrap()[99]), (1, 1));
}

// ---- 3. guard maps ----

#[test]
fn a_panicking_ref_map_unpins_the_object() {
    let heap = Heap::new();
    let h = heap.alloc(String::from("kept"));
    let mapped = catch_unwind(AssertUnwindSafe(|| {
        let _part: Ref<'_, str> = Ref::map(heap.get(h).unwrap(), |_| panic!("in map"));
    }));
    assert!(mapped.is_err());
    assert_eq!(
        heap.stats().pinned_objects,
        0,
        "the pin went with the guard"
    );
    let mapped = catch_unwind(AssertUnwindSafe(|| {
        let _part: RefMut<'_, str> = RefMut::map(heap.get_mut(h).unwrap(), |_| panic!("in map"));
    }));
    assert!(mapped.is_err());
    assert_eq!(heap.stats().pinned_objects, 0);
    assert_eq!(heap.remove(h).as_deref(), Ok("kept"));
}

#[test]
fn a_panicking_map_on_a_sync_heap_unpins_the_object() {
    let heap = SyncHeap::new();
    let h = heap.alloc(vec![1u8, 2]);
    for exclusive in [false, true] {
        let mapped = catch_unwind(AssertUnwindSafe(|| {
            if exclusive {
                let _p: RefMut<'_, u8> = RefMut::map(heap.get_mut(h).unwrap(), |_| panic!());
            } else {
                let _p: Ref<'_, u8> = Ref::map(heap.get(h).unwrap(), |_| panic!());
            }
        }));
        assert!(mapped.is_err());
        assert_eq!(heap.stats().pinned_objects, 0);
    }
    assert_eq!(heap.remove(h), Ok(vec![1, 2]));
    assert_eq!(heap.remove(h), Err(RemoveError::Stale));
}

// ---- 4. memory limit ----

/// Fills a heap under a limit with 256-byte objects, then frees every other
/// one: live data is half the limit, and every hole is 256 bytes. (No paced
/// compaction, which would close the holes as they open.)
fn half_full(config: Config) -> (Heap, Vec<compact_heap::Handle<[u8; 256]>>) {
    let heap = Heap::with_config(config.no_pacing());
    let mut all = Vec::new();
    while let Ok(h) = heap.try_alloc([all.len() as u8; 256]) {
        all.push(h);
    }
    let mut kept = Vec::new();
    for (i, h) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            assert!(heap.free(h));
        } else {
            kept.push(h);
        }
    }
    (heap, kept)
}

#[test]
fn under_a_memory_limit_compaction_makes_room_in_a_fragmented_heap() {
    let segment = if cfg!(miri) { 8 * 1024 } else { 64 * 1024 };
    let limit = 16 * segment;
    let (heap, kept) = half_full(Config::default().segment_size(segment).memory_limit(limit));
    let live = heap.stats().live_bytes;
    assert!(
        live * 2 >= limit * 9 / 10 && live * 2 <= limit,
        "half full: {live}"
    );
    // 1 KiB objects fit no 256-byte hole: each needs room made by compaction.
    let mut big = Vec::new();
    while heap.stats().live_bytes < limit * 85 / 100 {
        let i = big.len();
        match heap.try_alloc([i as u8; 1024]) {
            Ok(h) => big.push(h),
            Err((_, err)) => panic!(
                "{err} with {} of {limit} bytes live: {:?}",
                heap.stats().live_bytes,
                heap.stats()
            ),
        }
    }
    let stats = heap.stats();
    assert!(stats.held_bytes <= limit);
    for (i, h) in kept.iter().enumerate() {
        assert_eq!(
            heap.get(*h).unwrap()[255],
            (2 * i + 1) as u8,
            "nothing lost"
        );
    }
    for (i, h) in big.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[1023], i as u8);
    }
    // Full again: failing is clean, and the value comes back.
    let (back, err) = loop {
        match heap.try_alloc([9u8; 1024]) {
            Ok(h) => big.push(h),
            Err(e) => break e,
        }
    };
    assert_eq!((back[0], err), (9, AllocError::OutOfMemory));
    assert!(heap.stats().held_bytes <= limit);
}

#[test]
fn a_full_compaction_under_a_memory_limit_packs_what_it_can() {
    let segment = if cfg!(miri) { 8 * 1024 } else { 64 * 1024 };
    let limit = 16 * segment;
    let (heap, kept) = half_full(Config::default().segment_size(segment).memory_limit(limit));
    let before = heap.stats();
    heap.compact();
    let after = heap.stats();
    assert!(
        after.segments <= before.segments / 2 + 2,
        "half the segments come back: {} -> {}",
        before.segments,
        after.segments
    );
    for (i, h) in kept.iter().enumerate() {
        assert_eq!(heap.get(*h).unwrap()[0], (2 * i + 1) as u8);
    }
}

// ---- forgotten guards ----

#[test]
fn values_behind_forgotten_guards_are_dropped_when_the_heap_drops() {
    let drops = Arc::new(AtomicUsize::new(0));
    for sync in [false, true] {
        drops.store(0, Ordering::Relaxed);
        let (a, b) = (Counted(Arc::clone(&drops)), Counted(Arc::clone(&drops)));
        if sync {
            let heap = SyncHeap::new();
            let (ha, hb) = (heap.alloc(a), heap.alloc(b));
            std::mem::forget(heap.get(ha).unwrap());
            std::mem::forget(heap.get_mut(hb).unwrap());
            assert!(heap.free(hb), "freed under a forgotten guard: a zombie");
            assert_eq!(heap.remove(ha).err(), Some(RemoveError::Pinned));
            assert_eq!(drops.load(Ordering::Relaxed), 0);
        } else {
            let heap = Heap::new();
            let (ha, hb) = (heap.alloc(a), heap.alloc(b));
            std::mem::forget(heap.get(ha).unwrap());
            std::mem::forget(heap.get_mut(hb).unwrap());
            assert!(heap.free(hb));
            assert_eq!(heap.remove(ha).err(), Some(RemoveError::Pinned));
            assert_eq!(drops.load(Ordering::Relaxed), 0);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 2, "sync: {sync}");
    }
}
