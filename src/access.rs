//! The operations both heaps share, written once over [`Engine`]: how to
//! reach the [`RawHeap`] exclusively and shared. [`Heap`](crate::Heap) reaches
//! it through an `UnsafeCell` on one thread; [`SyncHeap`](crate::SyncHeap)
//! through a read-write lock.
//!
//! Every closure passed to the engine here returns a value and never panics;
//! user code (drops, iterators, clones) and the panics the API documents run
//! after the engine is let go (invariant I6 in docs/DESIGN.md, enforced by
//! [`engine`](crate::engine)).

use core::ptr::NonNull;

use slotmap::KeyData;

use crate::engine::Engine;
use crate::error::{AllocError, BorrowError, RemoveError, ResizeError};
use crate::guard::{Pin, PinOwner, Ref, RefMut};
use crate::handle::Handle;
use crate::object::{write_each, CloneObject, Object};
use crate::raw::{drop_then_release, Dying, Freed, PinError};
use crate::sync::atomic::Ordering;

/// Panics with an allocation error, after the engine is let go.
#[cold]
#[inline(never)]
pub(crate) fn alloc_failed(err: AllocError) -> ! {
    panic!("compact_heap: {err}")
}

/// Allocates `value`; gives it back on failure.
pub(crate) fn try_alloc<E: Engine, T: Send + 'static>(
    e: &E,
    value: T,
) -> Result<Handle<T>, (T, AllocError)> {
    e.exclusive(|raw| match raw.alloc(&T::INFO, 0) {
        Ok((key, ptr)) => {
            // SAFETY: `alloc` reserved size_of::<T>() bytes aligned for `T` at
            // `ptr` (a dangling aligned address for ZSTs). We still hold the
            // engine, so nothing can read or move them before this write.
            unsafe { ptr.cast::<T>().write(value) };
            Ok(Handle::new(key))
        }
        Err(err) => Err((value, err)),
    })
}

/// Allocates a bitwise copy of `src`, which must be a `Copy` slice or a `str`
/// (or a value whose [`CloneObject::clones_bitwise`]).
pub(crate) fn try_alloc_copy<E: Engine, T: ?Sized + Object>(
    e: &E,
    src: &T,
) -> Result<Handle<T>, AllocError> {
    e.exclusive(|raw| {
        let (key, ptr) = raw.alloc(&T::INFO, src.meta())?;
        // `alloc` reserved `size_of_val(src)` bytes at `ptr`, aligned for `T`;
        // callers pass only `Copy` slices and `str`, so a bitwise copy is a value.
        // SAFETY: fresh bytes (or a kept block, I14: no object's) `src` cannot
        // overlap, unreachable while we hold the engine.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (src as *const T).cast::<u8>(),
                ptr.as_ptr(),
                core::mem::size_of_val(src),
            )
        };
        Ok(Handle::new(key))
    })
}

/// Allocates `len` copies of `value`, written in place.
pub(crate) fn try_alloc_slice_fill<E: Engine, T: Copy + Send + 'static>(
    e: &E,
    len: usize,
    value: T,
) -> Result<Handle<[T]>, AllocError> {
    e.exclusive(|raw| {
        let (key, ptr) = raw.alloc(&<[T]>::INFO, len)?;
        let first = ptr.as_ptr().cast::<T>();
        for i in 0..len {
            // SAFETY: `alloc` reserved room for `len` `T`s at `ptr`, aligned;
            // `T: Copy` runs no user code, and we hold the engine, so nothing
            // observes the partly written slice.
            unsafe { first.add(i).write(value) };
        }
        Ok(Handle::new(key))
    })
}

/// Allocates the items of `iter` as a slice. The iterator (user code) runs
/// first, into a `Vec`, before the engine is touched.
pub(crate) fn alloc_from_iter<E: Engine, T: Send + 'static>(
    e: &E,
    iter: impl IntoIterator<Item = T>,
) -> Handle<[T]> {
    let mut items: Vec<T> = iter.into_iter().collect();
    let made = e.exclusive(|raw| {
        let (key, ptr) = raw.alloc(&<[T]>::INFO, items.len())?;
        // SAFETY: `alloc` reserved room for `items.len()` `T`s at `ptr`, and we
        // hold the engine. The values move: `set_len(0)` makes the Vec forget
        // them, so each is owned once, by the heap.
        unsafe {
            core::ptr::copy_nonoverlapping(items.as_ptr(), ptr.as_ptr().cast::<T>(), items.len());
            items.set_len(0);
        }
        Ok(Handle::new(key))
    });
    // On failure the items drop here (user code), with the engine let go.
    made.unwrap_or_else(|err| alloc_failed(err))
}

/// A shared guard, or why there is none.
#[inline]
pub(crate) fn try_get<E: Engine + PinOwner, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Result<Ref<'_, T>, BorrowError> {
    if let Some(flag) = e.pinned_since_walk() {
        // (Raised before the pin: its store comes before the borrow word's.)
        flag.set(true);
    }
    let (ptr, word) = e
        .try_pin(|raw| raw.pin::<T>(h.key(), false, E::SYNC))
        .unwrap_or_else(|why| why.fail())
        .map_err(PinError::or_panic)?;
    // SAFETY: `pin` raised `word`, the borrow word of `h`'s slot, for this
    // guard's shared pin on a live `T` at `ptr`.
    Ok(unsafe { Ref::new(ptr, Pin::new(word, h.key(), e, false, E::SYNC)) })
}

/// An exclusive guard, or why there is none.
#[inline]
pub(crate) fn try_get_mut<E: Engine + PinOwner, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Result<RefMut<'_, T>, BorrowError> {
    if let Some(flag) = e.pinned_since_walk() {
        flag.set(true);
    }
    let (ptr, word) = e
        .try_pin(|raw| raw.pin::<T>(h.key(), true, E::SYNC))
        .unwrap_or_else(|why| why.fail())
        .map_err(PinError::or_panic)?;
    // SAFETY: `pin` raised `word`, the borrow word of `h`'s slot, for this
    // guard's exclusive pin on a live `T` at `ptr`.
    Ok(unsafe { RefMut::new(ptr, Pin::new(word, h.key(), e, true, E::SYNC)) })
}

/// `get`: `None` when stale, a panic on a borrow conflict.
#[inline]
pub(crate) fn get<E: Engine + PinOwner, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Option<Ref<'_, T>> {
    match try_get(e, h) {
        Ok(r) => Some(r),
        Err(BorrowError::Stale) => None,
        Err(err) => panic!("compact_heap: {err}"),
    }
}

/// `get_mut`: `None` when stale, a panic on a borrow conflict.
#[inline]
pub(crate) fn get_mut<E: Engine + PinOwner, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Option<RefMut<'_, T>> {
    match try_get_mut(e, h) {
        Ok(r) => Some(r),
        Err(BorrowError::Stale) => None,
        Err(err) => panic!("compact_heap: {err}"),
    }
}

/// Kills the handle; drops the value now or when its last guard goes.
#[inline]
pub(crate) fn free<E: Engine, T: ?Sized + Object>(e: &E, h: Handle<T>) -> bool {
    // (Values without drop glue are released inside `free` itself.)
    // (The closure answers the common cases itself: only a value to drop
    // comes out whole, so the others move no `Dying` through the stack.)
    let freed = e.exclusive(|raw| match raw.free::<T>(h.key()) {
        Freed::Now(dying) => Ok(dying),
        Freed::Stale => Err(false),
        Freed::Deferred | Freed::Released => Err(true),
    });
    match freed {
        Ok(dying) => {
            drop_dying(e, dying);
            true
        }
        Err(live) => live,
    }
}

/// Moves the value out, unless stale or pinned: the value itself for a
/// sized type, a `Box` for a slice or `str`.
pub(crate) fn remove<E: Engine, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Result<T::Owned, RemoveError> {
    if !T::INFO.is_slice {
        return e.exclusive(|raw| {
            let dying = raw.remove::<T>(h.key())?;
            // SAFETY: the slot held an initialised `T` at `dying.ptr`; it is
            // unlinked, so this read moves the value out and nobody drops it again.
            let value = unsafe { T::take(dying.ptr.as_ptr(), dying.meta) };
            raw.release(dying);
            Ok(value)
        });
    }
    // A slice goes into a `Box` from the global allocator, which is not
    // called with the engine held (it could be user code that uses the heap).
    let dying = e.exclusive(|raw| raw.remove::<T>(h.key()))?;
    let (ptr, meta) = (dying.ptr, dying.meta);
    let guard = ReleaseOnDrop {
        e,
        dying: Some(dying),
    };
    // SAFETY: the object is unlinked (no handle or guard reaches it) and its
    // bytes stay reserved until `guard` releases them, so this moves out an
    // initialised `T` that nobody reads or drops afterwards.
    let value = unsafe { T::take(ptr.as_ptr(), meta) };
    drop(guard);
    Ok(value)
}

/// Releases the bytes of an unlinked object when dropped (also while a
/// panic unwinds). Its value must be gone by then.
struct ReleaseOnDrop<'e, E: Engine> {
    e: &'e E,
    dying: Option<Dying>,
}

impl<E: Engine> Drop for ReleaseOnDrop<'_, E> {
    fn drop(&mut self) {
        if let Some(dying) = self.dying.take() {
            let _ = self.e.try_exclusive(|raw| raw.release(dying));
        }
    }
}

/// Builds a `T` with pointer metadata `meta` in place: `write` (user code)
/// runs with the engine let go, on bytes reserved for a `T` and pinned so
/// that nothing moves or reads them. `write` must leave a `T` there, or
/// panic with nothing left to drop (as [`write_each`] does).
pub(crate) fn try_build<E: Engine, T: ?Sized + Object>(
    e: &E,
    meta: usize,
    write: impl FnOnce(*mut u8),
) -> Result<Handle<T>, AllocError> {
    let (key, ptr, to_ty) = e.exclusive(|raw| raw.alloc_building(&T::UNINIT, &T::INFO, meta))?;
    // If `write` panics, its bytes hold nothing: unpin and free them.
    let abandon = Abandon { e, key };
    write(ptr.as_ptr());
    core::mem::forget(abandon);
    if !e.exclusive(|raw| raw.finish_building(key, to_ty)) {
        // Freed while it was being built (`clear`, or a handle of another
        // heap): the value is ours to drop, then the object is abandoned.
        let abandon = Abandon { e, key };
        // SAFETY: `write` left an initialised `T` with metadata `meta` at
        // `ptr`; the object is still pinned by us, so nothing moved, read or
        // dropped it, and the heap has forgotten its type: this is its one drop.
        unsafe { core::ptr::drop_in_place(T::from_raw_parts(ptr.as_ptr(), meta)) };
        drop(abandon);
    }
    Ok(Handle::new(key))
}

/// Unpins and frees an object whose builder gave up (see [`try_build`]).
struct Abandon<'e, E: Engine> {
    e: &'e E,
    key: KeyData,
}

impl<E: Engine> Drop for Abandon<'_, E> {
    fn drop(&mut self) {
        if let Ok(Some(dying)) = self.e.try_exclusive(|raw| raw.abandon_building(self.key)) {
            drop_dying(self.e, dying); // no drop glue: only releases
        }
    }
}

/// A clone of `src`, built in place.
pub(crate) fn try_alloc_clone<E: Engine, T: ?Sized + CloneObject>(
    e: &E,
    src: &T,
) -> Result<Handle<T>, AllocError> {
    if T::clones_bitwise() {
        // No user code: copied while the engine is held, one entry.
        return try_alloc_copy(e, src);
    }
    // SAFETY: `try_build` gives room for a `T` with `src`'s metadata, aligned
    // and holding nothing; `clone_to` drops what it wrote if a clone panics.
    try_build(e, src.meta(), |dst| unsafe { src.clone_to(dst) })
}

/// `f()`, written in place.
pub(crate) fn try_alloc_with<E: Engine, T: Send + 'static>(
    e: &E,
    f: impl FnOnce() -> T,
) -> Result<Handle<T>, AllocError> {
    // SAFETY: `try_build` gives room for a `T`, aligned; if `f` panics,
    // nothing was written.
    try_build(e, 0, |dst| unsafe { dst.cast::<T>().write(f()) })
}

/// `[f(0), f(1), …, f(len - 1)]`, written in place.
pub(crate) fn try_alloc_slice_with<E: Engine, T: Send + 'static>(
    e: &E,
    len: usize,
    f: impl FnMut(usize) -> T,
) -> Result<Handle<[T]>, AllocError> {
    // SAFETY: `try_build` gives room for `len` `T`s, aligned; `write_each`
    // drops what it wrote if `f` panics.
    try_build(e, len, |dst| unsafe { write_each(dst.cast::<T>(), len, f) })
}

/// Resizes a slice in place or by moving it; the handle stays the same.
pub(crate) fn resize<E: Engine, T: Copy + Send + 'static>(
    e: &E,
    h: Handle<[T]>,
    new_len: usize,
    value: T,
) -> Result<(), ResizeError> {
    e.exclusive(|raw| raw.resize(h.key(), new_len, value))
}

/// Bytes of the object, without a guard.
pub(crate) fn size_of<E: Engine, T: ?Sized + Object>(e: &E, h: Handle<T>) -> Option<usize> {
    e.shared(|raw| raw.live_held::<T>(h.key()).map(|held| raw.size_of(held)))
}

/// Elements of a slice (bytes of a `str`, 1 for a sized value), without a guard.
pub(crate) fn len_of<E: Engine, T: ?Sized + Object>(e: &E, h: Handle<T>) -> Option<usize> {
    e.shared(|raw| {
        let held = raw.live_held::<T>(h.key())?;
        Some(if T::INFO.is_slice {
            raw.meta_of(held)
        } else {
            1
        })
    })
}

/// The next live handle of a `T` at a table index `>= *from`.
pub(crate) fn next_handle<E: Engine, T: ?Sized + Object>(
    e: &E,
    from: &mut usize,
) -> Option<Handle<T>> {
    let (key, next) = e.shared(|raw| raw.next_live::<T>(*from))?;
    *from = next;
    Some(Handle::new(key))
}

/// Frees every object, a batch at a time; drops run with the engine let go.
pub(crate) fn clear<E: Engine>(e: &E) {
    let mut from = 0;
    loop {
        let (batch, next) = e.exclusive(|raw| raw.free_batch(from, 256));
        for dying in batch {
            drop_dying(e, dying);
        }
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
}

/// Drops a dying value outside the engine, then releases its memory. This
/// runs while a panic unwinds too, so it never panics itself: if the engine
/// cannot be entered (poisoned), the bytes stay reserved — leaked, not reused.
fn drop_dying<E: Engine>(e: &E, dying: Dying) {
    drop_then_release(dying, |dying| {
        let _ = e.try_exclusive(|raw| raw.release(dying));
    });
}

/// What the guard that drops the last pin of a freed object does: unlink
/// it, drop its value, release its memory. Never panics (guards drop during
/// unwinding): if the engine cannot be entered (poisoned), the object is
/// leaked, which is safe.
#[cold]
pub(crate) fn finish_zombie<E: Engine>(e: &E, key: KeyData) {
    if let Ok(Some(dying)) = e.try_exclusive(|raw| raw.finish_zombie(key)) {
        drop_dying(e, dying);
    }
}

/// Opens a read scope (see [`Reader`](crate::Reader)).
pub(crate) fn begin_read<E: Engine>(e: &E) {
    e.shared(|raw| raw.readers.fetch_add(1, Ordering::Relaxed));
}

/// Closes a read scope; the last one drops the values freed meanwhile.
/// Never panics (it runs when a `Reader` drops, maybe while unwinding).
pub(crate) fn end_read<E: Engine>(e: &E) {
    if let Ok(deferred) = e.try_exclusive(|raw| raw.end_read()) {
        for dying in deferred {
            drop_dying(e, dying);
        }
    }
}

/// A `&T` for a read scope, or why there is none.
#[inline]
pub(crate) fn read_get<E: Engine, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Result<NonNull<T>, BorrowError> {
    e.try_pin(|raw| raw.peek::<T>(h.key()))
        .unwrap_or_else(|why| why.fail())
}
