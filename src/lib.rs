//! A compacting heap: objects live behind generational [`Handle`]s, so the
//! heap itself may move any object nobody is borrowing, close the holes
//! between objects, and give memory back to the operating system.
//!
//! # Why
//! `malloc` cannot move an object once it has handed out its address. A
//! long-running program with an unlucky pattern of sizes (a cache whose value
//! sizes drift; a loop that allocates a big buffer, a small thing, a new big
//! buffer, then frees the first) keeps memory it can never reuse: RSS climbs
//! while live data stays flat. Rust values *can* be moved — every move is a
//! `memcpy` — but only by their owner. Here the heap is the owner.
//!
//! # A tour
//! ```
//! use compact_heap::{Handle, Heap};
//!
//! let heap = Heap::new();
//! let a: Handle<u64> = heap.alloc(7);
//! let b: Handle<[u8]> = heap.alloc_slice(&[1, 2, 3]);
//! let s: Handle<str> = heap.alloc_str("hello");
//! {
//!     let r = heap.get(b).unwrap();          // shared borrow: `b` is pinned
//!     let mut w = heap.get_mut(a).unwrap();  // exclusive borrow: `a` is pinned
//!     *w += 1;
//!     heap.compact();                        // moves only unpinned objects
//!     assert_eq!(&*r, &[1, 2, 3]);
//! }
//! assert_eq!(heap.remove(a).unwrap(), 8);    // move a value out
//! assert!(heap.free(s));                     // drop one in place
//! assert!(heap.get(s).is_none());            // a stale handle reads None, forever
//! println!("{:?}", heap.stats());
//! ```
//!
//! - [`Heap::alloc`], [`Heap::alloc_slice`], [`Heap::alloc_str`],
//!   [`Heap::alloc_from_iter`]: put a value in; get a [`Handle`].
//! - [`Heap::get`] / [`Heap::get_mut`]: borrow it through a guard ([`Ref`] /
//!   [`RefMut`]) that pins the object while it lives. A borrow conflict
//!   panics, as with `RefCell`; [`Heap::try_get`] returns a [`BorrowError`].
//! - [`Heap::free`] / [`Heap::remove`]: drop the value, or move it out.
//! - [`Heap::read`]: a read scope ([`Reader`]) that hands out plain `&T` for
//!   many handles, with no pin per read.
//! - Compaction is *paced* by default ([`Pacing`]): allocation and free pay
//!   for it in bounded steps, so a heap left alone stays near its live data.
//!   [`Heap::compact`] / [`Heap::compact_step`] move objects to close holes
//!   all at once or in budgeted slices. [`Heap::stats`] tells what it holds.
//! - [`SyncHeap`]: the same, shared between threads, with a background
//!   `Compactor` that compacts in slices (where there are threads).
//! - For caches and indexes: [`Heap::alloc_clone`] (any sized or unsized
//!   [`CloneObject`]), [`Heap::alloc_with`] / [`Heap::alloc_slice_with`]
//!   (built in place), [`Heap::resize`] (a slice changes length, its handle
//!   stays), [`Heap::size_of`] / [`Heap::len_of`] (no guard needed),
//!   [`Heap::handles`], [`Heap::retain`], [`Heap::clear`],
//!   [`Heap::capacity`] / [`Heap::reserve`] / [`Heap::shrink_to_fit`], and a
//!   one-line `Display` of [`HeapStats`] for logs.
//!
//! # Where do the bytes live?
//! Only the bytes *of the object itself* live in the heap. A `Vec<u8>` or a
//! `String` is three words (pointer, length, capacity): `heap.alloc(vec)`
//! puts those 24 bytes in the heap, and the buffer stays in `malloc`, where
//! nothing compacts it. Store the bytes themselves, as a slice or a `str`:
//! ```
//! use compact_heap::{Handle, Heap};
//!
//! let heap = Heap::new();
//! let payload = vec![7u8; 64 * 1024];
//!
//! // The trap: 24 bytes in the heap, 64 KiB left in malloc.
//! let trap: Handle<Vec<u8>> = heap.alloc(payload.clone());
//! assert_eq!(heap.stats().live_bytes, 24);
//! heap.free(trap);
//!
//! // The right call: the 64 KiB are in the heap, where compaction moves them.
//! let bytes: Handle<[u8]> = heap.alloc_slice(&payload);
//! assert_eq!(heap.stats().live_bytes, 64 * 1024);
//! // (`alloc_clone(&*payload)`, `alloc_str`, `alloc_slice_with` do the same.)
//! assert_eq!(heap.size_of(bytes), Some(64 * 1024));
//! ```
//!
//! # How it works
//! Objects live in *segments* (1 MiB blocks mapped from the OS) and are
//! bump-allocated into the free lines of partly used segments, so even a
//! program that never compacts reuses holes. Objects larger than a quarter of
//! a segment get a mapping of their own, unmapped when freed. Compaction
//! copies the unpinned objects of the sparsest segments into dense ones, one
//! `memcpy` each, updates their slots, and gives the emptied segments back to
//! the OS (a piece at a time between `compact_step`s, at once in `compact`). Each
//! object costs a 12-byte slot in the handle table (a slice of more than
//! 1 KiB 4 bytes more, for its length) and nothing else (no header, no per-segment list: compaction
//! finds objects by sweeping the table). Objects in segments start at
//! multiples of 4 bytes, and one heap's segments hold at most about 15.9 GiB
//! (larger objects have mappings of their own and no such limit).
//! docs/DESIGN.md has the layout, the slot states, the pin protocol and the
//! invariants every `unsafe` block relies on.
//!
//! # Targets
//! Every target Rust's `std` supports. Segments come from `mmap` on unix,
//! from linear memory on `wasm32` (kept and reused when freed, since wasm
//! memory never shrinks), and from the global allocator elsewhere; the
//! `alloc-segments` feature picks the global allocator everywhere. Where
//! there are no threads (wasm without `atomics`) there is no background
//! `Compactor`: call [`Heap::compact_step`] or [`SyncHeap::compact_step`].
//!
//! # Compared with
//! - **slotmap**: the same generational handles (this crate's handles *are*
//!   slotmap keys), but values live inline in one `Vec`: unsized values need a
//!   `Box` each, which is malloc again. Here every value lives in the
//!   compacting space, and a slot whose version would wrap is retired.
//! - **malloc** (glibc, jemalloc, mimalloc): faster to reach an object (a
//!   pointer, no lookup), but it cannot move one, so fragmentation is forever.
//!
//! # Handles from another heap
//! Using a handle on a heap that did not issue it is a logic error, as in
//! slotmap. It never causes undefined behaviour and never yields a value of
//! another type: it reads `None` or some live object of the same type.
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod access;
mod cache;
mod collection;
mod compact;
mod config;
mod engine;
mod error;
mod guard;
mod handle;
mod heap;
mod large;
mod mapping;
mod object;
mod raw;
mod reader;
mod reuse;
mod segment;
mod space;
mod stats;
mod sync;
mod table;
mod types;

pub use cache::{Cache, CacheError, CacheStats, SyncCache};
pub use collection::Handles;
pub use config::{Config, Pacing};
pub use error::{AllocError, BorrowError, RemoveError, ResizeError};
pub use guard::{Ref, RefMut};
pub use handle::Handle;
pub use heap::Heap;
pub use object::{CloneObject, Object};
pub use reader::Reader;
pub use stats::{CompactReport, HeapStats};
pub use sync::SyncHeap;
#[cfg(all(
    not(loom),
    any(not(target_family = "wasm"), target_feature = "atomics")
))]
pub use sync::{Compactor, CompactorHandle, Policy};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
