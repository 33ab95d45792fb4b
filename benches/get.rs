//! Reading an object through its handle: random `get` over 1M live objects,
//! against `slotmap::SlotMap::get` and a `Vec<Box<T>>` deref, in one run.

use std::hint::black_box;

use compact_heap::Heap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slotmap::SlotMap;

const N: usize = 1 << 20;
const READS: usize = 1024;

fn random_indices() -> Vec<usize> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..READS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize % N
        })
        .collect()
}

fn get(c: &mut Criterion) {
    let idx = random_indices();
    let mut g = c.benchmark_group("get_random_1M");
    g.throughput(Throughput::Elements(READS as u64));

    let heap = Heap::new();
    let handles: Vec<_> = (0..N as u64).map(|i| heap.alloc(i)).collect();
    let keys: Vec<_> = idx.iter().map(|&i| handles[i]).collect();
    g.bench_function("compact-heap Heap::get", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &h in &keys {
                sum = sum.wrapping_add(*heap.get(black_box(h)).unwrap());
            }
            sum
        })
    });

    let mut map = SlotMap::new();
    let skeys: Vec<_> = (0..N as u64).map(|i| map.insert(i)).collect();
    let skeys: Vec<_> = idx.iter().map(|&i| skeys[i]).collect();
    g.bench_function("slotmap SlotMap::get", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &k in &skeys {
                sum = sum.wrapping_add(*map.get(black_box(k)).unwrap());
            }
            sum
        })
    });

    let boxes: Vec<Box<u64>> = (0..N as u64).map(Box::new).collect();
    g.bench_function("Vec<Box<u64>> deref", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &i in &idx {
                sum = sum.wrapping_add(*boxes[black_box(i)]);
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, get);
criterion_main!(benches);
