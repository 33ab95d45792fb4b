//! [`Pool`]: blocks of one size, whole pages each, carved out of a few big
//! mappings.
//!
//! The table's dense chunks are such blocks. A mapping of their own each
//! would give their pages back exactly, but a heap of a million objects
//! would then hold two thousand mappings, and every `mmap` and `munmap` of
//! them costs the kernel work that it finishes later, in interrupts that
//! land in whatever the program does next (a `compact_step`, say). A pool
//! maps regions of up to [`MAX_BLOCKS`] blocks, each region twice the size of
//! the last while the pool grows, so a small heap still maps one small
//! region. A block given back has its pages discarded, so the memory goes
//! back to the OS exactly as before, with one `madvise` and no `munmap`; a
//! region goes back whole when its last block does.

use core::ptr::NonNull;

use super::{Mapping, PAGE};

/// The most blocks one region holds (a bitmap word).
pub(crate) const MAX_BLOCKS: usize = 64;

/// One mapping cut into `blocks` blocks.
#[derive(Debug)]
struct Region {
    mapping: Mapping,
    blocks: usize,
    /// Bit `i` is set iff block `i` is free.
    free: u64,
    /// Bit `i` is set iff block `i` is free and its pages may still be
    /// resident (the source could not discard them).
    kept: u64,
}

impl Region {
    fn start(&self) -> usize {
        self.mapping.start().as_ptr().addr()
    }

    fn all_free(&self) -> u64 {
        if self.blocks == 64 {
            u64::MAX
        } else {
            (1 << self.blocks) - 1
        }
    }
}

/// Blocks of `block` bytes (a non-zero multiple of [`PAGE`]), aligned to
/// [`PAGE`].
///
/// Invariant: `regions` are sorted by address and disjoint; a block whose
/// bit is clear in its region's `free` is owned by whoever [`Pool::take`]
/// handed it to, until they give it back with [`Pool::give`].
#[derive(Debug)]
pub(crate) struct Pool {
    block: usize,
    regions: Vec<Region>,
    /// Blocks handed out.
    taken: usize,
    /// Free blocks whose pages may be resident.
    kept: usize,
}

impl Pool {
    /// An empty pool of `block`-byte blocks.
    pub(crate) fn new(block: usize) -> Pool {
        assert!(block > 0 && block.is_multiple_of(PAGE), "whole pages");
        Pool {
            block,
            regions: Vec::new(),
            taken: 0,
            kept: 0,
        }
    }

    /// The size of the blocks.
    pub(crate) fn block(&self) -> usize {
        self.block
    }

    /// A block's start, `block` bytes that the caller owns until it gives
    /// them back, of unspecified contents; `None` if the platform refuses
    /// memory. The lowest free block first, so that high regions empty out.
    pub(crate) fn take(&mut self) -> Option<NonNull<u8>> {
        let r = match self.regions.iter().position(|r| r.free != 0) {
            Some(r) => r,
            None => self.grow()?,
        };
        let region = &mut self.regions[r];
        let i = region.free.trailing_zeros() as usize;
        region.free &= !(1 << i);
        if region.kept & (1 << i) != 0 {
            region.kept &= !(1 << i);
            self.kept -= 1;
        }
        self.taken += 1;
        let start = region.mapping.start();
        // SAFETY: `i < blocks`, and the region's mapping holds `blocks`
        // blocks from its start, so the offset is inside it.
        Some(unsafe { start.add(i * self.block) })
    }

    /// Maps a new region, as many blocks as the pool holds now (at least
    /// one, at most [`MAX_BLOCKS`]), and returns its index.
    fn grow(&mut self) -> Option<usize> {
        let held: usize = self.regions.iter().map(|r| r.blocks).sum();
        let blocks = held.clamp(1, MAX_BLOCKS);
        let mapping = Mapping::new(blocks.checked_mul(self.block)?, PAGE)?;
        let mut region = Region {
            mapping,
            blocks,
            free: 0,
            kept: 0,
        };
        region.free = region.all_free();
        let at = self.regions.partition_point(|r| r.start() < region.start());
        self.regions.insert(at, region);
        Some(at)
    }

    /// Gives back the block at `ptr`: its pages go back to the OS (where the
    /// source can discard them), and its region too if it was the last block
    /// taken from it.
    ///
    /// # Safety
    /// `ptr` came from [`Pool::take`] on this pool and was not given back
    /// since; nothing uses the block's memory afterwards.
    pub(crate) unsafe fn give(&mut self, ptr: NonNull<u8>) {
        let addr = ptr.as_ptr().addr();
        let r = self.regions.partition_point(|r| r.start() <= addr) - 1;
        let region = &mut self.regions[r];
        let offset = addr - region.start();
        debug_assert!(offset.is_multiple_of(self.block));
        let i = offset / self.block;
        debug_assert!(i < region.blocks && region.free & (1 << i) == 0);
        region.free |= 1 << i;
        self.taken -= 1;
        if region.free == region.all_free() {
            self.kept -= region.kept.count_ones() as usize;
            // Unmapped when it drops: every block of it is free.
            self.regions.remove(r);
            return;
        }
        // SAFETY: the block is inside the region's mapping, and its owner
        // gave up its contents (caller).
        if !unsafe { region.mapping.discard(offset, self.block) } {
            region.kept |= 1 << i;
            self.kept += 1;
        }
    }

    /// Bytes of the blocks handed out, and of free blocks that the source
    /// could not give back to the OS.
    pub(crate) fn resident(&self) -> usize {
        (self.taken + self.kept) * self.block
    }

    /// Regions mapped now.
    #[cfg(test)]
    pub(crate) fn regions(&self) -> usize {
        self.regions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_distinct_aligned_and_writable() {
        let mut pool = Pool::new(2 * PAGE);
        let blocks: Vec<_> = (0..100).map(|_| pool.take().unwrap()).collect();
        for (n, b) in blocks.iter().enumerate() {
            assert_eq!(b.as_ptr().addr() % PAGE, 0);
            // SAFETY: a block of `2 * PAGE` bytes that we own.
            unsafe { b.as_ptr().write_bytes(n as u8, 2 * PAGE) };
        }
        for (n, b) in blocks.iter().enumerate() {
            // SAFETY: as above, written just now.
            let last = unsafe { b.as_ptr().add(2 * PAGE - 1).read() };
            assert_eq!(last, n as u8, "no block overlaps another");
        }
        assert_eq!(pool.resident(), 100 * 2 * PAGE);
        // Regions double: 1, 1, 2, 4, 8, 16, 32, 64 blocks.
        assert_eq!(pool.regions(), 8);
        for b in blocks {
            // SAFETY: taken from this pool, given back once.
            unsafe { pool.give(b) };
        }
        assert_eq!(pool.resident(), 0);
        assert_eq!(pool.regions(), 0, "every region went back");
    }

    #[test]
    fn a_block_given_back_is_taken_again_lowest_first() {
        let mut pool = Pool::new(PAGE);
        // Regions of 1, 1, 2, 4 and 8 blocks: the last holds blocks 8 and 9.
        let blocks: Vec<_> = (0..10).map(|_| pool.take().unwrap()).collect();
        // SAFETY: taken from this pool, given back once.
        unsafe { pool.give(blocks[8]) };
        // Where the source discards pages (mmap), a free block is not
        // resident; the allocator's source keeps it until its region goes.
        let discards = cfg!(all(unix, not(miri), not(feature = "alloc-segments")));
        assert_eq!(pool.resident(), if discards { 9 } else { 10 } * PAGE);
        assert_eq!(pool.regions(), 5, "its region still holds block 9");
        assert_eq!(pool.take(), Some(blocks[8]), "the lowest free block");
        for b in blocks {
            // SAFETY: as above (`lowest` was taken again).
            unsafe { pool.give(b) };
        }
        assert_eq!(pool.regions(), 0);
    }
}
