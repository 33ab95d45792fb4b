//! [`Space`]: where object bytes live. Segments for small and medium objects,
//! a mapping each for large ones, and the allocation cursor that bumps
//! through the holes of segments.

use core::ptr::NonNull;

use crate::config::Config;
use crate::error::AllocError;
use crate::large::LargeObjects;
use crate::mapping::{Mapping, Reservation, PAGE};
use crate::reuse::{Block, Reuse, REUSE_MAX};
use crate::segment::{align_up, Segment, LINE};
use crate::table::{Loc, Where, GRANULE};

/// The bump region currently allocated into: `[pos, limit)` of segment `seg`
/// is free (all its whole lines have count 0).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    seg: u32,
    pos: usize,
    limit: usize,
}

/// Compaction's targets bumped through the cursor's range one after
/// another ([`Space::begin_run`]): each object's end lines are counted as
/// it comes, the rest of marking (free bits, live counts, the cursor) is
/// done once for all at [`Space::end_run`]. Its objects are `[start', pos)`
/// with `start'` the first granule from `start`.
#[derive(Debug)]
pub(crate) struct Run {
    seg: u32,
    /// The segment's first byte (kept here: an address from it takes one
    /// load less than [`Segment::ptr_at`] on each move).
    base: NonNull<u8>,
    /// Where the cursor was when the run began.
    start: usize,
    /// The end of the run's last object.
    pos: usize,
    /// The end of the cursor's range.
    limit: usize,
    objects: usize,
    bytes: usize,
}

/// Where an object of `size` bytes starts when bumped from `pos` in a
/// range that ends at `limit`: the next granule, if the object fits.
#[inline(always)]
fn bump_start(pos: usize, limit: usize, size: usize) -> Option<usize> {
    let start = align_up(pos, GRANULE);
    (start + size <= limit).then_some(start)
}

/// The first byte of a segment, kept apart from the segment so that reaching
/// an object takes one load of a small, hot array.
#[derive(Debug, Clone, Copy)]
struct Base(NonNull<u8>);

// SAFETY: only an address (with the provenance of a mapping the space owns);
// it is dereferenced only by whoever holds the engine.
unsafe impl Send for Base {}
// SAFETY: as above; shared access only reads the address.
unsafe impl Sync for Base {}

/// All object memory of one heap.
#[derive(Debug)]
pub(crate) struct Space {
    segment_size: usize,
    large_threshold: usize,
    limit: usize,
    /// Segments by id; `None` for released ids, reused through `free_segments`.
    segments: Vec<Option<Segment>>,
    /// `bases[id]` is the start of segment `id` (dangling for released ids).
    bases: Vec<Base>,
    /// A granule address (see [`Loc`]) is `id << granule_shift | granule in
    /// the segment`: `granule_shift` is `log2(segment_size / GRANULE)`.
    granule_shift: u32,
    /// `(1 << granule_shift) - 1`.
    granule_mask: u32,
    /// Segment ids are below this, so that granule addresses stay below
    /// [`Loc::LARGE`].
    max_segments: usize,
    free_segments: Vec<u32>,
    /// Objects with a mapping each, and spare mappings for reuse
    /// (`compact()` gives the spares back).
    large: LargeObjects,
    /// Segments that compaction emptied during the pass in progress. They are
    /// the first targets (their pages are already faulted in) and go back to
    /// the OS when the pass ends, if still empty.
    emptied: Vec<u32>,
    /// Empty segments kept mapped for reuse (at most `pool_max`, see
    /// [`Config::segment_pool`]), counted in `held`; `compact()` gives them back.
    pool: Vec<Segment>,
    pool_max: usize,
    /// Empty segments on their way back to the OS, a piece at a time (see
    /// [`Space::release_pending`]), so that no call pays for unmapping many
    /// at once; the one being given back is last. Their bytes not given back
    /// yet are counted in `held`. A new segment is taken from here before
    /// a fresh one is mapped.
    releasing: Vec<Releasing>,
    /// Objects of at least this many bytes start on a line boundary.
    line_align_from: usize,
    /// Objects of 1 to `bump_max` bytes take [`Space::alloc`]'s inline
    /// path: `min(line_align_from - 1, large_threshold)`.
    bump_max: usize,
    cursor: Option<Cursor>,
    /// Segments worth recycling, by size class of their longest hole
    /// (`floor(log2(lines))`): a request takes the smallest class that fits,
    /// so small objects fill small holes and big holes wait for big objects.
    /// Entries may be stale; `Segment::queued` says which class (if any) holds
    /// a segment now.
    recyclable: Vec<Vec<u32>>,
    /// Freed blocks of small objects kept for the next allocation of their
    /// size (see [`Reuse`]): at most [`reuse_has_room`]'s bytes.
    reuse: Reuse,
    /// Invariant: the sum of the lengths of all mappings held.
    held: usize,
    segment_count: usize,
    /// Granule addresses below this are in [`Space::places`]: the object at
    /// `loc` is at `place_base + loc * GRANULE` (I16). 0 without places.
    place_below: u32,
    /// The first byte of [`Space::places`] (dangling without).
    place_base: Base,
    /// Where it can (64-bit unix), one reservation of address space for
    /// every segment id: segment `id` is the place `id * segment_size` of
    /// it (I16), so that an object's address is its granule address scaled,
    /// with no table of segment starts to read. Declared last: it is
    /// dropped after every segment that lives in it.
    places: Option<Reservation>,
}

impl Space {
    pub(crate) fn new(config: &Config) -> Space {
        // `Config` keeps the segment size a power of two, at least 4 KiB.
        debug_assert!(config.segment_size.is_power_of_two() && config.segment_size >= 4096);
        let granule_shift = (config.segment_size / GRANULE).trailing_zeros();
        let max_segments = (Loc::LARGE >> granule_shift) as usize;
        // Every id's place, reserved (address space only: no memory, no
        // commit charge). Where that is refused, segments are mapped apart.
        let places = if Reservation::SUPPORTED {
            Reservation::for_places(max_segments * config.segment_size, config.huge_pages)
        } else {
            None
        };
        let mut space = Space {
            granule_shift,
            granule_mask: (1 << granule_shift) - 1,
            max_segments,
            segment_size: config.segment_size,
            large_threshold: config.segment_size / 4,
            limit: config.memory_limit.unwrap_or(usize::MAX),
            segments: Vec::new(),
            bases: Vec::new(),
            free_segments: Vec::new(),
            large: LargeObjects::default(),
            emptied: Vec::new(),
            pool: Vec::new(),
            pool_max: config.segment_pool,
            releasing: Vec::new(),
            line_align_from: usize::MAX, // set below
            bump_max: 0,                 // set below
            cursor: None,
            recyclable: vec![Vec::new(); CLASSES],
            reuse: Reuse::default(),
            held: 0,
            segment_count: 0,
            // `max_segments << granule_shift <= Loc::LARGE`, a `u32`.
            place_below: if places.is_some() {
                (max_segments << granule_shift) as u32
            } else {
                0
            },
            place_base: Base(
                places
                    .as_ref()
                    .map_or(NonNull::dangling(), Reservation::base),
            ),
            places,
        };
        space.set_line_align(config.line_align);
        space
    }

    /// Bytes held from the OS for objects.
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segment_count
    }

    pub(crate) fn large_count(&self) -> usize {
        self.large.count()
    }

    pub(crate) fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Bytes of bookkeeping kept by the space.
    pub(crate) fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        self.segments.capacity() * size_of::<Option<Segment>>()
            + self
                .segments
                .iter()
                .flatten()
                .map(Segment::metadata_bytes)
                .sum::<usize>()
            + self
                .pool
                .iter()
                .chain(self.releasing.iter().map(|r| &r.seg))
                .map(Segment::metadata_bytes)
                .sum::<usize>()
            + self.releasing.capacity() * size_of::<Releasing>()
            + self.large.metadata_bytes()
            + self.reuse.metadata_bytes()
            + self.bases.capacity() * core::mem::size_of::<Base>()
            + (self.free_segments.capacity()
                + self.recyclable.iter().map(Vec::capacity).sum::<usize>())
                * size_of::<u32>()
    }

    /// The granule address of byte `offset` (a multiple of [`GRANULE`]) of
    /// segment `id`.
    #[inline]
    pub(crate) fn granule(&self, id: u32, offset: usize) -> u32 {
        debug_assert!((id as usize) < self.max_segments && offset < self.segment_size);
        debug_assert!(offset.is_multiple_of(GRANULE), "objects start on granules");
        (id << self.granule_shift) | (offset / GRANULE) as u32
    }

    /// The segment id and byte offset of granule address `granule`.
    #[inline]
    pub(crate) fn split_granule(&self, granule: u32) -> (u32, usize) {
        (
            granule >> self.granule_shift,
            (granule & self.granule_mask) as usize * GRANULE,
        )
    }

    /// The address of the segment bytes at `loc`, or `None` if `loc` is not
    /// in a segment (or names a segment never used). Never panics.
    #[inline]
    pub(crate) fn try_at(&self, loc: Loc) -> Option<NonNull<u8>> {
        if Reservation::SUPPORTED {
            if loc.bits() < self.place_below {
                // SAFETY: `loc * GRANULE < place_below * GRANULE`, the length
                // of the reservation at `place_base`: in bounds. (A live
                // object's bytes are there, in its segment's place: I16, I2.)
                return Some(unsafe { self.place_base.0.add(loc.bits() as usize * GRANULE) });
            }
            if self.places.is_some() {
                // A large or zero-sized tag: the caller's cold path.
                return None;
            }
        }
        self.try_at_base(loc)
    }

    /// [`Space::try_at`] through the segment's start.
    #[inline]
    fn try_at_base(&self, loc: Loc) -> Option<NonNull<u8>> {
        // Large and zero-sized tags are at or above `Loc::LARGE`, so their
        // "ids" are at least `max_segments`, beyond every base.
        let (id, offset) = self.split_granule(loc.bits());
        let base = self.bases.get(id as usize)?.0;
        // SAFETY: a granule address of a live object is inside its segment's
        // mapping (I2), and `offset < segment_size` for any granule address,
        // the length of every segment's mapping; so is `base + offset`.
        Some(unsafe { base.add(offset) })
    }

    /// The first byte and slice length of large object `id` (no panic).
    #[inline]
    pub(crate) fn try_large(&self, id: usize) -> Option<(NonNull<u8>, usize)> {
        self.large.try_get(id)
    }

    /// Records the slice length of large object `id`.
    pub(crate) fn set_large_meta(&mut self, id: usize, meta: usize) {
        self.large.set_meta(id, meta);
    }

    #[inline]
    pub(crate) fn segment(&self, id: u32) -> Option<&Segment> {
        self.segments.get(id as usize)?.as_ref()
    }

    /// Ids of all segments, for choosing compaction sources.
    pub(crate) fn segment_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    /// The segment the cursor bumps through, if any.
    pub(crate) fn current_segment(&self) -> Option<u32> {
        self.cursor.map(|c| c.seg)
    }

    /// Finds room for `size` bytes aligned to `align` (a power of two), and
    /// says where they are as a slot does.
    ///
    /// The bytes are uninitialised and reserved until [`Space::release`].
    /// Never returns memory in an evacuating segment.
    #[inline(always)]
    pub(crate) fn alloc(
        &mut self,
        size: usize,
        align: usize,
    ) -> Result<(NonNull<u8>, Loc), AllocError> {
        match self.alloc_small(size, align) {
            Some(found) => Ok(found),
            None => self.alloc_slow(size, align),
        }
    }

    /// [`Space::alloc`]'s common cases, inline: a small object (no line
    /// alignment, not large) in a block freed by an object of its size, or
    /// bumped into the cursor's range; `None` if neither applies (nothing
    /// changed).
    #[inline(always)]
    pub(crate) fn alloc_small(&mut self, size: usize, align: usize) -> Option<(NonNull<u8>, Loc)> {
        debug_assert!(align.is_power_of_two());
        if self.bumps(size, align) {
            if size <= REUSE_MAX {
                if let Some(block) = self.reuse.pop(size, align) {
                    return Some(self.reuse_block(block, size));
                }
            }
            if let Some(c) = self.cursor {
                if let Some(start) = bump_start(c.pos, c.limit, size) {
                    return Some(self.bump(c, start, size));
                }
            }
        }
        None
    }

    /// Whether an object of `size` bytes aligned to `align` may take the
    /// inline bump (no line alignment, not zero-sized, not large).
    #[inline(always)]
    fn bumps(&self, size: usize, align: usize) -> bool {
        // (`size - 1 < bump_max`: `1 <= size <= bump_max`, one compare.)
        size.wrapping_sub(1) < self.bump_max && align <= GRANULE
    }

    /// Segment `seg`, whose bytes `[start, start + size)` a bump is about
    /// to reserve: the cursor's range, free lines (I4; checked in debug
    /// builds).
    #[inline(always)]
    fn bump_segment(&mut self, seg: u32, start: usize, size: usize) -> &mut Segment {
        let seg = self.segments[seg as usize]
            .as_mut()
            .expect("cursor segment exists");
        debug_assert!(
            seg.lines_free(start / LINE + 1, (start + size - 1) / LINE),
            "bump into used lines"
        );
        seg
    }

    /// Hands out `block`, a kept freed block (I14), for a new object of
    /// `size` bytes that ends in the block's last line.
    #[inline(always)]
    fn reuse_block(&mut self, block: Block, size: usize) -> (NonNull<u8>, Loc) {
        let (id, offset) = self.split_granule(block.granule);
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("a kept block's segment exists");
        debug_assert!(!seg.evacuating);
        seg.unkeep(block.size as usize);
        // Still marked: the object ends in the line the block ends in
        // (`Reuse::pop`), so it covers the same lines.
        seg.live_bytes = seg.live_bytes + size - block.size as usize;
        (seg.ptr_at(offset), Loc::segment(block.granule))
    }

    /// Reserves `[start, start + size)` of the cursor's range `c`.
    #[inline(always)]
    fn bump(&mut self, c: Cursor, start: usize, size: usize) -> (NonNull<u8>, Loc) {
        let seg = self.bump_segment(c.seg, start, size);
        seg.mark(start, size);
        let ptr = seg.ptr_at(start);
        self.cursor = Some(Cursor {
            pos: start + size,
            ..c
        });
        (ptr, Loc::segment(self.granule(c.seg, start)))
    }

    /// Starts a [`Run`] at the cursor: compaction's targets bumped one after
    /// another, their lines marked once at its end ([`Space::end_run`]).
    /// `None` if there is no cursor, or if kept blocks wait for reuse
    /// (which [`Space::alloc`] fills first: then compaction goes that way).
    /// Until the run ends, only [`Space::run_alloc`] and [`Space::touch`]
    /// may be called.
    #[inline]
    pub(crate) fn begin_run(&mut self) -> Option<Run> {
        let c = self.cursor?;
        if !self.reuse.is_empty() {
            return None;
        }
        Some(Run {
            seg: c.seg,
            base: self.segment_start(c.seg),
            start: c.pos,
            pos: c.pos,
            limit: c.limit,
            objects: 0,
            bytes: 0,
        })
    }

    /// [`Space::alloc`]'s bump through the cursor's range, for a run: the
    /// same place, the lines' counts only (`None` if the object does not
    /// take the inline path or does not fit: end the run and allocate).
    #[inline(always)]
    pub(crate) fn run_alloc(
        &mut self,
        run: &mut Run,
        size: usize,
        align: usize,
    ) -> Option<(NonNull<u8>, Loc)> {
        debug_assert!(align.is_power_of_two());
        // As `alloc_small`'s bump (no kept block can be taken: `begin_run`).
        if !self.bumps(size, align) {
            return None;
        }
        let start = bump_start(run.pos, run.limit, size)?;
        self.bump_segment(run.seg, start, size)
            .count_ends(start, size);
        run.pos = start + size;
        run.objects += 1;
        run.bytes += size;
        // SAFETY: `start + size <= limit <= segment size` (`bump_start`):
        // inside the segment's mapping, whose first byte is `base`.
        let ptr = unsafe { run.base.add(start) };
        Some((ptr, Loc::segment(self.granule(run.seg, start))))
    }

    /// Ends `run`: its objects' lines are marked, its segment counts them,
    /// and the cursor goes on from where the run stopped.
    pub(crate) fn end_run(&mut self, run: Run) {
        if run.objects == 0 {
            return;
        }
        debug_assert!(
            self.cursor
                .is_some_and(|c| c.seg == run.seg && c.pos == run.start && c.limit == run.limit),
            "the cursor did not move during the run"
        );
        let seg = self.segments[run.seg as usize]
            .as_mut()
            .expect("the run's segment exists");
        seg.mark_run(
            align_up(run.start, GRANULE),
            run.pos,
            run.objects,
            run.bytes,
        );
        self.cursor = Some(Cursor {
            seg: run.seg,
            pos: run.pos,
            limit: run.limit,
        });
    }

    /// [`Space::alloc`] when the cursor's range has no room (or the object
    /// is zero-sized, large, over-aligned or line-aligned).
    #[inline(never)]
    fn alloc_slow(&mut self, size: usize, align: usize) -> Result<(NonNull<u8>, Loc), AllocError> {
        // (Objects from `line_align_from` bytes start on a line: see
        // `Config::line_align`.)
        let align = if size >= self.line_align_from {
            align.max(LINE)
        } else {
            align
        };
        if size == 0 {
            // A zero-sized value needs no memory: any aligned, non-null address will do.
            let ptr =
                NonNull::new(core::ptr::without_provenance_mut(align)).expect("align is non-zero");
            return Ok((ptr, Loc::ZERO_SIZED));
        }
        // Slots name objects in segments by granule (see `Loc`).
        let align = align.max(GRANULE);
        if size > self.large_threshold || align > PAGE {
            return self.alloc_large(size, align);
        }
        if size <= REUSE_MAX && size < self.line_align_from {
            // (Over-aligned: a kept block may be aligned enough.)
            if let Some(block) = self.reuse.pop(size, align) {
                return Ok(self.reuse_block(block, size));
            }
        }
        loop {
            if let Some(c) = self.cursor {
                let start = align_up(c.pos, align);
                if start + size <= c.limit {
                    return Ok(self.bump(c, start, size));
                }
                let seg = self.segments[c.seg as usize]
                    .as_mut()
                    .expect("cursor segment exists");
                seg.touched_to(c.pos);
                if let Some((pos, limit)) = seg.find_hole(c.limit / LINE, size, align) {
                    self.cursor = Some(Cursor {
                        seg: c.seg,
                        pos,
                        limit,
                    });
                    continue;
                }
                self.drop_cursor();
            }
            self.cursor = Some(match self.next_segment(size, align) {
                Ok(cursor) => cursor,
                Err(err) if self.reuse.is_empty() => return Err(err),
                Err(_) => {
                    // Under the memory limit: the kept blocks may free a
                    // segment or a hole. Give them back and look again.
                    self.flush_reuse();
                    continue;
                }
            });
        }
    }

    /// A recyclable segment with a hole that fits (the smallest size class
    /// that does), or a segment emptied by compaction, or a fresh segment.
    fn next_segment(&mut self, size: usize, align: usize) -> Result<Cursor, AllocError> {
        let needed = (size + align.saturating_sub(LINE)).div_ceil(LINE);
        for class in class_of(needed)..CLASSES {
            let mut i = self.recyclable[class].len();
            let mut examined = 0;
            while i > 0 && examined < 16 {
                i -= 1;
                examined += 1;
                let id = self.recyclable[class][i];
                let Some(seg) = self.segments.get_mut(id as usize).and_then(Option::as_mut) else {
                    self.recyclable[class].swap_remove(i);
                    continue;
                };
                if seg.queued != Some(class as u8) || seg.evacuating {
                    self.recyclable[class].swap_remove(i); // stale entry
                    continue;
                }
                if seg.max_hole < needed {
                    continue; // same class, smaller hole: leave it for smaller requests
                }
                self.recyclable[class].swap_remove(i);
                seg.queued = None;
                if align <= LINE {
                    // The longest hole is known exactly: start there, no search.
                    let (pos, limit) = (
                        seg.max_hole_at * LINE,
                        (seg.max_hole_at + seg.max_hole) * LINE,
                    );
                    debug_assert_eq!(
                        seg.find_hole(seg.max_hole_at, size, align),
                        Some((pos, limit))
                    );
                    return Ok(Cursor {
                        seg: id,
                        pos,
                        limit,
                    });
                }
                if let Some((pos, limit)) = seg.find_hole(0, size, align) {
                    return Ok(Cursor {
                        seg: id,
                        pos,
                        limit,
                    });
                }
                // The hole is long enough but alignment does not fit: requeue.
                self.queue(id);
            }
        }
        while let Some(id) = self.emptied.pop() {
            if let Some(seg) = self.segments.get(id as usize).and_then(Option::as_ref) {
                debug_assert_eq!(seg.live_objects, 0, "an emptied segment is empty");
                return Ok(Cursor {
                    seg: id,
                    pos: 0,
                    limit: seg.size(),
                });
            }
        }
        // What taking a segment adds to `held`: nothing from the pool, the
        // discarded pages of one on its way back, or a fresh one.
        let adds = match (self.pool.is_empty(), self.releasing.first()) {
            (false, _) => 0,
            (true, Some(r)) => r.discarded,
            (true, None) => self.segment_size,
        };
        // With places, a pooled or retiring segment keeps its id (its place);
        // only a fresh one needs a free id.
        let needs_id = self.places.is_none() || (self.pool.is_empty() && self.releasing.is_empty());
        if self.held.saturating_add(adds) > self.limit
            || (needs_id
                && self.free_segments.is_empty()
                && self.segments.len() >= self.max_segments)
        {
            // Past the limit, or out of ids (a slot's 32 bits address at
            // most `Loc::LARGE` granules of segments).
            return Err(AllocError::OutOfMemory);
        }
        let seg = match self.pool.pop() {
            Some(seg) => seg, // already counted in `held`
            None if !self.releasing.is_empty() => {
                // Its pages are (mostly) still there: no mmap, fewer faults.
                let r = self.releasing.remove(0);
                self.held += r.discarded;
                let mut seg = r.seg;
                seg.reset_empty();
                // Its last `discarded` bytes went back to the OS.
                seg.untouched = seg.untouched.min(seg.mapped_bytes() - r.discarded);
                seg
            }
            None => {
                let seg = self.fresh_segment().ok_or(AllocError::OutOfMemory)?;
                self.held += seg.mapped_bytes();
                seg
            }
        };
        self.segment_count += 1;
        let limit = seg.size();
        let base = Base(seg.ptr_at(0));
        let id = match self.place_of(&seg) {
            // Its place is its id (I16): out of the table, the id is not
            // free while the segment lives (pooled or retiring).
            Some(id) => {
                debug_assert!(self.segments[id as usize].is_none());
                self.segments[id as usize] = Some(seg);
                self.bases[id as usize] = base;
                id
            }
            None => self.new_id(seg, base),
        };
        Ok(Cursor {
            seg: id,
            pos: 0,
            limit,
        })
    }

    /// A new segment: in the place of the next free id, or mapped apart.
    fn fresh_segment(&mut self) -> Option<Segment> {
        if self.places.is_none() {
            return Segment::new(self.segment_size);
        }
        // An id (unused, I16) whose place the new segment takes.
        let id = match self.free_segments.pop() {
            Some(id) => id as usize,
            None => {
                self.segments.push(None);
                self.bases.push(Base(NonNull::dangling()));
                self.segments.len() - 1
            }
        };
        debug_assert!(id < self.max_segments, "checked by the caller");
        let places = self.places.as_ref().expect("checked above");
        let Some(ptr) = places.place(id * self.segment_size, self.segment_size) else {
            self.free_segments.push(id as u32);
            return None;
        };
        // SAFETY: `ptr` is the place just made for id `id`, which no segment
        // has (a free or new id, I16); the reservation is dropped after
        // every segment (the last field of `Space`).
        let mapping = unsafe { Mapping::placed(ptr, self.segment_size) };
        Some(Segment::in_mapping(mapping, self.segment_size))
    }

    /// The id of `seg` if it lives in a place (I16).
    #[inline]
    fn place_of(&self, seg: &Segment) -> Option<u32> {
        self.places.as_ref()?;
        let offset = seg.ptr_at(0).as_ptr().addr() - self.place_base.0.as_ptr().addr();
        debug_assert!(offset.is_multiple_of(self.segment_size));
        Some((offset / self.segment_size) as u32)
    }

    /// Gives `seg` (mapped apart) an id: a free one, or the next.
    fn new_id(&mut self, seg: Segment, base: Base) -> u32 {
        match self.free_segments.pop() {
            Some(id) => {
                self.segments[id as usize] = Some(seg);
                self.bases[id as usize] = base;
                id
            }
            None => {
                self.segments.push(Some(seg));
                self.bases.push(base);
                (self.segments.len() - 1) as u32
            }
        }
    }

    fn alloc_large(&mut self, size: usize, align: usize) -> Result<(NonNull<u8>, Loc), AllocError> {
        let len = Mapping::length_for(size, align).ok_or(AllocError::TooLarge)?;
        if self.large.is_full(Loc::MAX_LARGE) {
            // A slot names a large object in 25 bits.
            return Err(AllocError::OutOfMemory);
        }
        let mapping = match self.large.take_spare(size, align) {
            Some(spare) => spare,
            None => {
                if self.held.saturating_add(len) > self.limit {
                    return Err(AllocError::OutOfMemory);
                }
                let mapping = Mapping::new(size, align).ok_or(AllocError::OutOfMemory)?;
                debug_assert_eq!(mapping.len(), len);
                self.held += mapping.len();
                mapping
            }
        };
        // The object's bytes are `[start, start + size)`: inside the mapping.
        debug_assert!(mapping.fits(size, align), "a large object fits its mapping");
        let ptr = mapping.start();
        Ok((ptr, Loc::large(self.large.insert(mapping) as usize)))
    }

    /// Gives back the `size` bytes at `loc` that [`Space::alloc`] returned.
    /// Returns the bytes given back to the OS.
    ///
    /// # Safety
    /// `size` and `loc` must come from one earlier `alloc` call not released
    /// yet, and nothing may access those bytes afterwards.
    #[inline]
    pub(crate) unsafe fn release(&mut self, size: usize, loc: Loc) -> usize {
        let Some(granule) = loc.granule() else {
            return self.release_elsewhere(loc);
        };
        let (id, offset) = self.split_granule(granule);
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("object's segment exists");
        if cfg!(debug_assertions) {
            // SAFETY: the caller gives up these bytes; they are in the segment.
            // Poison them so that a stale read shows up in the value checks of
            // the tests, where Miri and ASan see only one live allocation.
            unsafe { seg.ptr_at(offset).as_ptr().write_bytes(POISON, size) };
        }
        // Kept for the next object of its size (I14): its segment keeps
        // another object, and the kept blocks stay within their cap.
        if size <= REUSE_MAX
            && size <= self.bump_max
            && !seg.evacuating
            && seg.live_objects > seg.cached + 1
            && reuse_has_room(self.reuse.bytes() + size, self.held, self.segment_size)
            && self.reuse.len() < REUSE_BLOCKS
        {
            seg.keep(size);
            self.reuse.push(Block {
                granule,
                size: size as u32,
            });
            return 0;
        }
        // Unmarked in place; what follows from it (a freed line's hole, an
        // emptied segment) is `unmark_done`'s, out of line. The common
        // outcomes stay here: the line is still used (by another object of
        // a segment that keeps no blocks), or the segment emptied is the one
        // the cursor bumps through, which starts over.
        let line_freed = seg.unmark(offset, size);
        if !seg.evacuating && seg.cached == 0 {
            if !line_freed {
                debug_assert!(seg.live_objects > 0, "its line still has an object");
                return 0;
            }
            if seg.live_objects == 0 && self.cursor.is_some_and(|c| c.seg == id) {
                // Keep the segment we allocate into, and start it over.
                self.cursor = Some(Cursor {
                    seg: id,
                    pos: 0,
                    limit: seg.size(),
                });
                return 0;
            }
        }
        self.unmark_done(id, offset, size, line_freed);
        0
    }

    /// The objects that compaction has just moved out of source `id`
    /// (evacuating): `moved` lists their `(offset, size)`, `bytes` in all;
    /// the caller keeps that list until the source's evacuation ends
    /// ([`Space::settle_lines`]). Only the segment's counts change now: its
    /// lines stay marked as they were, which may say a line is used when it
    /// is free, never the reverse (DESIGN I3, "a source's lines"). A source
    /// keeps no freed block (I14) and no hole list, and nothing is
    /// allocated in it, so nothing reads its lines for room until then.
    ///
    /// # Safety
    /// As [`Space::release`], for each of `moved`: the bytes at `offset` of
    /// segment `id` were reserved by one allocation of `size` bytes, and
    /// nothing refers to them any more.
    pub(crate) unsafe fn moved_out(&mut self, id: u32, moved: &[(u32, u32)], bytes: usize) {
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("a source segment exists");
        debug_assert!(seg.evacuating, "only sources are released this way");
        if cfg!(debug_assertions) {
            for &(offset, size) in moved {
                // SAFETY: as in `release`: bytes the caller gave up, in the
                // segment. Poisoned so that a stale read shows in the tests.
                unsafe {
                    seg.ptr_at(offset as usize)
                        .as_ptr()
                        .write_bytes(POISON, size as usize)
                };
            }
        }
        seg.live_objects -= moved.len();
        seg.live_bytes -= bytes;
    }

    /// The end of source `id`'s evacuation: its line counts exact again. If
    /// it holds nothing, every line is free; else the objects of `moved`
    /// (every one [`Space::moved_out`] took out of it in this pass) give
    /// up their lines.
    pub(crate) fn settle_lines(&mut self, id: u32, moved: &[(u32, u32)]) {
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("a source segment exists");
        debug_assert!(seg.evacuating, "only sources settle");
        if moved.is_empty() {
            return;
        }
        if seg.live_objects == 0 {
            seg.forget_lines();
            return;
        }
        // Pinned or dying objects stay: unmark the moved ones alone.
        for &(offset, size) in moved {
            seg.unmark_span(offset as usize, size as usize);
        }
    }

    /// Notes that the `size` bytes at `loc` (in a segment) are about to be
    /// written; returns how many pages that writes for the first time (each
    /// a page fault). See [`Segment::touch`].
    #[inline]
    pub(crate) fn touch(&mut self, loc: Loc, size: usize) -> usize {
        let Some(g) = loc.granule() else { return 0 };
        let (id, offset) = self.split_granule(g);
        self.segments
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .map_or(0, |seg| seg.touch(offset, size))
    }

    /// The first byte of segment `id`, which exists.
    #[inline]
    pub(crate) fn segment_start(&self, id: u32) -> NonNull<u8> {
        self.segments[id as usize]
            .as_ref()
            .expect("segment exists")
            .ptr_at(0)
    }

    /// Forgets the object (or kept block) of `size` bytes at `offset` of
    /// segment `id`: its lines, its holes, the segment itself if it held
    /// nothing else.
    fn unmark(&mut self, id: u32, offset: usize, size: usize) {
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("object's segment exists");
        let line_freed = seg.unmark(offset, size);
        self.unmark_done(id, offset, size, line_freed);
    }

    /// [`Space::unmark`] once the object's lines are unmarked in segment
    /// `id` (`line_freed`: one became free): its holes, the kept blocks
    /// left alone there, the segment itself if it holds nothing else.
    #[inline(never)]
    fn unmark_done(&mut self, id: u32, offset: usize, size: usize, mut line_freed: bool) {
        let current = self.cursor.map(|c| c.seg);
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("object's segment exists");
        if seg.evacuating {
            return;
        }
        if seg.cached != 0 && seg.live_objects == seg.cached {
            // Only kept blocks are left: give them back too (I14).
            line_freed |= self.flush_segment(id);
        }
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("object's segment exists");
        if line_freed && current != Some(id) {
            seg.grow_hole_around(offset, size);
        }
        if seg.live_objects == 0 {
            if current == Some(id) {
                // Keep the segment we allocate into, and start it over.
                let limit = seg.size();
                self.cursor = Some(Cursor {
                    seg: id,
                    pos: 0,
                    limit,
                });
                return;
            }
            self.release_segment(id);
            return;
        }
        if current == Some(id) {
            // The object bumped last went: the cursor takes its bytes back,
            // so that an allocation that follows writes memory still in the
            // cache (an alloc + free of 16 KiB: 317 → 119 ns). They belong
            // to no object now, and every whole line among them was the
            // object's alone (I4).
            if let Some(c) = self.cursor.as_mut().filter(|c| c.pos == offset + size) {
                c.pos = offset;
            }
            return;
        }
        if line_freed {
            self.queue(id);
        }
    }

    /// Unmarks the kept blocks of segment `id` (out of [`Space::reuse`]).
    /// Returns whether a line became free. The caller updates the holes
    /// (or the segment is empty now).
    fn flush_segment(&mut self, id: u32) -> bool {
        let seg = self.segments[id as usize].as_ref().expect("segment exists");
        if seg.cached == 0 {
            return false;
        }
        let line_freed = self.take_back(|sid, _| sid == id);
        debug_assert_eq!(
            self.segments[id as usize].as_ref().map(|s| s.cached),
            Some(0),
            "every kept block of the segment is found"
        );
        line_freed
    }

    /// Gives the kept blocks of the evacuating segments (the sources a
    /// pass just chose) back to them, in one look at the kept blocks: a
    /// source's holes are its own, and nothing is allocated there (I14).
    /// Returns how many blocks it took back.
    pub(crate) fn flush_sources(&mut self) -> usize {
        let kept = self.reuse.len();
        self.take_back(|_, seg| seg.evacuating);
        kept - self.reuse.len()
    }

    /// Takes the kept blocks of the segments that `which` picks (by id) out
    /// of [`Space::reuse`] and unmarks them in their segments, with no hole
    /// bookkeeping (see the callers). Returns whether a line became free.
    fn take_back(&mut self, which: impl Fn(u32, &Segment) -> bool) -> bool {
        let mut taken = Vec::new();
        let (segments, shift) = (&self.segments, self.granule_shift);
        self.reuse.take_where(
            |b| {
                let id = b.granule >> shift;
                segments[id as usize]
                    .as_ref()
                    .is_some_and(|seg| which(id, seg))
            },
            |b| taken.push(b),
        );
        let mut line_freed = false;
        for b in taken {
            let (id, offset) = self.split_granule(b.granule);
            let seg = self.segments[id as usize]
                .as_mut()
                .expect("a kept block's segment exists");
            seg.unkeep(b.size as usize);
            line_freed |= seg.unmark(offset, b.size as usize);
        }
        line_freed
    }

    /// Gives every kept block back to its segment (as a free would have),
    /// so that compaction sees each as the hole it is, and the memory of
    /// [`Space::reuse`]'s stacks back to the allocator.
    pub(crate) fn flush_reuse(&mut self) {
        let mut blocks = Vec::new();
        self.reuse.drain(|b| blocks.push(b));
        // First no segment counts kept blocks (I14 for the unmarks below),
        // then each block is freed.
        for b in &blocks {
            let (id, _) = self.split_granule(b.granule);
            self.segments[id as usize]
                .as_mut()
                .expect("a kept block's segment exists")
                .unkeep(b.size as usize);
        }
        for b in blocks {
            let (id, offset) = self.split_granule(b.granule);
            self.unmark(id, offset, b.size as usize);
        }
    }

    /// [`Space::release`] of a large or zero-sized object.
    #[cold]
    #[inline(never)]
    fn release_elsewhere(&mut self, loc: Loc) -> usize {
        if let Where::Large { id } = loc.decode() {
            if let Some(oldest) = self.large.remove_to_spare(id as u32) {
                self.held -= oldest.len();
                return oldest.len();
            }
        }
        0
    }

    /// Resizes the object at `offset` in segment `id` from `old` to `new`
    /// bytes (both non-zero) without moving it, if it can: a shrink always,
    /// a growth only into the bump space right after it (the object is the
    /// last one allocated). False, with nothing changed, if it cannot.
    pub(crate) fn resize_in_place(
        &mut self,
        id: u32,
        offset: usize,
        old: usize,
        new: usize,
    ) -> bool {
        debug_assert!(old > 0 && new > 0);
        if new > self.large_threshold {
            return false;
        }
        let at_cursor = self.cursor.filter(|c| c.seg == id && c.pos == offset + old);
        if new > old && at_cursor.is_none_or(|c| offset + new > c.limit) {
            return false;
        }
        let seg = self.segments[id as usize]
            .as_mut()
            .expect("object's segment exists");
        if seg.evacuating {
            return false; // a compaction pass is emptying it: move instead
        }
        if new < old && cfg!(debug_assertions) {
            // SAFETY: the tail is the object's, and the caller gives it up.
            unsafe {
                seg.ptr_at(offset + new)
                    .as_ptr()
                    .write_bytes(POISON, old - new)
            };
        }
        let line_freed = seg.unmark(offset, old);
        seg.mark(offset, new);
        match at_cursor {
            Some(c) => {
                self.cursor = Some(Cursor {
                    pos: offset + new,
                    ..c
                })
            }
            None if line_freed && new < old && self.cursor.is_none_or(|c| c.seg != id) => {
                seg.grow_hole_around(offset + new, old - new);
                self.queue(id);
            }
            None => {}
        }
        true
    }

    /// Puts segment `id` (not the cursor's, not evacuating, `max_hole` exact)
    /// in the recyclable class of its longest hole, if it is worth recycling.
    fn queue(&mut self, id: u32) {
        let seg = self.segments[id as usize].as_mut().expect("segment exists");
        if seg.evacuating || !seg.is_recyclable() {
            return;
        }
        let class = class_of(seg.max_hole);
        if seg.queued != Some(class as u8) {
            seg.queued = Some(class as u8);
            self.recyclable[class].push(id);
        }
    }

    /// Makes objects of at least `min_size` bytes start on a line (`None`: none).
    pub(crate) fn set_line_align(&mut self, min_size: Option<usize>) {
        self.line_align_from = min_size.unwrap_or(usize::MAX);
        self.bump_max = min_size
            .map_or(usize::MAX, |from| from.saturating_sub(1))
            .min(self.large_threshold);
    }

    /// The most bytes of mappings the space may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the limit. Memory held above a lower limit stays until
    /// compaction gives it back; new mappings wait until they fit.
    pub(crate) fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes;
    }

    /// Bytes of the mappings held but holding no objects: spare
    /// large-object mappings, pooled empty segments, and emptied segments
    /// on their way back to the OS.
    pub(crate) fn spare_bytes(&self) -> usize {
        self.large.spare_bytes()
            + self.pool.iter().map(Segment::mapped_bytes).sum::<usize>()
            + self.pending_bytes()
    }

    /// Bytes of the spare large-object mappings alone (pacing leaves them
    /// out: each waits for the next object of its size).
    pub(crate) fn large_spare_bytes(&self) -> usize {
        self.large.spare_bytes()
    }

    /// Unmaps the spare large-object mappings, and queues the pooled
    /// segments to go back to the OS (see [`Space::release_pending`]).
    /// Returns the bytes unmapped.
    pub(crate) fn release_spares(&mut self) -> usize {
        let pooled: Vec<Segment> = self.pool.drain(..).collect();
        for seg in pooled {
            self.retire(seg);
        }
        let bytes = self.large.release_spares();
        self.held -= bytes;
        bytes
    }

    /// Queues an empty segment, out of the table, to go back to the OS.
    fn retire(&mut self, seg: Segment) {
        debug_assert_eq!(seg.live_objects, 0);
        self.releasing.push(Releasing { seg, discarded: 0 });
    }

    /// Whether emptied segments wait to go back to the OS.
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        !self.releasing.is_empty()
    }

    /// Bytes of the emptied segments not given back to the OS yet.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.releasing
            .iter()
            .map(|r| r.seg.mapped_bytes() - r.discarded)
            .sum()
    }

    /// Gives emptied segments back to the OS, about `max` bytes of them (at
    /// least one piece of [`RELEASE_PIECE`] bytes if any wait): each is
    /// discarded a piece at a time and unmapped when the rest fits in `max`.
    /// Returns how many segments were unmapped, and the bytes given back.
    pub(crate) fn release_pending(&mut self, max: usize) -> (usize, usize) {
        let (mut count, mut bytes) = (0, 0);
        let max = max.max(RELEASE_PIECE);
        while bytes < max {
            let Some(r) = self.releasing.last_mut() else {
                break;
            };
            let left = r.seg.mapped_bytes() - r.discarded;
            if bytes + left > max && left > RELEASE_PIECE {
                if bytes + RELEASE_PIECE > max {
                    break;
                }
                let at = left - RELEASE_PIECE;
                // SAFETY: a retired segment holds no object, and the piece
                // `[at, at + RELEASE_PIECE)` is inside its mapping.
                if unsafe { r.seg.discard(at, RELEASE_PIECE) } {
                    r.discarded += RELEASE_PIECE;
                    self.held -= RELEASE_PIECE;
                    bytes += RELEASE_PIECE;
                    continue;
                }
                // The platform keeps pages until unmapped: the rest at once.
            }
            // The rest at once: unmapping pages already discarded costs next
            // to nothing.
            let r = self.releasing.pop().expect("looked at above");
            let place = self.place_of(&r.seg);
            drop(r);
            if let Some(id) = place {
                // Its place went back: the id is free (I16).
                self.free_segments.push(id);
            }
            self.held -= left;
            bytes += left;
            count += 1;
        }
        (count, bytes)
    }

    /// Takes segment `id`, which must hold no live object, out of the table:
    /// into the pool, or on its way back to the OS.
    pub(crate) fn release_segment(&mut self, id: u32) {
        let seg = self.segments[id as usize].take().expect("segment exists");
        debug_assert_eq!(seg.live_objects, 0);
        if self.cursor.is_some_and(|c| c.seg == id) {
            self.cursor = None;
        }
        if self.places.is_none() {
            self.free_segments.push(id);
        }
        // (In a place, the id stays the segment's until it is unmapped, I16.)
        self.segment_count -= 1;
        if self.pool.len() < self.pool_max
            && self.held <= self.limit
            && self.pool_fits(self.pool.len() + 1)
        {
            // Kept mapped (and counted in `held`) for the next segment: no
            // munmap now, no page faults then. At most a sixteenth of what
            // the heap holds, so a small heap gives its segments back.
            let mut seg = seg;
            seg.reset_empty();
            self.pool.push(seg);
            return;
        }
        self.retire(seg);
    }

    /// Whether a pool of `segments` is at most a sixteenth of what the heap holds.
    fn pool_fits(&self, segments: usize) -> bool {
        segments * self.segment_size <= self.held / 16
    }

    /// Queues the pooled segments beyond a sixteenth of what the heap holds
    /// (it may have shrunk since they were pooled) to go back to the OS.
    pub(crate) fn trim_pool(&mut self) {
        while !self.pool.is_empty() && !self.pool_fits(self.pool.len()) {
            let seg = self.pool.pop().expect("not empty");
            self.retire(seg);
        }
    }

    /// A compaction source that ended empty: keep it as a target for the
    /// rest of the pass instead of unmapping it now, if fewer than
    /// [`EMPTIED_KEPT`] are kept; else let it go (see [`Space::release_segment`]).
    pub(crate) fn keep_emptied(&mut self, id: u32) {
        let seg = self.segments[id as usize].as_mut().expect("segment exists");
        debug_assert_eq!(seg.live_objects, 0);
        seg.evacuating = false;
        if self.emptied.len() >= EMPTIED_KEPT {
            return self.release_segment(id);
        }
        self.emptied.push(id);
    }

    /// The end of a pass: lets go of the emptied segments that are still empty.
    pub(crate) fn release_emptied(&mut self) {
        for id in core::mem::take(&mut self.emptied) {
            let unused = self.segments[id as usize]
                .as_ref()
                .is_some_and(|s| s.live_objects == 0);
            if unused && self.cursor.is_none_or(|c| c.seg != id) {
                self.release_segment(id);
            }
        }
    }

    /// Gives the whole pages of free lines in every segment back to the OS
    /// (see [`Segment::discard_free_pages`]): after a full compaction, the
    /// partly filled segments' free pages stop counting in RSS. Returns the
    /// bytes given back; `held` does not change (the segments stay mapped).
    pub(crate) fn discard_free_pages(&mut self) -> usize {
        self.segments
            .iter()
            .flatten()
            .filter(|s| !s.evacuating)
            .map(Segment::discard_free_pages)
            .sum()
    }

    /// Stops allocating into the current segment (it is queued if it has holes).
    pub(crate) fn drop_cursor(&mut self) {
        let Some(c) = self.cursor.take() else { return };
        let seg = self.segments[c.seg as usize]
            .as_mut()
            .expect("cursor segment exists");
        seg.touched_to(c.pos);
        if seg.live_objects == 0 && !seg.evacuating {
            self.release_segment(c.seg);
        } else if !seg.evacuating {
            seg.rescan_holes();
            self.queue(c.seg);
        }
    }

    /// Marks segment `id` as a compaction source (or not). A segment that
    /// stops being a source and has holes becomes recyclable again. The
    /// caller gives a new source's kept blocks back ([`Space::flush_sources`])
    /// before anything is allocated.
    pub(crate) fn set_evacuating(&mut self, id: u32, on: bool) {
        if on && self.cursor.is_some_and(|c| c.seg == id) {
            self.cursor = None;
        }
        let seg = self.segments[id as usize].as_mut().expect("segment exists");
        seg.evacuating = on;
        if on {
            seg.queued = None;
        } else {
            seg.rescan_holes();
            self.queue(id);
        }
    }
}

/// Size classes of recyclable segments: `floor(log2(longest hole in lines))`.
const CLASSES: usize = usize::BITS as usize;

/// The size class of a hole of `lines` lines (at least 1).
#[inline]
fn class_of(lines: usize) -> usize {
    (usize::BITS - 1 - lines.max(1).leading_zeros()) as usize
}

/// The most bytes of freed blocks kept for reuse (see [`reuse_has_room`]).
const REUSE_BYTES: usize = 256 << 10;

/// Whether `kept` bytes of freed blocks may be kept for reuse in a heap
/// that holds `held` bytes of segments of `segment_size`: a sixty-fourth
/// of what it holds, at least an eighth of a segment, at most
/// [`REUSE_BYTES`]. (The cap is worked out only past its floor.)
#[inline]
fn reuse_has_room(kept: usize, held: usize, segment_size: usize) -> bool {
    kept <= segment_size / 8 || kept <= (held / 64).max(segment_size / 8).min(REUSE_BYTES)
}

/// The most freed blocks kept for reuse (giving them all back, or looking
/// for a pass's sources among them, stays within a step's time).
const REUSE_BLOCKS: usize = 4096;

/// How many emptied segments a compaction pass keeps as warm targets (more
/// would only be unmapped in one go at the pass's end: a latency spike).
const EMPTIED_KEPT: usize = 2;

/// Emptied segments go back to the OS in pieces of this many bytes (a
/// multiple of every common OS page size): one piece costs about 20 µs.
pub(crate) const RELEASE_PIECE: usize = 256 * 1024;

/// An empty segment on its way back to the OS.
#[derive(Debug)]
struct Releasing {
    seg: Segment,
    /// Bytes at the end of its mapping already given back (discarded).
    discarded: usize,
}

/// The byte written over freed and moved-from memory in debug builds.
pub(crate) const POISON: u8 = 0xD5;

#[cfg(test)]
mod tests {
    use super::*;

    fn space(segment_size: usize) -> Space {
        Space::new(&Config::default().segment_size(segment_size))
    }

    #[test]
    fn bump_then_reuse_freed_lines() {
        let mut s = space(4096);
        let (a, pa) = s.alloc(2 * LINE, 8).unwrap();
        let (b, _) = s.alloc(LINE, 8).unwrap();
        assert_eq!(b.as_ptr().addr(), a.as_ptr().addr() + 2 * LINE);
        assert_eq!(s.segment_count(), 1);
        // SAFETY: `a` came from `alloc` with this size and place.
        unsafe { s.release(2 * LINE, pa) };
        // Kept for the next object of its size; given back as compaction does.
        s.flush_reuse();
        // Fill the rest of the segment; the two freed lines (a sixteenth of
        // the segment: enough to recycle it) are found again.
        for _ in 0..4096 / LINE - 3 {
            s.alloc(LINE, 8).unwrap();
        }
        let (c, _) = s.alloc(LINE, 8).unwrap();
        assert_eq!(c, a);
        assert_eq!(s.segment_count(), 1);
        assert_eq!(s.held_bytes(), 4096);
    }

    #[test]
    fn the_cursor_takes_back_the_object_it_bumped_last() {
        let mut s = space(1 << 20);
        let size = 16 * 1024; // too big to be kept for reuse
        let (_, _first) = s.alloc(100, 1).unwrap();
        let (_, pa) = s.alloc(size, 8).unwrap();
        let (b, pb) = s.alloc(size, 8).unwrap();
        // SAFETY: `b` came from `alloc` with this size and place.
        unsafe { s.release(size, pb) };
        let (c, pc) = s.alloc(size, 8).unwrap();
        assert_eq!(
            c.as_ptr().addr(),
            b.as_ptr().addr(),
            "the last one's bytes again"
        );
        // Not the last one bumped: its bytes stay a hole, the cursor goes on.
        // SAFETY: `a` came from `alloc` with this size and place.
        unsafe { s.release(size, pa) };
        let (d, _) = s.alloc(size, 8).unwrap();
        assert_eq!(d.as_ptr().addr(), c.as_ptr().addr() + size);
        // SAFETY: `c` came from `alloc` with this size and place.
        unsafe { s.release(size, pc) };
        assert_eq!(s.segment_count(), 1, "all in one segment, none large");
    }

    #[test]
    fn a_freed_block_goes_to_the_next_object_of_its_granules() {
        let mut s = space(4096);
        let (_, pa) = s.alloc(100, 1).unwrap();
        let (b, pb) = s.alloc(100, 1).unwrap();
        let (c, _) = s.alloc(100, 1).unwrap();
        // SAFETY: `b` came from `alloc` with this size and place.
        unsafe { s.release(100, pb) };
        let (d, _) = s.alloc(120, 1).unwrap();
        assert_eq!(
            d.as_ptr().addr(),
            c.as_ptr().addr() + 100,
            "other sizes bump on"
        );
        let (e, pe) = s.alloc(97, 1).unwrap();
        assert_eq!((e, pe), (b, pb), "97 bytes are 25 granules, as 100 are");
        let seg = s.segment(0).unwrap();
        assert_eq!((seg.live_objects, seg.cached), (4, 0));
        assert_eq!(seg.live_bytes, 100 + 97 + 100 + 120);
        // SAFETY: from `alloc` with this size and place.
        unsafe { s.release(100, pa) };
        let bumped = Loc::segment(s.granule(0, 100 + 100 + 100 + 120));
        assert_eq!(s.alloc(8, 1).unwrap().1, bumped, "a smaller class");
    }

    #[test]
    fn a_segment_never_keeps_only_freed_blocks() {
        let mut s = space(4096);
        let (a, pa) = s.alloc(64, 1).unwrap();
        let (_, pb) = s.alloc(64, 1).unwrap();
        // SAFETY: both came from `alloc` with these sizes and places.
        unsafe { s.release(64, pa) };
        assert_eq!(s.segment(0).unwrap().cached, 1);
        // SAFETY: as above.
        unsafe { s.release(64, pb) };
        // The last object went, and its kept neighbour with it: the cursor
        // starts the segment over.
        let seg = s.segment(0).unwrap();
        assert_eq!((seg.live_objects, seg.cached, seg.live_bytes), (0, 0, 0));
        assert_eq!(s.alloc(200, 1).unwrap().0, a);
    }

    #[test]
    fn a_source_segment_gives_its_kept_blocks_back() {
        let mut s = space(4096);
        let objects: Vec<_> = (0..4).map(|_| s.alloc(64, 1).unwrap()).collect();
        // SAFETY: from `alloc` with this size and place.
        unsafe { s.release(64, objects[1].1) };
        s.set_evacuating(0, true);
        s.flush_sources();
        let seg = s.segment(0).unwrap();
        assert_eq!((seg.live_objects, seg.cached), (3, 0));
        assert_ne!(
            s.alloc(64, 1).unwrap().0,
            objects[1].0,
            "no memory of a source"
        );
    }

    #[test]
    fn a_segment_with_too_few_free_lines_is_not_recycled() {
        let mut s = space(4096);
        let (a, pa) = s.alloc(LINE, 8).unwrap();
        for _ in 0..4096 / LINE - 1 {
            s.alloc(LINE, 8).unwrap();
        }
        // SAFETY: `a` came from `alloc` with this size and place.
        unsafe { s.release(LINE, pa) };
        s.flush_reuse();
        let (c, _) = s.alloc(LINE, 8).unwrap();
        assert_ne!(c, a, "one free line of 32 is left for compaction");
        assert_eq!(s.segment_count(), 2);
    }

    #[test]
    fn a_source_s_lines_are_exact_again_when_it_settles_empty_or_not() {
        // Objects of 1 to 300 bytes fill a segment; some are freed. As a
        // source, a random part moves out (their lines left as they were),
        // one more is freed meanwhile; when it settles, its lines, bits and
        // free-line count are those of a segment that only ever held what
        // is left. And if everything moved out, every line is free.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..if cfg!(miri) { 2 } else { 40 } {
            let mut s = space(64 * 1024);
            let mut objects = Vec::new();
            loop {
                let size = 1 + next(300) as usize;
                match s.alloc(size, 1) {
                    Ok((_, loc)) if s.split_granule(loc.granule().unwrap()).0 == 0 => {
                        objects.push((s.split_granule(loc.granule().unwrap()).1, size, loc))
                    }
                    // The next segment: the first is full.
                    Ok((_, loc)) => {
                        // SAFETY: just allocated, never used.
                        unsafe { s.release(size, loc) };
                        break;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            for _ in 0..objects.len() / 4 {
                let (_, size, loc) = objects.swap_remove(next(objects.len() as u64) as usize);
                // SAFETY: from `alloc` with this size and place, released once.
                unsafe { s.release(size, loc) };
            }
            s.set_evacuating(0, true);
            s.flush_sources();
            let all = round % 4 == 0;
            let mut moved = Vec::new();
            let mut stay = Vec::new();
            for (offset, size, loc) in objects {
                if all || next(3) != 0 {
                    moved.push((offset as u32, size as u32));
                } else {
                    stay.push((offset, size, loc));
                }
            }
            let bytes = moved.iter().map(|&(_, size)| size as usize).sum();
            // SAFETY: objects of segment 0 that nothing uses any more.
            unsafe { s.moved_out(0, &moved, bytes) };
            if let Some((_, size, loc)) = stay.pop() {
                // SAFETY: as above: freed between two steps of the pass.
                unsafe { s.release(size, loc) };
            }
            s.settle_lines(0, &moved);
            let mut plain = Segment::new(64 * 1024).unwrap();
            for &(offset, size, _) in &stay {
                plain.mark(offset, size);
            }
            let seg = s.segment(0).unwrap();
            assert_eq!(seg.line_state(), plain.line_state(), "round {round}");
            assert_eq!(
                (seg.live_objects, seg.live_bytes),
                (plain.live_objects, plain.live_bytes)
            );
            if all {
                assert_eq!(seg.free_lines(), 512);
            }
        }
    }

    #[test]
    fn an_emptied_segment_goes_back_in_pieces_unless_it_is_needed_first() {
        // Pieces where the source can discard pages (mmap); whole elsewhere.
        let pieces = cfg!(all(unix, not(miri), not(feature = "alloc-segments")));
        let mut s = space(1 << 20);
        let (p, place) = s.alloc(64, 8).unwrap();
        // SAFETY: from `alloc` above, released once.
        unsafe { s.release(64, place) };
        s.drop_cursor(); // empty, and too big for the pool of a 1 MiB heap
        assert_eq!((s.segment_count(), s.pending_bytes()), (0, 1 << 20));
        assert_eq!(s.held_bytes(), 1 << 20, "held until it is back");
        let (count, bytes) = s.release_pending(0);
        if pieces {
            assert_eq!((count, bytes), (0, RELEASE_PIECE), "one piece");
            assert_eq!(s.held_bytes(), s.pending_bytes());
            assert_eq!(s.pending_bytes(), (1 << 20) - RELEASE_PIECE);
            // The next segment is that one, its discarded piece held again.
            let (q, _) = s.alloc(64, 8).unwrap();
            assert_eq!(q, p, "no fresh mapping");
            assert_eq!((s.pending_bytes(), s.held_bytes()), (0, 1 << 20));
        } else {
            assert_eq!((count, bytes), (1, 1 << 20), "whole at once");
            assert_eq!(s.held_bytes(), 0);
        }
    }

    #[test]
    fn an_object_is_where_its_location_says_and_a_segment_keeps_its_place() {
        let mut s = space(4096);
        let per_segment = 4096 / LINE;
        let objects: Vec<_> = (0..3 * per_segment)
            .map(|_| s.alloc(LINE, 8).unwrap())
            .collect();
        assert_eq!(s.segment_count(), 3);
        let id_of = |s: &Space, loc: Loc| s.split_granule(loc.granule().unwrap()).0;
        for &(ptr, loc) in &objects {
            assert_eq!(
                s.try_at(loc),
                Some(ptr),
                "the fast path and the object agree"
            );
            if s.places.is_some() {
                // I16: segment `id` is the place `id * segment_size`.
                let id = id_of(&s, loc) as usize;
                let offset = ptr.as_ptr().addr() - s.place_base.0.as_ptr().addr();
                assert_eq!(offset / 4096, id);
            }
        }
        // Empty the middle segment and give it back to the OS.
        let middle = id_of(&s, objects[per_segment].1);
        let old_start = s.segment_start(middle);
        for &(_, loc) in &objects[per_segment..2 * per_segment] {
            // SAFETY: each object from `alloc` above, released once.
            unsafe { s.release(LINE, loc) };
        }
        s.flush_reuse();
        s.release_pending(usize::MAX);
        assert_eq!((s.segment_count(), s.pending_bytes()), (2, 0));
        // The next segment takes the free id, and with places, its place.
        for _ in 0..per_segment {
            let (ptr, loc) = s.alloc(LINE, 8).unwrap();
            assert_eq!(id_of(&s, loc), middle);
            assert_eq!(s.try_at(loc), Some(ptr));
        }
        if s.places.is_some() {
            assert_eq!(s.segment_start(middle), old_start, "the same place");
        }
    }

    #[test]
    fn large_objects_get_their_own_mapping_and_the_limit_holds() {
        let mut s = Space::new(&Config::default().segment_size(4096).memory_limit(3 * 4096));
        let (p, place) = s.alloc(3000, 8).unwrap();
        assert!(matches!(place.decode(), Where::Large { .. }));
        assert_eq!(s.held_bytes(), 4096);
        assert_eq!(s.alloc(3 * 4096, 8), Err(AllocError::OutOfMemory));
        // SAFETY: from `alloc` above.
        unsafe { s.release(3000, place) };
        assert_eq!(
            (s.held_bytes(), s.spare_bytes()),
            (4096, 4096),
            "kept as a spare"
        );
        let (q, place) = s.alloc(4000, 8).unwrap();
        assert_eq!(
            (q, s.spare_bytes(), s.held_bytes()),
            (p, 0, 4096),
            "the spare is reused"
        );
        // SAFETY: from `alloc` above.
        unsafe { s.release(4000, place) };
        assert_eq!(s.release_spares(), 4096);
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn the_inline_path_keeps_the_size_limits() {
        // 4 KiB segments: objects above 1 KiB are large; with line
        // alignment from 100 bytes, objects of 100 bytes start on a line.
        let mut s = space(4096);
        s.set_line_align(Some(100));
        let (_, at_limit) = s.alloc(1024, 4).unwrap();
        assert!(at_limit.granule().is_some(), "1 KiB: in a segment");
        let (_, past) = s.alloc(1025, 4).unwrap();
        assert!(
            matches!(past.decode(), Where::Large { .. }),
            "1 KiB + 1: large"
        );
        let (_, small) = s.alloc(4, 4).unwrap();
        let (_, aligned) = s.alloc(100, 4).unwrap();
        let (_, below) = s.alloc(99, 4).unwrap();
        let offset = |loc: Loc| s.split_granule(loc.granule().unwrap()).1;
        assert_eq!(offset(aligned) % LINE, 0, "100 bytes: on a line");
        assert_eq!(
            offset(below),
            offset(aligned) + 100,
            "99 bytes: bumped right after"
        );
        assert_eq!(offset(small), 1024, "4 bytes: bumped after the 1 KiB");
        assert_eq!(offset(aligned), 1024 + LINE, "then the next line");
    }

    #[test]
    fn zero_sized_objects_take_no_memory() {
        let mut s = space(4096);
        let (p, place) = s.alloc(0, 64).unwrap();
        assert_eq!(place, Loc::ZERO_SIZED);
        assert_eq!(p.as_ptr().addr() % 64, 0);
        assert_eq!(s.held_bytes(), 0);
    }
}
