//! What the heap must know about a stored type: its layout, how to build a
//! pointer to it, and how to drop it — erased into one static [`TypeInfo`].
//!
//! [`Object`] is implemented for every `Sized + Send + 'static` type, for
//! slices `[T]` of such types and for `str`. It is sealed: these three shapes
//! are all the heap knows how to lay out.

use core::alloc::Layout;
use core::any::TypeId;
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
        let size = if self.is_slice {
            self.elem_size.checked_mul(meta)?
        } else {
            self.elem_size
        };
        Layout::from_size_align(size, self.align).ok()
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
