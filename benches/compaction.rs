//! Compaction speed: bytes moved per second by `compact()` on a heap with 50%
//! holes (moving, then giving the emptied segments back to the OS), by one
//! unlimited `compact_step` (the moving alone: the memory goes back in later
//! steps), by `compact()` on 2 MiB huge-page segments, next to a plain
//! memcpy of the same bytes; and the latency of one
//! `compact_step(64 KiB)`: criterion's estimate, and the percentiles of
//! 20 000 steps on fragmented heaps, printed (p50, p99, p99.9, max), of the
//! wall-clock time and (Linux) of the time on a CPU. For reference, on unix:
//! the kernel's time to unmap as many resident bytes as `compact()` gives back,
//! and what a plain loop takes to move out of half-empty memory (every other
//! object copied into a dense buffer, nothing else).

use std::time::{Duration, Instant};

use compact_heap::{CompactReport, Config, Handle, Heap};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

const TOTAL: usize = 64 << 20;

/// A heap of `TOTAL` bytes in objects of `size`, every other one freed
/// (no paced compaction, which would close the holes as they open).
fn half_holes(size: usize) -> (Heap, Vec<Handle<[u8]>>) {
    half_holes_in(size, Config::default())
}

/// [`half_holes`] in a heap of `config` (pacing turned off).
fn half_holes_in(size: usize, config: Config) -> (Heap, Vec<Handle<[u8]>>) {
    let heap = Heap::with_config(config.no_pacing());
    let all: Vec<_> = (0..TOTAL / size)
        .map(|i| heap.alloc_slice_fill(size, i as u8))
        .collect();
    let mut kept = Vec::with_capacity(all.len() / 2);
    for (i, h) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            heap.free(h);
        } else {
            kept.push(h);
        }
    }
    (heap, kept)
}

/// A way to compact a whole heap.
type Compaction = fn(&Heap) -> CompactReport;

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact_50pct_holes");
    g.sample_size(10);
    // `compact()` moves, then gives the emptied segments back. The moving
    // alone: one step with no budget runs a whole pass; the emptied segments
    // go back to the OS in later steps (here: when the heap drops, outside
    // the timing).
    // And `compact()` in a heap of 2 MiB segments on transparent huge
    // pages (`Config::huge_pages`, Linux): fewer faults and TLB misses, and
    // a cheap give-back.
    let huge = Config::default().segment_size(2 << 20).huge_pages(true);
    let ways: [(&str, Compaction, &Config); 3] = [
        ("compact-heap compact()", Heap::compact, &Config::default()),
        (
            "compact-heap compact_step(MAX)",
            |heap| heap.compact_step(usize::MAX),
            &Config::default(),
        ),
        ("compact-heap compact() huge pages", Heap::compact, &huge),
    ];
    for (name, compact, config) in ways {
        for size in [64usize, 1024, 16 * 1024] {
            g.throughput(Throughput::Bytes((TOTAL / 2) as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_batched(
                    || half_holes_in(size, config.clone()),
                    |(heap, kept)| {
                        let r = compact(&heap);
                        assert!(r.bytes_moved > TOTAL / 4, "most live bytes move");
                        (heap, kept)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    let src = vec![1u8; TOTAL / 2];
    let mut dst = vec![0u8; TOTAL / 2];
    g.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(std::hint::black_box(&src)))
    });
    // What a plain loop takes to move out of half-empty memory: every other
    // object of `size` in `TOTAL` bytes copied into a dense buffer, one copy
    // each, no slot, no bookkeeping, no prefetching. The holes are fetched
    // with their neighbours, and each object is a copy of its own, so small
    // objects do not move at a bulk memcpy's speed.
    let holey = vec![1u8; TOTAL];
    for size in [64usize, 1024, 16 * 1024] {
        g.bench_with_input(
            BenchmarkId::new("plain loop: copy every other object", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    let size = std::hint::black_box(size);
                    for (i, at) in (size..TOTAL).step_by(2 * size).enumerate() {
                        dst[i * size..(i + 1) * size].copy_from_slice(&holey[at..at + size]);
                    }
                })
            },
        );
    }
    // What the kernel takes to give the emptied half back: `munmap` of
    // that many resident bytes, in 1 MiB mappings (the default segment),
    // nothing else. `compact()` cannot be faster than its moving plus this.
    #[cfg(unix)]
    g.bench_function("munmap (the emptied half)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let maps = resident_mappings(TOTAL / 2, 1 << 20);
                let t = Instant::now();
                for &m in &maps {
                    // SAFETY: a mapping of 1 MiB made just now, used no more.
                    unsafe { libc::munmap(m, 1 << 20) };
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// `total` bytes of anonymous mappings of `each` bytes, every page touched.
#[cfg(unix)]
fn resident_mappings(total: usize, each: usize) -> Vec<*mut libc::c_void> {
    (0..total / each)
        .map(|_| {
            // SAFETY: a fresh private anonymous mapping touches no memory of ours.
            let m = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    each,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(m, libc::MAP_FAILED, "mmap");
            // SAFETY: `each` writable bytes just mapped.
            unsafe { m.cast::<u8>().write_bytes(1, each) };
            m
        })
        .collect()
}

fn step_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact_step_64KiB");
    for size in [64usize, 1024] {
        let mut worst = Duration::ZERO;
        let mut state = half_holes(size);
        g.bench_with_input(BenchmarkId::new("latency", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let r = state.0.compact_step(64 * 1024);
                    let d = t.elapsed();
                    total += d;
                    worst = worst.max(d);
                    if r.finished {
                        state = half_holes(size); // not timed
                    }
                }
                total
            })
        });
        eprintln!("compact_step(64 KiB), {size} B objects: worst {worst:?}");
    }
    g.finish();
    for size in [64usize, 1024] {
        step_percentiles(size);
    }
}

/// 20 000 steps of 64 KiB over fragmented heaps (a new one when a pass
/// finishes, not timed), each timed alone; prints the percentiles of the
/// wall-clock time and, on Linux, of the time the thread was on a CPU. On a
/// shared machine a step's wall time includes whatever ran instead of it
/// (another tenant, the kernel): the on-CPU time is the step's own work.
fn step_percentiles(size: usize) {
    const STEPS: usize = 20_000;
    let mut wall = Vec::with_capacity(STEPS);
    let mut cpu = Vec::with_capacity(STEPS);
    let mut state = half_holes(size);
    while wall.len() < STEPS {
        let c = thread_cpu_time();
        let t = Instant::now();
        let r = state.0.compact_step(64 * 1024);
        wall.push(t.elapsed());
        cpu.push(thread_cpu_time().zip(c).map(|(end, start)| end - start));
        if r.finished {
            state = half_holes(size);
        }
    }
    let print = |what: &str, mut times: Vec<Duration>| {
        times.sort_unstable();
        let at = |q: f64| times[((STEPS as f64 * q) as usize).min(STEPS - 1)];
        println!(
            "compact_step(64 KiB), {size} B objects, {STEPS} steps, {what}: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            at(0.999),
            times[STEPS - 1]
        );
    };
    print("wall clock", wall);
    if let Some(cpu) = cpu.into_iter().collect::<Option<Vec<_>>>() {
        print("on CPU", cpu);
    }
}

/// The time this thread has run on a CPU (Linux), to take the steps' own
/// work apart from the time others ran instead.
fn thread_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the clock id is a
        // constant the kernel knows.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
        }
    }
    None
}

criterion_group!(benches, throughput, step_latency);
criterion_main!(benches);
