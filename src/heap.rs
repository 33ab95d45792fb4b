//! [`Heap`]: the single-threaded compacting heap.

use core::cell::{Cell, UnsafeCell};
use core::fmt;

use slotmap::KeyData;

use crate::access;
use crate::config::Config;
use crate::engine::{Engine, Sentinel, Unavailable};
use crate::error::{AllocError, BorrowError, RemoveError};
use crate::guard::{PinOwner, Ref, RefMut};
use crate::handle::Handle;
use crate::object::Object;
use crate::raw::{drop_all, RawHeap};
use crate::reader::Reader;
use crate::stats::{CompactReport, HeapStats};

/// A compacting heap: objects behind [`Handle`]s, which the heap may move to
/// close holes and give memory back to the OS.
///
/// Every method takes `&self`, so objects can be allocated, freed and moved
/// while guards ([`Ref`], [`RefMut`]) borrow others: a borrowed object is
/// pinned and never moves. `Heap` is `Send` but not `Sync`:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<compact_heap::Heap>();
/// ```
///
/// # Examples
/// ```
/// use compact_heap::Heap;
///
/// let heap = Heap::new();
/// let a = heap.alloc(7u64);
/// let b = heap.alloc_slice(&[1u8, 2, 3]);
/// let s = heap.alloc_str("hello");
/// {
///     let r = heap.get(b).unwrap();
///     let mut w = heap.get_mut(a).unwrap();
///     *w += 1;
///     heap.compact(); // moves only unpinned objects
///     assert_eq!(&*r, &[1, 2, 3]);
/// }
/// assert_eq!(heap.remove(a), Ok(8));
/// assert!(heap.free(s));
/// assert_eq!(heap.stats().live_objects, 1);
/// ```
pub struct Heap {
    /// The engine. Invariant: a reference to it exists only inside
    /// `try_exclusive`/`try_shared` (see [`Engine`]), exactly while `state`
    /// is [`BUSY`]; `Heap` is not `Sync`, so one thread at a time is in there.
    raw: UnsafeCell<RawHeap>,
    /// [`IDLE`], [`BUSY`] or [`POISONED`].
    state: Cell<u8>,
    /// Invariant: if false, no guard pins an object (every pin raises it
    /// first, [`Engine::pinned_since_walk`]; [`Heap::stats`] lowers it only
    /// when its walk of the slots finds no pin), so `stats` need not walk.
    pinned_since_walk: Cell<bool>,
}

/// No reference to the engine is alive.
const IDLE: u8 = 0;
/// A reference to the engine is alive (in this thread's stack).
const BUSY: u8 = 1;
/// A panic unwound out of the engine: refuse all use.
const POISONED: u8 = 2;

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl Heap {
    /// An empty heap with the default [`Config`]. Maps nothing until the first allocation.
    pub fn new() -> Heap {
        Heap::with_config(Config::default())
    }

    /// An empty heap with `config`.
    pub fn with_config(config: Config) -> Heap {
        Heap {
            raw: UnsafeCell::new(RawHeap::new(&config)),
            state: Cell::new(IDLE),
            pinned_since_walk: Cell::new(false),
        }
    }

    /// `Ok` if no reference to the engine is alive and it is not poisoned.
    #[inline]
    fn idle(&self) -> Result<(), Unavailable> {
        match self.state.get() {
            IDLE => Ok(()),
            BUSY => Err(Unavailable::Reentered),
            _ => Err(Unavailable::Poisoned),
        }
    }

    /// Runs `f` on the engine (the one place that makes `&mut RawHeap`).
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut RawHeap) -> R) -> Result<R, Unavailable> {
        self.idle()?;
        self.state.set(BUSY);
        let sentinel = Sentinel::arm(|| self.state.set(POISONED));
        // `state` was IDLE, so no reference to the engine is alive, and
        // `Heap` is `!Sync`, so no other thread is here; until `state` is
        // IDLE again, every other entry (a panic hook's) is refused above.
        // SAFETY: this is the only reference to the engine (I6).
        let raw = unsafe { &mut *self.raw.get() };
        let result = f(raw);
        sentinel.disarm();
        self.state.set(IDLE);
        Ok(result)
    }

    /// Allocates `value` and returns its handle.
    ///
    /// # Panics
    /// If the memory limit is reached (see [`Heap::try_alloc`]).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc(vec![1, 2, 3]);
    /// assert_eq!(heap.get(h).unwrap().len(), 3);
    /// ```
    pub fn alloc<T: Send + 'static>(&self, value: T) -> Handle<T> {
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
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{AllocError, Config, Heap};
    ///
    /// let heap = Heap::with_config(Config::default().memory_limit(1 << 20));
    /// let small = heap.try_alloc([0u8; 64]).unwrap(); // maps a 1 MiB segment
    /// let (value, err) = heap.try_alloc([7u8; 300 * 1024]).unwrap_err();
    /// assert_eq!((value[0], err), (7, AllocError::OutOfMemory));
    /// assert!(heap.contains(small));
    /// ```
    pub fn try_alloc<T: Send + 'static>(&self, value: T) -> Result<Handle<T>, (T, AllocError)> {
        access::try_alloc(self, value)
    }

    /// Allocates a copy of the slice `src`.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice(&[1u16, 2, 3]);
    /// assert_eq!(&*heap.get(h).unwrap(), &[1, 2, 3]);
    /// ```
    pub fn alloc_slice<T: Copy + Send + 'static>(&self, src: &[T]) -> Handle<[T]> {
        self.try_alloc_slice(src)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a copy of the slice `src`, or says why it did not fit.
    pub fn try_alloc_slice<T: Copy + Send + 'static>(
        &self,
        src: &[T],
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_copy(self, src)
    }

    /// Allocates a slice of `len` copies of `value`, written in place (no
    /// temporary buffer): the way to make a big buffer.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let buf = heap.alloc_slice_fill(1 << 20, 0u8); // a 1 MiB buffer
    /// assert_eq!(heap.get(buf).unwrap().len(), 1 << 20);
    /// ```
    pub fn alloc_slice_fill<T: Copy + Send + 'static>(&self, len: usize, value: T) -> Handle<[T]> {
        self.try_alloc_slice_fill(len, value)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a slice of `len` copies of `value`, or says why it did not fit.
    pub fn try_alloc_slice_fill<T: Copy + Send + 'static>(
        &self,
        len: usize,
        value: T,
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_slice_fill(self, len, value)
    }

    /// Allocates a copy of the string `src`.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_str("hello");
    /// assert_eq!(&*heap.get(h).unwrap(), "hello");
    /// ```
    pub fn alloc_str(&self, src: &str) -> Handle<str> {
        self.try_alloc_str(src)
            .unwrap_or_else(|e| panic!("compact_heap: {e}"))
    }

    /// Allocates a copy of the string `src`, or says why it did not fit.
    pub fn try_alloc_str(&self, src: &str) -> Result<Handle<str>, AllocError> {
        access::try_alloc_copy(self, src)
    }

    /// Allocates a slice of clones of `src`'s elements.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice_clone(&[String::from("a"), String::from("b")]);
    /// assert_eq!(heap.get(h).unwrap()[1], "b");
    /// ```
    pub fn alloc_slice_clone<T: Clone + Send + 'static>(&self, src: &[T]) -> Handle<[T]> {
        self.alloc_from_iter(src.iter().cloned())
    }

    /// Allocates a slice of the items of `iter`.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_from_iter((0..4).map(|i| i * i));
    /// assert_eq!(&*heap.get(h).unwrap(), &[0, 1, 4, 9]);
    /// ```
    pub fn alloc_from_iter<T: Send + 'static, I: IntoIterator<Item = T>>(
        &self,
        iter: I,
    ) -> Handle<[T]> {
        access::alloc_from_iter(self, iter)
    }

    /// A shared borrow of the object, or `None` if the handle is stale.
    /// The object is pinned while the guard lives.
    ///
    /// # Panics
    /// If the object is mutably borrowed ([`Heap::try_get`] does not panic).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc(1.5f64);
    /// assert_eq!(*heap.get(h).unwrap(), 1.5);
    /// heap.free(h);
    /// assert!(heap.get(h).is_none());
    /// ```
    #[inline]
    pub fn get<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<Ref<'_, T>> {
        access::get(self, handle)
    }

    /// An exclusive borrow of the object, or `None` if the handle is stale.
    /// The object is pinned while the guard lives.
    ///
    /// # Panics
    /// If any guard of the object is alive ([`Heap::try_get_mut`] does not panic).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc(String::from("a"));
    /// heap.get_mut(h).unwrap().push('b');
    /// assert_eq!(*heap.get(h).unwrap(), "ab");
    /// ```
    #[inline]
    pub fn get_mut<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<RefMut<'_, T>> {
        access::get_mut(self, handle)
    }

    /// A shared borrow, or why there is none: stale, or mutably borrowed.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{BorrowError, Heap};
    ///
    /// let heap = Heap::new();
    /// let h = heap.alloc(3u8);
    /// let w = heap.get_mut(h).unwrap();
    /// assert_eq!(heap.try_get(h).unwrap_err(), BorrowError::BorrowedMut);
    /// drop(w);
    /// assert_eq!(*heap.try_get(h).unwrap(), 3);
    /// ```
    #[inline]
    pub fn try_get<T: ?Sized + Object>(
        &self,
        handle: Handle<T>,
    ) -> Result<Ref<'_, T>, BorrowError> {
        access::try_get(self, handle)
    }

    /// An exclusive borrow, or why there is none: stale, or borrowed.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{BorrowError, Heap};
    ///
    /// let heap = Heap::new();
    /// let h = heap.alloc(3u8);
    /// let r = heap.get(h).unwrap();
    /// assert_eq!(heap.try_get_mut(h).unwrap_err(), BorrowError::Borrowed);
    /// drop(r);
    /// heap.free(h);
    /// assert_eq!(heap.try_get_mut(h).unwrap_err(), BorrowError::Stale);
    /// ```
    #[inline]
    pub fn try_get_mut<T: ?Sized + Object>(
        &self,
        handle: Handle<T>,
    ) -> Result<RefMut<'_, T>, BorrowError> {
        access::try_get_mut(self, handle)
    }

    /// Opens a read scope: a [`Reader`] that hands out plain `&T` for any
    /// number of handles, with no pin per read — the way to read many objects
    /// at once (a guard from [`Heap::get`] pins one object: two writes per
    /// read). While it lives nothing moves or is dropped, and `get_mut` and
    /// `remove` report a borrow conflict; see [`Reader`].
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{BorrowError, Heap};
    ///
    /// let heap = Heap::new();
    /// let (a, b) = (heap.alloc(1u32), heap.alloc(2u32));
    /// let r = heap.read();
    /// assert_eq!(r.get(a).unwrap() + r.get(b).unwrap(), 3);
    /// assert_eq!(heap.try_get_mut(a).err(), Some(BorrowError::Borrowed));
    /// heap.free(b); // dead at once, dropped when `r` goes
    /// assert!(r.get(b).is_none());
    /// drop(r);
    /// *heap.get_mut(a).unwrap() += 1;
    /// ```
    pub fn read(&self) -> Reader<'_, Heap> {
        Reader::open(self, access::begin_read::<Heap>, access::end_read::<Heap>)
    }

    /// Whether the handle names a live object.
    pub fn contains<T: ?Sized + Object>(&self, handle: Handle<T>) -> bool {
        self.shared(|raw| raw.contains::<T>(handle.key()))
    }

    /// Frees the object: its handle is dead at once. The value is dropped now,
    /// or, if a guard borrows it, when the last guard goes. Returns whether
    /// the handle was live.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_str("bye");
    /// let r = heap.get(h).unwrap();
    /// assert!(heap.free(h));   // dead at once...
    /// assert!(!heap.contains(h));
    /// assert_eq!(&*r, "bye");  // ...but dropped only when `r` goes
    /// drop(r);
    /// assert!(!heap.free(h));
    /// ```
    pub fn free<T: ?Sized + Object>(&self, handle: Handle<T>) -> bool {
        access::free(self, handle)
    }

    /// Moves the value out of the heap, freeing its handle: the value itself
    /// for a sized type, a `Box<[T]>` or `Box<str>` for a slice or `str`
    /// ([`Object::Owned`]).
    ///
    /// # Errors
    /// Fails, changing nothing, if the handle is stale
    /// ([`RemoveError::Stale`]) or the object is borrowed or a read scope is
    /// open ([`RemoveError::Pinned`]).
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Heap, RemoveError};
    ///
    /// let heap = Heap::new();
    /// let h = heap.alloc(String::from("out"));
    /// let r = heap.get(h).unwrap();
    /// assert_eq!(heap.remove(h), Err(RemoveError::Pinned));
    /// drop(r);
    /// assert_eq!(heap.remove(h).unwrap(), "out");
    /// assert_eq!(heap.remove(h), Err(RemoveError::Stale));
    ///
    /// let bytes = heap.alloc_slice(b"unsized");
    /// let boxed: Box<[u8]> = heap.remove(bytes).unwrap();
    /// assert_eq!(&*boxed, b"unsized");
    /// ```
    pub fn remove<T: ?Sized + Object>(&self, handle: Handle<T>) -> Result<T::Owned, RemoveError> {
        access::remove(self, handle)
    }

    /// A full compaction: moves every unpinned object out of sparse segments
    /// and gives the emptied segments back to the OS. Afterwards the segments
    /// are as dense as pinned objects allow. Legal while guards live.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Config, Heap};
    ///
    /// // (No paced compaction, which would close the holes as they open.)
    /// let heap = Heap::with_config(Config::default().segment_size(64 * 1024).no_pacing());
    /// let hs: Vec<_> = (0..10_000u32).map(|i| heap.alloc([i; 16])).collect();
    /// for h in hs.iter().step_by(2) {
    ///     heap.free(*h); // every other object: holes everywhere
    /// }
    /// let before = heap.stats().held_bytes;
    /// let report = heap.compact();
    /// assert!(report.bytes_released > 0);
    /// assert!(heap.stats().held_bytes < before);
    /// assert_eq!(heap.get(hs[1]).unwrap()[0], 1);
    /// ```
    pub fn compact(&self) -> CompactReport {
        self.exclusive(|raw| raw.compact())
    }

    /// An incremental compaction step that moves at most `budget` bytes;
    /// call it repeatedly (e.g. once per request) to compact in slices.
    /// Objects larger than `budget` are left for [`Heap::compact`].
    ///
    /// A step starts a new pass only when the pass would give back at least
    /// a sixteenth of the segments (and at least one), so calling it often
    /// costs little while the heap is dense. `finished` in the report says
    /// whether the pass is done (or none was needed) and every emptied
    /// segment is back with the OS.
    ///
    /// A step gives emptied segments back to the OS in pieces, up to
    /// `max(4 × budget, 256 KiB)` per call (one `madvise` each), never a
    /// whole pass's worth at once; so does every allocation and free while
    /// some wait. [`Heap::compact`] gives everything back before it returns.
    ///
    /// All of a step's work comes out of `budget`: each object moved counts
    /// 80 bytes besides its own (an object that fits the budget alone still
    /// moves), bytes given back count a quarter, each slot a pass sweeps (to
    /// find its objects) counts 12 bytes, and each page written for the
    /// first time since it was mapped (a page fault: a pass's first
    /// targets, its lists of objects) counts 20 KiB, so a step that does
    /// those moves less (`bytes_moved` is at most `budget - bytes_released /
    /// 4`). The time of a step follows its budget whatever it does and
    /// whatever the objects' size: with 64 KiB, a median of about 13 µs
    /// here for 64-byte and for 1 KiB objects (see the README).
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Config, Heap};
    ///
    /// let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
    /// let hs: Vec<_> = (0..10_000u32).map(|i| heap.alloc([i; 16])).collect();
    /// for h in hs.iter().step_by(2) {
    ///     heap.free(*h);
    /// }
    /// loop {
    ///     let step = heap.compact_step(16 * 1024);
    ///     assert!(step.bytes_moved <= 16 * 1024);
    ///     if step.finished {
    ///         break;
    ///     }
    /// }
    /// assert!(heap.stats().bytes_released > 0);
    /// ```
    pub fn compact_step(&self, budget: usize) -> CompactReport {
        self.exclusive(|raw| raw.compact_step(budget))
    }

    /// The heap's figures now. Counting pinned objects walks the table.
    pub fn stats(&self) -> HeapStats {
        let walk = self.pinned_since_walk.get();
        let stats = self.shared(|raw| raw.stats(!walk));
        if walk && stats.pinned_objects == 0 {
            self.pinned_since_walk.set(false);
        }
        stats
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        self.shared(|raw| raw.table.live())
    }

    /// Whether no object is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Test hook: retire slots from this version on (see `table.rs`).
    #[cfg(test)]
    pub(crate) fn set_retire_at(&self, version: u32) {
        self.exclusive(|raw| raw.table.set_retire_at(version));
    }

    /// Test hook: the address of a live object.
    #[cfg(test)]
    pub(crate) fn address_of<T: ?Sized + Object>(
        &self,
        handle: Handle<T>,
    ) -> Option<core::ptr::NonNull<u8>> {
        self.shared(|raw| {
            raw.live_held::<T>(handle.key())
                .map(|held| raw.locate(held).0)
        })
    }
}

impl Engine for Heap {
    const SYNC: bool = false;

    #[inline]
    fn pinned_since_walk(&self) -> Option<&Cell<bool>> {
        Some(&self.pinned_since_walk)
    }

    #[inline]
    fn try_exclusive<R>(&self, f: impl FnOnce(&mut RawHeap) -> R) -> Result<R, Unavailable> {
        self.with(f)
    }

    #[inline]
    fn try_shared<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable> {
        self.with(|raw| f(raw))
    }

    #[inline]
    fn try_pin<R>(&self, f: impl FnOnce(&RawHeap) -> R) -> Result<R, Unavailable> {
        self.idle()?;
        // `state` is IDLE: no reference to the engine is alive, and `Heap` is
        // `!Sync`. `f` cannot panic or run user code (`try_pin`'s contract),
        // so nothing can enter the engine until it returns.
        // SAFETY: so no `&mut` to the engine exists while this `&` does (I6).
        Ok(f(unsafe { &*self.raw.get() }))
    }
}

impl PinOwner for Heap {
    fn finish_zombie(&self, key: KeyData) {
        access::finish_zombie(self, key);
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        if *self.state.get_mut() == POISONED {
            // The engine's invariants may be broken: leak the values rather
            // than risk dropping one twice. The segments are still unmapped.
            return;
        }
        // No guard can be alive (they borrow the heap). Drop every value in
        // place; the segments are unmapped after, when the fields drop.
        let values = self.raw.get_mut().take_all_for_drop();
        drop_all(values);
    }
}

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("stats", &self.stats())
            .finish()
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn send<T: Send>() {}
    send::<Heap>();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_slot_whose_version_is_exhausted_is_retired_not_reused() {
        let heap = Heap::new();
        // Versions go 1, 3, 5, 7 (occupied); at 7 the slot retires.
        heap.set_retire_at(7);
        let mut old = Vec::new();
        let index = |h: Handle<u32>| h.to_bits() as u32;
        let first = heap.alloc(0u32);
        heap.free(first);
        old.push(first);
        for i in 1..4u32 {
            let h = heap.alloc(i);
            assert_eq!(
                index(h),
                index(first),
                "the same slot is reused until it retires"
            );
            old.push(h);
            assert!(heap.free(h));
        }
        let next = heap.alloc(99u32);
        assert_ne!(
            index(next),
            index(first),
            "a retired slot is never handed out again"
        );
        for h in &old {
            assert!(heap.get(*h).is_none());
            assert!(!heap.free(*h));
        }
        assert_eq!(heap.len(), 1);
        assert_eq!(*heap.get(next).unwrap(), 99);
    }

    #[test]
    fn too_many_shared_borrows_panic_with_the_engine_let_go() {
        use crate::sync::atomic::Ordering;
        use crate::table::SHARED;
        let heap = Heap::new();
        let h = heap.alloc(1u8);
        let word = |value: u16| {
            heap.exclusive(|raw| {
                raw.table
                    .get(h.key())
                    .unwrap()
                    .borrow
                    .store(value, Ordering::Relaxed)
            })
        };
        word(SHARED - 1); // as if 16 382 guards were alive
        let last = heap.get(h).unwrap();
        let message = panic_message(|| heap.get(h).is_some());
        assert!(message.contains("too many shared borrows"), "{message}");
        // Raised outside the engine: the heap is not poisoned, nothing changed.
        assert_eq!((heap.len(), *last), (1, 1));
        drop(last);
        word(0);
        assert_eq!(heap.remove(h), Ok(1));
    }

    /// The panic message of `f`, which must panic.
    pub(crate) fn panic_message<R>(f: impl FnOnce() -> R) -> String {
        let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) else {
            panic!("expected a panic");
        };
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn a_panic_inside_the_engine_poisons_the_heap() {
        static DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let heap = Heap::new();
        let h = heap.alloc(Counted); // owns no allocation: leaking it leaks nothing
        let guard = heap.get(h).unwrap();
        // Stands for a bug: the engine's own code panics.
        panic_message(|| heap.exclusive(|_| panic!("a bug")));
        assert!(panic_message(|| heap.len()).contains("heap poisoned"));
        assert!(panic_message(|| heap.alloc(1u8)).contains("heap poisoned"));
        drop(guard); // does not panic: the pin is leaked
        drop(heap); // leaks the values: never dropped, so never twice
        assert_eq!(DROPS.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn re_entering_the_engine_is_refused_not_aliased() {
        let heap = Heap::new();
        let message = panic_message(|| heap.exclusive(|_| heap.len()));
        assert!(message.contains("re-entered"), "{message}");
        // The refusal panicked inside the outer closure: poisoned, as a bug would.
        assert!(panic_message(|| heap.len()).contains("heap poisoned"));
    }

    #[test]
    fn compaction_moves_unpinned_objects_and_updates_their_slots() {
        let heap = Heap::with_config(Config::default().segment_size(4096));
        let hs: Vec<_> = (0..256u64).map(|i| heap.alloc([i; 4])).collect();
        for h in hs.iter().step_by(2) {
            heap.free(*h);
        }
        let pinned = heap.get(hs[1]).unwrap();
        let before: Vec<_> = hs
            .iter()
            .skip(1)
            .step_by(2)
            .map(|h| heap.address_of(*h).unwrap())
            .collect();
        heap.compact();
        let after: Vec<_> = hs
            .iter()
            .skip(1)
            .step_by(2)
            .map(|h| heap.address_of(*h).unwrap())
            .collect();
        assert_eq!(before[0], after[0], "the pinned object stays");
        assert!(
            before.iter().zip(&after).skip(1).any(|(b, a)| b != a),
            "others move"
        );
        drop(pinned);
    }
}
