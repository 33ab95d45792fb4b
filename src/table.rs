//! The slot table: one 12-byte [`Slot`] per object, plus retirement.
//!
//! A handle is a slotmap [`KeyData`] (a 32-bit index and a 32-bit version,
//! odd while the slot is occupied), but the table is our own: slotmap's
//! `SlotMap<Slot>` pads each entry to the value's alignment and keeps its
//! version beside it, which cannot get a slot with a pointer, a type and a
//! borrow word under 24 bytes. Here everything a sized object needs is
//! packed in 12 (see [`Loc`]). A slice's length does not fit: a short
//! slice's is said by its type index (one per type and length, see
//! `types.rs`); a longer one's is kept beside the slot, in an array of
//! lengths that a chunk of the table gets when it first holds such a
//! slice, so only those pay its 4 bytes.
//! docs/DESIGN.md, "Slots and handles", has the layout.
//!
//! Every insert and remove bumps a slot's version; a slot whose version would
//! wrap (after 2³¹ reuses) is *retired* instead of freed: it stays occupied
//! by a dead marker forever, so no old handle of it can ever read a value
//! again. That costs one slot per 2³¹ reuses of a slot.

use core::fmt;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use slotmap::KeyData;

use crate::mapping::{Pool, Reservation, PAGE};
use crate::sync::atomic::{AtomicU16, Ordering};
use crate::types::NO_LEN;

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
    /// A vacant slot at `version` (even).
    fn vacant(version: u32) -> Slot {
        debug_assert!(version.is_multiple_of(2));
        Slot {
            version,
            borrow: AtomicU16::new(0),
            ty: UNIT_TYPE,
            loc: Loc(0),
        }
    }

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
    /// with its mapping instead, so 0 here). 32 bits, as the table keeps
    /// it: a `Held` then fits two registers, and functions return it in
    /// them rather than through memory. The table's own `Held`s carry what
    /// it keeps: 0 for a short slice, whose type index says the length
    /// (`Types::len_or` gives the real one).
    pub(crate) len: u32,
}

/// Slots per chunk of the table (12 KiB).
const CHUNK: usize = 1024;

/// A chunk with at most this many occupied slots is kept sparse by
/// [`Table::release_vacant`] (if no guard pins one of them).
const SPARSE_AT: usize = CHUNK / 4;

/// The address of a dense chunk's slots, in [`Table::dense`].
#[derive(Clone, Copy, Debug)]
struct SlotPtr(NonNull<Slot>);

// SAFETY: a copy of a pointer that the table's chunks own (`Chunk` is Send
// and Sync); it is only followed through `&Table` (shared slots) or
// `&mut Table`.
unsafe impl Send for SlotPtr {}
// SAFETY: as above.
unsafe impl Sync for SlotPtr {}

/// Words of a chunk's presence bitmap.
const WORDS: usize = CHUNK / 64;

/// Which slots a sparse chunk keeps: bit `i % 64` of `bits[i / 64]` for
/// slot `i`, and the number of bits set in the words before each word.
#[derive(Debug)]
struct Present {
    bits: [u64; WORDS],
    before: [u16; WORDS],
}

impl Present {
    /// The position of slot `i` among the kept ones, if it is kept. Out of
    /// line: lookups in dense chunks, the common case, stay short.
    #[cold]
    #[inline(never)]
    fn position(&self, i: usize) -> Option<usize> {
        let (w, bit) = (i / 64, i % 64);
        let word = *self.bits.get(w)?;
        if word & (1 << bit) == 0 {
            return None;
        }
        let below = word & ((1u64 << bit) - 1);
        Some(usize::from(self.before[w]) + below.count_ones() as usize)
    }
}

/// `len` values of `T` (a type without drop glue) at a stable address: in
/// a block of the table's [`Pool`] for `T` when there are [`CHUNK`] of them
/// (a dense chunk's slots or lengths: whole pages, which go back to the OS
/// exactly when the block goes back to the pool, where memory from `malloc`
/// may stay in malloc's arena), else (a sparse chunk's few, or if the pool
/// cannot map) in a box.
///
/// Invariant: `ptr` points to `len` initialised values, in a block of the
/// pool it was made with if `pooled`, else in a `Box<[T]>` that this value
/// owns. A pooled block goes back with [`Block::free`]; dropped instead, its
/// memory stays taken in the pool until the pool drops (a leak, never a
/// dangling pointer: the table drops its blocks before its pools).
struct Block<T> {
    ptr: NonNull<T>,
    len: usize,
    pooled: bool,
}

// SAFETY: a block owns its values; the pointer has no thread affinity.
unsafe impl<T: Send> Send for Block<T> {}
// SAFETY: `&Block` gives only shared access to the values.
unsafe impl<T: Sync> Sync for Block<T> {}

/// The bytes of a pool block for [`CHUNK`] values of `T`.
const fn block_bytes<T>() -> usize {
    (CHUNK * size_of::<T>()).next_multiple_of(PAGE)
}

/// Where [`Block`]s of [`CHUNK`] values come from: whole pages, each block
/// owned by whoever took it until it is given back.
trait Blocks {
    /// The bytes of a block.
    fn block(&self) -> usize;

    /// A block for chunk `c`, of unspecified contents, or `None` (then the
    /// values go in a box).
    fn take(&mut self, c: usize) -> Option<NonNull<u8>>;

    /// Gives back a block from [`Blocks::take`].
    ///
    /// # Safety
    /// `ptr` came from `take` on `self`, was not given back since, and
    /// nothing uses its memory afterwards.
    unsafe fn give(&mut self, ptr: NonNull<u8>);
}

impl Blocks for Pool {
    fn block(&self) -> usize {
        Pool::block(self)
    }

    fn take(&mut self, _c: usize) -> Option<NonNull<u8>> {
        Pool::take(self)
    }

    unsafe fn give(&mut self, ptr: NonNull<u8>) {
        // SAFETY: the caller's promise is `Pool::give`'s.
        unsafe { Pool::give(self, ptr) }
    }
}

/// Chunks whose slots can live in the [flat range](SlotBlocks): 2¹⁴ chunks,
/// 16 M slots, 192 MiB of address space (not memory: only what is used
/// becomes resident; but it counts against an address-space limit such as
/// `ulimit -v`, so it is not larger). Chunks past them live in the pool.
/// (Two in unit tests, so that their tables have chunks of both kinds.)
const FLAT_CHUNKS: usize = if cfg!(test) { 2 } else { 1 << 14 };

/// Where dense chunks' slots live. Where the target can reserve address
/// space ([`Reservation`]), chunk `c < FLAT_CHUNKS` keeps its slots at a
/// fixed place, `base + c * CHUNK` slots, so that a lookup finds a slot by
/// its index alone (no load of the chunk's address first); other chunks,
/// and every chunk elsewhere, take blocks from a [`Pool`].
///
/// Invariant (I15 in docs/DESIGN.md): below `slots`, the flat range is
/// readable, and the slots of chunk `c` there are chunk `c`'s own while it
/// is dense with a flat block, else all zero bytes (every version 0, which
/// no key has: key versions are odd). So a slot read there whose version
/// is a key's is that key's slot.
#[derive(Debug)]
struct SlotBlocks {
    /// The range, once the first chunk asked for it (`None` before, and
    /// for good where the target cannot reserve).
    flat: Option<Reservation>,
    /// Whether the range was asked for.
    tried: bool,
    /// The range's first slot (dangling while there is no range).
    base: NonNull<Slot>,
    /// Slots of the range that can be read: a multiple of `CHUNK`.
    slots: usize,
    /// Blocks of the range handed out.
    taken: usize,
    pool: Pool,
}

// SAFETY: `base` is a copy of the reservation's address, which this value
// owns; it is followed only through `&Table` or `&mut Table`.
unsafe impl Send for SlotBlocks {}
// SAFETY: as above.
unsafe impl Sync for SlotBlocks {}

impl SlotBlocks {
    fn new() -> SlotBlocks {
        SlotBlocks {
            flat: None,
            tried: false,
            base: NonNull::dangling(),
            slots: 0,
            taken: 0,
            pool: Pool::new(block_bytes::<Slot>()),
        }
    }

    /// The slot at `index` of the flat range, if that part can be read: the
    /// slot of a dense chunk's own, or a zero slot (I15).
    #[inline]
    fn flat(&self, index: usize) -> Option<&Slot> {
        if Reservation::SUPPORTED && index < self.slots {
            // SAFETY: below `slots` the range is readable, and holds slots or
            // zero bytes, a valid (vacant) slot (I15); the table changes them
            // only through `&mut`, as any chunk's.
            Some(unsafe { &*self.base.as_ptr().add(index) })
        } else {
            None
        }
    }

    /// Whether the slot at `index` of the flat range can be read and its
    /// version passes `keep`. The version is read through a pointer, so
    /// that no reference is made to a slot that `keep` turns down (it may be
    /// pinned, its borrow word in a guard's hands, and the caller is about
    /// to take `&mut`). With `keep` true only of odd versions, a slot that
    /// passes is a dense chunk's own (I15).
    #[inline]
    fn flat_keeps(&self, index: usize, keep: impl Fn(u32) -> bool) -> bool {
        if !(Reservation::SUPPORTED && index < self.slots) {
            return false;
        }
        // SAFETY: below `slots` the range is readable and holds slots (a
        // dense chunk's, or zeros: I15). The version is not the borrow word,
        // the only field a guard writes, so this read races with nothing.
        keep(unsafe { (*self.base.as_ptr().add(index)).version })
    }

    /// [`SlotBlocks::flat`], to change: for a slot that
    /// [`SlotBlocks::flat_keeps`] let through.
    #[inline]
    fn flat_mut(&mut self, index: usize) -> Option<&mut Slot> {
        if !(Reservation::SUPPORTED && index < self.slots) {
            return None;
        }
        // The table changes slots only through `&mut Table`, which the
        // caller holds (`&mut self` is part of it), and guards point only
        // into pinned slots, which the table never changes through `&mut`.
        // SAFETY: readable slots below `slots` (I15), no other reference
        // to this one (I11).
        Some(unsafe { &mut *self.base.as_ptr().add(index) })
    }

    /// Bytes of blocks handed out and of free pool blocks still resident.
    fn resident(&self) -> usize {
        self.taken * block_bytes::<Slot>() + self.pool.resident()
    }
}

impl Blocks for SlotBlocks {
    fn block(&self) -> usize {
        block_bytes::<Slot>()
    }

    fn take(&mut self, c: usize) -> Option<NonNull<u8>> {
        const { assert!(block_bytes::<Slot>() == CHUNK * size_of::<Slot>()) };
        if c < FLAT_CHUNKS {
            if !self.tried {
                self.tried = true;
                self.flat = Reservation::new(FLAT_CHUNKS * block_bytes::<Slot>());
                if let Some(flat) = &self.flat {
                    self.base = flat.base().cast();
                }
            }
            if let Some(flat) = &mut self.flat {
                let block = block_bytes::<Slot>();
                let (start, end) = (c * block, (c + 1) * block);
                if flat.commit(end) {
                    self.slots = flat.committed() / size_of::<Slot>();
                    self.taken += 1;
                    // SAFETY: `end` is within the range (c < FLAT_CHUNKS).
                    return Some(unsafe { flat.base().add(start) });
                }
            }
        }
        self.pool.take()
    }

    unsafe fn give(&mut self, ptr: NonNull<u8>) {
        if let Some(flat) = &self.flat {
            let offset = ptr
                .as_ptr()
                .addr()
                .wrapping_sub(flat.base().as_ptr().addr());
            if offset < flat.len() {
                debug_assert!(offset.is_multiple_of(self.block()));
                self.taken -= 1;
                // SAFETY: the block came from `take` (caller): committed whole
                // pages of the range, which nobody uses any more. They read
                // as zeros again, as I15 wants of a chunk that is not dense.
                unsafe { flat.reset(offset, self.block()) };
                return;
            }
        }
        // SAFETY: not the range's, so the pool's (caller).
        unsafe { self.pool.give(ptr) }
    }
}

impl<T> Block<T> {
    /// A block of `len` values, the `i`-th `init(i)`, for chunk `c`; from
    /// `pool` (whose blocks are [`block_bytes::<T>`]) if `len` is [`CHUNK`].
    fn new(
        len: usize,
        c: usize,
        pool: &mut impl Blocks,
        mut init: impl FnMut(usize) -> T,
    ) -> Block<T> {
        const { assert!(!core::mem::needs_drop::<T>() && align_of::<T>() <= PAGE) };
        debug_assert_eq!(pool.block(), block_bytes::<T>());
        if len == CHUNK {
            if let Some(start) = pool.take(c) {
                let ptr = start.cast::<T>();
                for i in 0..len {
                    // SAFETY: the pool's block has room for `CHUNK` `T`s
                    // (`block_bytes`), page-aligned, and is ours alone.
                    unsafe { ptr.add(i).write(init(i)) };
                }
                return Block {
                    ptr,
                    len,
                    pooled: true,
                };
            }
        }
        let boxed: Box<[T]> = (0..len).map(init).collect();
        Block {
            ptr: NonNull::new(Box::into_raw(boxed).cast::<T>()).expect("a box is non-null"),
            len,
            pooled: false,
        }
    }

    /// Bytes the block takes outside its pool (a pool counts its own).
    fn boxed_bytes(&self) -> usize {
        if self.pooled {
            0
        } else {
            self.len * size_of::<T>()
        }
    }

    /// Gives the block's memory back (to `pool`, the one it was made with,
    /// if it is pooled).
    fn free(self, pool: &mut impl Blocks) {
        if self.pooled {
            // SAFETY: a pooled block came from `pool` (caller) and goes back
            // once (`self` is consumed, and `Drop` leaves pooled blocks alone).
            unsafe { pool.give(self.ptr.cast()) };
        }
    }

    /// The values, moved out (the block's memory goes back, to `pool` if
    /// it is pooled).
    fn into_vec(self, pool: &mut impl Blocks) -> Vec<T> {
        let values = (0..self.len)
            // SAFETY: `i < len` initialised values (type invariant), each read
            // once; the block then frees its memory without dropping them
            // again (no drop glue).
            .map(|i| unsafe { self.ptr.add(i).read() })
            .collect();
        self.free(pool);
        values
    }
}

impl Block<u32> {
    fn as_slice(&self) -> &[u32] {
        // SAFETY: `len` initialised values (type invariant), shared with `&self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as above, exclusive with `&mut self` (no one keeps a
        // pointer to a length).
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Block<T> {
    fn drop(&mut self) {
        if !self.pooled {
            let values = core::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: the pointer and length of the `Box<[T]>` this block
            // owns (type invariant), dropped once. (A pooled block goes back
            // with `free`; `T` has no drop glue.)
            drop(unsafe { Box::from_raw(values) });
        }
    }
}

impl<T> fmt::Debug for Block<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("len", &self.len)
            .field("pooled", &self.pooled)
            .finish()
    }
}

/// The slots of one chunk at a stable address, owned by the table: all
/// [`CHUNK`] of them (*dense*), or, in a *sparse* chunk, only the slots
/// that `present` keeps, in index order. A slot a sparse chunk does not keep
/// is vacant, and its version is at most the chunk's floor (see
/// [`ChunkMeta::floor`]).
///
/// Invariant: `slots` holds `CHUNK` slots when dense, the bits set in
/// `present` when sparse. References are made one slot at a time (shared,
/// or exclusive through `&mut Chunk`), never to the whole chunk mutably, so
/// that a guard's pointer to the borrow word of *its* slot stays valid while
/// other slots of the chunk change (I11 in docs/DESIGN.md). A chunk is
/// rebuilt in the other form (its slots move) only while none of its slots
/// is pinned.
#[derive(Debug)]
struct Chunk {
    slots: Block<Slot>,
    present: Option<Box<Present>>,
}

impl Chunk {
    /// A dense chunk `c` whose slot `i` is `init(i)`.
    fn dense(c: usize, pool: &mut SlotBlocks, init: impl FnMut(usize) -> Slot) -> Chunk {
        Chunk {
            slots: Block::new(CHUNK, c, pool, init),
            present: None,
        }
    }

    /// A sparse chunk of `slots`, which `present` says where they belong.
    fn sparse(slots: Vec<Slot>, present: Box<Present>, pool: &mut SlotBlocks) -> Chunk {
        debug_assert_eq!(
            slots.len(),
            present
                .bits
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
        );
        let n = slots.len();
        let mut slots = slots.into_iter();
        Chunk {
            // (No chunk index: only blocks of `CHUNK` go by chunk, and a
            // sparse chunk keeps fewer.)
            slots: Block::new(n, usize::MAX, pool, |_| slots.next().expect("n slots")),
            present: Some(present),
        }
    }

    /// A dense chunk `c` of vacant slots whose versions start at `floor` (even).
    fn new(c: usize, floor: u32, pool: &mut SlotBlocks) -> Chunk {
        Chunk::dense(c, pool, |_| Slot::vacant(floor))
    }

    /// How many slots the chunk keeps.
    fn len(&self) -> usize {
        self.slots.len
    }

    /// Where slot `i` (`< CHUNK`) is kept, if it is.
    #[inline]
    fn position(&self, i: usize) -> Option<usize> {
        match &self.present {
            None => Some(i),
            Some(present) => present.position(i),
        }
    }

    fn is_sparse(&self) -> bool {
        self.present.is_some()
    }

    /// The slot at position `pos`: `i` in a dense chunk, from
    /// [`Chunk::position`] in a sparse one (so `pos < len`).
    #[inline]
    fn slot(&self, pos: usize) -> &Slot {
        debug_assert!(pos < self.slots.len, "slot position out of its chunk");
        // SAFETY: `pos < len` slots, initialised and owned (`Block`'s
        // invariant); an exclusive reference to one needs `&mut self`, so
        // none is alive.
        unsafe { &*self.slots.ptr.as_ptr().add(pos) }
    }

    #[inline]
    fn slot_mut(&mut self, pos: usize) -> &mut Slot {
        debug_assert!(pos < self.slots.len, "slot position out of its chunk");
        // SAFETY: as in `slot`; `&mut self` makes this the only reference
        // made through the chunk. Guards hold pointers only into pinned slots,
        // which the table never changes through `&mut` (I11).
        unsafe { &mut *self.slots.ptr.as_ptr().add(pos) }
    }

    /// The kept slots, in index order: all [`CHUNK`] of a dense chunk, the
    /// few of a sparse one.
    fn kept(&self) -> &[Slot] {
        // SAFETY: `len` initialised slots at `ptr`, owned by the chunk
        // (`Block`'s invariant); an exclusive reference to one needs
        // `&mut self`, so none is alive while this slice is.
        unsafe { core::slice::from_raw_parts(self.slots.ptr.as_ptr(), self.slots.len) }
    }

    /// The kept slots with their indices in the chunk, in index order, in
    /// one walk of the slots (and of a sparse chunk's presence bits).
    fn entries(&self) -> impl Iterator<Item = (usize, &Slot)> {
        let bits = self.present.as_ref().map_or([u64::MAX; WORDS], |p| p.bits);
        let indices = (0..WORDS).flat_map(move |w| {
            let mut word = bits[w];
            core::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(w * 64 + bit)
            })
        });
        indices.zip(self.kept())
    }

    /// Whether a guard pins one of the slots. (Only occupied slots can be
    /// pinned: their borrow words are the only ones read, so a scan of a
    /// mostly vacant chunk is mostly plain loads of versions.)
    fn any_pinned(&self) -> bool {
        self.entries()
            .any(|(_, s)| s.version % 2 == 1 && s.is_pinned())
    }

    /// Takes the slots out (the chunk is gone), to rebuild it in another
    /// form. Only while no slot is pinned (I11).
    fn into_slots(self, pool: &mut SlotBlocks) -> Vec<Slot> {
        debug_assert!(!self.any_pinned());
        self.slots.into_vec(pool)
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
    /// Invariant: `dense[c]` is the address of chunk `c`'s slots if it is
    /// dense, else `None`: a lookup in a dense chunk, the hot path, reads one
    /// pointer from this short array and no more.
    dense: Vec<Option<SlotPtr>>,
    /// The slice lengths of chunk `c`'s slots, once it has held a slice
    /// whose type index does not say its length (`None`: every length
    /// kept is 0). Lengths of segment slices are at most a
    /// quarter segment and those of zero-sized slices at most `u32::MAX`
    /// (large objects keep theirs with the mapping).
    lens: Vec<Option<Block<u32>>>,
    meta: Vec<ChunkMeta>,
    /// Bit `c` is set iff chunk `c` has a vacant slot, except that a sparse
    /// chunk that a guard kept from growing back is passed over (its bit
    /// clear) until the next [`Table::release_vacant`].
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
    /// Where dense chunks' slots live (declared after every block: the
    /// table's blocks drop before the pools unmap their memory).
    slot_pool: SlotBlocks,
    /// Where dense chunks' lengths live.
    len_pool: Pool,
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
            dense: Vec::new(),
            lens: Vec::new(),
            meta: Vec::new(),
            vacant: Vec::new(),
            vacant_from: 0,
            occupied: 0,
            retired: 0,
            zombies: 0,
            retire_at: u32::MAX,
            slot_pool: SlotBlocks::new(),
            len_pool: Pool::new(block_bytes::<u32>()),
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

    #[inline(always)]
    fn set_vacant(&mut self, chunk: usize, on: bool) {
        let (w, bit) = (chunk / 64, 1u64 << (chunk % 64));
        let Some(word) = self.vacant.get_mut(w) else {
            return self.set_vacant_grown(chunk, on);
        };
        if on {
            *word |= bit;
            self.vacant_from = self.vacant_from.min(w);
        } else {
            *word &= !bit;
        }
    }

    /// [`Table::set_vacant`] for a chunk past the bits kept so far.
    #[cold]
    #[inline(never)]
    fn set_vacant_grown(&mut self, chunk: usize, on: bool) {
        self.vacant.resize(chunk / 64 + 1, 0);
        self.set_vacant(chunk, on);
    }

    /// A new chunk entry at the end, released (no slots yet).
    fn push_chunk(&mut self) {
        self.chunks.push(None);
        self.dense.push(None);
        self.lens.push(None);
        self.meta.push(ChunkMeta::default());
    }

    /// Makes `chunk` chunk `c` (whose entry is empty).
    fn put_chunk(&mut self, c: usize, chunk: Chunk) {
        debug_assert!(self.chunks[c].is_none());
        self.dense[c] = (!chunk.is_sparse()).then_some(SlotPtr(chunk.slots.ptr));
        self.chunks[c] = Some(chunk);
    }

    /// Takes chunk `c` out of its entry.
    fn take_chunk(&mut self, c: usize) -> Option<Chunk> {
        self.dense[c] = None;
        self.chunks[c].take()
    }

    /// The lowest chunk with a vacant slot, made ready to hand it out: a
    /// released chunk gets its slots again, a sparse one is made dense (or,
    /// if a guard pins one of its slots, passed over until the next
    /// [`Table::release_vacant`]).
    #[inline]
    fn chunk_with_room(&mut self) -> (usize, SlotPtr) {
        // The common case: the word `vacant_from` names has a bit set, and
        // its lowest chunk is dense (`find_room` would stop there too).
        if let Some(&word) = self.vacant.get(self.vacant_from) {
            if word != 0 {
                let c = self.vacant_from * 64 + word.trailing_zeros() as usize;
                if let Some(Some(slots)) = self.dense.get(c) {
                    return (c, *slots);
                }
            }
        }
        self.chunk_with_room_slow()
    }

    /// [`Table::chunk_with_room`] by a search.
    #[inline(never)]
    fn chunk_with_room_slow(&mut self) -> (usize, SlotPtr) {
        let c = self.find_room();
        (c, self.dense[c].expect("made dense"))
    }

    /// [`Table::chunk_with_room`]'s search.
    #[inline]
    fn find_room(&mut self) -> usize {
        loop {
            let from = self.vacant_from;
            let found = self.vacant[from.min(self.vacant.len())..]
                .iter()
                .position(|&w| w != 0)
                .map(|i| from + i);
            self.vacant_from = found.unwrap_or(self.vacant.len());
            let Some(c) = found.map(|w| w * 64 + self.vacant[w].trailing_zeros() as usize) else {
                self.push_chunk();
                let c = self.chunks.len() - 1;
                self.set_vacant(c, true);
                self.materialize(c);
                return c;
            };
            if self.dense[c].is_some() {
                return c;
            }
            if self.chunks[c].is_none() {
                self.materialize(c);
                return c;
            }
            if self.densify(c) {
                return c;
            }
            self.set_vacant(c, false);
        }
    }

    /// Makes the sparse chunk `c` dense again, unless a guard pins one of
    /// its slots (then nothing changes and the result is false). The slots
    /// it did not keep come back vacant at the chunk's floor, so no old
    /// handle of them matches.
    fn densify(&mut self, c: usize) -> bool {
        let chunk = self.take_chunk(c).expect("a sparse chunk");
        if chunk.any_pinned() {
            self.put_chunk(c, chunk);
            return false;
        }
        let kept: Vec<usize> = chunk.entries().map(|(i, _)| i).collect();
        let floor = self.meta[c].floor;
        let mut slots: Vec<Option<Slot>> = (0..CHUNK).map(|_| None).collect();
        let old_lens = self.lens[c].take();
        let mut lens = old_lens.as_ref().map(|_| vec![0u32; CHUNK]);
        for ((pos, &i), slot) in kept
            .iter()
            .enumerate()
            .zip(chunk.into_slots(&mut self.slot_pool))
        {
            slots[i] = Some(slot);
            if let (Some(lens), Some(old_lens)) = (lens.as_mut(), old_lens.as_ref()) {
                lens[i] = old_lens.as_slice()[pos];
            }
        }
        let mut slots: Vec<Slot> = slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Slot::vacant(floor)))
            .collect();
        // Every vacant slot on the free list, lowest first.
        let mut free = 0u16;
        for (i, slot) in slots.iter_mut().enumerate().rev() {
            if slot.version.is_multiple_of(2) {
                slot.loc = Loc(u32::from(free));
                free = i as u16 + 1;
            }
        }
        let meta = &mut self.meta[c];
        meta.free = free;
        meta.fresh = 0;
        let mut slots = slots.into_iter();
        let chunk = Chunk::dense(c, &mut self.slot_pool, |_| {
            slots.next().expect("CHUNK slots")
        });
        self.put_chunk(c, chunk);
        self.lens[c] = lens.map(|lens| Block::new(CHUNK, c, &mut self.len_pool, |i| lens[i]));
        if let Some(old) = old_lens {
            old.free(&mut self.len_pool);
        }
        true
    }

    /// Rebuilds chunk `c`, which no guard pins, keeping only its occupied
    /// slots. Its floor rises above every version of the slots it drops.
    fn sparsify(&mut self, c: usize) {
        let chunk = self.take_chunk(c).expect("a chunk");
        let entries: Vec<(usize, bool)> = chunk
            .entries()
            .map(|(i, s)| (i, s.version % 2 == 1))
            .collect();
        let meta = &mut self.meta[c];
        for (_, s) in chunk.entries() {
            if s.version.is_multiple_of(2) {
                meta.floor = meta.floor.max(s.version);
            }
        }
        meta.free = 0;
        meta.fresh = 0;
        let old_lens = self.lens[c].take();
        let mut present = Box::new(Present {
            bits: [0; WORDS],
            before: [0; WORDS],
        });
        let mut slots = Vec::with_capacity(usize::from(meta.occupied));
        let mut lens = Vec::new();
        let old_slots = chunk.into_slots(&mut self.slot_pool);
        for (old_pos, ((i, occupied), slot)) in entries.into_iter().zip(old_slots).enumerate() {
            if occupied {
                if let Some(old) = old_lens.as_ref() {
                    lens.push(old.as_slice()[old_pos]);
                }
                present.bits[i / 64] |= 1 << (i % 64);
                slots.push(slot);
            }
        }
        let mut before = 0u16;
        for w in 0..WORDS {
            present.before[w] = before;
            before += present.bits[w].count_ones() as u16;
        }
        let chunk = Chunk::sparse(slots, present, &mut self.slot_pool);
        self.put_chunk(c, chunk);
        if let Some(old) = old_lens {
            self.lens[c] = Some(Block::new(lens.len(), c, &mut self.len_pool, |i| lens[i]));
            old.free(&mut self.len_pool);
        }
    }

    /// Gives the released (or new) chunk `c` its slots again, all vacant.
    fn materialize(&mut self, c: usize) {
        debug_assert!(self.chunks[c].is_none());
        let floor = self.meta[c].floor;
        let chunk = Chunk::new(c, floor, &mut self.slot_pool);
        self.put_chunk(c, chunk);
        self.meta[c] = ChunkMeta {
            fresh: CHUNK as u16,
            floor,
            ..ChunkMeta::default()
        };
    }

    /// Slots with memory now: occupied ones and vacant ones ready to take
    /// an object (a sparse chunk's vacant slots are not: it must grow first).
    pub(crate) fn capacity(&self) -> usize {
        self.chunks
            .iter()
            .zip(&self.meta)
            .map(|(chunk, meta)| match chunk {
                None => 0,
                Some(chunk) if chunk.is_sparse() => usize::from(meta.occupied),
                Some(_) => CHUNK,
            })
            .sum()
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
            // The lowest released or sparse chunk first (lowest-first, as
            // `insert`), else a new one.
            if c == self.chunks.len() {
                self.push_chunk();
            }
            match &self.chunks[c] {
                None => {
                    self.materialize(c);
                    self.set_vacant(c, true);
                    capacity += CHUNK;
                }
                Some(chunk) if chunk.is_sparse() => {
                    let occupied = usize::from(self.meta[c].occupied);
                    if self.densify(c) {
                        self.set_vacant(c, true);
                        capacity += CHUNK - occupied;
                    }
                }
                Some(_) => {}
            }
            c += 1;
        }
        true
    }

    /// The slot of `key`, to change (not while a guard may point to its word).
    #[inline]
    pub(crate) fn get_mut(&mut self, key: KeyData) -> Option<&mut Slot> {
        let (index, version) = split(key);
        self.versioned_mut(index, version)
    }

    /// The slot at `index` if its version is `version`: in the flat range
    /// first, as [`Table::get`] does.
    #[inline]
    fn versioned_mut(&mut self, index: usize, version: u32) -> Option<&mut Slot> {
        // A version match there is the key's slot, in a dense chunk (I15).
        if self.slot_pool.flat_keeps(index, |v| v == version) {
            return self.slot_pool.flat_mut(index);
        }
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
    /// length `len` (at most `u32::MAX`; [`NO_LEN`] if the slot's type
    /// index says it, so the table keeps none), unpinned. The table must
    /// not be [full](Table::is_full).
    #[inline]
    pub(crate) fn insert(&mut self, ty: u16, loc: Loc, len: usize) -> KeyData {
        debug_assert!(!self.is_full());
        let (c, slots) = self.chunk_with_room();
        let meta = &mut self.meta[c];
        let i = if meta.free != 0 {
            usize::from(meta.free - 1)
        } else {
            CHUNK - usize::from(meta.fresh)
        };
        debug_assert!(i < CHUNK);
        // Chunk `c` is dense (`chunk_with_room`): its slots are at `slots`.
        // SAFETY: `i < CHUNK` slots there (`dense`'s invariant); a vacant slot
        // has no guard, and `&mut self` is the only way in (I11).
        let slot = unsafe { &mut *slots.0.as_ptr().add(i) };
        if meta.free != 0 {
            meta.free = slot.loc.0 as u16;
        } else {
            meta.fresh -= 1;
        }
        meta.occupied += 1;
        let full = usize::from(meta.occupied) == CHUNK;
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
        if len != NO_LEN {
            // A dense chunk: the length's position is the slot's.
            match &mut self.lens[c] {
                Some(lens) => lens.as_mut_slice()[i] = len as u32,
                None if len == 0 => {}
                None => self.set_len(c * CHUNK + i, len),
            }
        }
        key
    }

    /// The slice length kept for the slot at `index` (0 if none was).
    #[inline]
    pub(crate) fn len(&self, index: usize) -> usize {
        let (c, i) = (index / CHUNK, index % CHUNK);
        let Some(Some(lens)) = self.lens.get(c) else {
            return 0;
        };
        let pos = if let Some(Some(_)) = self.dense.get(c) {
            Some(i)
        } else {
            self.chunks
                .get(c)
                .and_then(Option::as_ref)
                .and_then(|chunk| chunk.position(i))
        };
        pos.and_then(|pos| lens.as_slice().get(pos))
            .map_or(0, |&n| n as usize)
    }

    /// Keeps `len` (at most `u32::MAX`) as the slice length of the slot at
    /// `index`, a kept slot of a materialized chunk; [`NO_LEN`]: none is
    /// needed (the slot's type index says it), nothing changes.
    #[inline]
    pub(crate) fn set_len(&mut self, index: usize, len: usize) {
        if len == NO_LEN {
            return;
        }
        debug_assert!(u32::try_from(len).is_ok(), "slice lengths fit 32 bits");
        let c = index / CHUNK;
        let Some((pos, count)) = self.chunks[c]
            .as_ref()
            .and_then(|chunk| Some((chunk.position(index % CHUNK)?, chunk.len())))
        else {
            debug_assert!(false, "a length for a slot the table does not keep");
            return;
        };
        match &mut self.lens[c] {
            Some(lens) => lens.as_mut_slice()[pos] = len as u32,
            None if len == 0 => {}
            lens @ None => {
                *lens = Some(Block::new(count, c, &mut self.len_pool, |i| {
                    if i == pos {
                        len as u32
                    } else {
                        0
                    }
                }));
            }
        }
    }

    /// The slot of `key` (whatever its state) and the slice length kept
    /// beside it (0 if none is): in a dense chunk, the common case, with
    /// one lookup of the chunk for both.
    #[inline]
    pub(crate) fn get_with_len(&self, key: KeyData) -> Option<(&Slot, u32)> {
        let (index, version) = split(key);
        let flat = if Reservation::SUPPORTED {
            // As in `get`: a version match in the flat range is the key's
            // slot (I15), in a dense chunk.
            self.slot_pool.flat(index).filter(|s| s.version == version)
        } else {
            self.dense_slot(index)
        };
        if let Some(slot) = flat {
            if slot.version != version {
                return None;
            }
            // A dense chunk: the length's position is the slot's.
            let len = match &self.lens[index / CHUNK] {
                Some(lens) => lens.as_slice().get(index % CHUNK).copied().unwrap_or(0),
                None => 0,
            };
            return Some((slot, len));
        }
        let slot = self.at_sparse(index).filter(|s| s.version == version)?;
        Some((slot, self.len(index) as u32))
    }

    /// What the occupied slot of `key` holds.
    #[inline]
    pub(crate) fn held(&self, key: KeyData) -> Option<Held> {
        let slot = self.get(key)?;
        Some(Held {
            ty: slot.ty,
            loc: slot.loc,
            len: self.len(split(key).0) as u32,
        })
    }

    /// The slot at `index`, occupied or vacant, if its chunk is materialized.
    #[inline]
    fn at(&self, index: usize) -> Option<&Slot> {
        if let Some(slot) = self.dense_slot(index) {
            return Some(slot);
        }
        self.at_sparse(index)
    }

    /// The slot at `index` if its chunk is dense: the hot path of every
    /// shared lookup (callers answer a hit at once, so that no `Option` of
    /// a pointer is merged with the sparse path and tested again).
    #[inline]
    fn dense_slot(&self, index: usize) -> Option<&Slot> {
        let slots = (*self.dense.get(index / CHUNK)?)?;
        // SAFETY: chunk `index / CHUNK` is dense and its `CHUNK` slots are
        // at `slots` (invariant of `dense`); `index % CHUNK < CHUNK`. Shared,
        // as in `Chunk::slot`.
        Some(unsafe { &*slots.0.as_ptr().add(index % CHUNK) })
    }

    /// [`Table::at`] in a sparse or released chunk.
    #[cold]
    #[inline(never)]
    fn at_sparse(&self, index: usize) -> Option<&Slot> {
        let chunk = self.chunks.get(index / CHUNK)?.as_ref()?;
        Some(chunk.slot(chunk.position(index % CHUNK)?))
    }

    #[inline]
    fn at_mut(&mut self, index: usize) -> Option<&mut Slot> {
        if let Some(Some(slots)) = self.dense.get(index / CHUNK) {
            // SAFETY: as in `at`; `&mut self` makes this the only reference
            // made through the table, and guards hold pointers only into
            // pinned slots, which the table never changes through `&mut` (I11).
            return Some(unsafe { &mut *slots.0.as_ptr().add(index % CHUNK) });
        }
        let chunk = self.chunks.get_mut(index / CHUNK)?.as_mut()?;
        let pos = chunk.position(index % CHUNK)?;
        Some(chunk.slot_mut(pos))
    }

    /// The slot of `key`, whatever its state (live, zombie, retired).
    #[inline]
    pub(crate) fn get(&self, key: KeyData) -> Option<&Slot> {
        let (index, version) = split(key);
        if Reservation::SUPPORTED {
            // One load and one compare: a flat slot with the key's version
            // is the key's (I15); anything else goes the long way.
            if let Some(slot) = self.slot_pool.flat(index) {
                if slot.version == version {
                    return Some(slot);
                }
            }
            return self.get_elsewhere(index, version);
        }
        if let Some(slot) = self.dense_slot(index) {
            return (slot.version == version).then_some(slot);
        }
        self.at_sparse(index).filter(|s| s.version == version)
    }

    /// [`Table::get`] past the flat range: through the chunk's entry.
    #[cold]
    #[inline(never)]
    fn get_elsewhere(&self, index: usize, version: u32) -> Option<&Slot> {
        self.at(index).filter(|s| s.version == version)
    }

    /// `free`'s common case with one lookup of the slot: vacates the slot
    /// of `key` if it is live and unpinned (borrow word 0), in a dense
    /// chunk, not due to retire, and `is_type` accepts its type (saying
    /// `Some` of what the caller wants to know of it). Returns that, the
    /// slot's type, location and slice length; `None` changes nothing (the
    /// caller goes the general way, [`Table::remove`], which tells the
    /// other cases apart).
    #[inline]
    pub(crate) fn take_unpinned<X>(
        &mut self,
        key: KeyData,
        is_type: impl Fn(u16) -> Option<X>,
    ) -> Option<(X, u16, Loc, u32)> {
        let (index, version) = split(key);
        // Keys carry odd versions (slotmap's `from_ffi` sets the low bit),
        // so a version match is an occupied slot, never a vacant one.
        debug_assert!(version % 2 == 1, "a key's version is odd");
        if version >= self.retire_at {
            return None;
        }
        let (c, i) = (index / CHUNK, index % CHUNK);
        // Checked through a shared reference first: a slot that fails may
        // be pinned, its borrow word in a guard's hands (I11).
        let found = if Reservation::SUPPORTED {
            // A version match in the flat range is the key's slot, in a
            // dense chunk (I15).
            self.slot_pool.flat(index)
        } else {
            self.dense_slot(index)
        };
        let slot = found?;
        // Borrow word 0: neither pinned nor a zombie; and no pin can be
        // taken while the caller holds the table (`&mut self`).
        if slot.version != version || slot.borrow.load(Ordering::Acquire) != 0 {
            return None;
        }
        let x = is_type(slot.ty)?;
        let next_free = self.meta[c].free;
        let slot = if Reservation::SUPPORTED {
            self.slot_pool.flat_mut(index)
        } else {
            self.at_mut(index)
        }
        .expect("the slot just read");
        let held = (slot.ty, slot.loc);
        slot.version = version.wrapping_add(1);
        slot.loc = Loc(u32::from(next_free));
        self.count_vacated(c, i);
        // A dense chunk: the length's position is the slot's.
        let len = match &self.lens[c] {
            Some(lens) => lens.as_slice()[i],
            None => 0,
        };
        Some((x, held.0, held.1, len))
    }

    /// Counts slot `i` of chunk `c` vacant, its version raised and its
    /// location the chunk's old free-list head: it heads the free list now.
    #[inline(always)]
    fn count_vacated(&mut self, c: usize, i: usize) {
        let meta = &mut self.meta[c];
        meta.free = i as u16 + 1;
        let was_full = usize::from(meta.occupied) == CHUNK;
        meta.occupied -= 1;
        self.occupied -= 1;
        if was_full {
            // A chunk that was not full has its bit already (or, sparse
            // and pinned, is passed over until `release_vacant`).
            self.set_vacant(c, true);
        }
    }

    /// Counts a slot that the caller just marked [`ZOMBIE`].
    pub(crate) fn count_zombie(&mut self) {
        self.zombies += 1;
    }

    /// Vacates the slot of `key` (live or zombie) and returns its type and
    /// location (its length, if a slice, is the caller's to read first: a
    /// free of a sized value skips it). If the version is exhausted, the
    /// slot is retired instead of vacated.
    #[inline]
    pub(crate) fn remove(&mut self, key: KeyData) -> Option<(u16, Loc)> {
        let (index, version) = split(key);
        let retire = version >= self.retire_at;
        let (c, i) = (index / CHUNK, index % CHUNK);
        let next_free = self.meta.get(c).map_or(0, |m| m.free);
        let slot = self.versioned_mut(index, version)?;
        let held = (slot.ty, slot.loc);
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
            self.count_vacated(c, i);
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
    /// a version floor for each so no old handle can match a slot again, and
    /// rebuilds every chunk that is at most a quarter occupied and that no
    /// guard pins in sparse form, with its occupied slots only. Returns the
    /// bytes given back.
    pub(crate) fn release_vacant(&mut self) -> usize {
        let before = self.metadata_bytes();
        for c in 0..self.chunks.len() {
            let Some(chunk) = &self.chunks[c] else {
                continue;
            };
            let meta = &mut self.meta[c];
            if meta.occupied == 0 {
                // Vacant versions are even; the next occupant gets floor + 1.
                let top = chunk.entries().map(|(_, s)| s.version).max().unwrap_or(0);
                meta.floor = meta.floor.max(top);
                debug_assert!(meta.floor.is_multiple_of(2));
                let chunk = self.take_chunk(c).expect("materialized");
                chunk.slots.free(&mut self.slot_pool);
                if let Some(lens) = self.lens[c].take() {
                    lens.free(&mut self.len_pool);
                }
                continue;
            }
            let occupied = usize::from(meta.occupied);
            let worth = occupied <= SPARSE_AT && (!chunk.is_sparse() || chunk.len() > occupied);
            if worth && !chunk.any_pinned() {
                self.sparsify(c);
            }
            if self.chunks[c].as_ref().is_some_and(Chunk::is_sparse) {
                // Room again for `insert`, which makes it dense (if no guard
                // pins a slot of it by then).
                self.set_vacant(c, true);
            }
        }
        before.saturating_sub(self.metadata_bytes())
    }

    /// Number of objects whose handles are live.
    pub(crate) fn live(&self) -> usize {
        self.occupied - self.retired - self.zombies
    }

    /// How many objects guards pin now: one walk over the kept slots,
    /// with no lookup per slot.
    pub(crate) fn pinned(&self) -> usize {
        self.chunks
            .iter()
            .flatten()
            .map(|chunk| {
                chunk
                    .kept()
                    .iter()
                    .filter(|s| s.version % 2 == 1 && s.is_pinned())
                    .count()
            })
            .sum()
    }

    /// Bytes of the table itself.
    pub(crate) fn metadata_bytes(&self) -> usize {
        let slots: usize = self
            .chunks
            .iter()
            .flatten()
            .map(|c| {
                c.slots.boxed_bytes()
                    + if c.is_sparse() {
                        size_of::<Present>()
                    } else {
                        0
                    }
            })
            .sum();
        let lens: usize = self.lens.iter().flatten().map(Block::boxed_bytes).sum();
        slots
            + lens
            + self.slot_pool.resident()
            + self.len_pool.resident()
            + self.chunks.capacity() * size_of::<Option<Chunk>>()
            + self.dense.capacity() * size_of::<Option<SlotPtr>>()
            + self.lens.capacity() * size_of::<Option<Block<u32>>>()
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
        // An odd version in the flat range is a dense chunk's own occupied
        // slot (I15); an even one may be a zero page.
        if let Some(slot) = self.slot_pool.flat(index as usize) {
            if slot.version % 2 == 1 {
                return Some(slot);
            }
        }
        self.at(index as usize).filter(|s| s.version % 2 == 1)
    }

    /// The occupied slot at `index`, whichever key occupies it.
    #[inline]
    pub(crate) fn slot_at_mut(&mut self, index: u32) -> Option<&mut Slot> {
        let index = index as usize;
        // An odd version there is a dense chunk's own occupied slot (I15).
        if self.slot_pool.flat_keeps(index, |v| v % 2 == 1) {
            return self.slot_pool.flat_mut(index);
        }
        self.at_mut(index).filter(|s| s.version % 2 == 1)
    }

    /// Calls `f` with the index and slot of every occupied slot whose index
    /// is in `range`, in order, chunk by chunk: a dense chunk's slots are
    /// read as one slice (compaction's sweep reads every slot of the table
    /// in slices of a step, so this loop is a few instructions a slot).
    pub(crate) fn scan(&self, range: core::ops::Range<usize>, mut f: impl FnMut(u32, &Slot)) {
        let mut from = range.start;
        while from < range.end {
            let c = from / CHUNK;
            let to = ((c + 1) * CHUNK).min(range.end);
            if let Some(Some(slots)) = self.dense.get(c) {
                // SAFETY: chunk `c` is dense and its `CHUNK` slots are at
                // `slots` (invariant of `dense`). Shared, as in `Chunk::slot`:
                // a guard writes only the atomic borrow word.
                let all = unsafe { core::slice::from_raw_parts(slots.0.as_ptr(), CHUNK) };
                let base = c * CHUNK;
                for (i, slot) in all[from - base..to - base].iter().enumerate() {
                    if slot.version % 2 == 1 {
                        f((from + i) as u32, slot);
                    }
                }
            } else if let Some(Some(chunk)) = self.chunks.get(c) {
                for (i, slot) in chunk.entries() {
                    let index = c * CHUNK + i;
                    if (from..to).contains(&index) && slot.version % 2 == 1 {
                        f(index as u32, slot);
                    }
                }
            }
            from = to;
        }
    }

    /// All occupied slots: live, zombie and retired.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (KeyData, &Slot)> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(c, chunk)| Some((c, chunk.as_ref()?)))
            .flat_map(|(c, chunk)| {
                chunk
                    .entries()
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
        assert_eq!(t.remove(slice), Some((2, Loc::segment(16))));
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
        // The middle chunk goes; the last keeps its one slot, sparse.
        let sparse_last = 12 + core::mem::size_of::<Present>();
        assert_eq!(t.release_vacant(), 2 * CHUNK * 12 - sparse_last);
        assert_eq!(t.metadata_bytes(), full - 2 * CHUNK * 12 + sparse_last);
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
    fn a_scan_visits_the_occupied_slots_of_its_range_in_order_dense_or_sparse() {
        let (mut t, kept, _) = table_after_a_90_percent_delete();
        let index = |k: &KeyData| split(*k).0 as u32;
        let scanned = |t: &Table, range: core::ops::Range<usize>| {
            let mut seen = Vec::new();
            t.scan(range, |i, slot| seen.push((i, slot.loc)));
            seen
        };
        let expected = |range: core::ops::Range<usize>| -> Vec<(u32, Loc)> {
            kept.iter()
                .map(|k| (index(k), Loc::segment(index(k) * 4)))
                .filter(|(i, _)| range.contains(&(*i as usize)))
                .collect()
        };
        // Dense chunks, a range that starts and ends inside chunks.
        for range in [0..3 * CHUNK, 5..CHUNK + 7, CHUNK + 1..CHUNK + 2] {
            assert_eq!(scanned(&t, range.clone()), expected(range));
        }
        // The same slots once the chunks went sparse (and past the table's end).
        t.release_vacant();
        assert!(t.dense.iter().all(Option::is_none), "every chunk is sparse");
        for range in [0..3 * CHUNK, 5..CHUNK + 7, 2 * CHUNK..4 * CHUNK] {
            assert_eq!(scanned(&t, range.clone()), expected(range));
        }
    }

    /// Three chunks, of which every tenth slot stays occupied (slices of
    /// length `i`, so the lengths move with the slots).
    fn table_after_a_90_percent_delete() -> (Table, Vec<KeyData>, Vec<KeyData>) {
        let mut t = Table::new();
        let keys: Vec<KeyData> = (0..3 * CHUNK)
            .map(|i| t.insert(7, Loc::segment(i as u32 * 4), i))
            .collect();
        let (mut kept, mut gone) = (Vec::new(), Vec::new());
        for (i, k) in keys.into_iter().enumerate() {
            if i % 10 == 0 {
                kept.push(k);
            } else {
                t.remove(k).unwrap();
                gone.push(k);
            }
        }
        (t, kept, gone)
    }

    #[test]
    fn a_table_mostly_vacated_gives_back_memory_in_proportion() {
        let (mut t, kept, gone) = table_after_a_90_percent_delete();
        let full = t.metadata_bytes();
        let released = t.release_vacant();
        let after = t.metadata_bytes();
        assert_eq!(full - after, released);
        // 308 slots of 16 bytes (slot and length) and three bitmaps remain.
        let bitmaps = 3 * core::mem::size_of::<Present>();
        assert!(
            after <= kept.len() * 16 + bitmaps + 512,
            "{full} -> {after} for {} slots",
            kept.len()
        );
        for &k in &kept {
            let i = split(k).0;
            let held = t.held(k).expect("a kept slot");
            assert_eq!(
                (held.ty, held.loc, held.len as usize),
                (7, Loc::segment(i as u32 * 4), i)
            );
        }
        assert!(gone
            .iter()
            .all(|&k| t.get(k).is_none() && t.held(k).is_none()));
        assert_eq!((t.live(), t.iter().count()), (kept.len(), kept.len()));
    }

    #[test]
    fn a_chunk_that_leaves_the_flat_range_leaves_only_zeros_there() {
        // Chunks 0 and 1 are in the flat range (where the target has one),
        // chunk 2 in the pool.
        let (mut t, kept, gone) = table_after_a_90_percent_delete();
        t.release_vacant();
        // Every chunk is sparse now: its slots moved to a box, and the range
        // reads as zeros (I15), so no stale copy there can match a key.
        assert!((0..t.slot_pool.slots).all(|i| t
            .slot_pool
            .flat(i)
            .is_some_and(|s| s.version == 0 && s.loc == Loc(0))));
        if Reservation::SUPPORTED {
            assert_eq!(t.slot_pool.slots, 2 * CHUNK, "two chunks were flat");
        }
        // A kept slot changed reads back changed (a stale copy would not).
        for &k in &kept {
            t.get_mut(k).expect("kept").loc = Loc::segment(1);
        }
        assert!(kept
            .iter()
            .all(|&k| t.get(k).unwrap().loc == Loc::segment(1)));
        // Grown back dense (chunks 0 and 1 in the range again), the kept
        // slots are there, changed, and the freed ones stay stale.
        for _ in 0..3 * CHUNK {
            t.insert(8, Loc::ZERO_SIZED, 0);
        }
        assert!(kept
            .iter()
            .all(|&k| t.get(k).unwrap().loc == Loc::segment(1)));
        assert!(kept
            .iter()
            .all(|&k| t.get_with_len(k).map(|(_, len)| len as usize) == Some(split(k).0)));
        assert!(gone.iter().all(|&k| t.get(k).is_none()));
        assert_eq!(t.live(), kept.len() + 3 * CHUNK);
        for &k in &kept {
            assert_eq!(t.remove(k), Some((7, Loc::segment(1))));
        }
    }

    #[test]
    fn a_sparse_chunk_grows_back_for_new_objects_and_old_handles_stay_stale() {
        let (mut t, kept, gone) = table_after_a_90_percent_delete();
        t.release_vacant();
        let again: Vec<KeyData> = (0..CHUNK)
            .map(|_| t.insert(8, Loc::ZERO_SIZED, 0))
            .collect();
        // The lowest chunk fills first: all of its vacant slots, then the next.
        let in_first = kept.iter().filter(|k| split(**k).0 < CHUNK).count();
        assert!(again[..CHUNK - in_first]
            .iter()
            .all(|k| split(*k).0 < CHUNK));
        for &k in &gone {
            assert!(t.get(k).is_none(), "an old handle matches a new object");
        }
        for &k in &kept {
            assert_eq!(t.held(k).map(|h| h.len as usize), Some(split(k).0));
        }
        for &k in &again {
            assert_eq!(t.held(k).map(|h| (h.ty, h.len)), Some((8, 0)));
        }
    }

    #[test]
    fn a_pinned_slot_keeps_its_chunk_and_its_address() {
        let (mut t, kept, _) = table_after_a_90_percent_delete();
        let pinned = kept[3];
        let word = |t: &Table| core::ptr::from_ref(&t.get(pinned).unwrap().borrow);
        t.get(pinned).unwrap().borrow.store(1, Ordering::Relaxed);
        let at = word(&t);
        t.release_vacant();
        assert_eq!(word(&t), at, "a pinned slot moved");
        // Its chunk stayed dense; the other two went sparse.
        assert_eq!(t.capacity(), CHUNK + kept.len() - kept.len() / 3 - 1);
        // Pinned again after going sparse: new objects pass that chunk over.
        t.get(pinned).unwrap().borrow.store(0, Ordering::Relaxed);
        t.release_vacant();
        t.get(pinned).unwrap().borrow.store(1, Ordering::Relaxed);
        let at = word(&t);
        let k = t.insert(9, Loc::ZERO_SIZED, 0);
        assert_eq!(word(&t), at, "a pinned slot moved");
        assert_ne!(split(k).0 / CHUNK, split(pinned).0 / CHUNK);
        assert_eq!(
            t.held(pinned).map(|h| h.len as usize),
            Some(split(pinned).0)
        );
    }

    #[test]
    fn vacated_slots_are_reused_with_a_new_version() {
        let mut t = Table::new();
        let a = t.insert(1, Loc::ZERO_SIZED, 0);
        let b = t.insert(1, Loc::ZERO_SIZED, 1);
        assert_eq!(t.remove(a), Some((1, Loc::ZERO_SIZED)));
        assert!(t.get(a).is_none() && t.remove(a).is_none());
        let c = t.insert(2, Loc::ZERO_SIZED, 2);
        assert_eq!(split(c).0, split(a).0, "the vacant slot is reused");
        assert_ne!(c, a);
        assert_eq!(t.get(c).map(|s| s.ty), Some(2));
        assert_eq!((t.live(), t.iter().count()), (2, 2));
        assert!(t.get(b).is_some());
    }
}
