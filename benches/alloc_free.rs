//! Allocation speed: an alloc + free pair of a byte slice (every byte
//! written), compact-heap against `Box<[u8]>` on the system allocator, in the
//! same run. jemalloc and mimalloc are in `footprint/benches/alloc_peers.rs`.

use std::hint::black_box;

use compact_heap::Heap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 4] = [16, 128, 1024, 16 * 1024];

fn alloc_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free");
    for size in SIZES {
        g.throughput(Throughput::Elements(1));
        let heap = Heap::new();
        // A few live neighbours, so the heap is not trivially empty.
        let _keep: Vec<_> = (0..1000)
            .map(|_| heap.alloc_slice_fill(size, 0u8))
            .collect();
        g.bench_with_input(BenchmarkId::new("compact-heap", size), &size, |b, &size| {
            b.iter(|| {
                let h = heap.alloc_slice_fill(black_box(size), 1u8);
                heap.free(black_box(h));
            })
        });
        g.bench_with_input(
            BenchmarkId::new("system Box<[u8]>", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    let v = vec![1u8; black_box(size)].into_boxed_slice();
                    drop(black_box(v));
                })
            },
        );
    }
    g.finish();
}

/// Replacement in a working set of 10 000 objects: free a random one,
/// allocate a new one of a random size up to 256 bytes.
fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("churn_10k");
    g.throughput(Throughput::Elements(1));
    let sizes: Vec<usize> = (0..4096u64)
        .map(|i| 16 + (i.wrapping_mul(0x9E37_79B9) % 240) as usize)
        .collect();
    let heap = Heap::new();
    let mut live: Vec<_> = (0..10_000)
        .map(|i| heap.alloc_slice_fill(sizes[i % 4096], 0u8))
        .collect();
    let mut i = 0usize;
    g.bench_function("compact-heap", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = (i.wrapping_mul(7919)) % live.len();
            heap.free(live[k]);
            live[k] = heap.alloc_slice_fill(sizes[i % 4096], 1u8);
        })
    });
    let mut boxes: Vec<Box<[u8]>> = (0..10_000)
        .map(|i| vec![0u8; sizes[i % 4096]].into_boxed_slice())
        .collect();
    g.bench_function("system Box<[u8]>", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = (i.wrapping_mul(7919)) % boxes.len();
            boxes[k] = vec![1u8; sizes[i % 4096]].into_boxed_slice();
        })
    });
    g.finish();
}

criterion_group!(benches, alloc_free, churn);
criterion_main!(benches);
