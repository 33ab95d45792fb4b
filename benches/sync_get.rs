//! `SyncHeap::get` throughput on 1 and 2 reader threads, with and without a
//! compactor thread that keeps fragmenting and compacting the same heap.
//! The number to watch: how much reader throughput the compactor costs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_heap::{Config, Handle, SyncHeap};
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

/// Allocates garbage, frees every other object, compacts in 64 KiB slices; repeats.
fn compactor(heap: &SyncHeap, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let junk: Vec<_> = (0..20_000u64).map(|i| heap.alloc([i; 8])).collect();
        for h in junk.iter().step_by(2) {
            heap.free(*h);
        }
        while !stop.load(Ordering::Relaxed) && !heap.compact_step(64 * 1024).finished {}
        for h in junk.iter().skip(1).step_by(2) {
            heap.free(*h);
        }
    }
}

fn sync_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_get");
    g.sample_size(20);
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(256 * 1024),
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
                    let stop = Arc::new(AtomicBool::new(false));
                    let bg = with_compactor.then(|| {
                        let (heap, stop) = (heap.clone(), stop.clone());
                        std::thread::spawn(move || compactor(&heap, &stop))
                    });
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let t = Instant::now();
                        let readers: Vec<_> = (0..threads)
                            .map(|k| {
                                let (heap, hs) = (heap.clone(), hs.clone());
                                std::thread::spawn(move || reader(&heap, &hs, i * 31 + k, READS))
                            })
                            .collect();
                        for r in readers {
                            std::hint::black_box(r.join().unwrap());
                        }
                        total += t.elapsed();
                    }
                    stop.store(true, Ordering::Relaxed);
                    if let Some(bg) = bg {
                        bg.join().unwrap();
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sync_get);
criterion_main!(benches);
