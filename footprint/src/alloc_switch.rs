//! One global allocator that is glibc, jemalloc or mimalloc, chosen once per
//! process by the `FOOTPRINT_ALLOCATOR` environment variable. The harness
//! starts one worker process per contender, so each measures its own RSS.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

/// The process's allocator: see the module docs.
pub struct Switch;

const UNSET: u8 = 0;
const GLIBC: u8 = 1;
const JEMALLOC: u8 = 2;
const MIMALLOC: u8 = 3;

static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

/// Which allocator this process uses, read from the environment on first use
/// (without allocating: `getenv` returns a pointer into the environment).
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNSET {
        return c;
    }
    // SAFETY: getenv with a NUL-terminated name; nothing modifies the
    // environment in this program.
    let value = unsafe { libc::getenv(c"FOOTPRINT_ALLOCATOR".as_ptr()) };
    let c = if value.is_null() {
        GLIBC
    } else {
        // SAFETY: getenv returned a NUL-terminated string that lives as long as the environment.
        match unsafe { CStr::from_ptr(value) }.to_bytes() {
            b"jemalloc" => JEMALLOC,
            b"mimalloc" => MIMALLOC,
            _ => GLIBC,
        }
    };
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// The name of the allocator in use.
pub fn name() -> &'static str {
    match choice() {
        JEMALLOC => "jemalloc",
        MIMALLOC => "mimalloc",
        _ => "glibc",
    }
}

// SAFETY: every call forwards to one allocator, the same for the whole life of
// the process (the choice is made before the first allocation returns and
// never changes), so every pointer is freed by the allocator that made it.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.alloc(layout),
                MIMALLOC => MiMalloc.alloc(layout),
                _ => System.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.alloc_zeroed(layout),
                MIMALLOC => MiMalloc.alloc_zeroed(layout),
                _ => System.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from the same allocator (see above).
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.dealloc(ptr, layout),
                MIMALLOC => MiMalloc.dealloc(ptr, layout),
                _ => System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; `ptr` came from the same allocator (see above).
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.realloc(ptr, layout, new_size),
                MIMALLOC => MiMalloc.realloc(ptr, layout, new_size),
                _ => System.realloc(ptr, layout, new_size),
            }
        }
    }
}
