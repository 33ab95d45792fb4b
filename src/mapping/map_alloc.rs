//! [`MapAlloc`]: an allocator for the heap's own big, short-lived blocks:
//! the cache's index tables and a compaction pass's lists of objects.
//!
//! The cache's index (hash map, queues, ghost) is a few big blocks that are
//! reallocated whenever the number of entries doubles or halves, as value
//! sizes drift; a compaction pass lists the objects of its sources, and
//! frees the list when it ends. From `malloc`, each freed block stays in malloc's arena:
//! glibc raises its `mmap` threshold after the first big block is freed, so
//! the next ones come from the arena, and the arena's free top is trimmed
//! only past a threshold that rises with it. With two threads there are two
//! arenas, and cache-bench measured 5–6 MiB of such free but resident memory
//! on a 64 MiB budget (RSS 1.10 × budget, against 1.02 with one thread).
//!
//! So blocks of [`BIG`] bytes or more are mappings of their own, from the
//! same source as the heap's segments (`mmap` on unix, linear memory on
//! wasm32, the global allocator elsewhere and under Miri), and freeing one
//! gives its pages back at once. Smaller blocks go to the global allocator.
//!
//! [`PageAlloc`] does the same from a page on, for blocks that live and die
//! with a segment (its line counts, 8 KiB for a 1 MiB segment): after a
//! big delete, the counts of 58 segments that `compact()` gave back stayed
//! in glibc's arena as 650 KiB of free but resident memory, between blocks
//! still in use (the footprint harness's W7: 0.10 × live at 6.4 MiB of live
//! data).

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

use crate::mapping::{Mapping, PAGE};

/// Blocks of at least this many bytes are mappings of their own.
pub(crate) const BIG: usize = 64 * 1024;

/// The allocator of the heap's big blocks of bookkeeping (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MapAlloc;

/// [`MapAlloc`] with mappings from a page on (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageAlloc;

/// Whether a block of `layout` is a mapping of its own, for an allocator
/// that maps blocks of `from` bytes or more.
fn mapped(layout: Layout, from: usize) -> bool {
    layout.size() >= from && layout.align() <= PAGE
}

/// A block of `layout`: a mapping of its own if [`mapped`], else from `Global`.
fn allocate(layout: Layout, from: usize) -> Result<NonNull<[u8]>, AllocError> {
    if !mapped(layout, from) {
        return Global.allocate(layout);
    }
    let mapping = Mapping::new(layout.size(), layout.align()).ok_or(AllocError)?;
    debug_assert!(mapping.fits(layout.size(), layout.align()));
    let (start, len) = mapping.into_raw();
    Ok(NonNull::slice_from_raw_parts(start, len))
}

/// Frees a block of [`allocate`].
///
/// # Safety
/// `ptr` came from `allocate(layout, from)` with the same arguments, and is
/// not used afterwards.
unsafe fn deallocate(ptr: NonNull<u8>, layout: Layout, from: usize) {
    if !mapped(layout, from) {
        // SAFETY: blocks of this layout came from `Global` (the caller
        // frees a block with the layout it was allocated with).
        unsafe { Global.deallocate(ptr, layout) };
        return;
    }
    // SAFETY: a block of this layout is a mapping that `allocate` gave
    // away with `into_raw` for this size and an alignment of at most a
    // page; the caller no longer uses it.
    drop(unsafe { Mapping::from_raw(ptr, layout.size()) });
}

// A block stays valid until deallocated: a mapping until `deallocate` takes
// it back as a `Mapping` and drops it, a small block as long as `Global` keeps
// it. SAFETY: that, and copies of a unit value are one allocator.
unsafe impl Allocator for MapAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(layout, BIG)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract, with our one threshold.
        unsafe { deallocate(ptr, layout, BIG) }
    }
}

// SAFETY: as `MapAlloc`'s.
unsafe impl Allocator for PageAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(layout, PAGE)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract, with our one threshold.
        unsafe { deallocate(ptr, layout, PAGE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(alloc: impl Allocator, size: usize) {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let block = alloc.allocate(layout).unwrap();
        assert!(block.len() >= size);
        let ptr = block.cast::<u8>();
        assert_eq!(ptr.as_ptr().addr() % 16, 0);
        // SAFETY: the block is `size` writable bytes until deallocated.
        unsafe {
            ptr.as_ptr().write_bytes(0xA5, size);
            assert_eq!(*ptr.as_ptr().add(size - 1), 0xA5);
            alloc.deallocate(ptr, layout);
        }
    }

    #[test]
    fn big_and_small_blocks_round_trip() {
        for size in [8, 1000, BIG - 1, BIG, 3 * BIG + 5] {
            round_trip(MapAlloc, size);
        }
        for size in [8, PAGE - 1, PAGE, 2 * PAGE + 5] {
            round_trip(PageAlloc, size);
        }
    }

    #[test]
    fn a_hash_map_grows_and_shrinks_in_it() {
        let mut map = hashbrown::HashMap::with_hasher_in(
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default(),
            MapAlloc,
        );
        let n = if cfg!(miri) { 1_000 } else { 100_000 };
        for i in 0..n {
            map.insert(i, i * 2);
        }
        map.retain(|k, _| k % 100 == 0);
        map.shrink_to_fit();
        assert_eq!(map.len(), n / 100);
        assert_eq!(map.get(&(n - 100)), Some(&((n - 100) * 2)));
    }
}
