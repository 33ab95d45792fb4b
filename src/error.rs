//! The ways an operation can fail, each saying what went wrong.

use core::fmt;

/// Why [`Heap::try_get`](crate::Heap::try_get) or
/// [`Heap::try_get_mut`](crate::Heap::try_get_mut) gave no guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BorrowError {
    /// The handle's object was freed (or the handle is of another heap).
    Stale,
    /// The object is already borrowed shared (`Ref`), so it cannot be borrowed mutably.
    Borrowed,
    /// The object is already borrowed mutably (`RefMut`).
    BorrowedMut,
}

impl fmt::Display for BorrowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BorrowError::Stale => "stale handle: the object was freed",
            BorrowError::Borrowed => {
                "object already borrowed: a Ref is alive, cannot borrow mutably"
            }
            BorrowError::BorrowedMut => "object already mutably borrowed: a RefMut is alive",
        })
    }
}

impl std::error::Error for BorrowError {}

/// Why [`Heap::remove`](crate::Heap::remove) returned no value. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoveError {
    /// The handle's object was already freed.
    Stale,
    /// The object is borrowed; it stays in the heap, untouched.
    Pinned,
}

impl fmt::Display for RemoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RemoveError::Stale => "stale handle: the object was freed",
            RemoveError::Pinned => "object is borrowed: cannot move it out while a guard lives",
        })
    }
}

impl std::error::Error for RemoveError {}

/// Why an allocation failed. The heap is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocError {
    /// The size overflows `isize` (e.g. a slice of `usize::MAX` elements).
    TooLarge,
    /// The configured memory limit (after compacting) or the OS refused the memory.
    OutOfMemory,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocError::TooLarge => "allocation too large: size overflows isize",
            AllocError::OutOfMemory => "out of memory: the heap's memory limit or the OS refused",
        })
    }
}

impl std::error::Error for AllocError {}

/// Why [`Heap::resize`](crate::Heap::resize) did not resize. The object and
/// its handle are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeError {
    /// The handle's object was already freed.
    Stale,
    /// The object is borrowed (or a read scope is open): it cannot change now.
    Pinned,
    /// The new size did not fit ([`AllocError`] says why).
    Alloc(AllocError),
}

impl fmt::Display for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeError::Stale => f.write_str("stale handle: the object was freed"),
            ResizeError::Pinned => {
                f.write_str("object is borrowed: cannot resize it while a guard or reader lives")
            }
            ResizeError::Alloc(e) => write!(f, "cannot resize: {e}"),
        }
    }
}

impl std::error::Error for ResizeError {}

impl From<AllocError> for ResizeError {
    fn from(e: AllocError) -> ResizeError {
        ResizeError::Alloc(e)
    }
}
