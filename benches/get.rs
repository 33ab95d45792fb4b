//! Reading an object through its handle: random `get` over 1M live objects,
//! against `slotmap::SlotMap::get` and a `Vec<Box<T>>` deref, in one run.
//!
//! Two patterns: `get_random_1M` repeats the same 1024 random reads (warm:
//! the touched lines stay in cache); `get_cold_1M` reads every object once
//! per iteration in a random order (cold: each read misses the cache). Each
//! has compact-heap's guard (`Heap::get`) and its read scope (`Reader::get`),
//! and the floor of any handle lookup whose objects live apart from their
//! slots (`Floor`: a versioned slot and an object, nothing else).

use std::hint::black_box;

use compact_heap::Heap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slotmap::SlotMap;

const N: usize = 1 << 20;
const READS: usize = 1024;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn random_indices() -> Vec<usize> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..READS).map(|_| xorshift(&mut x) as usize % N).collect()
}

/// Every index once, shuffled.
fn permutation() -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut p: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        p.swap(i, xorshift(&mut x) as usize % (i + 1));
    }
    p
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
    g.bench_function("compact-heap Reader::get", |b| {
        b.iter(|| {
            let r = heap.read();
            let mut sum = 0u64;
            for &h in &keys {
                sum = sum.wrapping_add(*r.get(black_box(h)).unwrap());
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
    let floor = Floor::new();
    let fkeys: Vec<u64> = idx.iter().map(|&i| Floor::key(i)).collect();
    g.bench_function("floor: versioned slot + object", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &k in &fkeys {
                sum = sum.wrapping_add(*floor.get(black_box(k)).unwrap());
            }
            sum
        })
    });
    g.finish();

    // Cold: every object once per iteration, in a random order.
    let order = permutation();
    let mut g = c.benchmark_group("get_cold_1M");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let keys: Vec<_> = order.iter().map(|&i| handles[i]).collect();
    g.bench_function("compact-heap Heap::get", |b| {
        b.iter(|| {
            keys.iter()
                .fold(0u64, |s, &h| s.wrapping_add(*heap.get(h).unwrap()))
        })
    });
    g.bench_function("compact-heap Reader::get", |b| {
        b.iter(|| {
            let r = heap.read();
            keys.iter()
                .fold(0u64, |s, &h| s.wrapping_add(*r.get(h).unwrap()))
        })
    });
    let mut map = SlotMap::new();
    let all: Vec<_> = (0..N as u64).map(|i| map.insert(i)).collect();
    let skeys: Vec<_> = order.iter().map(|&i| all[i]).collect();
    g.bench_function("slotmap SlotMap::get", |b| {
        b.iter(|| {
            skeys
                .iter()
                .fold(0u64, |s, &k| s.wrapping_add(*map.get(k).unwrap()))
        })
    });
    g.bench_function("Vec<Box<u64>> deref", |b| {
        b.iter(|| order.iter().fold(0u64, |s, &i| s.wrapping_add(*boxes[i])))
    });
    let fkeys: Vec<u64> = order.iter().map(|&i| Floor::key(i)).collect();
    g.bench_function("floor: versioned slot + object", |b| {
        b.iter(|| {
            fkeys
                .iter()
                .fold(0u64, |s, &k| s.wrapping_add(*floor.get(k).unwrap()))
        })
    });
    g.finish();
}

/// The least a handle lookup can do: a slot with a version and an offset
/// in one flat array, the version compared, and the object read from a
/// second flat array. No pin, no type check, no read scope, nothing can
/// move. Any heap whose objects live apart from their slots (so that they
/// can move) pays these two dependent loads, as a `Box` deref does; this is
/// the floor that `Heap::get` and `Reader::get` are measured against.
struct Floor {
    slots: Vec<[u32; 2]>,
    objects: Vec<u64>,
}

impl Floor {
    const VERSION: u32 = 1;

    fn new() -> Floor {
        Floor {
            slots: (0..N as u32).map(|i| [Floor::VERSION, i]).collect(),
            objects: (0..N as u64).collect(),
        }
    }

    fn key(i: usize) -> u64 {
        (u64::from(Floor::VERSION) << 32) | i as u64
    }

    #[inline]
    fn get(&self, key: u64) -> Option<&u64> {
        let [version, at] = *self.slots.get(key as u32 as usize)?;
        if version != (key >> 32) as u32 {
            return None;
        }
        self.objects.get(at as usize)
    }
}

criterion_group!(benches, get);
criterion_main!(benches);
