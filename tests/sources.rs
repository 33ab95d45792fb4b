//! When the segment source cannot grow — the OS refuses a mapping, the
//! global allocator returns null, wasm memory is at 4 GiB — the heap says so
//! and loses nothing:
//! - `try_alloc*` return `AllocError::OutOfMemory` (the value comes back);
//! - `alloc*` panic with a message that says "out of memory";
//! - a compaction in progress goes on, and every live value reads the same.
//!
//! The refusal here is real, not simulated: a request larger than any
//! address space (2^62 bytes), which `mmap`, `malloc` and `memory.grow` all
//! refuse. Miri reports such a request as resource exhaustion instead of
//! returning null, so these tests do not run under Miri.
#![cfg(not(miri))]

use compact_heap::{AllocError, Config, Handle, Heap};

/// Bytes no source can give.
const HUGE: usize = 1 << (usize::BITS - 2);

fn fragmented(heap: &Heap) -> Vec<(u64, Handle<[u64; 8]>)> {
    let all: Vec<_> = (0..400u64).map(|i| (i, heap.alloc([i; 8]))).collect();
    let mut kept = Vec::new();
    for (i, h) in all {
        if i % 2 == 0 {
            assert!(heap.free(h));
        } else {
            kept.push((i, h));
        }
    }
    kept
}

#[test]
fn a_refused_mapping_is_an_alloc_error_and_nothing_is_lost() {
    let heap = Heap::with_config(Config::default().segment_size(4096));
    let kept = fragmented(&heap);
    heap.compact_step(512); // a pass in progress
    assert_eq!(
        heap.try_alloc_slice_fill(HUGE, 0u8).err(),
        Some(AllocError::OutOfMemory)
    );
    heap.compact();
    for (i, h) in &kept {
        assert_eq!(*heap.get(*h).unwrap(), [*i; 8], "nothing lost");
    }
    let small = heap.alloc(5u32); // and the heap goes on
    assert_eq!(*heap.get(small).unwrap(), 5);
}

#[test]
#[should_panic(expected = "out of memory")]
fn alloc_panics_with_a_clear_message_when_the_source_refuses() {
    let heap = Heap::new();
    heap.alloc_slice_fill(HUGE, 0u8);
}
