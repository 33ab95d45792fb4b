//! The portable segment source: the global allocator, with layouts aligned
//! to [`PAGE`]. Used where there is no `mmap` (Windows and other non-unix,
//! non-wasm targets), under Miri (which cannot run `mmap`), and everywhere
//! with the `alloc-segments` feature (which CI uses to run the tests on this
//! source on Linux).
//!
//! Whether freed segments reach the OS is up to the global allocator (the
//! system allocators of Windows and glibc unmap blocks this large).
//! A null from the allocator is `None`, which the heap turns into
//! `AllocError::OutOfMemory`; `handle_alloc_error` is never called.

use core::alloc::Layout;
use core::ptr::NonNull;

use super::PAGE;

/// The layout of a block of `len` bytes.
fn layout(len: usize) -> Option<Layout> {
    Layout::from_size_align(len, PAGE).ok()
}

/// Allocates `len` bytes (a non-zero multiple of [`PAGE`]) aligned to
/// [`PAGE`]. `None` if the allocator returns null.
pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
    let layout = layout(len)?;
    // SAFETY: `len > 0` (the caller's contract), so the layout is not zero-sized.
    NonNull::new(unsafe { std::alloc::alloc(layout) })
}

/// Gives a block from [`map`] back to the global allocator.
///
/// # Safety
/// `base`/`len` must come from [`map`] (with this `len`) and not be freed
/// yet, and nothing may access the block afterwards.
pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
    let layout = layout(len).expect("map built this layout");
    // SAFETY: guaranteed by the caller; the same layout as in `map`.
    unsafe { std::alloc::dealloc(base.as_ptr(), layout) }
}

/// Pages cannot be given back while the block stays allocated here: always
/// false (the block goes back whole, on `unmap`).
///
/// # Safety
/// None needed (nothing is done); the signature matches the other sources.
pub(super) unsafe fn discard(_ptr: NonNull<u8>, _len: usize) -> bool {
    false
}
