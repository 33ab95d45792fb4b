//! The read scope ([`Reader`]): plain `&T` for many handles while it lives.
//!
//! Properties:
//! - every live handle reads its value; a stale one reads `None`;
//! - nothing moves: `compact` and `compact_step` move no byte and report
//!   unfinished, and paced compaction skips;
//! - `get_mut`/`remove` report a borrow conflict; a `RefMut` taken before the
//!   scope makes `Reader::get` panic (`try_get`: `BorrowedMut`);
//! - `free` kills the handle at once and drops the value only when the last
//!   reader goes, exactly once; nested and forgotten readers are fine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use compact_heap::{BorrowError, Config, Heap, RemoveError, SyncHeap};

struct Counted(Arc<AtomicUsize>, u64);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_reader_reads_many_objects_and_nothing_moves_meanwhile() {
    let heap = Heap::with_config(Config::default().segment_size(4096));
    let hs: Vec<_> = (0..2000u64).map(|i| heap.alloc([i; 4])).collect();
    for h in hs.iter().step_by(2) {
        heap.free(*h);
    }
    let r = heap.read();
    let before: Vec<*const [u64; 4]> = hs[1..]
        .iter()
        .step_by(2)
        .map(|h| r.get(*h).unwrap() as *const _)
        .collect();
    let report = heap.compact();
    assert_eq!((report.bytes_moved, report.finished), (0, false));
    assert_eq!(heap.compact_step(1 << 20).bytes_moved, 0);
    for i in 0..500u64 {
        heap.free(heap.alloc([i; 4])); // paced compaction would move things
    }
    for (k, h) in hs[1..].iter().step_by(2).enumerate() {
        let v = r.get(*h).unwrap();
        assert_eq!(v as *const _, before[k], "object {k} moved");
        assert_eq!(v[0], 2 * k as u64 + 1);
    }
    assert!(r.get(hs[0]).is_none(), "stale");
    drop(r);
    assert!(
        heap.compact().bytes_moved > 0,
        "compaction resumes after the scope"
    );
}

#[test]
fn while_reading_nothing_is_borrowed_mutably_or_moved_out() {
    let heap = Heap::new();
    let a = heap.alloc(String::from("a"));
    let r = heap.read();
    assert_eq!(heap.try_get_mut(a).err(), Some(BorrowError::Borrowed));
    assert_eq!(heap.remove(a), Err(RemoveError::Pinned));
    assert_eq!(*heap.get(a).unwrap(), "a", "shared guards still work");
    assert_eq!(r.get(a).map(String::as_str), Some("a"));
    drop(r);
    heap.get_mut(a).unwrap().push('b');
    assert_eq!(heap.remove(a).unwrap(), "ab");
}

#[test]
fn a_mutable_borrow_from_before_the_scope_excludes_the_object() {
    let heap = Heap::new();
    let a = heap.alloc(1u32);
    let w = heap.get_mut(a).unwrap();
    let r = heap.read();
    assert_eq!(r.try_get(a).err(), Some(BorrowError::BorrowedMut));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.get(a).is_some()));
    assert!(
        panicked.is_err(),
        "get panics on a borrow conflict, as Heap::get does"
    );
    drop(r);
    drop(w);
}

#[test]
fn frees_during_a_scope_drop_their_values_when_the_last_reader_goes() {
    let drops = Arc::new(AtomicUsize::new(0));
    let heap = Heap::new();
    let hs: Vec<_> = (0..10)
        .map(|i| heap.alloc(Counted(Arc::clone(&drops), i)))
        .collect();
    let outer = heap.read();
    let kept = outer.get(hs[3]).unwrap();
    let inner = heap.read();
    assert!(heap.free(hs[3]));
    assert!(
        !heap.contains(hs[3]) && inner.get(hs[3]).is_none(),
        "dead at once"
    );
    assert_eq!(kept.1, 3, "the value is still there for the reader");
    for h in &hs[5..] {
        heap.free(*h);
    }
    drop(inner);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "an outer reader is still open"
    );
    drop(outer);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        6,
        "dropped when the last reader went"
    );
    assert_eq!(heap.len(), 4);
    drop(heap);
    assert_eq!(drops.load(Ordering::SeqCst), 10, "every value exactly once");
}

#[test]
fn a_forgotten_reader_is_safe_and_the_heap_drops_everything_at_its_end() {
    let drops = Arc::new(AtomicUsize::new(0));
    let heap = Heap::new();
    let a = heap.alloc(Counted(Arc::clone(&drops), 1));
    std::mem::forget(heap.read());
    heap.free(a);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert_eq!(heap.compact().bytes_moved, 0);
    drop(heap);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn readers_on_a_sync_heap_hold_compaction_off_across_threads() {
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(4096).no_pacing(),
    ));
    let hs: Vec<_> = (0..1000u64).map(|i| heap.alloc([i; 4])).collect();
    for h in hs.iter().step_by(2) {
        heap.free(*h);
    }
    let r = heap.read();
    let first = r.get(hs[1]).unwrap() as *const [u64; 4];
    let other = {
        let heap = Arc::clone(&heap);
        std::thread::spawn(move || heap.compact().bytes_moved)
    };
    assert_eq!(
        other.join().unwrap(),
        0,
        "another thread's compaction moves nothing"
    );
    assert_eq!(r.get(hs[1]).unwrap() as *const _, first);
    drop(r);
    assert!(heap.compact().bytes_moved > 0);
    assert_eq!(heap.get(hs[1]).unwrap()[0], 1);
}

#[test]
fn a_guard_outlives_the_growth_and_release_of_the_table_around_it() {
    // The guard lowers its slot's borrow word through its address (I11):
    // new chunks of table, a reallocated chunk list and released chunks
    // must leave that address valid. Miri checks the pointer itself.
    let n = if cfg!(miri) { 3_000 } else { 20_000 };
    let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
    let kept = heap.alloc(String::from("kept"));
    let guard = heap.get(kept).unwrap();
    let others: Vec<_> = (0..n).map(|i| heap.alloc(i as u64)).collect();
    for h in &others {
        heap.free(*h);
    }
    heap.compact(); // wholly vacant chunks are released
    assert_eq!(*guard, "kept");
    drop(guard);
    assert_eq!(heap.stats().pinned_objects, 0);
    assert_eq!(heap.remove(kept).as_deref(), Ok("kept"));
}
