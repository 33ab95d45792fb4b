//! `SyncHeap::get` throughput on 1 and 2 reader threads, alone and while the
//! background compactor (`Policy::default()`: a 64 KiB slice every
//! millisecond) compacts the same heap, which is re-fragmented before each
//! measured batch (not timed). The number to watch: how much reader
//! throughput the compactor costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_heap::{Config, Handle, Policy, SyncHeap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const OBJECTS: usize = 100_000;
const READS: u64 = 100_000;

fn reader(heap: &SyncHeap, hs: &[Handle<[u64; 4]>], seed: u64, reads: u64) -> u64 {
    let mut x = seed | 1;
    let mut sum = 0u64;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(heap.get(hs[x as usize % hs.len()]).unwrap()[0]);
    }
    sum
}

/// Garbage for the compactor: 8 MiB of objects, every other one freed.
/// Garbage for the compactor: `n` objects of 64 bytes, every other one freed.
fn fragment(heap: &SyncHeap, n: u64) -> Vec<Handle<[u64; 8]>> {
    let all: Vec<_> = (0..n).map(|i| heap.alloc([i; 8])).collect();
    let mut kept = Vec::with_capacity(all.len() / 2);
    for (i, h) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            heap.free(h);
        } else {
            kept.push(h);
        }
    }
    kept
}

fn sync_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_get");
    g.sample_size(20);
    // No paced compaction: the background compactor is what is measured.
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(256 * 1024).no_pacing(),
    ));
    let hs: Arc<Vec<_>> = Arc::new((0..OBJECTS as u64).map(|i| heap.alloc([i; 4])).collect());
    for threads in [1u64, 2] {
        for with_compactor in [false, true] {
            g.throughput(Throughput::Elements(READS * threads));
            let name = if with_compactor {
                "with compactor"
            } else {
                "alone"
            };
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    // Enough garbage that compaction goes on for the whole
                    // run (a batch of reads takes a few slices' time).
                    let junk = if with_compactor {
                        fragment(&heap, (8192 * iters).min(1 << 21))
                    } else {
                        Vec::new()
                    };
                    let compactor =
                        with_compactor.then(|| heap.compactor(Policy::default()).spawn());
                    let start = Arc::new(std::sync::Barrier::new(threads as usize + 1));
                    let readers: Vec<_> = (0..threads)
                        .map(|k| {
                            let (heap, hs, start) = (heap.clone(), hs.clone(), start.clone());
                            std::thread::spawn(move || {
                                start.wait();
                                let t = Instant::now();
                                std::hint::black_box(reader(&heap, &hs, k * 31 + 7, READS * iters));
                                t.elapsed()
                            })
                        })
                        .collect();
                    start.wait();
                    let total: Duration = readers
                        .into_iter()
                        .map(|r| r.join().unwrap())
                        .max()
                        .unwrap();
                    if let Some(c) = compactor {
                        c.stop();
                    }
                    for h in junk {
                        heap.free(h);
                    }
                    heap.compact();
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sync_get);
criterion_main!(benches);
