//! [`SyncHeap`]: the compacting heap shared between threads.

use core::fmt;
// Not the loom-switched atomic: the flag is only written and read under the
// lock, which orders it; loom need not explore it.
use core::sync::atomic::{AtomicBool, Ordering};

use slotmap::KeyData;

use super::{RwLock, ENGINE_HOLDER};
use crate::access;
use crate::compact::Budget;
use crate::config::Config;
use crate::engine::{Engine, Sentinel, Unavailable};
use crate::error::{AllocError, BorrowError, RemoveError};
use crate::guard::{PinOwner, Ref, RefMut};
use crate::handle::Handle;
use crate::object::Object;
use crate::raw::{drop_all, RawHeap};
use crate::reader::Reader;
use crate::stats::{CompactReport, HeapStats};

/// How many bytes a full compaction moves per hold of the write lock:
/// readers that arrive meanwhile wait for at most one such slice.
const SLICE: Budget = Budget {
    bytes: 64 * 1024,
    oversize: true,
    spent: 0,
    sweep_apart: false,
};

/// A compacting heap that threads share: `Send + Sync`, with the methods and
/// guard semantics of [`Heap`](crate::Heap), for values that are `Send + Sync`.
///
/// Readers pin objects with an atomic count under a shared lock, so threads
/// read and write different objects in parallel. Allocation, freeing and
/// compaction take the lock exclusively; compaction does so in slices of at
/// most 64 KiB of copying, so a reader never waits for more than one slice,
/// and a pinned object is never moved. See docs/DESIGN.md, "Concurrency".
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use compact_heap::SyncHeap;
///
/// let heap = Arc::new(SyncHeap::new());
/// let h = heap.alloc(String::from("shared"));
/// let reader = {
///     let heap = Arc::clone(&heap);
///     std::thread::spawn(move || heap.get(h).map(|s| s.len()))
/// };
/// heap.compact();
/// assert_eq!(reader.join().unwrap(), Some(6));
/// ```
pub struct SyncHeap {
    raw: RwLock<RawHeap>,
    /// Set (under the lock) when a panic unwound out of the engine: the
    /// heap refuses all use from then on. See [`Engine`].
    poisoned: AtomicBool,
}

impl Default for SyncHeap {
    fn default() -> SyncHeap {
        SyncHeap::new()
    }
}

impl SyncHeap {
    /// An empty heap with the default [`Config`].
    pub fn new() -> SyncHeap {
        SyncHeap::with_config(Config::default())
    }

    /// An empty heap with `config`.
    pub fn with_config(config: Config) -> SyncHeap {
        SyncHeap {
            raw: RwLock::new(RawHeap::new(&config)),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Allocates `value` and returns its handle.
    ///
    /// # Panics
    /// If the memory limit is reached (see [`SyncHeap::try_alloc`]).
    pub fn alloc<T: Send + Sync + 'static>(&self, value: T) -> Handle<T> {
        match self.try_alloc(value) {
            Ok(h) => h,
            Err((value, e)) => {
                // Dropped before the panic, not during its unwinding (where a
                // panicking `Drop` would abort).
                drop(value);
                access::alloc_failed(e)
            }
        }
    }

    /// Allocates `value`, or gives it back with the reason it did not fit.
    pub fn try_alloc<T: Send + Sync + 'static>(
        &self,
        value: T,
    ) -> Result<Handle<T>, (T, AllocError)> {
        access::try_alloc(self, value)
    }

    /// Allocates a copy of the slice `src`.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows.
    pub fn alloc_slice<T: Copy + Send + Sync + 'static>(&self, src: &[T]) -> Handle<[T]> {
        self.try_alloc_slice(src)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a copy of the slice `src`, or says why it did not fit.
    pub fn try_alloc_slice<T: Copy + Send + Sync + 'static>(
        &self,
        src: &[T],
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_copy(self, src)
    }

    /// Allocates a slice of `len` copies of `value`, written in place.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows.
    pub fn alloc_slice_fill<T: Copy + Send + Sync + 'static>(
        &self,
        len: usize,
        value: T,
    ) -> Handle<[T]> {
        self.try_alloc_slice_fill(len, value)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a slice of `len` copies of `value`, or says why it did not fit.
    pub fn try_alloc_slice_fill<T: Copy + Send + Sync + 'static>(
        &self,
        len: usize,
        value: T,
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_slice_fill(self, len, value)
    }

    /// Allocates a copy of the string `src`.
    ///
    /// # Panics
    /// If the memory limit is reached.
    pub fn alloc_str(&self, src: &str) -> Handle<str> {
        self.try_alloc_str(src)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a copy of the string `src`, or says why it did not fit.
    pub fn try_alloc_str(&self, src: &str) -> Result<Handle<str>, AllocError> {
        access::try_alloc_copy(self, src)
    }

    /// Allocates a slice of clones of `src`'s elements.
    pub fn alloc_slice_clone<T: Clone + Send + Sync + 'static>(&self, src: &[T]) -> Handle<[T]> {
        self.alloc_from_iter(src.iter().cloned())
    }

    /// Allocates a slice of the items of `iter`.
    pub fn alloc_from_iter<T: Send + Sync + 'static, I: IntoIterator<Item = T>>(
        &self,
        iter: I,
    ) -> Handle<[T]> {
        access::alloc_from_iter(self, iter)
    }

    /// A shared borrow of the object, or `None` if the handle is stale. The
    /// object is pinned while the guard lives; other threads may read it too.
    ///
    /// # Panics
    /// If the object is mutably borrowed ([`SyncHeap::try_get`] does not panic).
    #[inline]
    pub fn get<T: ?Sized + Object + Sync>(&self, handle: Handle<T>) -> Option<Ref<'_, T>> {
        access::get(self, handle)
    }

    /// An exclusive borrow of the object, or `None` if the handle is stale.
    ///
    /// # Panics
    /// If any guard of the object is alive, on any thread ([`SyncHeap::try_get_mut`]
    /// does not panic).
    #[inline]
    pub fn get_mut<T: ?Sized + Object + Sync>(&self, handle: Handle<T>) -> Option<RefMut<'_, T>> {
        access::get_mut(self, handle)
    }

    /// A shared borrow, or why there is none: stale, or mutably borrowed.
    #[inline]
    pub fn try_get<T: ?Sized + Object + Sync>(
        &self,
        handle: Handle<T>,
    ) -> Result<Ref<'_, T>, BorrowError> {
        access::try_get(self, handle)
    }

    /// An exclusive borrow, or why there is none: stale, or borrowed.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{BorrowError, SyncHeap};
    ///
    /// let heap = SyncHeap::new();
    /// let h = heap.alloc(1u32);
    /// let r = heap.get(h).unwrap();
    /// assert_eq!(heap.try_get_mut(h).err(), Some(BorrowError::Borrowed));
    /// drop(r);
    /// *heap.try_get_mut(h).unwrap() += 1;
    /// assert_eq!(*heap.get(h).unwrap(), 2);
    /// ```
    #[inline]
    pub fn try_get_mut<T: ?Sized + Object + Sync>(
        &self,
        handle: Handle<T>,
    ) -> Result<RefMut<'_, T>, BorrowError> {
        access::try_get_mut(self, handle)
    }

    /// Opens a read scope: a [`Reader`] that hands out plain `&T` for any
    /// number of handles, with no pin per read — the way to read many objects
    /// at once (a guard from [`SyncHeap::get`] pins one object: two writes per
    /// read). While it lives nothing moves or is dropped, and `get_mut` and
    /// `remove` report a borrow conflict; see [`Reader`].
    pub fn read(&self) -> Reader<'_, SyncHeap> {
        Reader::open(
            self,
            access::begin_read::<SyncHeap>,
            access::end_read::<SyncHeap>,
        )
    }

    /// Whether the handle names a live object.
    pub fn contains<T: ?Sized + Object>(&self, handle: Handle<T>) -> bool {
        self.shared(|raw| raw.contains::<T>(handle.key()))
    }

    /// Frees the object: its handle is dead at once. The value is dropped now,
    /// or when the last guard of it goes, on whichever thread drops that guard.
    /// Returns whether the handle was live.
    pub fn free<T: ?Sized + Object>(&self, handle: Handle<T>) -> bool {
        access::free(self, handle)
    }

    /// Moves the value out of the heap: the value itself for a sized type, a
    /// `Box` for a slice or `str` (as [`Heap::remove`](crate::Heap::remove)).
    ///
    /// # Errors
    /// [`RemoveError`] if the handle is stale or the object is borrowed
    /// (then nothing changes).
    pub fn remove<T: ?Sized + Object>(&self, handle: Handle<T>) -> Result<T::Owned, RemoveError> {
        access::remove(self, handle)
    }

    /// A full compaction, run in slices of at most 64 KiB of copying per
    /// hold of the lock, so readers keep going in between. Pinned objects stay.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Config, SyncHeap};
    ///
    /// // (No paced compaction, which would close the holes as they open.)
    /// let heap = SyncHeap::with_config(Config::default().segment_size(64 * 1024).no_pacing());
    /// let hs: Vec<_> = (0..10_000u32).map(|i| heap.alloc([i; 16])).collect();
    /// for h in hs.iter().step_by(2) {
    ///     heap.free(*h);
    /// }
    /// assert!(heap.compact().bytes_released > 0);
    /// assert_eq!(heap.get(hs[1]).unwrap()[0], 1);
    /// ```
    pub fn compact(&self) -> CompactReport {
        let mut report = CompactReport::default();
        self.exclusive(|raw| raw.totals.compactions += 1);
        // Finish a pass in progress (another thread's steps), then run a full one.
        while !self.exclusive(|raw| raw.run_pass(SLICE, &mut report)) {}
        self.exclusive(|raw| raw.begin_full_pass());
        while !self.exclusive(|raw| raw.run_pass(SLICE, &mut report)) {}
        self.exclusive(|raw| raw.finish_full_compaction(&mut report));
        report
    }

    /// An incremental step that moves at most `budget` bytes, under one hold
    /// of the lock. See [`Heap::compact_step`](crate::Heap::compact_step).
    pub fn compact_step(&self, budget: usize) -> CompactReport {
        self.exclusive(|raw| raw.compact_step(budget))
    }

    /// The heap's figures now. Counting pinned objects walks the table.
    pub fn stats(&self) -> HeapStats {
        self.shared(|raw| raw.stats(false))
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        self.shared(|raw| raw.table.live())
    }

    /// Whether no object is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held from the OS and bytes live, and whether a compaction pass
    /// is in progress: what a background compactor decides by.
    // Used by the compactor, which loom builds and thread-less targets leave out.
    #[cfg_attr(
        any(loom, all(target_family = "wasm", not(target_feature = "atomics"))),
        allow(dead_code)
    )]
    pub(crate) fn pressure(&self) -> (usize, usize, usize, bool) {
        self.shared(|raw| {
            (
                raw.space.held_bytes(),
                raw.live_bytes(),
                raw.space.segment_size(),
                raw.evac.active(),
            )
        })
    }
}

impl Engine for SyncHeap {
    const SYNC: bool = true;

    #[inline]
    fn pinned_since_walk(&self) -> Option<&core::cell::Cell<bool>> {
        None
    }

    #[inline]
    fn try_exclusive<R>(&self, f: impl FnOnce(&mut RawHeap) -> R) -> Result<R, Unavailable> {
        let holder = self.enter()?;
        let mut raw = self.raw.write();
        self.held(holder, || f(&mut raw))
    }

    #[inline]
    fn try_shared<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable> {
        let holder = self.enter()?;
        let raw = self.raw.read();
        self.held(holder, || f(&raw))
    }

    #[inline]
    fn try_pin<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable> {
        // A thread inside this heap's engine is only here from a panic hook
        // (after a bug): refuse rather than wait for our own lock. `f` cannot
        // panic (`try_pin`'s contract), so this read of the holder is enough:
        // nothing can re-enter while we hold the read lock.
        if ENGINE_HOLDER.with(|h| h.get()) == (self as *const SyncHeap).addr() {
            return Err(Unavailable::Reentered);
        }
        let raw = self.raw.read();
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Unavailable::Poisoned);
        }
        Ok(f(&raw))
    }
}

impl SyncHeap {
    /// Refuses a thread that holds this heap's lock already (a panic hook):
    /// taking it again would deadlock. Returns what to restore on leaving.
    #[inline]
    fn enter(&self) -> Result<usize, Unavailable> {
        let me = (self as *const SyncHeap).addr();
        let holder = ENGINE_HOLDER.with(|h| h.replace(me));
        if holder == me {
            return Err(Unavailable::Reentered); // `holder` is still `me`: nothing to restore
        }
        Ok(holder)
    }

    /// Runs `f` with the lock held (taken by the caller after [`SyncHeap::enter`]),
    /// unless the heap is poisoned; poisons it if `f` unwinds.
    #[inline]
    fn held<R>(&self, holder: usize, f: impl FnOnce() -> R) -> Result<R, Unavailable> {
        let leave = || ENGINE_HOLDER.with(|h| h.set(holder));
        if self.poisoned.load(Ordering::Relaxed) {
            leave();
            return Err(Unavailable::Poisoned);
        }
        let sentinel = Sentinel::arm(|| {
            self.poisoned.store(true, Ordering::Relaxed);
            leave();
        });
        let result = f();
        sentinel.disarm();
        leave();
        Ok(result)
    }
}

impl PinOwner for SyncHeap {
    fn finish_zombie(&self, key: KeyData) {
        access::finish_zombie(self, key);
    }
}

impl Drop for SyncHeap {
    fn drop(&mut self) {
        // `&mut self`: no guard and no other thread can reach the heap. If
        // it is poisoned, its invariants may be broken: leak the values.
        if let Ok(values) = self.try_exclusive(RawHeap::take_all_for_drop) {
            drop_all(values);
        }
    }
}

impl fmt::Debug for SyncHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncHeap")
            .field("stats", &self.stats())
            .finish()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn both<T: Send + Sync>() {}
    both::<SyncHeap>();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::heap::tests::panic_message;

    #[test]
    fn re_entry_from_the_lock_holding_thread_is_refused_not_deadlocked() {
        let heap = SyncHeap::new();
        let h = heap.alloc(7u32);
        let message = panic_message(|| heap.exclusive(|_| heap.len()));
        assert!(message.contains("re-entered"), "{message}");
        assert!(panic_message(|| heap.get(h).is_some()).contains("heap poisoned"));
        // Another heap on the same thread is still usable.
        let other = SyncHeap::new();
        assert_eq!(*other.get(other.alloc(1u8)).unwrap(), 1);
    }
}
