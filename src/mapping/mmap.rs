//! The unix segment source: anonymous private `mmap`s, given back with
//! `munmap`, so freed segments really return their pages to the OS.
//!
//! The OS page size is read once with `sysconf(_SC_PAGESIZE)`, not assumed:
//! on a system with pages larger than [`PAGE`] (16 KiB on Apple silicon and
//! some arm64 Linux kernels, 64 KiB on others) a block is mapped and unmapped
//! rounded up to whole OS pages; the bytes past `len` are slack nobody uses.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::PAGE;

/// The OS page size, read on first use (0: not read yet).
static OS_PAGE: AtomicUsize = AtomicUsize::new(0);

/// The OS page size in bytes: `sysconf(_SC_PAGESIZE)`, or [`PAGE`] if that
/// fails or is not a power of two.
pub(super) fn page_size() -> usize {
    let known = OS_PAGE.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let read = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(read)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(PAGE);
    debug_assert!(page >= PAGE, "mappings must be aligned to at least PAGE");
    OS_PAGE.store(page, Ordering::Relaxed);
    page
}

/// The length actually mapped for a block of `len` bytes: whole OS pages.
fn os_len(len: usize) -> Option<usize> {
    len.checked_next_multiple_of(page_size())
}

/// Maps `len` bytes (a non-zero multiple of [`PAGE`]), aligned to the OS
/// page. `None` if the kernel refuses.
pub(super) fn map(len: usize) -> Option<NonNull<u8>> {
    let os_len = os_len(len)?;
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            os_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Unmaps a block from [`map`].
///
/// # Safety
/// `base`/`len` must be a block returned by [`map`] (with this `len`) and
/// not yet unmapped, and nothing may access it afterwards.
pub(super) unsafe fn unmap(base: NonNull<u8>, len: usize) {
    let os_len = os_len(len).expect("map rounded this length without overflow");
    // SAFETY: guaranteed by the caller; `os_len` is the length `map` mapped.
    let rc = unsafe { libc::munmap(base.as_ptr().cast(), os_len) };
    debug_assert_eq!(rc, 0, "munmap failed");
}

/// Gives the pages of `len` bytes at `ptr` back to the OS while keeping the
/// range mapped (`madvise(MADV_DONTNEED)`): they read as zeros if touched
/// again. Returns false, with nothing done, unless `ptr` and `len` are whole
/// OS pages.
///
/// # Safety
/// The range must lie inside one block from [`map`], and nothing may rely
/// on its contents afterwards.
pub(super) unsafe fn discard(ptr: NonNull<u8>, len: usize) -> bool {
    let page = page_size();
    if !ptr.as_ptr().addr().is_multiple_of(page) || !len.is_multiple_of(page) {
        return false;
    }
    // SAFETY: the range is whole pages of a private anonymous mapping we own
    // (caller); DONTNEED only drops their contents.
    unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_size_comes_from_the_os() {
        let page = page_size();
        assert!(page.is_power_of_two() && page >= PAGE);
        assert_eq!(os_len(PAGE), Some(page));
    }
}
