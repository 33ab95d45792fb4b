//! Memory taken straight from the operating system.
//!
//! Segments and large objects are [`Mapping`]s: anonymous `mmap`s, so that
//! dropping one really returns its pages (memory from `malloc` may stay in
//! malloc's arena). Under Miri, which cannot run `mmap`, a mapping is a plain
//! `std::alloc` allocation with the same size and alignment.

use core::ptr::NonNull;

/// The granularity of mappings; sizes are rounded up to it.
pub(crate) const PAGE: usize = 4096;

/// An owned, page-aligned region of memory, `len` bytes, readable and writable.
///
/// Invariant: `base` is the start of a live mapping of exactly `len` bytes
/// (a multiple of [`PAGE`]) owned by this value; it is unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Offset of the first byte aligned as requested (0 unless `align > PAGE`).
    /// Invariant: `offset < len` (it is a multiple of the page below `align`,
    /// and `len` has `align - PAGE` bytes of slack), so `start()` is in bounds.
    offset: usize,
}

// SAFETY: a Mapping is plain memory owned by this value; no thread affinity.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only exposes addresses, never accesses memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps at least `size` bytes whose start (see [`Mapping::start`]) is
    /// aligned to `align` (a power of two). Returns `None` if the OS refuses.
    pub(crate) fn new(size: usize, align: usize) -> Option<Mapping> {
        let len = Mapping::length_for(size, align)?;
        let base = os::map(len)?;
        let offset = base.as_ptr().addr().wrapping_neg() & (align - 1);
        let mapping = Mapping { base, len, offset };
        debug_assert!(mapping.fits(size, align));
        Some(mapping)
    }

    /// The length of a fresh mapping for `size` bytes aligned to `align` (a
    /// power of two): page-rounded, with room to slide the start up to an
    /// `align` boundary. `None` if it overflows `isize`.
    pub(crate) fn length_for(size: usize, align: usize) -> Option<usize> {
        debug_assert!(align.is_power_of_two());
        let len = size
            .max(1)
            .checked_add(align.saturating_sub(PAGE))?
            .checked_next_multiple_of(PAGE)?;
        (len <= isize::MAX as usize).then_some(len)
    }

    /// Whether `size` bytes aligned to `align` fit at [`Mapping::start`]:
    /// the start is aligned and [`Mapping::usable`] bytes cover `size`.
    ///
    /// This is the one rule for placing an object in a mapping, fresh or
    /// reused: the mapping's length alone says nothing, because an
    /// over-aligned mapping's usable bytes start `offset` bytes in.
    #[inline]
    pub(crate) fn fits(&self, size: usize, align: usize) -> bool {
        self.start().as_ptr().addr() % align == 0 && size <= self.usable()
    }

    /// The first usable (aligned) byte.
    #[inline]
    pub(crate) fn start(&self) -> NonNull<u8> {
        // SAFETY: `offset < len`, so the result is inside the mapping and non-null.
        unsafe { self.base.add(self.offset) }
    }

    /// Bytes from [`Mapping::start`] to the end of the mapping.
    #[inline]
    pub(crate) fn usable(&self) -> usize {
        self.len - self.offset
    }

    /// Bytes held from the OS by this mapping.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping we own (type invariant), and
        // no reference into it outlives it: the heap only drops a mapping when
        // no object lives in it.
        unsafe { os::unmap(self.base, self.len) }
    }
}

#[cfg(not(miri))]
mod os {
    use core::ptr::NonNull;

    pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast())
        }
    }

    /// # Safety
    /// `base`/`len` must be a mapping returned by [`map`] and not yet unmapped.
    pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
        // SAFETY: guaranteed by the caller.
        let rc = unsafe { libc::munmap(base.as_ptr().cast(), len) };
        debug_assert_eq!(rc, 0, "munmap failed");
    }
}

#[cfg(miri)]
mod os {
    use super::PAGE;
    use core::alloc::Layout;
    use core::ptr::NonNull;

    pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(len, PAGE).ok()?;
        // SAFETY: `len > 0`.
        NonNull::new(unsafe { std::alloc::alloc(layout) })
    }

    /// # Safety
    /// `base`/`len` must come from [`map`] and not be freed yet.
    pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
        // SAFETY: guaranteed by the caller; same layout as in `map`.
        unsafe { std::alloc::dealloc(base.as_ptr(), Layout::from_size_align_unchecked(len, PAGE)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_page_rounded_and_aligned() {
        let m = Mapping::new(10, 8).unwrap();
        assert_eq!(m.len(), PAGE);
        assert_eq!(m.start().as_ptr().addr() % PAGE, 0);
        let big = Mapping::new(100, 1 << 16).unwrap();
        assert_eq!(big.start().as_ptr().addr() % (1 << 16), 0);
        // SAFETY: the mapping is at least 100 bytes past `start`, writable.
        unsafe { big.start().as_ptr().write_bytes(0xAB, 100) };
    }
}
