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
