//! `compact-server`: a Redis-protocol (RESP2) cache server whose values live
//! in compact-heap's `Cache`, so its memory stays at its `maxmemory` however
//! value sizes drift.
//!
//! ```text
//! cargo run --release -p compact-server -- --port 6390 --maxmemory 1gb
//! ```
//! Commands: GET, SET (EX, PX, NX, XX), SETEX, PSETEX, DEL, EXISTS, INCR/DECR(BY), MGET,
//! MSET, PING, ECHO, DBSIZE, FLUSHALL, INFO (memory figures as Redis defines
//! them), CONFIG GET/SET maxmemory, SELECT 0, QUIT; anything else gets an error.

mod key;
mod proc;
mod resp;
mod server;
mod store;

use std::net::SocketAddr;

fn usage() -> ! {
    eprintln!("usage: compact-server [--port N (6390; 0: any)] [--bind ADDR (127.0.0.1)] [--maxmemory SIZE (1gb)]");
    std::process::exit(2)
}

fn main() {
    let (mut port, mut bind, mut maxmemory) = (6390u16, "127.0.0.1".to_string(), 1usize << 30);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => port = value().parse().unwrap_or_else(|_| usage()),
            "--bind" => bind = value(),
            "--maxmemory" => {
                maxmemory = store::parse_memory(&value())
                    .filter(|&m| m > 0)
                    .unwrap_or_else(|| usage())
            }
            "--help" | "-h" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    let addr: SocketAddr = format!("{bind}:{port}").parse().unwrap_or_else(|_| usage());
    malloc_big_blocks_apart();
    let store = store::Store::new(maxmemory).unwrap_or_else(|e| {
        eprintln!("compact-server: {e}");
        std::process::exit(1)
    });
    let mut server = server::Server::bind(addr, store).unwrap_or_else(|e| {
        eprintln!("compact-server: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    // The address on stdout, first line: tests and harnesses that asked for
    // port 0 read it here.
    println!("listening on {}", server.local_addr().expect("bound"));
    if let Err(e) = server.run() {
        eprintln!("compact-server: {e}");
        std::process::exit(1);
    }
}

/// Makes glibc map every block of 128 KiB or more on its own, and give the
/// top of its heap back from 128 KiB, for good: by default it raises both
/// thresholds each time a big block is freed, after which the index's
/// tables and the buffers of clients that pipelined big values come from
/// its heap, where what they leave when freed stays resident among small
/// blocks (RSS that `used_memory` no longer counts). A process-wide
/// setting, so the server's `main` makes it, not the library.
fn malloc_big_blocks_apart() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tunables; called before any
    // thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}
