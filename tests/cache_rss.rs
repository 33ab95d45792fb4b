//! The cache's index gives its memory back to the OS when it shrinks, and
//! again after it grew back: measured in RSS, not in the cache's counters.
//! (glibc serves a big block from `mmap` only until the first such block is
//! freed; after that, big blocks come from its arena, whose freed memory
//! stays resident. The index's big tables are mappings of their own.)
//!
//! One test in its own binary: RSS is the whole process's.

#[cfg(all(target_os = "linux", not(miri), not(feature = "alloc-segments")))]
#[test]
fn a_shrunk_index_gives_its_pages_back_every_time() {
    use compact_heap::Cache;

    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("read statm");
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    let n = 400_000u64;
    let mut cache: Cache<u64, [u8]> = Cache::new(1 << 30).unwrap();
    for round in 0..2 {
        for k in 0..n {
            cache.insert(k, &k.to_le_bytes()).unwrap();
        }
        let (index_full, rss_full) = (cache.stats().index_bytes, rss());
        for k in (0..n).filter(|k| k % 100 != 0) {
            assert!(cache.remove(&k));
        }
        let (index_after, rss_after) = (cache.stats().index_bytes, rss());
        let released = index_full - index_after;
        assert!(
            released > 10 << 20,
            "the index shrank by {released} bytes only"
        );
        assert!(
            rss_full.saturating_sub(rss_after) >= released / 2,
            "round {round}: the index gave back {released} bytes, RSS fell by {} ({rss_full} -> {rss_after})",
            rss_full as isize - rss_after as isize
        );
        assert_eq!(
            &*cache.get(&(n - 100)).unwrap(),
            &(n - 100).to_le_bytes()[..]
        );
    }
}
