//! `Cache` and `SyncCache` as a specification: a budget in bytes that holds
//! at every step, values that are never wrong (a key reads its last value or
//! nothing), S3-FIFO's resistance to scans, and the errors for bad input.

use std::collections::HashMap;
use std::sync::Arc;

use compact_heap::{Cache, CacheError, SyncCache};
use proptest::prelude::*;

fn value(key: u64, version: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (key as usize * 7 + version as usize * 13 + i) as u8)
        .collect()
}

#[test]
fn a_zero_budget_is_an_error() {
    assert_eq!(
        Cache::<u64, [u8]>::new(0).unwrap_err(),
        CacheError::ZeroBudget
    );
    assert_eq!(
        SyncCache::<u64, [u8]>::new(0).unwrap_err(),
        CacheError::ZeroBudget
    );
}

#[test]
fn a_value_larger_than_the_budget_is_refused_and_evicts_nothing() {
    let mut cache: Cache<u64, [u8]> = Cache::new(64 * 1024).unwrap();
    for k in 0..10 {
        cache.insert(k, &[1u8; 100]).unwrap();
    }
    let err = cache.insert(3, &vec![0u8; 64 * 1024]).unwrap_err();
    assert!(
        matches!(err, CacheError::TooLarge { budget: 65536, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("larger than the whole cache budget"));
    assert_eq!(cache.len(), 10, "nothing evicted");
    assert_eq!(&*cache.get(&3).unwrap(), &[1u8; 100], "the old value stays");
    assert_eq!(cache.stats().evictions, 0);
}

#[test]
fn get_insert_replace_remove() {
    let mut cache: Cache<String, str> = Cache::new(1 << 20).unwrap();
    assert!(cache.is_empty());
    cache.insert("a".into(), "one").unwrap();
    cache.insert("a".into(), "uno").unwrap();
    assert_eq!(&*cache.get("a").unwrap(), "uno");
    assert_eq!(cache.len(), 1);
    assert!(cache.remove("a"));
    assert!(!cache.remove("a"));
    assert!(cache.get("a").is_none());
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.inserts, st.entries), (1, 1, 2, 0));
    assert_eq!(st.value_bytes, 0);
    assert_eq!(
        cache.heap().stats().live_objects,
        0,
        "removed values are freed"
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of inserts: too slow under Miri, run natively"
)]
fn the_budget_holds_for_values_index_and_heap_memory() {
    let budget = 4 << 20;
    let mut cache: Cache<u64, [u8]> = Cache::new(budget).unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..60_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Sizes drift from ~100 B to ~8 KiB and back.
        let phase = (i / 20_000) % 2;
        let len = if phase == 0 {
            50 + (x % 200) as usize
        } else {
            2000 + (x % 12_000) as usize
        };
        let key = x % 50_000;
        if cache.get(&key).is_none() {
            cache.insert(key, &value(key, 0, len)).unwrap();
        }
        let st = cache.stats();
        assert!(
            st.used_bytes <= budget,
            "used {} > budget at op {i}",
            st.used_bytes
        );
        if i % 1000 == 0 {
            let held = cache.heap().stats().held_bytes;
            assert!(held <= budget, "heap holds {held} > budget at op {i}");
        }
    }
    assert!(cache.stats().evictions > 1000);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of inserts: too slow under Miri, run natively"
)]
fn s3_fifo_keeps_a_hot_set_through_a_scan() {
    let mut cache: Cache<u64, [u8]> = Cache::new(1 << 20).unwrap();
    let hot: Vec<u64> = (0..500).collect();
    for round in 0..4 {
        for &k in &hot {
            if cache.get(&k).is_none() {
                cache.insert(k, &value(k, round, 1000)).unwrap();
            }
        }
    }
    // A one-off scan of 5 000 cold keys, five times the cache.
    for k in 1_000_000..1_005_000u64 {
        cache.insert(k, &value(k, 0, 1000)).unwrap();
    }
    let kept = hot.iter().filter(|k| cache.contains_key(k)).count();
    assert!(kept >= 400, "only {kept} of 500 hot keys survived the scan");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(miri) { 4 } else { 64 }),
        ..ProptestConfig::default()
    })]

    /// Against a model of last-written values: a key reads its last value or
    /// nothing (the cache may evict anything), never another value; the
    /// budget holds after every step.
    #[test]
    fn values_are_never_wrong(ops in prop::collection::vec((0u64..64, 0usize..3000, 0u8..4), 1..if cfg!(miri) { 40 } else { 400 })) {
        let budget = 32 * 1024;
        let mut cache: Cache<u64, [u8]> = Cache::new(budget).unwrap();
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        for (step, (key, len, op)) in ops.into_iter().enumerate() {
            match op {
                0 | 1 => {
                    let v = value(key, step as u64, len);
                    cache.insert(key, &v).unwrap();
                    model.insert(key, v);
                }
                2 => {
                    if let Some(got) = cache.get(&key) {
                        prop_assert_eq!(Some(&*got), model.get(&key).map(Vec::as_slice));
                    }
                }
                _ => {
                    let had = cache.remove(&key);
                    prop_assert!(!had || model.remove(&key).is_some());
                    model.remove(&key);
                }
            }
            prop_assert!(cache.used_bytes() <= budget);
            prop_assert_eq!(cache.heap().len(), cache.len());
        }
    }
}

#[cfg(not(miri))]
#[test]
fn a_shared_cache_on_two_threads_stays_within_budget_and_correct() {
    let budget = 2 << 20;
    let cache: Arc<SyncCache<u64, [u8]>> = Arc::new(SyncCache::new(budget).unwrap());
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for i in 0..30_000u64 {
                    // Half the reads go to 100 hot keys, half sweep 5 000 (more than fit).
                    let key = if i % 2 == 0 {
                        i % 100
                    } else {
                        (i * 7919 + t) % 5000
                    };
                    match cache.get(&key) {
                        // Values depend only on the key: any reader can check them.
                        Some(v) => assert_eq!(&*v, &value(key, 0, 500 + (key % 700) as usize)[..]),
                        None => cache
                            .insert(key, &value(key, 0, 500 + (key % 700) as usize))
                            .unwrap(),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = cache.stats();
    assert!(st.used_bytes <= budget);
    assert!(cache.heap().stats().held_bytes <= budget);
    assert!(
        st.hits > 0 && st.evictions > 0,
        "{st:?} {}",
        cache.heap().stats()
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of inserts: too slow under Miri, run natively"
)]
fn clear_and_a_smaller_budget_give_memory_back() {
    let mut cache: Cache<u64, [u8]> = Cache::new(4 << 20).unwrap();
    for k in 0..3000u64 {
        cache.insert(k, &value(k, 0, 1000)).unwrap();
    }
    let full = cache.stats();
    cache.set_budget(1 << 20).unwrap();
    let st = cache.stats();
    assert!(
        st.used_bytes <= 1 << 20 && st.entries < full.entries,
        "{st:?}"
    );
    assert_eq!(cache.budget(), 1 << 20);
    assert_eq!(cache.set_budget(0), Err(CacheError::ZeroBudget));
    assert_eq!(cache.budget(), 1 << 20, "a refused budget changes nothing");
    // Every entry left reads its own value.
    for k in 0..3000u64 {
        if let Some(v) = cache.get(&k) {
            assert_eq!(&*v, &value(k, 0, 1000)[..]);
        }
    }
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.heap().stats().live_bytes, 0);
    cache.insert(1, &[9u8; 10]).unwrap();
    assert_eq!(&*cache.get(&1).unwrap(), &[9u8; 10]);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of inserts: too slow under Miri, run natively"
)]
fn removing_most_entries_gives_the_index_back() {
    let mut cache: Cache<u64, [u8]> = Cache::new(64 << 20).unwrap();
    for k in 0..20_000u64 {
        cache.insert(k, &value(k, 0, 100)).unwrap();
    }
    let full = cache.stats();
    assert_eq!(full.entries, 20_000, "all fit");
    for k in (0..20_000u64).filter(|k| k % 20 != 0) {
        assert!(cache.remove(&k));
    }
    let st = cache.stats();
    assert_eq!(st.entries, 1_000);
    assert!(st.index_bytes * 4 < full.index_bytes, "{full:?} -> {st:?}");
    for k in (0..20_000u64).step_by(20) {
        assert_eq!(&*cache.get(&k).unwrap(), &value(k, 0, 100)[..]);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of inserts: too slow under Miri, run natively"
)]
fn a_new_value_for_a_key_keeps_one_entry() {
    let mut cache: Cache<u64, [u8]> = Cache::new(1 << 20).unwrap();
    for round in 0..50u64 {
        for k in 0..100u64 {
            cache
                .insert(k, &value(k, round, 100 + (round as usize % 7) * 50))
                .unwrap();
        }
    }
    assert_eq!(cache.len(), 100);
    assert_eq!(cache.heap().len(), 100, "old values are freed");
    for k in 0..100u64 {
        assert_eq!(
            &*cache.get(&k).unwrap(),
            &value(k, 49, 100)[..] // round 49: 49 % 7 == 0
        );
    }
    assert_eq!(cache.stats().evictions, 0);
}
