//! [`Cache`]: a key-value cache whose values live in a compacting [`Heap`]
//! and whose budget is in bytes of memory, not in entries or "weight".
//!
//! # The budget
//! The budget counts what the process pays for the cache: every value's
//! bytes, the heap's handle-table slot of each, and the index (the hash map,
//! the queues and the ghost list, by their allocated capacity), with an
//! allowance for the heap's holes. The cache evicts to stay within it, and
//! its heap's memory limit is the budget less the slots and the index, so
//! the memory it holds for values cannot pass it either: fragmentation is
//! closed by the heap's paced compaction, not paid for in RSS.
//!
//! # Eviction: S3-FIFO
//! Juncheng Yang, Yazhuo Zhang, Ziyue Qiu, Yao Yue, Rashmi Vinayak, "FIFO
//! queues are all you need for cache eviction", SOSP 2023. New entries go to
//! a small FIFO queue (a twentieth of the budget); an entry read again
//! before it leaves that queue moves to the main FIFO queue, the others are
//! evicted and their keys remembered in a ghost queue (an eighth as many as
//! the main queue holds), so that a key that comes back soon goes straight
//! to the main queue. The main queue evicts entries whose read count (0–7)
//! is zero and gives the others another round with one read fewer. Reads
//! only bump a counter: no list moves, no lock order on a hit. The paper's
//! sizes (a tenth, as many, 0–3) lost 2.2 points of hits on cache-bench's
//! trace against these.

use core::borrow::Borrow;
use core::cell::Cell;
use core::fmt;
use core::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::collections::hash_map::RandomState;

use hashbrown::{hash_map, HashMap, HashSet};

use crate::config::{Config, Pacing};
use crate::error::AllocError;
use crate::guard::Ref;
use crate::handle::Handle;
use crate::heap::Heap;
use crate::object::CloneObject;
use crate::segment::LINE;
use crate::sync::SyncHeap;
use parking_lot::Mutex;

use crate::mapping::MapAlloc;
use fifo::Fifo;

mod fifo;

/// The small queue's share of the budget is one part in this many (5%;
/// S3-FIFO's paper uses 10%; 5% gave 0.25 points more hits on cache-bench's
/// trace). Integer shares: the eviction loop tests them every round, and
/// x86-64 converts between `usize` and `f64` slowly.
const SMALL_SHARE_DIV: usize = 20;
/// Bytes of one handle-table slot, counted for every entry.
const SLOT_BYTES: usize = 16;
/// The cache's heap paces compaction to hold at most this many bytes per
/// live byte (plus a segment)...
const PACING_THRESHOLD: f64 = 1.05;
/// ...but only this many while the cache uses less than [`RELAXED_BELOW`]
/// of its budget: holes then cost no entry, and fewer moves save time
/// (a quarter of holes on 70% of the budget still fits in it).
const RELAXED_THRESHOLD: f64 = 1.25;
/// The share of the budget below which pacing is relaxed.
const RELAXED_BELOW: f64 = 0.7;
/// Heap bytes per value byte the budget allows for (plus [`SLACK_SEGMENTS`]):
/// above the pacing threshold, because paced passes take only segments at
/// most 7/8 full as sources, so holes settle at 5–10% of the live bytes;
/// the heap's memory limit is a backstop that steady traffic does not reach.
/// One byte more per this many (1.10).
const HOLE_ALLOWANCE_DIV: usize = 10;
/// Segments of heap memory the budget keeps besides the values: the one
/// being allocated into, and the heap's pool of two empty ones.
const SLACK_SEGMENTS: usize = 3;
/// Reads that move an entry from the small queue to the main one.
const PROMOTE_AT: u8 = 1;
/// The most reads an entry's counter remembers (the paper's 3 lost 0.5
/// points of hits on cache-bench's trace; more than 7 changed nothing).
const MAX_FREQ: u8 = 7;
/// The ghost queue remembers as many keys as `1 / GHOST_SHARE` of the main
/// queue's entries (the paper: all of them). A smaller ghost costs fewer index
/// bytes and promotes fewer one-off keys: 1/8 gave 1.8 points more hits on
/// cache-bench's trace than 1.
const GHOST_SHARE: usize = 8;

/// Why a [`Cache`] could not be made or could not take a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheError {
    /// A cache needs a budget of at least one byte.
    ZeroBudget,
    /// The entry would need more than the whole budget; nothing was evicted.
    TooLarge {
        /// Bytes the entry would count (value, slot and index share).
        needed: usize,
        /// The cache's budget.
        budget: usize,
    },
    /// The heap refused the memory (see [`AllocError`]).
    Alloc(AllocError),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::ZeroBudget => f.write_str("a cache budget must be at least one byte"),
            CacheError::TooLarge { needed, budget } => write!(
                f,
                "entry of {needed} bytes is larger than the whole cache budget of {budget} bytes"
            ),
            CacheError::Alloc(e) => write!(f, "cache allocation failed: {e}"),
        }
    }
}

impl std::error::Error for CacheError {}

/// What a [`Cache`] did so far and what it holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// `get`s that found their key.
    pub hits: u64,
    /// `get`s that did not.
    pub misses: u64,
    /// Entries inserted (new keys and replacements).
    pub inserts: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
    /// Entries now.
    pub entries: usize,
    /// Bytes the values take in the heap now (a value of 512 bytes or
    /// more takes whole 128-byte lines).
    pub value_bytes: usize,
    /// Bytes counted against the budget now: values (with the allowance
    /// for holes), slots and the index.
    pub used_bytes: usize,
    /// Bytes of the index alone (hash map, queues, ghost, by capacity),
    /// and what the keys own outside it (see `with_key_weigher`).
    pub index_bytes: usize,
    /// The budget.
    pub budget: usize,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before any `get`.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// One entry of the index.
struct Entry<V: ?Sized> {
    handle: Handle<V>,
    /// Bytes of the value.
    size: u32,
    /// Which insertion of the key this is: its queue item carries the same
    /// number, so items left by removed entries are told apart (a new value
    /// for the key keeps the entry and its number).
    gen: u32,
    /// Reads since insertion or since the main queue last passed it (0–7).
    freq: Cell<u8>,
    /// In the main queue (else the small one).
    main: bool,
}

/// A FIFO of recently evicted keys, by hash: a key found here skips the
/// small queue when it comes back.
struct Ghost {
    order: Fifo<u64>,
    set: HashSet<u64, BuildHasherDefault<PreHashed>, MapAlloc>,
    capacity: usize,
}

impl Ghost {
    fn insert(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if self.set.insert(hash) {
            self.order.push_back(hash);
        }
    }

    fn take(&mut self, hash: u64) -> bool {
        // The order keeps the stale hash; it falls out at its turn.
        self.set.remove(&hash)
    }

    fn bytes(&self) -> usize {
        self.order.capacity() * 8 + hash_set_bytes(&self.set)
    }
}

/// The hasher of the ghost's set, whose keys are hashes already.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// Bytes of a hash table of `capacity` items of `item` bytes (hashbrown's
/// layout: a power-of-two bucket count at 7/8 load, one control byte each).
fn table_bytes(capacity: usize, item: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        if capacity < 4 {
            4
        } else {
            8
        }
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (item + 1) + 16
}

fn hash_set_bytes(set: &HashSet<u64, BuildHasherDefault<PreHashed>, MapAlloc>) -> usize {
    table_bytes(set.capacity(), 8)
}

/// The index and the eviction policy, apart from the heap (shared by
/// [`Cache`] and [`SyncCache`]). Freed values are handed to a `free` callback.
struct Index<K, V: ?Sized, S> {
    /// The heap's segment size.
    segment: usize,
    map: HashMap<K, Entry<V>, S, MapAlloc>,
    small: Fifo<(K, u32)>,
    main: Fifo<(K, u32)>,
    /// The `gen` of the next entry.
    next_gen: u32,
    ghost: Ghost,
    small_bytes: usize,
    value_bytes: usize,
    /// Bytes the keys own outside the index (see `with_key_weigher`).
    key_bytes: usize,
    /// The memory limit last given to the heap.
    heap_limit_set: usize,
    /// Whether the heap's pacing is relaxed now (see [`RELAXED_BELOW`]).
    relaxed: bool,
    /// Values of at least this many bytes start on a heap line.
    line_align: usize,
    key_weigher: fn(&K) -> usize,
    budget: usize,
    hits: Cell<u64>,
    misses: Cell<u64>,
    inserts: u64,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V: ?Sized, S: BuildHasher> Index<K, V, S> {
    fn new(budget: usize, hasher: S) -> Self {
        Index {
            segment: segment_size(budget),
            map: HashMap::with_hasher_in(hasher, MapAlloc),
            small: Fifo::new(),
            main: Fifo::new(),
            next_gen: 0,
            ghost: Ghost {
                order: Fifo::new(),
                set: HashSet::with_hasher_in(BuildHasherDefault::default(), MapAlloc),
                capacity: 0,
            },
            small_bytes: 0,
            value_bytes: 0,
            key_bytes: 0,
            heap_limit_set: budget,
            relaxed: false,
            line_align: usize::MAX,
            key_weigher: |_| 0,
            budget,
            hits: Cell::new(0),
            misses: Cell::new(0),
            inserts: 0,
            evictions: 0,
        }
    }

    /// The handle of `key`'s value, counting a hit (and a read) or a miss.
    fn lookup<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<Handle<V>>
    where
        K: Borrow<Q>,
    {
        let Some(entry) = self.map.get(key) else {
            self.misses.set(self.misses.get() + 1);
            return None;
        };
        self.hits.set(self.hits.get() + 1);
        entry.freq.set((entry.freq.get() + 1).min(MAX_FREQ));
        Some(entry.handle)
    }

    /// What one more entry adds besides its value, at least: its slot, its
    /// map item and queue item, and a ghost entry.
    fn per_entry_bytes() -> usize {
        SLOT_BYTES
            + core::mem::size_of::<(K, Entry<V>)>()
            + 1
            + core::mem::size_of::<(K, u32)>()
            + 9
    }

    /// `TooLarge` if an entry of `size` value bytes cannot fit the budget at all.
    fn check_fits(&self, size: usize) -> Result<(), CacheError> {
        let needed = size.saturating_add(Self::per_entry_bytes());
        if needed > self.budget || u32::try_from(size).is_err() {
            return Err(CacheError::TooLarge {
                needed,
                budget: self.budget,
            });
        }
        Ok(())
    }

    /// Bytes counted against the budget: values (with the heap's allowance
    /// for holes), a slot each, and the index.
    fn used_bytes(&self) -> usize {
        self.heap_bytes(self.value_bytes) + self.map.len() * SLOT_BYTES + self.index_bytes()
    }

    /// The heap memory that `values` bytes of values take, holes included.
    fn heap_bytes(&self, values: usize) -> usize {
        with_holes(values) + SLACK_SEGMENTS * self.segment
    }

    /// The heap's memory limit: the budget less the slots and the index.
    fn heap_limit(&self) -> usize {
        self.budget
            .saturating_sub(self.map.len() * SLOT_BYTES + self.index_bytes())
    }

    /// Gives back the index's excess capacity (after its entries shrank to
    /// less than half of it) and drops stale queue items.
    fn shrink_index(&mut self) {
        if !self.index_oversized() {
            return;
        }
        let len = self.map.len();
        if oversized(self.map.capacity(), len) {
            self.map.shrink_to(len + len / 4);
        }
        for (queue, in_main) in [(&mut self.small, false), (&mut self.main, true)] {
            if oversized(queue.len(), len) {
                let map = &self.map;
                queue.retain(|(k, h)| map.get(k).is_some_and(|e| e.gen == *h && e.main == in_main));
            }
            if oversized(queue.capacity(), queue.len()) {
                queue.shrink_to(queue.len() + queue.len() / 4);
            }
        }
        if oversized(self.ghost.order.len(), self.ghost.capacity) {
            let set = &self.ghost.set;
            self.ghost.order.retain(|h| set.contains(h));
        }
        if oversized(self.ghost.set.capacity(), self.ghost.set.len()) {
            let len = self.ghost.set.len();
            self.ghost.set.shrink_to(len + len / 4);
        }
        if oversized(self.ghost.order.capacity(), self.ghost.order.len()) {
            let len = self.ghost.order.len();
            self.ghost.order.shrink_to(len + len / 4);
        }
    }

    /// Whether `shrink_index` has anything to do: a table at more than
    /// twice what it holds, or a queue at more than twice the entries.
    fn index_oversized(&self) -> bool {
        let over = oversized;
        let len = self.map.len();
        over(self.map.capacity(), len)
            || over(self.small.len(), len)
            || over(self.main.len(), len)
            || over(self.small.capacity(), self.small.len())
            || over(self.main.capacity(), self.main.len())
            || over(self.ghost.order.len(), self.ghost.capacity)
            || over(self.ghost.set.capacity(), self.ghost.set.len())
            || over(self.ghost.order.capacity(), self.ghost.order.len())
    }

    /// Bytes of the index: map, queues and ghost, by capacity.
    fn index_bytes(&self) -> usize {
        let queue_item = core::mem::size_of::<(K, u32)>();
        self.key_bytes
            + table_bytes(self.map.capacity(), core::mem::size_of::<(K, Entry<V>)>())
            + (self.small.capacity() + self.main.capacity()) * queue_item
            + self.ghost.bytes()
    }

    /// Evicts until an entry of `size` value bytes fits the budget.
    fn make_room(&mut self, size: usize, key: usize, free: &mut impl FnMut(Handle<V>)) {
        let needed = if size == 0 && key == 0 {
            0
        } else {
            with_holes(size) + Self::per_entry_bytes() + key
        };
        let mut evicted = false;
        loop {
            // The index's own bytes change only as its tables grow or shrink:
            // taken once per round, and the round repeated with them as they
            // are after the evictions (the ghost grows as it remembers keys).
            let fixed = self.index_bytes() + needed;
            let mut progressed = false;
            while self.heap_bytes(self.value_bytes) + self.map.len() * SLOT_BYTES + fixed
                > self.budget
                && self.evict_one(free)
            {
                progressed = true;
            }
            if !progressed {
                break;
            }
            evicted = true;
        }
        if evicted {
            self.shrink_index();
        }
    }

    /// Puts `key` → `handle`: a new entry, or a new value for the key's
    /// entry (which keeps its place in its queue, and counts as a read);
    /// the old value goes to `free`.
    /// The heap's pacing to set now, if the cache crossed [`RELAXED_BELOW`]
    /// of its budget (setting it takes the heap's engine).
    fn pacing_update(&mut self) -> Option<Pacing> {
        // The values alone, with their holes: the rest moves slowly.
        let relaxed = (with_holes(self.value_bytes) as f64) < RELAXED_BELOW * self.budget as f64;
        if relaxed == self.relaxed {
            return None;
        }
        self.relaxed = relaxed;
        Some(pacing(if relaxed {
            RELAXED_THRESHOLD
        } else {
            PACING_THRESHOLD
        }))
    }

    /// The heap limit to set now, if it moved by a quarter segment or more
    /// since it was last set (setting it takes the heap's engine).
    fn heap_limit_update(&mut self) -> Option<usize> {
        let limit = self.heap_limit();
        if limit.abs_diff(self.heap_limit_set) < self.segment / 4 {
            return None;
        }
        self.heap_limit_set = limit;
        Some(limit)
    }

    /// Gives `key`'s entry the value `handle` (see `put`); `Err(handle)` if
    /// the key has no entry.
    fn replace_value<Q: ?Sized + Hash + Eq>(
        &mut self,
        key: &Q,
        handle: Handle<V>,
        size: usize,
        free: &mut impl FnMut(Handle<V>),
    ) -> Result<(), Handle<V>>
    where
        K: Borrow<Q>,
    {
        let Some(entry) = self.map.get_mut(key) else {
            return Err(handle);
        };
        let old = renew(
            entry,
            handle,
            size,
            &mut self.small_bytes,
            &mut self.value_bytes,
        );
        self.inserts += 1;
        free(old);
        Ok(())
    }

    fn put(&mut self, key: K, handle: Handle<V>, size: usize, free: &mut impl FnMut(Handle<V>)) {
        let hash = self.map.hasher().hash_one(&key);
        let slot = match self.map.entry(key) {
            hash_map::Entry::Occupied(o) => {
                let (small, values) = (&mut self.small_bytes, &mut self.value_bytes);
                let old = renew(o.into_mut(), handle, size, small, values);
                self.inserts += 1;
                free(old);
                return;
            }
            hash_map::Entry::Vacant(v) => v,
        };
        let key = slot.key().clone();
        let main = self.ghost.take(hash);
        self.key_bytes += (self.key_weigher)(&key);
        let gen = self.next_gen;
        self.next_gen = gen.wrapping_add(1);
        slot.insert(Entry {
            handle,
            size: size as u32,
            gen,
            freq: Cell::new(0),
            main,
        });
        if main {
            self.main.push_back((key, gen));
        } else {
            self.small.push_back((key, gen));
            self.small_bytes += size;
        }
        self.value_bytes += size;
        self.inserts += 1;
        if self.small.len() + self.main.len() > 2 * self.map.len() + 1024 {
            // Replaced and removed entries left stale queue items behind.
            self.shrink_index();
        }
        // The ghost remembers an eighth as many keys as the main queue holds.
        self.ghost.capacity = (self.main.len() / GHOST_SHARE).max(16);
    }

    /// Removes `key`; its value goes to `free`. Its queue item goes stale
    /// and is skipped when reached.
    fn remove<Q: ?Sized + Hash + Eq>(&mut self, key: &Q, free: &mut impl FnMut(Handle<V>)) -> bool
    where
        K: Borrow<Q>,
    {
        let Some((key, entry)) = self.map.remove_entry(key) else {
            return false;
        };
        self.forget(&key, &entry, free);
        if self.map.capacity() > 8 * self.map.len() + 1024 {
            // Mostly removed: give the index's room back (as Redis resizes
            // a dict below a tenth full), a rare, amortised O(entries).
            self.shrink_index();
        }
        true
    }

    fn forget(&mut self, key: &K, entry: &Entry<V>, free: &mut impl FnMut(Handle<V>)) {
        self.key_bytes -= (self.key_weigher)(key);
        let size = entry.size as usize;
        if !entry.main {
            self.small_bytes -= size;
        }
        self.value_bytes -= size;
        free(entry.handle);
    }

    /// Evicts one entry (S3-FIFO). False if the cache is empty.
    fn evict_one(&mut self, free: &mut impl FnMut(Handle<V>)) -> bool {
        // Every entry has an item in a queue; if a panic in the key's `Hash`
        // or `Eq` (caught by the caller) lost one, the loop ends with the
        // queues instead of spinning.
        while !self.map.is_empty() && (!self.small.is_empty() || !self.main.is_empty()) {
            let small_over = self.small_bytes >= self.budget / SMALL_SHARE_DIV;
            let evicted = if small_over || self.main.is_empty() {
                self.evict_small(free)
            } else {
                self.evict_main(free)
            };
            if evicted {
                self.evictions += 1;
                return true;
            }
        }
        false
    }

    /// Takes the small queue's oldest entry: promoted to the main queue if it
    /// was read again, else evicted (and its key remembered). Returns
    /// whether an entry left the cache.
    fn evict_small(&mut self, free: &mut impl FnMut(Handle<V>)) -> bool {
        let Some((key, gen)) = self.small.pop_front() else {
            return self.evict_main(free);
        };
        // One probe: the entry is read, promoted or removed where it is.
        let hash_map::EntryRef::Occupied(mut slot) = self.map.entry_ref(&key) else {
            return false; // stale: removed since
        };
        let entry = slot.get_mut();
        if entry.gen != gen || entry.main {
            return false; // stale: replaced since
        }
        if entry.freq.get() >= PROMOTE_AT {
            entry.main = true;
            entry.freq.set(0);
            self.small_bytes -= entry.size as usize;
            self.main.push_back((key, gen));
            self.ghost.capacity = (self.main.len() / GHOST_SHARE).max(16);
            return false;
        }
        let (key, entry) = slot.remove_entry();
        let hash = self.map.hasher().hash_one(&key);
        self.forget(&key, &entry, free);
        self.ghost.insert(hash);
        true
    }

    /// Takes the main queue's oldest entry: evicted if unread since the
    /// queue last passed it, else sent round again with one read fewer.
    fn evict_main(&mut self, free: &mut impl FnMut(Handle<V>)) -> bool {
        let Some((key, gen)) = self.main.pop_front() else {
            return false;
        };
        let hash_map::EntryRef::Occupied(slot) = self.map.entry_ref(&key) else {
            return false;
        };
        let entry = slot.get();
        if entry.gen != gen || !entry.main {
            return false;
        }
        let freq = entry.freq.get();
        if freq > 0 {
            entry.freq.set(freq - 1);
            self.main.push_back((key, gen));
            return false;
        }
        let (key, entry) = slot.remove_entry();
        self.forget(&key, &entry, free);
        true
    }

    /// Forgets every entry (their values are freed by the caller, with the
    /// heap's `clear`).
    fn clear(&mut self) {
        self.map.clear();
        self.small.clear();
        self.main.clear();
        self.ghost.order.clear();
        self.ghost.set.clear();
        self.small_bytes = 0;
        self.value_bytes = 0;
        self.key_bytes = 0;
        self.shrink_index();
    }

    /// Changes the budget and evicts until the cache fits it.
    fn set_budget(&mut self, budget: usize, free: &mut impl FnMut(Handle<V>)) {
        self.budget = budget;
        while self.used_bytes() > self.budget && self.evict_one(free) {}
        self.shrink_index();
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            inserts: self.inserts,
            evictions: self.evictions,
            entries: self.map.len(),
            value_bytes: self.value_bytes,
            used_bytes: self.used_bytes(),
            index_bytes: self.index_bytes(),
            budget: self.budget,
        }
    }
}

/// Gives `entry` the value `handle` of `size` bytes, counted as a read, and
/// moves the byte counts; returns the old value's handle.
fn renew<V: ?Sized>(
    entry: &mut Entry<V>,
    handle: Handle<V>,
    size: usize,
    small_bytes: &mut usize,
    value_bytes: &mut usize,
) -> Handle<V> {
    let old = core::mem::replace(&mut entry.handle, handle);
    let old_size = core::mem::replace(&mut entry.size, size as u32) as usize;
    entry.freq.set((entry.freq.get() + 1).min(MAX_FREQ));
    if !entry.main {
        *small_bytes = *small_bytes - old_size + size;
    }
    *value_bytes = *value_bytes - old_size + size;
    old
}

/// Whether a table or queue of `capacity` is worth shrinking to `len`
/// (more than twice it, past a small floor).
fn oversized(capacity: usize, len: usize) -> bool {
    capacity > 2 * len + 64
}

/// Heap bytes that `values` bytes of values take with the allowance for holes.
fn with_holes(values: usize) -> usize {
    values + values / HOLE_ALLOWANCE_DIV
}

/// The bytes a value of `size` bytes takes in the cache's heap: a value
/// that starts on a line (see `with_line_align`) takes whole lines.
fn footprint(size: usize, line_align: usize) -> usize {
    if size >= line_align {
        size.next_multiple_of(LINE)
    } else {
        size
    }
}

/// The heap configuration for a cache of `budget` bytes: segments small
/// enough that a few of them are a small part of the budget, and the budget
/// as the heap's memory limit.
fn heap_config(budget: usize) -> Config {
    Config::default()
        .segment_size(segment_size(budget))
        .memory_limit(budget)
        .segment_pool(2)
        .pacing(pacing(PACING_THRESHOLD))
}

/// The cache's pacing, compacting past `threshold` × live bytes.
fn pacing(threshold: f64) -> Pacing {
    Pacing::default().threshold(threshold).rate(2)
}

/// Segments of a 64th of the budget, between 4 KiB and 1 MiB.
fn segment_size(budget: usize) -> usize {
    (budget / 64).clamp(4 << 10, 1 << 20).next_power_of_two()
}

/// A cache from keys to values in a compacting heap, bounded by a budget in
/// bytes of memory. Single-threaded; [`SyncCache`] is the shared one.
///
/// **The budget** counts what the process pays for the cache: every value's
/// bytes (with a 10% allowance for the heap's holes), the heap's 16-byte slot
/// of each, and the index (hash map, queues, ghost list) by its allocated
/// capacity. The cache evicts to stay within it, and its heap's memory limit
/// is the budget less the slots and the index, so the memory held for values
/// cannot pass it either: fragmentation is closed by the heap's paced
/// compaction, not paid for in RSS.
///
/// **Eviction is S3-FIFO** (Juncheng Yang, Yazhuo Zhang, Ziyue Qiu, Yao Yue,
/// Rashmi Vinayak, "FIFO queues are all you need for cache eviction", SOSP
/// 2023). New entries go to a small FIFO queue (a twentieth of the budget);
/// an entry read again before it leaves that queue moves to the main FIFO
/// queue, the others are evicted and their keys remembered in a ghost queue,
/// so that a key that comes back soon goes straight to the main queue. The
/// main queue evicts entries whose read count (0–7) is zero and sends the
/// others round again with one read fewer. A read only bumps a counter.
///
/// Values are any [`CloneObject`]: byte slices and `str` most often
/// (`Cache<K, [u8]>`, `Cache<K, str>`), or sized values. A value is cloned
/// into the heap on insert, so the caller keeps its own.
///
/// # Examples
/// ```
/// use compact_heap::Cache;
///
/// let mut cache: Cache<u64, [u8]> = Cache::new(1 << 20).unwrap(); // 1 MiB
/// cache.insert(1, &[7u8; 100]).unwrap();
/// assert_eq!(cache.get(&1).unwrap()[99], 7);
/// assert!(cache.get(&2).is_none());
/// for k in 0..100_000 {
///     cache.insert(k, &[0u8; 1000]).unwrap(); // 100 MB through a 1 MiB cache
/// }
/// let st = cache.stats();
/// assert!(st.used_bytes <= 1 << 20 && st.evictions > 0);
/// assert!(cache.heap().stats().held_bytes <= 1 << 20);
/// ```
pub struct Cache<K, V: ?Sized, S = RandomState> {
    heap: Heap,
    index: Index<K, V, S>,
}

impl<K, V: ?Sized, S> fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.index.map.len())
            .field("value_bytes", &self.index.value_bytes)
            .field("budget", &self.index.budget)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V: ?Sized + CloneObject> Cache<K, V> {
    /// A cache of at most `budget` bytes of memory.
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for a budget of 0.
    pub fn new(budget: usize) -> Result<Self, CacheError> {
        Cache::with_hasher(budget, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V: ?Sized + CloneObject, S: BuildHasher> Cache<K, V, S> {
    /// A cache of at most `budget` bytes of memory, hashing keys with `hasher`.
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for a budget of 0.
    pub fn with_hasher(budget: usize, hasher: S) -> Result<Self, CacheError> {
        if budget == 0 {
            return Err(CacheError::ZeroBudget);
        }
        Ok(Cache {
            heap: Heap::with_config(heap_config(budget)),
            index: Index::new(budget, hasher),
        })
    }

    /// Counts `f(key)` more bytes against the budget for each key: what a
    /// key owns outside the cache's index (a `String`'s or `Box<[u8]>`'s
    /// buffer, say), which the cache cannot see.
    ///
    /// ```
    /// use compact_heap::Cache;
    ///
    /// let mut cache: Cache<String, str> = Cache::new(1 << 20).unwrap().with_key_weigher(|k| k.capacity());
    /// cache.insert("k".repeat(1000), "v").unwrap();
    /// assert!(cache.used_bytes() > 1000);
    /// ```
    pub fn with_key_weigher(mut self, f: fn(&K) -> usize) -> Self {
        self.index.key_weigher = f;
        self.index.key_bytes = self.index.map.keys().map(f).sum();
        self
    }

    /// Makes values of at least `min_size` bytes start on a heap line
    /// ([`Config::line_align`](crate::Config::line_align)): right for
    /// traffic that replaces values with others of about the same size (a
    /// key-value server), where it lets the heap reuse the holes instead of
    /// compacting; wrong for values of widely spread sizes, which then waste
    /// up to a line each. The budget counts the whole lines.
    pub fn with_line_align(mut self, min_size: usize) -> Self {
        self.heap.set_line_align(Some(min_size));
        self.index.line_align = min_size;
        self
    }

    /// The value of `key`, borrowed from the heap (pinned while the guard
    /// lives), or `None`. Counts a hit or a miss.
    pub fn get<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
    {
        // An entry's handle is live while it is in the index.
        self.heap.get(self.index.lookup(key)?)
    }

    /// Whether `key` has a value (not counted as a hit or a miss).
    pub fn contains_key<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.index.map.contains_key(key)
    }

    /// Stores a clone of `value` under `key`, replacing any value it had,
    /// and evicts other entries as needed to stay within the budget.
    ///
    /// # Errors
    /// [`CacheError::TooLarge`] if the entry alone needs more than the
    /// budget: nothing is evicted, and an old value of `key` stays.
    /// [`CacheError::Alloc`] if the heap cannot take it even after evicting
    /// everything else.
    pub fn insert(&mut self, key: K, value: &V) -> Result<(), CacheError> {
        let size = footprint(core::mem::size_of_val(value), self.index.line_align);
        self.index.check_fits(size)?;
        // A new value for a key replaces the old one in its entry: room for
        // the difference.
        let (old, key_weight) = match self.index.map.get(&key) {
            Some(e) => (e.size as usize, 0),
            None => (0, (self.index.key_weigher)(&key)),
        };
        let handle = self.store(value, size.saturating_sub(old), key_weight)?;
        let heap = &self.heap;
        self.index.put(key, handle, size, &mut |h| {
            heap.free(h);
        });
        self.settle();
        Ok(())
    }

    /// Stores a clone of `value` under `key` if `key` has an entry (and
    /// returns true), without a `K` to give: for keys that are expensive to
    /// make. False, with nothing stored, if `key` has no entry.
    ///
    /// # Errors
    /// As [`Cache::insert`].
    ///
    /// ```
    /// use compact_heap::Cache;
    ///
    /// let mut cache: Cache<String, str> = Cache::new(1 << 20).unwrap();
    /// assert!(!cache.replace("k", "v1").unwrap());
    /// cache.insert("k".to_string(), "v1").unwrap();
    /// assert!(cache.replace("k", "v2").unwrap());
    /// assert_eq!(&*cache.get("k").unwrap(), "v2");
    /// ```
    pub fn replace<Q: ?Sized + Hash + Eq>(&mut self, key: &Q, value: &V) -> Result<bool, CacheError>
    where
        K: Borrow<Q>,
    {
        let Some(old) = self.index.map.get(key).map(|e| e.size as usize) else {
            return Ok(false);
        };
        let size = footprint(core::mem::size_of_val(value), self.index.line_align);
        self.index.check_fits(size)?;
        let handle = self.store(value, size.saturating_sub(old), 0)?;
        let heap = &self.heap;
        let mut free = |h| {
            heap.free(h);
        };
        if let Err(h) = self.index.replace_value(key, handle, size, &mut free) {
            // Evicted while room was made: nothing stored after all.
            heap.free(h);
            return Ok(false);
        }
        self.settle();
        Ok(true)
    }

    /// Makes room for `grow` more value bytes (and `key` bytes of a new
    /// key), then clones `value` into the heap, evicting more while the heap
    /// refuses it.
    fn store(&mut self, value: &V, grow: usize, key: usize) -> Result<Handle<V>, CacheError> {
        let heap = &self.heap;
        let mut free = |h| {
            heap.free(h);
        };
        self.index.make_room(grow, key, &mut free);
        loop {
            match heap.try_alloc_clone(value) {
                Ok(h) => return Ok(h),
                Err(AllocError::OutOfMemory) if self.index.evict_one(&mut free) => {}
                Err(e) => return Err(CacheError::Alloc(e)),
            }
        }
    }

    /// After a value is stored: evicts if the index grew its capacity past
    /// the budget, and gives the heap its new limit if it moved.
    fn settle(&mut self) {
        let heap = &self.heap;
        self.index.make_room(0, 0, &mut |h| {
            heap.free(h);
        });
        if let Some(limit) = self.index.heap_limit_update() {
            self.heap.set_memory_limit(Some(limit));
        }
        if let Some(pacing) = self.index.pacing_update() {
            self.heap.set_pacing(Some(pacing));
        }
    }

    /// Removes `key`'s value. Returns whether there was one.
    pub fn remove<Q: ?Sized + Hash + Eq>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        let heap = &self.heap;
        self.index.remove(key, &mut |h| {
            heap.free(h);
        })
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.index.clear();
        self.heap.clear();
        self.index.heap_limit_set = self.index.heap_limit();
        self.heap.set_memory_limit(Some(self.index.heap_limit_set));
    }

    /// Changes the budget, evicting at once what no longer fits (a smaller
    /// heap limit is reached as compaction gives memory back).
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for 0 (the budget is unchanged).
    pub fn set_budget(&mut self, budget: usize) -> Result<(), CacheError> {
        if budget == 0 {
            return Err(CacheError::ZeroBudget);
        }
        let heap = &self.heap;
        self.index.set_budget(budget, &mut |h| {
            heap.free(h);
        });
        self.index.heap_limit_set = self.index.heap_limit();
        self.heap.set_memory_limit(Some(self.index.heap_limit_set));
        Ok(())
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.index.budget
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.index.map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.index.map.is_empty()
    }

    /// Bytes counted against the budget now: values, a slot each, and the
    /// index by its allocated capacity.
    pub fn used_bytes(&self) -> usize {
        self.index.used_bytes()
    }

    /// The cache's figures.
    pub fn stats(&self) -> CacheStats {
        self.index.stats()
    }

    /// The heap the values live in (for its [`stats`](Heap::stats)).
    pub fn heap(&self) -> &Heap {
        &self.heap
    }
}

/// [`Cache`] shared between threads: the values in a [`SyncHeap`], the
/// index behind one lock that is held only to look up or update it (a
/// value is read through its guard after the lock is let go).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use compact_heap::SyncCache;
///
/// let cache: Arc<SyncCache<String, str>> = Arc::new(SyncCache::new(1 << 20).unwrap());
/// let c = cache.clone();
/// std::thread::spawn(move || c.insert("k".to_string(), "v").unwrap()).join().unwrap();
/// assert_eq!(&*cache.get(&"k".to_string()).unwrap(), "v");
/// ```
pub struct SyncCache<K, V: ?Sized, S = RandomState> {
    heap: SyncHeap,
    index: Mutex<Index<K, V, S>>,
}

impl<K, V: ?Sized, S> fmt::Debug for SyncCache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncCache").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V: ?Sized + CloneObject + Sync> SyncCache<K, V> {
    /// A shared cache of at most `budget` bytes of memory.
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for a budget of 0.
    pub fn new(budget: usize) -> Result<Self, CacheError> {
        SyncCache::with_hasher(budget, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V: ?Sized + CloneObject + Sync, S: BuildHasher> SyncCache<K, V, S> {
    /// A shared cache of at most `budget` bytes, hashing keys with `hasher`.
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for a budget of 0.
    pub fn with_hasher(budget: usize, hasher: S) -> Result<Self, CacheError> {
        if budget == 0 {
            return Err(CacheError::ZeroBudget);
        }
        Ok(SyncCache {
            heap: SyncHeap::with_config(heap_config(budget)),
            index: Mutex::new(Index::new(budget, hasher)),
        })
    }

    /// [`Cache::with_key_weigher`] for a shared cache.
    pub fn with_key_weigher(self, f: fn(&K) -> usize) -> Self {
        {
            let mut index = self.index.lock();
            index.key_weigher = f;
            index.key_bytes = index.map.keys().map(f).sum();
        }
        self
    }

    /// The value of `key`, or `None` (also if another thread evicts it
    /// between the lookup and the borrow). Counts a hit or a miss.
    pub fn get<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
    {
        let handle = self.index.lock().lookup(key)?;
        self.heap.get(handle)
    }

    /// [`Cache::insert`] for a shared cache. The value is cloned into the
    /// heap before the index is locked.
    ///
    /// # Errors
    /// As [`Cache::insert`].
    pub fn insert(&self, key: K, value: &V) -> Result<(), CacheError> {
        let size = {
            let index = self.index.lock();
            let size = footprint(core::mem::size_of_val(value), index.line_align);
            index.check_fits(size)?;
            size
        };
        let heap = &self.heap;
        let mut free = |h| {
            heap.free(h);
        };
        let handle = loop {
            match heap.try_alloc_clone(value) {
                Ok(h) => break h,
                Err(AllocError::OutOfMemory) if self.index.lock().evict_one(&mut free) => {}
                Err(e) => return Err(CacheError::Alloc(e)),
            }
        };
        let mut index = self.index.lock();
        let (old, key_weight) = match index.map.get(&key) {
            Some(e) => (e.size as usize, 0),
            None => (0, (index.key_weigher)(&key)),
        };
        index.make_room(size.saturating_sub(old), key_weight, &mut free);
        index.put(key, handle, size, &mut free);
        index.make_room(0, 0, &mut free);
        if let Some(limit) = index.heap_limit_update() {
            self.heap.set_memory_limit(Some(limit));
        }
        if let Some(pacing) = index.pacing_update() {
            self.heap.set_pacing(Some(pacing));
        }
        Ok(())
    }

    /// Removes `key`'s value. Returns whether there was one.
    pub fn remove<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        let heap = &self.heap;
        self.index.lock().remove(key, &mut |h| {
            heap.free(h);
        })
    }

    /// Removes every entry.
    pub fn clear(&self) {
        let mut index = self.index.lock();
        index.clear();
        self.heap.clear();
        index.heap_limit_set = index.heap_limit();
        self.heap.set_memory_limit(Some(index.heap_limit_set));
    }

    /// [`Cache::set_budget`] for a shared cache.
    ///
    /// # Errors
    /// [`CacheError::ZeroBudget`] for 0.
    pub fn set_budget(&self, budget: usize) -> Result<(), CacheError> {
        if budget == 0 {
            return Err(CacheError::ZeroBudget);
        }
        let heap = &self.heap;
        let mut index = self.index.lock();
        index.set_budget(budget, &mut |h| {
            heap.free(h);
        });
        index.heap_limit_set = index.heap_limit();
        self.heap.set_memory_limit(Some(index.heap_limit_set));
        Ok(())
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.index.lock().map.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache's figures.
    pub fn stats(&self) -> CacheStats {
        self.index.lock().stats()
    }

    /// The heap the values live in.
    pub fn heap(&self) -> &SyncHeap {
        &self.heap
    }
}
