//! [`Ref`] and [`RefMut`]: borrows that pin an object where it is.
//!
//! While a guard lives, compaction leaves its object in place, so the
//! reference the guard hands out stays valid even though the heap's methods
//! (alloc, free, compact) keep working. Dropping the guard unpins the object,
//! and if the object was freed meanwhile, drops its value.

use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use slotmap::KeyData;

use crate::sync::atomic::{AtomicU16, Ordering};
use crate::sync::plain;
use crate::table::{EXCLUSIVE, ZOMBIE};

/// Who a guard must tell when the last pin of a freed object goes: its heap.
pub(crate) trait PinOwner {
    /// The last guard of the zombie `key` went: unlink it, drop its value,
    /// and release its memory.
    fn finish_zombie(&self, key: KeyData);
}

/// One pin of an object: the borrow word it raised, and whom to tell if it
/// was the last pin of a freed object. Dropping it lowers the word directly,
/// without the heap's engine or lock: the word stays where it is while the
/// pin is held (I11).
pub(crate) struct Pin<'h> {
    word: NonNull<AtomicU16>,
    key: KeyData,
    owner: &'h dyn PinOwner,
    /// 1 for a shared pin, `EXCLUSIVE` for an exclusive one.
    delta: u16,
    /// Whether other threads may change the word at once (`SyncHeap`).
    sync: bool,
}

impl<'h> Pin<'h> {
    /// # Safety
    /// `word` must be the borrow word of `key`'s slot, raised by `delta` for
    /// this pin alone (so it stays valid while the pin is held, I11).
    #[inline]
    pub(crate) unsafe fn new(
        word: NonNull<AtomicU16>,
        key: KeyData,
        owner: &'h dyn PinOwner,
        exclusive: bool,
        sync: bool,
    ) -> Pin<'h> {
        let delta = if exclusive { EXCLUSIVE } else { 1 };
        Pin {
            word,
            key,
            owner,
            delta,
            sync,
        }
    }
}

impl Drop for Pin<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the word of a pinned slot stays valid until the pin is
        // dropped (I11), and this pin is one of the pins it counts.
        let word = unsafe { self.word.as_ref() };
        let prev = if self.sync {
            word.fetch_sub(self.delta, Ordering::Release)
        } else {
            // One thread only (`Heap`): plain accesses.
            let prev = plain::load(word);
            plain::store(word, prev - self.delta);
            prev
        };
        debug_assert!(prev & !ZOMBIE >= self.delta, "unpinning an unpinned slot");
        if prev == ZOMBIE | self.delta {
            self.owner.finish_zombie(self.key);
        }
    }
}

impl fmt::Debug for Pin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin").field("key", &self.key).finish()
    }
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
    pin: Pin<'h>,
}

impl<'h, T: ?Sized> Ref<'h, T> {
    /// # Safety
    /// `ptr` must point to a live, initialised `T` that `pin` pins shared
    /// and that no one mutates until the pin goes.
    #[inline]
    pub(crate) unsafe fn new(ptr: NonNull<T>, pin: Pin<'h>) -> Self {
        Ref { ptr, pin }
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
        Ref { ptr, pin: orig.pin }
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
    pin: Pin<'h>,
    // Invariant in `T`, like `&mut T`.
    _mut: PhantomData<&'h mut T>,
}

impl<'h, T: ?Sized> RefMut<'h, T> {
    /// # Safety
    /// `ptr` must point to a live, initialised `T` that `pin` pins
    /// exclusively, for this guard alone.
    #[inline]
    pub(crate) unsafe fn new(ptr: NonNull<T>, pin: Pin<'h>) -> Self {
        RefMut {
            ptr,
            pin,
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
        RefMut {
            ptr,
            pin: orig.pin,
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
