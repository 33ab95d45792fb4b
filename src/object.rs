//! What the heap must know about a stored type: its layout, how to build a
//! pointer to it, and how to drop it — erased into one static [`TypeInfo`].
//!
//! [`Object`] is implemented for every `Sized + Send + 'static` type, for
//! slices `[T]` of such types and for `str`. It is sealed: these three shapes
//! are all the heap knows how to lay out.

use core::alloc::Layout;
use core::any::TypeId;
use core::mem::MaybeUninit;
use core::ptr;

/// A type that can live in a [`Heap`](crate::Heap): any `Sized` type, a slice
/// `[T]`, or `str` (with `T: Send + 'static`).
///
/// This trait is sealed; it only names the types a [`Handle`](crate::Handle)
/// may point to.
pub trait Object: private::Sealed + 'static {
    #[doc(hidden)]
    const INFO: TypeInfo;

    #[doc(hidden)]
    /// The pointer metadata of `self`: the length of a slice or `str`, 0 for sized types.
    fn meta(&self) -> usize;

    #[doc(hidden)]
    /// Builds a (possibly fat) pointer from a data address and metadata.
    fn from_raw_parts(data: *mut u8, meta: usize) -> *mut Self;

    #[doc(hidden)]
    /// The same layout with no value yet and no drop glue (`MaybeUninit<T>`,
    /// `[MaybeUninit<T>]`): the type of an object while it is being built.
    const UNINIT: TypeInfo;

    /// What [`Heap::remove`](crate::Heap::remove) gives back: the value itself
    /// for a sized type, a `Box<[T]>` or `Box<str>` for a slice or `str`.
    type Owned;

    #[doc(hidden)]
    /// Moves the value out of the heap's bytes into an owned value.
    ///
    /// # Safety
    /// `data`/`meta` must describe an initialised `Self` that is not used
    /// (nor dropped) afterwards.
    unsafe fn take(data: *mut u8, meta: usize) -> Self::Owned;
}

/// An [`Object`] the heap can clone into itself from a reference:
/// `T: Clone`, `[T]` with `T: Clone`, and `str` — see
/// [`Heap::alloc_clone`](crate::Heap::alloc_clone). Sealed.
pub trait CloneObject: Object {
    #[doc(hidden)]
    /// Writes a clone of `self` at `dst`. If a `clone` panics, drops what
    /// it wrote before the panic continues.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `size_of_val(self)` bytes, aligned
    /// for `Self`, and hold no value the caller still needs.
    unsafe fn clone_to(&self, dst: *mut u8);

    #[doc(hidden)]
    /// Whether a clone is a copy of the bytes that runs no user code (`str`,
    /// `[u8]`): then the heap copies it while it allocates, in one go.
    #[inline]
    fn clones_bitwise() -> bool {
        false
    }
}

mod private {
    pub trait Sealed {}
    impl<T: Send + 'static> Sealed for T {}
    impl<T: Send + 'static> Sealed for [T] {}
    impl Sealed for str {}
}

/// The type-erased description of a stored type. One `'static` instance per
/// type, shared by every slot that holds a value of that type.
#[doc(hidden)]
#[derive(Debug)]
pub struct TypeInfo {
    /// `TypeId::of::<T>()`.
    pub(crate) type_id: TypeId,
    /// Size of the value for sized types, of one element for slices.
    pub(crate) elem_size: usize,
    /// Alignment of the value (of one element for slices).
    pub(crate) align: usize,
    /// Whether `meta` is a length (slices, `str`) or ignored (sized types).
    pub(crate) is_slice: bool,
    /// Drops the value in place; `None` when the type has no drop glue.
    pub(crate) drop: Option<unsafe fn(*mut u8, usize)>,
}

impl TypeInfo {
    /// The layout of a value with pointer metadata `meta`.
    ///
    /// Returns `None` if the size overflows `isize`.
    #[inline]
    pub(crate) fn layout(&self, meta: usize) -> Option<Layout> {
        Layout::from_size_align(self.checked_size(meta)?, self.align).ok()
    }

    /// The size of a value with pointer metadata `meta` if it has a layout
    /// ([`TypeInfo::layout`]'s size, without building one: the allocation
    /// path needs only the size and the type's alignment).
    #[inline]
    pub(crate) fn checked_size(&self, meta: usize) -> Option<usize> {
        let size = if self.is_slice {
            self.elem_size.checked_mul(meta)?
        } else {
            self.elem_size
        };
        // `Layout::from_size_align`'s bound: rounded up to `align`, at most `isize::MAX`.
        (size <= isize::MAX as usize - (self.align - 1)).then_some(size)
    }

    /// The size in bytes of a value with pointer metadata `meta`, which must
    /// be the metadata of a value that exists (so the product cannot overflow).
    #[inline]
    pub(crate) fn size(&self, meta: usize) -> usize {
        if self.is_slice {
            self.elem_size * meta
        } else {
            self.elem_size
        }
    }

    /// Whether this describes `T`. (Comparing the `TypeInfo` addresses
    /// would not do: a generic constant may be duplicated across codegen
    /// units. `TypeId::of::<T>()` is a compile-time constant.)
    #[cfg(test)]
    pub(crate) fn is<T: ?Sized + Object>(&self) -> bool {
        self.type_id == TypeId::of::<T>()
    }
}

/// # Safety
/// `data` must point to a valid, initialised `T` that is not used afterwards.
unsafe fn drop_sized<T>(data: *mut u8, _meta: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::drop_in_place(data.cast::<T>()) }
}

/// # Safety
/// `data` must point to `len` valid, initialised `T`s that are not used afterwards.
unsafe fn drop_slice<T>(data: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { ptr::drop_in_place(ptr::slice_from_raw_parts_mut(data.cast::<T>(), len)) }
}

impl<T: Send + 'static> Object for T {
    const INFO: TypeInfo = TypeInfo {
        type_id: TypeId::of::<T>(),
        elem_size: core::mem::size_of::<T>(),
        align: core::mem::align_of::<T>(),
        is_slice: false,
        drop: if core::mem::needs_drop::<T>() {
            Some(drop_sized::<T>)
        } else {
            None
        },
    };

    #[inline]
    fn meta(&self) -> usize {
        0
    }

    #[inline]
    fn from_raw_parts(data: *mut u8, _meta: usize) -> *mut T {
        data.cast()
    }

    const UNINIT: TypeInfo = <MaybeUninit<T> as Object>::INFO;

    type Owned = T;

    #[inline]
    unsafe fn take(data: *mut u8, _meta: usize) -> T {
        // SAFETY: guaranteed by the caller.
        unsafe { data.cast::<T>().read() }
    }
}

impl<T: Clone + Send + 'static> CloneObject for T {
    unsafe fn clone_to(&self, dst: *mut u8) {
        let value = self.clone();
        // SAFETY: guaranteed by the caller (room for a `T`, aligned).
        unsafe { dst.cast::<T>().write(value) };
    }
}

impl<T: Send + 'static> Object for [T] {
    const INFO: TypeInfo = TypeInfo {
        type_id: TypeId::of::<[T]>(),
        elem_size: core::mem::size_of::<T>(),
        align: core::mem::align_of::<T>(),
        is_slice: true,
        drop: if core::mem::needs_drop::<T>() {
            Some(drop_slice::<T>)
        } else {
            None
        },
    };

    #[inline]
    fn meta(&self) -> usize {
        self.len()
    }

    #[inline]
    fn from_raw_parts(data: *mut u8, meta: usize) -> *mut [T] {
        ptr::slice_from_raw_parts_mut(data.cast(), meta)
    }

    const UNINIT: TypeInfo = <[MaybeUninit<T>] as Object>::INFO;

    type Owned = Box<[T]>;

    unsafe fn take(data: *mut u8, len: usize) -> Box<[T]> {
        let mut items = Vec::with_capacity(len);
        // SAFETY: the caller gives us `len` initialised `T`s at `data`, which
        // nobody uses afterwards: moving them bitwise into the Vec makes the
        // Vec their one owner. The Vec has room for `len`.
        unsafe {
            ptr::copy_nonoverlapping(data.cast::<T>(), items.as_mut_ptr(), len);
            items.set_len(len);
        }
        items.into_boxed_slice()
    }
}

impl<T: Clone + Send + 'static> CloneObject for [T] {
    #[inline]
    fn clones_bitwise() -> bool {
        TypeId::of::<T>() == TypeId::of::<u8>() // `u8`'s `clone` is a copy
    }

    unsafe fn clone_to(&self, dst: *mut u8) {
        if Self::clones_bitwise() {
            // Bytes (the common case: a cache's values) are copied in one go;
            // `u8`'s `clone` is a copy.
            // SAFETY: the caller gives room for `self.len()` bytes at `dst`,
            // bytes the heap has just reserved, so they cannot overlap `self`.
            unsafe { ptr::copy_nonoverlapping(self.as_ptr().cast::<u8>(), dst, self.len()) };
            return;
        }
        // SAFETY: guaranteed by the caller: room for `self.len()` `T`s.
        unsafe { write_each(dst.cast::<T>(), self.len(), |i| self[i].clone()) }
    }
}

/// Writes `f(0)`, `f(1)`, … `f(len - 1)` to `dst`. If `f` panics, drops the
/// items already written before the panic continues (the bytes are then
/// uninitialised again).
///
/// # Safety
/// `dst` must be valid for writes of `len` `T`s and aligned.
pub(crate) unsafe fn write_each<T>(dst: *mut T, len: usize, mut f: impl FnMut(usize) -> T) {
    /// The items written so far, dropped if `f` panics.
    struct Written<T> {
        dst: *mut T,
        done: usize,
    }
    impl<T> Drop for Written<T> {
        fn drop(&mut self) {
            // SAFETY: the first `done` items were written and not handed on.
            unsafe { ptr::drop_in_place(ptr::slice_from_raw_parts_mut(self.dst, self.done)) };
        }
    }
    let mut written = Written { dst, done: 0 };
    while written.done < len {
        let item = f(written.done);
        // SAFETY: `done < len`: in bounds (the caller's room for `len`).
        unsafe { dst.add(written.done).write(item) };
        written.done += 1;
    }
    core::mem::forget(written);
}

impl Object for str {
    const INFO: TypeInfo = TypeInfo {
        type_id: TypeId::of::<str>(),
        elem_size: 1,
        align: 1,
        is_slice: true,
        drop: None,
    };

    #[inline]
    fn meta(&self) -> usize {
        self.len()
    }

    #[inline]
    fn from_raw_parts(data: *mut u8, meta: usize) -> *mut str {
        // A `*mut [u8]` and a `*mut str` have the same metadata (the length).
        ptr::slice_from_raw_parts_mut(data, meta) as *mut str
    }

    const UNINIT: TypeInfo = <[MaybeUninit<u8>] as Object>::INFO;

    type Owned = Box<str>;

    unsafe fn take(data: *mut u8, len: usize) -> Box<str> {
        // SAFETY: the caller gives us `len` bytes of a `str`, UTF-8.
        unsafe { String::from_utf8_unchecked(<[u8]>::take(data, len).into_vec()) }.into_boxed_str()
    }
}

impl CloneObject for str {
    #[inline]
    fn clones_bitwise() -> bool {
        true
    }

    unsafe fn clone_to(&self, dst: *mut u8) {
        // SAFETY: the caller gives room for `self.len()` bytes; a `str`
        // cannot overlap bytes the heap has just reserved.
        unsafe { ptr::copy_nonoverlapping(self.as_ptr(), dst, self.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_size_is_the_layouts() {
        // Against `Layout` itself, not `TypeInfo::layout` (which uses it).
        let std_size = |elem: usize, align: usize, meta: usize| {
            let size = elem.checked_mul(meta)?;
            Some(Layout::from_size_align(size, align).ok()?.size())
        };
        let info = &<[u64] as Object>::INFO;
        let max = (isize::MAX as usize - 7) / 8;
        for meta in [
            0,
            1,
            5,
            max - 1,
            max,
            max + 1,
            usize::MAX / 8 + 1,
            usize::MAX,
        ] {
            assert_eq!(info.checked_size(meta), std_size(8, 8, meta), "{meta}");
        }
        let bytes = &<str as Object>::INFO;
        for meta in [isize::MAX as usize, isize::MAX as usize + 1] {
            assert_eq!(bytes.checked_size(meta), std_size(1, 1, meta));
        }
    }

    #[test]
    fn layouts_of_the_three_shapes() {
        assert_eq!(<u64 as Object>::INFO.layout(0), Some(Layout::new::<u64>()));
        assert_eq!(
            <[u32] as Object>::INFO.layout(5),
            Some(Layout::from_size_align(20, 4).unwrap())
        );
        assert_eq!(
            <str as Object>::INFO.layout(7),
            Some(Layout::from_size_align(7, 1).unwrap())
        );
        assert_eq!(<[u64] as Object>::INFO.layout(usize::MAX), None);
    }

    #[test]
    fn type_identity_distinguishes_element_types() {
        let info: &'static TypeInfo = &<[u8] as Object>::INFO;
        assert!(info.is::<[u8]>());
        assert!(!info.is::<[i8]>());
        assert!(!info.is::<str>());
        assert!(!info.is::<u8>());
    }

    #[test]
    fn drop_glue_only_where_needed() {
        assert!(<u64 as Object>::INFO.drop.is_none());
        assert!(<String as Object>::INFO.drop.is_some());
        assert!(<[String] as Object>::INFO.drop.is_some());
        assert!(<str as Object>::INFO.drop.is_none());
    }
}
