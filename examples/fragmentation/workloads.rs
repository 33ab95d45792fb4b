//! The workloads: operation streams that defeat malloc, replayed against any
//! [`Store`]. Shared by the `footprint` harness and `examples/fragmentation.rs`.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};

/// Something that stores byte values under integer keys: malloc behind a
/// `Box<[u8]>` table, or compact-heap.
pub trait Store {
    /// Stores `size` bytes under `key` (which holds nothing now), every byte written.
    fn put(&mut self, key: usize, size: usize);
    /// Frees the value of `key`.
    fn del(&mut self, key: usize);
    /// Makes room for keys `0..keys` in the store's own table, with every
    /// byte written, before the run's baseline is taken: the table is then
    /// neither grown nor counted during the run.
    fn reserve_keys(&mut self, _keys: usize) {}
    /// A natural compaction point: the end of a phase.
    fn phase_end(&mut self) {}
    /// Called every [`TICK`] operations: a slot for incremental work.
    fn tick(&mut self) {}
    /// Bytes the store holds for objects by its own count (None: ask the OS).
    fn held(&self) -> Option<usize> {
        None
    }
    /// Bytes of the store's own bookkeeping (None: not known).
    fn metadata(&self) -> Option<usize> {
        None
    }
    /// Bytes moved by compaction and time spent compacting.
    fn compaction(&self) -> (u64, Duration) {
        (0, Duration::ZERO)
    }
}

/// Operations between two [`Store::tick`]s.
pub const TICK: u64 = 256;

/// A size distribution.
#[derive(Clone, Copy, Debug)]
pub enum Sizes {
    Fixed(usize),
    Uniform(usize, usize),
    /// Log-normal with this median, σ = 1, clamped to [16 B, 64 KiB].
    LogNormal(f64),
}

impl Sizes {
    /// The smallest size.
    fn min(self) -> usize {
        match self {
            Sizes::Fixed(n) | Sizes::Uniform(n, _) => n,
            Sizes::LogNormal(_) => 16,
        }
    }

    fn mean(self) -> f64 {
        match self {
            Sizes::Fixed(n) => n as f64,
            Sizes::Uniform(a, b) => (a + b) as f64 / 2.0,
            Sizes::LogNormal(median) => (median * 0.5f64.exp()).min(65536.0),
        }
    }

    fn sample(self, rng: &mut SmallRng) -> usize {
        match self {
            Sizes::Fixed(n) => n,
            Sizes::Uniform(a, b) => rng.random_range(a..=b),
            Sizes::LogNormal(median) => {
                let d = LogNormal::new(median.ln(), 1.0).expect("valid log-normal");
                (d.sample(rng) as usize).clamp(16, 65536)
            }
        }
    }
}

/// One workload.
#[derive(Clone, Debug)]
pub enum Workload {
    /// RAMCloud's allocator test (Rumble et al., FAST 2014, Table 1): fill
    /// with `before`, overwriting random keys until 5× the target is written;
    /// delete `delete` of the keys at random; then the same with `after`.
    Ramcloud {
        name: &'static str,
        before: Sizes,
        delete: f64,
        after: Option<Sizes>,
    },
    /// Allocate a 1 MiB buffer, work, allocate a small thing, allocate a new
    /// buffer, free the first, free the small thing; `iterations` times.
    SeedLoop { iterations: u64 },
    /// A cache of fixed keys whose value sizes drift: the log-normal median
    /// goes up over four phases and back down in a fifth; random replacement.
    DriftingCache,
}

impl Workload {
    /// W1–W8, the seed loop and the drifting cache.
    pub fn all(seed_iterations: u64) -> Vec<Workload> {
        use Sizes::*;
        let w = |name, before, delete, after| Workload::Ramcloud {
            name,
            before,
            delete,
            after,
        };
        vec![
            w("W1", Fixed(100), 0.0, None),
            w("W2", Fixed(100), 0.0, Some(Fixed(130))),
            w("W3", Fixed(100), 0.9, Some(Fixed(130))),
            w("W4", Uniform(100, 150), 0.0, Some(Uniform(200, 250))),
            w("W5", Uniform(100, 150), 0.9, Some(Uniform(200, 250))),
            w("W6", Uniform(100, 200), 0.5, Some(Uniform(1000, 2000))),
            w("W7", Uniform(1000, 2000), 0.9, Some(Uniform(1500, 2500))),
            w("W8", Uniform(50, 150), 0.9, Some(Uniform(5000, 15000))),
            Workload::SeedLoop {
                iterations: seed_iterations,
            },
            Workload::DriftingCache,
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Workload::Ramcloud { name, .. } => name,
            Workload::SeedLoop { .. } => "seed",
            Workload::DriftingCache => "drift",
        }
    }
}

/// RSS (less the harness's own key index) and live bytes at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub ops: u64,
    pub live: usize,
    pub rss: usize,
    pub held: Option<usize>,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// The sample taken at the end of each phase (after its compaction point).
    pub phase_ends: Vec<Sample>,
    pub peak_rss: usize,
    pub peak_live: usize,
    /// RSS before the workload started (the program itself).
    pub baseline_rss: usize,
    pub ops: u64,
    pub elapsed: Duration,
    pub bytes_moved: u64,
    pub compact_time: Duration,
    /// The store's bookkeeping bytes at the end, if it knows them.
    pub metadata: Option<usize>,
}

impl Report {
    /// Steady RSS / live at the end of the last phase, baseline subtracted.
    pub fn final_ratio(&self) -> f64 {
        let s = self.phase_ends.last().expect("a phase ended");
        (s.rss.saturating_sub(self.baseline_rss)) as f64 / s.live.max(1) as f64
    }

    /// The worst sample during the run of RSS / (live + `slack` bytes),
    /// baseline subtracted: how far memory strayed from live data at any
    /// moment, not only at phase ends.
    pub fn worst_sample(&self, slack: usize) -> f64 {
        self.samples
            .iter()
            .map(|s| s.rss.saturating_sub(self.baseline_rss) as f64 / (s.live + slack) as f64)
            .fold(0.0, f64::max)
    }

    /// Peak RSS / peak live, baseline subtracted.
    pub fn peak_ratio(&self) -> f64 {
        self.peak_rss.saturating_sub(self.baseline_rss) as f64 / self.peak_live.max(1) as f64
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// The process's resident memory in bytes: its anonymous pages (Linux:
/// `RssAnon` in /proc/self/status), which is where every allocator's memory
/// is. Pages of the program file that a run faults in later (compaction's
/// code, say) are not the contender's memory, and at small scales they
/// would show as a few percent. Where `RssAnon` is missing, all resident
/// pages (/proc/self/statm).
pub fn rss() -> usize {
    let anon = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    if let Some(kib) = anon {
        return kib * 1024;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// The OS page size: statm counts pages, which are not 4 KiB everywhere.
#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> usize {
    4096
}

/// Tracks which keys hold values, their sizes, and the live total. Freed
/// keys are reused, so the tables of the driver and the stores stay as large
/// as the most keys ever live at once, like a real cache's index.
struct Keys {
    size: Vec<usize>,
    live: Vec<usize>,
    pos: Vec<usize>,
    free: Vec<usize>,
    live_bytes: usize,
}

impl Keys {
    /// An index for at most `max` keys at once, its memory allocated and
    /// written now (before the run's baseline), so that it never grows and
    /// its pages are in the baseline: RSS above the baseline is the
    /// contender's alone. (An earlier harness subtracted its vectors'
    /// capacities instead, which credited every contender with their
    /// never-touched halves.)
    fn new(max: usize) -> Keys {
        let touched = || {
            let mut v = vec![usize::MAX; max];
            v.clear();
            v
        };
        Keys {
            size: touched(),
            live: touched(),
            pos: touched(),
            free: touched(),
            live_bytes: 0,
        }
    }

    /// A key that holds no value.
    fn unused(&mut self) -> usize {
        while let Some(k) = self.free.pop() {
            if self.pos[k] == usize::MAX {
                return k;
            }
        }
        self.size.len()
    }

    fn insert(&mut self, key: usize, size: usize) {
        if key >= self.size.len() {
            self.size.resize(key + 1, 0);
            self.pos.resize(key + 1, usize::MAX);
        }
        debug_assert_eq!(self.pos[key], usize::MAX);
        self.size[key] = size;
        self.pos[key] = self.live.len();
        self.live.push(key);
        self.live_bytes += size;
    }

    fn remove(&mut self, key: usize) -> usize {
        let p = self.pos[key];
        self.live.swap_remove(p);
        if let Some(&moved) = self.live.get(p) {
            self.pos[moved] = p;
        }
        self.pos[key] = usize::MAX;
        // Only keys given out by `unused` come back through this list (the
        // random-replacement workloads); those the driver picks itself
        // would make it grow without bound, so it stops at its capacity.
        if self.free.len() < self.free.capacity() {
            self.free.push(key);
        }
        self.live_bytes -= self.size[key];
        self.size[key]
    }

    fn random(&self, rng: &mut SmallRng) -> usize {
        self.live[rng.random_range(0..self.live.len())]
    }
}

/// Drives a store through a workload, sampling RSS about `samples` times.
struct Driver<'s> {
    store: &'s mut dyn Store,
    keys: Keys,
    rng: SmallRng,
    report: Report,
    every: u64,
    started: Instant,
    progress: bool,
}

impl Driver<'_> {
    fn put(&mut self, key: usize, size: usize) {
        self.store.put(key, size);
        self.keys.insert(key, size);
        self.op();
    }

    fn del(&mut self, key: usize) {
        self.store.del(key);
        self.keys.remove(key);
        self.op();
    }

    fn op(&mut self) {
        self.report.ops += 1;
        self.report.peak_live = self.report.peak_live.max(self.keys.live_bytes);
        if self.report.ops.is_multiple_of(TICK) {
            self.store.tick();
        }
        if self.report.ops.is_multiple_of(self.every) {
            self.sample();
        }
    }

    fn sample(&mut self) -> Sample {
        // The harness's key index grows with the run; it is not the contender's memory.
        let s = Sample {
            ops: self.report.ops,
            live: self.keys.live_bytes,
            rss: rss(),
            held: self.store.held(),
        };
        self.report.peak_rss = self.report.peak_rss.max(s.rss);
        self.report.samples.push(s);
        s
    }

    fn phase_end(&mut self, name: &str) {
        self.store.phase_end();
        let s = self.sample();
        self.report.phase_ends.push(s);
        if self.progress {
            eprintln!(
                "    {name}: {:>8.1} MiB live, {:>8.1} MiB RSS, {:.1} s",
                s.live as f64 / 1048576.0,
                s.rss as f64 / 1048576.0,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// Overwrites random keys with `sizes` values, keeping live bytes near
    /// `target`, until `total` bytes are written.
    fn churn(&mut self, sizes: Sizes, target: usize, total: usize) {
        let mut written = 0;
        while written < total {
            let size = sizes.sample(&mut self.rng);
            // Make room: drop random keys until the new value fits the target.
            while self.keys.live_bytes + size > target && !self.keys.live.is_empty() {
                let k = self.keys.random(&mut self.rng);
                self.del(k);
            }
            let key = self.keys.unused();
            self.put(key, size);
            written += size;
        }
    }
}

/// The drifting cache's key space at `scale` live bytes.
fn drift_keys(scale: usize) -> usize {
    (scale as f64 / Sizes::LogNormal(4096.0).mean()) as usize
}

/// Runs `workload` on `store`. `scale` is the target of live bytes.
pub fn run(workload: &Workload, store: &mut dyn Store, scale: usize, progress: bool) -> Report {
    // The most keys live at once: live bytes stay near `scale`.
    let max_keys = match workload {
        Workload::Ramcloud { before, after, .. } => {
            scale / after.map_or(before.min(), |a| a.min().min(before.min())) + 64
        }
        Workload::SeedLoop { .. } => 3,
        Workload::DriftingCache => drift_keys(scale),
    };
    let keys = Keys::new(max_keys);
    store.reserve_keys(max_keys);
    let baseline_rss = rss();
    let expected_ops = match workload {
        Workload::Ramcloud { before, after, .. } => {
            (5.0 * scale as f64 / before.mean()
                + after.map_or(0.0, |a| 10.0 * scale as f64 / a.mean())) as u64
        }
        Workload::SeedLoop { iterations } => 4 * iterations,
        Workload::DriftingCache => 11 * (scale as f64 / Sizes::LogNormal(4096.0).mean()) as u64,
    };
    let mut d = Driver {
        store,
        keys,
        rng: SmallRng::seed_from_u64(0x5EED),
        report: Report {
            baseline_rss,
            ..Report::default()
        },
        every: (expected_ops / 300).max(1),
        started: Instant::now(),
        progress,
    };
    match *workload {
        Workload::Ramcloud {
            before,
            delete,
            after,
            ..
        } => {
            d.churn(before, scale, 5 * scale);
            d.phase_end("fill");
            let n = (d.keys.live.len() as f64 * delete) as usize;
            for _ in 0..n {
                let k = d.keys.random(&mut d.rng);
                d.del(k);
            }
            d.phase_end("delete");
            if let Some(after) = after {
                d.churn(after, scale, 5 * scale);
                d.phase_end("after");
            }
        }
        Workload::SeedLoop { iterations } => {
            const MIB: usize = 1 << 20;
            let (buf, small) = (0, 1);
            d.put(buf, MIB);
            let mut current = buf;
            for i in 0..iterations {
                let next = if current == buf { 2 } else { buf };
                d.put(small, 64);
                d.put(next, MIB);
                d.del(current);
                d.del(small);
                current = next;
                if (i + 1) % 10_000 == 0 {
                    d.phase_end(&format!("iteration {}", i + 1));
                }
            }
            d.phase_end("end");
        }
        Workload::DriftingCache => {
            let medians = [512.0, 1024.0, 2048.0, 4096.0, 1024.0];
            let keys = drift_keys(scale);
            for (phase, &median) in medians.iter().enumerate() {
                let sizes = Sizes::LogNormal(median);
                for _ in 0..2 * keys {
                    let key = d.rng.random_range(0..keys);
                    if d.keys.pos.get(key).is_some_and(|&p| p != usize::MAX) {
                        d.del(key);
                    }
                    let size = sizes.sample(&mut d.rng);
                    d.put(key, size);
                }
                d.phase_end(&format!("phase {} (median {median} B)", phase + 1));
            }
        }
    }
    d.report.elapsed = d.started.elapsed();
    (d.report.bytes_moved, d.report.compact_time) = d.store.compaction();
    d.report.metadata = d.store.metadata();
    d.report
}

impl Report {
    /// The report as lines of text, to pass from a worker process to its parent.
    pub fn to_text(&self) -> String {
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = format!(
            "report {} {} {} {} {} {} {} {}\n",
            self.peak_rss,
            self.peak_live,
            self.baseline_rss,
            self.ops,
            self.elapsed.as_nanos(),
            self.bytes_moved,
            self.compact_time.as_nanos(),
            opt(self.metadata)
        );
        for (tag, list) in [("sample", &self.samples), ("phase", &self.phase_ends)] {
            for s in list {
                out += &format!("{tag} {} {} {} {}\n", s.ops, s.live, s.rss, opt(s.held));
            }
        }
        out
    }

    /// Parses [`Report::to_text`]; other lines are ignored.
    pub fn from_text(text: &str) -> Option<Report> {
        let mut r = Report::default();
        let mut seen = false;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let opt = |i: usize| f.get(i).and_then(|v| v.parse::<usize>().ok());
            match f.first() {
                Some(&"report") => {
                    seen = true;
                    r.peak_rss = num(1)? as usize;
                    r.peak_live = num(2)? as usize;
                    r.baseline_rss = num(3)? as usize;
                    r.ops = num(4)?;
                    r.elapsed = Duration::from_nanos(num(5)?);
                    r.bytes_moved = num(6)?;
                    r.compact_time = Duration::from_nanos(num(7)?);
                    r.metadata = opt(8);
                }
                Some(&tag @ ("sample" | "phase")) => {
                    let s = Sample {
                        ops: num(1)?,
                        live: num(2)? as usize,
                        rss: num(3)? as usize,
                        held: opt(4),
                    };
                    if tag == "sample" {
                        r.samples.push(s)
                    } else {
                        r.phase_ends.push(s)
                    }
                }
                _ => {}
            }
        }
        seen.then_some(r)
    }
}
