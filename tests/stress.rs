//! Threads hammer one `SyncHeap` while others compact it without pause.
//!
//! Each worker allocates, reads (checking a checksum), rewrites through
//! `get_mut` and frees its own objects, and reads and rewrites a pool shared
//! by all workers. One thread compacts continuously (`compact_step` slices and
//! full `compact()`s). At the end every surviving value reads back exactly,
//! and every value was dropped exactly once. Run under ThreadSanitizer by
//! `.ci/tsan.sh`; `STRESS_OPS` sets the operations per worker.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use compact_heap::{BorrowError, Config, Handle, Policy, SyncHeap};

/// A value that checks itself and counts its drops.
struct Val {
    id: u64,
    data: [u64; 5],
    sum: u64,
    drops: Arc<AtomicUsize>,
}

impl Val {
    fn new(id: u64, seed: u64, drops: &Arc<AtomicUsize>) -> Val {
        let data = [seed, seed ^ id, seed.rotate_left(7), !seed, id];
        Val {
            id,
            data,
            sum: data.iter().fold(0, |a, b| a ^ b),
            drops: drops.clone(),
        }
    }

    fn check(&self, id: u64) {
        assert_eq!(self.id, id, "read another object");
        assert_eq!(
            self.sum,
            self.data.iter().fold(0, |a, b| a ^ b),
            "torn or stale value"
        );
    }

    fn rewrite(&mut self, seed: u64) {
        self.data = [seed, seed ^ self.id, seed.rotate_left(7), !seed, self.id];
        self.sum = self.data.iter().fold(0, |a, b| a ^ b);
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// xorshift: a tiny deterministic generator per thread.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn ops() -> usize {
    std::env::var("STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 40 } else { 20_000 })
}

fn check_slice(heap: &SyncHeap, h: Handle<[u64]>, id: u64) {
    if let Ok(s) = heap.try_get(h) {
        assert_eq!(s[0], id);
        assert_eq!(s[s.len() - 1], id.wrapping_mul(31), "slice tail");
    }
}

#[test]
fn workers_and_a_compactor_agree_on_every_value() {
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(if cfg!(miri) { 4096 } else { 64 * 1024 }),
    ));
    let drops = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let shared: Arc<Vec<Handle<Val>>> = Arc::new(
        (0..64)
            .map(|i| heap.alloc(Val::new(1 << 40 | i, i, &drops)))
            .collect(),
    );
    created.fetch_add(64, Ordering::Relaxed);

    // Holes from the start, so the compactor has work while the workers run:
    // every other object of a block of 64-byte objects is freed.
    let junk: Vec<_> = (0..if cfg!(miri) { 0 } else { 20_000u64 })
        .map(|i| heap.alloc_slice(&[i; 8]))
        .collect();
    for h in junk.iter().step_by(2) {
        heap.free(*h);
    }
    let compactor = {
        let (heap, stop) = (heap.clone(), stop.clone());
        thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if rounds % 16 == 15 {
                    heap.compact();
                } else {
                    heap.compact_step(4096);
                }
                rounds += 1;
                thread::yield_now(); // lets the workers run under Miri's scheduler
            }
            rounds
        })
    };

    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (heap, drops, created, shared) =
                (heap.clone(), drops.clone(), created.clone(), shared.clone());
            thread::spawn(move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                let mut mine: Vec<(Handle<Val>, u64)> = Vec::new();
                let mut slices: Vec<(Handle<[u64]>, u64)> = Vec::new();
                let mut next_id = t << 32;
                for _ in 0..ops() {
                    let r = next(&mut rng);
                    match r % 10 {
                        0..=2 => {
                            next_id += 1;
                            if r.is_multiple_of(3) {
                                let len = 2 + (r >> 8) as usize % 300;
                                let mut v = vec![next_id; len];
                                v[len - 1] = next_id.wrapping_mul(31);
                                slices.push((heap.alloc_slice(&v), next_id));
                            } else {
                                mine.push((heap.alloc(Val::new(next_id, r, &drops)), next_id));
                                created.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        3 | 4 if !mine.is_empty() => {
                            let (h, id) = mine[(r >> 8) as usize % mine.len()];
                            heap.get(h).expect("my live object").check(id);
                        }
                        5 if !mine.is_empty() => {
                            let (h, id) = mine[(r >> 8) as usize % mine.len()];
                            let mut w = heap.get_mut(h).expect("my live object");
                            w.check(id);
                            w.rewrite(r);
                        }
                        6 if !mine.is_empty() => {
                            let (h, _) = mine.swap_remove((r >> 8) as usize % mine.len());
                            assert!(heap.free(h));
                            assert!(heap.get(h).is_none());
                        }
                        7 if !slices.is_empty() => {
                            let i = (r >> 8) as usize % slices.len();
                            check_slice(&heap, slices[i].0, slices[i].1);
                            if r.is_multiple_of(2) {
                                let (h, _) = slices.swap_remove(i);
                                assert!(heap.free(h));
                            }
                        }
                        8 => {
                            let i = (r >> 8) as usize % shared.len();
                            match heap.try_get(shared[i]) {
                                Ok(v) => v.check(1 << 40 | i as u64),
                                Err(e) => assert_eq!(e, BorrowError::BorrowedMut),
                            }
                        }
                        _ => {
                            let i = (r >> 8) as usize % shared.len();
                            match heap.try_get_mut(shared[i]) {
                                Ok(mut v) => {
                                    v.check(1 << 40 | i as u64);
                                    v.rewrite(r);
                                }
                                Err(e) => assert!(matches!(
                                    e,
                                    BorrowError::Borrowed | BorrowError::BorrowedMut
                                )),
                            }
                        }
                    }
                }
                for (h, id) in &mine {
                    heap.get(*h).expect("survivor").check(*id);
                }
                for (h, id) in &slices {
                    check_slice(&heap, *h, *id);
                }
                mine.len()
            })
        })
        .collect();

    let survivors: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    stop.store(true, Ordering::Relaxed);
    let rounds = compactor.join().expect("compactor");
    assert!(rounds > 0);
    let st = heap.stats();
    assert_eq!(st.pinned_objects, 0);
    // Under Miri the program is too short to fragment the heap enough for a pass.
    if !cfg!(miri) {
        assert!(
            st.objects_moved > 0,
            "the compactor moved objects while workers ran: {st:?}"
        );
    }
    let created = created.load(Ordering::Relaxed);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        created - survivors - 64,
        "freed values dropped once"
    );
    drop(shared);
    drop(Arc::try_unwrap(heap).expect("last reference"));
    assert_eq!(
        drops.load(Ordering::Relaxed),
        created,
        "every value dropped exactly once"
    );
}

#[test]
fn a_value_freed_on_one_thread_is_dropped_by_the_last_guard_on_another() {
    let heap = Arc::new(SyncHeap::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let h = heap.alloc(Val::new(7, 7, &drops));
    let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
    let (freed_tx, freed_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let (heap, drops) = (heap.clone(), drops.clone());
        thread::spawn(move || {
            let guard = heap.get(h).unwrap();
            pinned_tx.send(()).unwrap();
            freed_rx.recv().unwrap();
            guard.check(7);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                0,
                "not dropped while borrowed"
            );
            drop(guard);
            assert_eq!(
                drops.load(Ordering::SeqCst),
                1,
                "dropped by the last guard, here"
            );
        })
    };
    pinned_rx.recv().unwrap();
    assert!(heap.free(h));
    assert!(heap.get(h).is_none(), "the handle died at once");
    freed_tx.send(()).unwrap();
    reader.join().unwrap();
    assert_eq!(heap.stats().live_objects, 0);
}

#[test]
fn the_background_compactor_gives_memory_back() {
    // No paced compaction: the compactor thread is to do the work.
    let heap = Arc::new(SyncHeap::with_config(
        Config::default().segment_size(64 * 1024).no_pacing(),
    ));
    let compactor = heap
        .compactor(
            Policy::default()
                .every(std::time::Duration::from_micros(200))
                .budget(16 * 1024)
                .threshold(1.2),
        )
        .spawn();
    let hs: Vec<_> = (0..20_000u64).map(|i| heap.alloc([i; 8])).collect();
    for h in hs.iter().step_by(2) {
        heap.free(*h);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while heap.stats().fragmentation() > 1.2 && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let slices = compactor.stop();
    let st = heap.stats();
    assert!(
        slices > 0 && st.bytes_released > 0,
        "{slices} slices, {st:?}"
    );
    assert!(st.fragmentation() <= 1.2, "{st:?}");
    for (i, h) in hs.iter().enumerate().skip(1).step_by(2) {
        assert_eq!(heap.get(*h).unwrap()[7], i as u64);
    }
}
