//! [`Reader`]: a read scope over a whole heap, for read-heavy code.
//!
//! A guard ([`Ref`](crate::Ref)) pins one object: two writes to its slot (pin
//! and unpin) per read. A `Reader` pins the *heap* instead, once: while it
//! lives no object moves and no value is dropped, so it hands out plain `&T`
//! for any number of handles, each read a lookup and nothing more (as
//! crossbeam-epoch pins once per batch of reads).
//!
//! While a `Reader` (of any thread, for [`SyncHeap`](crate::SyncHeap)) is alive:
//! - compaction moves nothing: `compact` and `compact_step` return
//!   unfinished reports, paced and background steps skip;
//! - `get_mut`/`try_get_mut` report [`BorrowError::Borrowed`] and `remove`
//!   reports [`RemoveError::Pinned`](crate::RemoveError::Pinned), as if
//!   every object were borrowed;
//! - `free` kills the handle at once, but the value is dropped (and its bytes
//!   reused) only when the last `Reader` goes;
//! - `alloc`, `get` and guards work as usual.
//!
//! Forgetting a `Reader` (`mem::forget`) is safe but keeps the heap in that
//! state for good: nothing is compacted again and frees wait for the heap's end.

use core::fmt;

use crate::access;
use crate::error::BorrowError;
use crate::handle::Handle;
use crate::heap::Heap;
use crate::object::Object;
use crate::sync::SyncHeap;

/// A read scope over a heap: plain `&T` for many handles, no pin per read.
///
/// While a `Reader` (of any thread, for a [`SyncHeap`]) is alive, nothing
/// moves, nothing is dropped, and nothing is borrowed mutably:
/// - compaction moves nothing: `compact` and `compact_step` return
///   unfinished reports, paced and background steps skip;
/// - `get_mut`/`try_get_mut` report [`BorrowError::Borrowed`] and `remove`
///   reports [`RemoveError::Pinned`](crate::RemoveError::Pinned), as if every
///   object were borrowed;
/// - `free` kills the handle at once, but the value is dropped (and its
///   bytes reused) only when the last `Reader` goes;
/// - `alloc`, `get` and guards work as usual.
///
/// Forgetting a `Reader` (`mem::forget`) is safe, but keeps the heap that way
/// for good: nothing is compacted again, and frees wait for the heap's end.
///
/// Made by [`Heap::read`] and [`SyncHeap::read`].
///
/// # Examples
/// ```
/// use compact_heap::Heap;
///
/// let heap = Heap::new();
/// let hs: Vec<_> = (0..100u64).map(|i| heap.alloc(i)).collect();
/// let sum: u64 = {
///     let r = heap.read();
///     hs.iter().map(|&h| *r.get(h).unwrap()).sum()
/// };
/// assert_eq!(sum, 4950);
/// ```
#[must_use = "if unused the read scope ends at once"]
pub struct Reader<'h, H: ?Sized> {
    heap: &'h H,
    /// Ends the scope (the heap type's `access::end_read`).
    end: fn(&H),
}

impl<'h, H: ?Sized> Reader<'h, H> {
    /// Opens a read scope on `heap`; `end` closes it.
    pub(crate) fn open(heap: &'h H, begin: fn(&H), end: fn(&H)) -> Self {
        begin(heap);
        Reader { heap, end }
    }
}

impl<H: ?Sized> Drop for Reader<'_, H> {
    fn drop(&mut self) {
        (self.end)(self.heap);
    }
}

macro_rules! reader_for {
    ($heap:ty, $($bound:tt)*) => {
        impl<'h> Reader<'h, $heap> {
            /// The object of `handle`, or `None` if the handle is stale.
            ///
            /// # Panics
            /// If a [`RefMut`](crate::RefMut) of the object is alive
            /// ([`Reader::try_get`] does not panic).
            #[inline]
            pub fn get<T: ?Sized + Object $($bound)*>(&self, handle: Handle<T>) -> Option<&T> {
                match self.try_get(handle) {
                    Ok(r) => Some(r),
                    Err(BorrowError::Stale) => None,
                    Err(err) => panic!("compact_heap: {err}"),
                }
            }

            /// The object of `handle`, or why there is none: stale, or
            /// mutably borrowed by a `RefMut` taken before the scope began.
            #[inline]
            pub fn try_get<T: ?Sized + Object $($bound)*>(
                &self,
                handle: Handle<T>,
            ) -> Result<&T, BorrowError> {
                let ptr = access::read_get(self.heap, handle)?;
                // `ptr` is a live `T` with no `RefMut`; while this reader (a
                // read scope) lives, it does not move, is not dropped or
                // released, and no `RefMut` of it can be made (I12). The `&T`
                // borrows `self`, so it ends before the scope does.
                // SAFETY: so the reference is valid and unaliased by `&mut`.
                Ok(unsafe { ptr.as_ref() })
            }
        }
    };
}

reader_for!(Heap,);
reader_for!(SyncHeap, + Sync);

impl<H: ?Sized> fmt::Debug for Reader<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reader")
    }
}
