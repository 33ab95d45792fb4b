//! compact-heap's `Cache` against moka and quick_cache, each in its own
//! process, on the same trace: Zipf-distributed keys (s = 0.99) over a key
//! space larger than the budget, value sizes from a log-normal whose median
//! drifts 512 B → 8 KiB → 512 B. Every cache has the same byte budget (moka
//! and quick_cache weigh each value by its byte length; compact-heap counts
//! values, slots and its index). RSS is sampled every 10 000 operations.
//!
//! ```text
//! cargo run --release -p cache-bench                     # 64 MiB budget, 4 M ops, 3 rounds
//! cargo run --release -p cache-bench -- --budget-mib 16 --ops 1000000 --rounds 1
//! ```
//! Every round runs each contender once (interleaved, so that a slow spell of
//! a shared machine hits all alike). The table shows each contender's worst
//! memory over the rounds and its best ops/s, with every round's ops/s.
//! Writes target/cache-bench/results.md, samples.csv and rss.svg (the
//! samples of each contender's worst round).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use compact_heap::{Cache, SyncCache};
use plotters::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal, Zipf};

const CONTENDERS: [&str; 3] = ["compact-heap", "moka", "quick_cache"];
/// RSS is sampled every this many operations (all threads together).
const SAMPLE_EVERY: u64 = 10_000;
/// The largest value (the log-normal's tail is cut here).
const MAX_VALUE: usize = 1 << 20;

#[derive(Clone)]
struct Args {
    budget: usize,
    ops: u64,
    keys: u64,
    threads: Vec<usize>,
    contenders: Vec<String>,
    /// Each contender runs this many times, interleaved with the others.
    rounds: usize,
    out: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: cache-bench [--budget-mib N] [--ops N] [--keys N] [--threads 1,2] [--only a,b] [--rounds N (3)]\n\
         contenders: {}",
        CONTENDERS.join(", ")
    );
    std::process::exit(2)
}

fn parse_args(args: &[String]) -> Args {
    let mut a = Args {
        budget: 64 << 20,
        ops: 4_000_000,
        keys: 1_000_000,
        threads: vec![1, 2],
        contenders: CONTENDERS.iter().map(|c| c.to_string()).collect(),
        rounds: 3,
        out: PathBuf::from("target/cache-bench"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--budget-mib" => a.budget = value().parse::<usize>().unwrap_or_else(|_| usage()) << 20,
            "--ops" => a.ops = value().parse().unwrap_or_else(|_| usage()),
            "--keys" => a.keys = value().parse().unwrap_or_else(|_| usage()),
            "--threads" => {
                a.threads = value()
                    .split(',')
                    .map(|t| t.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--only" => a.contenders = value().split(',').map(str::to_string).collect(),
            "--rounds" => a.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--out" => a.out = PathBuf::from(value()),
            "--help" | "-h" => usage(),
            _ => {
                eprintln!("unknown argument {flag}");
                usage()
            }
        }
    }
    if a.budget == 0 || a.ops == 0 || a.keys == 0 {
        usage();
    }
    a
}

/// The process's resident set size in bytes (Linux: /proc/self/statm).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap_or(4096)
}

/// One thread's trace: `(key, value size)` per operation.
struct Trace {
    rng: SmallRng,
    zipf: Zipf<f64>,
    sizes: Option<LogNormal<f64>>,
    ops: u64,
}

impl Trace {
    fn new(seed: u64, keys: u64, ops: u64) -> Trace {
        Trace {
            rng: SmallRng::seed_from_u64(seed),
            zipf: Zipf::new(keys as f64, 0.99).expect("valid Zipf"),
            sizes: None,
            ops,
        }
    }

    /// The key and value size of operation `i` (of `ops`): the median value
    /// size goes 512 B → 8 KiB over the first half and back over the second.
    fn next(&mut self, i: u64) -> (u64, usize) {
        let key = self.zipf.sample(&mut self.rng) as u64;
        if i.is_multiple_of(1024) || self.sizes.is_none() {
            // The median moves in steps of 1024 operations.
            let p = i as f64 / self.ops as f64;
            let up = if p < 0.5 { 2.0 * p } else { 2.0 * (1.0 - p) };
            let median = 512.0 * 16f64.powf(up);
            self.sizes = Some(LogNormal::new(median.ln(), 0.8).expect("valid log-normal"));
        }
        let size = self.sizes.expect("set above").sample(&mut self.rng);
        // Scramble the key so popular keys are not the small integers.
        (
            key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            (size as usize).clamp(1, MAX_VALUE),
        )
    }
}

/// What a cache does on the trace: read, and insert on a miss.
trait Contender: Sync {
    /// Reads `key`; true on a hit (the value's first byte is read).
    fn get(&self, key: u64) -> bool;
    fn insert(&self, key: u64, value: &[u8]);
    /// Figures for `CACHE_BENCH_DEBUG`.
    fn debug(&self) -> String {
        String::new()
    }
}

type Fold = foldhash::fast::FixedState;

struct Ours(SyncCache<u64, [u8], Fold>);

impl Contender for Ours {
    fn get(&self, key: u64) -> bool {
        self.0.get(&key).is_some_and(|v| v[0] != 1)
    }
    fn insert(&self, key: u64, value: &[u8]) {
        self.0.insert(key, value).expect("value fits the budget");
    }
    fn debug(&self) -> String {
        format!("cache {:?}\nheap {}", self.0.stats(), self.0.heap().stats())
    }
}

struct Moka(moka::sync::Cache<u64, Arc<[u8]>, Fold>);

impl Contender for Moka {
    fn get(&self, key: u64) -> bool {
        self.0.get(&key).is_some_and(|v| v[0] != 1)
    }
    fn insert(&self, key: u64, value: &[u8]) {
        self.0.insert(key, Arc::from(value));
    }
}

#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<u64, Arc<[u8]>> for ByLen {
    fn weight(&self, _key: &u64, value: &Arc<[u8]>) -> u64 {
        value.len() as u64
    }
}

struct Quick(quick_cache::sync::Cache<u64, Arc<[u8]>, ByLen, Fold>);

impl Contender for Quick {
    fn get(&self, key: u64) -> bool {
        self.0.get(&key).is_some_and(|v| v[0] != 1)
    }
    fn insert(&self, key: u64, value: &[u8]) {
        self.0.insert(key, Arc::from(value));
    }
}

/// The result of one run, as the child prints it.
#[derive(Default, Clone)]
struct RunResult {
    baseline: usize,
    samples: Vec<(u64, usize)>,
    hits: u64,
    gets: u64,
    secs: f64,
}

/// The child: runs one contender with `threads` threads and prints
/// `baseline`, `sample` and `done` lines on stdout.
fn child(args: &Args, name: &str, threads: usize) {
    let value = vec![0x5Au8; MAX_VALUE];
    let baseline = rss();
    let budget = args.budget;
    let per_thread = args.ops / threads as u64;
    let sample = |ops: u64| println!("sample {ops} {}", rss());
    let start = Instant::now();
    let (hits, gets) = if name == "compact-heap" && threads == 1 {
        // The single-threaded cache, no lock.
        let mut cache: Cache<u64, [u8], Fold> =
            Cache::with_hasher(budget, Fold::default()).expect("budget > 0");
        let mut trace = Trace::new(1, args.keys, per_thread);
        let mut hits = 0;
        for i in 0..per_thread {
            let (key, size) = trace.next(i);
            if cache.get(&key).is_some_and(|v| v[0] != 1) {
                hits += 1;
            } else {
                cache
                    .insert(key, &value[..size])
                    .expect("value fits the budget");
            }
            if (i + 1).is_multiple_of(SAMPLE_EVERY) {
                sample(i + 1);
            }
        }
        if std::env::var_os("CACHE_BENCH_DEBUG").is_some() {
            eprintln!(
                "cache {:?}\nheap {}\nrss above baseline {}",
                cache.stats(),
                cache.heap().stats(),
                rss() - baseline
            );
        }
        (hits, per_thread)
    } else {
        let cache: Box<dyn Contender> = match name {
            "compact-heap" => Box::new(Ours(
                SyncCache::with_hasher(budget, Fold::default()).expect("budget > 0"),
            )),
            "moka" => Box::new(Moka(
                moka::sync::Cache::builder()
                    .max_capacity(budget as u64)
                    .weigher(|_k: &u64, v: &Arc<[u8]>| v.len().try_into().unwrap_or(u32::MAX))
                    .build_with_hasher(Fold::default()),
            )),
            "quick_cache" => Box::new(Quick(quick_cache::sync::Cache::with(
                budget / 2048,
                budget as u64,
                ByLen,
                Fold::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ))),
            other => {
                eprintln!("unknown contender {other}");
                usage()
            }
        };
        let done = std::sync::atomic::AtomicU64::new(0);
        let hits = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (cache, done, hits, value) = (&cache, &done, &hits, &value);
                s.spawn(move || {
                    let mut trace = Trace::new(1 + t as u64, args.keys, per_thread);
                    let mut my_hits = 0;
                    for i in 0..per_thread {
                        let (key, size) = trace.next(i);
                        if cache.get(key) {
                            my_hits += 1;
                        } else {
                            cache.insert(key, &value[..size]);
                        }
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n.is_multiple_of(SAMPLE_EVERY) {
                            sample(n);
                        }
                    }
                    hits.fetch_add(my_hits, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        if std::env::var_os("CACHE_BENCH_DEBUG").is_some() {
            eprintln!("{}\nrss above baseline {}", cache.debug(), rss() - baseline);
        }
        (hits.into_inner(), per_thread * threads as u64)
    };
    let secs = start.elapsed().as_secs_f64();
    println!("baseline {baseline}");
    println!("done {hits} {gets} {secs}");
}

fn parse_child(out: &str) -> RunResult {
    let mut r = RunResult::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["sample", ops, rss] => r.samples.push((ops.parse().unwrap(), rss.parse().unwrap())),
            ["baseline", b] => r.baseline = b.parse().unwrap(),
            ["done", hits, gets, secs] => {
                r.hits = hits.parse().unwrap();
                r.gets = gets.parse().unwrap();
                r.secs = secs.parse().unwrap();
            }
            _ => {}
        }
    }
    r.samples.sort_unstable();
    r
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--child") {
        let name = raw[1].clone();
        let threads: usize = raw[2].parse().expect("threads");
        child(&parse_args(&raw[3..]), &name, threads);
        return;
    }
    let args = parse_args(&raw);
    std::fs::create_dir_all(&args.out).expect("create the output directory");
    let me = std::env::current_exe().expect("own path");
    // Every round runs every contender once, so that a slow spell of this
    // shared machine hits all of them alike.
    let mut rounds: Vec<(String, usize, Vec<RunResult>)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        for &threads in &args.threads {
            for name in &args.contenders {
                eprintln!("round {}: {name} with {threads} thread(s)...", round + 1);
                let out = Command::new(&me)
                    .arg("--child")
                    .arg(name)
                    .arg(threads.to_string())
                    .args(&raw)
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run the child");
                assert!(out.status.success(), "{name} failed");
                let r = parse_child(&String::from_utf8_lossy(&out.stdout));
                match rounds
                    .iter_mut()
                    .find(|(n, t, _)| n == name && *t == threads)
                {
                    Some((_, _, rs)) => rs.push(r),
                    None => rounds.push((name.clone(), threads, vec![r])),
                }
            }
        }
    }
    let runs = summarize(&args, rounds);
    let report = report(&args, &runs);
    print!("{report}");
    std::fs::write(args.out.join("results.md"), &report).expect("write results.md");
    let mut csv = String::from("contender,threads,ops,rss_above_baseline\n");
    for (name, threads, sum) in &runs {
        let r = &sum.worst;
        for &(ops, rss) in &r.samples {
            let _ = writeln!(
                csv,
                "{name},{threads},{ops},{}",
                rss.saturating_sub(r.baseline)
            );
        }
    }
    std::fs::write(args.out.join("samples.csv"), csv).expect("write samples.csv");
    if let Some(&t) = args.threads.first() {
        chart(&args, &runs, t).expect("draw the chart");
    }
}

/// What the table shows of a contender's rounds: its worst memory (the
/// round with the highest peak, whose samples are charted) and its best
/// speed (the machine is shared: a slow round says more about it).
struct Summary {
    /// The round with the highest peak RSS.
    worst: RunResult,
    /// Operations per second of every round.
    ops: Vec<f64>,
    /// Mean hit ratio over the rounds.
    hit_ratio: f64,
}

/// Peak RSS above the baseline / budget, over a run's samples.
fn peak(r: &RunResult, budget: f64) -> f64 {
    r.samples
        .iter()
        .map(|&(_, rss)| rss.saturating_sub(r.baseline) as f64 / budget)
        .fold(0.0, f64::max)
}

fn summarize(
    args: &Args,
    rounds: Vec<(String, usize, Vec<RunResult>)>,
) -> Vec<(String, usize, Summary)> {
    let budget = args.budget as f64;
    rounds
        .into_iter()
        .map(|(name, threads, rs)| {
            let ops = rs
                .iter()
                .map(|r| r.gets as f64 / r.secs.max(1e-9))
                .collect();
            let hit_ratio = rs
                .iter()
                .map(|r| r.hits as f64 / r.gets.max(1) as f64)
                .sum::<f64>()
                / rs.len() as f64;
            let worst = rs
                .into_iter()
                .max_by(|a, b| peak(a, budget).total_cmp(&peak(b, budget)))
                .expect("at least one round");
            (
                name,
                threads,
                Summary {
                    worst,
                    ops,
                    hit_ratio,
                },
            )
        })
        .collect()
}

fn report(args: &Args, runs: &[(String, usize, Summary)]) -> String {
    let budget = args.budget as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "budget {} MiB, {} ops, {} keys (Zipf 0.99), value median 512 B → 8 KiB → 512 B; \
         {} round(s): memory of the worst round, ops/s of the best (all rounds in brackets)\n",
        args.budget >> 20,
        args.ops,
        args.keys,
        args.rounds.max(1)
    );
    let _ = writeln!(
        s,
        "| cache | threads | peak RSS / budget | final RSS / budget | hit ratio | ops/s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (name, threads, sum) in runs {
        let r = &sum.worst;
        let last = r.samples.last().map_or(0.0, |&(_, rss)| {
            rss.saturating_sub(r.baseline) as f64 / budget
        });
        let best = sum.ops.iter().copied().fold(0.0, f64::max);
        let all: Vec<String> = sum.ops.iter().map(|o| format!("{o:.0}")).collect();
        let _ = writeln!(
            s,
            "| {name} | {threads} | {:.3} | {last:.3} | {:.2}% | {best:.0} ({}) |",
            peak(r, budget),
            100.0 * sum.hit_ratio,
            all.join(", ")
        );
    }
    s
}

fn chart(
    args: &Args,
    runs: &[(String, usize, Summary)],
    threads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.out.join("rss.svg");
    let budget = args.budget as f64;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .filter(|(_, t, _)| *t == threads)
        .map(|(name, _, sum)| {
            let r = &sum.worst;
            let last = r.samples.last().map_or(1, |s| s.0).max(1) as f64;
            let pts = r
                .samples
                .iter()
                .map(|&(ops, rss)| {
                    (
                        100.0 * ops as f64 / last,
                        rss.saturating_sub(r.baseline) as f64 / budget,
                    )
                })
                .collect();
            (name.clone(), pts)
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(1.2f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(&path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Cache RSS / byte budget ({} MiB), drifting value sizes, {threads} thread(s)",
                args.budget >> 20
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("progress through the trace (%)")
        .y_desc("RSS above baseline / budget")
        .draw()?;
    for (level, label) in [(1.0, "budget"), (1.1, "1.10 × budget")] {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, level), (100.0, level)],
                BLACK.mix(0.5).stroke_width(1),
            ))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
