//! The slot table: a [`slotmap::SlotMap`] of [`Slot`]s, plus retirement.
//!
//! A handle is a slotmap key (index + version). slotmap bumps a slot's version
//! on every insert and remove and lets it wrap after 2³¹ reuses, which would
//! bring a long-dead handle back to life. [`Table::remove`] *retires* a slot
//! whose version has reached the top instead of freeing it: the slot stays
//! occupied by a dead marker forever, so no key of it can ever read a value
//! again. That costs one slot per 2³¹ reuses of a slot.

use core::ptr::NonNull;

use slotmap::{DefaultKey, Key, KeyData, SlotMap};

use crate::object::TypeInfo;
use crate::space::Place;
use crate::sync::atomic::{AtomicU32, Ordering};

/// Borrow word bit: the handle is dead; the value waits for its last guard.
/// With no pins left it marks a retired slot.
pub(crate) const ZOMBIE: u32 = 1 << 31;
/// Borrow word bit: one exclusive borrow (`RefMut`) is alive.
pub(crate) const EXCLUSIVE: u32 = 1 << 30;
/// Borrow word: mask of the shared-borrow count.
pub(crate) const SHARED: u32 = EXCLUSIVE - 1;

/// One object's entry.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The object's current address. Changes only when compaction moves the
    /// object, which it does only while `borrow` shows no pin.
    pub(crate) ptr: NonNull<u8>,
    /// The length of a slice or `str`; 0 for sized types.
    pub(crate) meta: usize,
    /// The type stored here.
    pub(crate) info: &'static TypeInfo,
    /// Where the bytes are (segment, own mapping, or nowhere for ZSTs).
    pub(crate) place: Place,
    /// The pin state: `ZOMBIE | EXCLUSIVE | shared count`. Pinned iff
    /// `borrow & !ZOMBIE != 0`. See docs/DESIGN.md, "The pin protocol".
    pub(crate) borrow: AtomicU32,
}

// SAFETY: the pointer is into memory owned by the heap; a Slot is only data.
// Values are `Send` (and `Sync` for the concurrent heap) by the alloc bounds.
unsafe impl Send for Slot {}
// SAFETY: as above; shared access only reads the fields or uses the atomic.
unsafe impl Sync for Slot {}

impl Slot {
    /// Bytes of the object.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.info.size(self.meta)
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

/// The handle table.
#[derive(Debug)]
pub(crate) struct Table {
    map: SlotMap<DefaultKey, Slot>,
    /// Slots retired for good.
    retired: usize,
    /// Slots freed while pinned, waiting for their last guard.
    zombies: usize,
    /// A slot whose version is at least this is retired instead of freed.
    retire_at: u32,
}

impl Table {
    pub(crate) fn new() -> Table {
        Table {
            map: SlotMap::new(),
            retired: 0,
            zombies: 0,
            retire_at: u32::MAX,
        }
    }

    /// Retire slots earlier than slotmap's version limit, so tests can reach it.
    #[cfg(test)]
    pub(crate) fn set_retire_at(&mut self, version: u32) {
        self.retire_at = version;
    }

    /// Whether the table cannot take another slot (slotmap panics at 2³² − 2
    /// slots; the heap reports [`AllocError::OutOfMemory`](crate::AllocError) first).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.map.len() >= (u32::MAX - 2) as usize
    }

    /// Inserts a slot; the table must not be [full](Table::is_full).
    #[inline]
    pub(crate) fn insert(&mut self, slot: Slot) -> KeyData {
        debug_assert!(!self.is_full());
        self.map.insert(slot).data()
    }

    /// The slot of `key`, whatever its state (live, zombie, retired).
    #[inline]
    pub(crate) fn get(&self, key: KeyData) -> Option<&Slot> {
        self.map.get(DefaultKey::from(key))
    }

    /// The slot of a key that is pinned, without checking the version.
    ///
    /// # Safety
    /// `key` must be pinned (then its slot is occupied: I5 in docs/DESIGN.md).
    #[inline]
    pub(crate) unsafe fn get_pinned(&self, key: KeyData) -> &Slot {
        debug_assert!(self.get(key).is_some_and(Slot::is_pinned));
        // SAFETY: guaranteed by the caller.
        unsafe { self.map.get_unchecked(DefaultKey::from(key)) }
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, key: KeyData) -> Option<&mut Slot> {
        self.map.get_mut(DefaultKey::from(key))
    }

    /// Counts a slot that the caller just marked [`ZOMBIE`].
    pub(crate) fn count_zombie(&mut self) {
        self.zombies += 1;
    }

    /// Removes the slot of `key` (live or zombie) and returns it. If the
    /// version is exhausted, the slot is retired instead of freed.
    pub(crate) fn remove(&mut self, key: KeyData) -> Option<Slot> {
        let k = DefaultKey::from(key);
        let slot = self.map.get_mut(k)?;
        if slot.is_dead() {
            // A zombie finishing (retired slots are never removed: their
            // dead marker has no pins, and no caller removes those).
            debug_assert!(slot.borrow.load(Ordering::Relaxed) == ZOMBIE);
            self.zombies -= 1;
        }
        if version(key) >= self.retire_at {
            self.retired += 1;
            let dead = Slot {
                ptr: NonNull::dangling(),
                meta: 0,
                info: &<() as crate::object::Object>::INFO,
                place: Place::NONE,
                borrow: AtomicU32::new(ZOMBIE),
            };
            return Some(core::mem::replace(slot, dead));
        }
        self.map.remove(k)
    }

    /// Number of objects whose handles are live.
    pub(crate) fn live(&self) -> usize {
        self.map.len() - self.retired - self.zombies
    }

    /// Bytes of the table itself.
    pub(crate) fn metadata_bytes(&self) -> usize {
        // slotmap keeps a version (u32) beside each value, padded to the value's alignment.
        let entry =
            (core::mem::size_of::<Slot>() + 4).next_multiple_of(core::mem::align_of::<Slot>());
        self.map.capacity() * entry
    }

    /// All slots, including zombies and retired ones.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (KeyData, &Slot)> {
        self.map.iter().map(|(k, s)| (k.data(), s))
    }
}

/// The version of a key.
#[inline]
fn version(key: KeyData) -> u32 {
    (key.as_ffi() >> 32) as u32
}
