//! [`Handle`]: the name of an object in a heap.

use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;

use slotmap::KeyData;

/// A generational handle to an object of type `T` in a [`Heap`](crate::Heap).
///
/// A handle is 8 bytes (a slot index and the slot's version), `Copy`, and
/// `Option<Handle<T>>` is 8 bytes too. The object it names may move; the
/// handle stays valid until the object is freed, and after that it reads as
/// `None` forever: a slot whose version would wrap is retired, never reused.
///
/// A handle used on a heap that did not issue it is a logic error: it reads
/// `None` or some live object *of the same type* of that heap, never another
/// type, and never causes undefined behaviour.
///
/// # Examples
/// ```
/// use compact_heap::{Handle, Heap};
///
/// let heap = Heap::new();
/// let h: Handle<String> = heap.alloc(String::from("hi"));
/// let copy = h; // handles are Copy
/// assert_eq!(heap.get(copy).unwrap().as_str(), "hi");
/// assert_eq!(std::mem::size_of::<Option<Handle<str>>>(), 8);
/// heap.free(h);
/// assert!(heap.get(copy).is_none());
/// ```
pub struct Handle<T: ?Sized> {
    key: KeyData,
    // `fn() -> *const T`: Copy, Send and Sync whatever `T` is; a handle owns nothing.
    _type: PhantomData<fn() -> *const T>,
}

impl<T: ?Sized> Handle<T> {
    #[inline]
    pub(crate) fn new(key: KeyData) -> Handle<T> {
        Handle {
            key,
            _type: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn key(self) -> KeyData {
        self.key
    }

    /// The handle as a `u64`, e.g. to store it outside Rust.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Handle, Heap};
    ///
    /// let heap = Heap::new();
    /// let h = heap.alloc(5u8);
    /// let back: Handle<u8> = Handle::from_bits(h.to_bits());
    /// assert_eq!(back, h);
    /// ```
    #[inline]
    pub fn to_bits(self) -> u64 {
        self.key.as_ffi()
    }

    /// The handle whose [`to_bits`](Handle::to_bits) is `bits`. Bits that no
    /// heap issued give a handle that reads `None`.
    #[inline]
    pub fn from_bits(bits: u64) -> Handle<T> {
        Handle::new(KeyData::from_ffi(bits))
    }
}

impl<T: ?Sized> Clone for Handle<T> {
    #[inline]
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Handle<T> {}

impl<T: ?Sized> PartialEq for Handle<T> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<T: ?Sized> Eq for Handle<T> {}

impl<T: ?Sized> PartialOrd for Handle<T> {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: ?Sized> Ord for Handle<T> {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl<T: ?Sized> Hash for Handle<T> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<T: ?Sized> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.key.as_ffi();
        write!(f, "Handle({}v{})", bits as u32, bits >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_eight_bytes_and_so_are_options_of_them() {
        assert_eq!(core::mem::size_of::<Handle<u64>>(), 8);
        assert_eq!(core::mem::size_of::<Option<Handle<[u8]>>>(), 8);
        assert_eq!(core::mem::size_of::<Option<Handle<str>>>(), 8);
    }

    #[test]
    fn handles_are_send_and_sync_even_for_non_send_types() {
        fn check<X: Send + Sync + Copy + Eq + Ord + Hash + fmt::Debug>() {}
        check::<Handle<std::rc::Rc<u8>>>();
        check::<Handle<[u8]>>();
    }

    #[test]
    fn debug_shows_index_and_version() {
        let h: Handle<u8> = Handle::from_bits((3u64 << 32) | 7);
        assert_eq!(format!("{h:?}"), "Handle(7v3)");
    }
}
