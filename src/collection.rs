//! The heap as a collection, for caches and indexes built on it: values
//! built in place ([`Heap::alloc_clone`], [`Heap::alloc_with`],
//! [`Heap::alloc_slice_with`]), slices that change length
//! ([`Heap::resize`]), sizes without a guard ([`Heap::size_of`],
//! [`Heap::len_of`]), iteration ([`Heap::handles`]), [`Heap::retain`],
//! [`Heap::clear`], and the table's capacity ([`Heap::capacity`],
//! [`Heap::reserve`], [`Heap::shrink_to_fit`]). The same on [`SyncHeap`].
//!
//! Code that runs user code (clones, constructors, `retain`'s predicate,
//! drops) runs it with the engine let go, on objects that are pinned or
//! unlinked (invariant I6 in docs/DESIGN.md).

use core::fmt;
use core::marker::PhantomData;

use crate::access;
use crate::config::Pacing;
use crate::engine::Engine;
use crate::error::{AllocError, ResizeError};
use crate::handle::Handle;
use crate::heap::Heap;
use crate::object::{CloneObject, Object};
use crate::sync::SyncHeap;

/// The live handles of the `T`s in a heap, in table order: see
/// [`Heap::handles`]. The heap may change while this walks it; each `next`
/// looks at the table as it is then.
pub struct Handles<'h, H, T: ?Sized> {
    heap: &'h H,
    next: usize,
    _type: PhantomData<fn() -> Handle<T>>,
}

impl<H, T: ?Sized> fmt::Debug for Handles<'_, H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles").field("next", &self.next).finish()
    }
}

impl<'h, T: ?Sized + Object> Iterator for Handles<'h, Heap, T> {
    type Item = Handle<T>;

    fn next(&mut self) -> Option<Handle<T>> {
        access::next_handle(self.heap, &mut self.next)
    }
}

impl<'h, T: ?Sized + Object> Iterator for Handles<'h, SyncHeap, T> {
    type Item = Handle<T>;

    fn next(&mut self) -> Option<Handle<T>> {
        access::next_handle(self.heap, &mut self.next)
    }
}

/// Panics with an allocation error.
fn or_panic<T>(made: Result<T, AllocError>) -> T {
    made.unwrap_or_else(|e| access::alloc_failed(e))
}

/// `retain` over any heap: `f` sees each live `T` through an exclusive guard.
fn retain<E, T, G>(heap: &E, handles: impl Iterator<Item = Handle<T>>, mut f: G)
where
    E: Engine,
    T: ?Sized + Object,
    G: FnMut(Handle<T>) -> Option<bool>,
{
    for h in handles {
        if f(h) == Some(false) {
            access::free(heap, h);
        }
    }
}

impl Heap {
    /// Allocates a clone of `src`: a `T: Clone`, a slice of `Clone`
    /// elements, or a `str` — any [`CloneObject`], sized or not. The clone
    /// is written in place, with no temporary buffer.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows; and if a
    /// `clone` panics (the elements cloned so far are dropped, nothing is
    /// allocated).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let s = heap.alloc_clone("a str");
    /// let v = heap.alloc_clone(&[String::from("a"), String::from("b")][..]);
    /// let n = heap.alloc_clone(&7u64);
    /// assert_eq!(&*heap.get(s).unwrap(), "a str");
    /// assert_eq!(heap.get(v).unwrap()[1], "b");
    /// assert_eq!(*heap.get(n).unwrap(), 7);
    /// ```
    pub fn alloc_clone<T: ?Sized + CloneObject>(&self, src: &T) -> Handle<T> {
        or_panic(self.try_alloc_clone(src))
    }

    /// [`Heap::alloc_clone`], or why the clone did not fit.
    ///
    /// # Errors
    /// [`AllocError`] if the memory limit is reached or the size overflows;
    /// nothing is cloned then.
    pub fn try_alloc_clone<T: ?Sized + CloneObject>(
        &self,
        src: &T,
    ) -> Result<Handle<T>, AllocError> {
        access::try_alloc_clone(self, src)
    }

    /// Allocates the value `f` returns, written straight into the heap.
    ///
    /// # Panics
    /// If the memory limit is reached (before `f` runs), or if `f` panics
    /// (nothing is allocated then).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_with(|| [7u8; 4096]);
    /// assert_eq!(heap.get(h).unwrap()[4095], 7);
    /// ```
    pub fn alloc_with<T: Send + 'static>(&self, f: impl FnOnce() -> T) -> Handle<T> {
        or_panic(access::try_alloc_with(self, f))
    }

    /// Allocates the slice `[f(0), f(1), …, f(len - 1)]`, each item written
    /// in place as `f` makes it (no temporary `Vec`, unlike
    /// [`Heap::alloc_from_iter`]).
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows (before `f`
    /// runs), or if `f` panics (the items made so far are dropped).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice_with(5, |i| i.to_string());
    /// assert_eq!(heap.get(h).unwrap()[4], "4");
    /// ```
    pub fn alloc_slice_with<T: Send + 'static>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Handle<[T]> {
        or_panic(self.try_alloc_slice_with(len, f))
    }

    /// [`Heap::alloc_slice_with`], or why the slice did not fit.
    ///
    /// # Errors
    /// [`AllocError`] if the memory limit is reached or the size overflows;
    /// `f` is not called then.
    ///
    /// # Panics
    /// If `f` panics (the items made so far are dropped).
    pub fn try_alloc_slice_with<T: Send + 'static>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_slice_with(self, len, f)
    }

    /// Changes the length of a slice to `new_len`: the first elements stay,
    /// new ones are `value`. The handle stays the same. The slice grows in
    /// place when it was the last object allocated and the bytes after it
    /// are free, shrinks in place always, and otherwise moves (one copy).
    ///
    /// # Errors
    /// [`ResizeError::Stale`] for a freed object; [`ResizeError::Pinned`]
    /// while a guard borrows it or a read scope is open;
    /// [`ResizeError::Alloc`] if the new size does not fit. The slice is
    /// unchanged in every case.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice(b"hello");
    /// heap.resize(h, 8, b'!').unwrap();
    /// assert_eq!(&*heap.get(h).unwrap(), b"hello!!!");
    /// heap.resize(h, 2, 0).unwrap();
    /// assert_eq!(&*heap.get(h).unwrap(), b"he");
    /// ```
    pub fn resize<T: Copy + Send + 'static>(
        &self,
        handle: Handle<[T]>,
        new_len: usize,
        value: T,
    ) -> Result<(), ResizeError> {
        access::resize(self, handle, new_len, value)
    }

    /// The object's size in bytes (`size_of_val`), without borrowing it;
    /// `None` if the handle is stale.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice(&[0u32; 10]);
    /// assert_eq!(heap.size_of(h), Some(40));
    /// heap.free(h);
    /// assert_eq!(heap.size_of(h), None);
    /// ```
    pub fn size_of<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<usize> {
        access::size_of(self, handle)
    }

    /// The object's length without borrowing it: elements of a slice, bytes
    /// of a `str`, 1 for a sized value; `None` if the handle is stale.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc_slice(&[0u32; 10]);
    /// assert_eq!(heap.len_of(h), Some(10));
    /// ```
    pub fn len_of<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<usize> {
        access::len_of(self, handle)
    }

    /// The live handles of the objects of type `T`, in table order (not
    /// allocation order). The heap may change while the iterator lives:
    /// objects freed before it reaches them are skipped, objects allocated
    /// meanwhile may or may not be seen.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let a = heap.alloc(1u32);
    /// heap.alloc_str("not a u32");
    /// let b = heap.alloc(2u32);
    /// let all: Vec<_> = heap.handles::<u32>().collect();
    /// assert_eq!(all, [a, b]);
    /// ```
    pub fn handles<T: ?Sized + Object>(&self) -> Handles<'_, Heap, T> {
        Handles {
            heap: self,
            next: 0,
            _type: PhantomData,
        }
    }

    /// Keeps only the objects of type `T` for which `f` returns true, and
    /// frees the others. `f` gets each object's handle and an exclusive
    /// borrow of it, so it may also change the ones it keeps.
    ///
    /// # Panics
    /// If an object of type `T` is borrowed when `retain` reaches it (as
    /// [`Heap::get_mut`] does), or if `f` panics; the objects already
    /// visited stay retained or freed.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// for i in 0..10u32 {
    ///     heap.alloc(i);
    /// }
    /// heap.alloc(String::from("other types are untouched"));
    /// heap.retain::<u32>(|_, v| {
    ///     *v *= 10;
    ///     *v % 20 == 0
    /// });
    /// let mut kept: Vec<u32> = heap.handles::<u32>().map(|h| *heap.get(h).unwrap()).collect();
    /// kept.sort();
    /// assert_eq!(kept, [0, 20, 40, 60, 80]);
    /// assert_eq!(heap.len(), 6);
    /// ```
    pub fn retain<T: ?Sized + Object>(&self, mut f: impl FnMut(Handle<T>, &mut T) -> bool) {
        retain(self, self.handles::<T>(), |h| {
            let mut guard = self.get_mut(h)?;
            Some(f(h, &mut guard))
        });
    }

    /// Frees every object. Values are dropped now, or, for borrowed ones,
    /// when their last guard goes. The memory stays mapped for reuse
    /// (pacing and [`Heap::compact`] give it back).
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let h = heap.alloc(String::from("x"));
    /// heap.alloc_slice(&[1u8; 100]);
    /// heap.clear();
    /// assert!(heap.is_empty() && heap.get(h).is_none());
    /// assert_eq!(heap.stats().live_bytes, 0);
    /// ```
    pub fn clear(&self) {
        access::clear(self);
    }

    /// How many objects the handle table holds without growing (live ones
    /// included). Object bytes are not a capacity: segments are mapped as
    /// objects need them and given back by compaction.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// heap.reserve(10_000);
    /// assert!(heap.capacity() >= 10_000);
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared(|raw| raw.table.capacity())
    }

    /// Grows the handle table so that `additional` more objects fit without
    /// it growing again. [`Heap::compact`] and [`Heap::shrink_to_fit`] give
    /// unused capacity back.
    ///
    /// # Panics
    /// If the table cannot hold that many objects (handles index 32 bits).
    pub fn reserve(&self, additional: usize) {
        if !self.exclusive(|raw| raw.table.reserve(additional)) {
            capacity_overflow();
        }
    }

    /// The memory limit: the most bytes of segments and large mappings the
    /// heap holds (`None`: no limit). See [`Config::memory_limit`](crate::Config::memory_limit).
    pub fn memory_limit(&self) -> Option<usize> {
        self.shared(|raw| raw.memory_limit())
    }

    /// Sets (or, with `None`, lifts) the memory limit while the heap runs,
    /// as a cache does when its index grows. Memory already held above a
    /// lowered limit is not taken away: allocations that need a new mapping
    /// compact first and fail with [`AllocError::OutOfMemory`] until
    /// compaction and frees bring the heap under it.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{AllocError, Heap};
    ///
    /// let heap = Heap::new();
    /// heap.alloc(1u8); // maps a 1 MiB segment
    /// heap.set_memory_limit(Some(1 << 20));
    /// assert_eq!(heap.memory_limit(), Some(1 << 20));
    /// let big = heap.try_alloc([0u8; 300 * 1024]);
    /// assert_eq!(big.unwrap_err().1, AllocError::OutOfMemory);
    /// heap.set_memory_limit(None);
    /// assert!(heap.try_alloc([0u8; 300 * 1024]).is_ok());
    /// ```
    pub fn set_memory_limit(&self, bytes: Option<usize>) {
        self.exclusive(|raw| raw.set_memory_limit(bytes));
    }

    /// [`Config::line_align`](crate::Config::line_align) while the heap
    /// runs (`None`: off); objects already placed stay where they are.
    pub fn set_line_align(&self, min_size: Option<usize>) {
        self.exclusive(|raw| raw.space.set_line_align(min_size));
    }

    /// [`Config::pacing`](crate::Config::pacing) while the heap runs
    /// (`None`: no paced compaction); the debt owed so far is kept.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Heap, Pacing};
    ///
    /// let heap = Heap::new();
    /// heap.set_pacing(Some(Pacing::default().threshold(1.25)));
    /// assert_eq!(heap.pacing(), Some(Pacing::default().threshold(1.25)));
    /// heap.set_pacing(None);
    /// assert!(heap.pacing().is_none());
    /// ```
    pub fn set_pacing(&self, pacing: Option<Pacing>) {
        self.exclusive(|raw| raw.set_pacing(pacing));
    }

    /// The heap's paced compaction, if on.
    pub fn pacing(&self) -> Option<Pacing> {
        self.shared(|raw| raw.pacing)
    }

    /// Gives back every byte the heap can: a full [`Heap::compact`], which
    /// also releases spare large mappings and unused table chunks.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::Heap::new();
    /// let hs: Vec<_> = (0..100_000u64).map(|i| heap.alloc(i)).collect();
    /// hs.iter().for_each(|&h| { heap.free(h); });
    /// heap.shrink_to_fit();
    /// let st = heap.stats();
    /// assert_eq!(st.held_bytes, 0);
    /// assert!(st.metadata_bytes < 64 * 1024);
    /// ```
    pub fn shrink_to_fit(&self) {
        self.compact();
    }
}

/// Panics for a `reserve` past the table's limit.
#[cold]
fn capacity_overflow() -> ! {
    panic!("compact_heap: capacity overflow: a heap holds fewer than 2^32 objects")
}

/// The same API on [`SyncHeap`], with the same documentation as on [`Heap`].
impl SyncHeap {
    /// [`Heap::alloc_clone`] for a shared heap.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows, or a `clone` panics.
    pub fn alloc_clone<T: ?Sized + CloneObject + Sync>(&self, src: &T) -> Handle<T> {
        or_panic(self.try_alloc_clone(src))
    }

    /// [`Heap::try_alloc_clone`] for a shared heap.
    ///
    /// # Errors
    /// [`AllocError`] if the memory limit is reached or the size overflows.
    pub fn try_alloc_clone<T: ?Sized + CloneObject + Sync>(
        &self,
        src: &T,
    ) -> Result<Handle<T>, AllocError> {
        access::try_alloc_clone(self, src)
    }

    /// [`Heap::alloc_with`] for a shared heap.
    ///
    /// # Panics
    /// If the memory limit is reached, or `f` panics.
    pub fn alloc_with<T: Send + Sync + 'static>(&self, f: impl FnOnce() -> T) -> Handle<T> {
        or_panic(access::try_alloc_with(self, f))
    }

    /// [`Heap::alloc_slice_with`] for a shared heap.
    ///
    /// # Panics
    /// If the memory limit is reached or the size overflows, or `f` panics.
    pub fn alloc_slice_with<T: Send + Sync + 'static>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Handle<[T]> {
        or_panic(self.try_alloc_slice_with(len, f))
    }

    /// [`Heap::try_alloc_slice_with`] for a shared heap.
    ///
    /// # Errors
    /// [`AllocError`] if the memory limit is reached or the size overflows.
    ///
    /// # Panics
    /// If `f` panics.
    pub fn try_alloc_slice_with<T: Send + Sync + 'static>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Result<Handle<[T]>, AllocError> {
        access::try_alloc_slice_with(self, len, f)
    }

    /// [`Heap::resize`] for a shared heap.
    ///
    /// # Errors
    /// As [`Heap::resize`]: stale, pinned, or the new size does not fit.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::SyncHeap::new();
    /// let h = heap.alloc_slice(&[1u8, 2]);
    /// heap.resize(h, 3, 9).unwrap();
    /// assert_eq!(&*heap.get(h).unwrap(), &[1, 2, 9]);
    /// ```
    pub fn resize<T: Copy + Send + Sync + 'static>(
        &self,
        handle: Handle<[T]>,
        new_len: usize,
        value: T,
    ) -> Result<(), ResizeError> {
        access::resize(self, handle, new_len, value)
    }

    /// [`Heap::size_of`] for a shared heap.
    pub fn size_of<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<usize> {
        access::size_of(self, handle)
    }

    /// [`Heap::len_of`] for a shared heap.
    pub fn len_of<T: ?Sized + Object>(&self, handle: Handle<T>) -> Option<usize> {
        access::len_of(self, handle)
    }

    /// [`Heap::handles`] for a shared heap: other threads may change the
    /// heap while this walks it.
    pub fn handles<T: ?Sized + Object>(&self) -> Handles<'_, SyncHeap, T> {
        Handles {
            heap: self,
            next: 0,
            _type: PhantomData,
        }
    }

    /// [`Heap::retain`] for a shared heap.
    ///
    /// # Panics
    /// If an object of type `T` is borrowed when `retain` reaches it, or `f` panics.
    ///
    /// # Examples
    /// ```
    /// let heap = compact_heap::SyncHeap::new();
    /// (0..10u8).for_each(|i| { heap.alloc(i); });
    /// heap.retain::<u8>(|_, v| *v < 3);
    /// assert_eq!(heap.len(), 3);
    /// ```
    pub fn retain<T: ?Sized + Object + Sync>(&self, mut f: impl FnMut(Handle<T>, &mut T) -> bool) {
        retain(self, self.handles::<T>(), |h| {
            let mut guard = self.get_mut(h)?;
            Some(f(h, &mut guard))
        });
    }

    /// [`Heap::clear`] for a shared heap.
    pub fn clear(&self) {
        access::clear(self);
    }

    /// [`Heap::capacity`] for a shared heap.
    pub fn capacity(&self) -> usize {
        self.shared(|raw| raw.table.capacity())
    }

    /// [`Heap::reserve`] for a shared heap.
    ///
    /// # Panics
    /// If the table cannot hold that many objects.
    pub fn reserve(&self, additional: usize) {
        if !self.exclusive(|raw| raw.table.reserve(additional)) {
            capacity_overflow();
        }
    }

    /// [`Heap::memory_limit`] for a shared heap.
    pub fn memory_limit(&self) -> Option<usize> {
        self.shared(|raw| raw.memory_limit())
    }

    /// [`Heap::set_memory_limit`] for a shared heap.
    pub fn set_memory_limit(&self, bytes: Option<usize>) {
        self.exclusive(|raw| raw.set_memory_limit(bytes));
    }

    /// [`Heap::set_line_align`] for a shared heap.
    pub fn set_line_align(&self, min_size: Option<usize>) {
        self.exclusive(|raw| raw.space.set_line_align(min_size));
    }

    /// [`Heap::set_pacing`] for a shared heap.
    pub fn set_pacing(&self, pacing: Option<Pacing>) {
        self.exclusive(|raw| raw.set_pacing(pacing));
    }

    /// [`Heap::pacing`] for a shared heap.
    pub fn pacing(&self) -> Option<Pacing> {
        self.shared(|raw| raw.pacing)
    }

    /// [`Heap::shrink_to_fit`] for a shared heap.
    pub fn shrink_to_fit(&self) {
        self.compact();
    }
}
