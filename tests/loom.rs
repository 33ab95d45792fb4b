//! loom models of the concurrent pin protocol. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom`.
//!
//! Each model explores the interleavings of two threads:
//! - a reader pinning an object while a compactor evacuates its segment: the
//!   reader sees the whole value, and a pinned object is not moved;
//! - a writer (`get_mut`) racing a compactor: the write is never lost;
//! - a `free` racing the drop of the last guard: the value is dropped exactly
//!   once, by whichever of them is last;
//! - two compactors (`compact` and `compact_step`) on one heap.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};

use compact_heap::{Config, Handle, SyncHeap};
use loom::sync::Arc;
use loom::thread;

type Obj = [u64; 125]; // 1000 bytes: four to a 4 KiB segment

/// `loom::model(f)`, with `f` on a thread of a 1 MiB stack: loom runs its
/// first thread on a stack of a few pages, which a debug build's compaction
/// (a new segment, its line counts, the moves) can outgrow.
fn model(f: impl Fn() + Send + Sync + 'static) {
    let f = std::sync::Arc::new(f);
    loom::model(move || {
        let f = f.clone();
        thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || f())
            .expect("a model thread")
            .join()
            .expect("the model ran");
    });
}

fn obj(i: u64) -> Obj {
    [i; 125]
}

/// Three segments: A and B each keep one object, C (being allocated into)
/// keeps one. A pass evacuates A and B into C and gives both back. (No paced
/// compaction: the frees must leave the holes for the model's compactor.)
fn fragmented() -> (Arc<SyncHeap>, Handle<Obj>, Handle<Obj>) {
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(4096).no_pacing(),
    ));
    let hs: Vec<_> = (0..9).map(|i| heap.alloc(obj(i))).collect();
    for i in [1, 2, 3, 5, 6, 7] {
        heap.free(hs[i]);
    }
    assert_eq!(heap.stats().segments, 3);
    (heap, hs[0], hs[4])
}

#[test]
fn a_reader_and_a_compactor() {
    model(|| {
        let (heap, a, b) = fragmented();
        let reader = {
            let heap = heap.clone();
            thread::spawn(move || {
                let r = heap.get(a).unwrap();
                let addr = r.as_ptr().addr();
                assert!(r.iter().all(|&x| x == 0), "a whole, unmoved value");
                thread::yield_now();
                assert_eq!(r.as_ptr().addr(), addr);
                assert_eq!(
                    heap.get(a).unwrap().as_ptr().addr(),
                    addr,
                    "pinned, not moved"
                );
            })
        };
        let report = heap.compact_step(usize::MAX);
        reader.join().unwrap();
        assert!(heap.get(a).unwrap().iter().all(|&x| x == 0));
        assert!(heap.get(b).unwrap().iter().all(|&x| x == 4));
        assert!(report.objects_moved >= 1);
        assert_eq!(heap.stats().pinned_objects, 0);
    });
}

#[test]
fn a_writer_and_a_compactor() {
    model(|| {
        let (heap, a, _) = fragmented();
        let writer = {
            let heap = heap.clone();
            thread::spawn(move || {
                let mut w = heap.get_mut(a).unwrap();
                w[0] = 42;
                w[124] = 42;
            })
        };
        heap.compact();
        writer.join().unwrap();
        let r = heap.get(a).unwrap();
        assert_eq!(
            (r[0], r[1], r[124]),
            (42, 0, 42),
            "the write survived the move"
        );
    });
}

/// Counts drops.
struct Counted(std::sync::Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_free_and_the_last_guard() {
    model(|| {
        let heap = Arc::new(SyncHeap::new());
        let drops = std::sync::Arc::new(AtomicUsize::new(0));
        let h = heap.alloc(Counted(drops.clone()));
        let guard_thread = {
            let heap = heap.clone();
            thread::spawn(move || {
                if let Some(g) = heap.get(h) {
                    assert_eq!(g.0.load(Ordering::SeqCst), 0, "not dropped while borrowed");
                }
            })
        };
        assert!(heap.free(h));
        guard_thread.join().unwrap();
        assert!(!heap.contains(h));
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped exactly once");
        assert_eq!(heap.stats().live_objects, 0);
    });
}

#[test]
fn two_compactors() {
    model(|| {
        let (heap, a, b) = fragmented();
        let other = {
            let heap = heap.clone();
            thread::spawn(move || {
                heap.compact_step(1000);
            })
        };
        heap.compact();
        other.join().unwrap();
        assert!(heap.get(a).unwrap().iter().all(|&x| x == 0));
        assert!(heap.get(b).unwrap().iter().all(|&x| x == 4));
        let st = heap.stats();
        assert_eq!(st.segments, 1, "both sparse segments given back: {st:?}");
    });
}
