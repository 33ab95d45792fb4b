//! [`LargeObjects`]: objects too big for a segment (or aligned above a
//! page), each in a [`Mapping`] of its own, and the *spare* mappings kept
//! after a free so that a loop which frees a buffer and allocates the next
//! skips `mmap`, page faults and `munmap`.
//!
//! One rule decides whether a spare can take an object: [`Mapping::fits`],
//! the bytes usable from the mapping's aligned start — never its length
//! alone (an over-aligned mapping's usable bytes start part-way in).

use crate::mapping::Mapping;

/// How many freed large-object mappings are kept for reuse.
const SPARE_MAPPINGS: usize = 2;

/// The large objects of one heap and the spare mappings.
#[derive(Debug, Default)]
pub(crate) struct LargeObjects {
    /// Mappings of live (or dying) large objects, by id; `None` for free ids.
    mappings: Vec<Option<Mapping>>,
    /// The slice length of each large object, by id (the slot has no room for it).
    metas: Vec<usize>,
    free_ids: Vec<u32>,
    /// Mappings of freed large objects, oldest first, at most [`SPARE_MAPPINGS`].
    spare: Vec<Mapping>,
    /// Invariant: the number of `Some` entries in `mappings`.
    count: usize,
}

impl LargeObjects {
    /// Number of large objects.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the spare mappings.
    pub(crate) fn spare_bytes(&self) -> usize {
        self.spare.iter().map(Mapping::len).sum()
    }

    /// Bytes of bookkeeping.
    pub(crate) fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        self.mappings.capacity() * size_of::<Option<Mapping>>()
            + self.metas.capacity() * size_of::<usize>()
            + self.free_ids.capacity() * size_of::<u32>()
            + self.spare.capacity() * size_of::<Mapping>()
    }

    /// Takes a spare mapping that `size` bytes aligned to `align` fit in and
    /// that is as long as a fresh mapping for them would be (so the heap's
    /// figures do not depend on which mapping an object got).
    pub(crate) fn take_spare(&mut self, size: usize, align: usize) -> Option<Mapping> {
        let fresh = Mapping::length_for(size, align)?;
        let i = self
            .spare
            .iter()
            .position(|m| m.len() == fresh && m.fits(size, align))?;
        Some(self.spare.swap_remove(i))
    }

    /// Whether every id below `max` is taken.
    pub(crate) fn is_full(&self, max: usize) -> bool {
        self.free_ids.is_empty() && self.mappings.len() >= max
    }

    /// Files `mapping` as the home of a new large object; returns its id.
    pub(crate) fn insert(&mut self, mapping: Mapping) -> u32 {
        self.count += 1;
        match self.free_ids.pop() {
            Some(id) => {
                debug_assert!(self.mappings[id as usize].is_none());
                self.mappings[id as usize] = Some(mapping);
                id
            }
            None => {
                self.mappings.push(Some(mapping));
                self.metas.push(0);
                (self.mappings.len() - 1) as u32
            }
        }
    }

    /// The first byte and slice length of large object `id` (no panic).
    #[inline]
    pub(crate) fn try_get(&self, id: usize) -> Option<(core::ptr::NonNull<u8>, usize)> {
        Some((
            self.mappings.get(id)?.as_ref()?.start(),
            *self.metas.get(id)?,
        ))
    }

    /// Records the slice length of large object `id`.
    pub(crate) fn set_meta(&mut self, id: usize, meta: usize) {
        self.metas[id] = meta;
    }

    /// The large object `id` is gone: keep its mapping as a spare. Returns
    /// the oldest spare if one had to make room (the caller unmaps it).
    pub(crate) fn remove_to_spare(&mut self, id: u32) -> Option<Mapping> {
        let mapping = self.mappings[id as usize]
            .take()
            .expect("large object's mapping exists");
        self.free_ids.push(id);
        self.count -= 1;
        let evicted = (self.spare.len() == SPARE_MAPPINGS).then(|| self.spare.remove(0));
        self.spare.push(mapping);
        evicted
    }

    /// Unmaps the spare mappings. Returns their bytes.
    pub(crate) fn release_spares(&mut self) -> usize {
        let bytes = self.spare_bytes();
        self.spare.clear();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::PAGE;

    #[test]
    fn a_spare_is_reused_only_where_the_object_fits_from_its_aligned_start() {
        let mut large = LargeObjects::default();
        // An over-aligned mapping usually starts part-way in; make sure one
        // does (holding on to the others, so each attempt gets a new address).
        let mut tried = Vec::new();
        let over = loop {
            let m = Mapping::new(300 * 1024, 1 << 16).unwrap();
            if m.usable() < m.len() {
                break m;
            }
            assert!(tried.len() < 64, "no 64 KiB-aligned start part-way in");
            tried.push(m);
        };
        let len = over.len();
        let id = large.insert(over);
        assert!(large.remove_to_spare(id).is_none());
        // Same mapping length, page alignment: a fresh mapping would be `len`
        // bytes, but from the spare's start fewer than `len` are usable.
        // (Before the fix, the length alone decided, and this overflowed.)
        assert!(
            large.take_spare(len, 8).is_none(),
            "the spare's usable bytes decide, not its length"
        );
        // What fits from its start is reused.
        let m = large.take_spare(300 * 1024, 1 << 16).expect("fits");
        assert!(m.fits(300 * 1024, 1 << 16));
        assert_eq!(large.spare_bytes(), 0);
    }

    #[test]
    fn at_most_two_spares_are_kept_oldest_out() {
        let mut large = LargeObjects::default();
        let ids: Vec<u32> = (1..=3)
            .map(|i| large.insert(Mapping::new(i * PAGE, 8).unwrap()))
            .collect();
        assert_eq!(large.count(), 3);
        assert!(large.remove_to_spare(ids[0]).is_none());
        assert!(large.remove_to_spare(ids[1]).is_none());
        let evicted = large.remove_to_spare(ids[2]).expect("the oldest goes");
        assert_eq!(evicted.len(), PAGE);
        assert_eq!(large.spare_bytes(), 5 * PAGE);
        assert_eq!(large.release_spares(), 5 * PAGE);
        assert_eq!(large.count(), 0);
    }
}
