//! Evacuation: move unpinned objects out of the sparsest segments, then give
//! the emptied segments back to the OS.
//!
//! A *pass* picks its sources once, sweeps the slot table to find the
//! objects in them (segments keep no object lists: that would cost bytes per
//! object), then evacuates them one by one, object by object;
//! [`RawHeap::compact_step`] stops at its budget and the next call goes on
//! where it stopped, in the sweep or in the moves. Sources are never
//! allocated into while the pass runs, so no object arrives in one after the
//! sweep, and an object moves at most once per pass. See docs/DESIGN.md,
//! "Compaction".

use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

use crate::mapping::{MapAlloc, PAGE};
use crate::raw::RawHeap;
use crate::space::Run;
use crate::stats::CompactReport;
use crate::table::{Loc, GRANULE};
use crate::types::IN_TABLE;

/// The state of the compaction pass in progress, if any.
#[derive(Debug)]
pub(crate) struct Evacuation {
    /// Segments still to evacuate, the next one last.
    sources: Vec<u32>,
    /// The slot indices the sweep found in each source (a superset of its
    /// objects when it is evacuated: objects may leave, none arrive). Freed
    /// when the pass ends.
    found: Found,
    /// While sweeping: the next slot index to look at.
    sweep: Option<usize>,
    /// While sweeping: `rank[segment id]` is its index in `sources`, or `u32::MAX`.
    rank: Vec<u32>,
    /// Index into `found.last()`.
    pos: usize,
    /// Whether a pass since the last full compaction ran out of memory for
    /// targets (under a memory limit), leaving sources unevacuated.
    starved: bool,
    /// Kept blocks that the start of the pass took back from its sources,
    /// not yet paid for by a step's budget ([`FLUSH_COST`] each).
    flushed: usize,
    /// `(offset, size)` of every object moved out of the source being
    /// evacuated (the last of `sources`) in this pass. Its lines are left
    /// marked until it ends ([`Space::settle_lines`](crate::space::Space::settle_lines)):
    /// most sources end empty, and then every line is freed at once, where
    /// unmarking each object cost about 35 instructions of the 294 a small
    /// object's move took. Kept from pass to pass, as `found`.
    moved: allocator_api2::vec::Vec<(u32, u32), MapAlloc>,
    /// Entries of `moved`'s block written at least once since it was
    /// allocated: writing past them writes fresh pages (page faults, which
    /// a step's budget pays for, as the found lists' and the targets').
    moved_touched: usize,
}

impl Default for Evacuation {
    fn default() -> Evacuation {
        Evacuation {
            sources: Vec::new(),
            found: Found::default(),
            sweep: None,
            rank: Vec::new(),
            pos: 0,
            starved: false,
            flushed: 0,
            moved: allocator_api2::vec::Vec::new_in(MapAlloc),
            moved_touched: 0,
        }
    }
}

impl Evacuation {
    pub(crate) fn metadata_bytes(&self) -> usize {
        use core::mem::size_of;
        (self.sources.capacity() + self.rank.capacity()) * size_of::<u32>()
            + self.found.bytes()
            + self.moved.capacity() * size_of::<(u32, u32)>()
    }

    /// Whether a pass is in progress.
    pub(crate) fn active(&self) -> bool {
        !self.sources.is_empty()
    }

    /// What taking back the kept blocks of the pass's sources cost, in
    /// bytes of a step's budget, if no step has paid for it yet.
    pub(crate) fn take_flushed(&mut self) -> usize {
        core::mem::take(&mut self.flushed).saturating_mul(FLUSH_COST)
    }
}

/// The slot indices a sweep found in each source of a pass, in one block
/// from [`MapAlloc`]: a pass over a big heap lists millions. The block is
/// kept from pass to pass, so that a `compact_step` neither maps nor unmaps
/// it again (a new one is mapped only when a pass needs more room), its
/// pages are touched only as the sweep writes them, never all at once, and
/// `compact()` gives it back to the OS at its end (from `malloc` it would
/// stay resident in the arena). Each source has room for the objects it had
/// when the pass began; none arrive in a source during a pass.
#[derive(Debug)]
struct Found {
    /// Invariant: in each list `(start, len, room)`, the items
    /// `start..start + len` were written in this pass; the rest may be
    /// uninitialised.
    items: allocator_api2::vec::Vec<MaybeUninit<u32>, MapAlloc>,
    /// Per source, in the order of `sources`: where its list starts in
    /// `items`, how long it is, and its room (`start + room <= items.len()`).
    lists: Vec<(usize, usize, usize)>,
    /// Bit `p` is set once page `p` of the block has been written: a new
    /// block's pages are fresh, and the first write to each is a page
    /// fault, which a step's budget pays for ([`FAULT_COST`]).
    written: Vec<u64>,
    /// Pages of the block written for the first time since
    /// [`Found::take_fresh`] last asked.
    fresh: usize,
}

impl Default for Found {
    fn default() -> Found {
        Found {
            items: allocator_api2::vec::Vec::new_in(MapAlloc),
            lists: Vec::new(),
            written: Vec::new(),
            fresh: 0,
        }
    }
}

impl Found {
    /// Starts lists with room for `rooms[i]` indices for source `i`,
    /// forgetting the last pass's (its block is reused if it is big enough).
    fn start(&mut self, rooms: impl Iterator<Item = usize>) {
        let mut start = 0;
        self.lists.clear();
        self.lists.extend(rooms.map(|room| {
            let list = (start, 0, room);
            start += room;
            list
        }));
        if self.items.len() < start {
            // A new block, not a grown one: nothing of the old is kept, so
            // nothing is copied, and no page of the new one is touched yet.
            self.items = allocator_api2::vec::Vec::with_capacity_in(start, MapAlloc);
            // SAFETY: the capacity is at least `start`, and `MaybeUninit`
            // items need no initialisation.
            unsafe { self.items.set_len(start) };
            let pages = (start * core::mem::size_of::<u32>()).div_ceil(PAGE);
            self.written = vec![0; pages.div_ceil(64)];
        }
    }

    /// Pages of the block written for the first time since the last call.
    fn take_fresh(&mut self) -> usize {
        core::mem::take(&mut self.fresh)
    }

    /// Forgets every list, keeping the block for the next pass.
    fn clear(&mut self) {
        self.lists.clear();
    }

    /// Files slot `index` under source `rank`. (Never past its room: a
    /// source lists at most the objects it had when the pass began.)
    #[inline]
    fn push(&mut self, rank: usize, index: u32) {
        if let Some((start, len, room)) = self.lists.get_mut(rank) {
            debug_assert!(*len < *room, "an object arrived in a source");
            if *len < *room {
                let at = *start + *len;
                self.items[at] = MaybeUninit::new(index);
                *len += 1;
                // A list is written in order: only its first item and the
                // first of each page can be a page's first write.
                if *len == 1 || at % (PAGE / core::mem::size_of::<u32>()) == 0 {
                    let page = at * core::mem::size_of::<u32>() / PAGE;
                    if let Some(word) = self.written.get_mut(page / 64) {
                        if *word & (1 << (page % 64)) == 0 {
                            *word |= 1 << (page % 64);
                            self.fresh += 1;
                        }
                    }
                }
            }
        }
    }

    /// Item `pos` of the last source's list.
    #[inline]
    fn last_get(&self, pos: usize) -> Option<u32> {
        let &(start, len, _) = self.lists.last()?;
        if pos >= len {
            return None;
        }
        // SAFETY: `pos < len`, and items `start..start + len` of a list were
        // written in this pass (type invariant).
        Some(unsafe { self.items[start + pos].assume_init() })
    }

    /// The last source's list.
    fn last_list(&self) -> &[u32] {
        let Some(&(start, len, _)) = self.lists.last() else {
            return &[];
        };
        let items = &self.items[start..start + len];
        // SAFETY: items `start..start + len` of a list were written in this
        // pass (type invariant), and `MaybeUninit<u32>` has `u32`'s layout.
        unsafe { &*(core::ptr::from_ref(items) as *const [u32]) }
    }

    /// Forgets the last source's list.
    fn pop(&mut self) {
        self.lists.pop();
    }

    fn bytes(&self) -> usize {
        self.items.capacity() * core::mem::size_of::<u32>()
            + self.lists.capacity() * core::mem::size_of::<(usize, usize, usize)>()
            + self.written.capacity() * core::mem::size_of::<u64>()
    }
}

impl RawHeap {
    /// A full compaction: finish any pass in progress, then run a pass over
    /// every segment (including the one being allocated into) to the end.
    pub(crate) fn compact(&mut self) -> CompactReport {
        let mut report = CompactReport::default();
        self.totals.compactions += 1;
        if self.reading() {
            return report; // a read scope is open: nothing may move (not finished)
        }
        while !self.run_pass(Budget::ALL, &mut report) {}
        self.begin_full_pass();
        while !self.run_pass(Budget::ALL, &mut report) {}
        self.finish_full_compaction(&mut report);
        report
    }

    /// Makes room under the memory limit, for an allocation that found none:
    /// gives back the spare mappings, finishes a pass in progress, then
    /// evacuates one segment at a time, sparsest first, into the holes of the
    /// others (a full pass would need fresh segments for targets, which the
    /// limit forbids). Returns whether held memory went down; stops at the
    /// first segment given back.
    pub(crate) fn make_room(&mut self) -> bool {
        if self.reading() {
            return false; // a read scope is open: nothing may move
        }
        let held = self.space.held_bytes();
        let mut report = CompactReport::default();
        self.release_spares(&mut report);
        while !self.run_pass(Budget::ALL, &mut report) {}
        self.release_pending(usize::MAX, &mut report);
        if self.space.held_bytes() < held {
            return true;
        }
        self.space.drop_cursor();
        let cap = self.space.segment_size();
        let mut candidates = self.segment_fill();
        candidates.retain(|&(live, _)| live < cap);
        let free: usize = candidates.iter().map(|&(live, _)| cap - live).sum();
        for (live, id) in candidates {
            // Its objects can only go to the free bytes of the others.
            if free - (cap - live) < live || self.space.segment(id).is_none() {
                continue;
            }
            self.start_pass(vec![id]);
            while !self.run_pass(Budget::ALL, &mut report) {}
            self.release_pending(usize::MAX, &mut report);
            if self.space.held_bytes() < held {
                return true;
            }
        }
        false
    }

    /// `(live bytes, id)` of every segment but the one being allocated into,
    /// sparsest first. A segment's kept freed blocks are not live bytes.
    fn segment_fill(&self) -> Vec<(usize, u32)> {
        let current = self.space.current_segment();
        let mut fill: Vec<(usize, u32)> = self
            .space
            .segment_ids()
            .filter(|&id| Some(id) != current)
            .map(|id| {
                let seg = self.space.segment(id).expect("listed segment exists");
                (seg.live_bytes - seg.cached_bytes, id)
            })
            .collect();
        fill.sort_unstable();
        fill
    }

    /// Starts the pass of a full compaction (after any earlier pass ended):
    /// every segment is a candidate, the allocation cursor's too.
    ///
    /// If a pass is in progress (another thread's `compact_step` started one
    /// since the caller finished the last), that pass goes on instead.
    pub(crate) fn begin_full_pass(&mut self) {
        if self.evac.active() {
            return;
        }
        self.space.drop_cursor();
        // Kept freed blocks are holes: a full compaction closes them too.
        self.space.flush_reuse();
        if !self.begin_pass(1, 8) {
            self.begin_dense_pass();
        }
    }

    /// Starts the pass of a full compaction that can give no segment back
    /// ([`RawHeap::begin_pass`] found none), if packing some segments would
    /// still free enough whole pages: the free bytes of a heap whose live
    /// data fits its segments only just may lie scattered over pages that
    /// stay resident, and `compact()` promises segments as dense as pinned
    /// objects allow. The sources are the sparsest segments whose resident
    /// pages (pages with a used line) exceed the pages their live bytes
    /// need by the most, if by at least [`DENSE_GAIN`] bytes and a
    /// sixty-fourth of what the heap holds (so a heap packed once is not
    /// packed again for nothing).
    fn begin_dense_pass(&mut self) {
        let candidates = self.segment_fill();
        let (mut best, mut best_gain) = (0, 0usize);
        let (mut resident, mut live) = (0usize, 0usize);
        for (i, &(bytes, id)) in candidates.iter().enumerate() {
            let seg = self.space.segment(id).expect("listed segment exists");
            resident += seg.used_pages();
            live += bytes;
            let gain = resident.saturating_sub(live.div_ceil(PAGE));
            if gain > best_gain {
                (best, best_gain) = (i + 1, gain);
            }
        }
        let least = DENSE_GAIN.max(self.space.held_bytes() / 64);
        if best_gain.saturating_mul(PAGE) >= least {
            self.start_sparsest(candidates, best);
        }
    }

    /// The end of a full compaction: the spare large mappings go back too.
    pub(crate) fn finish_full_compaction(&mut self, report: &mut CompactReport) {
        if self.reading() {
            return; // the pass stopped for a read scope: not finished
        }
        if core::mem::take(&mut self.evac.starved) {
            // Under the memory limit the pass found no targets: go on one
            // source at a time, into the holes of the other segments.
            while self.make_room() {}
        }
        self.release_spares(report);
        self.release_pending(usize::MAX, report);
        // The pass's lists: given back here, where the caller waits anyway.
        self.evac.found = Found::default();
        self.evac.moved = allocator_api2::vec::Vec::new_in(MapAlloc);
        self.evac.moved_touched = 0;
        self.table.release_vacant();
        self.space.discard_free_pages();
        report.finished = true;
    }

    /// Unmaps the spare large-object mappings; queues the pooled segments
    /// to go back to the OS.
    fn release_spares(&mut self, report: &mut CompactReport) {
        let spare = self.space.release_spares();
        report.bytes_released += spare;
        self.totals.bytes_released += spare as u64;
    }

    /// Gives about `max` bytes of emptied segments back to the OS (see
    /// [`Space::release_pending`](crate::space::Space::release_pending)).
    pub(crate) fn release_pending(&mut self, max: usize, report: &mut CompactReport) {
        if !self.space.has_pending() {
            return;
        }
        let (segments, bytes) = self.space.release_pending(max);
        report.segments_released += segments;
        report.bytes_released += bytes;
        self.totals.bytes_released += bytes as u64;
    }

    /// An incremental compaction: moves at most `budget` bytes. Starts a pass
    /// if none is in progress and one would give back at least a sixteenth
    /// of the segments (and at least one): small gains are not worth moving
    /// live data over and over while a program churns.
    pub(crate) fn compact_step(&mut self, budget: usize) -> CompactReport {
        self.totals.compactions += 1;
        let mut report = CompactReport::default();
        if self.reading() {
            return report; // a read scope is open: nothing may move (not finished)
        }
        // Emptied segments go back to the OS a few pieces per step, so that
        // no step pays for unmapping a pass's worth at once.
        self.space.trim_pool();
        self.release_pending(budget.saturating_mul(RELEASE_COST), &mut report);
        let min_gain = (self.space.segment_count() / 16).max(1);
        if !self.evac.active() && !self.begin_pass(min_gain, 7) {
            report.finished = !self.space.has_pending();
            return report;
        }
        // What went back to the OS came out of the budget.
        self.run_pass(
            Budget {
                bytes: budget,
                oversize: false,
                spent: report.bytes_released / RELEASE_COST,
                sweep_apart: false,
            },
            &mut report,
        );
        // Not finished while memory waits to go back.
        report.finished &= !self.space.has_pending();
        report
    }

    /// Starts a pass for a paced step: any gain of a segment is worth it,
    /// but only segments at most 7/8 full are sources, so that at worst 7
    /// bytes move for each byte given back.
    pub(crate) fn begin_paced_pass(&mut self) -> bool {
        self.begin_pass(1, 7)
    }

    /// Chooses the sources of a new pass. Candidates are all segments but the
    /// one being allocated into, sparsest first; the pass takes the prefix of
    /// them that frees the most segments (k sources whose live bytes fit in
    /// fewer than k segments), if that is at least `min_gain` segments. Only
    /// segments at most `eighths`/8 full are candidates (8: all).
    /// Returns whether a pass started.
    fn begin_pass(&mut self, min_gain: usize, eighths: usize) -> bool {
        debug_assert!(!self.evac.active());
        let cap = self.space.segment_size();
        let mut candidates = self.segment_fill();
        candidates.retain(|&(live, _)| live < cap && live * 8 <= cap * eighths);
        let (mut best, mut best_gain, mut sum) = (0, 0isize, 0usize);
        for (i, &(live, _)) in candidates.iter().enumerate() {
            sum += live;
            let gain = (i + 1) as isize - sum.div_ceil(cap) as isize;
            if gain > best_gain {
                (best, best_gain) = (i + 1, gain);
            }
        }
        if (best_gain as usize) < min_gain {
            return false;
        }
        self.start_sparsest(candidates, best);
        self.evac.active()
    }

    /// Starts a pass over the first `n` of `candidates` (`(live bytes, id)`,
    /// sparsest first).
    fn start_sparsest(&mut self, mut candidates: Vec<(usize, u32)>, n: usize) {
        candidates.truncate(n);
        // Sparsest last: it is evacuated first.
        self.start_pass(candidates.into_iter().rev().map(|(_, id)| id).collect());
    }

    /// Starts a pass over `sources` (the next one last): its sweep first.
    fn start_pass(&mut self, sources: Vec<u32>) {
        debug_assert!(!self.evac.active());
        let ids = self
            .space
            .segment_ids()
            .last()
            .map_or(0, |id| id as usize + 1);
        self.evac.rank = vec![u32::MAX; ids];
        for (i, &id) in sources.iter().enumerate() {
            self.space.set_evacuating(id, true);
            self.evac.rank[id as usize] = i as u32;
        }
        // Before the sweep counts the sources' objects: their kept blocks
        // are holes, not objects (I14).
        self.evac.flushed += self.space.flush_sources();
        let space = &self.space;
        self.evac.found.start(
            sources
                .iter()
                .map(|&id| space.segment(id).map_or(0, |seg| seg.live_objects)),
        );
        self.evac.sources = sources;
        self.evac.sweep = Some(0);
        self.evac.pos = 0;
    }

    /// Sweeps more slots for objects in the sources, `limit` slots' worth
    /// at most: each slot counts one, and each page of the found lists
    /// written for the first time (a page fault) [`FAULT_SLOTS`]. (At least
    /// one batch of [`SWEEP_BATCH`] slots, so that every call progresses.)
    /// Returns whether the sweep is done, and the slots' worth this call
    /// spent.
    fn sweep(&mut self, limit: usize) -> (bool, usize) {
        let Some(mut from) = self.evac.sweep else {
            return (true, 0);
        };
        let end = self.table.slots_len();
        let mut spent = 0;
        let (evac, space) = (&mut self.evac, &self.space);
        let (rank, found) = (&evac.rank, &mut evac.found);
        while from < end && (spent == 0 || spent < limit) {
            let to = from.saturating_add(SWEEP_BATCH).min(end);
            self.table.scan(from..to, |index, slot| {
                // Segments mapped since the pass began (ids past `rank`) are no sources.
                let Some(g) = slot.loc.granule() else { return };
                if let Some(&r) = rank.get(space.split_granule(g).0 as usize) {
                    if r != u32::MAX {
                        found.push(r as usize, index);
                    }
                }
            });
            spent += (to - from) + found.take_fresh().saturating_mul(FAULT_SLOTS);
            from = to;
        }
        if from < end {
            self.evac.sweep = Some(from);
            return (false, spent);
        }
        self.evac.sweep = None;
        self.evac.rank = Vec::new();
        (true, spent)
    }

    /// Evacuates sources until the pass is done (returns true, also when no
    /// pass is in progress) or the budget is spent (returns false).
    pub(crate) fn run_pass(&mut self, budget: Budget, report: &mut CompactReport) -> bool {
        if self.reading() {
            // A read scope is open: nothing may move. Stop (the pass goes on later).
            report.finished = false;
            return true;
        }
        // Taking back the kept blocks of a pass that just began comes out
        // of the budget (`Budget::spent` is the caller's other work).
        let flushed = self.evac.take_flushed();
        let mut left = budget
            .bytes
            .saturating_sub(budget.spent.saturating_add(flushed));
        // The sweep and the moves share the budget (a bounded step does at
        // least a little sweeping, so every step makes progress), unless the
        // sweep has an allowance of its own.
        let sweep_limit = if budget.oversize {
            usize::MAX
        } else if budget.sweep_apart {
            (budget.bytes / 4).max(1024)
        } else {
            (left / SWEEP_COST).max(1024)
        };
        let (swept, spent) = self.sweep(sweep_limit);
        if !swept {
            report.finished = false;
            return false;
        }
        if !budget.oversize && !budget.sweep_apart {
            left = left.saturating_sub(spent.saturating_mul(SWEEP_COST));
        }
        while let Some(&id) = self.evac.sources.last() {
            match self.evacuate_segment(id, budget, &mut left, report) {
                Evacuated::Paused => {
                    report.finished = false;
                    return false;
                }
                Evacuated::OutOfMemory => {
                    // No room for targets: end the pass, every source as it is.
                    self.evac.starved = true;
                    self.settle(id);
                    self.evac.found.clear();
                    for id in core::mem::take(&mut self.evac.sources) {
                        self.end_source(id);
                    }
                }
                Evacuated::Done => {
                    self.evac.sources.pop();
                    self.evac.found.pop();
                    self.settle(id);
                    self.end_source(id);
                }
            }
            self.evac.pos = 0;
        }
        self.evac.found.clear();
        self.space.release_emptied();
        report.finished = true;
        true
    }

    /// The evacuation of source `id` (the one that [`Evacuation::moved`]
    /// lists) is over: its lines are exact again.
    fn settle(&mut self, id: u32) {
        self.space.settle_lines(id, &self.evac.moved);
        self.evac.moved.clear();
    }

    /// Source `id` is done (and [settled](RawHeap::settle)): keep it as an
    /// emptied target (or let it go) if empty, else make it a normal segment.
    fn end_source(&mut self, id: u32) {
        let seg = self.space.segment(id).expect("source segment exists");
        if seg.live_objects == 0 {
            // Reused as a target for the rest of the pass (let go at its end),
            // or let go now.
            self.space.keep_emptied(id);
        } else {
            // Pinned (or dying) objects keep it; a later pass tries again.
            self.space.set_evacuating(id, false);
        }
    }

    /// Moves the unpinned objects of source `id` from `evac.pos` on.
    ///
    /// The loop is the hot path of compaction: one slot lookup to read, one
    /// to write the new place, the source's address computed once, the
    /// type read once, and the source's lines unmarked directly (a source
    /// keeps no freed blocks and no holes). The counts are added up at the
    /// end.
    fn evacuate_segment(
        &mut self,
        id: u32,
        budget: Budget,
        left: &mut usize,
        report: &mut CompactReport,
    ) -> Evacuated {
        let src_start = self.space.segment_start(id);
        let (mut objects, mut bytes) = (0usize, 0usize);
        // The page (in granule addresses) of the last target byte written:
        // objects that end on it write no fresh page.
        let mut last_page = u32::MAX;
        let limited = budget.bytes != usize::MAX;
        let before = self.evac.moved.len();
        let list = self.evac.found.last_list();
        // Room for every object the source may give: no step grows the list.
        let room = list.len().saturating_sub(self.evac.pos);
        let capacity = self.evac.moved.capacity();
        self.evac.moved.reserve(room);
        if self.evac.moved.capacity() != capacity {
            // A new block (the list was empty: nothing was copied into it).
            self.evac.moved_touched = self.evac.moved.len();
        }
        // The granule addresses of source `id` are `lo..lo + span` (the
        // large and zero-sized tags are above every segment's).
        let lo = self.space.granule(id, 0);
        let span = (self.space.segment_size() / GRANULE) as u32;
        debug_assert!(u64::from(lo) + u64::from(span) <= u64::from(Loc::LARGE));
        // The type index of the last object moved (objects of a source tend
        // to be alike), its alignment and element size, and its size if the
        // index says it (`usize::MAX` if the table keeps a slice length).
        let mut last_ty: Option<(u16, usize, usize, usize)> = None;
        // Targets bumped one after another (see `Run`): none yet.
        let mut run: Option<Run> = None;
        let outcome = loop {
            let Some(&index) = list.get(self.evac.pos) else {
                break Evacuated::Done;
            };
            // Freed since the sweep (or its slot reused by an object
            // elsewhere, or not in a segment at all), or pinned: not moved.
            let Some(slot) = self.table.slot_at(index) else {
                self.evac.pos += 1;
                continue;
            };
            let rel = slot.loc.bits().wrapping_sub(lo);
            if rel >= span {
                self.evac.pos += 1;
                continue;
            }
            if slot.is_pinned() {
                report.pinned_skipped += 1;
                self.evac.pos += 1;
                continue;
            }
            let (ty, offset) = (slot.ty, rel as usize * GRANULE);
            let (align, elem, fixed) = match last_ty {
                Some((t, align, elem, fixed)) if t == ty => (align, elem, fixed),
                _ => {
                    let info = self.types.info(ty);
                    // A short slice's index says its length, else the table does.
                    let fixed = match (info.is_slice, self.types.fixed_len(ty)) {
                        (false, _) => info.elem_size,
                        (true, IN_TABLE) => usize::MAX,
                        (true, len) => info.size(len as usize),
                    };
                    last_ty = Some((ty, info.align, info.elem_size, fixed));
                    (info.align, info.elem_size, fixed)
                }
            };
            let size = if fixed != usize::MAX {
                fixed
            } else {
                elem * self.table.len(index as usize)
            };
            if size >= PREFETCH_FROM {
                self.prefetch_ahead(size);
            }
            // What the move costs the budget: its bytes and the work of a
            // move besides (never more than a budget that its bytes fit).
            let cost = size.saturating_add(OBJECT_COST).min(budget.bytes.max(size));
            if cost > *left {
                if size <= budget.bytes || (budget.oversize && *left < budget.bytes) {
                    break Evacuated::Paused;
                }
                if !budget.oversize {
                    // No step of this budget can move it; leave it for compact().
                    self.evac.pos += 1;
                    continue;
                }
                // Full compaction in slices: a big object moves alone in its slice.
            }
            // Bumped into the run if it has room, else placed as any
            // allocation is (the run ends first: its lines are marked), and
            // a new run begins where that left the cursor.
            let (dst, dst_loc) = match run
                .as_mut()
                .and_then(|r| self.space.run_alloc(r, size, align))
            {
                Some(placed) => placed,
                None => {
                    if let Some(r) = run.take() {
                        self.space.end_run(r);
                    }
                    let Ok(placed) = self.space.alloc(size, align) else {
                        break Evacuated::OutOfMemory;
                    };
                    run = self.space.begin_run();
                    placed
                }
            };
            debug_assert!(
                dst_loc.granule().is_some(),
                "an object from a segment moves to one"
            );
            // SAFETY: `offset < segment size` (a granule address of segment
            // `id`), so the object's first byte is inside the segment.
            let src = unsafe { src_start.add(offset) };
            // `src` is the object's `size` bytes, unpinned (checked above; pins
            // need the engine, which we hold); `dst` is fresh or a kept block
            // (I14), outside every source and belonging to no object.
            // SAFETY: nobody reads or writes `src` now, and the two do not overlap (I8).
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), size) };
            let slot = self.table.slot_at_mut(index).expect("slot checked above");
            slot.loc = dst_loc;
            // First writes to fresh pages of the target were page faults
            // (counted when a budget is kept; cursors that move on note
            // how far they went in any case).
            let end_page =
                (dst_loc.bits() + (size.max(1) as u32 - 1) / GRANULE as u32) / PAGE_GRANULES;
            let faults = if !limited || end_page == last_page {
                0
            } else {
                last_page = end_page;
                self.space.touch(dst_loc, size)
            };
            // Given up below, with the others of this call (`moved_out`).
            // (A segment's offsets and a segment object's size fit 32 bits.)
            self.evac.moved.push((offset as u32, size as u32));
            // A list entry on a page of its block written for the first time.
            let faults = if limited && self.evac.moved.len() > self.evac.moved_touched {
                self.evac.moved_touched = self.evac.moved.len();
                faults + usize::from(self.evac.moved.len() % MOVED_PER_PAGE == 1)
            } else {
                faults
            };
            self.evac.pos += 1;
            *left = left.saturating_sub(cost.saturating_add(faults.saturating_mul(FAULT_COST)));
            objects += 1;
            bytes += size;
        };
        if let Some(r) = run {
            self.space.end_run(r);
        }
        // SAFETY: each object of `moved[before..]` had its bytes at its
        // offset of source `id`, reserved by one alloc; its slot now points
        // at its copy, so nothing reads them again.
        unsafe { self.space.moved_out(id, &self.evac.moved[before..], bytes) };
        report.objects_moved += objects;
        report.bytes_moved += bytes;
        self.totals.objects_moved += objects as u64;
        self.totals.bytes_moved += bytes as u64;
        outcome
    }
}

impl RawHeap {
    /// Asks the CPU to start loading the bytes of the object [`AHEAD`]
    /// places further down the current source's list (its first `size`
    /// bytes, at most 2 KiB: neighbours tend to be alike), so that copies
    /// do not wait for memory one after the other. A hint only: the object
    /// may be gone by then, and nothing is read.
    #[inline]
    fn prefetch_ahead(&self, size: usize) {
        let Some(index) = self.evac.found.last_get(self.evac.pos + AHEAD) else {
            return;
        };
        if let Some(ptr) = self
            .table
            .slot_at(index)
            .and_then(|s| self.space.try_at(s.loc))
        {
            prefetch(ptr, size.min(2048));
        }
    }
}

/// Objects from this size on prefetch the one [`AHEAD`] of them: smaller
/// ones sit a few to a line and a page, where the hardware prefetcher
/// keeps up, and the lookup would cost more than it saves.
const PREFETCH_FROM: usize = 128;

/// How far ahead [`RawHeap::prefetch_ahead`] looks: enough to cover a
/// memory load (about 100 ns) with the copies of small objects.
const AHEAD: usize = 4;

/// A hint to load the cache lines of `len` bytes at `ptr` (no access: any
/// address is fine).
#[inline]
fn prefetch(ptr: NonNull<u8>, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut at = 0;
        while at < len {
            // SAFETY: a prefetch never faults nor reads into the program; the
            // address is only computed (`wrapping_add`), never dereferenced.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.as_ptr().wrapping_add(at).cast()) };
            at += 64;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = (ptr, len);
}

/// How much one run of a pass may move.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Bytes.
    pub(crate) bytes: usize,
    /// Whether an object bigger than `bytes` may move, alone, in a run of its
    /// own (full compaction in slices); otherwise it is skipped.
    pub(crate) oversize: bool,
    /// Bytes' worth of `bytes` already spent in this call on other work
    /// (giving memory back): the pass moves at most `bytes - spent`. Unlike
    /// a smaller `bytes`, this skips no object: one that does not fit what
    /// is left waits for the next call.
    pub(crate) spent: usize,
    /// Whether the sweep has an allowance of its own (`bytes / 4` slots)
    /// instead of sharing `bytes` with the moves. Paced steps: their debt is
    /// paid in bytes moved, and a sweep that moved nothing would slow the
    /// pace (a paced step is then at most about 50 µs: a sweep of 16 000
    /// slots and 64 KiB of moves).
    pub(crate) sweep_apart: bool,
}

/// A slot swept costs the budget as much as moving this many bytes.
///
/// A step's budget is in bytes moved, and its time should follow its
/// budget whatever the objects' size: measured here, a move costs about
/// 0.19 ns a byte plus 15 ns an object (a step of 64 KiB took 27 µs with
/// 64-byte objects, 13 µs with 1 KiB ones, when bytes alone were counted),
/// and a slot swept about 1.7 ns.
const SWEEP_COST: usize = 12;

/// Moving an object costs the budget as much as moving this many bytes
/// more than its own (see [`SWEEP_COST`]).
const OBJECT_COST: usize = 80;

/// Writing a page for the first time (a page fault: the kernel maps and
/// zeroes it, about 4 µs on the virtual machine of the README's figures,
/// and up to ten times that now and then) costs the budget as much as
/// moving this many bytes. A
/// step into fresh memory (a pass's first target, or its new found lists)
/// moves less, so that its time still follows its budget.
pub(crate) const FAULT_COST: usize = 20 * 1024;

/// Taking a kept block back from a new pass's source (see
/// `Space::flush_sources`: about 80 instructions) costs the budget as much
/// as moving this many bytes. At most `REUSE_BLOCKS` (4096) are kept, so a
/// step that starts a pass does little else.
const FLUSH_COST: usize = 32;

/// The least a full compaction's dense pass
/// ([`RawHeap::begin_dense_pass`]) must let go of in whole pages to start.
const DENSE_GAIN: usize = 64 * 1024;

/// Granules in a page (segments of whole pages start on a page, so a
/// granule address divided by this is a page; for smaller segments, an
/// estimate, as the count of faults is).
const PAGE_GRANULES: u32 = (PAGE / GRANULE) as u32;

/// Entries of [`Evacuation::moved`] in a page (its block starts on a page
/// when it is a mapping of its own; for a smaller block, an estimate).
const MOVED_PER_PAGE: usize = PAGE / core::mem::size_of::<(u32, u32)>();

/// [`FAULT_COST`] in slots swept.
const FAULT_SLOTS: usize = FAULT_COST / SWEEP_COST;

/// The sweep reads the table this many slots at a time, and checks its
/// limit in between.
const SWEEP_BATCH: usize = 1024;

/// Giving this many bytes back to the OS (`madvise`, about 25 µs for
/// 256 KiB) costs the budget as much as moving one byte.
const RELEASE_COST: usize = 4;

impl Budget {
    /// No limit.
    pub(crate) const ALL: Budget = Budget {
        bytes: usize::MAX,
        oversize: true,
        spent: 0,
        sweep_apart: false,
    };
}

/// How the evacuation of one source ended.
enum Evacuated {
    /// Every object that could move has moved.
    Done,
    /// The step's budget is spent; objects are left.
    Paused,
    /// No memory for a target.
    OutOfMemory,
}
