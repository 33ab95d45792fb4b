//! [`Config`]: the knobs of a heap.

/// How a [`Heap`](crate::Heap) lays out memory and how much it may take.
///
/// # Examples
/// ```
/// use compact_heap::{Config, Heap};
///
/// let heap = Heap::with_config(Config::default().segment_size(256 * 1024).memory_limit(64 << 20));
/// let h = heap.alloc(1u32);
/// assert_eq!(*heap.get(h).unwrap(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) segment_size: usize,
    pub(crate) memory_limit: Option<usize>,
}

impl Default for Config {
    /// 1 MiB segments, no memory limit.
    fn default() -> Config {
        Config {
            segment_size: 1 << 20,
            memory_limit: None,
        }
    }
}

impl Config {
    /// The size of a segment, the block the heap maps from the OS and gives
    /// back when compaction empties it. Objects larger than a quarter of it
    /// get a mapping of their own. Smaller segments give memory back sooner;
    /// larger ones map less often.
    ///
    /// # Panics
    /// If `bytes` is not a power of two between 4 KiB and 1 GiB.
    pub fn segment_size(mut self, bytes: usize) -> Config {
        assert!(
            bytes.is_power_of_two() && (4096..=1 << 30).contains(&bytes),
            "segment size must be a power of two between 4 KiB and 1 GiB, got {bytes}"
        );
        self.segment_size = bytes;
        self
    }

    /// The most bytes the heap may hold from the OS for objects (segments and
    /// large objects). An allocation that would pass it first compacts the
    /// heap, then fails: `try_alloc*` return
    /// [`AllocError::OutOfMemory`](crate::AllocError::OutOfMemory), `alloc*` panic.
    pub fn memory_limit(mut self, bytes: usize) -> Config {
        self.memory_limit = Some(bytes);
        self
    }
}
