//! Memory taken from the platform in big blocks: [`Mapping`].
//!
//! Segments and large objects are [`Mapping`]s. Where they come from depends
//! on the target, one small module per *segment source*, chosen by cfg:
//!
//! | target | source | freed blocks |
//! |---|---|---|
//! | unix (Linux, macOS, the BSDs, …) | `mmap.rs`: anonymous `mmap`, lengths rounded to the OS page size read with `sysconf` | `munmap`: the pages go back to the OS (memory from `malloc` may stay in malloc's arena) |
//! | `wasm32` | `linear.rs`: pages of linear memory from `memory.grow` | kept in a free list and reused: wasm memory never shrinks |
//! | anything else (Windows, …), Miri, or the `alloc-segments` feature | `alloc.rs`: the global allocator with page-aligned layouts | `dealloc` |
//!
//! A source only promises: `map(len)` (`len` a non-zero multiple of [`PAGE`])
//! returns `len` writable bytes aligned to at least [`PAGE`], or `None` when
//! the platform refuses (never an abort); `unmap` gives them back. Everything
//! else (alignment above a page, the usable start) is done here, once.

use core::ptr::NonNull;

mod map_alloc;
mod pool;
mod reserve;
pub(crate) use map_alloc::{MapAlloc, PageAlloc};
pub(crate) use pool::Pool;
pub(crate) use reserve::Reservation;

#[cfg(all(unix, not(miri), not(feature = "alloc-segments")))]
mod mmap;
#[cfg(all(unix, not(miri), not(feature = "alloc-segments")))]
use mmap as source;

#[cfg(any(
    all(target_arch = "wasm32", not(miri), not(feature = "alloc-segments")),
    test
))]
mod linear;
#[cfg(all(target_arch = "wasm32", not(miri), not(feature = "alloc-segments")))]
use linear as source;

#[cfg(any(
    miri,
    feature = "alloc-segments",
    not(any(unix, target_arch = "wasm32"))
))]
mod alloc;
#[cfg(any(
    miri,
    feature = "alloc-segments",
    not(any(unix, target_arch = "wasm32"))
))]
use alloc as source;

/// The granularity of mappings: lengths are multiples of it, and every
/// mapping's start is aligned to at least it (a source whose platform pages
/// are larger rounds its own lengths up, and aligns more). An object aligned
/// to more than `PAGE` gets a mapping of its own.
pub(crate) const PAGE: usize = 4096;

/// An owned region of memory, `len` bytes, readable and writable, aligned to
/// at least [`PAGE`].
///
/// Invariant: `base` is the start of a live block of exactly `len` bytes
/// (a multiple of [`PAGE`]) from the segment source, owned by this value;
/// it goes back to the source on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Offset of the first byte aligned as requested (0 unless `align > PAGE`).
    /// Invariant: `offset < len` (it is a multiple of the page below `align`,
    /// and `len` has `align - PAGE` bytes of slack), so `start()` is in bounds.
    offset: usize,
    /// A place in a [`Reservation`] (see [`Mapping::placed`]) rather than a
    /// block from the source: it goes back with `reserve::decommit`.
    placed: bool,
}

// SAFETY: a Mapping is plain memory owned by this value; no thread affinity
// (every source may be called from any thread).
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only exposes addresses, never accesses memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps at least `size` bytes whose start (see [`Mapping::start`]) is
    /// aligned to `align` (a power of two). Returns `None` if the platform
    /// refuses (out of memory, address space, or wasm's 4 GiB).
    pub(crate) fn new(size: usize, align: usize) -> Option<Mapping> {
        let len = Mapping::length_for(size, align)?;
        let base = source::map(len)?;
        debug_assert_eq!(base.as_ptr().addr() % PAGE, 0, "sources align to PAGE");
        let offset = base.as_ptr().addr().wrapping_neg() & (align - 1);
        let mapping = Mapping {
            base,
            len,
            offset,
            placed: false,
        };
        debug_assert!(mapping.fits(size, align));
        Some(mapping)
    }

    /// Gives the pages of `len` bytes at `offset` back to the OS, keeping the
    /// range mapped (they read as zeros if touched again). Returns false,
    /// with nothing done, where the source cannot (the allocator and wasm
    /// sources, or a range that is not whole OS pages).
    ///
    /// # Safety
    /// `offset + len <= self.len()`, and nothing may rely on those bytes'
    /// contents afterwards (no live object lies there).
    pub(crate) unsafe fn discard(&self, offset: usize, len: usize) -> bool {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (caller), so inside our block; the caller gives up
        // the contents.
        unsafe { source::discard(self.base.add(offset), len) }
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
        self.start().as_ptr().addr().is_multiple_of(align) && size <= self.usable()
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

    /// Bytes held from the platform by this mapping (a multiple of [`PAGE`]).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Gives up ownership without unmapping: the start and the usable
    /// bytes. [`Mapping::from_raw`] takes it back.
    pub(crate) fn into_raw(self) -> (NonNull<u8>, usize) {
        debug_assert!(!self.placed, "only blocks of the source are given up");
        let raw = (self.start(), self.usable());
        core::mem::forget(self);
        raw
    }

    /// Takes back a mapping given up by [`Mapping::into_raw`].
    ///
    /// # Safety
    /// `start` is what `into_raw` returned for a mapping made by
    /// `Mapping::new(n, align)` with `align <= PAGE`, `size` is at least `n`
    /// and at most the usable bytes `into_raw` returned, and the mapping has
    /// not been taken back before.
    pub(crate) unsafe fn from_raw(start: NonNull<u8>, size: usize) -> Mapping {
        // With `align <= PAGE` the start is the base (offset 0) and the
        // length is `n` rounded up to a page, as it is for `size`.
        let len = Mapping::length_for(size, PAGE).expect("the mapping was made for this size");
        debug_assert_eq!(start.as_ptr().addr() % PAGE, 0);
        Mapping {
            base: start,
            len,
            offset: 0,
            placed: false,
        }
    }

    /// The place `base..base + len` of a reservation as a mapping (start
    /// `base`, every byte usable), which gives the place back to the
    /// reservation when it drops.
    ///
    /// # Safety
    /// `base` and `len` are a place just made by [`Reservation::place`],
    /// owned by nothing else, and the reservation outlives the mapping.
    pub(crate) unsafe fn placed(base: NonNull<u8>, len: usize) -> Mapping {
        debug_assert!(len > 0 && len.is_multiple_of(PAGE));
        Mapping {
            base,
            len,
            offset: 0,
            placed: true,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.placed {
            // SAFETY: a place of a reservation that outlives us (`placed`'s
            // contract, I16), owned by us; nothing refers into it: the heap
            // only drops a mapping when no object lives in it.
            return unsafe { reserve::decommit(self.base, self.len) };
        }
        // SAFETY: `base`/`len` describe a block from `source::map` that we
        // own (type invariant, I1), and no reference into it outlives it: the
        // heap only drops a mapping when no object lives in it.
        unsafe { source::unmap(self.base, self.len) }
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

    #[test]
    #[cfg_attr(miri, ignore = "Miri reports resource exhaustion instead of null")]
    fn a_source_that_cannot_grow_says_none() {
        // More than any address space a test machine has (2^47 on x86-64).
        let huge = 1usize << (usize::BITS - 2);
        assert!(Mapping::new(huge, 8).is_none());
        assert!(Mapping::new(usize::MAX - PAGE, 8).is_none(), "overflow");
        // And the source still works afterwards.
        assert!(Mapping::new(PAGE, 8).is_some());
    }
}
