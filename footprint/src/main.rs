//! The footprint harness: replays workloads that fragment malloc under
//! glibc, jemalloc, mimalloc and compact-heap (compact() at phase ends, its
//! paced compaction alone, explicit steps only, and no compaction), each in
//! its own process so RSS is honest.
//!
//! ```text
//! cargo run --release -p footprint                      # 1 GiB live: long
//! cargo run --release -p footprint -- --scale 64        # 64 MiB live: minutes
//! cargo run --release -p footprint -- --scale 8 --seed-iterations 2000 --only W3,seed
//! ```
//! Writes target/footprint/results.md, results.csv and one SVG chart per workload.

mod alloc_switch;
// Shared with the crate's fragmentation example, which is published; this
// harness is not, so the files live there.
#[path = "../../examples/fragmentation/chart.rs"]
mod chart;
#[path = "../../examples/fragmentation/stores.rs"]
mod stores;
#[path = "../../examples/fragmentation/workloads.rs"]
mod workloads;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use stores::{BoxStore, Compaction, HeapStore};
use workloads::{Report, Store, Workload};

#[global_allocator]
static ALLOCATOR: alloc_switch::Switch = alloc_switch::Switch;

/// Bytes per step of the incremental contender, per `workloads::TICK` operations.
const STEP_BUDGET: usize = 256 << 10;

const CONTENDERS: [&str; 7] = [
    "glibc",
    "jemalloc",
    "mimalloc",
    "compact-heap",
    "compact-heap-paced",
    "compact-heap-steps",
    "compact-heap-off",
];

struct Args {
    scale_mib: usize,
    seed_iterations: u64,
    only: Option<Vec<String>>,
    contenders: Vec<String>,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        scale_mib: 1024,
        seed_iterations: 100_000,
        only: None,
        contenders: CONTENDERS.iter().map(|c| c.to_string()).collect(),
        out: PathBuf::from("target/footprint"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--scale" => {
                a.scale_mib = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--scale takes MiB"))
            }
            "--seed-iterations" => {
                a.seed_iterations = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--seed-iterations takes a number"))
            }
            "--only" => a.only = Some(value().split(',').map(str::to_string).collect()),
            "--contenders" => a.contenders = value().split(',').map(str::to_string).collect(),
            "--out" => a.out = PathBuf::from(value()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: footprint [--scale MiB] [--seed-iterations N] [--only W1,W3,seed,drift] [--contenders {}] [--out DIR]", CONTENDERS.join(","));
    std::process::exit(2)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--worker") {
        return worker(&argv[2..]);
    }
    let args = parse_args();
    let scale = args.scale_mib << 20;
    let workloads: Vec<Workload> = Workload::all(args.seed_iterations)
        .into_iter()
        .filter(|w| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == w.name()))
        })
        .collect();
    std::fs::create_dir_all(&args.out).expect("create the output folder");

    let mut md = format!(
        "Footprint at {} MiB live target, seed loop {} iterations. RSS is above each process's baseline; ratios are RSS / live bytes.\n\n\
         | workload | contender | peak RSS / live | worst sample RSS / (live + 4 MiB) | RSS / live at phase ends | held / live at end | ops/s | moved MiB | compacting s |\n|---|---|---|---|---|---|---|---|---|\n",
        args.scale_mib, args.seed_iterations
    );
    let mut csv = String::from("workload,contender,peak_ratio,worst_sample_ratio_4mib,final_ratio,phase_ratios,ops_per_sec,bytes_moved,compact_seconds,peak_rss,peak_live\n");
    for w in &workloads {
        let mut runs = Vec::new();
        for c in &args.contenders {
            eprintln!("{} on {c}:", w.name());
            let r = spawn(w.name(), c, scale, args.seed_iterations);
            let phases: Vec<String> = r
                .phase_ends
                .iter()
                .map(|s| format!("{:.2}", ratio(s.rss.saturating_sub(r.baseline_rss), s.live)))
                .collect();
            let phases = if phases.len() > 4 {
                format!(
                    "{} … {}",
                    phases[..2].join(" "),
                    phases[phases.len() - 2..].join(" ")
                )
            } else {
                phases.join(" ")
            };
            let held = r
                .phase_ends
                .last()
                .and_then(|s| s.held.map(|h| format!("{:.2}", ratio(h, s.live))))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                md,
                "| {} | {c} | {:.2} | {:.2} | {phases} | {held} | {:.0} | {:.1} | {:.2} |",
                w.name(),
                r.peak_ratio(),
                r.worst_sample(4 << 20),
                r.ops_per_sec(),
                r.bytes_moved as f64 / 1048576.0,
                r.compact_time.as_secs_f64()
            );
            let all: Vec<String> = r
                .phase_ends
                .iter()
                .map(|s| format!("{:.3}", ratio(s.rss.saturating_sub(r.baseline_rss), s.live)))
                .collect();
            let _ = writeln!(
                csv,
                "{},{c},{:.3},{:.3},{:.3},{},{:.0},{},{:.3},{},{}",
                w.name(),
                r.peak_ratio(),
                r.worst_sample(4 << 20),
                r.final_ratio(),
                all.join(" "),
                r.ops_per_sec(),
                r.bytes_moved,
                r.compact_time.as_secs_f64(),
                r.peak_rss,
                r.peak_live
            );
            runs.push((c.clone(), r));
        }
        let svg = args.out.join(format!("{}.svg", w.name()));
        if let Err(e) = chart::rss_chart(&svg, &format!("{}: RSS over the run", w.name()), &runs) {
            eprintln!("chart {} not written: {e}", svg.display());
        }
    }
    println!("{md}");
    std::fs::write(args.out.join("results.md"), &md).expect("write results.md");
    std::fs::write(args.out.join("results.csv"), &csv).expect("write results.csv");
    eprintln!(
        "wrote {}/results.md, results.csv and one SVG per workload",
        args.out.display()
    );
}

fn ratio(a: usize, b: usize) -> f64 {
    a as f64 / b.max(1) as f64
}

/// Runs one workload on one contender in a fresh process.
fn spawn(workload: &str, contender: &str, scale: usize, seed_iterations: u64) -> Report {
    let allocator = match contender {
        "jemalloc" | "mimalloc" => contender,
        _ => "glibc",
    };
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--worker",
            workload,
            contender,
            &scale.to_string(),
            &seed_iterations.to_string(),
        ])
        .env("FOOTPRINT_ALLOCATOR", allocator)
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn a worker");
    assert!(out.status.success(), "worker {workload}/{contender} failed");
    Report::from_text(&String::from_utf8_lossy(&out.stdout)).expect("worker report")
}

fn worker(args: &[String]) {
    let (workload, contender) = (&args[0], args[1].as_str());
    let scale: usize = args[2].parse().expect("scale");
    let seed_iterations: u64 = args[3].parse().expect("iterations");
    let w = Workload::all(seed_iterations)
        .into_iter()
        .find(|w| w.name() == workload)
        .expect("known workload");
    let mut store: Box<dyn Store> = match contender {
        "compact-heap" => Box::new(HeapStore::new(Compaction::Full)),
        "compact-heap-paced" => Box::new(HeapStore::new(Compaction::Paced)),
        "compact-heap-steps" => Box::new(HeapStore::new(Compaction::Steps(STEP_BUDGET))),
        "compact-heap-off" => Box::new(HeapStore::new(Compaction::Off)),
        _ => Box::<BoxStore>::default(),
    };
    eprintln!("  [{contender}: allocator {}]", alloc_switch::name());
    let report = workloads::run(&w, store.as_mut(), scale, true);
    print!("{}", report.to_text());
}
