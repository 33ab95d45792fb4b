//! Head to head: compact-server against redis-server, driven by the same
//! redis-benchmark phases, on loopback.
//!
//! Phases: SET over a fixed key space with values of 100 B, then 1000 B,
//! then 10 000 B, then 300 B, then a random DEL phase, with a GET phase after
//! each; every phase runs without pipelining and with `-P 16`, `--rounds`
//! times, alternating between the servers (the best ops/s counts), except
//! DEL, which runs once (a second round would delete what the first left). After each phase, once both
//! servers are idle (1.2 s later): each server's RSS (from /proc),
//! `used_memory` (from INFO memory), and the ops/s (from
//! `redis-benchmark --csv`).
//!
//! ```text
//! cargo build --release -p compact-server
//! cargo run --release -p compact-server --bin h2h                  # 512 MiB, 500 k keys: minutes
//! cargo run --release -p compact-server --bin h2h -- --quick       # 32 MiB, 20 k keys: seconds
//! ```
//! Installs Redis's Debian packages if `redis-server` is missing (as root).
//! Writes target/h2h/results.md, results.csv and memory.svg.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plotters::prelude::*;

/// The pause after a phase before memory is read.
const SETTLE: Duration = Duration::from_millis(1200);

#[path = "../proc.rs"]
mod proc;

struct Args {
    /// Each phase runs this many times on each server; the best ops/s counts
    /// (the machine is shared and noisy).
    rounds: usize,
    maxmemory_mib: usize,
    keys: usize,
    requests: usize,
    out: PathBuf,
}

fn usage() -> ! {
    eprintln!("usage: h2h [--quick] [--rounds N (3)] [--maxmemory-mib N] [--keys N] [--requests N] [--out DIR]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: 3,
        maxmemory_mib: 512,
        keys: 500_000,
        requests: 500_000,
        out: PathBuf::from("target/h2h"),
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--quick" => {
                a.maxmemory_mib = 32;
                a.keys = 20_000;
                a.requests = 40_000;
            }
            "--rounds" => a.rounds = value().parse().unwrap_or_else(|_| usage()),
            "--maxmemory-mib" => a.maxmemory_mib = value().parse().unwrap_or_else(|_| usage()),
            "--keys" => a.keys = value().parse().unwrap_or_else(|_| usage()),
            "--requests" => a.requests = value().parse().unwrap_or_else(|_| usage()),
            "--out" => a.out = PathBuf::from(value()),
            "--help" | "-h" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    a
}

/// A server under test, stopped when dropped.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss(&self) -> usize {
        proc::rss_of(&self.child.id().to_string())
    }

    /// `used_memory` from `INFO memory`, over a plain socket.
    fn used_memory(&self) -> usize {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect for INFO");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut header = String::new();
        r.read_line(&mut header).unwrap();
        let len: usize = header
            .trim()
            .trim_start_matches('$')
            .parse()
            .expect("bulk reply");
        let mut body = vec![0; len + 2];
        r.read_exact(&mut body).unwrap();
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory in INFO")
    }
}

/// Waits until `port` accepts connections (or panics after 10 s).
fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ensure_redis() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
        && Command::new("redis-benchmark")
            .arg("--version")
            .output()
            .is_ok()
    {
        return;
    }
    eprintln!("installing redis-server and redis-tools (Debian packages)...");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "redis-server", "redis-tools"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "could not install redis-server; install it and run again"
    );
}

fn start_servers(args: &Args) -> (Server, Server) {
    let maxmemory = format!("{}mb", args.maxmemory_mib);
    let redis = Command::new("redis-server")
        .args([
            "--port",
            "6391",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--maxmemory",
            &maxmemory,
            "--maxmemory-policy",
            "allkeys-lru",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let ours = std::env::current_exe()
        .expect("own path")
        .with_file_name("compact-server");
    assert!(
        ours.exists(),
        "{} is missing: cargo build --release -p compact-server",
        ours.display()
    );
    let compact = Command::new(ours)
        .args(["--port", "6392", "--maxmemory", &maxmemory])
        .stdout(Stdio::null())
        .spawn()
        .expect("start compact-server");
    let redis = Server {
        name: "redis",
        child: redis,
        port: 6391,
    };
    let compact = Server {
        name: "compact-server",
        child: compact,
        port: 6392,
    };
    wait_for(redis.port);
    wait_for(compact.port);
    (redis, compact)
}

/// One measurement: a phase on a server.
struct Row {
    phase: String,
    server: &'static str,
    rps: f64,
    rss: usize,
    used: usize,
}

/// Runs redis-benchmark and returns its requests per second.
fn bench(port: u16, args: &Args, extra: &[String]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--csv", "-q"])
        .args([
            "-r",
            &args.keys.to_string(),
            "-n",
            &args.requests.to_string(),
        ])
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no rps in redis-benchmark output: {text}"))
}

fn main() {
    let args = parse_args();
    ensure_redis();
    std::fs::create_dir_all(&args.out).expect("output directory");
    let (redis, compact) = start_servers(&args);
    let phases: Vec<(String, Vec<String>)> = {
        let set = |d: usize| vec!["-t".into(), "set".into(), "-d".into(), d.to_string()];
        let get = || vec!["-t".to_string(), "get".to_string()];
        let del = || vec!["DEL".to_string(), "key:__rand_int__".to_string()];
        vec![
            ("SET 100 B".into(), set(100)),
            ("GET".into(), get()),
            ("SET 1000 B".into(), set(1000)),
            ("GET".into(), get()),
            ("SET 10000 B".into(), set(10_000)),
            ("GET".into(), get()),
            ("SET 300 B".into(), set(300)),
            ("GET".into(), get()),
            ("DEL random".into(), del()),
            ("GET".into(), get()),
        ]
    };
    let mut rows = Vec::new();
    for (i, (name, extra)) in phases.iter().enumerate() {
        for pipeline in [1usize, 16] {
            let mut extra = extra.clone();
            if pipeline > 1 {
                extra.splice(0..0, ["-P".to_string(), pipeline.to_string()]);
            }
            let phase = format!(
                "{}. {name}{}",
                i + 1,
                if pipeline > 1 { " -P 16" } else { "" }
            );
            // DEL runs once: a second round would delete what the first left.
            let rounds = if name.starts_with("DEL") {
                1
            } else {
                args.rounds.max(1)
            };
            // Rounds alternate between the servers (Redis, ours, Redis, …),
            // so that a slow spell of this shared machine falls on both.
            let mut rps = [0.0f64; 2];
            for _ in 0..rounds {
                for (server, rps) in [&redis, &compact].into_iter().zip(&mut rps) {
                    *rps = rps.max(bench(server.port, &args, &extra));
                }
            }
            // Memory is read once both servers are idle: what a server gives
            // back when its clients stop (our idle trim, at most once a
            // second; jemalloc's purging in Redis) counts as given back.
            std::thread::sleep(SETTLE);
            for (server, rps) in [&redis, &compact].into_iter().zip(rps) {
                let row = Row {
                    phase: phase.clone(),
                    server: server.name,
                    rps,
                    rss: server.rss(),
                    used: server.used_memory(),
                };
                eprintln!(
                    "{:<22} {:<15} {:>10.0} ops/s  RSS {:>7.1} MiB  used {:>7.1} MiB",
                    row.phase,
                    row.server,
                    row.rps,
                    row.rss as f64 / 1048576.0,
                    row.used as f64 / 1048576.0
                );
                rows.push(row);
            }
        }
    }
    drop((redis, compact));
    let report = report(&args, &rows);
    print!("{report}");
    std::fs::write(args.out.join("results.md"), &report).expect("write results.md");
    let mut csv = String::from("phase,server,ops_per_sec,rss,used_memory\n");
    for r in &rows {
        let _ = writeln!(
            csv,
            "{},{},{:.0},{},{}",
            r.phase, r.server, r.rps, r.rss, r.used
        );
    }
    std::fs::write(args.out.join("results.csv"), csv).expect("write results.csv");
    chart(&args, &rows).expect("draw the chart");
}

fn report(args: &Args, rows: &[Row]) -> String {
    let mib = |b: usize| b as f64 / 1048576.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "maxmemory {} MiB, {} keys, {} requests a phase (best of {}), 50 clients (redis-benchmark's default)\n",
        args.maxmemory_mib, args.keys, args.requests, args.rounds
    );
    let _ = writeln!(
        s,
        "| phase | Redis ops/s | ours ops/s | ours / Redis | Redis RSS / used | ours RSS / used | Redis used MiB | ours used MiB |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for pair in rows.chunks(2) {
        let (r, c) = (&pair[0], &pair[1]);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            r.phase,
            r.rps,
            c.rps,
            c.rps / r.rps,
            r.rss as f64 / r.used.max(1) as f64,
            c.rss as f64 / c.used.max(1) as f64,
            mib(r.used),
            mib(c.used)
        );
    }
    s
}

fn chart(args: &Args, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.out.join("memory.svg");
    let phases = rows.len() / 2;
    let top = rows
        .iter()
        .map(|r| r.rss.max(r.used) as f64 / 1048576.0)
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(&path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "RSS and used_memory after each redis-benchmark phase (maxmemory {} MiB)",
                args.maxmemory_mib
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(phases as f64 - 0.5).max(1.0), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("phase (SET 100 B, GET, SET 1000 B, GET, SET 10 000 B, GET, SET 300 B, GET, DEL, GET; each without and with -P 16)")
        .y_desc("MiB")
        .draw()?;
    for (i, server) in ["redis", "compact-server"].into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts = |f: fn(&Row) -> usize| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.server == server)
                .enumerate()
                .map(|(k, r)| (k as f64, f(r) as f64 / 1048576.0))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(pts(|r| r.rss), color.stroke_width(3)))?
            .label(format!("{server} RSS"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(LineSeries::new(
                pts(|r| r.used),
                color.mix(0.5).stroke_width(1),
            ))?
            .label(format!("{server} used_memory"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
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
