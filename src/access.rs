//! The operations both heaps share, written once over [`Engine`]: how to
//! reach the [`RawHeap`] exclusively and shared. [`Heap`](crate::Heap) reaches
//! it through an `UnsafeCell` on one thread; [`SyncHeap`](crate::SyncHeap)
//! through a read-write lock.
//!
//! Every closure passed to the engine here returns a value and never panics;
//! user code (drops, iterators, clones) and the panics the API documents run
//! after the engine is let go (invariant I6 in docs/DESIGN.md, enforced by
//! [`engine`](crate::engine)).

use slotmap::KeyData;

use crate::engine::Engine;
use crate::error::{AllocError, BorrowError, RemoveError};
use crate::guard::{PinOwner, Ref, RefMut};
use crate::handle::Handle;
use crate::object::Object;
use crate::raw::{drop_then_release, Dying, Freed, PinError};

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

/// Allocates a bitwise copy of `src`, which must be a `Copy` slice or a `str`.
pub(crate) fn try_alloc_copy<E: Engine, T: ?Sized + Object>(
    e: &E,
    src: &T,
) -> Result<Handle<T>, AllocError> {
    e.exclusive(|raw| {
        let (key, ptr) = raw.alloc(&T::INFO, src.meta())?;
        // `alloc` reserved `size_of_val(src)` bytes at `ptr`, aligned for `T`;
        // callers pass only `Copy` slices and `str`, so a bitwise copy is a value.
        // SAFETY: fresh bytes `src` cannot overlap, unreachable while we hold the engine.
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
    let ptr = e
        .shared(|raw| raw.pin::<T>(h.key(), false, E::SYNC))
        .map_err(PinError::or_panic)?;
    // SAFETY: `pin` took a shared pin for this guard on a live `T` at `ptr`.
    Ok(unsafe { Ref::new(ptr, h.key(), e) })
}

/// An exclusive guard, or why there is none.
#[inline]
pub(crate) fn try_get_mut<E: Engine + PinOwner, T: ?Sized + Object>(
    e: &E,
    h: Handle<T>,
) -> Result<RefMut<'_, T>, BorrowError> {
    let ptr = e
        .shared(|raw| raw.pin::<T>(h.key(), true, E::SYNC))
        .map_err(PinError::or_panic)?;
    // SAFETY: `pin` took the exclusive pin for this guard on a live `T` at `ptr`.
    Ok(unsafe { RefMut::new(ptr, h.key(), e) })
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
pub(crate) fn free<E: Engine, T: ?Sized + Object>(e: &E, h: Handle<T>) -> bool {
    let freed = e.exclusive(|raw| match raw.free::<T>(h.key()) {
        // No drop glue, no user code: release at once.
        Freed::Now(dying) if dying.info.drop.is_none() => {
            raw.release(dying);
            Freed::Released
        }
        other => other,
    });
    match freed {
        Freed::Stale => false,
        Freed::Deferred | Freed::Released => true,
        Freed::Now(dying) => {
            drop_dying(e, dying);
            true
        }
    }
}

/// Moves the value out, unless stale or pinned.
pub(crate) fn remove<E: Engine, T: Send + 'static>(e: &E, h: Handle<T>) -> Result<T, RemoveError> {
    e.exclusive(|raw| {
        let dying = raw.remove::<T>(h.key())?;
        // SAFETY: the slot held an initialised `T` at `dying.ptr`; it is
        // unlinked, so this read moves the value out and nobody drops it again.
        let value = unsafe { dying.ptr.cast::<T>().read() };
        raw.release(dying);
        Ok(value)
    })
}

/// Drops a dying value outside the engine, then releases its memory. This
/// runs while a panic unwinds too, so it never panics itself: if the engine
/// cannot be entered (poisoned), the bytes stay reserved — leaked, not reused.
fn drop_dying<E: Engine>(e: &E, dying: Dying) {
    drop_then_release(dying, |dying| {
        let _ = e.try_exclusive(|raw| raw.release(dying));
    });
}

/// What a guard's drop does: unpin, and finish a zombie if this was its last
/// pin. Never panics (guards drop during unwinding): if the engine cannot be
/// entered, the pin is leaked and the object stays pinned, which is safe.
pub(crate) fn unpin<E: Engine>(e: &E, key: KeyData, exclusive: bool) {
    if e.try_shared(|raw| raw.unpin(key, exclusive, E::SYNC)) == Ok(true) {
        if let Ok(dying) = e.try_exclusive(|raw| raw.finish_zombie(key)) {
            drop_dying(e, dying);
        }
    }
}
