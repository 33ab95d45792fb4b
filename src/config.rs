//! [`Config`]: the knobs of a heap, and [`Pacing`]: how allocation and free
//! pay for compaction as they go.

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
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub(crate) segment_size: usize,
    pub(crate) memory_limit: Option<usize>,
    pub(crate) pacing: Option<Pacing>,
    pub(crate) segment_pool: usize,
    pub(crate) line_align: Option<usize>,
    pub(crate) huge_pages: bool,
}

impl Default for Config {
    /// 1 MiB segments, no memory limit, [`Pacing::default`], a pool of one
    /// empty segment, 4 KiB pages.
    fn default() -> Config {
        Config {
            segment_size: 1 << 20,
            memory_limit: None,
            pacing: Some(Pacing::default()),
            segment_pool: 1,
            line_align: None,
            huge_pages: false,
        }
    }
}

impl Config {
    /// How many empty segments the heap keeps mapped for reuse instead of
    /// giving them back at once: a heap whose live data drifts empties and
    /// fills segments all the time, and each fresh segment costs a page
    /// fault per page. The pool is at most a sixteenth of the memory the heap
    /// holds; pooled segments count in `held_bytes` (as `spare_bytes`) and
    /// in pacing, and [`Heap::compact`](crate::Heap::compact) gives them back.
    ///
    /// ```
    /// use compact_heap::{Config, Heap};
    ///
    /// let heap = Heap::with_config(Config::default().segment_size(64 * 1024).segment_pool(4));
    /// let hs: Vec<_> = (0..100_000u32).map(|i| heap.alloc(i)).collect();
    /// hs.iter().for_each(|&h| { heap.free(h); });
    /// assert!(heap.stats().spare_bytes <= 4 * 64 * 1024); // emptied segments kept for reuse
    /// heap.compact();
    /// assert_eq!(heap.stats().held_bytes, 0); // and given back by compact()
    /// ```
    pub fn segment_pool(mut self, segments: usize) -> Config {
        self.segment_pool = segments;
        self
    }

    /// Makes objects of at least `min_size` bytes start on a line boundary
    /// (segments are counted in lines of 128 bytes). Freeing such an object
    /// then frees whole lines that the next object of about its size fits,
    /// so a heap that keeps replacing values of similar sizes (a cache, a
    /// key-value server) reuses its holes instead of compacting them away:
    /// on a server replacing 1 000-byte values, compaction moved 60 times
    /// fewer bytes and the heap held 1.04 × its live data instead of 1.12.
    /// The price is up to a line per such object when objects of mixed sizes
    /// are packed, as after a full compaction. Off by default;
    /// [`Cache`](crate::Cache) uses 512.
    ///
    /// ```
    /// let heap = compact_heap::Heap::with_config(compact_heap::Config::default().line_align(512));
    /// heap.alloc([0u8; 3]);
    /// let h = heap.alloc_slice(&[1u8; 1000]);
    /// assert_eq!(heap.get(h).unwrap().as_ptr().addr() % 128, 0);
    /// ```
    pub fn line_align(mut self, min_size: usize) -> Config {
        self.line_align = Some(min_size);
        self
    }

    /// Whether segments may be backed by the OS's transparent huge pages
    /// (off by default). On Linux, where every segment has a fixed place in
    /// one reserved range aligned to 2 MiB (64-bit), the heap then asks for
    /// them (`madvise(MADV_HUGEPAGE)`), and the kernel uses one wherever a
    /// whole aligned 2 MiB of places is in use when first touched: so it
    /// takes effect with segments of 2 MiB or more. A huge page is one page
    /// fault instead of 512, fewer TLB misses, and giving it back costs the
    /// kernel a fraction of what 512 small pages cost: `compact()` of 16 KiB
    /// objects ran about twice as fast (see the README's Speed table).
    ///
    /// The price is latency and granularity: the first touch of a segment
    /// zeroes all 2 MiB at once (an allocation or a `compact_step` that
    /// does it takes 100 µs or more, more if the kernel must first compact
    /// its own memory), and a segment is resident as a whole once touched.
    /// So it suits throughput (batch compaction, big objects) more than a
    /// latency budget. Where the OS has no such pages it changes nothing.
    ///
    /// ```
    /// use compact_heap::{Config, Heap};
    ///
    /// let heap = Heap::with_config(Config::default().segment_size(2 << 20).huge_pages(true));
    /// let h = heap.alloc_slice_fill(16 * 1024, 7u8);
    /// assert_eq!(heap.get(h).unwrap()[100], 7);
    /// ```
    pub fn huge_pages(mut self, on: bool) -> Config {
        self.huge_pages = on;
        self
    }

    /// The size of a segment, the block the heap maps from the OS and gives
    /// back when compaction empties it. Objects larger than a quarter of it
    /// get a mapping of their own. Smaller segments give memory back sooner;
    /// larger ones map less often.
    ///
    /// A heap maps at most 65 534 segments (64 GiB of 1 MiB segments) besides
    /// its large objects.
    ///
    /// # Panics
    /// If `bytes` is not a power of two between 4 KiB and 16 MiB.
    pub fn segment_size(mut self, bytes: usize) -> Config {
        assert!(
            bytes.is_power_of_two() && (4096..=1 << 24).contains(&bytes),
            "segment size must be a power of two between 4 KiB and 16 MiB, got {bytes}"
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

    /// How allocation and free pace compaction ([`Pacing::default`] unless
    /// set). See [`Pacing`].
    pub fn pacing(mut self, pacing: Pacing) -> Config {
        self.pacing = Some(pacing);
        self
    }

    /// No paced compaction: memory is compacted only by
    /// [`Heap::compact`](crate::Heap::compact),
    /// [`Heap::compact_step`](crate::Heap::compact_step) and a background
    /// compactor. Allocation and free then never move an object.
    ///
    /// # Examples
    /// ```
    /// use compact_heap::{Config, Heap};
    ///
    /// let heap = Heap::with_config(Config::default().segment_size(64 * 1024).no_pacing());
    /// let hs: Vec<_> = (0..10_000u32).map(|i| heap.alloc([i; 16])).collect();
    /// for h in hs.iter().step_by(2) {
    ///     heap.free(*h);
    /// }
    /// assert_eq!(heap.stats().bytes_moved, 0); // nothing moved by itself
    /// ```
    pub fn no_pacing(mut self) -> Config {
        self.pacing = None;
        self
    }
}

/// Compaction paid for by allocation and free, as a garbage collector paces
/// marking with allocation: the heap stays near its live data at every
/// moment, not only after [`Heap::compact`](crate::Heap::compact).
///
/// Every `alloc` and every free (`free`, `remove`, a last guard dropping a
/// freed object) of `n` bytes adds `rate × n` bytes of *debt*. When the debt
/// reaches [`Pacing::step`] and the heap holds more than
/// `threshold × live bytes + one segment` (spare large mappings aside), that
/// call runs one compaction step that moves at most [`Pacing::max_step`]
/// bytes; what it moved is taken off the debt (which may go below zero, so
/// a step that moved more than was owed is paid off by later calls before
/// the next one). So no single call does more than one bounded step, and a
/// program that allocates and frees at a steady rate moves at most `rate`
/// bytes per byte it allocates or frees. Pinned objects never move; objects
/// larger than the step stay for [`Heap::compact`](crate::Heap::compact).
///
/// The defaults (threshold 1.08, rate 8, step 16 KiB, max step 64 KiB) keep a
/// heap under about 1.10 × live + 2 segments while it churns; a step of
/// 64 KiB costs tens of microseconds. A lower rate trades memory for speed
/// (the [`Cache`](crate::Cache) uses 2, with a tighter threshold).
///
/// # Examples
/// ```
/// use compact_heap::{Config, Heap, Pacing};
///
/// let heap = Heap::with_config(Config::default().segment_size(64 * 1024));
/// let hs: Vec<_> = (0..20_000u32).map(|i| heap.alloc([i; 16])).collect();
/// for h in hs.iter().step_by(2) {
///     heap.free(*h); // the frees pay for compaction as they go
/// }
/// let st = heap.stats();
/// assert!(st.paced_bytes_moved > 0);
/// assert!(st.held_bytes as f64 <= 1.10 * st.live_bytes as f64 + 2.0 * 65536.0);
/// // Tuned: compact only past 1.5 × live, in smaller steps.
/// let lazy = Config::default().pacing(Pacing::default().threshold(1.5).max_step(16 * 1024));
/// # let _ = Heap::with_config(lazy);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacing {
    pub(crate) threshold: f64,
    pub(crate) rate: usize,
    pub(crate) step: usize,
    pub(crate) max_step: usize,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            threshold: 1.08,
            rate: 8,
            step: 16 * 1024,
            max_step: 64 * 1024,
        }
    }
}

impl Pacing {
    /// Held bytes per live byte above which steps run (plus one segment of slack).
    ///
    /// # Panics
    /// If `ratio` is not at least 1.0.
    pub fn threshold(mut self, ratio: f64) -> Pacing {
        assert!(
            ratio >= 1.0,
            "pacing threshold must be at least 1.0, got {ratio}"
        );
        self.threshold = ratio;
        self
    }

    /// Bytes of compaction debt per byte allocated or freed.
    pub fn rate(mut self, rate: usize) -> Pacing {
        self.rate = rate;
        self
    }

    /// The debt at which a step runs: larger steps run less often, so their
    /// fixed cost (choosing sources) is spread further.
    ///
    /// # Panics
    /// If `bytes` is 0.
    pub fn step(mut self, bytes: usize) -> Pacing {
        assert!(bytes > 0, "pacing step must be positive");
        self.step = bytes;
        self
    }

    /// The most bytes one step moves: the bound on the work one `alloc` or
    /// free may do.
    ///
    /// # Panics
    /// If `bytes` is 0.
    pub fn max_step(mut self, bytes: usize) -> Pacing {
        assert!(bytes > 0, "pacing max_step must be positive");
        self.max_step = bytes;
        self
    }
}
