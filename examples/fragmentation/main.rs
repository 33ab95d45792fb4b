//! Fragmentation, shown both ways: the same programs with values in `Box<[u8]>`
//! (the system allocator) and in a compact-heap `Heap`.
//!
//! 1. The seed loop: allocate a 1 MiB buffer, do some work, allocate a small
//!    thing, allocate a new 1 MiB buffer, free the first, free the small thing;
//!    100 000 times, with `compact()` every 10 000 iterations.
//! 2. A drifting cache: fixed keys, log-normal value sizes (16 B – 64 KiB)
//!    whose median climbs over four phases and falls in a fifth, about
//!    256 MiB live at the top, random replacement, `compact()` after each phase.
//!
//! Each run is its own process, so its RSS is its own. Prints a table, checks
//! compact-heap's footprint, and writes a chart to target/fragmentation/.
//!
//! ```text
//! cargo run --release --example fragmentation            # about a minute
//! cargo run --release --example fragmentation -- --quick # seconds: a smoke test
//! ```
//!
//! compact-heap runs twice: as configured by default (paced compaction) with
//! `compact()` at phase ends, and left alone ("paced": no call at all).

// The workloads, stores and chart are shared with the footprint harness
// (footprint/, not published), which includes these files from here, so the
// published crate's example builds on its own.
#[allow(dead_code)]
mod chart;
#[allow(dead_code)]
mod stores;
#[allow(dead_code)]
mod workloads;

use std::path::PathBuf;
use std::process::Command;

use stores::{BoxStore, Compaction, HeapStore};
use workloads::{Report, Store, Workload};

const MIB: f64 = 1048576.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(
            &args[2],
            &args[3],
            args[4].parse().expect("scale"),
            args[5].parse().expect("iterations"),
        );
    }
    let mut quick = false;
    for a in &args[1..] {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("usage: fragmentation [--quick]\n\nRuns the seed loop and a drifting cache on the system allocator and on compact-heap,\nprints RSS / live for each, checks compact-heap's footprint, and writes\ntarget/fragmentation/drifting-cache.svg. --quick: small sizes, seconds.");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\nusage: fragmentation [--quick]");
                std::process::exit(2);
            }
        }
    }
    let (scale, iterations) = if quick {
        (32usize << 20, 5_000u64)
    } else {
        (256 << 20, 100_000)
    };

    let mut ok = true;
    let mut table = String::from("| workload | contender | peak RSS / live | end RSS / live | ops/s |\n|---|---|---|---|---|\n");
    let mut drift_runs = Vec::new();
    for workload in ["seed", "drift"] {
        for contender in ["system", "compact-heap", "compact-heap-paced"] {
            eprintln!("running {workload} on {contender} ...");
            let r = spawn(workload, contender, scale, iterations);
            table += &format!(
                "| {workload} | {contender} | {:.2} | {:.2} | {:.0} |\n",
                r.peak_ratio(),
                r.final_ratio(),
                r.ops_per_sec()
            );
            match (workload, contender) {
                ("seed", "system") => {}
                ("seed", _) => ok &= check_seed(&r),
                ("drift", "compact-heap") => ok &= check_drift(&r),
                ("drift", "compact-heap-paced") => report_paced_drift(&r),
                _ => {}
            }
            if workload == "drift" {
                drift_runs.push((contender.to_string(), r));
            }
        }
    }
    println!("\n{table}");
    println!("(RSS above the process's baseline, divided by live bytes; 1.00 is perfect.)");

    let dir = PathBuf::from("target/fragmentation");
    std::fs::create_dir_all(&dir).expect("create target/fragmentation");
    let path = dir.join("drifting-cache.svg");
    match chart::rss_chart(&path, "Drifting cache: RSS over time", &drift_runs) {
        Ok(()) => println!(
            "chart: {}",
            std::fs::canonicalize(&path).unwrap_or(path).display()
        ),
        Err(e) => println!("chart not written: {e}"),
    }
    if !ok {
        eprintln!("compact-heap missed a footprint target (see FAIL above)");
        std::process::exit(1);
    }
}

/// Runs one workload on one contender in a child process.
fn spawn(workload: &str, contender: &str, scale: usize, iterations: u64) -> Report {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .args([
            "--child",
            workload,
            contender,
            &scale.to_string(),
            &iterations.to_string(),
        ])
        .output()
        .expect("spawn a child");
    assert!(
        out.status.success(),
        "child {workload}/{contender} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Report::from_text(&String::from_utf8_lossy(&out.stdout)).expect("child report")
}

fn child(workload: &str, contender: &str, scale: usize, iterations: u64) {
    let w = if workload == "seed" {
        Workload::SeedLoop { iterations }
    } else {
        Workload::DriftingCache
    };
    let mut store: Box<dyn Store> = match contender {
        "system" => Box::<BoxStore>::default(),
        "compact-heap-paced" => Box::new(HeapStore::new(Compaction::Paced)),
        _ => Box::new(HeapStore::new(Compaction::Full)),
    };
    let report = workloads::run(&w, store.as_mut(), scale, true);
    print!("{}", report.to_text());
}

/// Seed loop: held bytes under 4 MiB throughout, and RSS flat (< 1 MiB growth).
fn check_seed(r: &Report) -> bool {
    println!("\nseed loop on compact-heap, every 10 000 iterations:");
    println!(
        "  {:>10} {:>12} {:>12} {:>12}",
        "iteration", "live MiB", "held MiB", "RSS MiB"
    );
    // One checkpoint every 10 000 iterations (4 operations each), then the end.
    for s in &r.phase_ends {
        println!(
            "  {:>10} {:>12.2} {:>12.2} {:>12.2}",
            s.ops / 4,
            s.live as f64 / MIB,
            s.held.unwrap_or(0) as f64 / MIB,
            s.rss as f64 / MIB
        );
    }
    let max_held = r
        .samples
        .iter()
        .chain(&r.phase_ends)
        .filter_map(|s| s.held)
        .max()
        .unwrap_or(0);
    let first = r.phase_ends.first().map_or(0, |s| s.rss);
    let growth = r
        .phase_ends
        .iter()
        .map(|s| s.rss)
        .max()
        .unwrap_or(0)
        .saturating_sub(first);
    let held_ok = max_held < 4 << 20;
    let flat = growth < 1 << 20;
    println!(
        "  {} max held {:.2} MiB (< 4 MiB)",
        verdict(held_ok),
        max_held as f64 / MIB
    );
    println!(
        "  {} RSS growth after the first checkpoint {:.2} MiB (< 1 MiB)",
        verdict(flat),
        growth as f64 / MIB
    );
    held_ok && flat
}

/// Drifting cache: after the last compaction, held ≤ 1.10 × live, and RSS agrees.
fn check_drift(r: &Report) -> bool {
    let end = r.phase_ends.last().expect("phases");
    let held = end.held.unwrap_or(0);
    let ratio = held as f64 / end.live as f64;
    let rss = end.rss.saturating_sub(r.baseline_rss);
    let meta = r.metadata.unwrap_or(0);
    println!("\ndrifting cache on compact-heap, after the last compact():");
    println!(
        "  live {:.1} MiB, held {:.1} MiB, metadata {:.1} MiB, RSS above baseline {:.1} MiB",
        end.live as f64 / MIB,
        held as f64 / MIB,
        meta as f64 / MIB,
        rss as f64 / MIB
    );
    let ok = ratio <= 1.10;
    println!("  {} held / live = {ratio:.3} (<= 1.10)", verdict(ok));
    println!(
        "  RSS / (held + metadata) = {:.3} (the OS agrees with the heap's count)",
        rss as f64 / (held + meta) as f64
    );
    ok
}

/// Drifting cache left alone (paced compaction only): how far RSS strayed
/// from live data at any sample. Issue 8's target is 1.15 × (live + 4 MiB);
/// reported, not enforced, while it is not met everywhere.
fn report_paced_drift(r: &Report) {
    let worst = r.worst_sample(4 << 20);
    println!("\ndrifting cache on compact-heap left alone (paced compaction, no compact() call):");
    println!(
        "  {} worst sample RSS / (live + 4 MiB) = {worst:.3} (target <= 1.15)",
        if worst <= 1.15 { "PASS" } else { "MISS" }
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
