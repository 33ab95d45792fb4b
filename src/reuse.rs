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
//! counts do not change) and goes on a stack of its size class (the number
//! of granules it spans, up to 1 KiB; 16-byte classes above). The next
//! allocation of its class pops it:
//! no line count changes on either side, and the newest block, still in the
//! cache, is used first. This is what a size-class free list does in
//! malloc; here its bytes are bounded (see `Space`). A kept block is a hole
//! that only compaction sees as one: a pass chooses its sources by live
//! bytes less kept bytes, then takes back the sources' kept blocks; a full
//! compaction takes back all of them.
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
pub(crate) const REUSE_MAX: usize = 4096;

/// Objects up to this size have a class per number of granules; above it,
/// a class per [`WIDE`] bytes.
const FINE_MAX: usize = 1024;

/// The width of a class above [`FINE_MAX`].
const WIDE: usize = 16;

/// Size classes: `FINE_MAX / GRANULE` fine ones, then the wide ones.
const CLASSES: usize = FINE_MAX / GRANULE + (REUSE_MAX - FINE_MAX).div_ceil(WIDE);

/// An object may take a block of up to `1 / FIT` more bytes than its own.
const FIT: usize = 8;

/// How many classes with blocks an allocation looks at, at most.
const TRIES: usize = 8;

/// What a kept block costs besides its own bytes (see `Reuse::bytes`).
const ENTRY: usize = core::mem::size_of::<Block>();

/// A freed object's block: its granule address and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) granule: u32,
    pub(crate) size: u32,
}

impl Block {
    /// Bytes reserved for the block: its size rounded up to a granule (the
    /// next object in the segment starts on a granule at the earliest).
    fn reserved(self) -> usize {
        (self.size as usize).next_multiple_of(GRANULE)
    }

    /// Whether an object of `size` bytes aligned to `align` may take this
    /// block: it fits the block's granules, starts aligned, and ends in the
    /// line the block ends in, so that the lines the block marks are
    /// exactly the object's (segments start on a line).
    #[inline(always)]
    fn fits(self, size: usize, align: usize) -> bool {
        let o = self.granule as usize % (LINE / GRANULE) * GRANULE;
        size <= self.reserved()
            && self.granule as usize & (align / GRANULE).saturating_sub(1) == 0
            && (o + size - 1) / LINE == (o + self.size as usize - 1) / LINE
    }
}

/// Stacks of freed blocks by size class (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Reuse {
    /// `classes[c]` holds blocks of class `c` ([`Reuse::class`]), newest
    /// last. Empty until the first block is kept (a heap that never frees
    /// pays nothing).
    classes: Vec<Vec<Block>>,
    /// Invariant: bit `c` is set if `classes[c]` holds a block. A class
    /// that empties keeps its bit until a search finds it empty
    /// ([`Reuse::pop_larger`]) or [`Reuse::take_where`] looks at it: the
    /// common alloc + free of one size sets and pops, and clears nothing.
    nonempty: [u64; CLASSES.div_ceil(64)],
    /// Invariant: the sum of the sizes of all blocks held, plus [`ENTRY`]
    /// bytes for each (its place on a stack: for the smallest objects, as
    /// much as the object).
    bytes: usize,
    /// Invariant: the number of blocks held.
    count: usize,
}

impl Reuse {
    /// The class of a block of `size` bytes (`1..=REUSE_MAX`).
    #[inline(always)]
    fn class(size: usize) -> usize {
        debug_assert!((1..=REUSE_MAX).contains(&size));
        if size <= FINE_MAX {
            (size - 1) / GRANULE
        } else {
            FINE_MAX / GRANULE + (size - FINE_MAX - 1) / WIDE
        }
    }

    /// Bytes of the blocks held (each counted as its size and its entry).
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no block is held.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many blocks are held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Keeps `block` (of `1..=REUSE_MAX` bytes) for reuse.
    #[inline]
    pub(crate) fn push(&mut self, block: Block) {
        let class = Self::class(block.size as usize);
        if self.classes.is_empty() {
            self.classes = (0..CLASSES).map(|_| Vec::new()).collect();
        }
        self.classes[class].push(block);
        self.nonempty[class / 64] |= 1 << (class % 64);
        self.bytes += block.size as usize + ENTRY;
        self.count += 1;
    }

    /// A block for an object of `size` bytes (`1..=REUSE_MAX`) aligned to
    /// `align` (a power of two; blocks are at least granule-aligned in their
    /// segment): the newest block of its class, else the newest of one of
    /// the next classes with blocks, up to an eighth larger, that the object
    /// fits ([`Block::fits`]). The rest of a larger block is slack inside
    /// the object's lines until they are free.
    #[inline(always)]
    pub(crate) fn pop(&mut self, size: usize, align: usize) -> Option<Block> {
        if self.count == 0 {
            return None;
        }
        let first = Self::class(size);
        if let Some(&top) = self.classes[first].last() {
            // A fine class's blocks are as many granules as the object: it
            // fits them and ends in their last line; only alignment is left.
            let fits = if size <= FINE_MAX {
                top.granule as usize & (align / GRANULE).saturating_sub(1) == 0
            } else {
                top.fits(size, align)
            };
            if fits {
                debug_assert!(top.fits(size, align));
                return Some(self.take_top(first));
            }
        }
        self.pop_larger(size, align, first)
    }

    /// [`Reuse::pop`] in the classes above `first`.
    #[inline(never)]
    fn pop_larger(&mut self, size: usize, align: usize, first: usize) -> Option<Block> {
        let last = Self::class((size + size / FIT).min(REUSE_MAX));
        let mut c = first + 1;
        let mut tries = TRIES;
        while c <= last && tries > 0 {
            // The next class from `c` on that holds blocks.
            let w = c / 64;
            let bits = self.nonempty[w] & (u64::MAX << (c % 64));
            if bits == 0 {
                c = (w + 1) * 64;
                continue;
            }
            c = w * 64 + bits.trailing_zeros() as usize;
            if c > last {
                break;
            }
            let Some(&top) = self.classes[c].last() else {
                // A class that emptied since its bit was set.
                self.nonempty[c / 64] &= !(1 << (c % 64));
                c += 1;
                continue;
            };
            tries -= 1;
            if top.fits(size, align) {
                return Some(self.take_top(c));
            }
            c += 1;
        }
        None
    }

    /// Pops the newest block of class `c`, which holds one.
    #[inline(always)]
    fn take_top(&mut self, c: usize) -> Block {
        let block = self.classes[c].pop().expect("the class holds a block");
        self.bytes -= block.size as usize + ENTRY;
        self.count -= 1;
        block
    }

    /// Takes out every block for which `take` says yes, and hands each to
    /// `out`.
    pub(crate) fn take_where(&mut self, take: impl Fn(Block) -> bool, mut out: impl FnMut(Block)) {
        for (class, stack) in self.classes.iter_mut().enumerate() {
            stack.retain(|&block| {
                if !take(block) {
                    return true;
                }
                self.bytes -= block.size as usize + ENTRY;
                self.count -= 1;
                out(block);
                false
            });
            if stack.is_empty() {
                self.nonempty[class / 64] &= !(1 << (class % 64));
            }
        }
    }

    /// Takes out every block, handing each to `out`, and gives back the
    /// stacks' memory.
    pub(crate) fn drain(&mut self, mut out: impl FnMut(Block)) {
        for stack in core::mem::take(&mut self.classes) {
            stack.into_iter().for_each(&mut out);
        }
        self.nonempty = Default::default();
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
        assert_eq!(r.bytes(), 100 + 98 + 2 * ENTRY);
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
    fn above_a_kibibyte_a_class_holds_several_sizes_and_a_block_serves_only_those_it_fits() {
        let mut r = Reuse::default();
        r.push(block(0, 1500));
        assert_eq!(
            r.pop(1510, 1),
            None,
            "a larger object never takes a smaller block"
        );
        assert_eq!(
            r.pop(1490, 1),
            Some(block(0, 1500)),
            "same class, same last line"
        );
        r.push(block(0, 1490));
        assert_eq!(r.pop(1500, 1), None, "same class, but 1500 > 1492 reserved");
        assert_eq!(
            r.pop(1400, 1),
            None,
            "1400 bytes end in line 10, the block in 11"
        );
        assert_eq!(
            r.pop(1480, 1),
            Some(block(0, 1490)),
            "one class up, same last line"
        );
        r.push(block(0, 1500));
        assert_eq!(
            r.pop(1440, 1),
            Some(block(0, 1500)),
            "four classes up: within an eighth"
        );
        assert!(r.is_empty());
        assert_eq!(r.pop(REUSE_MAX, 1), None);
        r.push(block(32, REUSE_MAX as u32));
        assert_eq!(r.pop(REUSE_MAX, 1), Some(block(32, REUSE_MAX as u32)));
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
