//! The keyspace: keys to values in a compact-heap `Cache`, with expiry
//! times, and the commands that read and change it.
//!
//! A value is stored in the heap as its bytes alone. The keys that have an
//! expiry time (milliseconds since the Unix epoch) are in a side map, so
//! that only they pay for it; an expired key is removed when a command
//! reaches it (no background expiry). The side map may keep the time of a
//! key the cache has evicted until that key is written or read again.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compact_heap::{Cache, CacheError};

use crate::key::Key;
use crate::proc::rss;
use crate::resp::Reply;

/// The keyspace and its memory settings.
pub struct Store {
    /// Short keys are inline, longer ones shared: the index keeps two
    /// copies of each (see [`Key`]).
    cache: Cache<Key, [u8], foldhash::fast::RandomState>,
    maxmemory: usize,
    /// Bytes of connection buffers, counted in `used_memory` (set by the server).
    pub buffer_bytes: usize,
    /// Expiry times of the keys that have one.
    expiry: HashMap<Key, u64, foldhash::fast::RandomState>,
    /// Commands since malloc was last asked to give back free pages, and
    /// when that was.
    since_trim: usize,
    trimmed_at: Instant,
    /// Commands since the last periodic look, and the index's and buffers'
    /// size then (see `maybe_trim`).
    since_check: usize,
    index_at_check: usize,
    scratch: Vec<u8>,
}

/// The shortest time between two trims of malloc when the server goes idle.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The part of `maxmemory` left to the cache: the rest is for connection
/// buffers and the server's own small structures.
fn cache_budget(maxmemory: usize) -> usize {
    (maxmemory - maxmemory / 32).max(1)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses a memory size as Redis does: a number with an optional unit
/// (`b`, `k`/`kb`, `m`/`mb`, `g`/`gb`; `k` = 1000, `kb` = 1024).
pub fn parse_memory(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: usize = num.parse().ok()?;
    let mul: usize = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// What the connection should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Reply, then close (QUIT).
    Close,
}

impl Store {
    /// A keyspace of at most `maxmemory` bytes.
    pub fn new(maxmemory: usize) -> Result<Store, CacheError> {
        Ok(Store {
            cache: Cache::with_hasher(cache_budget(maxmemory), Default::default())?
                .with_key_weigher(Key::heap_bytes)
                // Clients replace values with others of their size: whole
                // lines freed are lines the next value fits.
                .with_line_align(512),
            maxmemory,
            buffer_bytes: 0,
            expiry: HashMap::default(),
            since_trim: 0,
            trimmed_at: Instant::now(),
            since_check: 0,
            index_at_check: 0,
            scratch: Vec::new(),
        })
    }

    /// Bytes the server holds for data, as Redis's `used_memory` counts its
    /// allocator's: the heap's mappings and bookkeeping, the cache's index,
    /// and the connection buffers.
    pub fn used_memory(&self) -> usize {
        let heap = self.cache.heap().stats();
        // (Its keys are the cache's, counted there.)
        let expiry = self.expiry.capacity() * (std::mem::size_of::<(Key, u64)>() + 1);
        heap.held_bytes
            + heap.metadata_bytes
            + self.cache.stats().index_bytes
            + self.buffer_bytes
            + expiry
    }

    /// Whether `key` has expired; if so its value is removed.
    fn expired(&mut self, key: &[u8]) -> bool {
        if self.expiry.is_empty() {
            return false;
        }
        match self.expiry.get(key) {
            Some(&deadline) if now_ms() >= deadline => {
                self.expiry.remove(key);
                self.cache.remove(key);
                true
            }
            _ => false,
        }
    }

    /// The value of `key` if it has one that has not expired, copied out.
    fn read(&mut self, key: &[u8]) -> Option<&[u8]> {
        if self.expired(key) {
            return None;
        }
        let v = self.cache.get(key)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&v);
        drop(v);
        Some(&self.scratch)
    }

    /// Replies with `key`'s value (a bulk string straight from the heap) or nil.
    fn reply_value(&mut self, key: &[u8], r: &mut Reply<'_>) {
        if self.expired(key) {
            return r.nil();
        }
        match self.cache.get(key) {
            Some(v) => r.bulk(&v),
            None => r.nil(),
        }
    }

    /// Whether `key` has a live value (an expired one is removed).
    fn exists(&mut self, key: &[u8]) -> bool {
        !self.expired(key) && self.cache.contains_key(key)
    }

    /// Stores `value` under `key`, with an expiry time (0: none).
    fn write(&mut self, key: &[u8], value: &[u8], deadline: u64) -> Result<(), CacheError> {
        if deadline == 0 {
            if !self.expiry.is_empty() {
                self.expiry.remove(key);
            }
            // A new value for a key the cache has: no key to allocate.
            if self.cache.replace(key, value)? {
                return Ok(());
            }
        }
        let key = Key::new(key);
        if deadline != 0 {
            self.expiry.insert(key.clone(), deadline);
        }
        self.cache.insert(key, value)
    }

    /// Removes `key`. Returns whether it had a live value.
    fn delete(&mut self, key: &[u8]) -> bool {
        let live = !self.expired(key);
        if !self.expiry.is_empty() {
            self.expiry.remove(key);
        }
        self.cache.remove(key) && live
    }

    /// Every 100 000 commands: if what the server takes from malloc (the
    /// index: hash map, queues, long keys; and the connection buffers)
    /// shrank by a tenth since the last look, asks malloc to give its free
    /// pages back: glibc keeps big freed blocks, such as the buffers of
    /// clients that pipelined big values and left. The values are in the
    /// heap, which gives memory back by itself.
    fn maybe_trim(&mut self) {
        self.since_trim += 1;
        self.since_check += 1;
        if self.since_check < 100_000 {
            return;
        }
        self.since_check = 0;
        let from_malloc = self.cache.stats().index_bytes + self.buffer_bytes;
        if from_malloc < self.index_at_check - self.index_at_check / 10 {
            self.trim();
        }
        self.index_at_check = from_malloc;
    }

    /// Called when the event loop is about to sleep: if commands ran since
    /// malloc last gave back its free pages, and that was a second ago or
    /// more, asks it again. (glibc keeps freed memory until a trim, where
    /// jemalloc's background thread purges it after a delay: a server going
    /// idle after a burst of deletes, or after its clients left, would
    /// otherwise keep those pages.) Returns how long the loop may sleep
    /// before it calls again: until the second is up, or for good.
    pub fn idle(&mut self) -> Option<Duration> {
        if self.since_trim == 0 {
            return None;
        }
        let since = self.trimmed_at.elapsed();
        if since < TRIM_EVERY {
            return Some(TRIM_EVERY - since);
        }
        self.trim();
        None
    }

    fn trim(&mut self) {
        trim_malloc();
        self.since_trim = 0;
        self.trimmed_at = Instant::now();
    }

    /// Runs one command, appending its reply to `out`.
    pub fn execute(&mut self, args: &[&[u8]], out: &mut Vec<u8>) -> After {
        self.maybe_trim();
        let mut r = Reply(out);
        let Some(&raw_name) = args.first() else {
            return After::Continue;
        };
        // The command name in lower case, without an allocation.
        let mut lower = [0u8; 16];
        let name = if raw_name.len() <= lower.len() {
            for (l, b) in lower.iter_mut().zip(raw_name) {
                *l = b.to_ascii_lowercase();
            }
            std::str::from_utf8(&lower[..raw_name.len()]).unwrap_or("")
        } else {
            ""
        };
        let argc = args.len();
        let arity = |ok: bool, r: &mut Reply<'_>| {
            if !ok {
                r.error(&format!(
                    "ERR wrong number of arguments for '{name}' command"
                ));
            }
            ok
        };
        match name {
            "ping" => match argc {
                1 => r.simple("PONG"),
                2 => r.bulk(args[1]),
                _ => {
                    arity(false, &mut r);
                }
            },
            "echo" => {
                if arity(argc == 2, &mut r) {
                    r.bulk(args[1]);
                }
            }
            "quit" => {
                r.simple("OK");
                return After::Close;
            }
            "select" => {
                if arity(argc == 2, &mut r) {
                    if args[1] == b"0" {
                        r.simple("OK");
                    } else {
                        r.error("ERR DB index is out of range");
                    }
                }
            }
            "get" => {
                if arity(argc == 2, &mut r) {
                    self.reply_value(args[1], &mut r);
                }
            }
            "set" => {
                if arity(argc >= 3, &mut r) {
                    self.set(args, &mut r);
                }
            }
            "setex" | "psetex" => {
                if arity(argc == 4, &mut r) {
                    // SETEX key seconds value: SET key value EX seconds.
                    let unit: &[u8] = if name == "setex" { b"EX" } else { b"PX" };
                    self.set(&[b"SET", args[1], args[3], unit, args[2]], &mut r);
                }
            }
            "del" | "unlink" => {
                if arity(argc >= 2, &mut r) {
                    let n = args[1..].iter().filter(|k| self.delete(k)).count();
                    r.int(n as i64);
                }
            }
            "exists" => {
                if arity(argc >= 2, &mut r) {
                    let n = args[1..].iter().filter(|k| self.exists(k)).count();
                    r.int(n as i64);
                }
            }
            "incr" | "decr" | "incrby" | "decrby" => self.incr(name, args, &mut r),
            "mget" => {
                if arity(argc >= 2, &mut r) {
                    r.array(argc - 1);
                    for k in &args[1..] {
                        self.reply_value(k, &mut r);
                    }
                }
            }
            "mset" => {
                if arity(argc >= 3 && argc % 2 == 1, &mut r) {
                    let mut failed = None;
                    for pair in args[1..].chunks(2) {
                        if let Err(e) = self.write(pair[0], pair[1], 0) {
                            failed = Some(e);
                        }
                    }
                    match failed {
                        None => r.simple("OK"),
                        Some(e) => r.error(&oom(e)),
                    }
                }
            }
            "dbsize" => {
                if arity(argc == 1, &mut r) {
                    r.int(self.cache.len() as i64);
                }
            }
            "flushall" | "flushdb" => {
                self.cache.clear();
                self.expiry.clear();
                trim_malloc();
                r.simple("OK");
            }
            "info" => {
                let info = self.info();
                r.bulk(info.as_bytes());
            }
            "config" => self.config(args, &mut r),
            "command" => r.array(0),
            "client" => r.simple("OK"),
            _ => {
                let mut msg = format!(
                    "ERR unknown command '{}', with args beginning with:",
                    String::from_utf8_lossy(raw_name)
                );
                for a in args[1..].iter().take(4) {
                    msg.push_str(&format!(" '{}'", String::from_utf8_lossy(a)));
                }
                r.error(&msg);
            }
        }
        After::Continue
    }

    fn set(&mut self, args: &[&[u8]], r: &mut Reply<'_>) {
        let (mut deadline, mut nx, mut xx) = (0u64, false, false);
        let mut i = 3;
        while i < args.len() {
            let opt = String::from_utf8_lossy(args[i]).to_ascii_lowercase();
            match opt.as_str() {
                "nx" => nx = true,
                "xx" => xx = true,
                "ex" | "px" => {
                    let Some(n) = args
                        .get(i + 1)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<i64>().ok())
                    else {
                        return r.error("ERR value is not an integer or out of range");
                    };
                    if n <= 0 {
                        return r.error("ERR invalid expire time in 'set' command");
                    }
                    let ms = if opt == "ex" {
                        n.saturating_mul(1000)
                    } else {
                        n
                    };
                    deadline = now_ms().saturating_add(ms as u64);
                    i += 1;
                }
                _ => return r.error("ERR syntax error"),
            }
            i += 1;
        }
        if nx && xx {
            return r.error("ERR syntax error");
        }
        if nx || xx {
            let exists = self.exists(args[1]);
            if (nx && exists) || (xx && !exists) {
                return r.nil();
            }
        }
        match self.write(args[1], args[2], deadline) {
            Ok(()) => r.simple("OK"),
            Err(e) => r.error(&oom(e)),
        }
    }

    fn incr(&mut self, name: &str, args: &[&[u8]], r: &mut Reply<'_>) {
        let by_arg = name.ends_with("by");
        if args.len() != if by_arg { 3 } else { 2 } {
            return r.error(&format!(
                "ERR wrong number of arguments for '{name}' command"
            ));
        }
        let not_int = "ERR value is not an integer or out of range";
        let mut delta: i64 = if by_arg {
            match std::str::from_utf8(args[2])
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(d) => d,
                None => return r.error(not_int),
            }
        } else {
            1
        };
        if name.starts_with("decr") {
            delta = match delta.checked_neg() {
                Some(d) => d,
                None => return r.error(not_int),
            };
        }
        let current: i64 = match self.read(args[1]) {
            None => 0,
            Some(v) => match std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                Some(n) => n,
                None => return r.error(not_int),
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return r.error("ERR increment or decrement would overflow");
        };
        match self.write(args[1], next.to_string().as_bytes(), 0) {
            Ok(()) => r.int(next),
            Err(e) => r.error(&oom(e)),
        }
    }

    fn config(&mut self, args: &[&[u8]], r: &mut Reply<'_>) {
        let sub = args
            .get(1)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let param = args
            .get(2)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        match (sub.as_deref(), param.as_deref()) {
            (Some("get"), Some(p)) => {
                let maxmemory = self.maxmemory.to_string();
                let known = [
                    ("maxmemory", maxmemory.as_str()),
                    ("maxmemory-policy", "allkeys-s3fifo"),
                    ("save", ""),
                    ("appendonly", "no"),
                ];
                // Exact names or `*` (Redis also takes other glob patterns);
                // a parameter it does not know gives an empty array, as in Redis.
                let found: Vec<_> = known.iter().filter(|(k, _)| p == "*" || p == *k).collect();
                r.array(2 * found.len());
                for (k, v) in found {
                    r.bulk(k.as_bytes());
                    r.bulk(v.as_bytes());
                }
            }
            (Some("set"), Some("maxmemory")) if args.len() == 4 => {
                let value = String::from_utf8_lossy(args[3]);
                match parse_memory(&value).filter(|&m| m > 0) {
                    Some(m) => match self.cache.set_budget(cache_budget(m)) {
                        Ok(()) => {
                            self.maxmemory = m;
                            r.simple("OK")
                        }
                        Err(e) => r.error(&format!("ERR {e}")),
                    },
                    None => r.error("ERR CONFIG SET failed (possibly related to argument 'maxmemory') - argument couldn't be parsed into an integer"),
                }
            }
            (Some("set"), Some(p)) => {
                r.error(&format!("ERR Unsupported CONFIG parameter: {p}"));
            }
            _ => {
                r.error("ERR unknown subcommand or wrong number of arguments for 'config' command")
            }
        }
    }

    /// `INFO`'s text: the memory section (Redis's field names and meaning).
    pub fn info(&self) -> String {
        let used = self.used_memory();
        let rss = rss();
        let st = self.cache.stats();
        let heap = self.cache.heap().stats();
        format!(
            "# Server\r\nredis_version:7.0.15-compact-heap\r\n\r\n\
             # Memory\r\nused_memory:{used}\r\nused_memory_rss:{rss}\r\n\
             mem_fragmentation_ratio:{:.2}\r\nmaxmemory:{}\r\nmaxmemory_policy:allkeys-s3fifo\r\n\r\n\
             # Stats\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nevicted_keys:{}\r\n\r\n\
             # Keyspace\r\ndb0:keys={}\r\n\r\n\
             # Heap\r\nheap_live_bytes:{}\r\nheap_held_bytes:{}\r\nheap_metadata_bytes:{}\r\n\
             heap_bytes_moved:{}\r\nheap_paced_bytes_moved:{}\r\nheap_bytes_released:{}\r\n",
            rss as f64 / used.max(1) as f64,
            self.maxmemory,
            st.hits,
            st.misses,
            st.evictions,
            st.entries,
            heap.live_bytes,
            heap.held_bytes,
            heap.metadata_bytes,
            heap.bytes_moved,
            heap.paced_bytes_moved,
            heap.bytes_released,
        )
    }
}

/// Asks malloc to return its free pages to the OS (glibc's `malloc_trim`;
/// elsewhere nothing).
fn trim_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds and no one uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn oom(e: CacheError) -> String {
    match e {
        CacheError::TooLarge { .. } => {
            "OOM command not allowed: the value is larger than maxmemory".to_string()
        }
        e => format!("OOM command not allowed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut Store, cmd: &[&str]) -> String {
        let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
        let mut out = Vec::new();
        store.execute(&args, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn memory_sizes_parse_as_redis_does() {
        assert_eq!(parse_memory("1gb"), Some(1 << 30));
        assert_eq!(parse_memory("100MB"), Some(100 << 20));
        assert_eq!(parse_memory("5k"), Some(5000));
        assert_eq!(parse_memory("42"), Some(42));
        assert_eq!(parse_memory("1tb"), None);
        assert_eq!(parse_memory("x"), None);
    }

    #[test]
    fn commands_and_their_errors() {
        let mut s = Store::new(8 << 20).unwrap();
        assert_eq!(run(&mut s, &["SET", "k", "v"]), "+OK\r\n");
        assert_eq!(run(&mut s, &["get", "k"]), "$1\r\nv\r\n");
        assert_eq!(run(&mut s, &["SET", "k", "w", "NX"]), "$-1\r\n");
        assert_eq!(run(&mut s, &["SET", "n", "1", "XX"]), "$-1\r\n");
        assert_eq!(run(&mut s, &["INCR", "n"]), ":1\r\n");
        assert_eq!(
            run(&mut s, &["INCR", "k"]),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            run(&mut s, &["MSET", "a", "1", "b"]),
            "-ERR wrong number of arguments for 'mset' command\r\n"
        );
        assert_eq!(run(&mut s, &["MSET", "a", "1", "b", "2"]), "+OK\r\n");
        assert_eq!(
            run(&mut s, &["MGET", "a", "zz", "b"]),
            "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
        );
        assert_eq!(run(&mut s, &["EXISTS", "a", "b", "zz"]), ":2\r\n");
        assert_eq!(run(&mut s, &["DEL", "a", "zz"]), ":1\r\n");
        assert_eq!(run(&mut s, &["DBSIZE"]), ":3\r\n"); // k, n, b
        assert_eq!(
            run(&mut s, &["SET", "t", "x", "PX", "0"]),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(
            run(&mut s, &["SET", "t", "x", "FOO"]),
            "-ERR syntax error\r\n"
        );
        assert!(run(&mut s, &["NOPE", "x"]).starts_with("-ERR unknown command 'NOPE'"));
        assert_eq!(
            run(&mut s, &["CONFIG", "GET", "maxmemory"]),
            "*2\r\n$9\r\nmaxmemory\r\n$7\r\n8388608\r\n"
        );
        assert_eq!(
            run(&mut s, &["CONFIG", "SET", "maxmemory", "4mb"]),
            "+OK\r\n"
        );
        assert!(run(&mut s, &["INFO", "memory"]).contains("maxmemory:4194304"));
        assert_eq!(run(&mut s, &["FLUSHALL"]), "+OK\r\n");
        assert_eq!(run(&mut s, &["DBSIZE"]), ":0\r\n");
    }

    #[test]
    fn expired_keys_read_as_missing() {
        let mut s = Store::new(1 << 20).unwrap();
        assert_eq!(run(&mut s, &["SET", "k", "v", "PX", "1"]), "+OK\r\n");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(run(&mut s, &["GET", "k"]), "$-1\r\n");
        assert_eq!(run(&mut s, &["EXISTS", "k"]), ":0\r\n");
    }

    #[test]
    fn a_value_larger_than_maxmemory_is_refused() {
        let mut s = Store::new(64 << 10).unwrap();
        let big = "x".repeat(100 << 10);
        assert!(run(&mut s, &["SET", "k", &big]).starts_with("-OOM"));
    }
}
