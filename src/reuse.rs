//! [`Reuse`]: freed blocks of small objects, kept for the next allocation
//! of their size.
//!
//! A segment reuses memory a line at a time: a freed 100-byte object leaves
//! a hole that the allocator can use only once no other object touches its
//! 128-byte line. A program that replaces objects by others of their size
//! (a cache, a table of records) would leave such holes behind it forever,
//! and the heap would have to move objects to close them.
//!
//! So a free of a small object keeps its block instead: the block stays
//! marked in its segment (its lines' counts, the segment's object and byte
//! counts do not change) and goes on a stack of its size class, the number
//! of granules it spans. The next allocation of that many granules pops it:
//! no line count changes on either side, and the newest block, still in the
//! cache, is used first. This is what a size-class free list does in
//! malloc; here its bytes are bounded (see `Space`). A kept block is a hole
//! that only compaction sees as one: a compaction pass takes back the kept
//! blocks of the sources it chooses, and a full compaction all of them.
//!
//! Invariant I14 of docs/DESIGN.md (kept by `Space`, which owns a `Reuse`):
//! every block is the whole reservation of one freed object of `size` bytes
//! in a segment that is not evacuating, on one stack once; nothing refers to
//! it. A segment's `cached` is the number of its blocks held here, and is
//! either 0 or less than its `live_objects` (a segment never holds only
//! kept blocks: the free that would leave it so gives them all back).

use crate::segment::LINE;
use crate::table::GRANULE;

/// The largest object whose block is kept for reuse.
pub(crate) const REUSE_MAX: usize = 1024;

/// Size classes: one per number of granules, 1 to `REUSE_MAX / GRANULE`.
const CLASSES: usize = REUSE_MAX / GRANULE;

/// An object may take a block of up to `1 / FIT` more granules than its own.
const FIT: usize = 8;

/// What a kept block costs besides its own bytes (see `Reuse::bytes`).
const ENTRY: usize = core::mem::size_of::<Block>();

/// A freed object's block: its granule address and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) granule: u32,
    pub(crate) size: u32,
}

/// Stacks of freed blocks by size class (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Reuse {
    /// `classes[c]` holds blocks of `c + 1` granules, newest last. Empty
    /// until the first block is kept (a heap that never frees pays nothing).
    classes: Vec<Vec<Block>>,
    /// Invariant: the sum of the class sizes (granules × [`GRANULE`]) of
    /// all blocks held, plus [`ENTRY`] bytes for each (its place on a
    /// stack: for the smallest objects, as much as the object).
    bytes: usize,
    /// Invariant: the number of blocks held.
    count: usize,
}

impl Reuse {
    /// The class of a block of `size` bytes (`1..=REUSE_MAX`).
    #[inline(always)]
    fn class(size: usize) -> usize {
        debug_assert!((1..=REUSE_MAX).contains(&size));
        (size - 1) / GRANULE
    }

    /// Bytes of the blocks held (each counted as its whole granules and
    /// its entry).
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no block is held.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Keeps `block` (of `1..=REUSE_MAX` bytes) for reuse.
    #[inline]
    pub(crate) fn push(&mut self, block: Block) {
        let class = Self::class(block.size as usize);
        if self.classes.is_empty() {
            self.classes = (0..CLASSES).map(|_| Vec::new()).collect();
        }
        self.classes[class].push(block);
        self.bytes += (class + 1) * GRANULE + ENTRY;
        self.count += 1;
    }

    /// A block for an object of `size` bytes (`1..=REUSE_MAX`) aligned to
    /// `align` (a power of two; blocks are at least granule-aligned in their
    /// segment): the newest of its class, else the newest of one of the next
    /// few classes (up to an eighth larger) that ends in the same line as
    /// the object would, so that the lines the block marks are exactly the
    /// object's. The rest of a larger block is slack inside the object's
    /// lines until they are free.
    #[inline(always)]
    pub(crate) fn pop(&mut self, size: usize, align: usize) -> Option<Block> {
        if self.count == 0 {
            return None;
        }
        let class = Self::class(size);
        let last = (class + class / FIT).min(CLASSES - 1);
        for c in class..=last {
            let Some(&top) = self.classes[c].last() else {
                continue;
            };
            if top.granule as usize & (align / GRANULE).saturating_sub(1) != 0 {
                continue;
            }
            if c != class {
                // Byte offset in its line (segments start on a line).
                let o = top.granule as usize % (LINE / GRANULE) * GRANULE;
                if (o + size - 1) / LINE != (o + top.size as usize - 1) / LINE {
                    continue;
                }
            }
            self.classes[c].pop();
            self.bytes -= (c + 1) * GRANULE + ENTRY;
            self.count -= 1;
            return Some(top);
        }
        None
    }

    /// Takes out every block for which `take` says yes, and hands each to
    /// `out`.
    pub(crate) fn take_where(&mut self, take: impl Fn(Block) -> bool, mut out: impl FnMut(Block)) {
        for (class, stack) in self.classes.iter_mut().enumerate() {
            stack.retain(|&block| {
                if !take(block) {
                    return true;
                }
                self.bytes -= (class + 1) * GRANULE + ENTRY;
                self.count -= 1;
                out(block);
                false
            });
        }
    }

    /// Takes out every block, handing each to `out`, and gives back the
    /// stacks' memory.
    pub(crate) fn drain(&mut self, mut out: impl FnMut(Block)) {
        for stack in core::mem::take(&mut self.classes) {
            stack.into_iter().for_each(&mut out);
        }
        self.bytes = 0;
        self.count = 0;
    }

    /// Bytes of bookkeeping.
    pub(crate) fn metadata_bytes(&self) -> usize {
        self.classes.capacity() * core::mem::size_of::<Vec<Block>>()
            + self
                .classes
                .iter()
                .map(|s| s.capacity() * core::mem::size_of::<Block>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(granule: u32, size: u32) -> Block {
        Block { granule, size }
    }

    #[test]
    fn a_block_serves_any_size_of_its_granules_newest_first() {
        let mut r = Reuse::default();
        assert!(r.is_empty() && r.pop(100, 1).is_none());
        r.push(block(10, 100));
        r.push(block(50, 98));
        assert_eq!(r.bytes(), 2 * (100 + ENTRY));
        // 97..=100 bytes are all 25 granules.
        assert_eq!(r.pop(97, 1), Some(block(50, 98)));
        assert_eq!(r.pop(101, 1), None, "26 granules: another class");
        assert_eq!(r.pop(100, 4), Some(block(10, 100)));
        assert!(r.is_empty() && r.bytes() == 0);
    }

    #[test]
    fn a_larger_block_fits_if_it_ends_in_the_objects_last_line() {
        let mut r = Reuse::default();
        // Granule 0 of a line: bytes 0..108 end in line 0, as 100 bytes do.
        r.push(block(64, 108));
        assert_eq!(r.pop(100, 1), Some(block(64, 108)));
        // Bytes 100..220 (granule 25), 30 granules, end in line 1.
        r.push(block(25, 120));
        assert_eq!(
            r.pop(100, 1),
            None,
            "25 -> 30 granules: more than an eighth"
        );
        assert_eq!(
            r.pop(112, 1),
            Some(block(25, 120)),
            "100..212 ends in line 1"
        );
        // Bytes 32..132 end in line 1; 32..128 would end in line 0.
        r.push(block(8, 100));
        assert_eq!(
            r.pop(96, 1),
            None,
            "the block would mark a line the object does not"
        );
        assert_eq!(r.pop(97, 1), Some(block(8, 100)), "its own class");
        assert!(r.is_empty());
    }

    #[test]
    fn a_block_is_handed_out_only_if_aligned_enough() {
        let mut r = Reuse::default();
        r.push(block(3, 8)); // byte offset 12: aligned to 4, not 8
        assert_eq!(r.pop(8, 8), None);
        assert_eq!(r.pop(8, 4), Some(block(3, 8)));
        r.push(block(4, 8)); // byte offset 16
        assert_eq!(r.pop(8, 16), Some(block(4, 8)));
    }

    #[test]
    fn blocks_are_taken_out_by_predicate_or_all_at_once() {
        let mut r = Reuse::default();
        for g in 0..10 {
            r.push(block(g, 4 * (g + 1)));
        }
        let mut out = Vec::new();
        r.take_where(|b| b.granule % 2 == 0, |b| out.push(b.granule));
        out.sort_unstable();
        assert_eq!(out, [0, 2, 4, 6, 8]);
        assert_eq!(
            r.bytes(),
            [2, 4, 6, 8, 10].iter().sum::<usize>() * 4 + 5 * ENTRY
        );
        let mut rest = Vec::new();
        r.drain(|b| rest.push(b.granule));
        rest.sort_unstable();
        assert_eq!(rest, [1, 3, 5, 7, 9]);
        assert!(r.is_empty() && r.bytes() == 0);
        assert!(r.pop(4, 1).is_none());
    }
}
