//! The WebAssembly segment source: pages of linear memory.
//!
//! Linear memory only grows (`memory.grow`); nothing can give it back to the
//! host. So a freed block is not returned anywhere: it goes into a free list
//! of this module's own ([`FreeRanges`]: best fit, neighbours merged), and the
//! next block is cut from there before memory grows again. The free list is
//! independent of the global allocator, so the heap's footprint is the same
//! whether the program's allocator is dlmalloc (Rust's default) or one that
//! fragments (wee_alloc).
//!
//! Memory grows by whole 64 KiB wasm pages, as little as needed: a free range
//! that ends where memory ends is extended instead of left behind. Blocks are
//! cut at [`PAGE`] granularity. When `memory.grow` fails (the 4 GiB limit, or
//! the host's), `map` returns `None`, which the heap reports as
//! `AllocError::OutOfMemory`.
//!
//! The free list sits behind a `Mutex`: free on single-threaded wasm, and
//! sound if the crate is built for wasm threads. Its bookkeeping `Vec` grows
//! with `try_reserve`: if even that fails, `map` says `None` and `unmap`
//! leaks the block rather than aborting.

#[cfg(target_arch = "wasm32")]
use core::ptr::NonNull;
#[cfg(target_arch = "wasm32")]
use std::sync::{Mutex, PoisonError};

#[cfg(target_arch = "wasm32")]
use super::PAGE;

/// The unit of `memory.grow`.
#[cfg(target_arch = "wasm32")]
const WASM_PAGE: u64 = 65536;

/// Free blocks of linear memory owned by this source.
#[cfg(target_arch = "wasm32")]
static POOL: Mutex<FreeRanges> = Mutex::new(FreeRanges::new());

/// Takes `len` bytes (a non-zero multiple of [`PAGE`]) from the free list,
/// growing linear memory if no free range fits. `None` if memory cannot grow.
#[cfg(target_arch = "wasm32")]
pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
    use core::arch::wasm32::{memory_grow, memory_size};

    debug_assert!(len > 0 && len.is_multiple_of(PAGE));
    let len = len as u64;
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    for attempt in 0..2 {
        if let Some(addr) = pool.take(len) {
            return NonNull::new(core::ptr::with_exposed_provenance_mut(addr as usize));
        }
        // Grow by what the free range at the end of memory lacks (the first
        // time; if another allocator grew memory meanwhile, by all of `len`).
        let end = memory_size::<0>() as u64 * WASM_PAGE;
        let tail = if attempt == 0 {
            pool.free_at_end(end)
        } else {
            0
        };
        let pages = (len - tail).div_ceil(WASM_PAGE);
        let old = memory_grow::<0>(usize::try_from(pages).ok()?);
        if old == usize::MAX {
            return None;
        }
        if !pool.give(old as u64 * WASM_PAGE, pages * WASM_PAGE) {
            return None; // no room to record the new pages: they stay unused
        }
    }
    let addr = pool.take(len)?;
    NonNull::new(core::ptr::with_exposed_provenance_mut(addr as usize))
}

/// Puts a block from [`map`] back in the free list, for the next `map`.
///
/// # Safety
/// `base`/`len` must come from [`map`] (with this `len`) and not be given
/// back yet, and nothing may access the block afterwards.
#[cfg(target_arch = "wasm32")]
pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    // If the free list cannot grow, the block is leaked: memory is not lost
    // to anyone else, and nothing aborts.
    let _ = pool.give(base.as_ptr().addr() as u64, len as u64);
}

/// Pages cannot be given back while the block stays allocated here: always
/// false (the block goes back whole, on `unmap`).
///
/// # Safety
/// None needed (nothing is done); the signature matches the other sources.
#[cfg(target_arch = "wasm32")]
pub(super) unsafe fn discard(_ptr: NonNull<u8>, _len: usize) -> bool {
    false
}

/// A free block: `[start, start + len)` of linear memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u64,
    len: u64,
}

/// Free blocks, by address. Addresses are `u64` so that a block ending at
/// 4 GiB (the end of a full wasm32 memory) is no special case.
///
/// Invariant: `ranges` is sorted by `start`, no two ranges overlap or touch
/// (touching ones are merged), and none is empty.
#[derive(Debug)]
pub(super) struct FreeRanges {
    ranges: Vec<Range>,
}

impl FreeRanges {
    /// No free memory.
    pub(super) const fn new() -> FreeRanges {
        FreeRanges { ranges: Vec::new() }
    }

    /// Takes `len` bytes from the smallest free range that holds them (the
    /// lowest such on a tie), from its start. `None` if none is big enough.
    pub(super) fn take(&mut self, len: u64) -> Option<u64> {
        let (i, _) = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len >= len)
            .min_by_key(|(_, r)| r.len)?;
        let r = &mut self.ranges[i];
        let start = r.start;
        r.start += len;
        r.len -= len;
        if r.len == 0 {
            self.ranges.remove(i);
        }
        Some(start)
    }

    /// Returns `[start, start + len)` (free, not overlapping any free range)
    /// to the list, merged with the ranges it touches. `false` if the list
    /// needed room and could not get it (then nothing changed).
    pub(super) fn give(&mut self, start: u64, len: u64) -> bool {
        debug_assert!(len > 0);
        let i = self.ranges.partition_point(|r| r.start < start);
        debug_assert!(i == 0 || self.ranges[i - 1].start + self.ranges[i - 1].len <= start);
        debug_assert!(i == self.ranges.len() || start + len <= self.ranges[i].start);
        let joins_prev = i > 0 && self.ranges[i - 1].start + self.ranges[i - 1].len == start;
        let joins_next = i < self.ranges.len() && start + len == self.ranges[i].start;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].len += len + self.ranges[i].len;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].len += len,
            (false, true) => {
                self.ranges[i].start = start;
                self.ranges[i].len += len;
            }
            (false, false) => {
                if self.ranges.try_reserve(1).is_err() {
                    return false;
                }
                self.ranges.insert(i, Range { start, len });
            }
        }
        true
    }

    /// The length of the free range that ends exactly at `end`, or 0.
    pub(super) fn free_at_end(&self, end: u64) -> u64 {
        self.ranges
            .last()
            .filter(|r| r.start + r.len == end)
            .map_or(0, |r| r.len)
    }

    /// Free bytes in all ranges.
    #[cfg(test)]
    fn free_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 4096;

    #[test]
    fn empty_lists_have_nothing_to_take() {
        let mut f = FreeRanges::new();
        assert_eq!(f.take(K), None);
        assert_eq!(f.free_at_end(1 << 20), 0);
    }

    #[test]
    fn neighbours_merge_on_both_sides() {
        let mut f = FreeRanges::new();
        assert!(f.give(0, K));
        assert!(f.give(2 * K, K));
        assert_eq!(f.ranges.len(), 2);
        assert!(f.give(K, K)); // fills the gap: one range
        assert_eq!(
            f.ranges,
            [Range {
                start: 0,
                len: 3 * K
            }]
        );
        assert_eq!(f.take(3 * K), Some(0));
        assert!(f.ranges.is_empty());
    }

    #[test]
    fn the_smallest_range_that_fits_is_taken() {
        let mut f = FreeRanges::new();
        assert!(f.give(0, 8 * K));
        assert!(f.give(16 * K, 2 * K));
        assert!(f.give(32 * K, 4 * K));
        assert_eq!(f.take(3 * K), Some(32 * K));
        assert_eq!(f.take(2 * K), Some(16 * K));
        assert_eq!(f.take(K), Some(35 * K));
        assert_eq!(f.take(9 * K), None);
        assert_eq!(f.free_bytes(), 8 * K);
    }

    #[test]
    fn a_range_ending_at_4_gib_is_ordinary() {
        let top = 1u64 << 32;
        let mut f = FreeRanges::new();
        assert!(f.give(top - 16 * K, 16 * K));
        assert_eq!(f.free_at_end(top), 16 * K);
        assert_eq!(f.take(16 * K), Some(top - 16 * K));
        assert_eq!(f.free_at_end(top), 0);
    }

    /// The seed's buffer loop, jittered, against the free list alone: memory
    /// needed stays within a few buffers (here: grown only when nothing fits).
    #[test]
    fn a_jittered_buffer_loop_stays_bounded() {
        let mut f = FreeRanges::new();
        let mut end = 0u64;
        let mut grow_take = |f: &mut FreeRanges, len: u64| {
            f.take(len).unwrap_or_else(|| {
                let tail = f.free_at_end(end);
                let grown = (len - tail).div_ceil(16 * K) * 16 * K;
                assert!(f.give(end, grown));
                end += grown;
                f.take(len).expect("grown to fit")
            })
        };
        let mut x = 12345u64;
        let mut size = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (192 + (x >> 33) % 128) * K // 768..1280 KiB
        };
        let first = size();
        let mut prev = (grow_take(&mut f, first), first);
        for _ in 0..if cfg!(miri) { 300 } else { 10_000 } {
            let len = size();
            let next = (grow_take(&mut f, len), len);
            assert!(f.give(prev.0, prev.1));
            prev = next;
        }
        assert!(end <= 4 * 1280 * 1024, "grew to {end}");
    }
}
