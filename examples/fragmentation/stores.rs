//! The contenders, as [`Store`]s: a `Box<[u8]>` table over whatever global
//! allocator the process has, and compact-heap in three compaction modes.

use std::time::{Duration, Instant};

use compact_heap::{Config, Handle, Heap};

use crate::workloads::Store;

/// Values as `Box<[u8]>` in a plain table: malloc's footprint.
#[derive(Default)]
pub struct BoxStore {
    values: Vec<Option<Box<[u8]>>>,
}

impl Store for BoxStore {
    fn put(&mut self, key: usize, size: usize) {
        if key >= self.values.len() {
            self.values.resize_with(key + 1, || None);
        }
        // A non-zero fill: every page is really touched (no calloc shortcut).
        self.values[key] = Some(vec![key as u8 | 1; size].into_boxed_slice());
    }

    fn reserve_keys(&mut self, keys: usize) {
        // `None` is written to every entry: the pages are touched.
        self.values
            .resize_with(keys.max(self.values.len()), || None);
    }

    fn del(&mut self, key: usize) {
        self.values[key] = None;
    }
}

/// When compact-heap compacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compaction {
    /// The default heap (paced compaction on), and `compact()` at the end of
    /// each phase.
    Full,
    /// The default heap left alone: only its paced compaction, no call.
    Paced,
    /// `compact_step(budget)` every few operations, never a full compaction
    /// (pacing off).
    Steps(usize),
    /// Never (pacing off).
    Off,
}

/// Values in a compact-heap [`Heap`].
pub struct HeapStore {
    heap: Heap,
    handles: Vec<Option<Handle<[u8]>>>,
    mode: Compaction,
    compact_time: Duration,
}

impl HeapStore {
    pub fn new(mode: Compaction) -> HeapStore {
        HeapStore {
            heap: Heap::with_config(match mode {
                Compaction::Full | Compaction::Paced => Config::default(),
                Compaction::Steps(_) | Compaction::Off => Config::default().no_pacing(),
            }),
            handles: Vec::new(),
            mode,
            compact_time: Duration::ZERO,
        }
    }
}

impl Store for HeapStore {
    fn put(&mut self, key: usize, size: usize) {
        if key >= self.handles.len() {
            self.handles.resize(key + 1, None);
        }
        self.handles[key] = Some(self.heap.alloc_slice_fill(size, key as u8 | 1));
    }

    fn reserve_keys(&mut self, keys: usize) {
        self.handles.resize(keys.max(self.handles.len()), None);
    }

    fn del(&mut self, key: usize) {
        let h = self.handles[key].take().expect("key holds a value");
        self.heap.free(h);
    }

    fn phase_end(&mut self) {
        if self.mode == Compaction::Full {
            let t = Instant::now();
            self.heap.compact();
            self.compact_time += t.elapsed();
        }
    }

    fn tick(&mut self) {
        if let Compaction::Steps(budget) = self.mode {
            let t = Instant::now();
            self.heap.compact_step(budget);
            self.compact_time += t.elapsed();
        }
    }

    fn held(&self) -> Option<usize> {
        Some(self.heap.stats().held_bytes)
    }

    fn metadata(&self) -> Option<usize> {
        let table = self.handles.capacity() * std::mem::size_of::<Option<Handle<[u8]>>>();
        Some(self.heap.stats().metadata_bytes + table)
    }

    fn compaction(&self) -> (u64, Duration) {
        (self.heap.stats().bytes_moved, self.compact_time)
    }
}
