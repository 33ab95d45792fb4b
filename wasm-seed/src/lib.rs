//! The seed's loop as a WebAssembly module, for `run.mjs` to drive in Node.
//!
//! The production report behind compact-heap: a wasm module allocated a
//! ~1 MiB tensor, something small, the next tensor, freed the first, freed
//! the small thing — and its linear memory grew until it ran out. This module
//! runs that loop with the tensors either in a compact-heap [`Heap`] or in
//! `Vec<u8>`s of the global allocator. The global allocator is Rust's default
//! on wasm (dlmalloc), or wee_alloc (the seed's) with the `wee_alloc` feature:
//! two builds of this crate give the variants `run.mjs` compares.
//!
//! The module imports nothing. Its exports, called by the host:
//! - [`start`]`(store, jitter, seed)`: begin a loop; `store` 0 = compact-heap,
//!   1 = `Vec<u8>`; `jitter` 0 = tensors of exactly 1 MiB, 1 = 768–1280 KiB.
//! - [`run`]`(n)`: run `n` more iterations; returns the iterations done so far.
//!   Memory that cannot be had is a panic, which traps (`RuntimeError` in JS).
//! - [`held_bytes`]`()`: what the compact-heap store holds, by its own count.
//!
//! ```text
//! bash wasm-seed/run.sh [iterations]   # builds both variants, runs them in Node
//! ```

use std::cell::RefCell;
use std::hint::black_box;

use compact_heap::{Handle, Heap};

#[cfg(feature = "wee_alloc")]
#[global_allocator]
static ALLOC: wee_alloc::WeeAlloc = wee_alloc::WeeAlloc::INIT;

const KIB: usize = 1024;
/// Bytes of the small thing allocated between two tensors.
const SMALL: usize = 64;
/// compact-heap runs `compact()` every this many iterations.
const COMPACT_EVERY: u64 = 100;

/// Where the tensors live.
#[allow(clippy::large_enum_variant)] // one of them, made once
enum Store {
    /// In a compact-heap; `current` is the tensor alive between iterations.
    Heap { heap: Heap, current: Handle<[u8]> },
    /// In the global allocator.
    Vec { current: Vec<u8> },
}

/// One run of the loop.
struct SeedLoop {
    store: Store,
    jitter: bool,
    /// xorshift64 state for the jittered sizes.
    rng: u64,
    done: u64,
}

impl SeedLoop {
    fn tensor_size(&mut self) -> usize {
        if !self.jitter {
            return 1024 * KIB;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        768 * KIB + (self.rng % (512 * KIB as u64 + 1)) as usize
    }

    fn new(store: u32, jitter: bool, seed: u32) -> SeedLoop {
        let mut l = SeedLoop {
            store: Store::Vec {
                current: Vec::new(),
            },
            jitter,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(seed),
            done: 0,
        };
        let first = l.tensor_size();
        l.store = if store == 0 {
            let heap = Heap::new();
            let current = heap.alloc_slice_fill(first, 1u8);
            Store::Heap { heap, current }
        } else {
            Store::Vec {
                current: vec![1u8; first],
            }
        };
        l
    }

    /// One iteration: the small thing, the next tensor, free the first, free
    /// the small thing.
    fn step(&mut self) {
        let size = self.tensor_size();
        let i = self.done;
        match &mut self.store {
            Store::Heap { heap, current } => {
                let small = heap.alloc_slice_fill(SMALL, i as u8);
                let next = heap.alloc_slice_fill(size, i as u8);
                heap.free(*current);
                heap.free(small);
                *current = next;
                if (i + 1).is_multiple_of(COMPACT_EVERY) {
                    heap.compact();
                }
            }
            Store::Vec { current } => {
                let small = black_box(vec![i as u8; SMALL]);
                let next = black_box(vec![i as u8; size]);
                drop(core::mem::replace(current, next));
                drop(small);
            }
        }
        self.done += 1;
    }
}

thread_local! {
    static LOOP: RefCell<Option<SeedLoop>> = const { RefCell::new(None) };
}

/// Starts a loop: `store` 0 = compact-heap, 1 = `Vec<u8>` on the global
/// allocator; `jitter` 0 = 1 MiB tensors, 1 = 768–1280 KiB; `seed` for the sizes.
#[no_mangle]
pub extern "C" fn start(store: u32, jitter: u32, seed: u32) {
    LOOP.with(|l| *l.borrow_mut() = Some(SeedLoop::new(store, jitter != 0, seed)));
}

/// Runs `n` more iterations of the loop [`start`] began; returns how many
/// have run in all (0 if no loop was started).
#[no_mangle]
pub extern "C" fn run(n: u32) -> u32 {
    LOOP.with(|l| {
        let mut l = l.borrow_mut();
        let Some(l) = l.as_mut() else { return 0 };
        for _ in 0..n {
            l.step();
        }
        l.done as u32
    })
}

/// Bytes the compact-heap store holds for objects (segments, large objects
/// and spares), by its own count; 0 for the `Vec` store.
#[no_mangle]
pub extern "C" fn held_bytes() -> f64 {
    LOOP.with(|l| match l.borrow().as_ref().map(|l| &l.store) {
        Some(Store::Heap { heap, .. }) => heap.stats().held_bytes as f64,
        _ => 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_stores_run_the_loop() {
        for store in [0, 1] {
            for jitter in [0, 1] {
                start(store, jitter, 7);
                assert_eq!(run(250), 250);
            }
        }
    }

    #[test]
    fn jittered_sizes_stay_in_range() {
        let mut l = SeedLoop::new(1, true, 1);
        for _ in 0..1000 {
            assert!((768 * KIB..=1280 * KIB).contains(&l.tensor_size()));
        }
    }
}
