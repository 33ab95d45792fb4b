//! [`RawHeap`]: the engine under [`Heap`](crate::Heap) and the concurrent
//! heap. It owns the table and the space and keeps them in step; it never
//! runs user code. The wrappers call user code (value drops) only after they
//! have let go of the engine, so a `Drop` that re-enters the heap is fine.

use core::any::TypeId;
use core::ptr::NonNull;

use slotmap::KeyData;

use crate::compact::{Budget, Evacuation};
use crate::config::{Config, Pacing};
use crate::error::{AllocError, BorrowError, RemoveError, ResizeError};
use crate::object::{Object, TypeInfo};
use crate::space::Space;
use crate::stats::{CompactReport, HeapStats};
use crate::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use crate::sync::plain;
use crate::table::{index_of, Held, Loc, Slot, Table, Where, EXCLUSIVE, SHARED, ZOMBIE};
use crate::types::{Entry, Types};
use crate::types::{IN_TABLE, NO_LEN, VARIES};

/// Running totals of compaction work.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) compactions: u64,
    pub(crate) objects_moved: u64,
    pub(crate) bytes_moved: u64,
    pub(crate) bytes_released: u64,
    pub(crate) paced_bytes_moved: u64,
    pub(crate) paced_steps: u64,
}

/// The engine: table + space + compaction state.
#[derive(Debug)]
pub(crate) struct RawHeap {
    pub(crate) table: Table,
    /// The types stored, by the 16-bit index a slot holds.
    pub(crate) types: Types,
    pub(crate) space: Space,
    pub(crate) evac: Evacuation,
    pub(crate) totals: Totals,
    /// Invariant: the sum of the sizes of the objects whose handles are live.
    live_bytes: usize,
    limited: bool,
    /// Open read scopes ([`Reader`](crate::Reader)s). While there are any, no
    /// object moves and no value is dropped or has its bytes released (I12).
    pub(crate) readers: AtomicUsize,
    /// Objects freed during a read scope: unlinked, their values dropped and
    /// bytes released when the last scope ends.
    pub(crate) deferred: Vec<Dying>,
    /// Invariant: the number of objects a builder pins
    /// ([`RawHeap::alloc_building`] until [`RawHeap::finish_building`] or
    /// [`RawHeap::abandon_building`]): the pins that are no guard's.
    building: usize,
    /// Compaction paid for by allocation and free, if on (change it with
    /// [`RawHeap::set_pacing`]).
    pub(crate) pacing: Option<Pacing>,
    /// Bytes of compaction work owed (see [`Pacing`]) as of the last time
    /// [`RawHeap::pace_due`] ran; negative: work done ahead (a step moves up
    /// to `max_step` whatever it owed), which later allocations and frees
    /// pay off before the next step.
    debt: isize,
    /// Bytes that allocation and free may still handle before the debt can
    /// reach a step: each call takes its bytes off, and the slow path
    /// ([`RawHeap::pace_due`]) runs at 0. Invariant: `debt + rate ×
    /// (pace_synced - pace_left)` is the debt owed now, and `pace_left > 0`
    /// outside `pace` (but for a new heap's 0: its first call syncs).
    pace_left: isize,
    /// `pace_left` when it was last set.
    pace_synced: isize,
    /// The bytes after which a debt of 0 reaches a step (`step / rate`,
    /// rounded up): what `sync_pace` sets most of the time, without a
    /// division.
    pace_quantum: isize,
    /// The waste (held less live bytes) when a paced pass last found no
    /// sources worth it; `None` once a pass starts.
    refused_waste: Option<usize>,
}

/// An object whose handle is gone but whose bytes are still reserved: its
/// value must be dropped (or moved out) and then given to [`RawHeap::release`].
#[must_use = "a dying object's memory is reserved until it is released"]
#[derive(Debug)]
pub(crate) struct Dying {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) meta: usize,
    pub(crate) info: &'static TypeInfo,
    loc: Loc,
    size: usize,
}

// SAFETY: a `Dying` records where an unlinked value is; the value is `Send`
// (and `Sync` in a `SyncHeap`) by the alloc bounds, and only the holder of the
// `Dying` (with the engine, or dropping the value) touches it.
unsafe impl Send for Dying {}
// SAFETY: `&Dying` exposes only the address, type and size, never the value.
unsafe impl Sync for Dying {}

/// Why a borrow word with `ZOMBIE` or `EXCLUSIVE` set gives no access: the
/// handle is dead, or a `RefMut` is alive.
#[inline]
fn refused(word: u16) -> BorrowError {
    if word & ZOMBIE != 0 {
        BorrowError::Stale
    } else {
        BorrowError::BorrowedMut
    }
}

/// Why [`RawHeap::pin`] gave no pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinError {
    /// A stale handle or a borrow conflict, for the caller.
    Refused(BorrowError),
    /// The shared count is full (16 383 guards of one object).
    TooManyShared,
}

impl From<BorrowError> for PinError {
    fn from(err: BorrowError) -> PinError {
        PinError::Refused(err)
    }
}

impl PinError {
    /// The caller's error, or the panic for an overflowing count (raised
    /// after the engine is let go, like every panic the API documents).
    pub(crate) fn or_panic(self) -> BorrowError {
        match self {
            PinError::Refused(err) => err,
            PinError::TooManyShared => too_many_shared(),
        }
    }
}

#[cold]
#[inline(never)]
fn too_many_shared() -> ! {
    panic!("compact_heap: too many shared borrows of one object")
}

/// A value to drop at the heap's end: its address, metadata and drop function.
pub(crate) type Droppable = (NonNull<u8>, usize, unsafe fn(*mut u8, usize));

/// What `free` did.
#[derive(Debug)]
pub(crate) enum Freed {
    /// The handle was not live.
    Stale,
    /// The object is pinned; it is dropped when its last guard goes.
    Deferred,
    /// The object is unlinked; drop it, then release it.
    Now(Dying),
    /// The object had no drop glue and is gone already.
    Released,
}

impl RawHeap {
    pub(crate) fn new(config: &Config) -> RawHeap {
        RawHeap {
            table: Table::new(),
            types: Types::new(),
            space: Space::new(config),
            evac: Evacuation::default(),
            totals: Totals::default(),
            live_bytes: 0,
            limited: config.memory_limit.is_some(),
            readers: AtomicUsize::new(0),
            deferred: Vec::new(),
            building: 0,
            pacing: config.pacing,
            debt: 0,
            pace_left: 0,
            pace_synced: 0,
            pace_quantum: quantum(config.pacing.as_ref()),
            refused_waste: None,
        }
    }

    /// Reserves memory for a value of type `info` with metadata `meta` and
    /// links it to a new handle. The caller must initialise the bytes before
    /// anything can read them (before it lets go of the engine).
    #[inline]
    pub(crate) fn alloc(
        &mut self,
        info: &'static TypeInfo,
        meta: usize,
    ) -> Result<(KeyData, NonNull<u8>), AllocError> {
        // The common case, inline in the caller (where `info` is a constant):
        // the type of the last allocation, a small object in a segment (a
        // kept block or the cursor's range), no paced step or release due.
        // Everything else takes the general path, which does the same
        // things in the same order, with every check.
        if let (Some(size), Some((ty, stored))) =
            (info.checked_size(meta), self.types.last_index(info, meta))
        {
            // (`pace_left > size`: taking `size` off leaves it positive,
            // so no step would be due: `pace` would do nothing else.)
            if self.pace_left > size as isize && !self.space.has_pending() && !self.table.is_full()
            {
                if let Some((ptr, loc)) = self.space.alloc_small(size, info.align) {
                    self.pace_left -= size as isize;
                    // A small object in a segment: its slice length is far
                    // below 2^32 (`alloc_small` takes only sizes from 1 byte).
                    debug_assert!(u32::try_from(meta).is_ok());
                    // (A short slice's index says its length: the table
                    // keeps none, `stored` is 0.)
                    let key = self.table.insert(ty, loc, stored);
                    self.live_bytes += size;
                    return Ok((key, ptr));
                }
            }
        }
        self.alloc_general(info, meta)
    }

    /// [`RawHeap::alloc`] past its common case.
    #[inline(never)]
    fn alloc_general(
        &mut self,
        info: &'static TypeInfo,
        meta: usize,
    ) -> Result<(KeyData, NonNull<u8>), AllocError> {
        let size = info.checked_size(meta).ok_or(AllocError::TooLarge)?;
        if self.table.is_full() {
            return Err(AllocError::OutOfMemory);
        }
        // Before the new object exists: a step must not move bytes that the
        // caller has yet to write.
        self.pace(size);
        let ty = self
            .types
            .index_of(info, meta)
            .ok_or(AllocError::OutOfMemory)?;
        if size == 0 && u32::try_from(meta).is_err() {
            // The table keeps slice lengths in 32 bits (segment slices are
            // far shorter; large objects keep theirs with the mapping).
            return Err(AllocError::TooLarge);
        }
        let (ptr, loc) = loop {
            match self.space.alloc(size, info.align) {
                Ok(found) => break found,
                // Under a memory limit, compact until it fits or nothing more
                // comes back (held memory goes down on every round, so this ends).
                Err(AllocError::OutOfMemory) if self.limited && self.make_room() => {}
                Err(e) => return Err(e),
            }
        };
        // A large object keeps its length with its mapping, a short slice's
        // index says its length.
        let len = match loc.decode() {
            Where::Large { id } => {
                self.space.set_large_meta(id, meta);
                NO_LEN
            }
            _ => self.types.stored_len(ty, meta),
        };
        let key = self.table.insert(ty, loc, len);
        self.live_bytes += size;
        Ok((key, ptr))
    }

    /// The address and slice length of the object that `held` describes
    /// (an occupied slot's, or one just unlinked).
    #[inline]
    pub(crate) fn locate(&self, held: Held) -> (NonNull<u8>, usize) {
        self.try_locate(held)
            .expect("a live or dying object has a location")
    }

    /// [`RawHeap::locate`] that never panics (for `pin`, see `Engine::try_pin`):
    /// `None` only if the table and the space disagree, which they never do.
    #[inline]
    pub(crate) fn try_locate(&self, held: Held) -> Option<(NonNull<u8>, usize)> {
        // The hot case first: the large and zero-sized tags are above every
        // granule address, so they fail `try_at` too.
        if let Some(ptr) = self.space.try_at(held.loc) {
            return Some((ptr, held.len as usize));
        }
        self.try_locate_elsewhere(held.ty, held.loc, held.len)
    }

    /// [`RawHeap::try_locate`] for large and zero-sized objects. (The parts
    /// of a [`Held`] are passed apart, in registers: a struct would be
    /// written to the stack on the hot path for this cold call.)
    #[cold]
    #[inline(never)]
    fn try_locate_elsewhere(&self, ty: u16, loc: Loc, len: u32) -> Option<(NonNull<u8>, usize)> {
        let held = Held { ty, loc, len };
        Some(match held.loc.decode() {
            // `try_locate` found no such segment: the table and the space
            // disagree, which they never do.
            Where::Segment { .. } => return None,
            Where::Large { id } => self.space.try_large(id)?,
            Where::Nowhere => {
                let align = self.types.try_info(held.ty)?.align;
                (
                    NonNull::new(core::ptr::without_provenance_mut(align))?,
                    held.len as usize,
                )
            }
        })
    }

    /// What the occupied slot `slot` of `key` holds, with the slice length
    /// read only if `T` is a slice type.
    #[inline]
    fn held_as<T: ?Sized + Object>(&self, key: KeyData, slot: &Slot) -> Held {
        Held {
            ty: slot.ty,
            loc: slot.loc,
            len: if T::INFO.is_slice {
                match self.types.fixed_len(slot.ty) {
                    IN_TABLE => self.table.len(index_of(key)) as u32,
                    len => len,
                }
            } else {
                0
            },
        }
    }

    /// Bytes of the object that `held` describes.
    #[inline]
    pub(crate) fn size_of(&self, held: Held) -> usize {
        self.size_in(self.types.info(held.ty), held)
    }

    /// [`RawHeap::size_of`] with the type's info at hand.
    #[inline]
    fn size_in(&self, info: &TypeInfo, held: Held) -> usize {
        if !info.is_slice {
            return info.elem_size;
        }
        info.size(self.meta_of(held))
    }

    /// The slice length of the object that `held` describes (no address needed).
    #[inline]
    pub(crate) fn meta_of(&self, held: Held) -> usize {
        match held.loc.decode() {
            Where::Segment { .. } | Where::Nowhere => held.len as usize,
            Where::Large { id } => self.space.try_large(id).map_or(0, |(_, meta)| meta),
        }
    }

    /// The object that `held` (a slot's, just unlinked) describes.
    fn dying(&self, held: Held) -> Dying {
        let info = self.types.info(held.ty);
        let (ptr, meta) = self.locate(held);
        Dying {
            ptr,
            meta,
            info,
            loc: held.loc,
            size: info.size(meta),
        }
    }

    /// The slot of `key` if it holds a `T` (live or zombie). Never panics.
    #[inline]
    fn typed_slot<T: ?Sized + Object>(&self, key: KeyData) -> Result<&Slot, BorrowError> {
        self.table
            .get(key)
            .filter(|s| self.types.is::<T>(s.ty))
            .ok_or(BorrowError::Stale)
    }

    /// The slot of `key` if its handle is live and it holds a `T`.
    #[inline]
    pub(crate) fn live_slot<T: ?Sized + Object>(&self, key: KeyData) -> Option<&Slot> {
        let slot = self.table.get(key)?;
        (!slot.is_dead() && self.types.is::<T>(slot.ty)).then_some(slot)
    }

    /// What the slot of `key` holds, if its handle is live and it holds a `T`.
    #[inline]
    pub(crate) fn live_held<T: ?Sized + Object>(&self, key: KeyData) -> Option<Held> {
        let slot = self.live_slot::<T>(key)?;
        Some(self.held_as::<T>(key, slot))
    }

    /// Pins the object of `key`, shared or exclusive, and returns a pointer
    /// to it and to the borrow word the pin raised (for the guard to lower).
    ///
    /// `sync` selects an atomic read-modify-write (other threads may pin the
    /// same slot at once) over a plain load and store (one thread only).
    #[inline]
    pub(crate) fn pin<T: ?Sized + Object>(
        &self,
        key: KeyData,
        exclusive: bool,
        sync: bool,
    ) -> Result<(NonNull<T>, NonNull<AtomicU16>), PinError> {
        let slot = self.typed_slot::<T>(key)?;
        let word = &slot.borrow;
        let mut cur = if sync {
            word.load(Ordering::Relaxed)
        } else {
            plain::load(word)
        };
        loop {
            let new = if exclusive {
                if cur & (ZOMBIE | EXCLUSIVE) != 0 {
                    return Err(refused(cur).into());
                }
                if cur != 0 || self.reading() {
                    return Err(BorrowError::Borrowed.into());
                }
                EXCLUSIVE
            } else {
                // One compare on the hit path: below `SHARED` means no
                // `ZOMBIE` or `EXCLUSIVE` bit and room for one more pin.
                if cur >= SHARED {
                    if cur & (ZOMBIE | EXCLUSIVE) != 0 {
                        return Err(refused(cur).into());
                    }
                    return Err(PinError::TooManyShared);
                }
                cur + 1
            };
            if !sync {
                plain::store(word, new);
                break;
            }
            match word.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        let Some((data, meta)) = self.try_locate(self.held_as::<T>(key, slot)) else {
            // Unreachable while the invariants hold; never a panic here.
            word.fetch_sub(if exclusive { EXCLUSIVE } else { 1 }, Ordering::Relaxed);
            return Err(BorrowError::Stale.into());
        };
        let ptr = T::from_raw_parts(data.as_ptr(), if T::INFO.is_slice { meta } else { 0 });
        // SAFETY: object addresses are never null (mapped memory or an aligned dangling address).
        Ok((unsafe { NonNull::new_unchecked(ptr) }, NonNull::from(word)))
    }

    /// Unlinks the zombie of `key` whose last pin just went.
    pub(crate) fn finish_zombie(&mut self, key: KeyData) -> Option<Dying> {
        let stored = self.table.len(index_of(key)) as u32;
        let (ty, loc) = self
            .table
            .remove(key)
            .expect("a zombie stays in the table until finished");
        let len = self.types.len_or(ty, stored);
        let dying = self.dying(Held { ty, loc, len });
        if self.reading() {
            self.deferred.push(dying);
            return None;
        }
        Some(dying)
    }

    /// Kills the handle `key`. The value is dropped now (by the caller) or,
    /// if pinned, when its last guard goes.
    ///
    /// Needs exclusive access: no pin or unpin runs at the same time.
    #[inline(always)]
    pub(crate) fn free<T: ?Sized + Object>(&mut self, key: KeyData) -> Freed {
        self.free_where(key, |e| e.id == TypeId::of::<T>(), Types::is::<T>)
    }

    /// [`RawHeap::free`] for a live handle of any type.
    pub(crate) fn free_any(&mut self, key: KeyData) -> Freed {
        self.free_where(key, |_| true, |_, _| true)
    }

    /// [`RawHeap::free`] if the slot's type passes `is_type` (`entry_is`,
    /// the same test on the type's entry).
    #[inline(always)]
    fn free_where(
        &mut self,
        key: KeyData,
        entry_is: impl Fn(&Entry) -> bool,
        is_type: impl Fn(&Types, u16) -> bool,
    ) -> Freed {
        // The common case, in one lookup of the slot and one of its type:
        // live, unpinned, no read scope open (else nothing may be dropped
        // or given back now).
        if !self.reading() {
            let types = &self.types;
            let found = self.table.take_unpinned(key, |ty| {
                let entry = types.entry(ty).filter(|e| entry_is(e))?;
                Some((entry.info, entry.len, entry.size))
            });
            if let Some(((info, fixed, size), ty, loc, len)) = found {
                let len = if fixed == IN_TABLE { len } else { fixed };
                // (The `Held` is made where it is needed, apart: one made
                // here would be kept on the stack for both.)
                let size = if size == VARIES {
                    self.size_in(info, Held { ty, loc, len })
                } else {
                    debug_assert_eq!(size as usize, self.size_in(info, Held { ty, loc, len }));
                    size as usize
                };
                self.live_bytes -= size;
                if info.drop.is_none() {
                    // SAFETY: `size` and `loc` are those of the object's one
                    // allocation (its slot's), and the slot is vacant now:
                    // no one reaches the bytes again; this is their only release.
                    unsafe { self.space.release(size, loc) };
                    self.pace(size);
                    return Freed::Released;
                }
                return Freed::Now(self.dying(Held { ty, loc, len }));
            }
        }
        self.free_slow(key, is_type)
    }

    /// [`RawHeap::free_where`] past its common case: a stale or pinned
    /// handle, a slot in a sparse chunk or due to retire, an open read scope.
    #[inline(never)]
    fn free_slow(&mut self, key: KeyData, is_type: impl Fn(&Types, u16) -> bool) -> Freed {
        let Some((slot, len)) = self
            .table
            .get_with_len(key)
            .filter(|(s, _)| !s.is_dead() && is_type(&self.types, s.ty))
        else {
            return Freed::Stale;
        };
        let info = self.types.info(slot.ty);
        let len = self.types.len_or(slot.ty, len);
        let held = Held {
            ty: slot.ty,
            loc: slot.loc,
            len,
        };
        let size = self.size_in(info, held);
        // Guards lower the word without the engine (another thread's, on
        // `SyncHeap`): mark the zombie only while a pin is left, so that
        // exactly one of us sees the last pin go. No pin can be *taken* now:
        // that needs the engine, which we hold exclusively.
        let word = &slot.borrow;
        let mut cur = word.load(Ordering::Acquire);
        let pinned = loop {
            if cur == 0 {
                break false;
            }
            match word.compare_exchange_weak(cur, cur | ZOMBIE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(seen) => cur = seen,
            }
        };
        self.live_bytes -= size;
        if pinned {
            self.table.count_zombie();
            return Freed::Deferred;
        }
        let (ty, loc) = self.table.remove(key).expect("live slot exists");
        if info.drop.is_none() && !self.reading() {
            // No drop glue, no reader: nothing to run, give the bytes back now.
            // SAFETY: `size` and `loc` are those of the object's one
            // allocation (its slot's), and the slot is gone: no one reaches
            // the bytes again, and this is their only release.
            unsafe { self.space.release(size, loc) };
            self.pace(size);
            return Freed::Released;
        }
        let dying = self.dying(Held { ty, loc, len });
        if self.reading() {
            // A read scope may hold a `&` to it: drop it when the scope ends.
            self.deferred.push(dying);
            return Freed::Deferred;
        }
        Freed::Now(dying)
    }

    /// Whether a read scope is open: nothing may move or be dropped.
    #[inline]
    pub(crate) fn reading(&self) -> bool {
        self.readers.load(Ordering::Relaxed) != 0
    }

    /// Ends a read scope. Returns the objects freed during the scopes, to
    /// drop and release, if this was the last.
    pub(crate) fn end_read(&mut self) -> Vec<Dying> {
        let before = self.readers.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "ending a read scope that is not open");
        if before == 1 {
            core::mem::take(&mut self.deferred)
        } else {
            Vec::new()
        }
    }

    /// A pointer to the object of `key` for a read scope: no pin is taken
    /// (the scope keeps every object in place), but a `RefMut` excludes it.
    /// Never panics (see `Engine::try_pin`).
    #[inline]
    pub(crate) fn peek<T: ?Sized + Object>(&self, key: KeyData) -> Result<NonNull<T>, BorrowError> {
        let slot = self.typed_slot::<T>(key)?;
        let cur = slot.borrow.load(Ordering::Acquire);
        if cur & (ZOMBIE | EXCLUSIVE) != 0 {
            return Err(refused(cur));
        }
        let (data, meta) = self
            .try_locate(self.held_as::<T>(key, slot))
            .ok_or(BorrowError::Stale)?;
        let ptr = T::from_raw_parts(data.as_ptr(), if T::INFO.is_slice { meta } else { 0 });
        // SAFETY: object addresses are never null (mapped memory or an aligned dangling address).
        Ok(unsafe { NonNull::new_unchecked(ptr) })
    }

    /// Unlinks the unpinned object of `key` so that the caller can move its value out.
    pub(crate) fn remove<T: ?Sized + Object>(
        &mut self,
        key: KeyData,
    ) -> Result<Dying, RemoveError> {
        let slot = self.live_slot::<T>(key).ok_or(RemoveError::Stale)?;
        if slot.is_pinned() || self.reading() {
            return Err(RemoveError::Pinned);
        }
        let held = self.held_as::<T>(key, slot);
        self.live_bytes -= self.size_of(held);
        self.table.remove(key).expect("live slot exists");
        Ok(self.dying(held))
    }

    /// Allocates an object of type `uninit` (an `Object::UNINIT`: no value
    /// yet, no drop glue) for a builder that writes it outside the engine,
    /// and registers `to`, the type it will have. The object is pinned
    /// exclusively, so nothing moves it, reads it or moves it out meanwhile.
    /// Returns its key, its bytes and the index of `to`.
    pub(crate) fn alloc_building(
        &mut self,
        uninit: &'static TypeInfo,
        to: &'static TypeInfo,
        meta: usize,
    ) -> Result<(KeyData, NonNull<u8>, u16), AllocError> {
        debug_assert!(uninit.drop.is_none() && uninit.layout(meta) == to.layout(meta));
        let to_ty = self
            .types
            .index_of(to, meta)
            .ok_or(AllocError::OutOfMemory)?;
        let (key, ptr) = self.alloc(uninit, meta)?;
        let slot = self.table.get(key).expect("a new object has a slot");
        slot.borrow.store(EXCLUSIVE, Ordering::Relaxed);
        self.building += 1;
        if self.types.fixed_len(slot.ty) != IN_TABLE && self.types.fixed_len(to_ty) == IN_TABLE {
            // The uninitialised type got an index per length and `to` did
            // not (the registry's cap came between): the table must keep the
            // length that `to_ty` will not say. (A short slice: it fits.)
            self.table.set_len(index_of(key), meta);
        }
        Ok((key, ptr, to_ty))
    }

    /// The builder of `key` wrote its value: the object takes the type
    /// `to_ty` and is unpinned. False if it was freed meanwhile (by `clear`,
    /// or a handle of another heap): it stays a pinned zombie of the
    /// uninitialised type, for the builder to drop its value and then
    /// [`abandon`](RawHeap::abandon_building) it.
    pub(crate) fn finish_building(&mut self, key: KeyData, to_ty: u16) -> bool {
        let Some(slot) = self.table.get_mut(key) else {
            debug_assert!(false, "a building object stays in the table");
            return false;
        };
        let word = slot.borrow.load(Ordering::Relaxed);
        debug_assert!(word & EXCLUSIVE != 0, "the builder's pin");
        if word & ZOMBIE != 0 {
            return false;
        }
        slot.ty = to_ty;
        // Our exclusive pin was the only one: no guard can exist.
        slot.borrow.store(0, Ordering::Release);
        self.building -= 1;
        true
    }

    /// Gives up the object of `key` that a builder pinned, whose bytes hold
    /// no value now: unpins and frees it. Returns what to release.
    pub(crate) fn abandon_building(&mut self, key: KeyData) -> Option<Dying> {
        let slot = self.table.get(key)?;
        debug_assert!(
            slot.borrow.load(Ordering::Relaxed) & EXCLUSIVE != 0,
            "the builder's pin"
        );
        self.building -= 1;
        if slot.is_dead() {
            slot.borrow.store(ZOMBIE, Ordering::Relaxed);
            return self.finish_zombie(key);
        }
        slot.borrow.store(0, Ordering::Relaxed);
        match self.free_any(key) {
            Freed::Now(dying) => Some(dying),
            Freed::Stale | Freed::Deferred | Freed::Released => None,
        }
    }

    /// Resizes the unpinned slice of `key` to `new_len` elements, keeping the
    /// first ones and filling the new ones with `value`: in place when the
    /// object is the last one allocated (it grows into the free bytes after
    /// it) or shrinks, else by moving it. The handle stays the same.
    pub(crate) fn resize<T: Copy + Send + 'static>(
        &mut self,
        key: KeyData,
        new_len: usize,
        value: T,
    ) -> Result<(), ResizeError> {
        let slot = self.live_slot::<[T]>(key).ok_or(ResizeError::Stale)?;
        if slot.is_pinned() || self.reading() {
            return Err(ResizeError::Pinned);
        }
        let info = &<[T] as Object>::INFO;
        let new_size = info.layout(new_len).ok_or(AllocError::TooLarge)?.size();
        let held = self.held_as::<[T]>(key, slot);
        let (old_ptr, old_len) = self.locate(held);
        let old_size = info.size(old_len);
        if new_len == old_len {
            return Ok(());
        }
        let new_ty = self
            .types
            .index_of(info, new_len)
            .ok_or(AllocError::OutOfMemory)?;
        let in_segment = match held.loc.decode() {
            Where::Segment { granule } if new_size > 0 => Some(granule),
            _ => None,
        };
        let ptr = if let Some(granule) = in_segment {
            let (id, offset) = self.space.split_granule(granule);
            if self.space.resize_in_place(id, offset, old_size, new_size) {
                // The index of the new length (checked above), and the
                // length for the table if that index does not say it. A
                // segment slice is at most a quarter segment: its length fits.
                let slot = self.table.get_mut(key).expect("live slot exists");
                slot.ty = new_ty;
                self.table
                    .set_len(index_of(key), self.types.stored_len(new_ty, new_len));
                self.live_bytes = self.live_bytes - old_size + new_size;
                Some(old_ptr)
            } else {
                None
            }
        } else {
            None
        };
        let ptr = match ptr {
            Some(ptr) => ptr,
            None => {
                // A new object, then the old one's location again: making
                // room (pacing, a memory limit) may have moved it.
                let (new_key, new_ptr) = self.alloc(info, new_len)?;
                let (ty, loc) = self.table.remove(new_key).expect("new slot exists");
                let new = Held {
                    ty,
                    loc,
                    len: new_len as u32,
                };
                let slot = self.table.get_mut(key).expect("live slot exists");
                // The type's index of the new length (it may say the length).
                let old = Held {
                    ty: core::mem::replace(&mut slot.ty, new.ty),
                    loc: core::mem::replace(&mut slot.loc, new.loc),
                    len: old_len as u32,
                };
                self.table
                    .set_len(index_of(key), self.types.stored_len(new.ty, new_len));
                let (old_ptr, _) = self.locate(old);
                // SAFETY: two distinct allocations of at least `min` bytes each;
                // the old one holds `old_len` initialised `T`s (Copy: a bitwise
                // copy is a copy), and we hold the engine.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        old_ptr.as_ptr(),
                        new_ptr.as_ptr(),
                        old_size.min(new_size),
                    )
                };
                self.live_bytes -= old_size;
                let dying = self.dying(old);
                self.release(dying);
                new_ptr
            }
        };
        let first = ptr.as_ptr().cast::<T>();
        for i in old_len..new_len {
            // SAFETY: the object has room for `new_len` `T`s at `ptr`, aligned;
            // `T: Copy` runs no user code.
            unsafe { first.add(i).write(value) };
        }
        Ok(())
    }

    /// The memory limit (`None`: unlimited).
    pub(crate) fn memory_limit(&self) -> Option<usize> {
        self.limited.then(|| self.space.limit())
    }

    /// Sets or lifts the memory limit.
    pub(crate) fn set_memory_limit(&mut self, bytes: Option<usize>) {
        self.limited = bytes.is_some();
        self.space.set_limit(bytes.unwrap_or(usize::MAX));
    }

    /// The key of the first live `T` at a table index `>= from`, and the
    /// index to search from next. Never panics.
    pub(crate) fn next_live<T: ?Sized + Object>(&self, from: usize) -> Option<(KeyData, usize)> {
        self.table
            .next_occupied(from, |s| !s.is_dead() && self.types.is::<T>(s.ty))
    }

    /// Frees up to `max` live objects from table index `from` on. Returns the
    /// values to drop (by the caller, with the engine let go) and where to
    /// go on, if anything may be left.
    pub(crate) fn free_batch(&mut self, from: usize, max: usize) -> (Vec<Dying>, Option<usize>) {
        let mut dying = Vec::new();
        let mut from = from;
        for _ in 0..max {
            let Some((key, next)) = self.table.next_occupied(from, |s| !s.is_dead()) else {
                return (dying, None);
            };
            if let Freed::Now(d) = self.free_any(key) {
                dying.push(d);
            }
            from = next;
        }
        (dying, Some(from))
    }

    /// Gives back the memory of an object whose value is gone (dropped or moved out).
    pub(crate) fn release(&mut self, dying: Dying) {
        // SAFETY: `dying` came from a slot, which holds the pointer, size and
        // place of one allocation; the slot is gone, so this is the only
        // release of it, and the value was dropped or moved out (Dying's contract).
        unsafe { self.space.release(dying.size, dying.loc) };
        self.pace(dying.size);
    }

    /// Adds the debt of allocating or freeing `bytes`, and pays it with one
    /// bounded compaction step if it is due and the heap holds too much.
    #[inline]
    fn pace(&mut self, bytes: usize) {
        if self.space.has_pending() {
            self.release_piece();
        }
        // (No overflow: `pace_left` is positive here, `bytes` an object's size.)
        self.pace_left -= bytes as isize;
        if self.pace_left <= 0 {
            self.pace_due();
        }
    }

    /// [`RawHeap::pace`] once its bytes are used up: adds what they owe to
    /// the debt, runs a step if the debt reached one, and counts the bytes
    /// until the next step can be due.
    #[cold]
    #[inline(never)]
    fn pace_due(&mut self) {
        self.settle_debt();
        let mut quiet = 0;
        if let Some(pacing) = self.pacing {
            if self.debt >= step_of(&pacing) {
                quiet = self.paced_step(pacing);
            }
        }
        self.sync_pace();
        // A step that found nothing to do may wait longer.
        if quiet > self.pace_left {
            self.pace_left = quiet;
            self.pace_synced = quiet;
        }
    }

    /// Adds to `debt` what the bytes handled since the last sync owe.
    fn settle_debt(&mut self) {
        let used = self.pace_synced.saturating_sub(self.pace_left).max(0);
        if let Some(pacing) = &self.pacing {
            let owed = used.saturating_mul(isize::try_from(pacing.rate).unwrap_or(isize::MAX));
            self.debt = self.debt.saturating_add(owed);
        }
        self.pace_synced = self.pace_left;
    }

    /// Sets `pace_left` to the fewest bytes after which the debt reaches a
    /// step (at least one; practically never without pacing).
    fn sync_pace(&mut self) {
        let left = match &self.pacing {
            _ if self.debt == 0 => self.pace_quantum,
            None => isize::MAX / 2,
            Some(p) => {
                let rate = isize::try_from(p.rate.max(1)).unwrap_or(isize::MAX);
                // The fewest bytes whose debt takes it to a step: as `pace`
                // did when it added every call's debt and compared.
                let short = step_of(p).saturating_sub(self.debt);
                (short.saturating_add(rate - 1) / rate).clamp(1, isize::MAX / 2)
            }
        };
        self.pace_left = left;
        self.pace_synced = left;
    }

    /// Turns paced compaction on, off or to another policy; the debt owed
    /// so far is kept.
    pub(crate) fn set_pacing(&mut self, pacing: Option<Pacing>) {
        self.settle_debt();
        self.pacing = pacing;
        self.pace_quantum = quantum(pacing.as_ref());
        self.sync_pace();
    }

    /// Gives one piece of an emptied segment back to the OS: allocation and
    /// free pay for it as they go, whether pacing is on or not, so that no
    /// single call unmaps a pass's worth of segments.
    #[cold]
    #[inline(never)]
    fn release_piece(&mut self) {
        let mut report = CompactReport::default();
        self.release_pending(0, &mut report);
    }

    /// One paced step, if the heap holds more than `pacing` allows. Returns
    /// how many bytes of allocation and free can pass before the next check
    /// could find work, when this one found the heap within its allowance
    /// (else 0: the usual rhythm).
    #[cold]
    #[inline(never)]
    fn paced_step(&mut self, pacing: Pacing) -> isize {
        if self.reading() {
            self.debt = 0;
            return 0; // a read scope: nothing moves
        }
        // A heap that shrank keeps at most a sixteenth of itself in pooled
        // segments (as `compact_step` does); the rest goes back a piece at
        // a time (`release_piece`).
        self.space.trim_pool();
        // Pooled segments count: they are memory the heap holds. Emptied ones
        // on their way back do not: `release_piece` is giving them back.
        let held =
            self.space.held_bytes() - self.space.large_spare_bytes() - self.space.pending_bytes();
        let allowed = pacing.threshold * self.live_bytes as f64 + self.space.segment_size() as f64;
        if !self.evac.active() {
            // A refused pass is not tried again until the waste (held less
            // live) has grown by a quarter segment: choosing sources sorts
            // every segment, which is not worth repeating for nothing.
            let waste = held.saturating_sub(self.live_bytes);
            let retry = self
                .refused_waste
                .is_none_or(|w| waste >= w + self.space.segment_size() / 4);
            if held as f64 <= allowed || !retry || !self.begin_paced_pass() {
                if held as f64 > allowed && retry {
                    self.refused_waste = Some(waste);
                }
                self.debt = 0; // nothing to do: no debt carried into better times
                if held as f64 > allowed {
                    return 0;
                }
                // Only frees bring `allowed` down to `held` (by `threshold`
                // a byte); until that many bytes are freed (at most `QUIET`
                // steps' worth) no check can find work. If freeing every
                // live byte would not do it (a heap within its segment of
                // slack), only a new segment can: wait the longest.
                let quiet = self.pace_quantum.saturating_mul(QUIET);
                let frees = (allowed - held as f64) / pacing.threshold;
                if frees >= self.live_bytes as f64 {
                    return quiet;
                }
                return (frees as isize).min(quiet);
            }
            self.refused_waste = None;
        }
        // One step of `max_step` now (a smaller one would skip, for the rest
        // of the pass, every object bigger than it). What it moves is
        // charged against the debt, which may go negative: on average the
        // heap moves `rate` bytes per byte allocated or freed, no more.
        let budget = pacing.max_step;
        let moved = self.totals.bytes_moved;
        let mut report = CompactReport::default();
        self.run_pass(
            Budget {
                bytes: budget,
                oversize: false,
                spent: 0,
                sweep_apart: true,
            },
            &mut report,
        );
        let moved = self.totals.bytes_moved - moved;
        self.totals.paced_steps += 1;
        self.totals.paced_bytes_moved += moved;
        // A step that moved little (pinned objects, a pass ending) still
        // costs a step's worth, so that steps cannot run back to back.
        let charged = (moved as usize).max(pacing.step);
        self.debt = self
            .debt
            .saturating_sub(isize::try_from(charged).unwrap_or(isize::MAX));
        0
    }

    #[cfg_attr(loom, allow(dead_code))] // used by the compactor, which loom builds leave out
    /// Bytes of the objects whose handles are live.
    pub(crate) fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// Whether `key` is a live handle of a `T`.
    pub(crate) fn contains<T: ?Sized + Object>(&self, key: KeyData) -> bool {
        self.live_slot::<T>(key).is_some()
    }

    /// The heap's figures. Counting pinned objects walks the table (a
    /// counter would put a second write on every `get`), unless
    /// `no_guard_pins`: the caller knows that no guard pins an object
    /// (`Heap`, [`Engine::pinned_since_walk`]); then only builders' pins can
    /// be there, and [`RawHeap::building`] counts them.
    ///
    /// [`Engine::pinned_since_walk`]: crate::engine::Engine::pinned_since_walk
    pub(crate) fn stats(&self, no_guard_pins: bool) -> HeapStats {
        let pinned_objects = if no_guard_pins && self.building == 0 {
            debug_assert_eq!(
                self.table.pinned(),
                0,
                "a pin that no guard or builder holds"
            );
            0
        } else {
            self.table.pinned()
        };
        let segment_bytes = self.space.segment_count() * self.space.segment_size();
        let held_bytes = self.space.held_bytes();
        let spare_bytes = self.space.spare_bytes();
        HeapStats {
            live_objects: self.table.live(),
            live_bytes: self.live_bytes,
            held_bytes,
            segment_bytes,
            large_bytes: held_bytes - segment_bytes - spare_bytes,
            spare_bytes,
            metadata_bytes: self.table.metadata_bytes()
                + self.types.metadata_bytes()
                + self.space.metadata_bytes()
                + self.evac.metadata_bytes(),
            pinned_objects,
            segments: self.space.segment_count(),
            large_objects: self.space.large_count(),
            compactions: self.totals.compactions,
            objects_moved: self.totals.objects_moved,
            bytes_moved: self.totals.bytes_moved,
            bytes_released: self.totals.bytes_released,
            paced_bytes_moved: self.totals.paced_bytes_moved,
            paced_steps: self.totals.paced_steps,
        }
    }

    /// At the heap's end: how to drop each value still in it that has drop
    /// glue — live ones, and zombies whose last guard was forgotten
    /// (`mem::forget`; no guard can be used once the heap drops). Retired
    /// slots hold no value (their type is `()`). Memory stays mapped until
    /// the space drops.
    pub(crate) fn take_all_for_drop(&mut self) -> Vec<Droppable> {
        let deferred = core::mem::take(&mut self.deferred);
        deferred
            .iter()
            .filter_map(|d| d.info.drop.map(|drop| (d.ptr, d.meta, drop)))
            .chain(self.table.iter().filter_map(|(key, s)| {
                let drop = self.types.info(s.ty).drop?;
                let mut held = self.table.held(key)?;
                held.len = self.types.len_or(held.ty, held.len);
                let (ptr, meta) = self.locate(held);
                Some((ptr, meta, drop))
            }))
            .collect()
    }
}

/// Drops the value of `dying` and then hands it to `release`, which runs
/// even if the value's `Drop` panics (the panic then continues).
pub(crate) fn drop_then_release(dying: Dying, release: impl FnOnce(Dying)) {
    struct ReleaseGuard<F: FnOnce(Dying)>(Option<(Dying, F)>);
    impl<F: FnOnce(Dying)> Drop for ReleaseGuard<F> {
        fn drop(&mut self) {
            if let Some((dying, release)) = self.0.take() {
                release(dying);
            }
        }
    }
    let (ptr, meta, drop_fn) = (dying.ptr, dying.meta, dying.info.drop);
    let guard = ReleaseGuard(Some((dying, release)));
    if let Some(drop_fn) = drop_fn {
        // SAFETY: the object is unlinked (no handle or guard reaches it) and
        // its bytes stay reserved until `guard` releases them, so this is the
        // one drop of an initialised value of the type `drop_fn` was made for.
        unsafe { drop_fn(ptr.as_ptr(), meta) };
    }
    drop(guard);
}

/// Drops every value in `values`, continuing past a panicking `Drop` (a
/// second panic aborts, as in `Vec`).
pub(crate) fn drop_all(values: Vec<Droppable>) {
    struct Rest(std::vec::IntoIter<Droppable>);
    impl Drop for Rest {
        fn drop(&mut self) {
            for (ptr, meta, drop_fn) in self.0.by_ref() {
                // SAFETY: as in the loop below.
                unsafe { drop_fn(ptr.as_ptr(), meta) };
            }
        }
    }
    let mut rest = Rest(values.into_iter());
    // `by_ref`: if a drop panics, `rest` still holds the values after it.
    for (ptr, meta, drop_fn) in rest.0.by_ref() {
        // Each entry is an initialised value not yet dropped (live, a zombie
        // whose last guard was forgotten, or freed during a read scope that
        // never ended), of the type its drop function was made for (I2, I9),
        // listed once; the heap is ending and no guard or reader can be used.
        // SAFETY: so this is the value's one drop, and nothing reads it after.
        unsafe { drop_fn(ptr.as_ptr(), meta) };
    }
}

/// `pacing.step` as a debt (a step past `isize::MAX` is never reached).
fn step_of(pacing: &Pacing) -> isize {
    isize::try_from(pacing.step).unwrap_or(isize::MAX)
}

/// A heap within its allowance is checked again after at most this many
/// quanta of allocation and free ([`quantum`]), however far it is from the
/// allowance: a new segment can raise what it holds at any allocation.
const QUIET: isize = 16;

/// The bytes of allocation and free after which a debt of 0 reaches a step
/// of `pacing` (practically never without pacing).
fn quantum(pacing: Option<&Pacing>) -> isize {
    match pacing {
        None => isize::MAX / 2,
        Some(p) => {
            let rate = isize::try_from(p.rate.max(1)).unwrap_or(isize::MAX);
            (step_of(p).saturating_add(rate - 1) / rate).clamp(1, isize::MAX / 2)
        }
    }
}
