//! The slot table: one 12-byte [`Slot`] per object, plus retirement.
//!
//! A handle is a slotmap [`KeyData`] (a 32-bit index and a 32-bit version,
//! odd while the slot is occupied), but the table is our own: slotmap's
//! `SlotMap<Slot>` pads each entry to the value's alignment and keeps its
//! version beside it, which cannot get a slot with a pointer, a type and a
//! borrow word under 24 bytes. Here everything a sized object needs is
//! packed in 12 (see [`Loc`]). A slice's length does not fit: it is kept
//! beside the slot, in an array of lengths that a chunk of the table gets
//! when it first holds a slice, so only slices pay its 4 bytes.
//! docs/DESIGN.md, "Slots and handles", has the layout.
//!
//! Every insert and remove bumps a slot's version; a slot whose version would
//! wrap (after 2³¹ reuses) is *retired* instead of freed: it stays occupied
//! by a dead marker forever, so no old handle of it can ever read a value
//! again. That costs one slot per 2³¹ reuses of a slot.

use core::ptr::NonNull;

use slotmap::KeyData;

use crate::sync::atomic::{AtomicU16, Ordering};

/// Borrow word bit: the handle is dead; the value waits for its last guard.
/// With no pins left it marks a retired slot.
pub(crate) const ZOMBIE: u16 = 1 << 15;
/// Borrow word bit: one exclusive borrow (`RefMut`) is alive.
pub(crate) const EXCLUSIVE: u16 = 1 << 14;
/// Borrow word: mask of the shared-borrow count (at most 16 383 guards).
pub(crate) const SHARED: u16 = EXCLUSIVE - 1;

/// The type index of `()`, which every heap registers first: retired slots
/// carry it (no drop glue, no bytes).
pub(crate) const UNIT_TYPE: u16 = 0;

/// One object's entry: 12 bytes.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Slot {
    /// Odd while occupied (live, zombie or retired), even while vacant.
    version: u32,
    /// The pin state: `ZOMBIE | EXCLUSIVE | shared count`. Pinned iff
    /// `borrow & !ZOMBIE != 0`. See docs/DESIGN.md, "The pin protocol".
    pub(crate) borrow: AtomicU16,
    /// The stored type, an index into the heap's [`Types`](crate::types::Types).
    pub(crate) ty: u16,
    /// Where the bytes are. While vacant: the next vacant index in the
    /// chunk + 1 (0: none).
    pub(crate) loc: Loc,
}

#[cfg(not(loom))] // loom's atomics are bigger
const _: () = assert!(core::mem::size_of::<Slot>() == 12);

impl Slot {
    /// Whether the handle is dead (freed while pinned, or retired).
    #[inline]
    pub(crate) fn is_dead(&self) -> bool {
        self.borrow.load(Ordering::Relaxed) & ZOMBIE != 0
    }

    /// Whether some guard pins the object.
    #[inline]
    pub(crate) fn is_pinned(&self) -> bool {
        self.borrow.load(Ordering::Acquire) & !ZOMBIE != 0
    }
}

/// Where an object's bytes are, in 32 bits:
///
/// | value | meaning |
/// |---|---|
/// | below [`Loc::LARGE`] | bytes in a segment, at *granule address* `value`: byte `(value & mask) * GRANULE` of segment `value >> shift` |
/// | `LARGE + id`, below [`Loc::NOWHERE`] | large object `id`: a mapping of its own |
/// | [`Loc::NOWHERE`] | no bytes: a zero-sized value |
///
/// The segment's `shift` and `mask` follow from the segment size (the
/// [`Space`](crate::space::Space) keeps them): a granule address is the
/// byte address in the concatenation of all segments, over [`GRANULE`]. So
/// the segments of one heap hold at most `LARGE * GRANULE` bytes (about
/// 15.9 GiB), and objects in segments start at multiples of [`GRANULE`].
/// The slice length is not here: see [`Table::len`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc(u32);

/// Objects in segments start at multiples of this many bytes.
pub(crate) const GRANULE: usize = 4;

/// What a [`Loc`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Where {
    /// At granule address `granule` of the segments.
    Segment { granule: u32 },
    /// Large object `id`.
    Large { id: usize },
    /// No bytes.
    Nowhere,
}

impl Loc {
    /// Granule addresses are below this; large ids start here.
    pub(crate) const LARGE: u32 = 0xFE00_0000;
    /// The zero-sized tag.
    pub(crate) const NOWHERE: u32 = u32::MAX;
    /// Large ids are below this.
    pub(crate) const MAX_LARGE: usize = (Loc::NOWHERE - Loc::LARGE) as usize;
    /// The zero-sized location.
    pub(crate) const ZERO_SIZED: Loc = Loc(Loc::NOWHERE);

    /// Bytes at granule address `granule` (below [`Loc::LARGE`]).
    #[inline]
    pub(crate) fn segment(granule: u32) -> Loc {
        debug_assert!(granule < Loc::LARGE);
        Loc(granule)
    }

    #[inline]
    pub(crate) fn large(id: usize) -> Loc {
        debug_assert!(id < Loc::MAX_LARGE);
        Loc(Loc::LARGE + id as u32)
    }

    /// The granule address, if the bytes are in a segment.
    #[inline]
    pub(crate) fn granule(self) -> Option<u32> {
        (self.0 < Loc::LARGE).then_some(self.0)
    }

    /// The raw 32 bits: a granule address if below [`Loc::LARGE`].
    #[inline]
    pub(crate) fn bits(self) -> u32 {
        self.0
    }

    #[inline]
    pub(crate) fn decode(self) -> Where {
        match self.0 {
            g if g < Loc::LARGE => Where::Segment { granule: g },
            Loc::NOWHERE => Where::Nowhere,
            tag => Where::Large {
                id: (tag - Loc::LARGE) as usize,
            },
        }
    }
}

/// What an occupied slot holds: the type, the location and the slice length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    /// The type index.
    pub(crate) ty: u16,
    /// Where the bytes are.
    pub(crate) loc: Loc,
    /// The slice length (0 for a sized value; for a large object, kept
    /// with its mapping instead, so 0 here).
    pub(crate) len: usize,
}

/// Slots per chunk of the table (12 KiB).
const CHUNK: usize = 1024;

/// [`CHUNK`] slots at a stable address, owned by the table.
///
/// Invariant: `0` points to `CHUNK` initialised slots from a `Box<[Slot]>`
/// that this value owns. References are made one slot at a time (shared,
/// or exclusive through `&mut Chunk`), never to the whole chunk mutably, so
/// that a guard's pointer to the borrow word of *its* slot stays valid while
/// other slots of the chunk change (I11 in docs/DESIGN.md).
#[derive(Debug)]
struct Chunk(NonNull<Slot>);

// SAFETY: a chunk owns its slots, which are Send and Sync (plain integers and
// an atomic); the pointer has no thread affinity.
unsafe impl Send for Chunk {}
// SAFETY: as above; `&Chunk` gives only shared access to the slots.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// A chunk of vacant slots whose versions start at `floor` (even).
    fn new(floor: u32) -> Chunk {
        let slots: Box<[Slot]> = (0..CHUNK)
            .map(|_| Slot {
                version: floor,
                borrow: AtomicU16::new(0),
                ty: UNIT_TYPE,
                loc: Loc(0),
            })
            .collect();
        Chunk(NonNull::new(Box::into_raw(slots).cast::<Slot>()).expect("a box is non-null"))
    }

    #[inline]
    fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < CHUNK);
        // SAFETY: `i < CHUNK` slots, initialised and owned (type invariant);
        // an exclusive reference to one needs `&mut self`, so none is alive.
        unsafe { &*self.0.as_ptr().add(i) }
    }

    #[inline]
    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        debug_assert!(i < CHUNK);
        // SAFETY: as in `slot`; `&mut self` makes this the only reference
        // made through the chunk. Guards hold pointers only into pinned slots,
        // which the table never changes through `&mut` (I11).
        unsafe { &mut *self.0.as_ptr().add(i) }
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        (0..CHUNK).map(|i| self.slot(i))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let slots = core::ptr::slice_from_raw_parts_mut(self.0.as_ptr(), CHUNK);
        // SAFETY: the pointer and length of the `Box<[Slot]>` made in `new`,
        // dropped once; a chunk is dropped only with no occupied slot (or with
        // the table), so no guard points into it (I11).
        drop(unsafe { Box::from_raw(slots) });
    }
}

/// What the table knows of one chunk of slots.
#[derive(Debug, Default, Clone, Copy)]
struct ChunkMeta {
    /// The first vacant slot on this chunk's free list, + 1 (0: none).
    free: u16,
    /// Slots never handed out since the chunk was materialized (they follow
    /// `CHUNK - fresh`; not on the free list).
    fresh: u16,
    /// Occupied slots.
    occupied: u16,
    /// The version every slot starts at when the chunk is materialized:
    /// above every version its slots had before it was released.
    floor: u32,
}

/// The handle table: chunks of [`CHUNK`] slots. New objects take a slot in
/// the lowest chunk that has one vacant, so a table that shrinks keeps its
/// occupied slots together, and [`Table::release_vacant`] gives wholly
/// vacant chunks back.
#[derive(Debug)]
pub(crate) struct Table {
    /// `None`: released (every slot vacant; versions resume at `floor`).
    chunks: Vec<Option<Chunk>>,
    /// The slice lengths of chunk `c`'s slots, once it has held a slice
    /// (`None`: every length is 0). Lengths of segment slices are at most a
    /// quarter segment and those of zero-sized slices at most `u32::MAX`
    /// (large objects keep theirs with the mapping).
    lens: Vec<Option<Box<[u32]>>>,
    meta: Vec<ChunkMeta>,
    /// Bit `c` is set iff chunk `c` has a vacant slot.
    vacant: Vec<u64>,
    /// No word of `vacant` below this one has a bit set.
    vacant_from: usize,
    /// Occupied slots: live, zombie and retired.
    occupied: usize,
    /// Slots retired for good.
    retired: usize,
    /// Slots freed while pinned, waiting for their last guard.
    zombies: usize,
    /// A slot whose version is at least this is retired instead of freed.
    retire_at: u32,
}

/// The index and version of a key.
#[inline]
fn split(key: KeyData) -> (usize, u32) {
    let bits = key.as_ffi();
    (bits as u32 as usize, (bits >> 32) as u32)
}

/// The table index of `key`.
#[inline]
pub(crate) fn index_of(key: KeyData) -> usize {
    split(key).0
}

/// The key of the slot at `index` with `version`.
#[inline]
fn key_of(index: usize, version: u32) -> KeyData {
    KeyData::from_ffi((u64::from(version) << 32) | index as u64)
}

impl Table {
    pub(crate) fn new() -> Table {
        Table {
            chunks: Vec::new(),
            lens: Vec::new(),
            meta: Vec::new(),
            vacant: Vec::new(),
            vacant_from: 0,
            occupied: 0,
            retired: 0,
            zombies: 0,
            retire_at: u32::MAX,
        }
    }

    /// Retire slots earlier than the version limit, so tests can reach it.
    #[cfg(test)]
    pub(crate) fn set_retire_at(&mut self, version: u32) {
        self.retire_at = version;
    }

    /// Whether the table cannot take another slot (indices are 32 bits).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.occupied >= u32::MAX as usize - CHUNK
    }

    fn set_vacant(&mut self, chunk: usize, on: bool) {
        let (w, bit) = (chunk / 64, 1u64 << (chunk % 64));
        if w >= self.vacant.len() {
            self.vacant.resize(w + 1, 0);
        }
        if on {
            self.vacant[w] |= bit;
            self.vacant_from = self.vacant_from.min(w);
        } else {
            self.vacant[w] &= !bit;
        }
    }

    /// The lowest chunk with a vacant slot, made ready to hand it out.
    fn chunk_with_room(&mut self) -> usize {
        let from = self.vacant_from;
        let found = self.vacant[from.min(self.vacant.len())..]
            .iter()
            .position(|&w| w != 0)
            .map(|i| from + i);
        self.vacant_from = found.unwrap_or(self.vacant.len());
        let found = found.map(|w| w * 64 + self.vacant[w].trailing_zeros() as usize);
        let c = match found {
            Some(c) => c,
            None => {
                self.chunks.push(None);
                self.lens.push(None);
                self.meta.push(ChunkMeta::default());
                self.set_vacant(self.chunks.len() - 1, true);
                self.chunks.len() - 1
            }
        };
        if self.chunks[c].is_none() {
            self.materialize(c);
        }
        c
    }

    /// Gives the released (or new) chunk `c` its slots again, all vacant.
    fn materialize(&mut self, c: usize) {
        debug_assert!(self.chunks[c].is_none());
        let floor = self.meta[c].floor;
        self.chunks[c] = Some(Chunk::new(floor));
        self.meta[c] = ChunkMeta {
            fresh: CHUNK as u16,
            floor,
            ..ChunkMeta::default()
        };
    }

    /// Slots with memory now: occupied ones and vacant ones ready to take an object.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count() * CHUNK
    }

    /// Makes room for `additional` more objects without the table growing.
    /// False (nothing done) if the table cannot hold that many (indices are 32 bits).
    pub(crate) fn reserve(&mut self, additional: usize) -> bool {
        let wanted = match self.occupied.checked_add(additional) {
            Some(n) if n <= u32::MAX as usize - CHUNK => n,
            _ => return false,
        };
        let mut capacity = self.capacity();
        let mut c = 0;
        while capacity < wanted {
            // The lowest released chunk first (lowest-first, as `insert`), else a new one.
            while c < self.chunks.len() && self.chunks[c].is_some() {
                c += 1;
            }
            if c == self.chunks.len() {
                self.chunks.push(None);
                self.lens.push(None);
                self.meta.push(ChunkMeta::default());
            }
            self.materialize(c);
            self.set_vacant(c, true);
            capacity += CHUNK;
        }
        true
    }

    /// The slot of `key`, to change (not while a guard may point to its word).
    #[inline]
    pub(crate) fn get_mut(&mut self, key: KeyData) -> Option<&mut Slot> {
        let (index, version) = split(key);
        self.at_mut(index).filter(|s| s.version == version)
    }

    /// The key of the first occupied slot at an index `>= from` whose slot
    /// passes `want`, and the index to search from next.
    pub(crate) fn next_occupied(
        &self,
        from: usize,
        want: impl Fn(&Slot) -> bool,
    ) -> Option<(KeyData, usize)> {
        (from..self.slots_len()).find_map(|i| {
            let s = self.slot_at(i as u32).filter(|s| want(s))?;
            Some((key_of(i, s.version), i + 1))
        })
    }

    /// Occupies a slot with an object of type `ty` at `loc` with slice
    /// length `len` (at most `u32::MAX`), unpinned. The table must not be
    /// [full](Table::is_full).
    #[inline]
    pub(crate) fn insert(&mut self, ty: u16, loc: Loc, len: usize) -> KeyData {
        debug_assert!(!self.is_full());
        let c = self.chunk_with_room();
        let meta = &mut self.meta[c];
        let chunk = self.chunks[c].as_mut().expect("made ready");
        let i = if meta.free != 0 {
            let i = usize::from(meta.free - 1);
            meta.free = chunk.slot(i).loc.0 as u16;
            i
        } else {
            let i = CHUNK - usize::from(meta.fresh);
            meta.fresh -= 1;
            i
        };
        meta.occupied += 1;
        let full = usize::from(meta.occupied) == CHUNK;
        let slot = chunk.slot_mut(i);
        debug_assert!(slot.version.is_multiple_of(2), "a vacant slot");
        slot.version = slot.version.wrapping_add(1);
        slot.ty = ty;
        slot.loc = loc;
        slot.borrow = AtomicU16::new(0);
        let key = key_of(c * CHUNK + i, slot.version);
        if full {
            self.set_vacant(c, false);
        }
        self.occupied += 1;
        self.set_len(c * CHUNK + i, len);
        key
    }

    /// The slice length kept for the slot at `index` (0 if none was).
    #[inline]
    pub(crate) fn len(&self, index: usize) -> usize {
        match self.lens.get(index / CHUNK) {
            Some(Some(lens)) => lens.get(index % CHUNK).map_or(0, |&n| n as usize),
            _ => 0,
        }
    }

    /// Keeps `len` (at most `u32::MAX`) as the slice length of the slot at
    /// `index`, a slot of a materialized chunk.
    #[inline]
    pub(crate) fn set_len(&mut self, index: usize, len: usize) {
        debug_assert!(u32::try_from(len).is_ok(), "slice lengths fit 32 bits");
        let lens = &mut self.lens[index / CHUNK];
        match lens {
            Some(lens) => lens[index % CHUNK] = len as u32,
            None if len == 0 => {}
            None => {
                let mut new = vec![0u32; CHUNK].into_boxed_slice();
                new[index % CHUNK] = len as u32;
                *lens = Some(new);
            }
        }
    }

    /// What the occupied slot of `key` holds.
    #[inline]
    pub(crate) fn held(&self, key: KeyData) -> Option<Held> {
        let slot = self.get(key)?;
        Some(Held {
            ty: slot.ty,
            loc: slot.loc,
            len: self.len(split(key).0),
        })
    }

    /// The slot at `index`, occupied or vacant, if its chunk is materialized.
    #[inline]
    fn at(&self, index: usize) -> Option<&Slot> {
        Some(
            self.chunks
                .get(index / CHUNK)?
                .as_ref()?
                .slot(index % CHUNK),
        )
    }

    #[inline]
    fn at_mut(&mut self, index: usize) -> Option<&mut Slot> {
        Some(
            self.chunks
                .get_mut(index / CHUNK)?
                .as_mut()?
                .slot_mut(index % CHUNK),
        )
    }

    /// The slot of `key`, whatever its state (live, zombie, retired).
    #[inline]
    pub(crate) fn get(&self, key: KeyData) -> Option<&Slot> {
        let (index, version) = split(key);
        self.at(index).filter(|s| s.version == version)
    }

    /// Counts a slot that the caller just marked [`ZOMBIE`].
    pub(crate) fn count_zombie(&mut self) {
        self.zombies += 1;
    }

    /// Vacates the slot of `key` (live or zombie) and returns what it held.
    /// If the version is exhausted, the slot is retired instead of vacated.
    pub(crate) fn remove(&mut self, key: KeyData) -> Option<Held> {
        let (index, version) = split(key);
        let retire = version >= self.retire_at;
        let (c, i) = (index / CHUNK, index % CHUNK);
        let next_free = self.meta.get(c).map_or(0, |m| m.free);
        let len = self.len(index);
        let slot = self.at_mut(index).filter(|s| s.version == version)?;
        let held = Held {
            ty: slot.ty,
            loc: slot.loc,
            len,
        };
        let was_zombie = slot.is_dead();
        // A zombie finishing (retired slots are never removed: their dead
        // marker has no pins, and no caller removes those).
        debug_assert!(!was_zombie || slot.borrow.load(Ordering::Relaxed) == ZOMBIE);
        if retire {
            slot.borrow = AtomicU16::new(ZOMBIE);
            slot.ty = UNIT_TYPE;
            slot.loc = Loc::ZERO_SIZED;
        } else {
            slot.version = version.wrapping_add(1);
            slot.loc = Loc(u32::from(next_free));
            let meta = &mut self.meta[c];
            meta.free = i as u16 + 1;
            meta.occupied -= 1;
            self.occupied -= 1;
            self.set_vacant(c, true);
        }
        if was_zombie {
            self.zombies -= 1;
        }
        if retire {
            self.retired += 1;
            self.set_len(index, 0);
        }
        Some(held)
    }

    /// Gives back the memory of every chunk with no occupied slot, keeping
    /// a version floor for each so no old handle can match a slot again.
    /// Returns the bytes released.
    pub(crate) fn release_vacant(&mut self) -> usize {
        let mut released = 0;
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let meta = &mut self.meta[c];
            let Some(slots) = chunk.as_ref() else {
                continue;
            };
            if meta.occupied != 0 {
                continue;
            }
            // Vacant versions are even; the next occupant gets floor + 1.
            meta.floor = slots.slots().map(|s| s.version).max().unwrap_or(0);
            debug_assert!(meta.floor.is_multiple_of(2));
            *chunk = None;
            released += CHUNK * core::mem::size_of::<Slot>();
            if self.lens[c].take().is_some() {
                released += CHUNK * core::mem::size_of::<u32>();
            }
        }
        // A released chunk keeps its entry and its floor (20 bytes per
        // 16 KiB of slots given back).
        released
    }

    /// Number of objects whose handles are live.
    pub(crate) fn live(&self) -> usize {
        self.occupied - self.retired - self.zombies
    }

    /// Bytes of the table itself.
    pub(crate) fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        let materialized = self.chunks.iter().filter(|c| c.is_some()).count();
        let lens = self.lens.iter().filter(|l| l.is_some()).count();
        materialized * CHUNK * size_of::<Slot>()
            + lens * CHUNK * size_of::<u32>()
            + self.chunks.capacity() * size_of::<Option<Chunk>>()
            + self.lens.capacity() * size_of::<Option<Box<[u32]>>>()
            + self.meta.capacity() * size_of::<ChunkMeta>()
            + self.vacant.capacity() * size_of::<u64>()
    }

    /// One past the highest slot index there is.
    pub(crate) fn slots_len(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// The occupied slot at `index`, whichever key occupies it.
    #[inline]
    pub(crate) fn slot_at(&self, index: u32) -> Option<&Slot> {
        self.at(index as usize).filter(|s| s.version % 2 == 1)
    }

    /// The occupied slot at `index`, whichever key occupies it.
    #[inline]
    pub(crate) fn slot_at_mut(&mut self, index: u32) -> Option<&mut Slot> {
        self.at_mut(index as usize).filter(|s| s.version % 2 == 1)
    }

    /// The occupied slots with indices in `range` (within [`Table::slots_len`]).
    pub(crate) fn range(
        &self,
        range: core::ops::Range<usize>,
    ) -> impl Iterator<Item = (u32, &Slot)> + '_ {
        range.filter_map(move |i| self.slot_at(i as u32).map(|s| (i as u32, s)))
    }

    /// All occupied slots: live, zombie and retired.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (KeyData, &Slot)> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(c, chunk)| Some((c, chunk.as_ref()?)))
            .flat_map(|(c, slots)| {
                slots
                    .slots()
                    .enumerate()
                    .filter(|(_, s)| s.version % 2 == 1)
                    .map(move |(i, s)| (key_of(c * CHUNK + i, s.version), s))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip() {
        let cases = [
            Loc::segment(0),
            Loc::segment(Loc::LARGE - 1),
            Loc::large(0),
            Loc::large(Loc::MAX_LARGE - 1),
            Loc::ZERO_SIZED,
        ];
        assert_eq!(
            cases.map(Loc::decode),
            [
                Where::Segment { granule: 0 },
                Where::Segment {
                    granule: Loc::LARGE - 1
                },
                Where::Large { id: 0 },
                Where::Large {
                    id: Loc::MAX_LARGE - 1
                },
                Where::Nowhere,
            ]
        );
    }

    #[test]
    fn slice_lengths_are_kept_beside_the_slots_of_chunks_that_hold_slices() {
        let mut t = Table::new();
        let sized = t.insert(1, Loc::segment(8), 0);
        let bare = t.metadata_bytes();
        let slice = t.insert(2, Loc::segment(16), 77);
        assert_eq!(t.metadata_bytes(), bare + CHUNK * 4, "the chunk's lengths");
        assert_eq!(t.held(slice).map(|h| h.len), Some(77));
        assert_eq!(t.held(sized).map(|h| h.len), Some(0));
        assert_eq!(
            t.remove(slice),
            Some(Held {
                ty: 2,
                loc: Loc::segment(16),
                len: 77
            })
        );
        // A slot reused by a sized value reads length 0, not its last one's.
        let again = t.insert(1, Loc::segment(24), 0);
        assert_eq!(split(again).0, split(slice).0);
        assert_eq!(t.held(again).map(|h| h.len), Some(0));
    }

    #[test]
    fn slots_come_from_the_lowest_chunk_with_room() {
        let mut t = Table::new();
        let keys: Vec<KeyData> = (0..3 * CHUNK)
            .map(|_| t.insert(1, Loc::ZERO_SIZED, 0))
            .collect();
        // Vacate one slot high up and one low down: the low one is taken first.
        t.remove(keys[2 * CHUNK + 5]).unwrap();
        t.remove(keys[7]).unwrap();
        let k = t.insert(1, Loc::ZERO_SIZED, 0);
        assert_eq!(split(k).0, 7);
        let k = t.insert(1, Loc::ZERO_SIZED, 0);
        assert_eq!(split(k).0, 2 * CHUNK + 5);
    }

    #[test]
    fn wholly_vacant_chunks_are_released_and_old_handles_stay_stale() {
        let mut t = Table::new();
        let keys: Vec<KeyData> = (0..3 * CHUNK)
            .map(|_| t.insert(1, Loc::ZERO_SIZED, 0))
            .collect();
        let full = t.metadata_bytes();
        // Empty the middle chunk, and all but one slot of the last.
        for k in &keys[CHUNK..3 * CHUNK - 1] {
            t.remove(*k).unwrap();
        }
        assert_eq!(t.release_vacant(), CHUNK * 12);
        assert!(t.metadata_bytes() <= full - CHUNK * 12);
        for k in &keys[CHUNK..2 * CHUNK] {
            assert!(t.get(*k).is_none(), "a released slot is vacant");
        }
        // The released chunk comes back when the lower ones are full; its
        // slots start above every version they had.
        let again: Vec<KeyData> = (0..CHUNK)
            .map(|_| t.insert(2, Loc::ZERO_SIZED, 0))
            .collect();
        assert!(again
            .iter()
            .all(|k| (CHUNK..2 * CHUNK).contains(&split(*k).0)));
        for (old, new) in keys[CHUNK..2 * CHUNK].iter().zip(&again) {
            assert!(split(*new).1 > split(*old).1);
            assert!(t.get(*old).is_none());
        }
        assert_eq!(t.live(), CHUNK + CHUNK + 1);
    }

    #[test]
    fn vacated_slots_are_reused_with_a_new_version() {
        let mut t = Table::new();
        let a = t.insert(1, Loc::ZERO_SIZED, 0);
        let b = t.insert(1, Loc::ZERO_SIZED, 1);
        assert_eq!(
            t.remove(a),
            Some(Held {
                ty: 1,
                loc: Loc::ZERO_SIZED,
                len: 0
            })
        );
        assert!(t.get(a).is_none() && t.remove(a).is_none());
        let c = t.insert(2, Loc::ZERO_SIZED, 2);
        assert_eq!(split(c).0, split(a).0, "the vacant slot is reused");
        assert_ne!(c, a);
        assert_eq!(t.get(c).map(|s| s.ty), Some(2));
        assert_eq!((t.live(), t.iter().count()), (2, 2));
        assert!(t.get(b).is_some());
    }
}
