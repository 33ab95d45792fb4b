//! [`Segment`]: one mapped block of the object space, divided into lines.
//!
//! Objects are bump-allocated into *holes*: runs of lines on which no live
//! object lies. Each line counts the live objects that start or end in it
//! (the lines an object passes through are its alone), and a bitmap says
//! which lines are free, so a line becomes reusable the moment its last
//! object dies (the line-granular hole reuse of Immix, with exact counts
//! instead of mark bits). See docs/DESIGN.md, "Memory layout" and I3.

use core::ptr::NonNull;

use crate::mapping::{Mapping, PageAlloc, PAGE};

/// `x` rounded up to a multiple of `align`, a power of two (a mask, not the
/// division `usize::next_multiple_of` compiles to for a runtime value).
#[inline]
pub(crate) fn align_up(x: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (x + align - 1) & !(align - 1)
}

/// The unit of hole reuse, in bytes.
pub(crate) const LINE: usize = 128;

/// One block of the object space.
#[derive(Debug)]
pub(crate) struct Segment {
    mapping: Mapping,
    /// Invariant: `lines[i]` is the number of live (or dying) objects that
    /// start or end in line `i` (`[i * LINE, (i + 1) * LINE)`). An object
    /// that covers a line without starting or ending in it is the only
    /// object on that line, so it needs no count there: marking and
    /// unmarking a long object touch two counts and a few words of bits.
    /// A mapping of its own when it is a page or more (a segment of 512 KiB
    /// or more), so that it goes back to the OS with its segment instead of
    /// staying in `malloc`'s arena ([`PageAlloc`]).
    lines: allocator_api2::boxed::Box<[u8], PageAlloc>,
    /// Invariant: bit `i % 64` of word `i / 64` is set iff line `i` exists
    /// and no object overlaps it: `lines[i] == 0` and no object passes
    /// through it. A free line holds no byte that anyone may read, so it may
    /// be handed out again. Hole searches read 64 lines at a time from it.
    free_bits: Box<[u64]>,
    /// Invariant: the number of set bits in `free_bits` (free lines).
    free_lines: usize,
    /// Bytes of the live and dying objects in this segment, and of the
    /// freed blocks it keeps for reuse.
    pub(crate) live_bytes: usize,
    /// Number of live and dying objects in this segment, and of the freed
    /// blocks it keeps for reuse (they stay marked, see `reuse`).
    pub(crate) live_objects: usize,
    /// Invariant (I14): how many of `live_objects` are freed blocks kept in
    /// the space's [`Reuse`](crate::reuse::Reuse); 0 or less than `live_objects`.
    pub(crate) cached: usize,
    /// The bytes of those blocks (in `live_bytes`).
    pub(crate) cached_bytes: usize,
    /// A compaction source: nothing is allocated here until its pass ends.
    pub(crate) evacuating: bool,
    /// The size class of the recyclable list this segment is queued in, if any.
    pub(crate) queued: Option<u8>,
    /// Invariant: the longest run of free lines, exactly, whenever the
    /// segment is queued as recyclable (the cursor's own segment may have a
    /// stale value; leaving it rescans).
    pub(crate) max_hole: usize,
    /// The first line of that longest run (meaningful when `max_hole > 0`).
    pub(crate) max_hole_at: usize,
    /// Bytes from here on (a page boundary, or the end) have not been
    /// written since the segment's memory was mapped: the first write to
    /// each of their pages takes a page fault, in which the kernel zeroes
    /// the page. Kept for compaction's budget ([`Segment::touch`]); an
    /// estimate, never needed for soundness: pages given back in the middle
    /// of a segment are not tracked.
    pub(crate) untouched: usize,
}

impl Segment {
    /// Maps a new, empty segment of `size` bytes (a multiple of [`LINE`]).
    pub(crate) fn new(size: usize) -> Option<Segment> {
        debug_assert_eq!(size % LINE, 0);
        Some(Segment::in_mapping(Mapping::new(size, LINE)?, size))
    }

    /// A new, empty segment of the first `size` bytes of `mapping` (a
    /// multiple of [`LINE`], at most its usable bytes; its start is aligned
    /// to a line).
    pub(crate) fn in_mapping(mapping: Mapping, size: usize) -> Segment {
        debug_assert!(size.is_multiple_of(LINE) && size <= mapping.usable());
        debug_assert_eq!(mapping.start().as_ptr().addr() % LINE, 0);
        let mut lines = allocator_api2::vec::Vec::with_capacity_in(size / LINE, PageAlloc);
        lines.resize(size / LINE, 0u8);
        let lines = lines.into_boxed_slice();
        let mut free_bits = vec![0; lines.len().div_ceil(64)].into_boxed_slice();
        all_free(&mut free_bits, lines.len());
        Segment {
            mapping,
            free_lines: lines.len(),
            free_bits,
            lines,
            live_bytes: 0,
            live_objects: 0,
            cached: 0,
            cached_bytes: 0,
            evacuating: false,
            queued: None,
            max_hole: size / LINE,
            max_hole_at: 0,
            untouched: 0,
        }
    }

    /// Notes that `[offset, offset + size)` is about to be written, and
    /// returns how many of its pages are written for the first time since
    /// the segment was mapped (each a page fault). Writes are expected to go
    /// forward through fresh memory (a cursor bumps up a segment): pages
    /// below the highest one written are taken to be there.
    #[inline]
    pub(crate) fn touch(&mut self, offset: usize, size: usize) -> usize {
        let end = offset + size;
        if end <= self.untouched {
            return 0;
        }
        let from = (offset & !(PAGE - 1)).max(self.untouched);
        self.untouched = align_up(end, PAGE);
        (self.untouched - from) / PAGE
    }

    /// Notes that the bytes below `pos` may have been written (by a cursor
    /// that bumped up to there): see [`Segment::untouched`].
    #[inline]
    pub(crate) fn touched_to(&mut self, pos: usize) {
        self.untouched = self.untouched.max(align_up(pos, PAGE));
    }

    /// Makes an empty segment (every line count 0, I3) as good as new: not
    /// queued, not evacuating, one hole of every line.
    pub(crate) fn reset_empty(&mut self) {
        debug_assert_eq!(
            (self.live_objects, self.cached, self.cached_bytes),
            (0, 0, 0)
        );
        debug_assert_eq!(self.free_lines, self.lines.len());
        self.evacuating = false;
        self.queued = None;
        self.max_hole = self.lines.len();
        self.max_hole_at = 0;
    }

    /// Counts a freed block of `size` bytes as kept for reuse (I14): it
    /// stays marked, so it stays among `live_objects` and `live_bytes`.
    #[inline]
    pub(crate) fn keep(&mut self, size: usize) {
        self.cached += 1;
        self.cached_bytes += size;
    }

    /// A kept block of `size` bytes leaves the reuse stacks (taken by a new
    /// object, or about to be unmarked).
    #[inline]
    pub(crate) fn unkeep(&mut self, size: usize) {
        debug_assert!(self.cached > 0 && self.cached_bytes >= size);
        self.cached -= 1;
        self.cached_bytes -= size;
    }

    /// Bytes held from the OS.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.mapping.len()
    }

    /// Gives the pages of `len` bytes at byte `offset` of the mapping back to
    /// the OS (see [`Mapping::discard`]); false where the platform cannot.
    ///
    /// # Safety
    /// The segment must hold no object (`live_objects == 0`), and
    /// `offset + len <= self.mapped_bytes()`.
    pub(crate) unsafe fn discard(&self, offset: usize, len: usize) -> bool {
        debug_assert_eq!(self.live_objects, 0);
        // SAFETY: in bounds (caller); no object lies in an empty segment.
        unsafe { self.mapping.discard(offset, len) }
    }

    /// Gives every whole OS page that lies in free lines back to the OS,
    /// keeping it mapped: it reads as zeros when an object lands there next.
    /// Returns the bytes given back (0 where the source cannot).
    pub(crate) fn discard_free_pages(&self) -> usize {
        if self.free_lines == 0 {
            return 0;
        }
        let lines = self.lines.len();
        let mut given = 0;
        let mut line = 0;
        while line < lines {
            // Whole words of used lines at a time.
            if self.free_bits[line / 64] >> (line % 64) == 0 {
                line = (line / 64 + 1) * 64;
                continue;
            }
            if !self.line_is_free(line) {
                line += 1;
                continue;
            }
            let first = line;
            while line < lines && self.line_is_free(line) {
                line += 1;
            }
            let from = align_up(first * LINE, PAGE);
            let to = (line * LINE) & !(PAGE - 1);
            // SAFETY: `[from, to)` lies in the segment, inside free lines,
            // which hold no byte that anyone may read (I3); they are written
            // before they are read again.
            if to > from && unsafe { self.mapping.discard(from, to - from) } {
                given += to - from;
            }
        }
        given
    }

    /// Bytes of metadata kept for this segment (line counts and bitmap).
    pub(crate) fn metadata_bytes(&self) -> usize {
        core::mem::size_of::<Segment>()
            + self.lines.len()
            + self.free_bits.len() * core::mem::size_of::<u64>()
    }

    /// Usable bytes.
    #[inline]
    pub(crate) fn size(&self) -> usize {
        self.lines.len() * LINE
    }

    /// Pages (of [`PAGE`] bytes, the last one possibly shorter) with at
    /// least one used line: what the segment keeps resident at most once
    /// its whole free pages are given back
    /// ([`Segment::discard_free_pages`]).
    pub(crate) fn used_pages(&self) -> usize {
        let lines = self.lines.len();
        let per_page = (PAGE / LINE).max(1);
        (0..lines.div_ceil(per_page))
            .filter(|&p| !self.lines_free(p * per_page, ((p + 1) * per_page).min(lines) - 1))
            .count()
    }

    /// Lines on which no object lies.
    #[inline]
    #[cfg(test)]
    pub(crate) fn free_lines(&self) -> usize {
        self.free_lines
    }

    /// The line counts, the free-line bits and their count, to compare.
    #[cfg(test)]
    pub(crate) fn line_state(&self) -> (Vec<u8>, Vec<u64>, usize) {
        (
            self.lines.to_vec(),
            self.free_bits.to_vec(),
            self.free_lines,
        )
    }

    /// The address of byte `offset`, with the provenance of the mapping.
    #[inline]
    pub(crate) fn ptr_at(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.size());
        // SAFETY: `offset < size <= mapping length`, so the result stays in bounds.
        unsafe { self.mapping.start().add(offset) }
    }

    /// The first hole at or after line `from` in which `size` bytes aligned
    /// to `align` fit: `(start, end)` byte offsets of the whole hole.
    pub(crate) fn find_hole(
        &self,
        from: usize,
        size: usize,
        align: usize,
    ) -> Option<(usize, usize)> {
        let n = self.lines.len();
        let needed = size.div_ceil(LINE);
        if align <= LINE && needed <= 64 {
            // A line-aligned start fits: the first run of `needed` free lines.
            let start = self.first_run(from, needed)?;
            let end = self.next_line(start, false).unwrap_or(n);
            debug_assert!(end - start >= needed);
            return Some((start * LINE, end * LINE));
        }
        let mut line = from;
        while line < n {
            // Skip used lines, then measure the run of free ones.
            line = self.next_line(line, true)?;
            let end_line = self.next_line(line, false).unwrap_or(n);
            let (start, end) = (line * LINE, end_line * LINE);
            if align_up(start, align) + size <= end {
                return Some((start, end));
            }
            line = end_line;
        }
        None
    }

    /// The first line at or after `from` that is free (`free`) or used
    /// (`!free`), from the free-line bits, 64 lines at a time.
    fn next_line(&self, from: usize, free: bool) -> Option<usize> {
        let n = self.lines.len();
        if from >= n {
            return None;
        }
        let bits = |w: usize| {
            if free {
                self.free_bits[w]
            } else {
                !self.free_bits[w]
            }
        };
        let mut w = from / 64;
        let mut word = bits(w) & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let line = w * 64 + word.trailing_zeros() as usize;
                return (line < n).then_some(line);
            }
            w += 1;
            if w == self.free_bits.len() {
                return None;
            }
            word = bits(w);
        }
    }

    /// The first line at or after `from` that starts `k` (1..=64) free lines.
    fn first_run(&self, from: usize, k: usize) -> Option<usize> {
        debug_assert!((1..=64).contains(&k));
        let words = self.free_bits.len();
        let mut w = from / 64;
        while w < words {
            if self.free_bits[w] == 0 {
                w += 1; // no run starts in a word of used lines
                continue;
            }
            // Bits of this word and the next, so runs may cross the boundary.
            let z = u128::from(self.free_bits[w])
                | (u128::from(self.free_bits.get(w + 1).copied().unwrap_or(0)) << 64);
            // Bit p of `starts` stays iff bits p..p+len are free; `len`
            // doubles, then the last step tops it up to `k`.
            let (mut starts, mut len) = (z, 1);
            while 2 * len <= k {
                starts &= starts >> len;
                len *= 2;
            }
            starts &= starts >> (k - len);
            let mut starts = starts as u64;
            if w == from / 64 {
                starts &= u64::MAX << (from % 64);
            }
            if starts != 0 {
                return Some(w * 64 + starts.trailing_zeros() as usize);
            }
            w += 1;
        }
        None
    }

    /// Whether the segment is worth recycling: a hole of eight lines (1 KiB),
    /// or a sixteenth of its lines free (scanning a segment for one free
    /// line would cost more than the line is worth; compaction collects the rest).
    #[inline]
    pub(crate) fn is_recyclable(&self) -> bool {
        self.free_lines > 0 && (self.max_hole >= 8 || self.free_lines >= self.lines.len() / 16)
    }

    /// Recomputes [`Segment::max_hole`] from the free-line bits.
    pub(crate) fn rescan_holes(&mut self) {
        // `run` free lines, starting at `run_at`, run into the current word;
        // `left` free lines lie at or after it.
        let (mut best, mut best_at, mut run, mut run_at) = (0usize, 0usize, 0usize, 0usize);
        let mut left = self.free_lines;
        for (w, &x) in self.free_bits.iter().enumerate() {
            if run + left <= best {
                break; // no run ahead can be longer (a full segment stops at once)
            }
            if x == 0 {
                // A word of used lines (the most common in a full heap): the
                // run ends. (Bit counts are not one instruction on every CPU.)
                if run > best {
                    (best, best_at) = (run, run_at);
                }
                run = 0;
                continue;
            }
            let ones = x.count_ones() as usize;
            left -= ones;
            if x == u64::MAX {
                if run == 0 {
                    run_at = w * 64;
                }
                run += 64;
                continue;
            }
            let joined = run + x.trailing_ones() as usize;
            if joined > best {
                (best, best_at) = (joined, if run > 0 { run_at } else { w * 64 });
            }
            if ones <= best {
                // No run inside the word can beat the best (and the runs
                // across its edges are handled above and below).
                run = x.leading_ones() as usize;
                run_at = w * 64 + 64 - run;
                continue;
            }
            // The longest run inside the word: each step shortens every run by
            // one; the last non-empty step marks where the longest runs end.
            let (mut y, mut ends, mut len) = (x, 0u64, 0usize);
            while y != 0 {
                ends = y;
                y &= y << 1;
                len += 1;
            }
            if len > best {
                (best, best_at) = (len, w * 64 + ends.trailing_zeros() as usize + 1 - len);
            }
            run = x.leading_ones() as usize;
            run_at = w * 64 + 64 - run;
        }
        if run > best {
            (best, best_at) = (run, run_at);
        }
        self.max_hole = best;
        self.max_hole_at = best_at;
    }
    /// After [`Segment::unmark`] of `[offset, offset + size)`: widens
    /// [`Segment::max_hole`] to the free runs that now cover those lines.
    pub(crate) fn grow_hole_around(&mut self, offset: usize, size: usize) {
        let n = self.lines.len();
        let (mut line, last) = (offset / LINE, (offset + size - 1) / LINE);
        while line <= last {
            if !self.line_is_free(line) {
                line += 1;
                continue;
            }
            let start = self.prev_used(line).map_or(0, |used| used + 1);
            let end = self.next_line(line, false).unwrap_or(n);
            if end - start > self.max_hole {
                (self.max_hole, self.max_hole_at) = (end - start, start);
            }
            line = end;
        }
    }

    /// The last used line before `line`, from the free-line bits.
    fn prev_used(&self, line: usize) -> Option<usize> {
        let mut w = line / 64;
        let mut used = !self.free_bits[w] & ((1u64 << (line % 64)) - 1);
        loop {
            if used != 0 {
                return Some(w * 64 + 63 - used.leading_zeros() as usize);
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            used = !self.free_bits[w];
        }
    }

    /// Whether lines `first..=last` are all free (a debug check).
    pub(crate) fn lines_free(&self, first: usize, last: usize) -> bool {
        first > last
            || (first / 64..=last / 64).all(|w| {
                let bits = word_range(w, first, last);
                self.free_bits[w] & bits == bits
            })
    }

    /// Whether no object overlaps line `line`.
    #[inline]
    fn line_is_free(&self, line: usize) -> bool {
        self.free_bits[line / 64] & (1 << (line % 64)) != 0
    }

    /// Records an object at `[offset, offset + size)` (size > 0): a count on
    /// its first and last lines (I3: the lines between are its alone), and
    /// every line it overlaps marked used, a word of bits at a time.
    #[inline(always)]
    pub(crate) fn mark(&mut self, offset: usize, size: usize) {
        debug_assert!(size > 0 && offset + size <= self.size());
        let (first, last) = (offset / LINE, (offset + size - 1) / LINE);
        debug_assert!(
            self.lines_free(first + 1, last.saturating_sub(1)),
            "mark over an object"
        );
        self.live_bytes += size;
        self.live_objects += 1;
        // At most LINE one-byte objects share a line (each object has a byte
        // of its own in every line it touches).
        debug_assert!(self.lines[first] < u8::MAX && self.lines[last] < u8::MAX);
        if first == last {
            // One line (most small objects): no loops.
            let count = &mut self.lines[first];
            *count += 1;
            if *count == 1 {
                self.free_lines -= 1;
                self.free_bits[first / 64] &= !(1 << (first % 64));
            }
            return;
        }
        self.mark_lines(first, last);
    }

    /// The first half of [`Segment::mark`] for an object of a run that
    /// compaction bumps into free lines: the counts on its first and last
    /// lines only. [`Segment::mark_run`] does the rest for the whole run.
    #[inline(always)]
    pub(crate) fn count_ends(&mut self, offset: usize, size: usize) {
        debug_assert!(size > 0 && offset + size <= self.size());
        let (first, last) = (offset / LINE, (offset + size - 1) / LINE);
        debug_assert!(self.lines[first] < u8::MAX && self.lines[last] < u8::MAX);
        self.lines[first] += 1;
        if last != first {
            self.lines[last] += 1;
        }
    }

    /// The second half of [`Segment::mark`] for `objects` objects, `bytes`
    /// in all, laid one after another over `[start, end)` and each counted
    /// by [`Segment::count_ends`]: every line of the range is used, and the
    /// live counts grow. The same state as marking each object on its own.
    pub(crate) fn mark_run(&mut self, start: usize, end: usize, objects: usize, bytes: usize) {
        debug_assert!(start < end && end <= self.size());
        let (first, last) = (start / LINE, (end - 1) / LINE);
        self.live_bytes += bytes;
        self.live_objects += objects;
        for w in first / 64..=last / 64 {
            let bits = word_range(w, first, last);
            let word = &mut self.free_bits[w];
            self.free_lines -= (*word & bits).count_ones() as usize;
            *word &= !bits;
        }
    }

    /// [`Segment::mark`] of an object over lines `first < last`.
    #[inline(never)]
    fn mark_lines(&mut self, first: usize, last: usize) {
        // The lines between were free (I3: no other object touches them);
        // its end lines were free if no object touched them either.
        let ends_free = usize::from(self.lines[first] == 0) + usize::from(self.lines[last] == 0);
        self.lines[first] += 1;
        self.lines[last] += 1;
        self.free_lines -= last - first - 1 + ends_free;
        // Every line of the range is used now: clear its bits.
        self.set_free_bits(first, last, (false, false), false);
    }

    /// Sets (`free`) or clears the free bits of lines `first..=last`, but
    /// for line `first` if `keep.0` and line `last` if `keep.1`
    /// (end lines that another object still uses).
    #[inline(always)]
    fn set_free_bits(&mut self, first: usize, last: usize, keep: (bool, bool), free: bool) {
        let (wf, wl) = (first / 64, last / 64);
        for w in wf..=wl {
            let mut bits = word_range(w, first, last);
            if w == wf && keep.0 {
                bits &= !(1 << (first % 64));
            }
            if w == wl && keep.1 {
                bits &= !(1 << (last % 64));
            }
            let word = &mut self.free_bits[w];
            debug_assert!(!free || *word & bits == 0, "the object's lines were used");
            if free {
                *word |= bits;
            } else {
                *word &= !bits;
            }
        }
    }

    /// Forgets the object at `[offset, offset + size)`. Returns whether a line
    /// became free.
    #[inline(always)]
    pub(crate) fn unmark(&mut self, offset: usize, size: usize) -> bool {
        self.live_bytes -= size;
        self.live_objects -= 1;
        self.unmark_span(offset, size)
    }

    /// [`Segment::unmark`] of the lines only: for an object moved out of a
    /// compaction source whose counts (`live_bytes`, `live_objects`) were
    /// taken down when it moved. Returns whether a line became free.
    pub(crate) fn unmark_span(&mut self, offset: usize, size: usize) -> bool {
        debug_assert!(size > 0 && offset + size <= self.size());
        let (first, last) = (offset / LINE, (offset + size - 1) / LINE);
        debug_assert!(
            self.lines[first] > 0 && self.lines[last] > 0,
            "unmarking a free line"
        );
        if first == last {
            // One line (most small objects): no loops.
            let count = &mut self.lines[first];
            *count -= 1;
            if *count == 0 {
                self.free_lines += 1;
                self.free_bits[first / 64] |= 1 << (first % 64);
                return true;
            }
            return false;
        }
        self.unmark_lines(first, last)
    }

    /// [`Segment::unmark`] of an object over lines `first < last`.
    #[inline(never)]
    /// Every line free, as in a new segment: for a compaction source that
    /// its pass emptied, whose line counts were left as they were while its
    /// objects moved out (`Evacuation::moved`). Its objects are all gone.
    pub(crate) fn forget_lines(&mut self) {
        debug_assert_eq!((self.live_objects, self.cached), (0, 0));
        self.lines.fill(0);
        all_free(&mut self.free_bits, self.lines.len());
        self.free_lines = self.lines.len();
        self.max_hole = self.lines.len();
        self.max_hole_at = 0;
    }

    fn unmark_lines(&mut self, first: usize, last: usize) -> bool {
        self.lines[first] -= 1;
        self.lines[last] -= 1;
        // The lines between are free now (the object was alone on them, I3),
        // and its first and last lines if no other object touches them.
        let keep = (self.lines[first] != 0, self.lines[last] != 0);
        let freed = last - first - 1 + usize::from(!keep.0) + usize::from(!keep.1);
        self.set_free_bits(first, last, keep, true);
        self.free_lines += freed;
        freed > 0
    }
}

/// Sets `bits` to say that each of `lines` lines is free (and that no line
/// past them is).
fn all_free(bits: &mut [u64], lines: usize) {
    bits.fill(u64::MAX);
    if !lines.is_multiple_of(64) {
        // Lines past the end are never free.
        *bits.last_mut().expect("a segment has lines") = (1u64 << (lines % 64)) - 1;
    }
}

/// The bits of word `w` (lines `64 w ..= 64 w + 63`) for lines `first..=last`.
#[inline]
fn word_range(w: usize, first: usize, last: usize) -> u64 {
    let lo = if w == first / 64 { first % 64 } else { 0 };
    let hi = if w == last / 64 { last % 64 } else { 63 };
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_writes_to_each_page_are_counted_once_going_forward() {
        let mut s = Segment::new(8 * PAGE).unwrap();
        assert_eq!(s.touch(0, 100), 1, "page 0 is fresh");
        assert_eq!(s.touch(100, 100), 0, "and then it is there");
        // Across a page boundary: pages 1 and 2.
        assert_eq!(s.touch(2 * PAGE - 10, 20), 2);
        // A cursor that moved on bumped through pages 3 and 4.
        s.touched_to(4 * PAGE + 1);
        assert_eq!(s.touch(4 * PAGE, 64), 0);
        assert_eq!(s.touch(5 * PAGE, 3 * PAGE), 3);
        assert_eq!(s.untouched, 8 * PAGE);
    }

    #[test]
    fn lines_count_overlapping_objects_and_holes_follow() {
        let mut s = Segment::new(8 * LINE).unwrap();
        assert_eq!(s.find_hole(0, 8 * LINE, 8), Some((0, 8 * LINE)));
        s.mark(LINE - 8, 16); // spans lines 0 and 1
        s.mark(3 * LINE, LINE); // exactly line 3
        assert_eq!(s.free_lines(), 5);
        assert_eq!(s.find_hole(0, 8, 8), Some((2 * LINE, 3 * LINE)));
        assert_eq!(s.find_hole(0, LINE + 8, 8), Some((4 * LINE, 8 * LINE)));
        assert_eq!(s.find_hole(0, 5 * LINE, 8), None);
        assert!(s.unmark(LINE - 8, 16));
        assert_eq!(s.find_hole(0, 2 * LINE, 8), Some((0, 3 * LINE)));
        assert_eq!((s.live_objects, s.live_bytes), (1, LINE));
    }

    #[test]
    fn a_run_marked_at_its_end_is_its_objects_marked_one_by_one() {
        use crate::table::GRANULE;
        // Objects laid one after another (granule-aligned), from mid-line
        // after an object already there, over lines one spans alone and
        // lines several share, across a word of free bits.
        let sizes = [24, 200, 8, 8, 4, 3 * LINE + 12, 60, 64 * LINE, 100, 4];
        let (mut one, mut run) = (
            Segment::new(80 * LINE).unwrap(),
            Segment::new(80 * LINE).unwrap(),
        );
        for s in [&mut one, &mut run] {
            s.mark(0, 40);
        }
        let start = 40;
        let mut pos = start;
        for size in sizes {
            one.mark(pos, size);
            run.count_ends(pos, size);
            pos = align_up(pos + size, GRANULE);
        }
        run.mark_run(start, pos, sizes.len(), sizes.iter().sum());
        assert_eq!(run.line_state(), one.line_state());
        assert_eq!(
            (run.free_lines(), run.live_objects, run.live_bytes),
            (one.free_lines(), one.live_objects, one.live_bytes)
        );
        assert!(
            run.free_lines() > 0 && run.free_lines() < 80,
            "the case is not trivial"
        );
    }

    #[test]
    fn whole_free_pages_go_back_and_objects_stay() {
        let pages = 8;
        let mut s = Segment::new(pages * PAGE).unwrap();
        // An object at each end, and one filling pages 2..5 that is freed.
        let (head, mid, tail) = ((0, 100), (2 * PAGE, 3 * PAGE), (pages * PAGE - 64, 64));
        for (offset, size) in [head, mid, tail] {
            s.mark(offset, size);
            // SAFETY: the object's bytes, in the segment.
            unsafe { s.ptr_at(offset).as_ptr().write_bytes(0xAB, size) };
        }
        s.unmark(mid.0, mid.1);
        let given = s.discard_free_pages();
        // Free lines run from byte 128 to the tail's line: pages 1..7 whole.
        let expected = if cfg!(all(unix, not(miri), not(feature = "alloc-segments"))) {
            6 * PAGE
        } else {
            0 // the global-allocator source cannot give pages back
        };
        assert_eq!(given, expected);
        for (offset, size) in [head, tail] {
            // SAFETY: live objects' bytes, in the segment.
            let bytes = unsafe { core::slice::from_raw_parts(s.ptr_at(offset).as_ptr(), size) };
            assert!(
                bytes.iter().all(|&b| b == 0xAB),
                "a live object lost its bytes"
            );
        }
        if given > 0 {
            // SAFETY: free bytes of the segment, read only to check them.
            let freed = unsafe { core::slice::from_raw_parts(s.ptr_at(mid.0).as_ptr(), mid.1) };
            assert!(freed.iter().all(|&b| b == 0), "the pages were given back");
        }
        // A full segment has nothing to give.
        let mut full = Segment::new(2 * PAGE).unwrap();
        full.mark(0, 2 * PAGE);
        assert_eq!(full.discard_free_pages(), 0);
    }

    #[test]
    fn the_longest_hole_is_tracked_through_frees() {
        let mut s = Segment::new(16 * LINE).unwrap();
        for i in 0..16 {
            s.mark(i * LINE, LINE);
        }
        s.rescan_holes();
        assert_eq!(s.max_hole, 0);
        for i in [3, 5, 4, 9] {
            s.unmark(i * LINE, LINE);
            s.grow_hole_around(i * LINE, LINE);
        }
        assert_eq!((s.max_hole, s.max_hole_at), (3, 3), "lines 3, 4, 5 joined");
        let widened = s.max_hole;
        s.rescan_holes();
        assert_eq!(s.max_hole, widened, "the incremental figure is exact");
    }

    #[test]
    fn the_longest_hole_agrees_with_a_plain_count() {
        // Random patterns of used lines over 4 words, each word dense or
        // sparse, and free runs of random lengths.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..if cfg!(miri) { 20 } else { 500 } {
            let mut s = Segment::new(256 * LINE).unwrap();
            if round % 2 == 0 {
                let mut line = 0;
                while line < 256 {
                    let density = (next() % 9) as usize; // per word
                    let run = (next() % (64 - 7 * density as u64).max(2)) as usize;
                    line += run; // free
                    if line < 256 {
                        s.mark(line * LINE, 8);
                    }
                    line += 1;
                }
            } else {
                // One free run inside each word, off its edges.
                for w in 0..4 {
                    let len = (next() % 40 + 1) as usize;
                    let at = (next() % (62 - len as u64)) as usize + 1;
                    for line in (0..64).filter(|l| !(at..at + len).contains(l)) {
                        s.mark((w * 64 + line) * LINE, 8);
                    }
                }
            }
            s.rescan_holes();
            let (mut best, mut best_at, mut run) = (0, 0, 0);
            for line in 0..256 {
                run = if s.lines[line] == 0 { run + 1 } else { 0 };
                if run > best {
                    (best, best_at) = (run, line + 1 - run);
                }
            }
            assert_eq!(
                (s.max_hole, s.max_hole_at),
                (best, best_at),
                "round {round}"
            );
        }
    }

    #[test]
    fn line_scans_agree_with_a_plain_search() {
        let mut s = Segment::new(64 * LINE).unwrap();
        for (i, &used) in [1, 2, 3, 9, 10, 17, 40, 41, 42, 43, 44, 45, 46, 47, 48, 63]
            .iter()
            .enumerate()
        {
            s.mark(used * LINE, 8 + i);
        }
        for from in 0..64 {
            let plain_free = (from..64).find(|&j| s.lines[j] == 0);
            let plain_used = (from..64).find(|&j| s.lines[j] != 0);
            assert_eq!(s.next_line(from, true), plain_free, "free from {from}");
            assert_eq!(s.next_line(from, false), plain_used, "used from {from}");
        }
    }

    #[test]
    fn free_lines_follow_a_plain_count_of_overlapping_objects() {
        // Random objects of 1 byte to 5 lines, placed in free bytes, freed in
        // random order; after every step the free-line bits, their count and
        // the longest hole agree with a plain count of the objects on each
        // line (the model counts every line an object overlaps).
        const N: usize = 192;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut s = Segment::new(N * LINE).unwrap();
        let mut used = vec![false; N * LINE]; // bytes, to place objects apart
        let mut overlapping = [0u32; N]; // objects on each line
        let mut objects: Vec<(usize, usize)> = Vec::new();
        for step in 0..if cfg!(miri) { 60 } else { 3_000 } {
            if next(3) != 0 || objects.is_empty() {
                let size = 1 + next(5 * LINE as u64) as usize;
                let offset = next((N * LINE - size) as u64) as usize;
                if used[offset..offset + size].iter().any(|&u| u) {
                    continue;
                }
                used[offset..offset + size].fill(true);
                (offset / LINE..=(offset + size - 1) / LINE).for_each(|l| overlapping[l] += 1);
                s.mark(offset, size);
                objects.push((offset, size));
            } else {
                let (offset, size) = objects.swap_remove(next(objects.len() as u64) as usize);
                used[offset..offset + size].fill(false);
                (offset / LINE..=(offset + size - 1) / LINE).for_each(|l| overlapping[l] -= 1);
                s.unmark(offset, size);
            }
            for (line, &n) in overlapping.iter().enumerate() {
                assert_eq!(s.line_is_free(line), n == 0, "step {step} line {line}");
            }
            let free = overlapping.iter().filter(|&&n| n == 0).count();
            assert_eq!(s.free_lines, free, "step {step}");
            let (mut run, mut longest) = (0, 0);
            for &n in &overlapping {
                run = if n == 0 { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            s.rescan_holes();
            assert_eq!(s.max_hole, longest, "step {step}");
            assert_eq!(s.live_objects, objects.len());
        }
    }

    #[test]
    fn bit_searches_agree_with_the_line_counts() {
        // A fixed pseudo-random pattern over several words of bits.
        for seed in 1..if cfg!(miri) { 4u64 } else { 40 } {
            let mut s = Segment::new(256 * LINE).unwrap();
            let mut x = seed;
            for line in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % (2 + seed % 24) == 0 {
                    // Dense for some seeds, sparse (long runs) for others.
                    s.mark(line * LINE, LINE);
                }
            }
            let free: Vec<bool> = s.lines.iter().map(|&c| c == 0).collect();
            let mut longest = 0;
            for k in (1..=64).step_by(if cfg!(miri) { 7 } else { 1 }) {
                for from in [0, 1, 63, 64, 100, 200] {
                    let plain =
                        (from..256).find(|&p| p + k <= 256 && free[p..p + k].iter().all(|&f| f));
                    assert_eq!(s.first_run(from, k), plain, "seed {seed} k {k} from {from}");
                }
            }
            let mut run = 0;
            for &f in &free {
                run = if f { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            s.rescan_holes();
            assert_eq!(s.max_hole, longest, "seed {seed}");
            if longest > 0 {
                let at = s.max_hole_at;
                assert!(
                    free[at..at + longest].iter().all(|&f| f),
                    "seed {seed}: the longest hole is where it says"
                );
                assert!(at == 0 || !free[at - 1], "seed {seed}: it starts there");
            }
            for line in [1, 64, 65, 130, 255] {
                let plain = (0..line).rev().find(|&p| !free[p]);
                assert_eq!(s.prev_used(line), plain, "seed {seed} line {line}");
            }
        }
    }

    #[test]
    fn holes_respect_alignment() {
        let mut s = Segment::new(4 * LINE).unwrap();
        s.mark(0, 8);
        // Line 1..4 is free: 3 lines, but 256-aligned 256 bytes start at 256.
        assert_eq!(s.find_hole(0, 256, 256), Some((LINE, 4 * LINE)));
        assert_eq!(s.find_hole(0, 384, 256), None);
    }
}
