//! [`Ref`] and [`RefMut`]: borrows that pin an object where it is.
//!
//! While a guard lives, compaction leaves its object in place, so the
//! reference the guard hands out stays valid even though the heap's methods
//! (alloc, free, compact) keep working. Dropping the guard unpins the object,
//! and if the object was freed meanwhile, drops its value.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use slotmap::KeyData;

/// Who a guard must tell when it goes: its heap.
pub(crate) trait PinOwner {
    /// Drops one pin (shared or exclusive) of `key`.
    fn unpin(&self, key: KeyData, exclusive: bool);
}

/// A shared borrow of an object in a heap. The object is pinned (never moved)
/// while this guard lives.
///
/// A guard that is never dropped (`mem::forget`) pins its object for the rest
/// of the heap's life: it never moves, `get_mut` and `remove` report it
/// borrowed, and `free` kills only its handle. Its value is dropped when the
/// heap drops. Sound, like a leaked `Rc`, but a leak.
///
/// # Examples
/// ```
/// use compact_heap::{Heap, Ref};
///
/// let heap = Heap::new();
/// let h = heap.alloc((1u32, String::from("two")));
/// let r = heap.get(h).unwrap();
/// let name: Ref<'_, str> = Ref::map(r, |pair| pair.1.as_str());
/// heap.compact(); // fine: the object is pinned, so it stays put
/// assert_eq!(&*name, "two");
/// ```
#[must_use = "if unused the object is unpinned at once"]
pub struct Ref<'h, T: ?Sized> {
    ptr: NonNull<T>,
    key: KeyData,
    owner: &'h dyn PinOwner,
}

impl<'h, T: ?Sized> Ref<'h, T> {
    /// # Safety
    /// `ptr` must point to a live, initialised `T` that `owner` pinned shared
    /// for `key` (one pin, handed to this guard) and that no one mutates
    /// until the pin goes.
    #[inline]
    pub(crate) unsafe fn new(ptr: NonNull<T>, key: KeyData, owner: &'h dyn PinOwner) -> Self {
        Ref { ptr, key, owner }
    }

    /// Makes a guard for a part of the borrowed object (a field, an element),
    /// keeping the object pinned. If `f` panics, `orig` is dropped (and the
    /// object unpinned) as the panic unwinds.
    ///
    /// An associated function, as for `std::cell::Ref::map`: write `Ref::map(r, ...)`.
    pub fn map<U: ?Sized, F: FnOnce(&T) -> &U>(orig: Ref<'h, T>, f: F) -> Ref<'h, U> {
        // `orig` stays an ordinary guard while user code runs; only when `f`
        // has returned does its pin pass to the new guard.
        let ptr = NonNull::from(f(&*orig));
        let orig = ManuallyDrop::new(orig);
        Ref {
            ptr,
            key: orig.key,
            owner: orig.owner,
        }
    }
}

impl<T: ?Sized> Deref for Ref<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard's pin keeps the object in place, alive and free of
        // exclusive borrows (type invariant of `Ref::new`).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> Drop for Ref<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.owner.unpin(self.key, false);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Ref<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for Ref<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// An exclusive borrow of an object in a heap. The object is pinned (never
/// moved) while this guard lives, and no other guard of it can exist.
/// Forgetting one leaks its pin, as for [`Ref`].
///
/// # Examples
/// ```
/// use compact_heap::{Heap, RefMut};
///
/// let heap = Heap::new();
/// let h = heap.alloc(vec![1, 2, 3]);
/// let mut w = heap.get_mut(h).unwrap();
/// w.push(4);
/// let mut last: RefMut<'_, i32> = RefMut::map(w, |v| v.last_mut().unwrap());
/// *last += 10;
/// drop(last);
/// assert_eq!(*heap.get(h).unwrap(), [1, 2, 3, 14]);
/// ```
#[must_use = "if unused the object is unpinned at once"]
pub struct RefMut<'h, T: ?Sized> {
    ptr: NonNull<T>,
    key: KeyData,
    owner: &'h dyn PinOwner,
    // Invariant in `T`, like `&mut T`.
    _mut: PhantomData<&'h mut T>,
}

impl<'h, T: ?Sized> RefMut<'h, T> {
    /// # Safety
    /// `ptr` must point to a live, initialised `T` that `owner` pinned
    /// exclusively for `key`, for this guard alone.
    #[inline]
    pub(crate) unsafe fn new(ptr: NonNull<T>, key: KeyData, owner: &'h dyn PinOwner) -> Self {
        RefMut {
            ptr,
            key,
            owner,
            _mut: PhantomData,
        }
    }

    /// Makes a guard for a part of the borrowed object, keeping it pinned.
    /// If `f` panics, `orig` is dropped (and the object unpinned) as the
    /// panic unwinds.
    pub fn map<U: ?Sized, F: FnOnce(&mut T) -> &mut U>(
        mut orig: RefMut<'h, T>,
        f: F,
    ) -> RefMut<'h, U> {
        // `orig` stays an ordinary guard while user code runs; only when `f`
        // has returned does its pin pass to the new guard. The pointer is
        // derived from `orig`'s exclusive borrow, and `orig` is not used again.
        let ptr = NonNull::from(f(&mut *orig));
        let orig = ManuallyDrop::new(orig);
        RefMut {
            ptr,
            key: orig.key,
            owner: orig.owner,
            _mut: PhantomData,
        }
    }
}

impl<T: ?Sized> Deref for RefMut<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the exclusive pin keeps the object in place and unaliased.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for RefMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: ?Sized> Drop for RefMut<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.owner.unpin(self.key, true);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RefMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for RefMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
