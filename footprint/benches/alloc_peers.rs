//! Alloc + free pairs of a byte slice (every byte written) through glibc,
//! jemalloc and mimalloc — each called directly through its `GlobalAlloc` —
//! and compact-heap, all in one run, so the ratios are fair on a noisy box.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use compact_heap::Heap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

const SIZES: [usize; 4] = [16, 128, 1024, 16 * 1024];

fn pair<A: GlobalAlloc>(a: &A, size: usize) {
    let layout = Layout::from_size_align(size, 1).expect("layout");
    // SAFETY: a non-zero size layout; the pointer is checked, written within
    // its size, and freed with the same allocator and layout.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(1, size);
        a.dealloc(black_box(p), layout);
    }
}

fn peers(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free_peers");
    for size in SIZES {
        g.throughput(Throughput::Elements(1));
        let heap = Heap::new();
        g.bench_with_input(BenchmarkId::new("compact-heap", size), &size, |b, &s| {
            b.iter(|| heap.free(heap.alloc_slice_fill(black_box(s), 1u8)))
        });
        g.bench_with_input(BenchmarkId::new("glibc", size), &size, |b, &s| {
            b.iter(|| pair(&System, black_box(s)))
        });
        g.bench_with_input(BenchmarkId::new("jemalloc", size), &size, |b, &s| {
            b.iter(|| pair(&Jemalloc, black_box(s)))
        });
        g.bench_with_input(BenchmarkId::new("mimalloc", size), &size, |b, &s| {
            b.iter(|| pair(&MiMalloc, black_box(s)))
        });
    }
    g.finish();
}

criterion_group!(benches, peers);
criterion_main!(benches);
