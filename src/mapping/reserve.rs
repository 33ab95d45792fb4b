//! [`Reservation`]: a range of address space taken once and used a prefix at
//! a time, so that what lives in it keeps a fixed address computed from an
//! index (the table's dense chunks: chunk `c` at `base + c * block`), and a
//! lookup needs no directory of blocks.
//!
//! Only where the platform can reserve address space without committing
//! memory: 64-bit unix with `mmap` (not Miri, not the `alloc-segments`
//! feature), with 4 KiB OS pages. Elsewhere [`Reservation::new`] says `None`
//! and the caller keeps its blocks where it kept them before.
//!
//! The range is mapped `PROT_NONE` (no memory, no commit charge). It is
//! used one of two ways:
//! - a prefix at a time (the table's slots): a prefix is made readable and
//!   writable as it is needed ([`Reservation::commit`]), and never made
//!   inaccessible again, so every byte below [`Reservation::committed`] can
//!   always be read. Untouched pages read as zeros; [`Reservation::reset`]
//!   gives pages back so that they read as zeros again.
//! - a place at a time (the space's segments): [`Reservation::place`] makes
//!   one fixed-size place readable and writable for a [`Mapping`] that
//!   gives it back with [`decommit`] when it drops (never `munmap`, which
//!   would open a hole in the range that the OS could hand to anyone).
//!
//! [`Mapping`]: super::Mapping

use core::ptr::NonNull;

/// The size of the OS's (transparent) huge pages on the targets that have
/// them: the alignment of a range of places.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// A reserved range of address space, of which a prefix is readable and
/// writable.
///
/// Invariant: `base..base + len` is a mapping this value owns (unmapped on
/// drop); its first `committed` bytes (a multiple of the OS page) are
/// readable and writable, and read as zeros wherever they were not written
/// since they were committed or last [reset](Reservation::reset). A range
/// used by places ([`Reservation::place`]) commits no prefix: each place is
/// accessible exactly while the mapping made of it lives, and the range is
/// dropped only after all of those.
#[derive(Debug)]
pub(crate) struct Reservation {
    base: NonNull<u8>,
    len: usize,
    committed: usize,
    /// Places ask for transparent huge pages ([`Reservation::for_places`]).
    huge: bool,
}

// SAFETY: plain memory owned by this value; no thread affinity.
unsafe impl Send for Reservation {}
// SAFETY: `&Reservation` only exposes addresses and lengths.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Whether this target can reserve address space (else
    /// [`Reservation::new`] is always `None`).
    pub(crate) const SUPPORTED: bool = os::SUPPORTED;

    /// Reserves `len` bytes (a multiple of 4 KiB) of address space, or
    /// `None` where this target cannot (or the OS refuses).
    pub(crate) fn new(len: usize) -> Option<Reservation> {
        let base = os::reserve(len, os::PAGE)?;
        Some(Reservation {
            base,
            len,
            committed: 0,
            huge: false,
        })
    }

    /// Reserves `len` bytes (a multiple of 4 KiB) for places
    /// ([`Reservation::place`]), starting at a multiple of [`HUGE_PAGE`] so
    /// that places of a power-of-two size tile the huge pages the OS may
    /// back them with. With `huge`, each place asks for those pages
    /// (Linux; a hint the kernel may ignore).
    pub(crate) fn for_places(len: usize, huge: bool) -> Option<Reservation> {
        let base = os::reserve(len, HUGE_PAGE)?;
        Some(Reservation {
            base,
            len,
            committed: 0,
            huge,
        })
    }

    /// The first byte of the range.
    #[inline]
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Bytes of the range.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes at the start of the range that are readable and writable.
    #[inline]
    pub(crate) fn committed(&self) -> usize {
        self.committed
    }

    /// Makes the first `upto` bytes (at most [`Reservation::len`], a
    /// multiple of 4 KiB) readable and writable. False, with nothing
    /// changed, if the OS refuses.
    pub(crate) fn commit(&mut self, upto: usize) -> bool {
        debug_assert!(upto <= self.len && upto.is_multiple_of(os::PAGE));
        if upto <= self.committed {
            return true;
        }
        // SAFETY: `committed..upto` is inside the range we own (`upto <=
        // len`), and not yet accessible, so no reference points into it.
        let done = unsafe { os::commit(self.base.add(self.committed), upto - self.committed) };
        if done {
            self.committed = upto;
        }
        done
    }

    /// Makes the `len` bytes at `offset` (whole 4 KiB pages inside the range,
    /// inaccessible now) readable and writable, and returns their address;
    /// `None`, with nothing changed, if the OS refuses (no memory).
    ///
    /// The caller makes them a [`Mapping::placed`](super::Mapping::placed),
    /// which gives them back with [`decommit`] when it drops, before this
    /// reservation does.
    pub(crate) fn place(&self, offset: usize, len: usize) -> Option<NonNull<u8>> {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        debug_assert!(offset.is_multiple_of(os::PAGE) && len.is_multiple_of(os::PAGE));
        debug_assert_eq!(
            self.committed, 0,
            "a range is used by places or by a prefix"
        );
        // SAFETY: `offset + len <= len`: inside the range we own.
        let ptr = unsafe { self.base.add(offset) };
        // SAFETY: whole pages of our range; inaccessible until now (the
        // caller places each place once at a time), so nothing refers to them.
        if !unsafe { os::commit(ptr, len) } {
            return None;
        }
        if self.huge {
            // SAFETY: the place just committed, ours; a hint about its pages
            // that changes no byte of them.
            unsafe { os::want_huge_pages(ptr, len) };
        }
        Some(ptr)
    }

    /// Makes `len` bytes at `offset` (whole 4 KiB pages, committed) read as
    /// zeros, giving their pages back to the OS where it can.
    ///
    /// # Safety
    /// No reference into those bytes is alive, and nothing relies on their
    /// contents afterwards.
    pub(crate) unsafe fn reset(&self, offset: usize, len: usize) {
        debug_assert!(offset
            .checked_add(len)
            .is_some_and(|end| end <= self.committed));
        debug_assert!(offset.is_multiple_of(os::PAGE) && len.is_multiple_of(os::PAGE));
        // SAFETY: inside the committed part of our range (caller); the
        // caller gives up the contents and holds no reference into them.
        unsafe { os::reset(self.base.add(offset), len) }
    }
}

/// Gives back the pages of a place made by [`Reservation::place`], and makes
/// it inaccessible again, keeping it reserved (so the OS cannot hand the
/// addresses to anyone else, and the place can be placed again).
///
/// # Safety
/// `ptr` and `len` are a place returned by [`Reservation::place`], of a
/// reservation still alive; nothing refers to its bytes, and nothing uses
/// them until it is placed again.
pub(crate) unsafe fn decommit(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's place: whole pages of a live reservation.
    unsafe { os::decommit(ptr, len) }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the range is ours (type invariant) and whoever kept
        // things in it is gone: a `Reservation` is dropped after them.
        unsafe { os::release(self.base, self.len) }
    }
}

#[cfg(all(
    unix,
    target_pointer_width = "64",
    not(miri),
    not(feature = "alloc-segments")
))]
mod os {
    use core::ptr::NonNull;

    /// The page size the reservation works in (and requires of the OS).
    pub(super) const PAGE: usize = 4096;

    pub(super) const SUPPORTED: bool = true;

    /// Reserves `len` bytes at a multiple of `align` (a power of two, at
    /// least [`PAGE`]), inaccessible: no memory, no commit charge.
    pub(super) fn reserve(len: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two() && align >= PAGE);
        if super::super::mmap::page_size() != PAGE || len == 0 {
            return None;
        }
        // Room to slide to the alignment; the slack is unmapped after.
        let padded = len.checked_add(align - PAGE)?;
        // SAFETY: a new anonymous mapping at an address of the kernel's
        // choosing touches no existing memory.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                padded,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p.addr();
        let head = start.next_multiple_of(align) - start;
        let tail = padded - head - len;
        // SAFETY: the head and tail slack are whole pages (`start`, `align`
        // and `len` are multiples of PAGE) of the mapping just made, which
        // nothing refers to.
        unsafe {
            if head != 0 {
                libc::munmap(p, head);
            }
            if tail != 0 {
                libc::munmap(p.byte_add(head + len), tail);
            }
        }
        // SAFETY: `head < padded`: inside the mapping just made.
        NonNull::new(unsafe { p.byte_add(head) }.cast())
    }

    /// Asks for transparent huge pages over `len` bytes at `ptr` (Linux; a
    /// hint, ignored if refused).
    ///
    /// # Safety
    /// Whole committed pages of a range from [`reserve`].
    pub(super) unsafe fn want_huge_pages(ptr: NonNull<u8>, len: usize) {
        #[cfg(target_os = "linux")]
        // SAFETY: our own pages (caller); the advice changes no contents.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (ptr, len);
    }

    /// Makes `len` bytes at `ptr` readable and writable.
    ///
    /// # Safety
    /// Whole pages inside a range from [`reserve`].
    pub(super) unsafe fn commit(ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: pages of our own mapping (caller); they held nothing.
        unsafe { libc::mprotect(ptr.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) == 0 }
    }

    /// Makes committed pages read as zeros, giving them back to the OS.
    ///
    /// # Safety
    /// Whole committed pages of a range from [`reserve`], whose contents
    /// nobody needs or references.
    pub(super) unsafe fn reset(ptr: NonNull<u8>, len: usize) {
        // Linux guarantees that private anonymous pages read as zeros after
        // `MADV_DONTNEED`; other systems do not promise it, so they get
        // fresh pages mapped over the old ones.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: our own committed pages (caller).
        let done = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        // SAFETY: MAP_FIXED over our own committed pages (caller) replaces
        // them with fresh zero pages, the same protection, nothing else.
        let done = unsafe {
            libc::mmap(
                ptr.as_ptr().cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            ) != libc::MAP_FAILED
        };
        if !done {
            // Then by hand: the pages stay resident, but read as zeros.
            // SAFETY: writable pages nobody references (caller).
            unsafe { ptr.as_ptr().write_bytes(0, len) };
        }
    }

    /// Makes whole pages of a range from [`reserve`] inaccessible and gives
    /// their memory (and commit charge) back, keeping them reserved.
    ///
    /// # Safety
    /// Whole pages of a range from [`reserve`], whose contents nobody needs
    /// or references.
    pub(super) unsafe fn decommit(ptr: NonNull<u8>, len: usize) {
        // A fresh inaccessible mapping in their place: as `reserve` made them.
        // SAFETY: MAP_FIXED over pages of our own range (caller) replaces
        // them; nothing else is touched.
        let p = unsafe {
            libc::mmap(
                ptr.as_ptr().cast(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // The OS could not split its map (too many mappings): give the
            // pages back at least. They stay accessible, which is harmless:
            // the next place there commits them again.
            // SAFETY: as `reset`: our own pages, given up by the caller.
            unsafe { reset(ptr, len) };
        }
    }

    /// Unmaps a range from [`reserve`].
    ///
    /// # Safety
    /// The whole range, from [`reserve`] with this `len`, not used again.
    pub(super) unsafe fn release(base: NonNull<u8>, len: usize) {
        // SAFETY: the caller's range, unused from now on.
        let rc = unsafe { libc::munmap(base.as_ptr().cast(), len) };
        debug_assert_eq!(rc, 0, "munmap failed");
    }
}

#[cfg(not(all(
    unix,
    target_pointer_width = "64",
    not(miri),
    not(feature = "alloc-segments")
)))]
mod os {
    use core::ptr::NonNull;

    pub(super) const PAGE: usize = 4096;

    pub(super) const SUPPORTED: bool = false;

    /// This target reserves nothing.
    pub(super) fn reserve(_len: usize, _align: usize) -> Option<NonNull<u8>> {
        None
    }

    /// # Safety
    /// Never called: there is no reservation to advise.
    pub(super) unsafe fn want_huge_pages(_ptr: NonNull<u8>, _len: usize) {
        unreachable!("no reservation on this target")
    }

    /// # Safety
    /// Never called: there is no reservation to commit.
    pub(super) unsafe fn commit(_ptr: NonNull<u8>, _len: usize) -> bool {
        unreachable!("no reservation on this target")
    }

    /// # Safety
    /// Never called: there is no reservation to reset.
    pub(super) unsafe fn reset(_ptr: NonNull<u8>, _len: usize) {
        unreachable!("no reservation on this target")
    }

    /// # Safety
    /// Never called: there is no reservation to decommit.
    pub(super) unsafe fn decommit(_ptr: NonNull<u8>, _len: usize) {
        unreachable!("no reservation on this target")
    }

    /// # Safety
    /// Never called: there is no reservation to release.
    pub(super) unsafe fn release(_base: NonNull<u8>, _len: usize) {
        unreachable!("no reservation on this target")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_prefix_reads_zeros_and_reset_makes_it_zeros_again() {
        let Some(mut r) = Reservation::new(64 * os::PAGE) else {
            // This target reserves nothing: the table keeps its blocks in
            // its pool, which the other tests cover.
            return;
        };
        assert_eq!(r.committed(), 0);
        assert!(r.commit(2 * os::PAGE));
        assert!(r.commit(os::PAGE), "a shorter commit changes nothing");
        assert_eq!(r.committed(), 2 * os::PAGE);
        let p = r.base().as_ptr();
        // SAFETY: the first two pages are committed, readable and writable.
        unsafe {
            assert_eq!(p.add(2 * os::PAGE - 1).read(), 0);
            p.add(os::PAGE + 7).write(9);
            p.write(1);
        }
        // SAFETY: the second page is committed and nothing points into it.
        unsafe { r.reset(os::PAGE, os::PAGE) };
        // SAFETY: committed pages stay readable.
        unsafe {
            assert_eq!(p.add(os::PAGE + 7).read(), 0, "reset to zeros");
            assert_eq!(p.read(), 1, "the page before is untouched");
        }
    }

    #[test]
    fn places_start_on_a_huge_page_and_each_reads_zeros_then_keeps_its_bytes() {
        for huge in [false, true] {
            let Some(r) = Reservation::for_places(8 * HUGE_PAGE, huge) else {
                return; // nothing reserved on this target
            };
            assert!(r.base().as_ptr().addr().is_multiple_of(HUGE_PAGE));
            assert_eq!(r.len(), 8 * HUGE_PAGE);
            let a = r.place(0, HUGE_PAGE).expect("a place");
            let b = r.place(7 * HUGE_PAGE, HUGE_PAGE).expect("the last place");
            // SAFETY: both places are committed, readable and writable, and
            // given back below before the reservation drops.
            unsafe {
                assert_eq!(a.as_ptr().add(HUGE_PAGE - 1).read(), 0);
                a.as_ptr().write(3);
                b.as_ptr().add(HUGE_PAGE - 1).write(4);
                assert_eq!(a.as_ptr().read(), 3);
                assert_eq!(b.as_ptr().add(HUGE_PAGE - 1).read(), 4);
                decommit(a, HUGE_PAGE);
                decommit(b, HUGE_PAGE);
            }
            let again = r.place(0, HUGE_PAGE).expect("placed again");
            // SAFETY: placed again: committed, and zeros after the decommit.
            unsafe {
                assert_eq!(again.as_ptr().read(), 0, "a place placed again is fresh");
                decommit(again, HUGE_PAGE);
            }
        }
    }
}
