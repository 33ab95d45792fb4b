//! [`HeapStats`] (what the heap holds) and [`CompactReport`] (what a
//! compaction did).

use core::fmt;

/// A snapshot of a heap's figures. Every figure is exact, not an estimate.
///
/// # Examples
/// ```
/// use compact_heap::Heap;
///
/// let heap = Heap::new();
/// let h = heap.alloc([0u8; 100]);
/// let st = heap.stats();
/// assert_eq!((st.live_objects, st.live_bytes), (1, 100));
/// assert!(st.held_bytes >= 100);
/// heap.free(h);
/// assert_eq!(heap.stats().live_bytes, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapStats {
    /// Objects whose handles are live.
    pub live_objects: usize,
    /// Bytes of those objects, as their types ask (`size_of_val`).
    pub live_bytes: usize,
    /// Bytes held from the OS for objects: `segment_bytes + large_bytes + spare_bytes`.
    pub held_bytes: usize,
    /// Bytes of mapped segments.
    pub segment_bytes: usize,
    /// Bytes of the mappings of large objects (each rounded up to a page).
    pub large_bytes: usize,
    /// Bytes of freed large-object mappings kept for reuse by the next large
    /// object of the same size (at most two); `compact()` gives them back.
    pub spare_bytes: usize,
    /// Bytes of bookkeeping: the handle table (12 bytes a slot, and 4 more
    /// for each slot of a chunk that holds slices), the
    /// segments' line counts and bitmaps, the type registry, and the heap's
    /// own vectors (including a compaction pass's lists while one runs).
    pub metadata_bytes: usize,
    /// Objects that a guard pins now (including freed ones that wait for their
    /// last guard).
    pub pinned_objects: usize,
    /// Mapped segments.
    pub segments: usize,
    /// Large objects (each in a mapping of its own).
    pub large_objects: usize,
    /// Compactions run so far: calls of `compact` and `compact_step`.
    pub compactions: u64,
    /// Objects moved by compaction so far.
    pub objects_moved: u64,
    /// Bytes moved by compaction so far.
    pub bytes_moved: u64,
    /// Bytes compaction has given back to the OS so far.
    pub bytes_released: u64,
    /// Of `bytes_moved`, the bytes moved by steps that allocation and free
    /// ran themselves ([`Pacing`](crate::Pacing)).
    pub paced_bytes_moved: u64,
    /// Steps that allocation and free ran ([`Pacing`](crate::Pacing)); not
    /// counted in `compactions`.
    pub paced_steps: u64,
}

impl HeapStats {
    /// `held_bytes / live_bytes`: 1.0 is perfectly dense. Infinite for an
    /// empty heap that still holds memory, 1.0 for one that holds none.
    pub fn fragmentation(&self) -> f64 {
        if self.live_bytes == 0 {
            if self.held_bytes == 0 {
                1.0
            } else {
                f64::INFINITY
            }
        } else {
            self.held_bytes as f64 / self.live_bytes as f64
        }
    }
}

/// One line for logs: live data, what is held for it, and what compaction did.
///
/// ```
/// let heap = compact_heap::Heap::new();
/// heap.alloc_slice(&[0u8; 1000]);
/// let line = heap.stats().to_string();
/// assert!(line.starts_with("live 1000 B in 1 objects, held 1.0 MiB"), "{line}");
/// ```
impl fmt::Display for HeapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "live {} in {} objects, held {} ({} segments, {} large, {} spare), \
             metadata {}, {} pinned; {} compactions moved {} objects ({}), released {}",
            Bytes(self.live_bytes),
            self.live_objects,
            Bytes(self.held_bytes),
            self.segments,
            self.large_objects,
            Bytes(self.spare_bytes),
            Bytes(self.metadata_bytes),
            self.pinned_objects,
            self.compactions,
            self.objects_moved,
            Bytes(self.bytes_moved as usize),
            Bytes(self.bytes_released as usize),
        )
    }
}

/// A byte count in the largest binary unit that keeps it at least 1.
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

/// What one call of [`Heap::compact`](crate::Heap::compact) or
/// [`Heap::compact_step`](crate::Heap::compact_step) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Objects moved.
    pub objects_moved: usize,
    /// Bytes moved.
    pub bytes_moved: usize,
    /// Segments given back to the OS.
    pub segments_released: usize,
    /// Bytes given back to the OS.
    pub bytes_released: usize,
    /// Objects that stayed where they were because a guard pinned them.
    pub pinned_skipped: usize,
    /// Whether the compaction pass is finished and its emptied segments are
    /// back with the OS (always true after `compact`); false when
    /// `compact_step` stopped at its budget with work left.
    pub finished: bool,
}
